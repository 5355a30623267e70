"""napari layers for scans and label maps: geometry, organ colours, names and volumes.

Every layer this plugin makes carries, in its metadata, the `DisplayGeometry` of its source
file (to save labels back exactly), the scan it shows or belongs to, and its label names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.transforms import Affine

from napari_mmseg.io.display_geometry import DisplayGeometry, geometry_from_matrix, to_display
from napari_mmseg.organs import ORGAN_BY_NAME, canonical_organ_name

GEOMETRY = "mmseg_geometry"  # DisplayGeometry of the file the layer came from
SCAN = "mmseg_scan"  # path of the scan the layer shows or belongs to: never written over
LABEL_NAMES = "mmseg_label_names"  # {label id: name as the file's convention spells it}
CONVENTION = "mmseg_convention"  # where those names came from
EDITED = "mmseg_edited"  # True once the user painted on a layer the widget made
MODEL = "mmseg_model"  # a result layer's: which weights made it, on which device

LayerData = tuple[np.ndarray, dict[str, Any], str]
CT_SOFT_TISSUE_WINDOW = (-160.0, 240.0)  # width 400, level 40 HU
HU_AIR_BELOW = -500.0
_TRANSPARENT = np.zeros(4)
_OTHER = np.array([0.6, 0.6, 0.6, 0.35])  # structures other than our four organs: faint grey


def image_layer_data(image: sitk.Image, name: str, scan: Path | None = None) -> LayerData:
    """A scan as an Image layer, reoriented for reading."""
    array, geometry = to_display(image)
    kwargs = {
        "name": name,
        "colormap": "gray",
        "contrast_limits": display_window(array),
        "metadata": {GEOMETRY: geometry, SCAN: str(scan) if scan else None},
        **_transform_kwargs(geometry),
    }
    return array, kwargs, "image"


def display_window(values: np.ndarray) -> tuple[float, float] | None:
    """Grey-value limits a reader expects: the abdominal soft-tissue window for values in
    Hounsfield units (air near -1000), else the 1st–99.5th percentiles, not the full range."""
    sample = values[::2, ::2, ::2] if values.size > 4_000_000 else values
    low, high = (float(v) for v in np.percentile(sample, (1.0, 99.5)))
    if low < HU_AIR_BELOW:
        return CT_SOFT_TISSUE_WINDOW
    return (low, high) if high > low else None


def labels_layer_data(
    labels: sitk.Image, name: str, names: dict[int, str], convention: str, scan: Path | None = None
) -> LayerData:
    """A label map as a Labels layer in its own ids, coloured and named by organ."""
    array, geometry = to_display(labels)
    if array.max() <= np.iinfo(np.uint8).max:
        array = array.astype(np.uint8)
    return array, labels_kwargs(array, geometry, name, names, convention, scan), "labels"


def labels_kwargs(
    array: np.ndarray,
    geometry: DisplayGeometry,
    name: str,
    names: dict[int, str],
    convention: str,
    scan: str | Path | None,
) -> dict[str, Any]:
    """Keyword arguments of a Labels layer; geometry from the DisplayGeometry."""
    return {
        "name": name,
        "colormap": organ_colormap(names),
        "features": label_features(array, names, geometry.display.spacing),
        "metadata": {
            GEOMETRY: geometry,
            SCAN: str(scan) if scan else None,
            LABEL_NAMES: dict(names),
            CONVENTION: convention,
        },
        **_transform_kwargs(geometry),
    }


def _transform_kwargs(geometry: DisplayGeometry) -> dict[str, Any]:
    transform = geometry.layer_transform()
    return {k: v for k, v in transform.items() if v is not None}


def organ_colormap(names: dict[int, str]) -> DirectLabelColormap:
    """The paper's colours for our four organs, whatever their ids in this file; faint grey
    for any other id, so the four organs stand out."""
    colors: dict[int | None, np.ndarray] = {None: _OTHER, 0: _TRANSPARENT}
    for label, name in names.items():
        organ = canonical_organ_name(name)
        if organ is not None:
            colors[label] = np.array([*(c / 255 for c in ORGAN_BY_NAME[organ].rgb), 1.0])
    return DirectLabelColormap(color_dict=colors)


def label_features(array: np.ndarray, names: dict[int, str], spacing: tuple[float, ...]) -> pd.DataFrame:
    """One row per label: id, organ name and volume in ml, as napari's status bar shows them.
    The volume is text with one decimal: the status bar writes floats as `1.73e+04`."""
    counts = np.bincount(np.asarray(array).ravel())
    present = set(np.flatnonzero(counts).tolist()) - {0}
    ids = sorted(present | set(names))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return pd.DataFrame(
        {
            "index": ids,
            "organ": [display_name(names.get(i), i) for i in ids],
            "volume_ml": [f"{float(counts[i]) * voxel_ml if i < len(counts) else 0.0:.1f}" for i in ids],
        }
    )


def display_name(name: str | None, label: int) -> str:
    """`Right kidney` for any spelling of one of our organs, else the file's name or `label 7`."""
    organ = canonical_organ_name(name) if name else None
    return ORGAN_BY_NAME[organ].display_name if organ else (name or f"label {label}")


def world_matrix(state: dict[str, Any]) -> np.ndarray:
    """The 4 × 4 data-to-world matrix of a layer state (`layer.as_layer_data_tuple()[1]`)."""
    physical = Affine(
        scale=state["scale"], translate=state["translate"], rotate=state["rotate"], shear=state["shear"]
    )
    return np.asarray(state["affine"]) @ physical.affine_matrix


def layer_geometry(data: np.ndarray, state: dict[str, Any]) -> DisplayGeometry:
    """The layer's source geometry: from our metadata when the layer has it and still fits,
    else from its scale, translate and affine (for layers from elsewhere)."""
    geometry = state.get("metadata", {}).get(GEOMETRY)
    if isinstance(geometry, DisplayGeometry) and geometry.shape == tuple(np.shape(data)):
        return geometry
    return geometry_from_matrix(tuple(np.shape(data)), world_matrix(state))


def alignment_kwargs(state: dict[str, Any]) -> dict[str, Any]:
    """The transforms of a layer state, to give another layer exactly the same placement."""
    return {k: state[k] for k in ("scale", "translate", "rotate", "shear", "affine")}
