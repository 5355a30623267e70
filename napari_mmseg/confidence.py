"""How sure the network is, per voxel, on the scan's grid: confidence (the largest class
probability) for the review's per-organ means, and uncertainty (normalised entropy) for an
annotator's "correct here first" layer.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

# Where the network is at least this sure of every voxel of the model's grid, the maps are
# set to their certain values (confidence 1, uncertainty 0) instead of being interpolated:
# on a 512×512×300 scan that skips most of the volume (air, and body far from the organs).
SURE = 0.99


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of the class probabilities (classes first) divided by its maximum, log(C):
    0 for a one-hot vector, 1 for a uniform one; float32."""
    h = np.zeros(probs.shape[1:], np.float32)
    for p in probs:
        h -= p * np.log(np.maximum(p, np.float32(1e-12)))
    h /= np.float32(math.log(probs.shape[0]))
    return np.clip(h, 0.0, 1.0, out=h)


def probability_maps(probs: np.ndarray, grid: sitk.Image, native: sitk.Image,
                     where: tuple[slice, ...] | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Confidence and uncertainty (float32) on the `native` grid, linearly interpolated from
    class probabilities on the canonical `grid`, or on its (z, y, x) box `where` (beyond it:
    certain background, as `probabilities_to_native` labels it)."""
    where = where or tuple(slice(0, n) for n in reversed(grid.GetSize()))
    confidence = probs.max(axis=0)
    unsure = np.argwhere(confidence < SURE)
    certain = (1.0, 0.0)  # confidence, uncertainty
    maps = [_certain(native, value) for value in certain]
    region = None
    if unsure.size:
        # the unsure box on the grid, one voxel wider for the interpolation, (z, y, x)
        lo = np.maximum(unsure.min(axis=0) - 1, 0)
        hi = np.minimum(unsure.max(axis=0) + 2, confidence.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        start = [int(lo[2 - a] + where[2 - a].start) for a in range(3)]  # grid index, x y z
        region = _native_box(grid, native, start, [int(hi[2 - a] - lo[2 - a]) for a in range(3)])
    if region is None:
        return maps[0], maps[1]
    index, size = region
    reference = sitk.Image(size, sitk.sitkUInt8)
    reference.SetSpacing(native.GetSpacing())
    reference.SetDirection(native.GetDirection())
    reference.SetOrigin(native.TransformIndexToPhysicalPoint(index))
    paste = tuple(slice(i, i + n) for i, n in zip(index, size, strict=True))
    entropy = normalised_entropy(probs[(slice(None), *box)])
    for values, full, value in zip((confidence[box], entropy), maps, certain, strict=True):
        part = sitk.GetImageFromArray(np.ascontiguousarray(values))
        part.SetSpacing(grid.GetSpacing())
        part.SetDirection(grid.GetDirection())
        part.SetOrigin(grid.TransformIndexToPhysicalPoint(start))
        full[paste] = sitk.Resample(part, reference, sitk.Transform(), sitk.sitkLinear, value, sitk.sitkFloat32)
    return maps[0], maps[1]


def _certain(native: sitk.Image, value: float) -> sitk.Image:
    image = sitk.Image(native.GetSize(), sitk.sitkFloat32)
    if value:
        image += value
    image.CopyInformation(native)
    return image


def _native_box(grid: sitk.Image, native: sitk.Image, start: list[int],
                size: list[int]) -> tuple[list[int], list[int]] | None:
    """(index, size), x y z, of the native voxels whose linear interpolation reads the grid
    box of `size` voxels at `start`; None when the box misses the scan."""
    corners = [
        native.TransformPhysicalPointToContinuousIndex(grid.TransformContinuousIndexToPhysicalPoint(
            [start[a] + (size[a] - 0.5 if (k >> a) & 1 else -0.5) for a in range(3)]))
        for k in range(8)
    ]
    lo = np.clip(np.floor(np.min(corners, axis=0)), 0, native.GetSize()).astype(int)
    hi = np.clip(np.ceil(np.max(corners, axis=0)) + 1, 0, native.GetSize()).astype(int)
    if (hi <= lo).any():
        return None
    return lo.tolist(), (hi - lo).tolist()
