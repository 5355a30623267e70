"""EditWatcher: napari's public events tell edits (paint, fill, undo, redo, new data) from
re-slicing, with no private napari attribute and no warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_mmseg.plugin.edits import EditWatcher

pytestmark = pytest.mark.gui


def test_edits_undo_and_redo_call_back_a_slider_move_does_not(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((8, 32, 32), np.uint8))
    calls: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watcher = EditWatcher(lambda: calls.append(int((layer.data == 2).sum())), viewer.window._qt_window,
                              delay_ms=50)
        watcher.watch([layer])
        layer.brush_size = 5
        layer.paint((4, 16, 16), 2)
        qtbot.waitUntil(lambda: len(calls) == 1, timeout=2000)
        assert calls[0] > 0

        set_data = []
        layer.events.set_data.connect(lambda _e: set_data.append(1))
        viewer.dims.set_point(0, 2)
        viewer.dims.set_point(0, 6)
        qtbot.wait(300)
        assert set_data, "napari re-slices on a slider move (else this test proves nothing)"
        assert len(calls) == 1, "a slider move is not an edit"

        layer.undo()
        qtbot.waitUntil(lambda: len(calls) == 2, timeout=2000)
        assert calls[1] == 0
        layer.redo()
        qtbot.waitUntil(lambda: len(calls) == 3, timeout=2000)
        assert calls[2] == calls[0]

        layer.fill((4, 0, 0), 3)
        qtbot.waitUntil(lambda: len(calls) == 4, timeout=2000)
        layer.data = np.ones_like(layer.data)
        qtbot.waitUntil(lambda: len(calls) == 5, timeout=2000)
        watcher.close()
    assert not [w for w in caught if issubclass(w.category, FutureWarning | DeprecationWarning)
                and "napari_mmseg" in w.filename]
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
