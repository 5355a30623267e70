"""Review aids: per-organ volume, confidence and plausibility flags, so that a reviewer
knows which organ to distrust before reading every slice.

Left and right come from physical coordinates (SimpleITK's LPS frame: +x is the patient's
left), never from array order, so they hold whatever direction cosines a scan has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import SimpleITK as sitk

from napari_mmseg.organs import ORGAN_BY_LABEL, ORGANS

# 2.5th–97.5th percentiles of the organ volumes (ml) in the bundled weights' 40 training
# label maps (24 BTCV CT, 16 CHAOS T2 MR): `python benchmarks/reference_volumes.py`.
# Percentiles rather than min–max, so that one unusual patient (btcv_07's 10 ml kidneys,
# chaos_03's 743 ml spleen) does not stretch a range to where it flags nothing.
TRAINING_VOLUMES_ML = MappingProxyType({
    "liver": (1029.5, 2504.4),
    "spleen": (74.8, 444.0),
    "kidney_right": (78.0, 248.7),
    "kidney_left": (77.0, 245.5),
})
# A volume is flagged beyond the range widened by this factor (÷ below, × above): 40
# patients are a small sample, and a correct-looking segmentation at the model's 3 mm grid
# still misses or adds a 1–2 voxel rim, 15–20 % of a kidney's volume.
VOLUME_MARGIN = 1.25


@dataclass(frozen=True)
class ReviewRules:
    """When an organ is flagged. A component is "large" when it holds at least `min_ml` and
    either `component_fraction` of the organ or `component_ml`: a kidney split in two halves
    and a 30 ml island of "liver" in the stomach both count, a few stray voxels do not."""

    volume_ranges_ml: Mapping[str, tuple[float, float]] = field(default_factory=lambda: TRAINING_VOLUMES_ML)
    volume_margin: float = VOLUME_MARGIN
    component_fraction: float = 0.10
    component_ml: float = 20.0
    min_ml: float = 1.0


@dataclass(frozen=True)
class OrganReview:
    label: int  # 1..4
    name: str  # organs.ORGANS name: "liver", "spleen", "kidney_right", "kidney_left"
    volume_ml: float
    confidence: float  # mean max-softmax probability inside the organ (nan if absent or unknown)
    components: int  # number of large connected components
    flags: tuple[str, ...]  # why to look again, one sentence each
    at_scan_edge: bool = False  # reaches a face of the scan: only part of it may be in view

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "volume_ml": round(self.volume_ml, 1),
            "confidence": None if math.isnan(self.confidence) else round(self.confidence, 4),
            "components": self.components,
            "at_scan_edge": self.at_scan_edge,
            "flags": list(self.flags),
        }


@dataclass(frozen=True)
class ScanReview:
    organs: tuple[OrganReview, ...]
    # about the scan as a whole, e.g. left and right swapped (`orientation_check.py`)
    scan_flags: tuple[str, ...] = ()

    @property
    def flags(self) -> tuple[str, ...]:
        """The scan's flags ("Scan: …"), then every organ's, each led by the organ's display
        name ("Spleen: volume …")."""
        return (*(f"Scan: {f}" for f in self.scan_flags),
                *(f"{ORGAN_BY_LABEL[o.label].display_name}: {f}" for o in self.organs for f in o.flags))

    def to_dict(self) -> dict:
        """JSON-ready (confidence None where unknown): what `mmseg segment --report` writes."""
        return {"organs": {o.name: o.to_dict() for o in self.organs}, "flags": list(self.flags)}


@dataclass(frozen=True)
class _Measured:
    volume_ml: float
    centroid_x_mm: float  # physical LPS x: larger is further to the patient's left
    components_ml: tuple[float, ...]  # largest first
    confidence: float
    at_scan_edge: bool  # its bounding box touches a face of the image


_ABSENT = _Measured(0.0, math.nan, (), math.nan, False)


def review_image(labels: sitk.Image, confidence: sitk.Image | None = None,
                 rules: ReviewRules = ReviewRules()) -> ScanReview:
    """Volumes, confidence and flags of the organs in a label image (our ids). `confidence`:
    the max-softmax probability per voxel on the same grid (`Segmentation.confidence`)."""
    if confidence is not None and confidence.GetSize() != labels.GetSize():
        raise ValueError(f"confidence is {confidence.GetSize()} voxels, the labels {labels.GetSize()}.")
    labels = sitk.Cast(labels, sitk.sitkUInt8) if labels.GetPixelID() != sitk.sitkUInt8 else labels
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(labels)
    present = set(shapes.GetLabels())
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    ids = sitk.GetArrayViewFromImage(labels)
    values = None if confidence is None else sitk.GetArrayViewFromImage(confidence)
    measured = {o.label: _measure(ids, values, o.label, shapes, voxel_ml) for o in ORGANS if o.label in present}
    side = _side_flags(measured)
    organs = []
    for o in ORGANS:
        m = measured.get(o.label, _ABSENT)
        large = _large(m.components_ml, m.volume_ml, rules)
        flags = (*_volume_flags(o.name, m.volume_ml, m.at_scan_edge, rules), *_component_flags(large, m.volume_ml),
                 *side.get(o.label, ()))
        organs.append(OrganReview(o.label, o.name, m.volume_ml, m.confidence, len(large), flags, m.at_scan_edge))
    return ScanReview(tuple(organs))


def _measure(ids: np.ndarray, confidence: np.ndarray | None, label: int,
             shapes: sitk.LabelShapeStatisticsImageFilter, voxel_ml: float) -> _Measured:
    """One organ, looking only inside its bounding box: its connected pieces (26-connected)
    and mean confidence (SimpleITK's LabelStatistics took 4.6 s on a 512×512×300 scan)."""
    x, y, z, nx, ny, nz = shapes.GetBoundingBox(label)
    box = np.s_[z : z + nz, y : y + ny, x : x + nx]
    inside = ids[box] == label
    pieces = sitk.ConnectedComponent(sitk.GetImageFromArray(inside.view(np.uint8)), True)
    counts = np.bincount(sitk.GetArrayViewFromImage(pieces).ravel())[1:]
    return _Measured(
        shapes.GetNumberOfPixels(label) * voxel_ml,
        shapes.GetCentroid(label)[0],
        tuple(float(c) * voxel_ml for c in sorted(counts, reverse=True)),
        math.nan if confidence is None else float(confidence[box][inside].mean(dtype=np.float64)),
        any(b == 0 or b + n == size for b, n, size in zip((x, y, z), (nx, ny, nz), ids.shape[::-1], strict=True)),
    )


def _large(components_ml: tuple[float, ...], volume_ml: float, rules: ReviewRules) -> tuple[float, ...]:
    least = max(rules.min_ml, min(rules.component_fraction * volume_ml, rules.component_ml))
    return tuple(c for c in components_ml if c >= least)


def _volume_flags(name: str, volume_ml: float, at_scan_edge: bool, rules: ReviewRules) -> tuple[str, ...]:
    """An organ cut by the scan's edge (a slab, a small field of view) is not called small:
    only the part in view was measured, and the reviewer is told so instead."""
    lo, hi = rules.volume_ranges_ml[name]
    if volume_ml == 0.0:
        return ("not found",)
    if volume_ml < lo / rules.volume_margin:
        if at_scan_edge:
            return (f"reaches the edge of the scan: its {volume_ml:.1f} ml are only the part in view",)
        return (f"volume {volume_ml:.1f} ml is below the training range {lo:.0f}–{hi:.0f} ml",)
    if volume_ml > hi * rules.volume_margin:
        return (f"volume {volume_ml:.1f} ml is above the training range {lo:.0f}–{hi:.0f} ml",)
    return ()


def _component_flags(large: tuple[float, ...], volume_ml: float) -> tuple[str, ...]:
    if len(large) < 2:
        return ()
    return (f"split into {len(large)} large pieces (the second {large[1]:.1f} ml, "
            f"{100 * large[1] / volume_ml:.0f} % of the organ)",)


def _side_flags(measured: dict[int, _Measured]) -> dict[int, tuple[str, ...]]:
    """Organs on the wrong side of the patient. The liver must lie on the patient's right of
    the spleen; each kidney on its own side of the midline, taken as the mean of the pairs'
    midpoints (kidneys, liver–spleen) that are present: swapped kidneys leave their midpoint
    in place, and the liver–spleen midpoint, about 2 cm left of the spine, is still well
    inside the 5–6 cm that separate a kidney's centre from it."""
    x = {k: m.centroid_x_mm for k, m in measured.items()}
    liver, spleen, right, left = (o.label for o in ORGANS)
    flags: dict[int, tuple[str, ...]] = {}
    if liver in x and spleen in x and x[liver] > x[spleen]:
        flags[liver] = (f"lies {x[liver] - x[spleen]:.0f} mm on the patient's left of the spleen "
                        "(mirrored anatomy, or wrong orientation in the file?)",)
    midpoints = [(x[a] + x[b]) / 2 for a, b in ((right, left), (liver, spleen)) if a in x and b in x]
    if not midpoints:
        return flags
    midline = float(np.mean(midpoints))
    for kidney, wrong_way, side in ((right, 1.0, "left"), (left, -1.0, "right")):
        if kidney in x and wrong_way * (x[kidney] - midline) > 0:
            flags[kidney] = (f"lies {abs(x[kidney] - midline):.0f} mm on the patient's {side} of the midline "
                             "(swapped kidneys, or wrong orientation in the file?)",)
    return flags
