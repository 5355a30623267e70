"""How sure the network is, per voxel, on the scan's grid: confidence (the largest class
probability) for the review's per-organ means, and uncertainty (normalised entropy) for an
annotator's "correct here first" layer.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from napari_mmseg.preprocessing import values_to_native

# Where the network is at least this sure of all eight grid voxels around a scan voxel, the
# maps hold their certain values (confidence 1, uncertainty 0) instead of being
# interpolated: on a 512×512×300 CT that skips nine tenths of the scan.
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
    # doubt = 1 - confidence: zero beyond the box, as the interpolation pads
    doubt_and_entropy = np.stack([np.subtract(1.0, confidence, dtype=np.float32), normalised_entropy(probs)])
    shape = tuple(reversed(native.GetSize()))
    conf, unc = np.ones(shape, np.float32), np.zeros(shape, np.float32)
    for flat, (doubt, entropy) in values_to_native(doubt_and_entropy, grid, native, where, confidence < SURE):
        conf.ravel()[flat] = 1.0 - doubt
        unc.ravel()[flat] = entropy
    confidence_image = _on(native, conf)
    del conf  # one scan-sized array fewer at the peak
    return confidence_image, _on(native, unc)


def _on(native: sitk.Image, values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(native)
    return image
