"""The simulated annotator: where a careful user would click next to correct a label map.

The rule of interactive-segmentation benchmarks (SEGFM3D, NoC@90): click the voxel deepest
inside the largest remaining error region, positive for the reference's organ there, or
negative for the predicted organ where the reference is background. One rule, used by the
correction benchmark and by training on simulated interactions, so the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from napari_mmseg.correction.hints import Hint


def largest_error_region(
    reference: np.ndarray, labels: np.ndarray, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[slice, ...]] | None:
    """The largest face-connected region where `labels` differ from `reference` (an organ
    voxel missed, wrongly added or given another organ's label) outside `exclude`, as a
    mask inside its bounding box, with that box; None when nothing is left."""
    error = reference != labels
    if exclude is not None:
        error &= ~exclude
    if not error.any():
        return None
    components, n = ndimage.label(error)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    biggest = int(sizes.argmax())
    box = ndimage.find_objects(components)[biggest - 1]
    return components[box] == biggest, box


def next_click(
    reference: np.ndarray, labels: np.ndarray, spacing: Sequence[float], exclude: np.ndarray | None = None
) -> Hint | None:
    """The next click of the simulated annotator, or None when nothing is left to correct.

    `reference` and `labels` are label maps (z, y, x) in our organ ids on one grid; `spacing`
    is the voxel size in mm in the same (z, y, x) order, so "deepest" is measured in mm.
    Errors under `exclude` (e.g. voxels a model may not change) are not clicked. The
    reference places the click; a model given the click never sees the reference.
    """
    if reference.shape != labels.shape:
        raise ValueError(f"Reference {reference.shape} and labels {labels.shape} differ in shape.")
    found = largest_error_region(reference, labels, exclude)
    if found is None:
        return None
    region, box = found
    # Padded so that the region's edge on the array's border counts as its border too.
    sampling = tuple(float(s) for s in spacing)
    depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=sampling)[1:-1, 1:-1, 1:-1]
    local = np.unravel_index(int(depth.argmax()), region.shape)
    z, y, x = (int(i + s.start) for i, s in zip(local, box, strict=True))
    truth, shown = int(reference[z, y, x]), int(labels[z, y, x])
    if truth:
        return Hint(truth, True, ((z, y, x),))
    return Hint(shown, False, ((z, y, x),))
