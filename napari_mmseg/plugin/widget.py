"""The "Organ segmentation" dock widget: pick a scan, modality, model and device, Run.

The network runs in a napari worker thread; the core's progress callback reaches the GUI
through a Qt signal and its cancel callable polls an Event, so Run turns into Cancel and a
cancelled run stops at the next sliding window and adds nothing. Torch is imported when the
widget opens, not when napari starts. A result comes with its review: each organ's
confidence, plausibility flags and a hidden uncertainty layer (`plugin/review.py`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, ProgressBar, PushButton
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Signal

from napari_mmseg.config import DEFAULT_VARIANT
from napari_mmseg.errors import Cancelled, MmsegError
from napari_mmseg.io.display_geometry import DisplayGeometry, image_from_layer
from napari_mmseg.io.scan_io import segmentable
from napari_mmseg.organs import MODALITIES
from napari_mmseg.plugin.conventions import CONVENTIONS, OURS
from napari_mmseg.plugin.edits import EditWatcher, OffThread
from napari_mmseg.plugin.layers import (
    EDITED,
    MODEL,
    SCAN,
    alignment_kwargs,
    label_features,
    labels_kwargs,
    layer_geometry,
)
from napari_mmseg.plugin.panel_layout import TextLines, narrow
from napari_mmseg.plugin.review import (
    UNCERTAINTY,
    WARNING_STYLE,
    flag_lines,
    organ_lines,
    review_features,
    uncertainty_layer_data,
    with_fresh_volumes,
)

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import FunctionWorker

    from napari_mmseg.inference.segment import InferenceOptions, Segmentation
    from napari_mmseg.review.flags import ScanReview

WEIGHTS_FILE = "file"  # the variant choice that means "a weights file I pick"
DEVICE_REMEDY = 'pick "auto" or "CPU" in the Device box'
QUALITY = (("fast (overlap 0.25)", 0.25), ("balanced (overlap 0.5)", 0.5), ("best (overlap 0.75)", 0.75))
_DEVICE_NAMES = {"cuda": "CUDA GPU", "mps": "Apple MPS", "cpu": "CPU"}


@dataclass(frozen=True)
class Job:
    """Everything a run needs, checked in the GUI thread before the worker starts."""

    image: sitk.Image
    weights: Path
    modality: str
    options: InferenceOptions
    scan_name: str
    scan_path: str | None
    geometry: DisplayGeometry
    placement: dict[str, Any]


def run_job(job: Job, progress: Callable[[float, str], None], cancel: Callable[[], bool]) -> Segmentation | None:
    """The worker thread's work: load the weights, segment and review; None when cancelled."""
    progress(0.0, "loading the model")  # first, before any import: the user sees the run has begun
    from napari_mmseg.inference.segment import segment_image
    from napari_mmseg.models.weights import load_weights

    loaded = load_weights(job.weights, modality=job.modality)
    try:
        result = segment_image(job.image, loaded, job.modality, job.options, progress=progress, cancel=cancel)
    except Cancelled:
        return None
    return result


class _ProgressRelay(QObject):
    """Carries (fraction, stage) from the worker thread to the GUI thread (queued signal)."""

    changed = Signal(float, str)


class SegmentationWidget(Container):
    """Segment liver, spleen and kidneys of the chosen scan into a new Labels layer."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        # Imports that would otherwise happen mid-run and freeze the GUI: MONAI's, from the
        # worker thread, stalls the GUI thread up to 0.2 s; napari imports skimage.color for
        # the first Labels layer (0.26 s). Pay them once, when the widget opens.
        import monai.inferers  # noqa: F401
        import skimage.color  # noqa: F401

        from napari_mmseg.device import available_devices

        super().__init__()
        self._viewer = napari_viewer
        self._devices = available_devices()
        self._worker: FunctionWorker | None = None
        self._cancel = threading.Event()
        self._started = 0.0
        self._relay = _ProgressRelay()
        self._relay.changed.connect(self._on_progress)
        self._closed = False
        self._volume_watchers: list[EditWatcher] = []  # keep result layers' organ volumes current
        self._reviewed: Labels | None = None  # the result whose organs the panel lists
        self.native.destroyed.connect(self._on_closed)

        self._image = ComboBox(name="scan", label="Scan", choices=self._image_choices)
        self._modality = ComboBox(name="modality", label="Modality", choices=MODALITIES)
        self._modality_hint = TextLines(name="modality_hint")
        self._modality_warning = TextLines(name="modality_warning", style=WARNING_STYLE)
        self._variant = ComboBox(name="model", label="Model", choices=self._variant_choices)
        self._weights = FileEdit(name="weights", label="Weights file", mode="r", filter="*.safetensors")
        self._weights_info = TextLines(name="weights_info")
        self._device = ComboBox(name="device", label="Device", choices=self._device_choices())
        self._quality = ComboBox(name="quality", label="Quality", choices=QUALITY, value=0.5)
        self._keep_pieces = CheckBox(
            name="keep_stray_pieces", text="Keep stray pieces", value=False,
            tooltip="Keep every piece of an organ. Off: pieces smaller than half an organ's largest piece "
                    "(mostly false positives far from it) are dropped.")
        self._run = PushButton(name="run", text="Run")
        self._progress = ProgressBar(name="progress", min=0, max=100, value=0, label="Progress")
        self._status = TextLines(name="status", value=f"Devices found: {', '.join(self._devices)}")
        self._organs = TextLines(name="organs")  # the last result: volume and confidence per organ
        self._flags = TextLines(name="flags", style=WARNING_STYLE)  # its plausibility flags
        narrow(self._image, self._modality, self._variant, self._device, self._quality)
        self.extend([
            self._image, self._modality, self._modality_hint, self._modality_warning, self._variant, self._weights,
            self._weights_info, self._device, self._quality, self._keep_pieces, self._run, self._progress,
            self._status, self._organs, self._flags,
        ])
        self._guessed_modality: str | None = None

        self._image.changed.connect(self._suggest_modality)
        self._modality.changed.connect(self._on_modality)
        self._variant.changed.connect(self._show_weights_choice)
        self._weights.changed.connect(self._describe_weights)
        self._run.changed.connect(self._on_run_clicked)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        napari_viewer.layers.events.removed.connect(self._forget_removed_layer)
        self._suggest_modality()
        self._on_modality()

    # ---- state shown to the user ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def status(self) -> str:
        return self._status.value

    @property
    def modality_warning(self) -> str:
        """What the widget warns about the chosen modality ('' when it agrees with the scan)."""
        return self._modality_warning.value if self._modality_warning.native.isVisibleTo(self.native) else ""

    @property
    def flags(self) -> str:
        """The last result's plausibility flags as shown ('' when none)."""
        return self._flags.value if self._flags.native.isVisibleTo(self.native) else ""

    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, _event: Any = None) -> None:
        self._image.reset_choices()

    def _forget_removed_layer(self, event: Any) -> None:
        """A deleted result layer needs its volume watcher no more (one per run would pile up)."""
        for watcher in [w for w in self._volume_watchers if event.value in w.layers]:
            watcher.close()
            self._volume_watchers.remove(watcher)
        if event.value is self._reviewed:
            self._reviewed = None
            self._show_organs()

    def _variant_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        from napari_mmseg.models.weights import available_variants

        try:
            bundled = available_variants(self._modality.value)
        except MmsegError:
            bundled = []
        bundled.sort(key=lambda v: v != DEFAULT_VARIANT)  # the default first: a new widget starts on it
        return [(v, v) for v in bundled] + [("weights file…", WEIGHTS_FILE)]

    def _device_choices(self) -> list[tuple[str, str]]:
        choices = [(f"auto ({self._devices[0]})", "auto")]
        for device, name in _DEVICE_NAMES.items():
            choices.append((name if device in self._devices else f"{name} (not found)", device))
        return choices

    def _suggest_modality(self, _value: Any = None) -> None:
        """Suggest CT or MR from the intensities; the user has the last word."""
        from napari_mmseg.preprocessing import guess_modality

        layer = self._image.value
        if layer is None or layer.multiscale or layer.rgb or layer.ndim != 3:
            self._guessed_modality = None
            self._modality_hint.value = ""
            self._warn_modality()
            return
        self._guessed_modality = guess_modality(np.asarray(layer.data))
        self._modality.value = self._guessed_modality
        self._modality_hint.value = (
            f"Suggested from the intensities: {self._guessed_modality}. Change it if that is wrong."
        )
        self._warn_modality()

    def _warn_modality(self) -> None:
        """A visible warning while the chosen modality contradicts the intensities; Run stays
        allowed (an unusual scan may fool the guess)."""
        chosen, guessed = self._modality.value, self._guessed_modality
        disagree = guessed is not None and chosen != guessed
        self._modality_warning.value = (
            f"⚠ This scan's intensities look like {guessed}, not {chosen}: models for {chosen} will likely "
            "segment it badly. Run is still allowed." if disagree else ""
        )

    def _on_modality(self, _value: Any = None) -> None:
        self._warn_modality()
        self._variant.reset_choices()
        self._show_weights_choice()

    def _show_weights_choice(self, _value: Any = None) -> None:
        use_file = self._variant.value == WEIGHTS_FILE
        self._weights.visible = use_file
        if use_file:
            self._describe_weights()
        else:
            self._weights_info.value = ""

    def _describe_weights(self, _value: Any = None) -> None:
        """What the chosen weights file holds, or why it cannot be used."""
        from napari_mmseg.models.weights import read_metadata

        path = self._weights_path()
        if path is None:
            missing = "" if len(self._variant.choices) > 1 else "No bundled weights for this modality yet. "
            self._weights_info.value = f"{missing}Choose a napari-mmseg weights file (.safetensors)."
            return
        try:
            meta = read_metadata(path)
        except MmsegError as e:
            self._weights_info.value = str(e)
            return
        self._weights_info.value = f"{meta.variant} weights for {'/'.join(meta.modalities)}"

    def _weights_path(self) -> Path | None:
        path = self._weights.value
        return Path(path) if path and Path(path).is_file() else None

    # ---- running ----------------------------------------------------------------------------

    def _on_run_clicked(self, _value: Any = None) -> None:
        if self.running:
            self._cancel.set()
            self._run.text = "Cancelling…"
            self._run.enabled = False
            return
        try:
            job = self._make_job()
        except (MmsegError, ValueError) as e:
            self._fail(str(e))
            return
        self._start(job)

    def _make_job(self) -> Job:
        """Check every input and say what is wrong in words, before any thread starts."""
        from napari_mmseg.device import resolve_device
        from napari_mmseg.inference.segment import InferenceOptions
        from napari_mmseg.models.weights import bundled_weights, read_metadata

        layer = self._image.value
        if layer is None:
            raise MmsegError("Open a scan first: drag a file in, File › Open, or File › Open Sample.")
        if layer.rgb or layer.multiscale:
            raise MmsegError(f"{layer.name} is an RGB or multiscale image: choose a 3-D grey-value scan.")
        if layer.ndim != 3:
            raise MmsegError(
                f"{layer.name} is {layer.ndim}-D {tuple(layer.data.shape)}: segmentation needs a 3-D volume."
            )
        modality = self._modality.value
        variant = self._variant.value
        if variant == WEIGHTS_FILE:
            weights = self._weights_path()
            if weights is None:
                raise MmsegError("Choose a weights file (.safetensors) for the model.")
        else:
            weights = bundled_weights(variant, modality)
        meta = read_metadata(weights)
        if modality not in meta.modalities:
            raise MmsegError(
                f"These {meta.variant} weights serve {'/'.join(meta.modalities)}, not {modality}: "
                "choose other weights or the other modality."
            )
        device = str(resolve_device(self._device.value, remedy=DEVICE_REMEDY))
        data, state, _ = layer.as_layer_data_tuple()
        geometry = layer_geometry(data, state)
        return Job(
            image=image_from_layer(segmentable(np.asarray(data)), geometry),
            weights=weights,
            modality=modality,
            options=InferenceOptions(overlap=self._quality.value, device=device,
                                     drop_stray_pieces=not self._keep_pieces.value),
            scan_name=layer.name,
            scan_path=state["metadata"].get(SCAN),
            geometry=geometry,
            placement=alignment_kwargs(state),
        )

    def _start(self, job: Job) -> None:
        self._cancel.clear()
        self._started = time.perf_counter()
        self._run.text = "Cancel"
        self._progress.value = 0
        self._status.value = f"Running on {job.options.device}: starting…"
        self._worker = create_worker(
            run_job, job, self._relay.changed.emit, self._cancel.is_set,
            _connect={
                "returned": lambda result: self._on_returned(job, result),
                "errored": self._on_errored,
                "finished": self._on_finished,
            },
        )

    def _on_closed(self, _object: Any = None) -> None:
        """The dock widget is gone (napari closing): stop the run, touch no widget again."""
        self._closed = True
        self._cancel.set()
        for event in (self._viewer.layers.events.inserted, self._viewer.layers.events.removed):
            event.disconnect(self._refresh_layers)
        self._viewer.layers.events.removed.disconnect(self._forget_removed_layer)
        for watcher in self._volume_watchers:
            watcher.unwatch()

    def _on_progress(self, fraction: float, stage: str) -> None:
        if self._closed:
            return
        self._progress.value = round(100 * fraction)
        if not self._cancel.is_set():
            self._status.value = f"Running: {stage} ({fraction:.0%})"

    def _on_returned(self, job: Job, result: Segmentation | None) -> None:
        seconds = time.perf_counter() - self._started
        if self._closed:
            return
        if result is None:
            self._progress.value = 0
            self._status.value = f"Cancelled after {seconds:.1f} s: no layer was added."
            return
        layer = self._add_result(job, result)
        self._show_review(layer, result.review)
        self._add_uncertainty(job, layer, result)
        network = result.timings.get("network", 0.0)
        self._status.value = (
            f"Done: {layer.name!r} on {result.device} in {seconds:.1f} s (network {network:.1f} s)."
            + "".join(f" Note: {note}." for note in result.notes)
        )

    def _show_review(self, layer: Labels, review: ScanReview) -> None:
        """Confidence and flags in the layer's features (status bar) and in the widget."""
        layer.features = review_features(layer.features, review)
        self._reviewed = layer
        self._show_organs()
        self._flags.value = flag_lines(review)

    def _show_organs(self) -> None:
        """The reviewed result's organs: volumes as the layer holds them now, after any edits."""
        layer = self._reviewed
        if layer is None:
            self._organs.value = ""
            return
        edited = " (volumes as edited)" if layer.metadata.get(EDITED) else ""
        self._organs.value = f"{layer.name}{edited}:\n{organ_lines(layer.features)}"

    def _add_uncertainty(self, job: Job, layer: Labels, result: Segmentation) -> None:
        """The result's uncertainty as a hidden Image layer (replaced with its result layer)."""
        if result.uncertainty is None:
            return
        data, kwargs, _ = uncertainty_layer_data(result.uncertainty, layer.name, job.placement)
        previous = next((other for other in self._viewer.layers
                         if other.metadata.get(UNCERTAINTY) == layer.name and isinstance(other, Image)), None)
        if previous is not None:
            previous.data = data
            return
        added = self._viewer.add_image(data, **kwargs)
        layers = self._viewer.layers
        layers.move(layers.index(added), layers.index(layer))  # below its result: outlines show above it
        layers.selection.active = layer  # the layer to review and paint stays selected

    def _on_errored(self, error: Exception) -> None:
        if self._closed:
            return
        message = str(error)
        if isinstance(error, MemoryError) or "out of memory" in message.lower():
            message = "Out of memory: choose the CPU device (it uses main memory), or crop the scan to the abdomen."
        # napari's worker already shows the error as a notification; the status line keeps it.
        self._status.value = f"Failed: {message}"
        self._progress.value = 0

    def _on_finished(self) -> None:
        from napari_mmseg.device import release_memory  # torch waits until a run (test_plugin_io)

        self._worker = None
        release_memory()  # the viewer stays open: the run's freed blocks go back to the system
        if self._closed:
            return
        self._run.text = "Run"
        self._run.enabled = True

    def _fail(self, message: str) -> None:
        self._status.value = message
        show_error(message)

    def _add_result(self, job: Job, result: Segmentation) -> Labels:
        """A new Labels layer; an earlier unedited result of the same name is replaced, an
        edited one is never touched (the new result gets a new name)."""
        array = sitk.GetArrayFromImage(result.labels)
        name = f"{job.scan_name} {result.variant}"
        names = CONVENTIONS[OURS]
        kwargs = labels_kwargs(array, job.geometry, name, names, OURS, job.scan_path)
        kwargs.update(job.placement)
        kwargs["metadata"][EDITED] = False
        kwargs["metadata"][MODEL] = {
            "variant": result.variant, "modality": result.modality, "device": result.device,
            "weights": str(job.weights),
        }
        previous = next((layer for layer in self._viewer.layers if layer.name == name), None)
        if isinstance(previous, Labels) and previous.metadata.get(EDITED) is False:
            for key in ("scale", "translate", "rotate", "shear", "affine", "data", "features", "colormap"):
                setattr(previous, key, array if key == "data" else kwargs[key])
            previous.metadata.update(kwargs["metadata"])
            return previous
        if previous is not None:
            kwargs["name"] = self._free_name(name)
        layer = self._viewer.add_labels(array, **kwargs)
        layer.events.paint.connect(_mark_edited)
        spacing = job.geometry.display.spacing

        def show_volumes(fresh: pd.DataFrame) -> None:
            if self._closed:
                return
            layer.features = with_fresh_volumes(layer.features, fresh)
            if layer is self._reviewed:
                self._show_organs()

        counting = OffThread(lambda: (layer.data, names, spacing), label_features, show_volumes)
        volumes = EditWatcher(counting.request, self.native)
        volumes.watch([layer])
        self._volume_watchers.append(volumes)
        return layer

    def _free_name(self, name: str) -> str:
        n = 2
        while f"{name} ({n})" in self._viewer.layers:
            n += 1
        return f"{name} ({n})"


def _mark_edited(event: Any) -> None:
    event.source.metadata[EDITED] = True
