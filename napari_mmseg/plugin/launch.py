"""`mmseg-napari`: napari with the sample CT open and the segmentation, correction and Dice panels docked."""

from __future__ import annotations

from typing import Any

import napari
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer

from napari_mmseg.errors import MmsegError

PLUGIN = "napari-mmseg"


def fit_while_untouched(viewer: napari.Viewer) -> None:
    """Keep the whole scan in view as the canvas changes size (the panels docking, the window
    being laid out, shown or resized) until the user zooms or pans. napari fits the view when
    the first layer arrives, before the panels take their room from the canvas: without a
    refit the scan opens zoomed in, its flanks cut off."""
    camera = viewer.scene.camera
    fitted: list[tuple[float, ...]] = []

    def state() -> tuple[float, ...]:
        return (camera.zoom, *camera.center[-2:])

    def fit() -> None:
        viewer.reset_view()
        fitted[:] = [state()]

    def on_canvas_size(_event: Any = None) -> None:
        if fitted == [state()]:
            fit()
        else:  # the user has moved the view: it is theirs from now on
            viewer.canvas.events.size.disconnect(on_canvas_size)

    viewer.canvas.events.size.connect(on_canvas_size)  # a function, not a method: held strongly
    fit()


def open_viewer(sample: str | None = "ct") -> napari.Viewer:
    """A viewer with the sample (when it can be had) and the dock widgets (correction in a tab
    behind segmentation), the scan fitted to the canvas that the panels leave."""
    viewer = napari.Viewer(title="napari-mmseg")
    if sample:
        try:
            viewer.open_sample(PLUGIN, sample)
        except MmsegError as e:
            show_warning(f"{e} The viewer opens without the sample.")
    segmentation, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Organ segmentation")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Assisted correction", tabify=True)
    QTimer.singleShot(0, segmentation.raise_)  # correction a tab behind it, once the window is laid out
    viewer.window.add_plugin_dock_widget(PLUGIN, "Dice per organ")
    fit_while_untouched(viewer)
    return viewer


def main() -> None:
    open_viewer()
    napari.run()
