"""Non-learned correction aids annotators expect from any labelling tool: fill an organ
between the slices they drew, remove a clicked piece, give a clicked piece another organ.

Each takes a label map `(z, y, x)` in our ids and returns a new one; the input is never
changed, so a viewer can keep it for undo.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from napari_mmseg.organs import NUM_CLASSES

# 26-connected, as `inference.organ_pieces` counts an organ's pieces: pieces that touch at a
# corner are one piece to the eye, and so to a click.
PIECE_CONNECTIVITY = np.ones((3, 3, 3), bool)


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """In-plane distance to the mask's border in pixels, negative inside."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=False)
    return sitk.GetArrayFromImage(distance)


def fill_between_slices(labels: np.ndarray, label: int, axis: int = 0) -> np.ndarray:
    """`label` interpolated across the slices (along `axis`) that lack it, between each pair
    of slices that hold it.

    Shape-based interpolation (Herman et al., IEEE CG&A 1992): the signed distance maps of
    the two drawn slices are blended linearly and the blend's inside is the organ, so a
    contour morphs smoothly from one slice to the next. ITK's MorphologicalContourInterpolator
    (what ITK-SNAP and 3D Slicer use) is not wrapped by SimpleITK, and the `itk` package
    that has it is a large dependency for this one filter.

    Slices that already hold `label` are never changed, nor is any voxel of another organ:
    only background becomes `label`, so interpolating one organ cannot eat its neighbour.
    """
    if labels.ndim != 3:
        raise ValueError(f"Labels must be 3-D (z, y, x), not of shape {labels.shape}.")
    if not 0 < label < NUM_CLASSES:
        raise ValueError(f"Label {label} is not an organ (1–{NUM_CLASSES - 1}).")
    out = labels.copy()
    mask = np.moveaxis(labels == label, axis, 0)
    free = np.moveaxis(labels == 0, axis, 0)
    target = np.moveaxis(out, axis, 0)  # a view: writing it writes `out`
    drawn = np.flatnonzero(mask.any(axis=(1, 2)))
    for a, b in zip(drawn[:-1], drawn[1:], strict=True):
        if b - a < 2:
            continue
        first, last = _signed_distance(mask[a]), _signed_distance(mask[b])
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            inside = (1.0 - t) * first + t * last <= 0.0
            target[k][inside & free[k]] = label
    return out


def _piece(labels: np.ndarray, index: Sequence[int]) -> np.ndarray | None:
    """Mask of the 26-connected piece of one label that holds voxel `index`; None on background."""
    if len(index) != labels.ndim or not all(0 <= int(i) < n for i, n in zip(index, labels.shape, strict=True)):
        raise ValueError(f"Voxel {tuple(index)} is outside labels of shape {labels.shape}.")
    value = labels[tuple(int(i) for i in index)]
    if value == 0:
        return None
    same = labels == value
    # Only the box around the organ: labelling the whole volume costs seconds at full size.
    box = ndimage.find_objects(same.view(np.uint8))[0]
    pieces, _ = ndimage.label(same[box], structure=PIECE_CONNECTIVITY)
    local = tuple(int(i) - s.start for i, s in zip(index, box, strict=True))
    mask = np.zeros(labels.shape, bool)
    mask[box] = pieces == pieces[local]
    return mask


def remove_piece(labels: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """The organ piece holding voxel `index` (z, y, x) becomes background; a click on
    background changes nothing."""
    return relabel_piece(labels, index, 0)


def relabel_piece(labels: np.ndarray, index: Sequence[int], new_label: int) -> np.ndarray:
    """The organ piece holding voxel `index` (z, y, x) becomes `new_label` (0 = background);
    a click on background changes nothing."""
    if not 0 <= new_label < NUM_CLASSES:
        raise ValueError(f"Label {new_label} is not one of 0–{NUM_CLASSES - 1}.")
    out = labels.copy()
    piece = _piece(labels, index)
    if piece is not None:
        out[piece] = new_label
    return out
