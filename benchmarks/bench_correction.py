"""Simulated-annotator benchmark of assisted correction: how fast clicks turn the automatic
result into correct organs, with the learned correction model and with a plain brush.

    python benchmarks/bench_correction.py --dataset DIR --modality CT|MR [--variant V] [--weights FILE]
        [--interactions N] [--cases ID ...] [--shift NAME] [--held-out] [--start auto|corrupted|missed-ORGAN]
        [--device cpu] [--threads N]

DIR is any nnU-Net raw dataset (dataset.json naming the labels, imagesTr/, labelsTr/); its
organ ids are mapped to ours by name. For every case: segment it with the bundled network
(`--variant`, default msbn), then N times click the voxel deepest inside the largest
remaining error region over all four organs (`simulated_annotator.next_click`: positive for
the reference's organ there, else negative for the predicted one) and refine. The reference
places the clicks; the model never sees it. The same clicks, placed on the brush's own
result, drive the baseline: a 10 mm ball of the clicked label (`refine.brush`).

`--held-out` keeps the cases the correction weights' metadata lists as never trained on
(`training.held_out`); `--shift` first applies one contrast shift of
`napari_mmseg.contrast_shifts` (an appearance the networks were not trained on) to the scan.
Prints a table, then as its last line one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from napari_mmseg.config import DEFAULT_VARIANT, DEVICE_CHOICES, VARIANTS
from napari_mmseg.contrast_shifts import apply_shift, shifts_for
from napari_mmseg.correction.hints import Hint
from napari_mmseg.correction.model import load_correction_model
from napari_mmseg.correction.refine import Refinement, brush, refine
from napari_mmseg.correction.simulated_annotator import next_click
from napari_mmseg.correction.training import corrupt
from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.datasets import LabelledCase, load_nnunet_dataset
from napari_mmseg.metrics import dice_scores
from napari_mmseg.models.weights import LoadedModel, bundled_weights, load_weights
from napari_mmseg.organs import ORGAN_BY_NAME, ORGANS

TARGETS = (0.90, 0.95)  # Dice an organ should reach: interactions needed (NoC@90, NoC@95)
METHODS = ("learned", "brush")

Correct = Callable[[sitk.Image, np.ndarray, list[Hint]], Refinement]


@dataclass
class Curve:
    """One method on one case: Dice per organ after 0..N interactions, seconds per interaction."""

    dice: list[list[float]] = field(default_factory=list)  # [interaction][organ], NaN where the organ is absent
    seconds: list[float] = field(default_factory=list)
    clicks: list[Hint] = field(default_factory=list)

    def mean(self) -> list[float]:
        return [float(np.nanmean(d)) for d in self.dice]


def organ_dice(labels: np.ndarray, reference: np.ndarray, spacing_xyz: tuple[float, ...]) -> list[float]:
    return [s.dice for s in dice_scores(labels, reference, spacing_xyz)]


def simulate(scan: sitk.Image, start: np.ndarray, reference: np.ndarray, interactions: int,
             correct: Correct) -> Curve:
    """N rounds of click-and-correct from `start`; once nothing is left to click, the labels stay."""
    spacing_xyz = scan.GetSpacing()
    labels, hints, curve = start, [], Curve()
    curve.dice.append(organ_dice(labels, reference, spacing_xyz))
    for _ in range(interactions):
        click = next_click(reference, labels, spacing_xyz[::-1])
        if click is not None:
            hints.append(click)
            t = time.perf_counter()
            labels = correct(scan, labels, hints).labels
            curve.seconds.append(time.perf_counter() - t)
            curve.clicks.append(click)
        curve.dice.append(organ_dice(labels, reference, spacing_xyz))
    return curve


def clicks_to_reach(curves: list[Curve], target: float) -> dict[str, dict[str, float | int]]:
    """Per organ: mean interactions until its Dice first reaches `target` (a case that never
    does counts as N, the convention of NoC@90), and how many cases never did."""
    out = {}
    for j, organ in enumerate(ORGANS):
        needed, missed = [], 0
        for c in curves:
            series = [d[j] for d in c.dice]
            if all(np.isnan(series)):
                continue  # the organ is in neither the reference nor the result
            reached = next((k for k, v in enumerate(series) if v >= target), None)
            missed += reached is None
            needed.append(len(series) - 1 if reached is None else reached)
        out[organ.name] = {"mean": float(np.mean(needed)) if needed else float("nan"), "not_reached": missed}
    return out


def harmful_fraction(curves: list[Curve]) -> float:
    """Share of interactions after which the case's mean Dice fell."""
    falls = total = 0
    for c in curves:
        means = c.mean()
        for k in range(len(c.seconds)):
            total += 1
            falls += means[k + 1] < means[k] - 1e-9
    return falls / total if total else float("nan")


def summary(curves: list[Curve]) -> dict:
    means = np.array([c.mean() for c in curves])  # [case][interaction]
    seconds = [s for c in curves for s in c.seconds]
    return {
        "dice_after": [round(float(v), 4) for v in means.mean(axis=0)],
        "worst_case_after": [round(float(v), 4) for v in means.min(axis=0)],
        "organ_dice_after": {o.name: [round(float(np.nanmean([c.dice[k][j] for c in curves])), 4)
                                      for k in range(means.shape[1])] for j, o in enumerate(ORGANS)},
        "interactions_to_reach": {f"{t:.2f}": clicks_to_reach(curves, t) for t in TARGETS},
        "seconds_per_interaction": {"median": round(float(np.median(seconds)), 3) if seconds else float("nan"),
                                    "p95": round(float(np.percentile(seconds, 95)), 3) if seconds else float("nan")},
        "harmful_fraction": round(harmful_fraction(curves), 4),
        "interactions": len(seconds),
    }


def table(results: dict[str, dict], n: int) -> str:
    learned, base = results["learned"], results["brush"]
    lines = [f"{'clicks':>6} {'learned mean':>13} {'learned worst':>14} {'brush mean':>11} {'brush worst':>12}"]
    for k in range(n + 1):
        lines.append(f"{k:>6} {learned['dice_after'][k]:>13.4f} {learned['worst_case_after'][k]:>14.4f} "
                     f"{base['dice_after'][k]:>11.4f} {base['worst_case_after'][k]:>12.4f}")
    lines.append("")
    lines.append(f"{'organ':<14}" + "".join(f"{f'{m} NoC@{round(100 * t)}':>18}" for m in METHODS for t in TARGETS))
    for o in ORGANS:
        cells = []
        for m in METHODS:
            for t in TARGETS:
                r = results[m]["interactions_to_reach"][f"{t:.2f}"][o.name]
                cells.append(f"{r['mean']:.2f} ({r['not_reached']} not)")
        lines.append(f"{o.name:<14}" + "".join(f"{c:>18}" for c in cells))
    lines.append("")
    for m in METHODS:
        s = results[m]["seconds_per_interaction"]
        lines.append(f"{m}: {s['median']:.3f} s per interaction (median), {s['p95']:.3f} s (p95); "
                     f"harmful {100 * results[m]['harmful_fraction']:.1f} % of {results[m]['interactions']}")
    return "\n".join(lines)


def automatic_result(scan: sitk.Image, segmenter: LoadedModel, modality: str, options: InferenceOptions,
                     cache: Path | None) -> np.ndarray:
    """The bundled segmentation's labels, from `cache` when it holds them."""
    if cache is not None and cache.is_file():
        return np.load(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a shifted scan may look like the other modality: intended
        labels = sitk.GetArrayFromImage(segment_image(scan, segmenter, modality, options).labels)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, labels)
    return labels


def pick_cases(args: argparse.Namespace, held_out: list[str] | None) -> list[LabelledCase]:
    cases = load_nnunet_dataset(args.dataset, args.modality)
    if held_out is not None:
        cases = [c for c in cases if c.name in held_out]
    if args.cases:
        missing = sorted(set(args.cases) - {c.name for c in cases})
        if missing:
            raise SystemExit(f"bench_correction: no case {', '.join(missing)} in {args.dataset}"
                             + (" among the held-out ones" if held_out is not None else ""))
        cases = [c for c in cases if c.name in args.cases]
    if not cases:
        raise SystemExit(f"bench_correction: no cases to run (held out: {held_out})")
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="an nnU-Net raw dataset folder")
    parser.add_argument("--modality", required=True, type=str.upper, choices=("CT", "MR"))
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=VARIANTS,
                        help="bundled segmentation network giving the automatic start (default %(default)s)")
    parser.add_argument("--weights", help="correction weights (default: the bundled ones)")
    parser.add_argument("--interactions", type=int, default=5)
    parser.add_argument("--cases", nargs="+", metavar="ID", help="only these case names (e.g. btcv_35)")
    parser.add_argument("--shift", choices=sorted({s.name for s in shifts_for("CT") + shifts_for("MR")}),
                        help="apply this contrast shift to every scan first")
    parser.add_argument("--held-out", action="store_true",
                        help="only the cases the correction weights' metadata says were never trained on")
    parser.add_argument("--device", default="auto", type=str.lower, choices=DEVICE_CHOICES)
    parser.add_argument("--start", choices=("auto", "corrupted", *(f"missed-{o.name}" for o in ORGANS)),
                        default="auto",
                        help="start from the automatic result (default), from the reference corrupted as the "
                             "correction network's training does (organs eroded, dilated, partly another organ's, "
                             "pieces or whole organs missing, false blobs; seeded by the case name): larger errors, "
                             "or from the reference with one organ missed as a whole")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--start-cache", type=Path, metavar="DIR",
                        help="keep the automatic results here and reuse them (comparing correction weights)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_correction_model(args.weights, device=args.device)
    held_out = None
    if args.held_out:
        held_out = model.meta.training.get("held_out")
        if not held_out:
            raise SystemExit(f"bench_correction: {model.path} names no held-out cases (training.held_out)")
    shift = None
    if args.shift:
        shift = next((s for s in shifts_for(args.modality) if s.name == args.shift), None)
        if shift is None:
            raise SystemExit(f"bench_correction: the shift {args.shift!r} is not one for {args.modality}: "
                             f"{', '.join(s.name for s in shifts_for(args.modality))}")
    cases = pick_cases(args, held_out)
    shift_tag = re.sub(r"[^A-Za-z0-9.]+", "_", shift.name) if shift else "as-is"
    segmenter = load_weights(bundled_weights(args.variant, args.modality), variant=args.variant,
                             modality=args.modality)
    # the labels `mmseg segment` gives; the review's extra passes (confidence, mirror check) change none of them
    options = InferenceOptions(device=args.device, uncertainty=False, check_orientation=False)
    methods: dict[str, Correct] = {
        "learned": lambda scan, labels, hints: refine(scan, labels, hints, args.modality, model),
        "brush": lambda scan, labels, hints: brush(scan, labels, hints[-1]),
    }
    curves: dict[str, list[Curve]] = {m: [] for m in METHODS}
    per_case = {}
    for case in tqdm(cases, desc="cases", unit="case", file=sys.stderr):
        scan, reference_image = case.load()
        if shift is not None:
            scan = apply_shift(shift, scan, reference_image)
        reference = sitk.GetArrayFromImage(reference_image)
        if args.start == "corrupted":
            start = corrupt(reference.astype(np.uint8), np.random.default_rng(sum(map(ord, case.name))))
        elif args.start.startswith("missed-"):
            start = reference.astype(np.uint8)
            start[start == ORGAN_BY_NAME[args.start.removeprefix("missed-")].label] = 0
        else:
            start = automatic_result(scan, segmenter, args.modality, options, args.start_cache
                                     and args.start_cache / f"{case.name}-{args.variant}-{shift_tag}.npy")
        for m in METHODS:
            curves[m].append(simulate(scan, start, reference, args.interactions, methods[m]))
        per_case[case.name] = {m: [round(v, 4) for v in curves[m][-1].mean()] for m in METHODS}
        per_case[case.name]["learned_clicks"] = [f"{h.sign}{h.organ}" for h in curves["learned"][-1].clicks]
        tqdm.write(f"{case.name}: " + ", ".join(f"{m} {per_case[case.name][m][0]:.3f} -> "
                                                 f"{per_case[case.name][m][-1]:.3f}" for m in METHODS)
                   + f" (clicks {' '.join(per_case[case.name]['learned_clicks'])})", file=sys.stderr)

    results = {m: summary(curves[m]) for m in METHODS}
    print(f"{len(cases)} {args.modality} cases of {args.dataset}" + (f", shift {shift.name}" if shift else "")
          + f"; start: {args.variant if args.start == 'auto' else args.start.replace('-', ' ') + ' reference'}; "
          f"correction: {model.path}")
    print(table(results, args.interactions))
    learned, base = results["learned"], results["brush"]
    print(json.dumps({
        "dataset": str(args.dataset), "modality": args.modality, "variant": args.variant, "start": args.start,
        "shift": shift.name if shift else None, "weights": str(model.path),
        "cases": [c.name for c in cases], "interactions": args.interactions,
        **{k: v for k, v in learned.items() if k != "interactions"},
        **{f"baseline_{k}": v for k, v in base.items() if k != "interactions"},
        "per_case_dice_after": per_case,
    }))


if __name__ == "__main__":
    main()
