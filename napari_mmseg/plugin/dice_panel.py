"""The "Dice per organ" dock widget: a prediction against a reference, live while painting.

Both layers are mapped to our organ ids by name (the layer's own label names, a public
convention, or a mapping the user types), so a BTCV or CHAOS reference compares with our
output. The table follows paint strokes, debounced: one recomputation after the edits pause.
The prediction follows the newest result of the segmentation widget until the user picks one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, LineEdit, PushButton, Table
from napari.layers import Labels
from qtpy.QtWidgets import QAbstractItemView, QFileDialog, QHeaderView, QStyledItemDelegate

from napari_mmseg.errors import OutputError
from napari_mmseg.io.safe_write import write_csv_atomic
from napari_mmseg.metrics import OrganScore, dice_scores, mean_dice
from napari_mmseg.organs import ORGAN_BY_NAME
from napari_mmseg.plugin.conventions import CONVENTIONS, OURS, parse_mapping, to_our_ids
from napari_mmseg.plugin.edits import EditWatcher, OffThread
from napari_mmseg.plugin.layers import CONVENTION, LABEL_NAMES, MODEL
from napari_mmseg.plugin.panel_layout import TextLines, narrow

if TYPE_CHECKING:
    import napari

AUTO = "auto"
_REFERENCE_NAME = re.compile(r"(?<![a-z0-9])(ref|reference|ground[ _-]?truth|gt|manual)(?![a-z0-9])", re.IGNORECASE)
CUSTOM = "custom"
_COLUMNS = ("Dice", "pred. ml", "ref. ml")  # volumes of the prediction and the reference


class DicePanel(Container):
    """Dice and volumes per organ between two Labels layers, updated as they are edited."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.scores: list[OrganScore] = []
        self._choosing = False  # the panel, not the user, is setting the layer choices
        self.prediction_picked = False  # the user chose the prediction: stop following new results

        self._prediction = ComboBox(name="prediction", label="Prediction", choices=self._labels_choices, nullable=True)
        self._reference = ComboBox(name="reference", label="Reference", choices=self._labels_choices, nullable=True)
        self._convention = ComboBox(
            name="convention",
            label="Reference ids",
            choices=[("names stored with the layer", AUTO), *((c, c) for c in CONVENTIONS), ("custom", CUSTOM)],
        )
        self._mapping = LineEdit(
            name="mapping", label="Mapping", value="liver=6, spleen=1, kidney_right=2, kidney_left=3"
        )
        self._table = Table(name="table", value={"data": [], "columns": list(_COLUMNS)})
        self._table.native.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self._table.native.setItemDelegate(QStyledItemDelegate(self._table.native))  # our number format
        self._table.native.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self._table.native.setMinimumHeight(150)
        self._message = TextLines(name="message")
        self._table.label = ""  # no caption beside it
        self._export = PushButton(name="export", text="Export CSV…")
        narrow(self._prediction, self._reference, characters=20)
        narrow(self._convention, characters=16)
        self.extend([
            self._prediction, self._reference, self._convention, self._mapping, self._table, self._message,
            self._export,
        ])

        self._refresh = OffThread(self._job, _scores, self._show_result)  # edits: the GUI never waits for Dice
        self._edits = EditWatcher(self._refresh.request, self.native)

        self._mapping.visible = False
        for widget in (self._prediction, self._reference):
            widget.changed.connect(self._watch_layers)
        self._prediction.changed.connect(self._on_prediction_picked)
        self._convention.changed.connect(self._on_convention)
        self._mapping.changed.connect(self.schedule_update)
        self._export.changed.connect(self._ask_export)
        napari_viewer.layers.events.inserted.connect(self._on_inserted)
        napari_viewer.layers.events.removed.connect(self._refresh_layers)
        self.native.destroyed.connect(self._on_closed)
        with self._panel_choosing():
            self._pick_defaults()
        self._watch_layers()

    def _on_closed(self, _object: Any = None) -> None:
        """The panel is gone (napari closing): stop listening to the viewer and its layers."""
        self._refresh.close()
        self._viewer.layers.events.inserted.disconnect(self._on_inserted)
        self._viewer.layers.events.removed.disconnect(self._refresh_layers)
        self._unwatch()

    @property
    def message(self) -> str:
        return self._message.value

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    @contextmanager
    def _panel_choosing(self) -> Iterator[None]:
        self._choosing = True
        try:
            yield
        finally:
            self._choosing = False

    def _on_prediction_picked(self, _value: Any = None) -> None:
        if not self._choosing:
            self.prediction_picked = True

    def _refresh_layers(self, _event: Any = None) -> None:
        with self._panel_choosing():
            for widget in (self._prediction, self._reference):
                widget.reset_choices()
            self._pick_defaults()

    def _on_inserted(self, event: Any) -> None:
        """A new segmentation result becomes the prediction, unless the user chose one."""
        self._refresh_layers()
        layer = event.value
        if isinstance(layer, Labels) and MODEL in layer.metadata and not self.prediction_picked:
            with self._panel_choosing():
                self._prediction.value = layer

    def _pick_defaults(self) -> None:
        """Fill the choices the user has not made, never with one layer twice: the reference a
        layer named like one (or whose names come from another dataset's ids), the prediction
        the newest segmentation result, else the newest other layer; one box stays empty when
        there is no second layer."""
        layers = [layer for _, layer in self._labels_choices()]
        prediction = _one_of(self._prediction.value, layers)
        reference = _one_of(self._reference.value, layers)
        if reference is None or reference is prediction:
            reference = _default_reference(layers, prediction if self.prediction_picked else None)
        if prediction is None or prediction is reference:
            prediction = _default_prediction(layers, reference)
        self._reference.value, self._prediction.value = reference, prediction

    def _on_convention(self, _value: Any = None) -> None:
        self._mapping.visible = self._convention.value == CUSTOM
        self.schedule_update()

    def _watch_layers(self, _value: Any = None) -> None:
        """Follow the edits of the two chosen layers only."""
        self._edits.watch([w.value for w in (self._prediction, self._reference) if w.value is not None])
        self.schedule_update()

    def _unwatch(self) -> None:
        self._edits.unwatch()

    def schedule_update(self, _event: Any = None) -> None:
        self._edits.schedule()

    def _reference_names(self, layer: Labels) -> dict[int, str]:
        choice = self._convention.value
        if choice == CUSTOM:
            return parse_mapping(self._mapping.value)
        if choice == AUTO:
            names = layer.metadata.get(LABEL_NAMES)
            if not names:
                raise ValueError(f"{layer.name} has no stored label names: choose its label convention.")
            return names
        return CONVENTIONS[choice]

    def update_scores(self) -> None:
        """Recompute the table now, on this thread; problems go to the panel's message line."""
        self._edits.cancel()
        self._show_result(_scores(*self._job()))

    def _job(self) -> tuple[Any, ...]:
        """What a Dice computation needs, gathered on the GUI thread: the layers' arrays (by
        reference), their names, the voxel size; or why there is nothing to compute."""
        prediction, reference = self._prediction.value, self._reference.value
        try:
            if prediction is None or reference is None or prediction is reference:
                raise ValueError("Choose a prediction and a reference: two different Labels layers.")
            if prediction.data.shape != reference.data.shape:
                raise ValueError(
                    f"{prediction.name} {tuple(prediction.data.shape)} and {reference.name} "
                    f"{tuple(reference.data.shape)} differ in shape: Dice needs both on the same grid."
                )
            reference_names = self._reference_names(reference)
        except ValueError as e:
            return (str(e),)
        prediction_names = prediction.metadata.get(LABEL_NAMES) or CONVENTIONS[OURS]
        return "", prediction.data, prediction_names, reference.data, reference_names, tuple(prediction.scale)

    def _show_result(self, result: tuple[list[OrganScore], str]) -> None:
        self.scores, message = result
        self._show(self.scores, message)

    def _show(self, scores: list[OrganScore], message: str) -> None:
        self._table.value = {
            "data": [[_fmt(s.dice, 3), _fmt(s.predicted_ml, 1), _fmt(s.reference_ml, 1)] for s in scores],
            "index": [ORGAN_BY_NAME[s.organ].display_name for s in scores],
            "columns": list(_COLUMNS),
        }
        self._message.value = message
        self._export.enabled = bool(scores)

    def _ask_export(self, _value: Any = None) -> None:
        path, _ = QFileDialog.getSaveFileName(self.native, "Export Dice table", "dice.csv", "CSV (*.csv)")
        if path:
            self.export_csv(Path(path))

    def export_csv(self, path: Path) -> None:
        """The table as CSV, with the two layers' names, for a report or a spreadsheet."""
        rows = [
            [self._prediction.value.name, self._reference.value.name, s.organ,
             f"{s.dice:.4f}", f"{s.predicted_ml:.2f}", f"{s.reference_ml:.2f}"]
            for s in self.scores
        ]
        header = ["prediction", "reference", "organ", "dice", "predicted_ml", "reference_ml"]
        try:  # the save dialog has already asked whether to replace an existing file
            write_csv_atomic(path, header, rows, overwrite=True)
        except OutputError as e:
            self._message.value = str(e)
            return
        self._message.value = f"Saved {path}."


def _scores(problem: str, *arrays_and_names: Any) -> tuple[list[OrganScore], str]:
    """Dice and volumes per organ, and the line under the table (a worker thread's work)."""
    if problem:
        return [], problem
    prediction, prediction_names, reference, reference_names, spacing = arrays_and_names
    scores = dice_scores(to_our_ids(np.asarray(prediction), prediction_names),
                         to_our_ids(np.asarray(reference), reference_names), spacing)
    mean = mean_dice(scores)
    return scores, f"Mean Dice {mean:.3f} over the organs present." if not np.isnan(mean) else ""


def _one_of(layer: Labels | None, layers: list[Labels]) -> Labels | None:
    """`layer` if it is still among `layers`, else None."""
    return layer if any(layer is other for other in layers) else None


def looks_like_reference(layer: Labels) -> bool:
    """Named like a reference (`… reference`, `ground truth`, `gt`, `manual`), or labelled in
    another dataset's ids (read from its dataset.json or a known dataset)."""
    return bool(_REFERENCE_NAME.search(layer.name)) or layer.metadata.get(CONVENTION) not in (None, OURS)


def _default_reference(layers: list[Labels], prediction: Labels | None) -> Labels | None:
    """A layer that looks like a reference; else, of two or more, the oldest that is not a result."""
    candidates = [layer for layer in layers if layer is not prediction and MODEL not in layer.metadata]
    named = [layer for layer in candidates if looks_like_reference(layer)]
    if named:
        return named[0]
    return candidates[0] if candidates and len(layers) > 1 else None


def _default_prediction(layers: list[Labels], reference: Labels | None) -> Labels | None:
    """The newest segmentation result; else the newest layer that is not the reference."""
    others = [layer for layer in reversed(layers) if layer is not reference]
    results = [layer for layer in others if MODEL in layer.metadata]
    return (results or others or [None])[0]


def _fmt(value: float, digits: int) -> str:
    return "–" if np.isnan(value) else f"{value:.{digits}f}"
