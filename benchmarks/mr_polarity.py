"""How well reading MR both ways round (`napari_mmseg/inference/mr_polarity.py`) chooses, per network:
every MR case as it is, under the MR contrast shifts, with its spleen enlarged, cut to 60 mm
slabs, and TotalSegmentator's example MR (T1-like; labels made by a model). For each scan,
both readings (as given, grey levels inverted) are made and scored; printed per condition:
mean Dice of each reading and of the one the rule keeps, how many scans it read inverted,
and the largest and smallest margin (inverted minus given organ confidence): the room
INVERSION_MARGIN has on each side.

    python benchmarks/mr_polarity.py --bundle .study/bundle.npz --weights runs/trial15/rsoup2/msbn.safetensors \\
        --fold 0    # the fold's held-out MR patients, for a network trained without them
    python benchmarks/mr_polarity.py --bundle .study/bundle.npz --weights napari_mmseg/weights/*.safetensors \\
        --quick     # every MR case (training cases for the shipped files): as is and inverted only

About 2 s per scan and reading on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_mmseg.contrast_shifts import shifts_for
from napari_mmseg.inference.mr_polarity import INVERSION_MARGIN, PolarityChoice
from napari_mmseg.inference.segment import InferenceOptions, labels_on_model_grid, read_each_way
from napari_mmseg.metrics import dice_scores
from napari_mmseg.models.weights import load_weights
from napari_mmseg.organs import ORGAN_BY_NAME
from napari_mmseg.study.experiment import (
    ENLARGED_SPLEEN_FACTOR,
    THIN_SLAB_CENTRES,
    StudyConfig,
    fold_split,
    load_cases,
    thin_slab,
)
from napari_mmseg.training.organ_enlargement import enlarge_organ

INVERTED = "inverted (T2 ↔ T1 proxy)"


def conditions(case, spacing: tuple[float, ...], quick: bool):
    """(condition, intensities, labels) for the case."""
    if case.name.startswith("ts-example"):  # its labels are a model's: no warps of them
        yield "TotalSegmentator's example (T1-like)", case.values, case.labels
        return
    yield "as is", case.values, case.labels
    for shift in shifts_for("MR"):
        if not quick or shift.name == INVERTED:
            yield shift.name, shift.fn(case.values, case.labels, spacing, np.random.default_rng(0)), case.labels
    if quick:
        return
    yield "spleen enlarged", *enlarge_organ(case.values, case.labels, ORGAN_BY_NAME["spleen"].label,
                                            ENLARGED_SPLEEN_FACTOR, spacing)
    for where, organs in THIN_SLAB_CENTRES.items():
        yield f"slab at the {where}", *thin_slab(case.values, case.labels, organs)


def measure(path: Path, cases, quick: bool) -> list[dict]:
    loaded = load_weights(path)
    spacing, options = (loaded.meta.spacing_mm,) * 3, InferenceOptions(check_orientation=False)
    rows = []
    for case in cases:
        for condition, values, labels in conditions(case, spacing, quick):
            readings = read_each_way(loaded, values, "MR", torch.device("cpu"), options)
            confidence = [r.confidence for r in readings]  # as `kept_reading` judges them
            dice = [float(np.nanmean([s.dice for s in dice_scores(labels_on_model_grid(r.probs), labels, spacing)]))
                    for r in readings]
            rows.append({"weights": str(path), "case": case.name, "condition": condition,
                         "confidence": confidence, "dice": dice})
            print(f"  {path.name} {case.name} {condition}: as given {dice[0]:.3f} ({confidence[0]:.4f}), "
                  f"inverted {dice[1]:.3f} ({confidence[1]:.4f})", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"| condition | scans | as given | inverted | kept (margin {INVERSION_MARGIN}) | read inverted "
             "| margin: largest / smallest |", "|---|---|---|---|---|---|---|"]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        mine = [r for r in rows if r["condition"] == condition]
        choices = [PolarityChoice(*r["confidence"]) for r in mine]
        kept = [r["dice"][c.read_inverted] for r, c in zip(mine, choices, strict=True)]
        margins = [c.inverted - c.given for c in choices]
        lines.append(f"| {condition} | {len(mine)} | {np.mean([r['dice'][0] for r in mine]):.3f} "
                     f"| {np.mean([r['dice'][1] for r in mine]):.3f} | {np.mean(kept):.3f} "
                     f"| {sum(c.read_inverted for c in choices)} | {max(margins):+.4f} / {min(margins):+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, required=True,
                    help="prepared cases (benchmarks/study_on_gpu.py --write-bundle)")
    ap.add_argument("--fold", type=int, help="only this fold's test patients (of 2, the study's repetition 0)")
    ap.add_argument("--quick", action="store_true", help="as is and inverted only")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases, totalseg = load_cases(StudyConfig(out_dir=Path("."), bundle=args.bundle))
    if args.fold is not None:
        cases = fold_split(cases, 2, seed=0)[args.fold]
    cases = [c for c in (*cases, *totalseg) if c.modality == "MR"]
    rows = []
    for path in args.weights:
        mine = measure(path, cases, args.quick)
        rows += mine
        print(f"\n### {path}\n\n{table(mine)}\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
