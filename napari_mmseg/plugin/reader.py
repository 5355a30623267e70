"""Reader: NIfTI, NRRD, MHA/MHD files and DICOM series folders, as an Image layer or, for a
label map, a Labels layer named by organ.

A file is a label map when it holds few distinct whole numbers (any pixel type: some
public label files are stored as float), or when it lies in the `labels*/` folder of an
nnU-Net dataset (a `dataset.json` in its parent's parent).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.io.scan_io import (
    SCAN_SUFFIXES,
    as_labels,
    as_scan,
    check_volume,
    path_suffix,
    read_image,
    strip_suffix,
)
from napari_mmseg.plugin.conventions import guess_label_names, nnunet_dataset_json
from napari_mmseg.plugin.layers import LayerData, image_layer_data, labels_layer_data

MAX_LABELS = 128  # more distinct values than this and it is a scan


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari's reader hook: our reader for scan files and folders, None for anything else."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if all(Path(p).is_dir() or path_suffix(p) in SCAN_SUFFIXES for p in paths):
        return read_layers
    return None


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Each path as one layer; a ScanError explains what is wrong with a file."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [read_layer(Path(p)) for p in paths]


def read_layer(path: Path) -> LayerData:
    """One file or DICOM folder as an Image layer, or a Labels layer when it is a label map."""
    name = path.name if path.is_dir() else strip_suffix(path)
    image = read_image(path)
    check_volume(image)
    if is_label_file(path, image):
        labels = as_labels(image, path)
        names, convention = guess_label_names(path, int(sitk.GetArrayViewFromImage(labels).max()))
        return labels_layer_data(labels, name, names, convention)
    return image_layer_data(as_scan(image, path), name, scan=path)


def is_label_file(path: Path, image: sitk.Image) -> bool:
    """A label map by where it lies (nnU-Net `labels*/`) or by what it holds."""
    if path.is_dir():
        return False
    if nnunet_dataset_json(path) is not None:
        return True
    return looks_like_labels(sitk.GetArrayViewFromImage(image))


def looks_like_labels(values: np.ndarray) -> bool:
    """Few distinct non-negative whole numbers."""
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        return False
    low, high = values.min(), values.max()
    if low < 0 or high > np.iinfo(np.uint16).max:
        return False
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.floor(values)):
        return False
    return np.count_nonzero(np.bincount(values.astype(np.uint16).ravel())) <= MAX_LABELS
