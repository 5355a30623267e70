"""Knowing when a user has edited Labels layers: paint strokes, fills, undo and redo.

napari sends `paint` for strokes and fills but only `set_data` for undo and redo, and
`set_data` also comes with every re-slice; the length of a layer's edit history tells an
undo from a slider move. Callbacks are debounced: one call once the edits pause.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from napari.layers import Labels
from qtpy.QtCore import QObject, QTimer

DEBOUNCE_MS = 300


class EditWatcher:
    """Calls `callback` (debounced) after edits of the watched layers."""

    def __init__(self, callback: Callable[[], None], parent: QObject, delay_ms: int = DEBOUNCE_MS) -> None:
        self._timer = QTimer(parent)  # dies with its parent widget: never fires after it is gone
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(callback)
        self._layers: list[Labels] = []
        self._history: list[tuple[int, int]] = []

    def watch(self, layers: Sequence[Labels]) -> None:
        self.unwatch()
        self._layers = list(layers)
        for layer in self._layers:
            layer.events.paint.connect(self.schedule)
            layer.events.data.connect(self.schedule)
            layer.events.set_data.connect(self._on_set_data)
        self._history = self._history_lengths()

    def unwatch(self) -> None:
        for layer in self._layers:
            layer.events.paint.disconnect(self.schedule)
            layer.events.data.disconnect(self.schedule)
            layer.events.set_data.disconnect(self._on_set_data)
        self._layers = []

    @property
    def layers(self) -> tuple[Labels, ...]:
        return tuple(self._layers)

    def close(self) -> None:
        """Stop watching for good (e.g. the watched layer was deleted)."""
        self.unwatch()
        self._timer.stop()
        self._timer.deleteLater()

    def schedule(self, _event: Any = None) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.stop()

    def _history_lengths(self) -> list[tuple[int, int]]:
        return [(len(getattr(layer, "_undo_history", ())), len(getattr(layer, "_redo_history", ())))
                for layer in self._layers]

    def _on_set_data(self, _event: Any = None) -> None:
        lengths = self._history_lengths()
        if lengths != self._history:
            self._history = lengths
            self.schedule()
