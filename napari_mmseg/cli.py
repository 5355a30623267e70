"""The `mmseg` command line: segment, evaluate, inspect weights, train and run the study."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from napari_mmseg.config import DEFAULT_VARIANT, PRESETS, PROTOCOLS, VARIANTS
from napari_mmseg.device import DEVICE_CHOICES
from napari_mmseg.errors import MmsegError, ScanError
from napari_mmseg.io.safe_write import check_output, write_csv_atomic, write_text_atomic
from napari_mmseg.organs import ORGANS

EXIT_ERROR = 1


def _scan_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given; a folder of scan files gives each file, except hidden ones (such as
    `safe_write`'s partial files or macOS `._` twins); any other folder is a DICOM series."""
    from napari_mmseg.io.scan_io import SCAN_SUFFIXES, path_suffix

    scans: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise ScanError(f"{p} does not exist: check the path.")
        if p.is_dir():
            files = sorted(f for f in p.iterdir()
                           if f.is_file() and not f.name.startswith(".") and path_suffix(f) in SCAN_SUFFIXES)
            scans.extend(files or [p])
        else:
            scans.append(p)
    return scans


def _output_paths(scans: list[Path], output: str, overwrite: bool) -> list[Path]:
    """Where each scan's labels go, checked before any work: a label file for one scan, else
    a folder (existing, or a name without a file extension)."""
    from napari_mmseg.io.scan_io import LABEL_SUFFIXES, path_suffix, strip_suffix

    out_path = Path(output)
    suffix = "" if output.endswith(("/", os.sep)) or out_path.is_dir() else path_suffix(out_path)
    if len(scans) == 1 and suffix in LABEL_SUFFIXES:
        outs = [out_path]
    elif len(scans) == 1 and suffix:
        raise ScanError(f"-o {output}: label files end in .nii.gz, .nii, .nrrd or .mha (a folder name, in /).")
    else:
        if out_path.exists() and not out_path.is_dir():
            what = "with several inputs, -o names a folder" if len(scans) > 1 else \
                "give a label file (.nii.gz, .nii, .nrrd, .mha) or a folder"
            raise ScanError(f"-o {output} is not a folder: {what}.")
        outs = [out_path / f"{strip_suffix(s)}.nii.gz" for s in scans]
    if len(set(outs)) != len(outs):
        raise ScanError("Two inputs have the same name; segment them into different output folders.")
    for scan, out in zip(scans, outs, strict=True):
        if out.exists() and any(out.samefile(s) for s in scans):
            raise ScanError(f"Refusing to write labels over the scan {scan}; choose another output.")
        check_output(out, overwrite, make_parents=True)
    return outs


def _report_path(report: str | None, scans: list[Path], outs: list[Path], overwrite: bool) -> Path | None:
    if report is None:
        return None
    path = Path(report)
    if any(path.resolve() == p.resolve() for p in (*scans, *outs)):
        raise ScanError(f"--report {path} is one of the scans or label files; choose another name.")
    return check_output(path, overwrite)


def write_report(path: Path, reports: dict[str, dict], overwrite: bool) -> None:
    """The review of every scan so far, keyed by scan path (rewritten after each scan, so an
    interrupted batch keeps what it did)."""
    write_text_atomic(path, json.dumps(reports, indent=2, allow_nan=False) + "\n", overwrite=overwrite)


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_mmseg.inference.segment import InferenceOptions, segment_image
    from napari_mmseg.io.scan_io import read_scan, write_labels
    from napari_mmseg.models.weights import bundled_weights, load_weights
    from napari_mmseg.organs import check_modality

    modality = check_modality(args.modality)
    scans = _scan_inputs(args.inputs)
    outs = _output_paths(scans, args.output, args.overwrite)
    report = _report_path(args.report, scans, outs, args.overwrite)
    reports: dict[str, dict] = {}
    weights = Path(args.weights) if args.weights else bundled_weights(args.variant or DEFAULT_VARIANT, modality)
    loaded = load_weights(weights, variant=args.variant, modality=modality)
    # the confidence maps cost time and memory: only when a report asks for the organs' confidence
    options = InferenceOptions(overlap=args.overlap, device=args.device, uncertainty=report is not None,
                               drop_stray_pieces=not args.keep_stray_pieces,
                               check_orientation=not args.no_orientation_check, try_inverted_mr=not args.as_given)
    for scan, out in zip(scans, outs, strict=True):
        t0 = time.perf_counter()
        image = read_scan(scan)
        with tqdm(total=100, desc=scan.name, unit="%", disable=args.quiet, leave=False) as bar:

            def progress(fraction: float, stage: str, bar=bar) -> None:
                bar.set_postfix_str(stage)
                bar.update(round(100 * fraction) - bar.n)

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    result = segment_image(image, loaded, modality, options, progress=progress)
                except ScanError as e:  # e.g. a grid too large: say which scan, in a batch
                    raise ScanError(f"{scan}: {e}") from None
        for w in caught:
            print(f"warning: {scan.name}: {w.message}", file=sys.stderr)
        write_labels(result.labels, out, image, source=scan, overwrite=args.overwrite)
        if report is not None:
            reports[str(scan)] = {"labels": str(out), "variant": loaded.meta.variant, "modality": modality,
                                  "context_blended": result.context_blended,
                                  "read_inverted": result.read_inverted, **result.review.to_dict()}
            write_report(report, reports, overwrite=args.overwrite or len(reports) > 1)
        if not args.quiet:
            print(f"{scan} -> {out} ({loaded.meta.variant}, {modality}, {result.device}, "
                  f"{time.perf_counter() - t0:.1f} s)")
            for note in result.notes:
                print(f"  note: {note}")
            for flag in result.review.flags:
                print(f"  check: {flag}")
    return 0


def parse_label_mapping(text: str) -> dict[int, int]:
    """`liver=6,spleen=1,kidney_right=2` → {source id: our id}."""
    from napari_mmseg.io.datasets import label_map_from_names

    pairs = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        if not value.strip().isdigit():
            raise ScanError(f"Cannot read {item!r} in --ref-labels: write name=id, e.g. liver=6,spleen=1.")
        if name.strip() in pairs:
            raise ScanError(f"--ref-labels names {name.strip()} twice.")
        pairs[name.strip()] = int(value)
    ids = list(pairs.values())
    shared = sorted({i for i in ids if ids.count(i) > 1})
    if shared:
        raise ScanError(f"--ref-labels gives id {shared[0]} to more than one organ: each organ needs its own id.")
    mapping = label_map_from_names(pairs)
    unknown = [n for n in pairs if n not in mapping.values() and label_map_from_names({n: 0}) == {}]
    if unknown:
        names = ", ".join(o.name for o in ORGANS)
        raise ScanError(f"Unknown organ name(s) {', '.join(unknown)} in --ref-labels; use {names}.")
    return mapping


def reference_label_map(ref: Path, spec: str | None) -> tuple[dict[int, int] | None, str]:
    """The reference's ids → ours: given by name, or from a dataset.json beside its folder."""
    from napari_mmseg.io.datasets import label_map_from_names, read_dataset_json

    if spec:
        return parse_label_mapping(spec), "--ref-labels"
    for candidate in (ref.parent / "dataset.json", ref.parent.parent / "dataset.json"):
        if candidate.is_file():
            return label_map_from_names(read_dataset_json(candidate).get("labels", {})), str(candidate)
    return None, "this plugin's ids"


def cmd_evaluate(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from napari_mmseg.io.datasets import remap_labels
    from napari_mmseg.io.scan_io import read_labels, same_geometry
    from napari_mmseg.metrics import dice_scores, mean_dice

    if args.csv:  # checked before the work; never the prediction or reference, even with --overwrite
        table = check_output(args.csv, args.overwrite)
        if table.exists() and any(table.samefile(p) for p in (args.prediction, args.reference) if Path(p).exists()):
            raise ScanError(f"Refusing to write the table over the prediction or reference ({table}).")
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
    mapping, source = reference_label_map(Path(args.reference), args.ref_labels)
    pred = sitk.GetArrayViewFromImage(pred_img)
    ref = sitk.GetArrayViewFromImage(ref_img)
    if mapping is not None:
        ref = remap_labels(ref, mapping)
    elif ref.max() > len(ORGANS):
        raise ScanError(
            f"The reference holds label ids up to {int(ref.max())}: say which is which with "
            "--ref-labels liver=ID,spleen=ID,kidney_right=ID,kidney_left=ID."
        )
    scores = dice_scores(pred, ref, pred_img.GetSpacing())
    rows = [(s.organ, s.dice, s.predicted_ml, s.reference_ml) for s in scores]
    print(f"reference ids from {source}")
    print(f"{'organ':<14}{'Dice':>8}{'pred ml':>11}{'ref ml':>11}")
    for organ, dice, p, r in rows:
        print(f"{organ:<14}{dice:>8.4f}{p:>11.1f}{r:>11.1f}")
    print(f"{'mean':<14}{mean_dice(scores):>8.4f}")
    if args.csv:
        write_csv_atomic(args.csv, ["organ", "dice", "predicted_ml", "reference_ml"], rows, args.overwrite)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import json

    from napari_mmseg.models.weights import load_weights

    meta = load_weights(args.weights).meta  # the whole file checked: metadata, shapes, finite numbers
    print(json.dumps(json.loads(meta.to_json()), indent=2))
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from napari_mmseg.models.weights import average_weights, save_weights

    out = check_output(args.out, args.overwrite, make_parents=True)  # refused before the work
    averaged = average_weights(args.weights)
    print(f"wrote {save_weights(averaged.model, averaged.meta, out, half=args.half)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from napari_mmseg.io.datasets import load_dataset
    from napari_mmseg.models.weights import read_metadata
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
    cases = []
    if args.ct:
        cases += load_dataset(args.ct, "CT")
    if args.mr:
        cases += load_dataset(args.mr, "MR")
    seed = args.seed if args.seed is not None else preset.training.seed
    train_cases, val_cases = split_cases(cases, args.val_cases, seed)
    present = tuple(m for m in ("CT", "MR") if any(c.modality == m for c in cases))
    groups = [(m,) for m in present] if args.variant == "individual" else [("CT", "MR")]
    log_path = Path(args.out) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    starts = {}
    for path in args.init_weights or []:
        meta = read_metadata(path)
        if meta.variant != args.variant:
            raise SystemExit(f"mmseg train: {path} holds a {meta.variant} network, not {args.variant}")
        starts[meta.modalities] = Path(path)
    for modalities in groups:
        if args.init_weights and modalities not in starts:
            raise SystemExit(f"mmseg train: none of --init-weights is a {args.variant} network for "
                             f"{'/'.join(modalities)}")
        run = TrainingRun(args.variant, preset, Path(args.out), modalities, args.device, args.steps, seed,
                          progress_bar=not args.quiet, init_weights=starts.get(modalities),
                          sampler_workers=args.sampler_workers)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment liver, spleen and kidneys in CT or MR scans")
    p.add_argument("inputs", nargs="+", help="scan files (.nii, .nii.gz, .nrrd, .mha, .mhd), folders of them, "
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
    p.add_argument("--report", help="also write each scan's organ volumes, confidence and review flags to this "
                   "JSON file, keyed by scan path")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="Dice per organ and volumes of a prediction against a reference")
    p.add_argument("prediction", help="label file in this tool's ids (1 liver, 2 spleen, 3 right kidney, 4 left)")
    p.add_argument("reference", help="reference label file on the same grid")
    p.add_argument("--ref-labels", help="the reference's ids by name, e.g. liver=6,spleen=1,kidney_right=2,"
                   "kidney_left=3 (default: dataset.json beside it, else this tool's ids)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="what a weights file's metadata says")
    p.add_argument("weights")
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
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--val-cases", type=int, default=2, help="cases per modality held out for validation")
    p.add_argument("--batch-size", type=int, help="patches per step (default: the preset's)")
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


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 1 any error (one line on stderr), 2 bad arguments (argparse),
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM)."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except MmsegError as e:
        print(f"mmseg: error: {e}", file=sys.stderr)
    except ValueError as e:  # bad arguments caught by the core (modality, overlap, ...)
        print(f"mmseg: error: {e}", file=sys.stderr)
    except OSError as e:  # any file-system failure not already explained
        where = f"{e.filename}: " if e.filename else ""
        print(f"mmseg: error: {where}{e.strerror or e}.", file=sys.stderr)
    except MemoryError:
        print("mmseg: error: out of memory; try --device cpu, a smaller --overlap, or a machine with more memory.",
              file=sys.stderr)
    except KeyboardInterrupt:
        print("mmseg: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("mmseg: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
