"""The context pass's grid: the model's grid at twice the spacing.

Why: a 64³ window at 3 mm sees a fifth of an abdomen, and an organ larger than any in the
training data (a 3-litre spleen) has no edge in view from its middle; the network then
calls it background or liver. At 6 mm the same window holds the whole abdomen and the big
spleen looks like a normal one. Networks trained with coarse patches (`p_coarse`) are run
on both grids and their probabilities blended (`ModelMetadata.context_weight`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_mmseg.config import AugmentationConfig

COARSE_FACTOR = 2  # the context grid's spacing, in model voxels
# The context pass's share of the blended probabilities, for networks trained with coarse
# patches, and when it is blended at all: only when it finds an organ at least CONTEXT_GATE
# times as large as the sliding windows do (an organ too large for them). Always blended,
# it cost about 0.01 Dice on every scan of normal size and up to 0.06 on contrast-shifted
# MR; gated, 0.002 on scans as they are, 0.02–0.03 still on the hard MR contrasts (gamma 2,
# inverted). Both chosen on held-out patients (docs/results.md#context-pass). Scans shorter
# than one window along z get no context pass (`inference.predict_scan`).
CONTEXT_WEIGHT = 0.5
CONTEXT_GATE = 1.5
# An organ the context pass finds at least this many times as large as the windows do is
# one too large for them (an enlarged spleen). Then the windows' labels are kept, and their
# background inside every organ the context pass finds CONTEXT_GATE× larger becomes that
# organ, with the context pass's probabilities there; nothing is blended. On the fold-0
# held-out patients with the spleen enlarged this gained +0.013 (CT) and +0.036 (MR) over the
# blend (the spleen itself 0.67 → 0.72 and 0.66 → 0.74), while scans whose organs grow less
# than 2× (the gate firing on normal scans, at 1.56–1.76×) keep the blend
# (docs/results.md#context-pass).
CONTEXT_TAKEOVER = 2.0


def context_weight(augmentation: AugmentationConfig) -> float:
    """The blend a network trained under `augmentation` is run with."""
    return CONTEXT_WEIGHT if augmentation.enabled and augmentation.p_coarse > 0 else 0.0


def organ_growth(fine_labels: np.ndarray, context_labels: np.ndarray, classes: int) -> np.ndarray:
    """Per organ: how many times as many voxels the context pass labels as the windows do."""
    found = [np.bincount(labels.ravel(), minlength=classes)[1:] for labels in (fine_labels, context_labels)]
    return found[1] / np.maximum(found[0], 1)


def with_context(fine: np.ndarray, context: np.ndarray, weight: float) -> tuple[np.ndarray, bool]:
    """The windows' probabilities with the context pass's taken in (`fine` is changed in
    place), and whether they were: not at all when no organ grows `CONTEXT_GATE`×; blended by
    `weight` when none grows `CONTEXT_TAKEOVER`×; otherwise the windows' background inside
    each organ grown `CONTEXT_GATE`× becomes that organ."""
    fine_labels, context_labels = fine.argmax(axis=0), context.argmax(axis=0)
    growth = organ_growth(fine_labels, context_labels, fine.shape[0])
    if not np.any(growth >= CONTEXT_GATE):
        return fine, False
    if np.any(growth >= CONTEXT_TAKEOVER):
        where = (fine_labels == 0) & np.isin(context_labels, np.flatnonzero(growth >= CONTEXT_GATE) + 1)
        fine[:, where] = context[:, where]
    else:
        fine *= 1.0 - weight
        fine += weight * context
    return fine, True


def coarsen(values: np.ndarray, factor: int = COARSE_FACTOR) -> np.ndarray:
    """Block averages of `factor`³ voxels (a partial block at the far edge averages what it
    has): what training's coarse patches and inference's context pass both see."""
    pad = [(0, -n % factor) for n in values.shape]
    blocks = np.pad(np.asarray(values, np.float32), pad, constant_values=np.nan)
    z, y, x = (n // factor for n in blocks.shape)
    return np.nanmean(blocks.reshape(z, factor, y, factor, x, factor), axis=(1, 3, 5))


def coarsen_labels(labels: np.ndarray, classes: int, factor: int = COARSE_FACTOR) -> np.ndarray:
    """Each block labelled by its most frequent class."""
    one_hot = np.stack([coarsen((labels == c).astype(np.float32), factor) for c in range(classes)])
    return one_hot.argmax(axis=0).astype(np.uint8)


def refine(probs: np.ndarray, shape: tuple[int, ...], factor: int = COARSE_FACTOR) -> np.ndarray:
    """Context-grid probabilities (classes first) back on the model's grid of `shape`:
    trilinear, block centres on the centres of the voxels they average."""
    x = torch.from_numpy(np.ascontiguousarray(probs, np.float32))[None]
    fine = F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)[0]
    return fine[:, : shape[0], : shape[1], : shape[2]].numpy()
