"""The "Assisted correction" dock widget: fix a Labels layer with clicks and scribbles.

Correct mode works on any Labels layer on the scan's grid (a result, a label file, another
tool's output; its ids are mapped to ours by name and back). With the layer selected, a click
on the scan is a hint "this is the organ", a Shift-click "this is not the organ", a drag a
scribble; keys 0–4 pick the organ (0 background), taking over the Labels layer's own mode
keys 1–4 while correcting. Each hint, with the ones before it, goes to the learned correction
(`correction.refine`), which recomputes the labels in a box around it, in a worker thread:
the GUI thread only turns a click into voxels and writes the changed voxels back as one
`Labels.data_setitem` call, so every interaction is one step of napari's own undo (Ctrl-Z,
Ctrl-Shift-Z). The hints are a Points layer of their own. The non-learned aids (fill an organ
between slices, remove or relabel a clicked piece) take the same path.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton
from napari.layers import Image, Labels, Points
from napari.qt.threading import create_worker

from napari_mmseg.correction import aids
from napari_mmseg.correction.hints import CORRECTION_LABELS, Hint
from napari_mmseg.errors import MmsegError
from napari_mmseg.io.datasets import label_map_from_names, to_their_ids
from napari_mmseg.io.display_geometry import DisplayGeometry, image_from_layer
from napari_mmseg.organs import MODALITIES, ORGAN_BY_NAME
from napari_mmseg.plugin.conventions import CONVENTIONS, OURS, to_our_ids
from napari_mmseg.plugin.dice_panel import looks_like_reference
from napari_mmseg.plugin.layers import LABEL_NAMES, MODEL, SCAN, alignment_kwargs, layer_geometry
from napari_mmseg.plugin.panel_layout import TextLines, narrow
from napari_mmseg.plugin.review import WARNING_STYLE

if TYPE_CHECKING:
    import napari
    import SimpleITK as sitk

    from napari_mmseg.correction.model import CorrectionModel

NEGATIVE_MODIFIER = "Shift"  # Shift-click: "this is not the organ" (napari binds no Shift-click in pan/zoom)
HINT, REMOVE, RELABEL, FILL = "hint", "remove", "relabel", "fill"
CLICK_ACTIONS = (
    ("adds a hint (Shift: not the organ)", HINT),
    ("removes the clicked piece", REMOVE),
    ("relabels the clicked piece as the organ", RELABEL),
)
ORGAN_CHOICES = [("Background" if name == "background" else ORGAN_BY_NAME[name].display_name, label)
                 for label, name in enumerate(CORRECTION_LABELS)]
HINT_SYMBOLS = {True: "cross", False: "hbar"}  # + and −
HINT_SIZE_MM = 8.0
MAX_SCRIBBLE_POINTS = 64
_BACKGROUND_RGB = (0.75, 0.75, 0.75)


class CorrectionRefused(MmsegError):
    """Correction cannot work on this layer (another grid, ids without organ names)."""


@dataclass(frozen=True)
class Interaction:
    """One user action, as the worker thread needs it (no napari object in it)."""

    kind: str  # HINT, REMOVE, RELABEL or FILL
    label: int  # the organ chosen (0 background)
    hints: tuple[Hint, ...] = ()  # HINT: every hint so far, the new one last
    voxel: tuple[int, int, int] | None = None  # REMOVE / RELABEL: the clicked voxel

    def describe(self) -> str:
        organ = ORGAN_CHOICES[self.label][0]
        if self.kind == HINT:
            hint = self.hints[-1]
            what = "click" if len(hint.points) == 1 else "scribble"
            return f"{organ} {hint.sign} {what}"
        return {REMOVE: "remove piece", RELABEL: f"relabel piece as {organ}", FILL: f"fill {organ} between slices"}[
            self.kind]


@dataclass(frozen=True)
class Edit:
    """The voxels an interaction changes and their new values, in the layer's own ids."""

    indices: tuple[np.ndarray, ...]
    values: np.ndarray
    seconds: float
    note: str = ""

    @property
    def voxels(self) -> int:
        return int(self.values.size)


def changed_voxels(before: np.ndarray, after: np.ndarray, region: tuple[slice, ...] | None = None) -> tuple[
        tuple[np.ndarray, ...], np.ndarray]:
    """Indices (into the whole array) and new values of the voxels that differ, looking only
    inside `region` when given (nothing outside it changed)."""
    box = region if region is not None else tuple(slice(0, n) for n in before.shape)
    where = np.nonzero(after[box] != before[box])
    indices = tuple(w + (s.start or 0) for w, s in zip(where, box, strict=True))
    return indices, after[box][where]


class Corrector:
    """The worker thread's side: the scan as a SimpleITK image and the correction model, each
    made once and kept (the model is loaded on the first hint, never on the GUI thread)."""

    def __init__(self, model_path: str | None = None) -> None:
        self._model_path = model_path
        self._model: CorrectionModel | None = None
        self._model_note = ""
        self._lock = threading.Lock()
        self._scan_of: tuple[weakref.ref, DisplayGeometry] | None = None  # the array and geometry it was made of
        self._scan: sitk.Image | None = None

    def model(self) -> CorrectionModel | None:
        """The correction network, or None (and a note saying why) when it cannot be loaded."""
        with self._lock:
            if self._model is None and not self._model_note:
                from napari_mmseg.correction.model import load_correction_model

                try:
                    self._model = load_correction_model(self._model_path, device="auto")
                except MmsegError as e:
                    self._model_note = f"no correction model ({e}): a click paints a ball of 5 mm radius"
            return self._model

    def scan(self, data: np.ndarray, geometry: DisplayGeometry) -> sitk.Image:
        """The image layer's array as a SimpleITK image, made again only for another array."""
        if self._scan_of is None or self._scan_of[0]() is not data or self._scan_of[1] != geometry:
            self._scan, self._scan_of = image_from_layer(np.asarray(data), geometry), (weakref.ref(data), geometry)
        return self._scan

    def run(self, interaction: Interaction, labels: np.ndarray, names: dict[int, str], image: np.ndarray,
            geometry: DisplayGeometry, modality: str) -> Edit:
        """New labels for one interaction, as the changed voxels in the layer's ids."""
        start = time.perf_counter()
        before = np.asarray(labels)
        if names != CONVENTIONS[OURS] or before.max(initial=0) >= len(CORRECTION_LABELS):  # else: no pass over it
            before = to_our_ids(before, names)
        before = before.astype(np.uint8, copy=False)
        region = None
        note = ""
        if interaction.kind == HINT:
            from napari_mmseg.correction.refine import brush, refine

            scan = self.scan(image, geometry)
            model = self.model()
            if model is None:
                result = brush(scan, before, interaction.hints[-1])
                note = self._model_note
            else:
                result = refine(scan, before, interaction.hints, modality, model)
            after, region = result.labels, result.region
        elif interaction.kind == FILL:
            after = aids.fill_between_slices(before, interaction.label)
        else:
            new_label = 0 if interaction.kind == REMOVE else interaction.label
            after = aids.relabel_piece(before, interaction.voxel, new_label)
        indices, ours = changed_voxels(before, after, region)
        return Edit(indices, to_layer_ids(ours, names, labels.dtype), time.perf_counter() - start, note)


def to_layer_ids(ours: np.ndarray, names: dict[int, str], dtype: np.dtype) -> np.ndarray:
    """Our label values back in the layer's own ids (the inverse of `to_our_ids` on the
    four organs and background); an organ the layer has no id for is refused."""
    values, missing = to_their_ids(ours, label_map_from_names({name: label for label, name in names.items()}))
    if missing:
        shown = ", ".join(ORGAN_BY_NAME[name].display_name for name in missing)
        raise CorrectionRefused(f"These labels have no id for {shown}: correct that organ in labels that have one.")
    return values.astype(dtype)


def label_names(layer: Labels) -> dict[int, str]:
    """What the layer's ids mean: its stored names, else ours when it holds only 0–4."""
    names = layer.metadata.get(LABEL_NAMES)
    if names:
        return dict(names)
    if int(np.max(layer.data, initial=0)) < len(CORRECTION_LABELS):
        return dict(CONVENTIONS[OURS])
    raise CorrectionRefused(
        f"{layer.name} holds ids above {len(CORRECTION_LABELS) - 1} and no organ names: correction works on "
        "labels whose ids it knows (1 liver, 2 spleen, 3 right kidney, 4 left kidney, or a dataset's names)."
    )


class CorrectionPanel(Container):
    """Correct mode: hints, scribbles and aids on a Labels layer, each one undo step."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, model_path: str | None = None) -> None:
        # torch and MONAI's networks, when the panel opens (not when napari starts): imported by
        # the worker thread at the first click they would hold the GIL and freeze the GUI.
        import napari_mmseg.correction.refine  # noqa: F401

        super().__init__()
        self._viewer = napari_viewer
        self._corrector = Corrector(model_path)
        self._worker = None
        self._pending: list[tuple[Labels, Interaction]] = []
        self._attached: Labels | None = None  # the layer whose mouse and keys correct mode holds
        self._hints: list[Hint] = []
        self._points: Points | None = None
        self._started = 0.0
        self.seconds: list[float] = []  # click to labels on screen, per interaction
        self._target_picked = False

        self._target = ComboBox(name="labels", label="Labels", choices=self._labels_choices, nullable=True)
        self._image = ComboBox(name="scan", label="Scan", choices=self._image_choices, nullable=True)
        self._modality = ComboBox(name="modality", label="Modality", choices=MODALITIES)
        self._organ = ComboBox(name="organ", label="Organ", choices=ORGAN_CHOICES, value=ORGAN_BY_NAME["spleen"].label,
                               tooltip="Keys 0–4 while correcting: 0 background, 1 liver, 2 spleen, "
                                       "3 right kidney, 4 left kidney")
        self._click = ComboBox(name="click", label="A click", choices=CLICK_ACTIONS)
        self._active = CheckBox(name="correct", text="Correct: click or drag on the scan", value=False)
        self._fill = PushButton(name="fill", text="Fill between slices",
                                tooltip="The organ interpolated across slices without it, between slices with it")
        self._clear = PushButton(name="clear_hints", text="Clear hints")
        self._status = TextLines(name="status", value=(
            "Click: the organ is here; Shift-click: it is not; drag: a scribble. Keys 0–4: the organ."))
        self._refusal = TextLines(name="refusal", style=WARNING_STYLE)
        narrow(self._target, self._image, self._modality, self._organ, self._click)
        buttons = Container(name="aids", widgets=[self._fill, self._clear], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        buttons.label = ""
        self.extend([self._target, self._image, self._modality, self._organ, self._click, self._active, buttons,
                     self._status, self._refusal])

        self._target.changed.connect(self._on_target_picked)
        self._image.changed.connect(self._check)
        self._active.changed.connect(self._on_active)
        self._fill.changed.connect(lambda _v: self._interact(Interaction(FILL, self._organ.value)))
        self._clear.changed.connect(lambda _v: self.clear_hints())
        napari_viewer.layers.events.inserted.connect(self._on_inserted)
        napari_viewer.layers.events.removed.connect(self._on_removed)
        self.native.destroyed.connect(self._on_closed)
        self._pick_defaults()

    # ---- what is shown ----------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status.value

    @property
    def refusal(self) -> str:
        return self._refusal.value

    @property
    def busy(self) -> bool:
        return self._worker is not None or bool(self._pending)

    @property
    def hints(self) -> tuple[Hint, ...]:
        return tuple(self._hints)

    @property
    def hints_layer(self) -> Points | None:
        return self._points

    def _labels_choices(self, _widget: Any = None) -> list[tuple[str, Labels]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image) and layer.ndim == 3]

    def _pick_defaults(self) -> None:
        """The labels: the newest result, else the newest layer not named like a reference (a
        reference is corrected only on purpose), until the user picks; the scan: the image on
        that grid, the one the labels were made on first."""
        labels = [layer for _, layer in self._labels_choices()]
        target = self._target.value
        if not self._target_picked or not any(target is layer for layer in labels):
            self._set_quietly(self._target, _default_target(labels))
        self._image.value = self._scan_for(self._target.value)
        self._check()

    def _scan_for(self, target: Labels | None) -> Image | None:
        images = [layer for _, layer in self._image_choices()]
        if target is None:
            return self._image.value
        same_grid = [layer for layer in images if layer.data.shape == target.data.shape]
        made_on = [layer for layer in same_grid if layer.metadata.get(SCAN) and
                   layer.metadata.get(SCAN) == target.metadata.get(SCAN)]
        return (made_on or same_grid or images or [None])[0]

    def _set_quietly(self, combo: ComboBox, value: Any) -> None:
        with combo.changed.blocked():
            combo.reset_choices()
            combo.value = value

    def _on_target_picked(self, _value: Any = None) -> None:
        self._target_picked = True
        self._image.value = self._scan_for(self._target.value)
        if self._points is not None and self._target.value is not None:  # the hints were about other labels
            self.clear_hints()
            self._points.name = f"{self._target.value.name} hints"
        self._check()

    def _on_inserted(self, _event: Any) -> None:
        for combo in (self._target, self._image):
            self._set_quietly(combo, combo.value)
        self._pick_defaults()

    def _on_removed(self, event: Any) -> None:
        if event.value is self._attached:  # correct mode never moves to another layer by itself
            self._set_active(False)
        if event.value is self._points:
            self._points = None
            self._hints.clear()
        for combo in (self._target, self._image):
            self._set_quietly(combo, combo.value if combo.value is not event.value else None)
        self._pick_defaults()

    # ---- checks: what correct mode may work on ---------------------------------------------

    def _check(self, _value: Any = None) -> bool:
        """Correct mode follows the chosen layers: refused, with the reason shown, when the
        labels are not on the scan's grid or their ids cannot be read."""
        try:
            self._checked_pair()
        except CorrectionRefused as e:
            self._refusal.value = str(e)
            self._set_active(False)
            return False
        self._refusal.value = ""
        target = self._target.value
        modality = (target.metadata.get(MODEL) or {}).get("modality") if target is not None else None
        if modality in MODALITIES:
            self._modality.value = modality
        elif self._image.value is not None:
            from napari_mmseg.preprocessing import guess_modality

            self._modality.value = guess_modality(np.asarray(self._image.value.data))
        if self._active.value:
            self._attach(target)
        return True

    def _checked_pair(self) -> tuple[Labels, Image]:
        target, image = self._target.value, self._image.value
        if target is None:
            raise CorrectionRefused("Choose the Labels layer to correct (a result, or labels opened from a file).")
        if image is None:
            raise CorrectionRefused("Open the scan these labels belong to: correction reads its grey values.")
        if target.data.shape != image.data.shape:
            raise CorrectionRefused(
                f"{target.name} {tuple(target.data.shape)} is not on the grid of the scan {image.name} "
                f"{tuple(image.data.shape)}: correct labels made on this scan, or choose its scan."
            )
        if not np.allclose(target.scale, image.scale) or not np.allclose(target.translate, image.translate):
            raise CorrectionRefused(
                f"{target.name} is placed differently from {image.name} (scale or origin): it belongs to another "
                "scan of the same size."
            )
        label_names(target)
        return target, image

    # ---- correct mode: the mouse and the keys on the chosen layer ----------------------------

    def _on_active(self, value: bool) -> None:
        if value and self._check():
            self._attach(self._target.value)
            self._hints_layer(self._target.value)
            self._viewer.layers.selection.active = self._target.value
        else:
            self._set_active(False)

    def _set_active(self, value: bool) -> None:
        if not value:
            self._detach()
        if self._active.value != value:
            with self._active.changed.blocked():
                self._active.value = value

    def _attach(self, layer: Labels) -> None:
        if self._attached is layer:
            return
        self._detach()
        self._attached = layer
        layer.mouse_drag_callbacks.append(self._on_mouse)
        layer.events.mode.connect(self._on_mode)
        layer.mode = "pan_zoom"
        self._on_mode()
        for label in range(len(CORRECTION_LABELS)):
            layer.bind_key(str(label), self._organ_key(label), overwrite=True)

    def _detach(self) -> None:
        layer, self._attached = self._attached, None
        if layer is None:
            return
        if self._on_mouse in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_mouse)
        layer.events.mode.disconnect(self._on_mode)
        for label in range(len(CORRECTION_LABELS)):
            layer.bind_key(str(label), None)
        layer.mouse_pan = layer.mode == "pan_zoom"

    def _on_mode(self, _event: Any = None) -> None:
        """In pan/zoom mode a drag is a scribble, not a pan (the wheel still zooms); in
        napari's painting modes correct mode waits."""
        layer = self._attached
        if layer is not None and layer.mode == "pan_zoom":
            layer.mouse_pan = False

    def _organ_key(self, label: int) -> Callable[[Labels], None]:
        def pick(_layer: Labels) -> None:
            self._organ.value = label

        pick.__doc__ = f"Correct {ORGAN_CHOICES[label][0]}"
        return pick

    def _on_mouse(self, layer: Labels, event: Any) -> Generator[None, None, None]:
        """A press starts a hint; each move while the button is down adds a scribble point."""
        if layer is not self._attached or layer.mode != "pan_zoom" or event.button != 1:
            return
        positive = NEGATIVE_MODIFIER not in event.modifiers
        points = [self._voxel(layer, event.position)]
        yield
        while event.type == "mouse_move":
            points.append(self._voxel(layer, event.position))
            yield
        self.click(layer, [p for p in points if p is not None], positive)

    def _voxel(self, layer: Labels, position: Any) -> tuple[int, int, int] | None:
        index = np.rint(np.asarray(layer.world_to_data(position), float)).astype(int)
        inside = index.size == 3 and ((index >= 0) & (index < np.asarray(layer.data.shape))).all()
        return tuple(int(i) for i in index) if inside else None

    def click(self, layer: Labels, points: list[tuple[int, int, int]], positive: bool = True) -> None:
        """What a click (one point) or a drag (several) does in correct mode."""
        if not points:
            self._status.value = "That was outside the scan: click on it."
            return
        unique = list(dict.fromkeys(points))
        if len(unique) > MAX_SCRIBBLE_POINTS:
            unique = [unique[i] for i in np.linspace(0, len(unique) - 1, MAX_SCRIBBLE_POINTS).astype(int)]
        action, label = self._click.value, self._organ.value
        if action == HINT:
            self._hints.append(Hint(label=label, positive=positive, points=tuple(unique)))
            self._show_hint(layer, self._hints[-1])
            self._interact(Interaction(HINT, label, hints=tuple(self._hints)))
        else:
            self._interact(Interaction(action, label, voxel=unique[0]))

    # ---- the work: off the GUI thread, one undo step each ----------------------------------

    def _interact(self, interaction: Interaction) -> None:
        try:
            target, _ = self._checked_pair()
        except CorrectionRefused as e:
            self._refusal.value = str(e)
            return
        if interaction.kind == FILL and interaction.label == 0:
            self._status.value = "Choose an organ to fill between slices (not background)."
            return
        self._pending.append((target, interaction))
        if self._worker is None:
            self._start_next()
        else:
            self._status.value = f"Queued: {interaction.describe()} (the previous one is still running)."

    def _start_next(self) -> None:
        if not self._pending:
            return
        layer, interaction = self._pending.pop(0)
        image = self._image.value
        data, state, _ = image.as_layer_data_tuple()
        geometry = layer_geometry(data, state)
        self._started = time.perf_counter()
        self._status.value = f"Working: {interaction.describe()}…"
        self._worker = create_worker(
            self._corrector.run, interaction, layer.data, label_names(layer), data, geometry, self._modality.value,
            _connect={
                "returned": lambda edit: self._apply(layer, interaction, edit),
                "errored": self._on_errored,
                "finished": self._on_finished,
            },
        )

    def _apply(self, layer: Labels, interaction: Interaction, edit: Edit) -> None:
        """One `data_setitem` call: one undo step, one paint event (the Dice panel and the
        volumes follow it)."""
        if not any(layer is other for other in self._viewer.layers):
            return
        if edit.voxels:
            layer.data_setitem(edit.indices, edit.values)
        seconds = time.perf_counter() - self._started
        self.seconds.append(seconds)
        changed = f"{edit.voxels} voxels changed" if edit.voxels else "nothing changed"
        note = f" Note: {edit.note}." if edit.note else ""
        self._status.value = f"{interaction.describe()}: {changed} in {seconds:.2f} s (Ctrl-Z undoes it).{note}"

    def _on_errored(self, error: Exception) -> None:
        self._status.value = f"Failed: {error}"

    def _on_finished(self) -> None:
        self._worker = None
        self._start_next()

    # ---- the hints layer -------------------------------------------------------------------

    def _hints_layer(self, layer: Labels) -> Points:
        """The Points layer the hints are drawn in, made when correct mode starts (making a
        layer takes napari a few hundred milliseconds: not at a click)."""
        if self._points is None:
            _, state, _ = layer.as_layer_data_tuple()
            spacing = float(np.min(np.abs(layer.scale[-2:])))
            self._points = self._viewer.add_points(
                np.zeros((0, 3)), name=f"{layer.name} hints", border_color="white", border_width=0.1,
                size=max(2.0, HINT_SIZE_MM / spacing), features={"organ": np.array([], str), "sign": np.array([], str)},
                **alignment_kwargs(state))
            self._viewer.layers.selection.active = layer  # the labels stay the layer the mouse works on
        return self._points

    def _show_hint(self, layer: Labels, hint: Hint) -> None:
        """The hint's points in its organ's colour, + or − by its sign (only the new points are
        added: resetting the whole layer costs a redraw of every point)."""
        points = self._hints_layer(layer)
        points.current_face_color = _organ_rgba(hint.label)
        points.current_symbol = HINT_SYMBOLS[hint.positive]
        points.feature_defaults = {"organ": ORGAN_CHOICES[hint.label][0], "sign": hint.sign}
        points.add(np.asarray(hint.points, float))
        points.selected_data = set()

    def clear_hints(self) -> None:
        self._hints.clear()
        if self._points is not None:
            self._points.data = np.zeros((0, 3))
        self._status.value = "Hints cleared: the next click starts afresh."

    def _on_closed(self, _object: Any = None) -> None:
        self._detach()
        self._pending.clear()
        self._viewer.layers.events.inserted.disconnect(self._on_inserted)
        self._viewer.layers.events.removed.disconnect(self._on_removed)


def _default_target(layers: list[Labels]) -> Labels | None:
    results = [layer for layer in reversed(layers) if MODEL in layer.metadata]
    others = [layer for layer in reversed(layers) if not looks_like_reference(layer)]
    return (results or others or [None])[0]


def _organ_rgba(label: int) -> tuple[float, float, float, float]:
    if label == 0:
        return (*_BACKGROUND_RGB, 1.0)
    organ = ORGAN_BY_NAME[CORRECTION_LABELS[label]]
    return (*(c / 255 for c in organ.rgb), 1.0)
