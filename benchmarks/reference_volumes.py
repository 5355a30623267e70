#!/usr/bin/env python
"""Organ volumes of the bundled weights' training labels (24 BTCV CT, 16 CHAOS T2 MR): the
reference ranges behind the review's volume flags (`review.VOLUME_RANGES_ML`).

    python benchmarks/reference_volumes.py [--data ../shared/data]

Prints every case's volumes, then per organ the observed range, the 2.5th–97.5th percentiles
(`review.TRAINING_VOLUMES_ML`, ready to paste) and the flagging range (the percentiles widened
by `review.VOLUME_MARGIN`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.io.datasets import load_nnunet_dataset, remap_labels
from napari_mmseg.io.scan_io import read_labels
from napari_mmseg.organs import ORGANS
from napari_mmseg.review.flags import VOLUME_MARGIN

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PERCENTILES = (2.5, 97.5)
DATASETS = (("abdomen-ct-btcv", "CT"), ("abdomen-mr-chaos-t2", "MR"))


def case_volumes(labels_path: Path, label_map: dict[int, int]) -> np.ndarray:
    """Volume in ml of each organ (our ids 1..4) in one label file."""
    image = read_labels(labels_path)
    ours = remap_labels(sitk.GetArrayViewFromImage(image), label_map)
    counts = np.bincount(ours.ravel(), minlength=len(ORGANS) + 1)[1:]
    return counts * float(np.prod(image.GetSpacing())) / 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    rows = []
    print(f"{'case':<12}{'mod':<5}" + "".join(f"{o.name:>14}" for o in ORGANS))
    for folder, modality in DATASETS:
        for case in load_nnunet_dataset(args.data / folder, modality):
            volumes = case_volumes(case.labels, case.label_map)
            rows.append(volumes)
            print(f"{case.name:<12}{modality:<5}" + "".join(f"{v:>14.1f}" for v in volumes))
    table = np.asarray(rows)
    print(f"\n{len(rows)} cases, ml: organ, min–max (median), 2.5th–97.5th percentiles, flagged outside")
    for k, organ in enumerate(ORGANS):
        v = table[:, k]
        lo, hi = np.percentile(v, PERCENTILES)
        print(f"  {organ.name:<13} {v.min():7.1f}–{v.max():7.1f} ({np.median(v):6.1f})  {lo:7.1f}–{hi:7.1f}  "
              f"{lo / VOLUME_MARGIN:7.1f}–{hi * VOLUME_MARGIN:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
