"""Panels that fit a small window: wrapped text that is never cut off, choice boxes that do
not widen the panel.

A word-wrapped QLabel asks its layout for one line's height at most; when the dock is short
(two panels stacked in a small window) the layout squeezes it to that and the second line
is cut top and bottom. Here a label's minimum height follows the height its text needs at
its current width, so the dock keeps room for it, and an empty label takes no row at all.
A combo box is as wide as its longest choice (a layer named `example_ct reference
(TotalSegmentator)`) unless told otherwise, and the panel with it takes that width from the
canvas.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Label
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QComboBox, QLabel, QSizePolicy


class _HeightForText(QObject):
    """Event filter: on every resize, the label's minimum height becomes its text's height."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Resize and isinstance(watched, QLabel):
            _fit_height(watched)
        return False


def _fit_height(label: QLabel) -> None:
    label.setMinimumHeight(label.heightForWidth(label.width()) if label.text() else 0)


class TextLines(Label):
    """Wrapped text across the panel's whole width, no caption beside it, hidden while empty."""

    def __init__(self, name: str, value: str = "", style: str = "", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.label = ""
        native = self.native
        native.setWordWrap(True)
        native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        native.installEventFilter(_HeightForText(native))
        if style:
            native.setStyleSheet(style)
        self.value = value

    @property
    def value(self) -> str:
        return Label.value.fget(self)

    @value.setter
    def value(self, text: str) -> None:
        Label.value.fset(self, text)
        self.visible = bool(text)
        _fit_height(self.native)


def narrow(*combos: ComboBox, characters: int = 12) -> None:
    """Choice boxes that show at least `characters` of their choice, not necessarily all of it;
    the whole choice is the box's tooltip."""
    for combo in combos:
        native: QComboBox = combo.native
        native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        native.setMinimumContentsLength(characters)
        native.currentTextChanged.connect(native.setToolTip)
        native.setToolTip(native.currentText())
