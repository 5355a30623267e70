"""The review aids in napari: where a reviewer should look first.

The numbers come from the core (`napari_mmseg.review.flags.review_image`, the network's per-voxel
uncertainty in `Segmentation`); here they become the result layer's features, lines of text
for the widget, and an uncertainty Image layer an annotator can show over the scan.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from napari_mmseg.plugin.layers import LayerData

if TYPE_CHECKING:
    import SimpleITK as sitk

    from napari_mmseg.review.flags import ScanReview

UNCERTAINTY = "mmseg_uncertainty_of"  # metadata of an uncertainty layer: the result layer's name
WARNING_STYLE = "color: orange;"


def confidence_text(confidence: float) -> str:
    return "–" if math.isnan(confidence) else f"{confidence:.2f}"


def review_features(features: pd.DataFrame, review: ScanReview) -> pd.DataFrame:
    """The result layer's features with each organ's confidence and flags beside its volume
    (text, so napari's status bar shows `confidence: 0.93`, not a rounded float)."""
    organs = {organ.label: organ for organ in review.organs}
    out = features.copy()
    out["confidence"] = [confidence_text(organs[i].confidence) if i in organs else "" for i in out["index"]]
    out["flags"] = ["; ".join(organs[i].flags) if i in organs else "" for i in out["index"]]
    return out


def with_fresh_volumes(features: pd.DataFrame, fresh: pd.DataFrame) -> pd.DataFrame:
    """Volumes recomputed after an edit, the network's confidence and flags kept: they
    describe what the network made, not the correction."""
    review = features.drop(columns=[c for c in fresh.columns if c != "index"])
    return fresh.merge(review, on="index", how="left").fillna("")


def organ_lines(features: pd.DataFrame) -> str:
    """One line per organ the network reviewed: its volume as the layer holds it now (edits
    included) and the network's confidence (mean probability of the chosen class)."""
    reviewed = features[features["confidence"] != ""]
    return "\n".join(
        f"{row.organ}: {row.volume_ml} ml, confidence {row.confidence}" for row in reviewed.itertuples()
    )


def flag_lines(review: ScanReview) -> str:
    """The plausibility flags, one `⚠ organ: why` line each; empty when there are none."""
    return "\n".join(f"⚠ {flag}" for flag in review.flags)


def uncertainty_layer_data(uncertainty: sitk.Image, result_name: str, placement: dict[str, Any]) -> LayerData:
    """The per-voxel uncertainty (0 certain … 1 every class equally likely) as a hidden Image
    layer placed exactly on the scan: bright where an annotator should correct first."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(uncertainty).astype(np.float32, copy=False)
    kwargs = {
        "name": f"{result_name} uncertainty",
        "colormap": "inferno",
        "contrast_limits": (0.0, 1.0),
        "blending": "additive",
        "opacity": 0.8,
        "visible": False,
        "metadata": {UNCERTAINTY: result_name},
        **placement,
    }
    return array, kwargs, "image"
