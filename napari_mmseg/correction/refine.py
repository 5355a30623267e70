"""One interaction: new labels from the user's hints, recomputed only around the last one.

The cube of `meta.crop` voxels of `meta.spacing_mm` around the last hint is cut from the scan
and the labels by SimpleITK (an LPS-aligned grid, as the segmentation's canonical grid, so
right is right however the file stores its axes), the network answers there, and its class
probabilities are resampled back onto the scan's own voxels before the argmax: a corrected
border lies where the user sees it, at the scan's resolution, not on the 2 mm grid.

What may change is what the last hint is about: a positive hint for organ k only turns
voxels into k, a negative one only turns k voxels into something else; only where the network
departs from the labels it was given (a border it merely redraws on its coarser grid stays
as it was); and only within a reach of the hint that grows with how deep the hint lies inside
its current label (a click at a border moves that border, a click in the middle of a missed
organ brings the organ). When the network leaves the hint's own voxels as they were, the
brush paints them, so a click is never lost.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from napari_mmseg.correction.hints import Hint
from napari_mmseg.correction.model import CorrectionModel, CropHint, network_input
from napari_mmseg.device import place
from napari_mmseg.preprocessing import IntensityNorm, body_mask

Region = tuple[slice, slice, slice]
# How far from the last hint the network's answer is taken. A click next to a border asks for
# that border to move there; a click deep inside a wrongly labelled area asks for the area: the
# reach is REACH_PER_DEPTH times the hint's depth in its current label (its distance to the
# nearest other label), at least MIN_REACH_MM and at most REACH_MM.
REACH_MM = 64.0  # the sphere inside the 128 mm cube
MIN_REACH_MM = 6.0
REACH_PER_DEPTH = 3.0
NOTHING: Region = (slice(0, 0), slice(0, 0), slice(0, 0))


@dataclass(frozen=True)
class Refinement:
    labels: np.ndarray  # full-size new labels (uint8, the input's shape)
    region: Region  # the box outside which nothing changed
    seconds: float


def _physical(scan: sitk.Image, point: Sequence[float]) -> np.ndarray:
    """A (z, y, x) voxel index of the scan → LPS millimetres."""
    return np.asarray(scan.TransformContinuousIndexToPhysicalPoint([float(v) for v in reversed(point)]))


def _crop_grid(centre_mm: np.ndarray, crop: int, spacing_mm: float) -> sitk.Image:
    grid = sitk.Image([crop] * 3, sitk.sitkFloat32)
    grid.SetSpacing((spacing_mm,) * 3)
    grid.SetOrigin(tuple(float(v) for v in centre_mm - spacing_mm * (crop - 1) / 2))
    return grid


def _native_box(scan: sitk.Image, grid: sitk.Image) -> Region:
    """The (z, y, x) box of scan voxels the grid's cube covers (one voxel of margin)."""
    n = grid.GetSize()
    corners = [grid.TransformContinuousIndexToPhysicalPoint((x, y, z))
               for x in (-0.5, n[0] - 0.5) for y in (-0.5, n[1] - 0.5) for z in (-0.5, n[2] - 0.5)]
    index = np.asarray([scan.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.asarray(scan.GetSize())
    lo = np.clip(np.floor(index.min(axis=0)) - 1, 0, size).astype(int)
    hi = np.clip(np.ceil(index.max(axis=0)) + 2, 0, size).astype(int)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1], strict=True))


def _on_scan_grid(array: np.ndarray, scan: sitk.Image, region: Region, vector: bool = False) -> sitk.Image:
    """`array` (the `region` box of the scan's voxels) as an image in the scan's world frame."""
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing(scan.GetSpacing())
    image.SetDirection(scan.GetDirection())
    image.SetOrigin(scan.TransformIndexToPhysicalPoint([int(r.start) for r in reversed(region)]))
    return image


def _normalised(crop: np.ndarray, scan: sitk.Image, norm: IntensityNorm) -> np.ndarray:
    """The crop as `norm.apply` would give it from the whole scan: a window as it is; the
    body statistics of an MR from a sample of the whole scan."""
    if norm.kind == "window":
        return norm.apply(crop)
    sample = sitk.GetArrayViewFromImage(scan)[::3, ::3, ::3].astype(np.float32)
    lo, hi, mean, std = norm.foreground_statistics(sample[body_mask(sample)])
    return ((np.clip(crop, lo, hi) - mean) / max(std, 1e-6)).astype(np.float32)


def _hint_points(hint: Hint) -> np.ndarray:
    return np.asarray(hint.points, float).reshape(-1, 3)


def _crop_hints(scan: sitk.Image, grid: sitk.Image, hints: Sequence[Hint]) -> list[CropHint]:
    out = []
    for h in hints:
        idx = [grid.TransformPhysicalPointToContinuousIndex(tuple(_physical(scan, p))) for p in _hint_points(h)]
        out.append(CropHint(int(h.label), bool(h.positive), np.asarray(idx, float)[:, ::-1]))
    return out


def _probabilities(model: CorrectionModel, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        logits = model.network(place(torch.from_numpy(x)[None], model.device))
        return torch.softmax(logits.float(), dim=1)[0].cpu().numpy()


def _allowed(old: np.ndarray, new: np.ndarray, hint: Hint) -> np.ndarray:
    """Voxels the hint may change: into its label (positive), out of it (negative)."""
    k = np.uint8(hint.label)
    return (new == k) & (old != k) if hint.positive else (old == k) & (new != k)


def _near(shape: tuple[int, ...], points: np.ndarray, spacing_zyx: np.ndarray, reach_mm: float) -> np.ndarray:
    """Voxels of a box within `reach_mm` of one of `points` (box-relative (z, y, x) indices)."""
    seeds = np.ones(shape, bool)
    inside = points[((points >= 0) & (points < np.asarray(shape))).all(axis=1)]
    if not len(inside):
        return ~seeds
    seeds[tuple(inside.T)] = False
    return ndimage.distance_transform_edt(seeds, sampling=spacing_zyx) <= reach_mm


def _depth_mm(crop_labels: np.ndarray, crop_points: np.ndarray, spacing_mm: float) -> float:
    """How deep a hint's points (crop voxels) lie inside their current labels: the largest
    distance from one of them to a voxel of another label, in mm (on the crop's grid)."""
    points = np.rint(crop_points).astype(int)
    points = points[((points >= 0) & (points < np.asarray(crop_labels.shape))).all(axis=1)]
    if not len(points):
        return 0.0
    depth = 0.0
    for value in np.unique(crop_labels[tuple(points.T)]):
        inside = ndimage.distance_transform_edt(crop_labels == value) * spacing_mm
        mine = points[crop_labels[tuple(points.T)] == value]
        depth = max(depth, float(inside[tuple(mine.T)].max()))
    return depth


def refine(scan: sitk.Image, labels: np.ndarray, hints: Sequence[Hint], modality: str,
           model: CorrectionModel) -> Refinement:
    """New labels from `hints`, recomputed in the cube around the last one (every hint in
    the cube is given to the network); `labels` is not modified."""
    start = time.perf_counter()
    if not hints:
        return Refinement(labels.copy(), NOTHING, time.perf_counter() - start)
    meta, last = model.meta, hints[-1]
    points = _hint_points(last)
    centre = np.mean([_physical(scan, p) for p in points], axis=0)
    grid = _crop_grid(centre, meta.crop, meta.spacing_mm)
    region = _native_box(scan, grid)
    if any(r.stop <= r.start for r in region):  # the cube misses the scan
        return Refinement(labels.copy(), NOTHING, time.perf_counter() - start)
    x0, y0, z0 = (int(r.start) for r in reversed(region))
    x1, y1, z1 = (int(r.stop) for r in reversed(region))
    sub_scan = scan[x0:x1, y0:y1, z0:z1]
    old = labels[region]
    air = float(sitk.GetArrayViewFromImage(sub_scan).min())
    values = sitk.GetArrayFromImage(sitk.Resample(sub_scan, grid, sitk.Transform(), sitk.sitkLinear, air,
                                                  sitk.sitkFloat32))
    crop_labels = sitk.GetArrayFromImage(sitk.Resample(_on_scan_grid(np.ascontiguousarray(old, np.uint8), scan,
                                                                     region), grid, sitk.Transform(),
                                                       sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    crop_hints = _crop_hints(scan, grid, hints)
    x = network_input(_normalised(values, scan, meta.norm_for(modality)), crop_labels, crop_hints,
                      meta.hint_sigma_mm / meta.spacing_mm)
    probs = _probabilities(model, x)
    # Where the network departs from the labels it was given, on its own grid: only there may
    # the scan's voxels change, and a border the network merely redraws at 2 mm stays as the
    # user left it.
    departed = _allowed(crop_labels, probs.argmax(axis=0).astype(np.uint8), last)
    with_departure = np.concatenate([probs, departed[None].astype(np.float32)])
    on_crop = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(with_departure, 0, -1)), isVector=True)
    on_crop.CopyInformation(grid)
    native = sitk.GetArrayFromImage(sitk.Resample(on_crop, sub_scan, sitk.Transform(), sitk.sitkLinear, 0.0))
    new = np.argmax(native[..., :-1], axis=-1).astype(np.uint8)
    covered = native[..., :-1].sum(axis=-1) > 0.5  # native voxels the cube reaches
    box_points = np.rint(points - np.asarray([z0, y0, x0])).astype(int)
    spacing = np.asarray(scan.GetSpacing())[::-1]
    reach = float(np.clip(REACH_PER_DEPTH * _depth_mm(crop_labels, crop_hints[-1].points, meta.spacing_mm),
                          MIN_REACH_MM, REACH_MM))
    change = (_allowed(old, new, last) & covered & (native[..., -1] > 0.5)
              & _near(old.shape, box_points, spacing, reach))
    out = labels.copy()
    out[region][change] = new[change]
    inside = box_points[((box_points >= 0) & (box_points < np.asarray(old.shape))).all(axis=1)]
    if len(inside) and not change[tuple(inside.T)].any():  # the hint's voxels left as they were: brushed
        painted = brush(scan, out, last)
        out, region = painted.labels, _union(region, painted.region)
    return Refinement(out, region, time.perf_counter() - start)


def _union(a: Region, b: Region) -> Region:
    if b[0].stop <= b[0].start:
        return a
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True))


def brush(scan: sitk.Image, labels: np.ndarray, hint: Hint, radius_mm: float = 5.0) -> Refinement:
    """The baseline without a model: a ball of `radius_mm` around each point of the hint
    painted with its label (positive), or its label's voxels there set to background
    (negative)."""
    start = time.perf_counter()
    spacing = np.asarray(scan.GetSpacing())[::-1]  # z, y, x
    reach = np.ceil(radius_mm / spacing).astype(int)
    points = np.rint(_hint_points(hint)).astype(int)
    shape = np.asarray(labels.shape)
    lo = np.clip(points.min(axis=0) - reach, 0, shape)
    hi = np.clip(points.max(axis=0) + reach + 1, 0, shape)
    if (hi <= lo).any():
        return Refinement(labels.copy(), NOTHING, time.perf_counter() - start)
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    seeds = np.ones(tuple(hi - lo), bool)
    inside = points[((points >= lo) & (points < hi)).all(axis=1)] - lo
    seeds[tuple(inside.T)] = False
    ball = ndimage.distance_transform_edt(seeds, sampling=spacing) <= radius_mm if len(inside) else ~seeds
    out = labels.copy()
    box = out[region]
    k = np.uint8(hint.label)
    if hint.positive:
        box[ball] = k
    else:
        box[ball & (box == k)] = 0
    return Refinement(out, region, time.perf_counter() - start)
