"""The paper's study on real data, made fair: k-fold cross-validation (patients split per
modality) repeated with different seeds. Every multi-modal variant is trained twice: for as
many steps per modality as an individual network gets (equal exposure, 2N in all) and, as
the paper did, for the same total (N). Each run is tested on its held-out patients as they
are, under the contrast shifts of `contrast_shifts.py`, and on TotalSegmentator's examples,
all on the model's grid; repetition 0 also records validation Dice along the way (the
learning curves).

Runs are independent tasks, each cached when done, so an interrupted study resumes; several
worker processes can share one GPU. `report.py` turns the cached scores into tables.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from napari_mmseg.contrast_shifts import shifts_for
from napari_mmseg.device import one_thread_per_worker, resolve_device
from napari_mmseg.inference.mr_polarity import was_read_inverted
from napari_mmseg.inference.segment import InferenceOptions, kept_reading, labels_on_model_grid, read_each_way
from napari_mmseg.io.datasets import load_dataset, totalsegmentator_examples
from napari_mmseg.io.safe_write import write_text_atomic
from napari_mmseg.metrics import dice_scores
from napari_mmseg.models.dual_stream import DUAL_STREAM, use_blended_statistics
from napari_mmseg.models.weights import LoadedModel, load_weights
from napari_mmseg.organs import MODALITIES, ORGAN_BY_NAME
from napari_mmseg.study.config import StudyConfig
from napari_mmseg.training.organ_enlargement import enlarge_organ
from napari_mmseg.training.trainer import TrainingRun, train_prepared
from napari_mmseg.training.training_data import PreparedCase, load_bundle, prepare_case

ENLARGED_SPLEEN_FACTOR = 2.0  # in length: a typical spleen of 0.25 l becomes about 1.5–2 l
ENLARGED_SPLEEN = "spleen enlarged 2× in length"
# Thin slabs (a breath-hold T1 series, TotalSegmentator's 20-slice example MR): the test case
# cut to this many slices of the model's grid (60 mm at 3 mm) around the middle of two organs.
THIN_SLAB_SLICES = 20
THIN_SLAB_CENTRES = {"kidneys": ("kidney_right", "kidney_left"), "liver and spleen": ("liver", "spleen")}
ALL_CASES = "all cases"  # a task trained on every case (the files to ship), not tested
TOTALSEG_PREFIX = "ts-example"


@dataclass(frozen=True)
class StudyTask:
    variant: str
    modalities: tuple[str, ...]
    protocol: str  # one of PROTOCOLS (individual networks: "equal-exposure") or ALL_CASES
    steps: int  # in all
    repetition: int = 0
    fold: int = 0

    @property
    def run_dir(self) -> str:
        if self.protocol == ALL_CASES:
            return "all-cases"
        return f"rep{self.repetition}-fold{self.fold}/{self.protocol}"

    def training_run(self, study: StudyConfig) -> TrainingRun:
        preset = study.preset_used()
        if self.protocol != ALL_CASES and self.repetition == 0:
            every = max(1, self.steps // study.curve_points)
            preset = replace(preset, training=replace(preset.training, validate_every=every))
        return TrainingRun(self.variant, preset, Path(study.out_dir) / "runs" / self.run_dir, self.modalities,
                           study.device, self.steps, seed=self.repetition, progress_bar=False)

    def scores_path(self, study: StudyConfig) -> Path:
        run = self.training_run(study)
        return run.out_dir / f"{run.name}.scores.json"


def plan(study: StudyConfig) -> list[StudyTask]:
    """Every task, in the order to run them: the shipping runs, then repetition by
    repetition (an interrupted study keeps whole repetitions), longest first."""
    n = study.steps_per_modality
    tasks: list[StudyTask] = []

    def groups(variant: str) -> list[tuple[str, ...]]:
        return [(m,) for m in MODALITIES] if variant == "individual" else [MODALITIES]

    if study.shipping_steps:
        tasks += [StudyTask(v, g, ALL_CASES, study.shipping_steps * len(g)) for v in study.variants for g in groups(v)]
    for rep in range(study.repetitions):
        mine: list[StudyTask] = []
        for fold in range(study.folds) if study.only_fold is None else (study.only_fold,):
            for v in study.variants:
                for g in groups(v):
                    protocols = ("equal-exposure",) if v == "individual" else study.protocols
                    for p in protocols:
                        mine.append(StudyTask(v, g, p, n * len(g) if p == "equal-exposure" else n, rep, fold))
        tasks += sorted(mine, key=lambda t: -t.steps)
    return tasks


def fold_split(cases: list, folds: int, seed: int) -> list[list]:
    """Patients of each modality shuffled with `seed` and dealt into `folds` parts."""
    parts: list[list] = [[] for _ in range(folds)]
    for m in MODALITIES:
        mine = sorted((c for c in cases if c.modality == m), key=lambda c: c.name)
        for i, k in enumerate(np.random.default_rng(seed).permutation(len(mine))):
            parts[i % folds].append(mine[k])
    return parts


def load_cases(study: StudyConfig) -> tuple[list[PreparedCase], list[PreparedCase]]:
    """The study's cases and TotalSegmentator's examples, on the model's grid."""
    if study.bundle is not None:
        every = load_bundle(study.bundle)
    else:
        cfg = study.preset_used().training
        labelled = load_dataset(study.ct, "CT") + load_dataset(study.mr, "MR")
        if study.totalseg is not None:
            labelled += totalsegmentator_examples(study.totalseg)
        every = [prepare_case(c, cfg.spacing_mm, cfg.patch_size) for c in labelled]
    ts = [c for c in every if c.name.startswith(TOTALSEG_PREFIX)]
    return [c for c in every if not c.name.startswith(TOTALSEG_PREFIX)], ts


EVALUATION_KINDS = ("in-domain", "shifted", "enlarged", "slab", "totalseg")


def thin_slab(values: np.ndarray, labels: np.ndarray, organs: tuple[str, ...],
              slices: int = THIN_SLAB_SLICES) -> tuple[np.ndarray, np.ndarray]:
    """The case's `slices` consecutive slices (first axis) centred on the median slice of
    the organs' voxels, with their labels."""
    z = np.nonzero(np.isin(labels, [ORGAN_BY_NAME[o].label for o in organs]).any(axis=(1, 2)))[0]
    middle = int(np.median(z)) if z.size else labels.shape[0] // 2
    start = int(np.clip(middle - slices // 2, 0, max(labels.shape[0] - slices, 0)))
    return values[start:start + slices], labels[start:start + slices]


def evaluate(loaded: LoadedModel, test: list[PreparedCase], totalseg: list[PreparedCase], device: str,
             shifted_cache: dict | None = None, kinds: tuple[str, ...] = EVALUATION_KINDS,
             try_inverted_mr: bool = True) -> list[dict]:
    """Dice per organ on the model's grid: each test case as it is, under every contrast
    shift of its modality, with its spleen enlarged and cut to thin slabs, and the
    TotalSegmentator examples. MR is read both ways round, as `segment_image` reads it, unless
    `try_inverted_mr` is off. Dual-stream networks are also scored, as they are, with
    blended BN statistics (what a plain shared BN would use)."""
    meta, model = loaded.meta, loaded.model
    dev = resolve_device(device)
    spacing = (meta.spacing_mm,) * 3
    cache = {} if shifted_cache is None else shifted_cache
    options = InferenceOptions(try_inverted_mr=try_inverted_mr, check_orientation=False)
    rows: list[dict] = []

    def score(case: PreparedCase, values: np.ndarray, kind: str, condition: str, bn: str,
              labels: np.ndarray | None = None) -> None:
        reading = kept_reading(read_each_way(loaded, values, case.modality, dev, options))
        pred = labels_on_model_grid(reading.probs)
        for s in dice_scores(pred, case.labels if labels is None else labels, spacing):
            rows.append({"case": case.name, "modality": case.modality, "kind": kind, "condition": condition,
                         "organ": s.organ, "dice": s.dice, "predicted_ml": s.predicted_ml,
                         "reference_ml": s.reference_ml, "bn_statistics": bn,
                         "read_inverted": was_read_inverted(reading.polarity)})

    bn = "per-modality" if meta.variant in DUAL_STREAM else "shared"
    for case in (c for c in test if c.modality in meta.modalities):
        if "in-domain" in kinds:
            score(case, case.values, "in-domain", "as is", bn)
            if meta.variant in DUAL_STREAM:
                use_blended_statistics(model, True)
                score(case, case.values, "in-domain", "as is", "blended")
                use_blended_statistics(model, False)
        for shift in shifts_for(case.modality) if "shifted" in kinds else ():
            key = (case.modality, case.name, shift.name)
            if key not in cache:
                cache[key] = shift.fn(case.values, case.labels, spacing, np.random.default_rng(0))
            score(case, cache[key], "shifted", shift.name, bn)
        if "enlarged" in kinds:
            key = (case.modality, case.name, ENLARGED_SPLEEN)
            if key not in cache:
                cache[key] = enlarge_organ(case.values, case.labels, ORGAN_BY_NAME["spleen"].label,
                                           ENLARGED_SPLEEN_FACTOR, spacing)
            enlarged_values, enlarged_labels = cache[key]
            score(case, enlarged_values, "enlarged", ENLARGED_SPLEEN, bn, enlarged_labels)
        for where, organs in THIN_SLAB_CENTRES.items() if "slab" in kinds else ():
            slab_values, slab_labels = thin_slab(case.values, case.labels, organs)
            score(case, slab_values, "slab", f"{THIN_SLAB_SLICES * meta.spacing_mm:.0f} mm at the {where}", bn,
                  slab_labels)
    for case in (c for c in totalseg if c.modality in meta.modalities and "totalseg" in kinds):
        score(case, case.values, "totalseg", "as is", bn)
    return rows


# One worker's cases and shifted scans, loaded once and kept across its tasks.
_WORKER: dict = {}


def _start_worker(study: StudyConfig, deadline: float | None) -> None:
    if study.workers > 1:
        one_thread_per_worker()
    _WORKER.update(study=study, deadline=deadline, shifted={})
    _WORKER["cases"], _WORKER["totalseg"] = load_cases(study)


def run_task(task: StudyTask) -> tuple[StudyTask, float | None]:
    """Train, test and cache one task; the seconds it took (None: skipped, past the deadline)."""
    study, deadline = _WORKER["study"], _WORKER["deadline"]
    if deadline is not None and time.time() > deadline:
        return task, None
    t0 = time.perf_counter()
    cases = _WORKER["cases"]
    if task.protocol == ALL_CASES:
        train_cases, test = cases, []
    else:
        parts = fold_split(cases, study.folds, seed=task.repetition)
        test = parts[task.fold]
        train_cases = [c for i, p in enumerate(parts) if i != task.fold for c in p]
    run = task.training_run(study)
    prepared = {m: [c for c in train_cases if c.modality == m] for m in task.modalities}
    curve_cases = {m: [c for c in test if c.modality == m] for m in task.modalities} if task.repetition == 0 else {}
    log_path = run.out_dir / f"{run.name}.log"
    run.out_dir.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    loaded = load_weights(train_prepared(run, prepared, curve_cases if test else {}, log))
    rows = evaluate(loaded, test, _WORKER["totalseg"], study.device, _WORKER["shifted"]) if test else []
    curve = loaded.meta.training.get("validation_history", [])
    for r in rows:
        r.update(repetition=task.repetition, fold=task.fold, variant=task.variant, protocol=task.protocol,
                 steps=task.steps)
    seconds = time.perf_counter() - t0
    record = {"task": asdict(task), "seconds": round(seconds, 1), "rows": rows, "curve": curve}
    write_text_atomic(task.scores_path(study), json.dumps(record), overwrite=True)
    (run.out_dir / f"{run.name}.checkpoint.pt").unlink(missing_ok=True)
    return task, seconds


def run_study(study: StudyConfig, log=print) -> Path:
    """Run every task not yet cached (in `study.workers` processes), caching their scores in
    `study.out_dir` (returned; `study.report.write_report` turns them into tables). Logs what
    each finished task took and an estimate of the time left."""
    out = Path(study.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = plan(study)
    pending = [t for t in tasks if not t.scores_path(study).is_file()]
    deadline = time.time() + study.stop_after_s if study.stop_after_s is not None else None
    total = sum(t.steps for t in pending)
    log(f"{len(tasks)} tasks, {len(pending)} to run ({total} training steps) in {study.workers} worker(s)")
    t0, done, skipped = time.perf_counter(), 0, 0

    def finished(task: StudyTask, seconds: float | None) -> None:
        nonlocal done, skipped
        if seconds is None:
            skipped += 1
            return
        done += task.steps
        elapsed = time.perf_counter() - t0
        left = elapsed * (total - done) / max(done, 1)
        log(f"{task.run_dir} {task.variant} {'+'.join(task.modalities)}: {seconds:.0f} s; "
            f"{done}/{total} steps done, about {left / 60:.0f} min left")

    if study.workers <= 1:
        _start_worker(study, deadline)
        for task in pending:
            finished(*run_task(task))
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(study.workers, initializer=_start_worker, initargs=(study, deadline)) as pool:
            for result in pool.imap_unordered(run_task, pending):
                finished(*result)
    if skipped:
        log(f"{skipped} tasks left for a later call (past stop_after_s)")
    return out
