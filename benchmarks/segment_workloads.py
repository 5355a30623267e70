"""The scans the inference benchmarks segment (a module, not a script): real CT and MR from
the shared data folder with their reference labels, and two scans written for the run at
clinical size (a CT-like phantom, and the largest BTCV CT resampled). See
benchmarks/README.md, Workloads."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.io.datasets import LABEL_PRESETS, LabelledCase, load_nnunet_dataset
from napari_mmseg.organs import ORGANS

WORKLOADS = ("ts-ct", "ts-mr", "btcv", "chaos", "synthetic", "full-size")
SYNTHETIC_SIZE = (512, 512, 300)  # x, y, z voxels
SYNTHETIC_SPACING = (0.8, 0.8, 1.5)  # mm
# Scans this script writes: a phantom, and the largest BTCV CT resampled to clinical size.
GENERATED = {"synthetic": "synthetic_ct.nii.gz", "full-size": "full_size_ct.nii.gz"}
FULL_SIZE_LABELS = "full_size_labels.nii.gz"
FULL_SIZE_SOURCE = "full_size_source.txt"  # which case it was made from, for the table


class Skip(Exception):
    """A workload that cannot run here; the message says why."""


@dataclass(frozen=True)
class Workload:
    name: str
    modality: str
    scan: Path
    reference: LabelledCase | None  # labels in our ids for Dice; None: no reference


def _ts_workload(data: Path, name: str, image: str, labels: str, modality: str) -> Workload:
    folder = data / "totalsegmentator-examples"
    scan, seg = folder / image, folder / labels
    for p in (scan, seg):
        if not p.is_file():
            raise Skip(f"{p} not found")
    case = LabelledCase(name, modality, scan, seg, LABEL_PRESETS["TotalSegmentator"].label_map())
    return Workload(name, modality, scan, case)


def _voxels(path: Path) -> int:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return math.prod(reader.GetSize())


def nnunet_cases(folder: Path, modality: str) -> list[LabelledCase]:
    if not (folder / "dataset.json").is_file():
        raise Skip(f"{folder}/dataset.json not found")
    return load_nnunet_dataset(folder, modality)


def largest_btcv(data: Path) -> LabelledCase:
    return max(nnunet_cases(data / "abdomen-ct-btcv", "CT"), key=lambda c: _voxels(c.image))


def resolve_workload(name: str, data: Path, scratch: Path | None) -> Workload:
    """The scan and reference a workload name stands for; raises Skip when they are absent.
    `scratch` holds the scans this script generates (`make_generated`)."""
    if name == "ts-ct":
        return _ts_workload(data, name, "example_ct_sm.nii.gz", "example_seg.nii.gz", "CT")
    if name == "ts-mr":
        return _ts_workload(data, name, "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR")
    if name == "btcv":
        case = largest_btcv(data)
        return Workload(f"btcv ({case.name})", "CT", case.image, case)
    if name == "chaos":
        cases = nnunet_cases(data / "abdomen-mr-chaos-t2", "MR")
        case = next((c for c in cases if c.name == "chaos_02"), cases[0])
        return Workload(f"chaos ({case.name})", "MR", case.image, case)
    if name in GENERATED:
        scan = scratch / GENERATED[name] if scratch is not None else None
        if scan is None or not scan.is_file():
            raise Skip(f"{name} scan not written")
        if name == "synthetic":
            return Workload("synthetic", "CT", scan, None)
        source = (scratch / FULL_SIZE_SOURCE).read_text().strip()
        labels = scratch / FULL_SIZE_LABELS
        return Workload(f"full-size ({source})", "CT", scan,
                        LabelledCase(name, "CT", scan, labels, {o.label: o.label for o in ORGANS}))
    raise ValueError(f"unknown workload {name!r}")


def make_synthetic(path: Path, size: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    """A CT-like scan (HU, int16): air, a body ellipse with a fat rim, a liver-like blob, a
    spine, noise. Stored flipped in x and y as NIfTI from scanners usually is, so that the
    canonical resample has to reorient it."""
    nx, ny, nz = size
    rng = np.random.default_rng(0)
    y, x = np.ogrid[:ny, :nx]
    volume = np.empty((nz, ny, nx), np.int16)
    for z in range(nz):
        grow = 1.0 + 0.08 * math.sin(math.pi * z / max(nz - 1, 1))
        r2 = ((y - ny / 2) / (0.36 * ny * grow)) ** 2 + ((x - nx / 2) / (0.45 * nx * grow)) ** 2
        body = r2 <= 1.0
        piece = np.full((ny, nx), -1000.0, np.float32)
        piece[body] = 40.0
        piece[body & (r2 >= 0.8)] = -100.0
        if z > nz // 3:
            liver = ((y - 0.45 * ny) / (0.15 * ny)) ** 2 + ((x - 0.62 * nx) / (0.17 * nx)) ** 2 <= 1.0
            piece[liver & body] = 60.0
        spine = ((y - 0.7 * ny) / (0.05 * ny)) ** 2 + ((x - nx / 2) / (0.05 * nx)) ** 2 <= 1.0
        piece[spine] = 500.0
        piece += rng.standard_normal((ny, nx), dtype=np.float32) * 12.0
        volume[z] = np.clip(piece, -1024, 3071).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((nx * spacing[0] / 2, ny * spacing[1] / 2, -nz * spacing[2] / 2))
    sitk.WriteImage(image, str(path), useCompression=True)


def make_full_size(source: LabelledCase, scan_path: Path, labels_path: Path, size: tuple[int, int, int],
                   spacing: tuple[float, float, float]) -> None:
    """A real CT at clinical resolution: `source` resampled (linear; labels nearest) onto
    size voxels at spacing, centred on its organs, stored flipped in x and y like the phantom."""
    image, labels = source.load()
    centre = np.mean(np.argwhere(sitk.GetArrayViewFromImage(labels) > 0), axis=0)[::-1]  # x, y, z index
    target = sitk.Image(list(size), sitk.sitkUInt8)
    target.SetSpacing(spacing)
    target.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    target.SetOrigin((0.0, 0.0, 0.0))
    middle = np.asarray(target.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    target.SetOrigin(tuple(np.asarray(image.TransformContinuousIndexToPhysicalPoint(centre.tolist())) - middle))
    scan = sitk.Resample(image, target, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    sitk.WriteImage(scan, str(scan_path), useCompression=True)
    organs = sitk.Resample(labels, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    sitk.WriteImage(organs, str(labels_path), useCompression=True)


def make_generated(names: list[str], data: Path, scratch: Path, size: tuple[int, int, int]) -> list[str]:
    """Write the generated scans the selected workloads need; notes on what could not be."""
    notes = []
    for name in names:
        t = time.perf_counter()
        if name == "synthetic":
            make_synthetic(scratch / GENERATED[name], size, SYNTHETIC_SPACING)
        elif name == "full-size":
            try:
                source = largest_btcv(data)
            except Skip as e:
                notes.append(f"skipped full-size: {e}")
                continue
            make_full_size(source, scratch / GENERATED[name], scratch / FULL_SIZE_LABELS, size, SYNTHETIC_SPACING)
            (scratch / FULL_SIZE_SOURCE).write_text(source.name)
        else:
            continue
        print(f"(wrote the {name} scan {'×'.join(map(str, size))} in {time.perf_counter() - t:.0f} s)",
              file=sys.stderr)
    # Flushed and read once, so that the first child does not pay for the write-back and the
    # page cache (it read the full-size scan 2.5x slower than the next children otherwise).
    os.sync()
    for path in scratch.iterdir():
        path.read_bytes()
    return notes
