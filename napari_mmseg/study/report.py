"""The study's report from its cached scores: does multi-modal training help each modality,
in-domain and on shifted contrasts, and by how much?

Every claim is a paired difference to the individual networks over the same patients,
organs, repetitions and conditions, with a Wilcoxon signed-rank test over patient-organ
pairs (each averaged over repetitions and conditions), a 95 % bootstrap interval with
patients resampled, and the spread of the difference over repetitions.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from napari_mmseg.config import PROTOCOLS
from napari_mmseg.io.safe_write import write_bytes_atomic, write_csv_atomic, write_text_atomic
from napari_mmseg.organs import ORGANS
from napari_mmseg.study.config import StudyConfig

BASELINE = ("individual", "equal-exposure")
KINDS = (("in-domain", "in-domain"), ("shifted", "shifted contrasts"), ("totalseg", "TotalSegmentator example"))
BOOTSTRAP_RESAMPLES = 2000

# The paper's Tables 1–2 (2-fold cross-validation × 3 repetitions, FCN at 2 mm, 10k steps).
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


def collect(out: Path) -> tuple[list[dict], list[dict]]:
    """Score rows (blended-BN rows included) and learning-curve records of every tested run."""
    rows, curves = [], []
    for path in sorted((out / "runs").glob("rep*/*/*.scores.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        rows += record["rows"]
        if record.get("curve"):
            curves.append({**record["task"], "curve": record["curve"]})
    return rows, curves


def arms(rows: list[dict]) -> list[tuple[str, str]]:
    """(variant, protocol) pairs present, the baseline first."""
    present = {(r["variant"], r["protocol"]) for r in rows}
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    return sorted(present, key=lambda a: (a != BASELINE, order.get(a[1], 9), a[0]))


def arm_label(arm: tuple[str, str]) -> str:
    return arm[0] if arm[0] == "individual" else f"{arm[0]} ({arm[1]})"


def _scored(rows: list[dict], arm: tuple[str, str], modality: str, kind: str) -> dict[tuple, float]:
    return {(r["repetition"], r["fold"], r["case"], r["organ"], r["condition"]): r["dice"] for r in rows
            if (r["variant"], r["protocol"]) == arm and r["modality"] == modality and r["kind"] == kind
            and r["bn_statistics"] != "blended" and not np.isnan(r["dice"])}


def compare(rows: list[dict], arm: tuple[str, str], modality: str, kind: str, seed: int = 0,
            baseline: tuple[str, str] = BASELINE) -> dict | None:
    """Mean Dice of `arm` and the baseline over their shared keys, and the paired difference:
    Wilcoxon p, 95 % bootstrap interval (patients resampled), spread over repetitions."""
    from scipy.stats import wilcoxon

    mine, base = _scored(rows, arm, modality, kind), _scored(rows, baseline, modality, kind)
    keys = sorted(set(mine) & set(base))
    if not keys:
        return None
    diff = {k: mine[k] - base[k] for k in keys}
    pairs: dict[tuple, list[float]] = defaultdict(list)  # (case, organ) → differences
    reps: dict[int, list[float]] = defaultdict(list)
    for k, d in diff.items():
        pairs[(k[2], k[3])].append(d)
        reps[k[0]].append(d)
    pair_means = {k: float(np.mean(v)) for k, v in pairs.items()}
    patients = sorted({k[0] for k in pair_means})
    by_patient = [np.array([d for (c, _), d in pair_means.items() if c == p]) for p in patients]
    result = {
        "arm": arm_label(arm), "modality": modality, "kind": kind,
        "dice": float(np.mean([mine[k] for k in keys])), "baseline": float(np.mean([base[k] for k in keys])),
        "difference": float(np.mean(list(pair_means.values()))), "patients": len(patients),
        "pairs": len(pair_means), "runs": len({(k[0], k[1]) for k in keys}),
        "per_repetition": {int(r): float(np.mean(v)) for r, v in sorted(reps.items())},
        "rep_sd": float(np.std([np.mean(v) for v in reps.values()])) if len(reps) > 1 else float("nan"),
        "ci": (float("nan"), float("nan")), "p": float("nan"),
    }
    if len(patients) > 1:
        rng = np.random.default_rng(seed)
        boot = [np.mean(np.concatenate([by_patient[i] for i in rng.integers(len(patients), size=len(patients))]))
                for _ in range(BOOTSTRAP_RESAMPLES)]
        result["ci"] = (float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)))
        d = np.array(list(pair_means.values()))
        if np.any(d != 0):
            result["p"] = float(wilcoxon(d).pvalue)
    return result


def format_difference(c: dict) -> str:
    text = f"{c['difference']:+.3f}"
    if not np.isnan(c["ci"][0]):
        text += f" [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]"
    if not np.isnan(c["p"]):
        text += f", p = {c['p']:.2g}" if c["p"] >= 1e-4 else ", p < 1e-4"
    return text


def headline(rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Mean Dice per arm and the difference to individual, for CT and MR, in-domain, shifted
    and on the TotalSegmentator examples; an arm's mean alone where individual was not run."""
    lines, records = [], []
    for modality in ("CT", "MR"):
        lines += [f"### {modality}", "", "| network | " + " | ".join(label for _, label in KINDS) + " |",
                  "|---|" + "---|" * len(KINDS)]
        for arm in arms(rows):
            cells = []
            for kind, _ in KINDS:
                c = compare(rows, arm, modality, kind)
                if c is None:  # no individual network to compare with (or no scores): its own mean
                    own = _scored(rows, arm, modality, kind)
                    cells.append(f"{np.mean(list(own.values())):.3f}" if own else "–")
                    continue
                records.append(c)
                cells.append(f"{c['dice']:.3f}" if arm == BASELINE else f"{c['dice']:.3f}<br>{format_difference(c)}")
            lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines, records


def repetition_table(records: list[dict]) -> list[str]:
    """The difference to individual in each repetition: whether the sign holds across
    trainings from other seeds and splits, not only across patients."""
    lines = ["| network | modality | contrasts | difference per repetition | spread (sd) |", "|---|---|---|---|---|"]
    for c in records:
        if c["arm"] != arm_label(BASELINE) and c["kind"] != "totalseg":
            reps = ", ".join(f"{d:+.3f}" for d in c["per_repetition"].values())
            lines.append(f"| {c['arm']} | {c['modality']} | {c['kind']} | {reps} | {c['rep_sd']:.3f} |")
    return lines


def organ_tables(rows: list[dict], kind: str = "in-domain") -> list[str]:
    lines = []
    every = arms(rows)
    for modality in ("MR", "CT"):
        lines += [f"### {modality}, {kind}: mean Dice per organ (in brackets: the paper's)", "",
                  "| organ | " + " | ".join(arm_label(a) for a in every) + " |", "|---|" + "---|" * len(every)]
        for organ in ORGANS:
            cells = []
            for arm in every:
                vals = [d for k, d in _scored(rows, arm, modality, kind).items() if k[3] == organ.name]
                paper = PAPER_DICE[modality][organ.name].get(arm[0]) if arm[1] == "equal-exposure" else None
                cells.append((f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "–")
                             + (f" ({paper:.3f})" if paper is not None else ""))
            lines.append(f"| {organ.display_name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def condition_table(rows: list[dict]) -> list[str]:
    every = arms(rows)
    lines = ["| modality | condition | " + " | ".join(arm_label(a) for a in every) + " |",
             "|---|---|" + "---|" * len(every)]
    conditions = sorted({(r["modality"], r["kind"], r["condition"]) for r in rows if r["kind"] != "totalseg"},
                        key=lambda c: (c[0], c[1] != "in-domain", c[2]))
    for modality, kind, condition in conditions:
        cells = []
        for arm in every:
            vals = [d for k, d in _scored(rows, arm, modality, kind).items() if k[4] == condition]
            cells.append(f"{np.mean(vals):.3f}" if vals else "–")
        lines.append(f"| {modality} | {condition} | " + " | ".join(cells) + " |")
    return lines


def bn_table(rows: list[dict]) -> list[str]:
    dual = sorted({(r["variant"], r["protocol"]) for r in rows if r["bn_statistics"] == "blended"})
    if not dual:
        return []
    lines = ["| network | CT per-modality | CT blended | MR per-modality | MR blended |", "|---|---|---|---|---|"]
    for arm in dual:
        cells = []
        for m in ("CT", "MR"):
            for mode in ("per-modality", "blended"):
                vals = [r["dice"] for r in rows if (r["variant"], r["protocol"]) == arm and r["modality"] == m
                        and r["kind"] == "in-domain" and r["bn_statistics"] == mode and not np.isnan(r["dice"])]
                cells.append(f"{np.mean(vals):.3f}" if vals else "–")
        lines.append(f"| {arm_label(arm)} | " + " | ".join(cells) + " |")
    return lines


def curve_points(curves: list[dict]) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """(variant, protocol, modality) → (steps on that modality, validation Dice averaged over folds)."""
    gathered: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in curves:
        per_modality = len(record["modalities"])
        for point in record["curve"]:
            for m in record["modalities"]:
                if m in point:
                    gathered[(record["variant"], record["protocol"], m)][point["step"] / per_modality].append(point[m])
    return {k: sorted((s, float(np.mean(v))) for s, v in pts.items()) for k, pts in gathered.items()}


def curve_table(points: dict) -> list[str]:
    lines = ["| network | modality | Dice along training (steps on that modality: Dice) | last quarter's gain |",
             "|---|---|---|---|"]
    for (variant, protocol, m), pts in sorted(points.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        shown = ", ".join(f"{s:.0f}: {d:.3f}" for s, d in pts)
        last = pts[-1]
        earlier = min(pts, key=lambda p: abs(p[0] - 0.75 * last[0]))
        gain = last[1] - earlier[1] if earlier is not last else float("nan")
        lines.append(f"| {arm_label((variant, protocol))} | {m} | {shown} | {gain:+.3f} |")
    return lines


def write_report(out: Path, study: StudyConfig) -> Path:
    out = Path(out)
    rows, curves = collect(out)
    fields = ["repetition", "fold", "variant", "protocol", "steps", "modality", "case", "kind", "condition",
              "organ", "dice", "predicted_ml", "reference_ml", "bn_statistics"]
    write_csv_atomic(out / "scores.csv", fields, [[r.get(k) for k in fields] for r in rows], overwrite=True)
    head, records = headline(rows)
    write_text_atomic(out / "comparisons.json", json.dumps(records, indent=1), overwrite=True)
    points = curve_points(curves)
    runs = sorted({(r["repetition"], r["fold"]) for r in rows})
    lines = [f"# Study: {study.folds}-fold cross-validation × {study.repetitions} repetitions, preset {study.preset}",
             "", f"{len(runs)} of {study.folds * study.repetitions} (repetition, fold) splits scored. Dice on the "
             "model's grid. Differences: to `individual`, paired over the same patients, organs, repetitions and "
             "conditions; [95 % bootstrap interval, patients resampled], Wilcoxon signed-rank p over "
             "patient-organ pairs. The TotalSegmentator examples are one scan each (labels made by a model): "
             "no interval." + ("" if BASELINE in arms(rows) else
                                " `individual` is not in this study: the headline gives each network's mean "
                                "Dice, without a difference."), "", "## Headline", ""] + head
    lines += ["## Difference to individual, repetition by repetition", ""] + repetition_table(records) + [""]
    lines += ["## Per organ", ""] + organ_tables(rows) + organ_tables(rows, "shifted")
    lines += ["## Per contrast shift (mean Dice)", ""] + condition_table(rows) + [""]
    lines += ["## Shared BN layers: per-modality vs blended running statistics (in-domain)", ""] + bn_table(rows)
    lines += ["", "## Learning curves (repetition 0, both folds)", ""] + curve_table(points)
    figures = _plots(out, rows, points)
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    report = out / "study.md"
    write_text_atomic(report, "\n".join(lines) + "\n", overwrite=True)
    return report


def _plots(out: Path, rows: list[dict], points: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=80)
        plt.close(fig)
        write_bytes_atomic(out / name, png.getvalue(), overwrite=True)
        written.append(out / name)

    every = arms(rows)
    fig, axes = plt.subplots(2, 2, figsize=(3 + 1.1 * len(every), 7), sharey=True)
    for row, modality in enumerate(("CT", "MR")):
        for col, kind in enumerate(("in-domain", "shifted")):
            ax = axes[row][col]
            data = []
            for arm in every:
                per_pair: dict[tuple, list[float]] = defaultdict(list)
                for k, d in _scored(rows, arm, modality, kind).items():
                    per_pair[(k[2], k[3])].append(d)
                data.append([np.mean(v) for v in per_pair.values()])
            ax.boxplot(data, tick_labels=[arm_label(a).replace(" (", "\n(") for a in every])
            ax.set_title(f"{modality}, {kind}")
            ax.tick_params(axis="x", rotation=60, labelsize=7)
        axes[row][0].set_ylabel("Dice (patient-organ pairs)")
    save(fig, "boxplot-study.png")

    if points:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, modality in zip(axes, ("CT", "MR"), strict=True):
            for (variant, protocol, m), pts in sorted(points.items()):
                if m == modality:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=arm_label((variant, protocol)))
            ax.set_title(f"{modality}: validation Dice (held-out fold, repetition 0)")
            ax.set_xlabel(f"training steps on {modality}")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("mean Dice")
        axes[1].legend(fontsize=7)
        save(fig, "learning-curves.png")
    return written
