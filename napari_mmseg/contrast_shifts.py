"""Contrast shifts of a labelled scan, to measure how a model copes with appearances its
training data lacks: gamma, inverted MR, CT as if uncontrasted, a moved CT scale,
a smooth bias field, thick slices.

They are proxies, not real unseen scans: an inverted T2 is not a T1, and the uncontrasted CT
lowers the organs inside the reference labels, so its organ borders are exactly the
reference's. Every shift keeps the scan's grid and never touches the labels; the seeded ones
give the same result for the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

import numpy as np
import SimpleITK as sitk

# Typical median HU of unenhanced organs (our ids): liver 55, spleen 45, kidneys 35.
NON_CONTRAST_HU = {1: 55.0, 2: 45.0, 3: 35.0, 4: 35.0}

ShiftFn = Callable[[np.ndarray, np.ndarray, tuple[float, ...], np.random.Generator], np.ndarray]


def gamma(values: np.ndarray, g: float) -> np.ndarray:
    """Gamma on the volume rescaled to [0, 1], then back to its own range."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return values.copy()
    return (lo + (hi - lo) * ((values - lo) / (hi - lo)) ** g).astype(np.float32)


def body_mask(values: np.ndarray) -> np.ndarray:
    """Voxels brighter than air (the criterion of `inference.body_box`), filled along each
    in-plane row and column so that dark structures inside the body count as body."""
    lo = float(values.min())
    mask = values > lo + 0.1 * (np.percentile(values, 99) - lo)
    filled = np.ones_like(mask)
    for axis in (1, 2):
        forward = np.logical_or.accumulate(mask, axis=axis)
        backward = np.flip(np.logical_or.accumulate(np.flip(mask, axis), axis=axis), axis)
        filled &= forward & backward
    return filled


def invert(values: np.ndarray) -> np.ndarray:
    """max + min − x inside the body, air unchanged: bright fluid turns dark and fat bright,
    a crude T2 ↔ T1 proxy."""
    body = body_mask(values)
    out = values.astype(np.float32, copy=True)
    if body.any():
        inside = values[body]
        out[body] = float(inside.max()) + float(inside.min()) - inside
    return out


def uncontrasted_ct(
    values: np.ndarray, labels: np.ndarray, medians: dict[int, float] = NON_CONTRAST_HU
) -> np.ndarray:
    """Each organ's HU shifted so that its median becomes the unenhanced value, its texture
    kept: enhanced kidneys (≈ 150–200 HU) and spleen drop to what a non-contrast scan shows."""
    out = values.astype(np.float32, copy=True)
    for label, target in medians.items():
        organ = labels == label
        if organ.any():
            out[organ] += target - float(np.median(values[organ]))
    return out


def rescale(values: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """A linear intensity change, e.g. a CT calibrated differently (HU·0.9 − 40)."""
    return (values * scale + offset).astype(np.float32)


def bias_field(values: np.ndarray, strength: float, rng: np.random.Generator, order: int = 2) -> np.ndarray:
    """Multiplied by 1 + strength·f, f a random polynomial of the normalised voxel coordinates
    (total degree ≤ order) scaled to reach ±1 over the body and clipped to ±1 beyond it: a
    smooth MR coil shading of ±strength across the anatomy, not only in the corners of air."""
    axes = [np.linspace(-1.0, 1.0, n) for n in values.shape]
    field = np.zeros(values.shape)
    for powers in product(range(order + 1), repeat=3):
        if 0 < sum(powers) <= order:
            term = rng.normal()
            for axis, (coords, p) in enumerate(zip(axes, powers, strict=True)):
                shape = [1, 1, 1]
                shape[axis] = -1
                term = term * (coords**p).reshape(shape)
            field = field + term
    body = body_mask(values)
    if not body.any():  # a uniform volume: all of it counts
        body[...] = True
    field -= field[body].mean()
    peak = float(np.abs(field[body]).max())
    if peak > 0:
        field /= peak
    return (values * (1.0 + strength * np.clip(field, -1.0, 1.0))).astype(np.float32)


def slice_axis(spacing_zyx: tuple[float, ...]) -> int:
    """The array axis with the coarsest spacing; the stored slice axis (0) on a tie."""
    return int(np.argmax(np.asarray(spacing_zyx) > max(spacing_zyx) - 1e-6))


def thick_slices(values: np.ndarray, spacing_zyx: tuple[float, ...], thickness_mm: float) -> np.ndarray:
    """Slabs of `thickness_mm` averaged along the slice axis (each slice weighted by its
    overlap with the slab), then interpolated back onto the original slices: the partial
    volume of a thick-slice acquisition on the scan's own grid."""
    axis = slice_axis(spacing_zyx)
    n, s = values.shape[axis], float(spacing_zyx[axis])
    extent = n * s
    edges = np.arange(0.0, extent, thickness_mm)
    slab_lo, slab_hi = edges, np.minimum(edges + thickness_mm, extent)
    slice_lo = np.arange(n) * s
    overlap = np.clip(
        np.minimum(slab_hi[:, None], slice_lo[None, :] + s) - np.maximum(slab_lo[:, None], slice_lo[None, :]), 0, None
    )
    average = overlap / overlap.sum(axis=1, keepdims=True)  # slabs × slices
    slab_centres = (slab_lo + slab_hi) / 2
    slice_centres = slice_lo + s / 2
    back = np.stack([np.interp(slice_centres, slab_centres, e) for e in np.eye(len(edges))], axis=1)
    matrix = (back @ average).astype(np.float32)  # slices × slices
    moved = np.moveaxis(values, axis, 0)
    out = (matrix @ moved.reshape(n, -1)).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


@dataclass(frozen=True)
class ContrastShift:
    name: str
    modality: str
    fn: ShiftFn


SHIFTS: tuple[ContrastShift, ...] = (
    ContrastShift("uncontrasted (liver 55, spleen 45, kidneys 35 HU)", "CT",
                  lambda v, lab, sp, rng: uncontrasted_ct(v, lab)),
    ContrastShift("HU·0.9 − 40", "CT", lambda v, lab, sp, rng: rescale(v, 0.9, -40.0)),
    ContrastShift("thick slices 9 mm", "CT", lambda v, lab, sp, rng: thick_slices(v, sp, 9.0)),
    ContrastShift("gamma 0.5", "MR", lambda v, lab, sp, rng: gamma(v, 0.5)),
    ContrastShift("gamma 2.0", "MR", lambda v, lab, sp, rng: gamma(v, 2.0)),
    ContrastShift("inverted (T2 ↔ T1 proxy)", "MR", lambda v, lab, sp, rng: invert(v)),
    ContrastShift("bias field ±30 %", "MR", lambda v, lab, sp, rng: bias_field(v, 0.3, rng)),
    ContrastShift("thick slices 9 mm", "MR", lambda v, lab, sp, rng: thick_slices(v, sp, 9.0)),
)


def shifts_for(modality: str) -> list[ContrastShift]:
    return [s for s in SHIFTS if s.modality == modality]


def apply_shift(shift: ContrastShift, image: sitk.Image, labels: sitk.Image, seed: int = 0) -> sitk.Image:
    """The shifted scan, with exactly the geometry of `image`."""
    values = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    out = sitk.GetImageFromArray(
        shift.fn(values, sitk.GetArrayViewFromImage(labels), image.GetSpacing()[::-1], np.random.default_rng(seed))
    )
    out.CopyInformation(image)
    return out
