"""The `mmseg` command line: segment, evaluate, correct from hints, inspect weights, train and run the study."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from napari_mmseg.config import DEFAULT_VARIANT, DEVICE_CHOICES, PRESETS, PROTOCOLS, VARIANTS
from napari_mmseg.errors import MmsegError, ScanError
from napari_mmseg.io.safe_write import check_output, refuse_over_inputs, write_csv_atomic

EXIT_ERROR = 1


def cmd_segment(args: argparse.Namespace) -> int:
    if not args.quiet:  # importing torch below takes seconds: say at once that the run has begun
        what = args.inputs[0] if len(args.inputs) == 1 else f"{len(args.inputs)} inputs"
        weights = Path(args.weights).name if args.weights else f"the bundled {args.variant or DEFAULT_VARIANT} weights"
        print(f"segmenting {what} as {args.modality} with {weights}: loading the network", flush=True)
    from napari_mmseg.inference.cohort import Cohort, Shard, output_paths, report_paths, run_cohort, scan_inputs
    from napari_mmseg.inference.segment import InferenceOptions
    from napari_mmseg.models.weights import bundled_weights, load_weights
    from napari_mmseg.organs import check_modality

    modality = check_modality(args.modality)
    shard = Shard.from_environment()
    scans = scan_inputs(args.inputs)
    outs = output_paths(scans, args.output, args.overwrite, args.skip_existing, shard)
    report = report_paths(args.report, scans, outs, args.overwrite)
    weights = Path(args.weights) if args.weights else bundled_weights(args.variant or DEFAULT_VARIANT, modality)
    loaded = load_weights(weights, variant=args.variant, modality=modality)
    # the confidence maps cost time and memory: only when a report asks for the organs' confidence
    options = InferenceOptions(overlap=args.overlap, device=args.device, uncertainty=report is not None,
                               drop_stray_pieces=not args.keep_stray_pieces,
                               check_orientation=not args.no_orientation_check, try_inverted_mr=not args.as_given)
    cohort = Cohort(tuple(scans), tuple(outs), modality, options, args.overwrite, args.skip_existing, report,
                    args.quiet)
    return run_cohort(cohort, loaded, shard)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from napari_mmseg.io.datasets import remap_labels
    from napari_mmseg.io.reference_labels import reference_ids
    from napari_mmseg.io.scan_io import read_labels, same_geometry
    from napari_mmseg.metrics import dice_scores, mean_dice

    if args.csv:  # checked before the work; never the prediction or reference, even with --overwrite
        table = check_output(args.csv, args.overwrite)
        refuse_over_inputs(table, (args.prediction, args.reference), "the prediction or reference")
    pred_img, ref_img = read_labels(args.prediction), read_labels(args.reference)
    if pred_img.GetSize() != ref_img.GetSize():
        raise ScanError(
            f"The prediction is {pred_img.GetSize()} voxels, the reference {ref_img.GetSize()}: "
            "they must lie on the same grid (resample one onto the other first)."
        )
    if not same_geometry(pred_img, ref_img):
        raise ScanError(
            "The prediction and reference have the same size but different spacing, origin or direction: "
            "they are not on the same grid."
        )
    ids = reference_ids(Path(args.reference), ref_img, args.ref_labels)
    ref = remap_labels(sitk.GetArrayViewFromImage(ref_img), ids.convention.label_map())
    # only the organs the reference labels: an organ it does not name has no reference to score against
    scores = [s for s in dice_scores(sitk.GetArrayViewFromImage(pred_img), ref, pred_img.GetSpacing())
              if s.organ in ids.convention.organs]
    rows = [(s.organ, s.dice, s.predicted_ml, s.reference_ml) for s in scores]
    print(f"reference ids ({ids.source}): {ids.convention.describe()}")
    if ids.warning:
        print(f"warning: {ids.warning}", file=sys.stderr)
    print(f"{'organ':<14}{'Dice':>8}{'pred ml':>11}{'ref ml':>11}")
    for organ, dice, p, r in rows:
        print(f"{organ:<14}{dice:>8.4f}{p:>11.1f}{r:>11.1f}")
    print(f"{'mean':<14}{mean_dice(scores):>8.4f}")
    if args.csv:
        write_csv_atomic(args.csv, ["organ", "dice", "predicted_ml", "reference_ml"], rows, args.overwrite)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from napari_mmseg.correction.model import is_correction_file, load_correction_model
    from napari_mmseg.correction.model import summary_lines as correction_summary
    from napari_mmseg.models.weights import bundled_weights, load_weights
    from napari_mmseg.models.weights_summary import bundled_lines, summary_lines

    path = Path(args.weights) if args.weights else bundled_weights(DEFAULT_VARIANT)
    if args.weights and is_correction_file(path):
        correction = load_correction_model(path, device="cpu")  # the whole file checked, as below
        print(correction.meta.to_json() if args.json else "\n".join(correction_summary(correction.meta, str(path))))
        return 0
    meta = load_weights(path).meta  # the whole file checked: metadata, shapes, finite numbers
    if args.json:
        print(json.dumps(json.loads(meta.to_json()), indent=2))
        return 0
    print("\n".join(summary_lines(meta, path.name if args.weights is None else str(path))))
    if args.weights is None:
        print(f"\nbundled weights (the default, {DEFAULT_VARIANT}, above; `mmseg segment --variant` picks another):")
        print("\n".join(bundled_lines()))
        print("  correction.safetensors      the correction network of `mmseg refine` and the correction panel")
    print("\nthe full record: mmseg info" + (f" {args.weights}" if args.weights else "") + " --json")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from napari_mmseg.models.weights import average_weights, save_weights

    out = check_output(args.out, args.overwrite, make_parents=True)  # refused before the work
    refuse_over_inputs(out, args.weights, "one of the files averaged")
    averaged = average_weights(args.weights)
    print(f"wrote {save_weights(averaged.model, averaged.meta, out, half=args.half, overwrite=args.overwrite)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from napari_mmseg.io.datasets import load_dataset
    from napari_mmseg.models.weights import checked_lineage, read_metadata
    from napari_mmseg.training.trainer import TrainingRun, split_cases, train

    preset = PRESETS[args.preset]
    if args.batch_size is not None:
        preset = replace(preset, training=replace(preset.training, batch_size=args.batch_size))
    if args.lr is not None:
        preset = replace(preset, training=replace(preset.training, lr_single=args.lr, lr_dual=args.lr))
    try:
        preset = preset.with_augmentation(args.augment)
    except ValueError as err:
        raise SystemExit(f"mmseg train --augment {args.augment}: {err}") from None
    if args.sampler_workers is not None and args.sampler_workers < 0:
        raise SystemExit(f"mmseg train --sampler-workers {args.sampler_workers}: give 0 (batches drawn by the "
                         "trainer) or more worker processes")
    names = [f"individual-{m}" for m, given in (("ct", args.ct), ("mr", args.mr)) if given] \
        if args.variant == "individual" else [args.variant]
    for name in names:  # weights a finished run left are refused before the work; a start file always
        target = check_output(Path(args.out) / f"{name}.safetensors", args.overwrite, make_parents=True)
        refuse_over_inputs(target, args.init_weights or [], "one of --init-weights")
    starts = {}
    for path in args.init_weights or []:
        meta = read_metadata(path)
        if meta.variant != args.variant:
            raise SystemExit(f"mmseg train: {path} holds a {meta.variant} network, not {args.variant}")
        checked_lineage(meta.training, Path(path).name)  # recorded in the result at the end: checked now
        starts[meta.modalities] = Path(path)
    cases = []
    if args.ct:
        cases += load_dataset(args.ct, "CT")
    if args.mr:
        cases += load_dataset(args.mr, "MR")
    for m in ("CT", "MR"):  # the default, 2, is fewer on a small dataset; a number given is kept or refused
        n = sum(c.modality == m for c in cases)
        if n and args.val_cases is not None and args.val_cases > n - 1:
            raise ScanError(f"--val-cases {args.val_cases}: the {m} dataset has {n} case(s), and at least one must "
                            f"be left to train on; hold out at most {n - 1}.")
    seed = args.seed if args.seed is not None else preset.training.seed
    train_cases, val_cases = split_cases(cases, 2 if args.val_cases is None else args.val_cases, seed)
    present = tuple(m for m in ("CT", "MR") if any(c.modality == m for c in cases))
    groups = [(m,) for m in present] if args.variant == "individual" else [("CT", "MR")]
    log_path = Path(args.out) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    for modalities in groups:
        if args.init_weights and modalities not in starts:
            raise SystemExit(f"mmseg train: none of --init-weights is a {args.variant} network for "
                             f"{'/'.join(modalities)}")
        run = TrainingRun(args.variant, preset, Path(args.out), modalities, args.device, args.steps, seed,
                          progress_bar=not args.quiet, init_weights=starts.get(modalities),
                          sampler_workers=args.sampler_workers, overwrite=args.overwrite)
        weights = train(run, train_cases, val_cases, log=log)
        print(f"wrote {weights} (log: {log_path})")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from napari_mmseg.study.config import StudyConfig
    from napari_mmseg.study.experiment import run_study
    from napari_mmseg.study.report import write_report

    study = StudyConfig(
        out_dir=Path(args.out), ct=Path(args.ct) if args.ct else None, mr=Path(args.mr) if args.mr else None,
        bundle=Path(args.bundle) if args.bundle else None,
        totalseg=Path(args.totalseg) if args.totalseg else None, preset=args.preset,
        variants=tuple(args.variants), protocols=tuple(args.protocols), repetitions=args.repetitions,
        folds=args.folds, steps=args.steps, batch_size=args.batch_size, workers=args.workers, device=args.device,
        curve_points=args.curve_points, only_fold=args.only_fold, augment=args.augment,
    )
    try:
        study.preset_used()
    except ValueError as err:
        raise SystemExit(f"mmseg experiment --augment {args.augment}: {err}") from None
    if study.bundle is None and (study.ct is None or study.mr is None):
        raise SystemExit("mmseg experiment: give --ct and --mr dataset folders, or --bundle")
    report = write_report(run_study(study, log=(lambda line: None) if args.quiet else print), study)
    print(f"wrote {report}")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from napari_mmseg.correction.hints import read_hints
    from napari_mmseg.io.datasets import LABEL_PRESETS, remap_labels
    from napari_mmseg.io.reference_labels import misplaced, organ_layout, reference_ids
    from napari_mmseg.io.scan_io import LABEL_SUFFIXES, path_suffix, read_labels, read_scan, same_geometry, write_labels
    from napari_mmseg.organs import NUM_CLASSES, check_modality

    modality = check_modality(args.modality)
    out = Path(args.output)
    if path_suffix(out) not in LABEL_SUFFIXES:
        raise ScanError(f"-o {args.output}: label files end in .nii.gz, .nii, .nrrd or .mha.")
    refuse_over_inputs(out, (args.scan, args.labels, args.hints), "an input")
    check_output(out, args.overwrite, make_parents=True)  # refused before the work
    scan = read_scan(args.scan)
    labels_image = read_labels(args.labels)
    if not same_geometry(labels_image, scan):
        raise ScanError(f"{args.labels} is not on the scan's grid (size {labels_image.GetSize()}, spacing, origin "
                        f"and direction must be the scan's {scan.GetSize()}): resample it onto the scan first.")
    given = sitk.GetArrayFromImage(labels_image)
    if args.label_ids:  # another numbering: corrected in ours, written back in its own ids
        numbering = reference_ids(Path(args.labels), labels_image, args.label_ids, "--label-ids")
        if numbering.warning:
            print(f"mmseg: warning: {numbering.warning}", file=sys.stderr)
        convention = numbering.convention
        labels = remap_labels(given, convention.label_map())
    else:
        convention = None
        if given.max() >= NUM_CLASSES:
            raise ScanError(f"{args.labels} holds label id {int(given.max())}: this tool's ids are 0 background, "
                            "1 liver, 2 spleen, 3 right kidney, 4 left kidney; for another numbering pass "
                            f"--label-ids with its dataset's name ({', '.join(LABEL_PRESETS)}) or name=id pairs.")
        wrong_side = misplaced(LABEL_PRESETS["mmseg"], organ_layout(labels_image))
        if wrong_side:
            print(f"mmseg: warning: read with this tool's ids, {wrong_side}: if the file uses another numbering "
                  "(CHAOS: liver 1, right kidney 2, left kidney 3, spleen 4), pass --label-ids.", file=sys.stderr)
        labels = given.astype(np.uint8)
    start = labels
    hints = read_hints(args.hints, scan)  # every hint checked before any work

    from napari_mmseg.correction.model import load_correction_model  # the network: only once the input is sound
    from napari_mmseg.correction.refine import refine

    model = load_correction_model(args.weights, device=args.device)
    voxel_ml = float(np.prod(scan.GetSpacing())) / 1000.0
    for k, hint in enumerate(hints, start=1):
        result = refine(scan, labels, hints[:k], modality, model)  # each step sees the hints so far, as in napari
        old, new = labels[result.region], result.labels[result.region]  # nothing changes outside the region
        changed = int(np.count_nonzero(new != old))
        grown = int(np.count_nonzero(new == hint.label)) - int(np.count_nonzero(old == hint.label))
        points = f"{len(hint.points)} point{'s' * (len(hint.points) > 1)}"
        print(f"hint {k}: {hint.sign}{hint.organ} ({points}): {changed} voxels changed ({changed * voxel_ml:.1f} ml), "
              f"{hint.organ} {grown * voxel_ml:+.1f} ml, {result.seconds:.2f} s")
        labels = result.labels
    if convention is not None:  # only the corrected voxels take new ids; other structures stay as they were
        changed = labels != start
        ours, labels = labels, given.copy()
        labels[changed] = convention.from_our_ids(ours[changed])
    write_labels(labels, out, scan, source=args.scan, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def _counted(least: int):
    """An argparse type: a whole number of at least `least` (a wrong one is a usage error, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: give {least} or more")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment liver, spleen and kidneys in CT or MR scans")
    p.add_argument("inputs", nargs="+", help="scan files (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), folders of them, "
                   "or DICOM series folders")
    p.add_argument("-o", "--output", required=True, help="output label file (one input) or folder")
    p.add_argument("--modality", required=True, type=str.upper, choices=("CT", "MR"))
    p.add_argument("--variant", choices=VARIANTS,
                   help=f"bundled weights to use (default {DEFAULT_VARIANT}); with --weights, checks the file's")
    p.add_argument("--weights", help="a weights file instead of the bundled one")
    p.add_argument("--device", default="auto", type=str.lower, choices=DEVICE_CHOICES)
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    p.add_argument("--keep-stray-pieces", action="store_true",
                   help="keep pieces of an organ smaller than half its largest piece (dropped by default)")
    p.add_argument("--no-orientation-check", action="store_true",
                   help="skip the second pass on the scan's left-right mirror image that flags a file whose "
                   "orientation swaps left and right (faster: about half the network time)")
    p.add_argument("--as-given", action="store_true",
                   help="MR: read the scan only as given, not also with its grey levels inverted (the "
                   "reading kept when the network is surer of it: T1-like sequences); one pass fewer")
    p.add_argument("--report", help="also write each scan's status, time, organ volumes, confidence and review "
                   "flags to this JSON file, keyed by scan path, and to a CSV file beside it (a .csv name: the CSV "
                   "alone)")
    kept = p.add_mutually_exclusive_group()
    kept.add_argument("--overwrite", action="store_true", help="replace existing output files")
    kept.add_argument("--skip-existing", action="store_true",
                      help="skip the scans whose labels are there already (resume an interrupted batch)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="Dice per organ and volumes of a prediction against a reference")
    p.add_argument("prediction", help="label file in this tool's ids (1 liver, 2 spleen, 3 right kidney, 4 left)")
    p.add_argument("reference", help="reference label file on the same grid")
    p.add_argument("--ref-labels", metavar="DATASET|NAME=ID,...",
                   help="what the reference's ids mean: a dataset's numbering (BTCV, CHAOS, AMOS, TotalSegmentator, "
                   "or mmseg for this tool's), or name=id pairs naming every id in it, e.g. liver=6,spleen=1,"
                   "kidney_right=2,kidney_left=3,gallbladder=4 (default: the dataset.json beside it, else the "
                   "one numbering that explains its ids and organ positions; refused when none or several do)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("refine", help="correct labels from hints (clicks and scribbles in mm) with the learned "
                       "correction model")
    p.add_argument("scan", help="the scan the labels belong to")
    p.add_argument("--labels", required=True, help="labels on the scan's grid, in this tool's ids unless "
                   "--label-ids says otherwise")
    p.add_argument("--label-ids", metavar="DATASET|NAME=ID,...",
                   help="what the label file's ids mean when they are not this tool's (1 liver, 2 spleen, 3 right "
                   "kidney, 4 left kidney): a dataset's numbering (BTCV, CHAOS, AMOS, TotalSegmentator) or name=id "
                   "pairs naming every id in it; the refined file keeps that numbering, and the ids of other "
                   "structures stay as they were where nothing was corrected")
    p.add_argument("--hints", required=True, help="CSV (x,y,z,organ,sign[,stroke]; x, y, z in mm, LPS) or JSON "
                   "({\"hints\": [{\"organ\": \"spleen\", \"sign\": \"+\", \"points_mm\": [[x, y, z]]}]}); "
                   "applied in file order")
    p.add_argument("-o", "--output", required=True, help="the refined label file")
    p.add_argument("--modality", required=True, type=str.upper, choices=("CT", "MR"))
    p.add_argument("--weights", help="a correction weights file instead of the bundled one")
    p.add_argument("--device", default="auto", type=str.lower, choices=DEVICE_CHOICES)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("info", help="what a weights file is: network, grid, training data, held-out Dice")
    p.add_argument("weights", nargs="?", help="a weights file (default: the bundled default, and a list of the "
                   "bundled files)")
    p.add_argument("--json", action="store_true", help="print the file's full metadata record as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("average", help="average fine-tunes of one network (a model soup) into one weights file")
    p.add_argument("weights", nargs="+", help="two or more weights files of the same network")
    p.add_argument("-o", "--out", required=True, help="the averaged weights file")
    p.add_argument("--half", action="store_true", help="store float16 tensors (half the size, as shipped)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("train", help="train one variant on unpaired CT and MR")
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--ct", help="CT dataset folder (nnU-Net raw, BTCV img/+label/ or CHAOS layout)")
    p.add_argument("--mr", help="MR dataset folder")
    p.add_argument("--preset", default="light", choices=sorted(PRESETS))
    p.add_argument("--device", default="auto", type=str.lower, choices=DEVICE_CHOICES)
    p.add_argument("--out", default="runs/train", help="folder for checkpoints, log and weights")
    p.add_argument("--steps", type=_counted(1), help="training steps (default: the preset's)")
    p.add_argument("--val-cases", type=_counted(0), help="cases per modality held out for validation (default 2, "
                   "fewer on a dataset of 2 or 1 cases)")
    p.add_argument("--batch-size", type=_counted(1), help="patches per step (default: the preset's)")
    p.add_argument("--overwrite", action="store_true", help="replace weights a finished run left in --out")
    p.add_argument("--init-weights", nargs="+", metavar="FILE",
                   help="fine-tune: start from these weights of the same variant and preset (for individual: the "
                   "CT and the MR file)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the preset's; lower to fine-tune)")
    p.add_argument("--augment", metavar="FIELD=VALUE,...",
                   help="change the preset's augmentation, e.g. p_coarse=0 (no coarse patches, so no context "
                   "pass); the fields of AugmentationConfig")
    p.add_argument("--seed", type=int)
    p.add_argument("--sampler-workers", type=int, metavar="N",
                   help="processes drawing training batches beside the trainer (default: every other core on "
                   "a GPU, none on the CPU); they change the speed, never the batches")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("experiment", help="the paper's study: does multi-modal training help, in-domain and on "
                       "shifted contrasts (cross-validated, equal exposure and the paper's same total)")
    p.add_argument("--ct", help="CT dataset folder")
    p.add_argument("--mr", help="MR dataset folder")
    p.add_argument("--bundle", help="prepared cases instead of --ct/--mr (see benchmarks/study_on_gpu.py)")
    p.add_argument("--totalseg", help="folder of TotalSegmentator's example CT and MR, also tested")
    p.add_argument("--preset", default="light", choices=sorted(PRESETS))
    p.add_argument("--variants", nargs="+", default=["individual", "joint", "msbn", "v4"], choices=VARIANTS)
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS,
                   help="equal-exposure: 2N steps for a multi-modal network (N per modality); same-total: N")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--steps", type=int, help="N, training steps per modality (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--workers", type=int, default=1, help="worker processes (several can share one GPU)")
    p.add_argument("--curve-points", type=int, default=8, help="validation Dice this many times along each run "
                   "of repetition 0 (the learning curves)")
    p.add_argument("--only-fold", type=int, help="run this fold alone (with --repetitions 1: a learning-curve run)")
    p.add_argument("--augment", metavar="FIELD=VALUE,...", help="change the preset's augmentation in every run, "
                   "e.g. p_enlarge=0; the fields of AugmentationConfig")
    p.add_argument("--device", default="auto", type=str.lower, choices=DEVICE_CHOICES)
    p.add_argument("--out", default="runs/study")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_experiment)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that writes in progress remove their partial files."""


def _signal_handler(owner: int):
    """Ctrl-C and SIGTERM raised as exceptions in this process, so that writes in progress
    remove their partial files; a process forked from it (a worker) just ends, quietly:
    this one says what happened."""

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    return handler


def _stopped(word: str, code: int) -> int:
    for s in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut this short
        signal.signal(s, signal.SIG_IGN)
    print(f"mmseg: {word}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 1 any error (one line on stderr), 2 bad arguments (argparse),
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM), at any moment."""
    handler = _signal_handler(os.getpid())
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(argv)
    except KeyboardInterrupt:  # also when it arrives while an error is being reported
        return _stopped("interrupted", 130)
    except Terminated:
        return _stopped("terminated", 128 + signal.SIGTERM)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MmsegError as e:
        print(f"mmseg: error: {e}", file=sys.stderr)
    except ValueError as e:  # bad arguments caught by the core (modality, overlap, ...)
        print(f"mmseg: error: {e}", file=sys.stderr)
    except BrokenPipeError:  # stdout's reader went away (`mmseg info | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush stays quiet
    except OSError as e:  # any file-system failure not already explained
        where = f"{e.filename}: " if e.filename else ""
        print(f"mmseg: error: {where}{e.strerror or e}.", file=sys.stderr)
    except MemoryError:
        print("mmseg: error: out of memory; try --device cpu, a smaller --overlap, or a machine with more memory.",
              file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
