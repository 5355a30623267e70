"""The paper's study on real data: k-fold cross-validation (patients split per modality),
repeated with different seeds, for every variant; tables like the paper's Tables 1–3, box
plots like Figures 6–7 and overlays like Figures 4–5.

Every trained run caches its scores, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .config import PRESETS, VARIANTS
from .datasets import LabelledCase, load_dataset
from .inference import InferenceOptions, segment_image
from .metrics import dice_scores
from .networks.dual_stream import DUAL_STREAM, use_blended_statistics
from .organs import MODALITIES, ORGANS
from .safe_write import write_bytes_atomic, write_csv_atomic, write_text_atomic
from .training import TrainingRun, train
from .weights import load_weights

# The paper's Tables 1–2 (mean Dice over 2-fold cross-validation × 3 repetitions, FCN at 2 mm,
# 10k steps) and Table 3's average row, printed beside ours.
PAPER_DICE: dict[str, dict[str, dict[str, float]]] = {
    "MR": {
        "liver": {"individual": 0.913, "joint": 0.903, "v1": 0.877, "v2": 0.862, "v3": 0.905, "v4": 0.914},
        "spleen": {"individual": 0.772, "joint": 0.772, "v1": 0.728, "v2": 0.732, "v3": 0.736, "v4": 0.790},
        "kidney_right": {"individual": 0.835, "joint": 0.842, "v1": 0.804, "v2": 0.792, "v3": 0.819, "v4": 0.871},
        "kidney_left": {"individual": 0.821, "joint": 0.771, "v1": 0.748, "v2": 0.741, "v3": 0.810, "v4": 0.833},
    },
    "CT": {
        "liver": {"individual": 0.914, "joint": 0.875, "v1": 0.900, "v2": 0.902, "v3": 0.895, "v4": 0.919},
        "spleen": {"individual": 0.824, "joint": 0.834, "v1": 0.822, "v2": 0.824, "v3": 0.817, "v4": 0.859},
        "kidney_right": {"individual": 0.820, "joint": 0.806, "v1": 0.824, "v2": 0.815, "v3": 0.793, "v4": 0.838},
        "kidney_left": {"individual": 0.808, "joint": 0.822, "v1": 0.833, "v2": 0.818, "v3": 0.819, "v4": 0.851},
    },
}
PAPER_AVERAGE = {"individual": 0.838, "joint": 0.828, "v1": 0.817, "v2": 0.811, "v3": 0.824, "v4": 0.860}


def _paper(value: float | None) -> str:
    return f" ({value:.3f})" if value is not None else ""


@dataclass(frozen=True)
class StudyConfig:
    ct: Path
    mr: Path
    out_dir: Path
    preset: str = "light"
    variants: tuple[str, ...] = VARIANTS
    repetitions: int = 3
    folds: int = 2
    steps: int | None = None
    device: str = "auto"


def fold_split(cases: list[LabelledCase], folds: int, seed: int) -> list[list[LabelledCase]]:
    """Patients of each modality shuffled with `seed` and dealt into `folds` parts."""
    parts: list[list[LabelledCase]] = [[] for _ in range(folds)]
    for m in MODALITIES:
        mine = [c for c in cases if c.modality == m]
        for i, k in enumerate(np.random.default_rng(seed).permutation(len(mine))):
            parts[i % folds].append(mine[k])
    return parts


def overlay_slice(labels: np.ndarray) -> int:
    """The axial slice (array z index) with the most organ voxels."""
    return int(np.argmax((labels > 0).sum(axis=(1, 2))))


def _evaluate(weights: Path, cases: list[LabelledCase], device: str, run_dir: Path) -> list[dict]:
    """Dice per organ for each test case, at the scan's native resolution. Dual-stream
    networks are scored twice: with per-modality BN statistics (how they are used) and with
    the blended statistics a plain shared BN would use (`bn_statistics` tells them apart)."""
    rows = []
    loaded = load_weights(weights)
    options = InferenceOptions(device=device, uncertainty=False)  # Dice needs only the labels
    for case in cases:
        image, ref = case.load()
        ref_arr = sitk.GetArrayFromImage(ref)
        modes = ("per-modality", "blended") if loaded.meta.variant in DUAL_STREAM else ("shared",)
        for mode in modes:
            use_blended_statistics(loaded.model, mode == "blended")
            pred = segment_image(image, loaded, case.modality, options).labels
            pred_arr = sitk.GetArrayFromImage(pred)
            for s in dice_scores(pred_arr, ref_arr, image.GetSpacing()):
                rows.append({"case": case.name, "modality": case.modality, "organ": s.organ, "dice": s.dice,
                             "predicted_ml": s.predicted_ml, "reference_ml": s.reference_ml, "bn_statistics": mode})
            if mode == "blended":
                continue
            # one axial slice as a radiologist sees it (LPS: patient right on the left, anterior up)
            shown = [sitk.GetArrayFromImage(sitk.DICOMOrient(x, "LPS")) for x in (image, pred, ref)]
            z = overlay_slice(shown[2])
            npz = io.BytesIO()
            np.savez_compressed(npz, image=shown[0][z], pred=shown[1][z], ref=shown[2][z])
            write_bytes_atomic(run_dir / f"slice-{case.modality}-{case.name}.npz", npz.getvalue(), overwrite=True,
                               make_parents=True)
    return rows


def run_study(study: StudyConfig, progress: bool = True) -> Path:
    """Train and test every (repetition, fold, variant); then write the tables and figures."""
    cases = load_dataset(study.ct, "CT") + load_dataset(study.mr, "MR")
    preset = PRESETS[study.preset]
    out = Path(study.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "study.log"

    def log(line: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    t_start = time.perf_counter()
    for rep in range(study.repetitions):
        parts = fold_split(cases, study.folds, seed=rep)
        for fold in range(study.folds):
            test = parts[fold]
            training = [c for i, p in enumerate(parts) if i != fold for c in p]
            for variant in study.variants:
                groups = [(m,) for m in MODALITIES] if variant == "individual" else [MODALITIES]
                for modalities in groups:
                    run = TrainingRun(variant, replace(preset), out / "runs" / f"rep{rep}-fold{fold}",
                                      modalities, study.device, study.steps, seed=rep, progress_bar=progress)
                    scores = run.out_dir / f"{run.name}.scores.json"
                    if scores.is_file():
                        continue
                    t0 = time.perf_counter()
                    weights = train(run, training, [], log=log)
                    mine = [c for c in test if c.modality in modalities]
                    rows = _evaluate(weights, mine, study.device, run.out_dir / run.name)
                    for r in rows:
                        r.update(repetition=rep, fold=fold, variant=variant)
                    write_text_atomic(scores, json.dumps(rows), overwrite=True)
                    (run.out_dir / f"{run.name}.checkpoint.pt").unlink(missing_ok=True)
                    log(f"rep {rep} fold {fold} {run.name}: {time.perf_counter() - t0:.0f} s, mean Dice "
                        f"{np.nanmean([r['dice'] for r in rows]):.3f}")
    log(f"study finished; this invocation ran {time.perf_counter() - t_start:.0f} s")
    return write_report(out, study)


def collect_scores(out: Path) -> list[dict]:
    rows: list[dict] = []
    for path in sorted((out / "runs").glob("*/*.scores.json")):
        rows += json.loads(path.read_text(encoding="utf-8"))
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not np.isnan(x)], float)
    return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))


def write_report(out: Path, study: StudyConfig) -> Path:
    """Tables 1–3 (Markdown and CSV), box plots and overlays from the cached scores."""
    every = collect_scores(out)
    rows = [r for r in every if r.get("bn_statistics") != "blended"]
    variants = [v for v in study.variants if any(r["variant"] == v for r in rows)]
    _write_csv(out / "scores.csv", every, ["repetition", "fold", "variant", "modality", "case", "organ", "dice",
                                           "predicted_ml", "reference_ml", "bn_statistics"])
    lines = [f"# Study: {study.folds}-fold cross-validation × {study.repetitions} repetitions, preset {study.preset}",
             "", "Mean Dice ± standard deviation over test cases (all folds and repetitions); in brackets the",
             "paper's value (its Tables 1–3; the paper has no `msbn`).", ""]
    summary_rows = []
    for number, modality in ((1, "MR"), (2, "CT")):
        lines += [f"## Table {number}: {modality}", "", "| organ | " + " | ".join(variants) + " |",
                  "|---|" + "---|" * len(variants)]
        for organ in [o.name for o in ORGANS] + ["all organs"]:
            cells = []
            for v in variants:
                vals = [r["dice"] for r in rows if r["variant"] == v and r["modality"] == modality
                        and (organ == "all organs" or r["organ"] == organ)]
                m, s = _mean_std(vals)
                cells.append(f"{m:.3f} ± {s:.3f}" + _paper(PAPER_DICE[modality].get(organ, {}).get(v)))
                summary_rows.append({"modality": modality, "organ": organ, "variant": v, "mean": m, "std": s,
                                     "n": len(vals)})
            lines.append(f"| {organ} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Table 3: all organs, both modalities", "", "| | " + " | ".join(variants) + " |",
              "|---|" + "---|" * len(variants)]
    per_run = {v: [] for v in variants}
    for v in variants:
        for rep in range(study.repetitions):
            vals = [r["dice"] for r in rows if r["variant"] == v and r["repetition"] == rep]
            if vals:
                per_run[v].append(float(np.nanmean(vals)))
    overall = {v: _mean_std([r["dice"] for r in rows if r["variant"] == v]) for v in variants}
    lines.append("| average | " + " | ".join(f"{overall[v][0]:.3f}{_paper(PAPER_AVERAGE.get(v))}" for v in variants)
                 + " |")
    lines.append("| std over cases | " + " | ".join(f"{overall[v][1]:.3f}" for v in variants) + " |")
    lines.append("| std over repetitions | " + " | ".join(
        f"{np.std(per_run[v]):.3f}" if len(per_run[v]) > 1 else "–" for v in variants) + " |")
    lines += _bn_table(every, variants)
    _write_csv(out / "summary.csv", summary_rows, ["modality", "organ", "variant", "mean", "std", "n"])
    figures = _plots(out, rows, variants)
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    report = out / "study.md"
    write_text_atomic(report, "\n".join(lines) + "\n", overwrite=True)
    return report


def _write_csv(path: Path, rows: list[dict], fieldnames: list[str]) -> None:
    write_csv_atomic(path, fieldnames, [[r.get(k) for k in fieldnames] for r in rows], overwrite=True)


def _bn_table(rows: list[dict], variants: list[str]) -> list[str]:
    """Table 4: dual-stream networks with per-modality vs blended BN running statistics."""
    dual = [v for v in variants if v in DUAL_STREAM]
    if not dual:
        return []
    lines = ["", "## Table 4: shared BN layers, per-modality vs blended running statistics", "",
             "Mean Dice over organs and test cases; same trained weights, only the statistics differ.", "",
             "| variant | CT per-modality | CT blended | MR per-modality | MR blended |", "|---|---|---|---|---|"]
    for v in dual:
        cells = [_mean_std([r["dice"] for r in rows if r["variant"] == v and r["modality"] == m
                            and r.get("bn_statistics") == mode])[0]
                 for m in ("CT", "MR") for mode in ("per-modality", "blended")]
        lines.append(f"| {v} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return lines


def _plots(out: Path, rows: list[dict], variants: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    written = []

    def save(fig, title: str, name: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=80)
        plt.close(fig)
        write_bytes_atomic(out / name, png.getvalue(), overwrite=True)
        written.append(out / name)

    for modality in MODALITIES:
        fig, axes = plt.subplots(1, len(ORGANS), figsize=(3.2 * len(ORGANS), 3.2), sharey=True)
        for ax, organ in zip(axes, ORGANS, strict=True):
            data = [[r["dice"] for r in rows if r["variant"] == v and r["modality"] == modality
                     and r["organ"] == organ.name and not np.isnan(r["dice"])] for v in variants]
            ax.boxplot(data, tick_labels=variants)
            ax.set_title(organ.display_name)
            ax.tick_params(axis="x", rotation=45)
        axes[0].set_ylabel("Dice")
        save(fig, f"{modality}: Dice per organ and variant", f"boxplot-{modality.lower()}.png")

    colours = ListedColormap([(0, 0, 0, 0)] + [tuple(c / 255 for c in o.rgb) + (0.55,) for o in ORGANS])
    for modality in MODALITIES:
        prefix = f"slice-{modality}-"
        cases = sorted({p.stem[len(prefix):] for p in (out / "runs" / "rep0-fold0").glob(f"*/{prefix}*.npz")})
        if not cases:
            continue
        case = cases[0]
        panels = [(v, out / "runs" / "rep0-fold0" / (f"individual-{modality.lower()}" if v == "individual" else v)
                   / f"{prefix}{case}.npz") for v in variants]
        panels = [(v, p) for v, p in panels if p.is_file()]
        fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.4 * (len(panels) + 1), 2.6))
        for ax, (title, path) in zip(axes, [("reference", panels[0][1])] + panels, strict=True):
            with np.load(path) as z:
                labels = z["ref"] if title == "reference" else z["pred"]
                lo, hi = np.percentile(z["image"], (1, 99))
                ax.imshow(z["image"], cmap="gray", vmin=lo, vmax=hi)
                ax.imshow(labels, cmap=colours, vmin=0, vmax=len(ORGANS), interpolation="nearest")
            ax.set_title(title)
            ax.axis("off")
        save(fig, f"{modality}, {case}: liver red, spleen green, right kidney blue, left kidney yellow",
             f"overlay-{modality.lower()}.png")
    return written

