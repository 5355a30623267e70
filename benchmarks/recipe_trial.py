"""A training-recipe decision on held-out patients, within a CPU's time: fine-tune one
trained network (e.g. the study's fold-0 `msbn`) for the same number of steps under each
recipe ("arm"), then test every arm on the fold's held-out patients as they are, under the
contrast shifts, and on TotalSegmentator's examples. Printed: mean Dice per arm and the
paired difference of each arm to the first (the control: the recipe as it is), with a
bootstrap interval over patients.

An arm whose weights are already in --out (`ARM/VARIANT.safetensors`) is only tested: after
the test changed, copy the trained arms into a new --out to score them again.

Fine-tuning from a common start compares recipes at a fraction of the cost of training each
from scratch; it answers "which recipe should the shipped files continue with", not "which
recipe is best from scratch".

    python benchmarks/recipe_trial.py --bundle .study/bundle.npz \\
        --init runs/curve/runs/rep0-fold0/equal-exposure/msbn.safetensors --fold 0 --steps 800 \\
        --arm current --arm convolutional:p_convolutional=0.75 --out runs/trial
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from napari_mmseg.config import PRESETS, AugmentationConfig
from napari_mmseg.device import one_thread_per_worker
from napari_mmseg.models.weights import load_weights
from napari_mmseg.study.experiment import EVALUATION_KINDS, StudyConfig, evaluate, fold_split, load_cases
from napari_mmseg.study.report import compare, format_difference
from napari_mmseg.training.trainer import TrainingRun, train_prepared


@dataclass(frozen=True)
class Arm:
    name: str
    augmentation: AugmentationConfig
    patch_size: int | None = None  # the training patch (and inference window), if not the start's

    @classmethod
    def parse(cls, text: str) -> Arm:
        """"name" or "name:field=value,field=value" (fields of AugmentationConfig, or
        patch_size)."""
        name, _, spec = text.partition(":")
        items = spec.split(",")
        patch = next((int(i.partition("=")[2]) for i in items if i.startswith("patch_size=")), None)
        try:
            augmentation = PRESETS["light"].training.augmentation.changed(
                ",".join(i for i in items if not i.startswith("patch_size=")))
        except ValueError as err:
            raise SystemExit(f"--arm {text}: {err}, or patch_size") from None
        return cls(name, augmentation, patch)


def _run_arm(job: tuple) -> tuple[str, list[dict], float]:
    arm, args, kinds = job
    if args.workers > 1:
        one_thread_per_worker()  # the arms share the CPU
    cases, totalseg = load_cases(StudyConfig(out_dir=Path(args.out), bundle=Path(args.bundle)))
    parts = fold_split(cases, args.folds, seed=args.repetition)
    test = parts[args.fold]
    train = [c for i, p in enumerate(parts) if i != args.fold for c in p]
    t0 = time.perf_counter()
    start = load_weights(args.init)
    if arm is None:  # the starting point itself
        weights, name = Path(args.init), "start"
    elif (trained := Path(args.out) / arm.name / f"{start.meta.variant}.safetensors").is_file():
        weights, name = trained, arm.name  # trained before (e.g. scored again after the test changed)
    else:
        preset = PRESETS[start.meta.training.get("preset", "light")]
        training = replace(preset.training, augmentation=arm.augmentation, batch_size=args.batch_size,
                           lr_single=args.lr, lr_dual=args.lr, checkpoint_every=100,
                           patch_size=arm.patch_size or start.meta.patch_size)
        run = TrainingRun(start.meta.variant, replace(preset, training=training), Path(args.out) / arm.name,
                          start.meta.modalities, "cpu", args.steps, seed=args.seed, progress_bar=False,
                          init_weights=Path(args.init))
        run.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = run.out_dir / "train.log"

        def log(line: str) -> None:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

        prepared = {m: [c for c in train if c.modality == m] for m in run.modalities}
        weights, name = train_prepared(run, prepared, {}, log), arm.name
    loaded = start if arm is None else load_weights(weights)
    rows = evaluate(loaded, test, totalseg, "cpu", kinds=kinds, try_inverted_mr=not args.as_given)
    for r in rows:
        r.update(variant=name, protocol="trial", repetition=args.repetition, fold=args.fold)
    return name, rows, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="prepared cases (benchmarks/study_on_gpu.py --write-bundle)")
    ap.add_argument("--init", required=True, help="the trained network every arm starts from")
    ap.add_argument("--fold", type=int, default=0, help="the held-out fold (the one --init was not trained on)")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--repetition", type=int, default=0, help="the study's repetition: the seed of its split")
    ap.add_argument("--arm", action="append", required=True, help="name[:field=value,...]; the first is the control")
    ap.add_argument("--steps", type=int, default=800, help="fine-tuning steps in all (both modalities)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (poly decay to 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--as-given", action="store_true",
                    help="read MR only as given, not also inverted (as the earliest trial scores were read)")
    ap.add_argument("--out", default="runs/trial")
    args = ap.parse_args(argv)
    arms = [Arm.parse(a) for a in args.arm]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = out / "scores.json"
    done: dict[str, list[dict]] = json.loads(scores.read_text()) if scores.is_file() else {}
    jobs = []  # arms not yet scored, or scored before a kind of test existed: only what is missing
    for arm in [None, *arms]:
        scored = {r["kind"] for r in done.get(arm.name if arm else "start", [])}
        missing = tuple(k for k in EVALUATION_KINDS if k not in scored)
        if missing:
            jobs.append((arm, args, missing))
    with multiprocessing.get_context("spawn").Pool(min(args.workers, max(len(jobs), 1))) as pool:
        for name, rows, seconds in pool.imap_unordered(_run_arm, jobs):
            done[name] = done.get(name, []) + rows
            scores.write_text(json.dumps(done))
            print(f"{name}: trained and tested in {seconds:.0f} s", flush=True)
    rows = [r for name in done for r in done[name]]
    control = (arms[0].name, "trial")
    print(f"\nfold {args.fold} of repetition {args.repetition}; {args.steps} fine-tuning steps from {args.init}")
    print("| arm | CT in-domain | CT shifted | CT spleen enlarged | CT slabs | MR in-domain | MR shifted "
          "| MR spleen enlarged | MR slabs | TS CT | TS MR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in ["start", *(a.name for a in arms)]:
        cells = []
        for modality, kind in (*((m, k) for m in ("CT", "MR") for k in ("in-domain", "shifted", "enlarged", "slab")),
                               ("CT", "totalseg"), ("MR", "totalseg")):
            c = compare(rows, (name, "trial"), modality, kind, baseline=control)
            cells.append("–" if c is None else f"{c['dice']:.3f}" if name == control[0]
                         else f"{c['dice']:.3f} ({format_difference(c)})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    names = ["start", *(a.name for a in arms)]
    conditions = sorted({(r["modality"], r["kind"], r["condition"]) for r in rows if r["bn_statistics"] != "blended"})
    print("\nmean Dice per condition\n")
    print("| modality | kind | condition | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for modality, kind, condition in conditions:
        means = []
        for name in names:
            d = [r["dice"] for r in rows if (r["variant"], r["modality"], r["kind"], r["condition"]) ==
                 (name, modality, kind, condition) and r["bn_statistics"] != "blended" and r["dice"] == r["dice"]]
            means.append(f"{sum(d) / len(d):.3f}" if d else "–")
        print(f"| {modality} | {kind} | {condition} | " + " | ".join(means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
