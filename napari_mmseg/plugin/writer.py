"""Writer: a Labels layer to NIfTI/NRRD/MHA on exactly its source scan's grid.

The labels go back through the inverse of the display reorientation, are written to a
temporary file, checked and renamed (`scan_io.write_labels`), and never replace the scan itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_mmseg.errors import ScanError
from napari_mmseg.io.display_geometry import labels_to_source
from napari_mmseg.io.scan_io import write_labels
from napari_mmseg.plugin.layers import SCAN, layer_geometry


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari's single-layer writer hook; returns the path written."""
    values = np.asarray(data)
    if values.ndim != 3:
        raise ScanError(f"The labels layer is {values.ndim}-D: only 3-D label volumes can be saved as a scan.")
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint8).max):
        raise ScanError(
            f"The labels hold ids {values.min()}–{values.max()}: label files are saved as 8-bit, ids 0–255."
        )
    geometry = layer_geometry(values, meta)
    labels = labels_to_source(values.astype(np.uint8, copy=False), geometry)
    scan = meta.get("metadata", {}).get(SCAN)
    # napari's save dialog has already asked whether to replace an existing file
    written = write_labels(labels, path, reference=labels, source=scan, overwrite=True)
    return [str(Path(written))]
