"""Organs larger than the training data holds (splenomegaly, hepatomegaly), made from the
scans we have: a smooth radial magnification around a point, identity far from it.

Why: a held-out patient with a 3-litre spleen had half of it labelled liver, and none of our
training spleens exceeds 0.75 l. The same warp serves as a test condition (an organ of a
test scan enlarged, its labels warped with it) and as a training augmentation (a random
point of a patch magnified). It moves anatomy, so unlike `contrast_shifts.py` it changes
the labels too, always together with the image.

A point at distance r from the centre is drawn from distance r / factor inside `inner`,
from r itself beyond `outer`, and from a linear blend between: a monotone map of r, so the
warp folds nothing. Neighbours inside `outer` are pushed outwards and squeezed into the ring.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def source_radius(r: torch.Tensor, factor: float, inner: float, outer: float) -> torch.Tensor:
    """Where a point at distance `r` from the centre is drawn from."""
    ring = inner / factor + (r - inner) * (outer - inner / factor) / (outer - inner)
    return torch.where(r <= inner, r / factor, torch.where(r >= outer, r, ring))


def magnify_grid(grid: torch.Tensor, centre: torch.Tensor, factor: float, inner: float, outer: float) -> torch.Tensor:
    """A sampling grid (…, 3) magnified around `centre`; `centre`, `inner` and `outer` in
    the grid's units."""
    offset = grid - centre
    r = torch.linalg.vector_norm(offset, dim=-1, keepdim=True)
    ratio = source_radius(r, factor, inner, outer) / r.clamp_min(1e-6)
    return centre + offset * ratio


def enlarge_organ(values: np.ndarray, labels: np.ndarray, organ: int, factor: float,
                  spacing_zyx: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The scan with `organ` magnified `factor` times in length (factor³ in volume) around
    its centroid, and its labels warped with it; a scan without the organ comes back as is."""
    where = np.argwhere(labels == organ)
    if where.size == 0:
        return values.copy(), labels.copy()
    spacing = np.asarray(spacing_zyx, np.float64)
    centre_mm = where.mean(axis=0) * spacing
    reach = float(np.percentile(np.linalg.norm(where * spacing - centre_mm, axis=1), 95))
    inner = reach * factor
    outer = inner + 1.5 * reach
    shape = values.shape
    axes = [torch.arange(n, dtype=torch.float32) * float(s) for n, s in zip(shape, spacing, strict=True)]
    zyx = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # mm
    source = magnify_grid(zyx, torch.tensor(centre_mm, dtype=torch.float32), factor, inner, outer)
    extent = torch.tensor([(n - 1) * float(s) for n, s in zip(shape, spacing, strict=True)]).clamp_min(1e-6)
    normalised = (source / extent * 2 - 1).flip(-1)[None]  # grid_sample wants x, y, z in [-1, 1]
    image = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    lab = torch.from_numpy(np.ascontiguousarray(labels)).to(torch.float32)[None, None]
    out = F.grid_sample(image, normalised, mode="bilinear", padding_mode="border", align_corners=True)
    out_lab = F.grid_sample(lab, normalised, mode="nearest", padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy(), out_lab[0, 0].numpy().astype(labels.dtype)
