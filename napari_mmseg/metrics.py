"""Dice per organ and organ volumes, on label maps in our ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_mmseg.organs import ORGANS


@dataclass(frozen=True)
class OrganScore:
    organ: str
    dice: float  # NaN when the organ is absent from both maps
    predicted_ml: float
    reference_ml: float


def dice_scores(
    prediction: np.ndarray, reference: np.ndarray, spacing_mm: tuple[float, ...]
) -> list[OrganScore]:
    """Dice and volumes per organ; both maps in our ids on the same grid."""
    if prediction.shape != reference.shape:
        raise ValueError(f"Prediction {prediction.shape} and reference {reference.shape} differ in shape.")
    n = len(ORGANS) + 1
    for what, labels in (("prediction", prediction), ("reference", reference)):
        if labels.size and int(labels.max()) >= n:
            raise ValueError(f"The {what} holds label id {int(labels.max())}: map it to organ ids 0–{n - 1} first.")
    # One pass over the voxels: a joint histogram of (prediction, reference) ids.
    joint = np.bincount(
        prediction.astype(np.int64).ravel() * n + reference.astype(np.int64).ravel(),
        minlength=n * n,
    ).reshape(n, n)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    scores = []
    for o in ORGANS:
        inter = joint[o.label, o.label]
        p, r = joint[o.label].sum(), joint[:, o.label].sum()
        dice = 2.0 * inter / (p + r) if p + r else float("nan")
        scores.append(OrganScore(o.name, float(dice), float(p) * voxel_ml, float(r) * voxel_ml))
    return scores


def mean_dice(scores: list[OrganScore]) -> float:
    values = [s.dice for s in scores if not np.isnan(s.dice)]
    return float(np.mean(values)) if values else float("nan")
