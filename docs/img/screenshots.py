"""Regenerate the user guide's screenshots from the real napari window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/img/screenshots.py

Uses the CT sample (downloaded once into the sample cache, or MMSEG_DATA_CACHE). The
annotator picture compares a corrected copy of the sample's reference labels with the
original, so it needs no trained weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from napari.qt import get_qapp
from PIL import Image

from napari_mmseg.organs import ORGAN_BY_NAME
from napari_mmseg.plugin.conventions import CONVENTIONS, OURS, to_our_ids
from napari_mmseg.plugin.launch import open_viewer
from napari_mmseg.plugin.layers import GEOMETRY, labels_kwargs

HERE = Path(__file__).parent
KIDNEY_SLICE = 12


def settle(seconds: float = 1.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        get_qapp().processEvents()
        time.sleep(0.02)


def save(viewer, name: str) -> None:
    """A 128-colour PNG of the whole window: the dark UI compresses to well under 200 KB."""
    settle()
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(pixels[..., :3]).quantize(colors=128).save(HERE / name, optimize=True)


def main() -> None:
    viewer = open_viewer("ct")
    viewer.window._qt_window.resize(1360, 780)
    image = viewer.layers["example_ct"]
    viewer.dims.set_point(0, image.data_to_world((KIDNEY_SLICE, 0, 0))[0])
    settle()
    viewer.reset_view()
    save(viewer, "ct-review.png")

    reference = viewer.layers["example_ct reference (TotalSegmentator)"]
    corrected = to_our_ids(reference.data, CONVENTIONS["TotalSegmentator"])
    liver = corrected[KIDNEY_SLICE] == ORGAN_BY_NAME["liver"].label
    corrected[KIDNEY_SLICE][liver & (np.arange(corrected.shape[1]) < 45)[:, None]] = 0  # the anterior part erased
    kwargs = labels_kwargs(corrected, reference.metadata[GEOMETRY], "corrected", CONVENTIONS[OURS], OURS, None)
    layer = viewer.add_labels(corrected, **kwargs)
    layer.mode = "paint"
    layer.selected_label = ORGAN_BY_NAME["liver"].label
    reference.visible = False
    save(viewer, "annotator-dice.png")
    viewer.close()


if __name__ == "__main__":
    main()
