"""Each organ in one piece: labelled pieces of an organ far smaller than its largest piece
are stray (a speck of "liver" in the stomach, a corner of the spleen called kidney) and
become background, as nnU-Net's post-processing removes all but the largest component.

Pieces of comparable size stay (a kidney cut in two halves by thick slices is still both
halves), and the review flags the split. Decided on held-out patients: docs/results.md#stray-pieces.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from napari_mmseg.organs import ORGANS

# A piece smaller than this fraction of its organ's largest piece is stray. On the fold-0
# held-out patients, 0.5 gained as much as keeping only the largest piece where that
# helped, and lost nothing where that hurt (the enlarged spleen in MR): docs/results.md#stray-pieces.
STRAY_FRACTION = 0.5


def stray_pieces(labels: np.ndarray, fraction: float = STRAY_FRACTION) -> np.ndarray:
    """Mask of the voxels in stray pieces (26-connected) of any organ."""
    stray = np.zeros(labels.shape, bool)
    relabel = sitk.RelabelComponentImageFilter()
    relabel.SortByObjectSizeOn()
    for organ in ORGANS:
        mask = labels == organ.label
        if not mask.any():
            continue
        pieces = relabel.Execute(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.view(np.uint8)), True))
        sizes = np.asarray(relabel.GetSizeOfObjectsInPixels())
        kept = int(np.count_nonzero(sizes >= fraction * sizes[0]))  # sorted: the kept ones come first
        if kept < sizes.size:
            stray |= sitk.GetArrayViewFromImage(pieces) > kept
    return stray


def without_stray_pieces(probs: np.ndarray, fraction: float = STRAY_FRACTION) -> np.ndarray:
    """Class probabilities (classes first) whose argmax has no stray pieces: the stray
    voxels become certain background. A copy; `probs` itself is left as it is."""
    stray = stray_pieces(probs.argmax(axis=0), fraction)
    if not stray.any():
        return probs
    out = probs.copy()
    out[:, stray] = 0.0
    out[0, stray] = 1.0
    return out
