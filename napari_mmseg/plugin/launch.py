"""`mmseg-napari`: napari with the sample CT open and the segmentation widgets docked."""

from __future__ import annotations

import napari
from napari.utils.notifications import show_warning

from napari_mmseg.errors import MmsegError

PLUGIN = "napari-mmseg"


def open_viewer(sample: str | None = "ct") -> napari.Viewer:
    """A viewer with the sample (when it can be had) and both dock widgets."""
    viewer = napari.Viewer(title="napari-mmseg")
    if sample:
        try:
            viewer.open_sample(PLUGIN, sample)
        except MmsegError as e:
            show_warning(f"{e} The viewer opens without the sample.")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Organ segmentation")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Dice per organ")
    return viewer


def main() -> None:
    open_viewer()
    napari.run()
