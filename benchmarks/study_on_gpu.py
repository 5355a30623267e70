"""The study (`napari_mmseg.study.experiment`) and the shipping runs on a lent GPU machine, inside a
fixed time: measure what K concurrent workers train per second, choose N (steps per
modality) so that every task fits, run, and pack what comes back into a few files.

The machine has no scans, only a bundle of prepared cases (`training_data.save_bundle`),
and no SimpleITK: nothing on this path reads a scan, so a stand-in module takes its name.

    # here, where the scans are: the bundle (40 cases and the TotalSegmentator examples, 54 MB)
    python benchmarks/study_on_gpu.py --write-bundle .study/bundle.npz --data ../shared/data
    # there
    python benchmarks/study_on_gpu.py --bundle .study/bundle.npz --out $OUT --budget-s 525
    # or one long held-out run of the shipped recipe (its weights come back too)
    python benchmarks/study_on_gpu.py --bundle .study/bundle.npz --out $OUT --workers 1 --steps 6000 \\
        --only-fold 0 --repetitions 1 --variants msbn --protocols equal-exposure --shipping-ratio 0 \\
        --augment p_enlarge=0.5,p_slab=0.3
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import sys
import tarfile
import time
import types
from dataclasses import replace
from pathlib import Path

try:
    import SimpleITK  # noqa: F401
except ImportError:
    sys.modules["SimpleITK"] = types.ModuleType("SimpleITK")

from napari_mmseg.study import experiment
from napari_mmseg.study.experiment import ALL_CASES, StudyConfig, StudyTask, plan, run_study
from napari_mmseg.training.trainer import train_prepared
from napari_mmseg.training.training_data import save_bundle

T0 = time.time()


def log(line: str, out: Path | None = None) -> None:
    text = f"{time.time() - T0:6.0f} s  {line}"
    print(text, flush=True)
    if out is not None:
        with open(out / "log.txt", "a", encoding="utf-8") as f:
            f.write(text + "\n")


def probe(steps: int) -> float:
    """Seconds one worker takes for `steps` training steps of a joint network (setup included)."""
    study = experiment._WORKER["study"]
    task = StudyTask("joint", ("MR", "CT"), ALL_CASES, steps)
    run = replace(task.training_run(study), out_dir=Path(study.out_dir) / "probe" / str(time.time_ns()))
    cases = experiment._WORKER["cases"]
    prepared = {m: [c for c in cases if c.modality == m] for m in run.modalities}
    t = time.perf_counter()
    train_prepared(run, prepared, {}, log=lambda _: None)
    return time.perf_counter() - t


def pack(study_dir: Path, out: Path, fold_weights: bool = False) -> None:
    """Scores, curves and logs in one archive; the shipping weights (and with `fold_weights`
    the folds' too: starts for recipe trials on held-out patients) in archives under 16 MB."""
    runs = study_dir / "runs"
    small = [p for p in runs.rglob("*") if p.suffix in (".json", ".log") and p.is_file()]
    _tar(out / "results.tar", small, study_dir)
    shipped = sorted((runs if fold_weights else runs / "all-cases").rglob("*.safetensors"))
    batch: list[Path] = []
    for i, p in enumerate(shipped):
        batch.append(p)
        if sum(q.stat().st_size for q in batch) > 12e6 or i == len(shipped) - 1:
            _tar(out / f"weights-{i}.tar", batch, study_dir)
            batch = []


def _tar(path: Path, files: list[Path], root: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in files:
            tar.add(p, arcname=str(p.relative_to(root)))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def fit_to_budget(args: argparse.Namespace, study: StudyConfig) -> StudyConfig:
    """The study with N chosen so that every task (training, testing, imbalance) ends inside
    the budget, from the measured throughput of all workers busy at once."""
    # (time of 60 steps - time of 20 steps) / 40, every worker probing at the same time
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, initializer=experiment._start_worker, initargs=(study, None)) as pool:
        short = pool.map(probe, [20] * args.workers, chunksize=1)
        long = pool.map(probe, [60] * args.workers, chunksize=1)
    per_step = max(1e-3, float(sum(long) - sum(short)) / args.workers / 40)
    rate = args.workers / per_step
    setup = max(0.0, sum(short) / args.workers - 20 * per_step)
    log(f"{args.workers} workers: {per_step * 1000:.0f} ms per step each, {rate:.0f} steps/s in all "
        f"(batch {args.batch_size}); setup {setup:.1f} s per run", args.out)

    left = args.budget_s - (time.time() - T0)
    unit_tasks = plan(replace(study, steps=1, shipping_steps=args.shipping_ratio))
    units, n_tasks = sum(t.steps for t in unit_tasks), len(unit_tasks)
    usable = 0.8 * left - n_tasks * (args.eval_s + setup) / args.workers
    n = int(min(args.max_steps, max(50, usable * rate / units)))
    log(f"{left:.0f} s left: N = {n} steps per modality, shipping {args.shipping_ratio * n}; "
        f"{units * n} steps in {n_tasks} tasks", args.out)
    return replace(study, steps=n, shipping_steps=args.shipping_ratio * n,
                   stop_after_s=left - 2 * n * per_step - 2 * args.eval_s - setup - 30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-bundle", type=Path, help="write the bundle from --data and stop")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--out", type=Path, help="where the packed results go")
    parser.add_argument("--work", type=Path, default=Path("/tmp/study"))
    parser.add_argument("--budget-s", type=float, help="seconds from start to the last packing")
    parser.add_argument("--workers", type=int, default=max(1, (multiprocessing.cpu_count() or 2) - 1))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shipping-ratio", type=int, default=2, help="shipping runs: this many times N per modality")
    parser.add_argument("--eval-s", type=float, default=15.0, help="a task's testing time, guessed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-steps", type=int, default=20000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--steps", type=int, help="N, as an earlier call chose it: resume its study, no probe")
    parser.add_argument("--stop-after-s", type=float, help="with --steps: begin no task after this")
    # one long run instead of the whole study, e.g. a held-out estimate of the shipped recipe:
    # --workers 1 (its batches then drawn by every other core) --only-fold 0 --repetitions 1
    parser.add_argument("--variants", nargs="+", default=list(StudyConfig.variants))
    parser.add_argument("--protocols", nargs="+", default=list(StudyConfig.protocols))
    parser.add_argument("--only-fold", type=int, help="train and test this fold alone")
    parser.add_argument("--augment", help="the preset's augmentation changed, field=value,... (AugmentationConfig)")
    args = parser.parse_args()
    if args.write_bundle:
        data = StudyConfig(out_dir=args.work, ct=args.data / "abdomen-ct-btcv", mr=args.data / "abdomen-mr-chaos-t2",
                           totalseg=args.data / "totalsegmentator-examples")
        cases, examples = experiment.load_cases(data)
        save_bundle(cases + examples, args.write_bundle)
        log(f"wrote {args.write_bundle}: {len(cases)} cases and {len(examples)} examples")
        return 0
    if args.bundle is None or args.out is None or (args.budget_s is None and args.steps is None):
        parser.error("give --bundle, --out and --budget-s or --steps (or --write-bundle)")
    args.out.mkdir(parents=True, exist_ok=True)
    study = StudyConfig(out_dir=args.work, bundle=args.bundle, batch_size=args.batch_size, workers=args.workers,
                        device=args.device, repetitions=args.repetitions, variants=tuple(args.variants),
                        protocols=tuple(args.protocols), only_fold=args.only_fold, augment=args.augment)

    study = (replace(study, steps=args.steps, shipping_steps=args.shipping_ratio * args.steps,
                     stop_after_s=args.stop_after_s) if args.steps else fit_to_budget(args, study))

    fold_weights = args.only_fold is not None

    def progress(line: str) -> None:
        log(line, args.out)
        pack(args.work, args.out, fold_weights)

    run_study(study, log=progress)
    pack(args.work, args.out, fold_weights)
    log("done", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
