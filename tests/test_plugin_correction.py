"""Correct mode in a real napari viewer, on the embedded CT sample with its spleen erased:
a click on the missed spleen brings it back, as one step of napari's undo; the Dice panel
follows; the hints are a layer of their own; the GUI thread keeps beating meanwhile."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from napari.utils._proxies import ReadOnlyWrapper
from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
from qtpy.QtCore import QTimer

from napari_mmseg.correction.hints import Hint
from napari_mmseg.organs import ORGAN_BY_NAME
from napari_mmseg.plugin.conventions import CONVENTIONS, OURS, to_our_ids
from napari_mmseg.plugin.correction import HINT_SYMBOLS, REMOVE, CorrectionPanel
from napari_mmseg.plugin.dice_panel import DicePanel
from napari_mmseg.plugin.layers import GEOMETRY, labels_kwargs

pytestmark = pytest.mark.gui
LIVER, SPLEEN = ORGAN_BY_NAME["liver"].label, ORGAN_BY_NAME["spleen"].label
TIMEOUT_MS = 60_000


@dataclass
class MouseEvent:
    """What napari's canvas hands a layer's mouse callbacks (the fields correct mode reads)."""

    type: str
    position: tuple[float, ...]
    modifiers: tuple[str, ...] = ()
    button: int = 1
    is_dragging: bool = False
    handled: bool = False
    view_direction: None = None
    dims_displayed: tuple[int, int] = (1, 2)


def mouse(layer, voxels, modifiers=()):
    """A press at the first voxel, moves through the others, a release at the last."""
    positions = [layer.data_to_world(v) for v in voxels]
    mouse_press_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_press", positions[0], modifiers),
                                                 exceptions=("handled",)))
    for position in positions[1:]:
        mouse_move_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_move", position, modifiers, is_dragging=True),
                                                    exceptions=("handled",)))
    mouse_release_callbacks(layer, ReadOnlyWrapper(MouseEvent("mouse_release", positions[-1], modifiers),
                                                   exceptions=("handled",)))


@pytest.fixture
def viewer(make_napari_viewer):
    """The CT sample, its reference, and a copy of the reference in our ids with the spleen
    erased (the labels to correct)."""
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-mmseg", "ct")
    reference = viewer.layers["example_ct reference"]
    ours = to_our_ids(np.asarray(reference.data), CONVENTIONS["TotalSegmentator"])
    ours[ours == SPLEEN] = 0
    viewer.add_labels(ours, **labels_kwargs(ours, reference.metadata[GEOMETRY], "missed spleen", CONVENTIONS[OURS],
                                            OURS, None))
    return viewer


def spleen_centre(viewer) -> tuple[int, int, int]:
    """A voxel deep inside the reference's spleen, on its largest slice."""
    from scipy import ndimage

    reference = to_our_ids(np.asarray(viewer.layers["example_ct reference"].data), CONVENTIONS["TotalSegmentator"])
    spleen = reference == SPLEEN
    z = int(np.argmax(spleen.sum(axis=(1, 2))))
    depth = ndimage.distance_transform_edt(spleen[z])
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return z, int(y), int(x)


def wait(panel, qtbot):
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)


def test_a_click_on_a_missed_spleen_brings_it_back_as_one_undo_step(viewer, qtbot, record_property):
    layer = viewer.layers["missed spleen"]
    dice = DicePanel(viewer)
    panel = CorrectionPanel(viewer)
    assert panel["labels"].value is layer and panel["scan"].value is viewer.layers["example_ct"]
    assert panel["modality"].value == "CT" and panel.refusal == ""
    assert dice["prediction"].value is layer and dice["reference"].value is viewer.layers["example_ct reference"]
    qtbot.waitUntil(lambda: bool(dice.scores), timeout=2000)
    assert dice.scores[SPLEEN - 1].dice == 0.0

    panel["organ"].value = SPLEEN
    panel["correct"].value = True
    assert viewer.layers.selection.active is layer and layer.mode == "pan_zoom" and not layer.mouse_pan
    before = layer.data.copy()
    centre = spleen_centre(viewer)

    beats: list[float] = []
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
    heartbeat.start(10)
    qtbot.wait(100)
    clicked = time.perf_counter()
    mouse(layer, [centre])
    wait(panel, qtbot)
    applied = time.perf_counter()
    heartbeat.stop()
    gaps = np.diff([b for b in beats if clicked - 0.05 <= b] + [applied])
    worst_ms = 1000 * float(gaps.max())
    record_property("correction_worst_gui_gap_ms", worst_ms)
    print(f"\nfirst click (model loaded in the worker): {applied - clicked:.2f} s to the labels, GUI heartbeat "
          f"worst gap {worst_ms:.0f} ms; {panel.status}")
    assert worst_ms < 500, f"the GUI froze for {worst_ms:.0f} ms during a correction"  # target 100 ms, loaded CI

    assert layer.data[centre] == SPLEEN, "the clicked voxel is spleen now"
    added = (layer.data == SPLEEN) & (before != SPLEEN)
    assert added.sum() > 0 and np.array_equal(layer.data[~added], before[~added])
    # the Dice panel followed, and one click brought most of the spleen back, not a ball around the click
    qtbot.waitUntil(lambda: dice.scores[SPLEEN - 1].dice > 0.5, timeout=2000)
    print(f"spleen Dice 0.000 → {dice.scores[SPLEEN - 1].dice:.3f} after one click ({added.sum()} voxels)")

    # the hint: a + in the spleen's colour on its own layer, the labels still the active layer
    hints = panel.hints_layer
    assert hints is not None and hints.name == "missed spleen hints" and len(hints.data) == 1
    assert np.allclose(hints.data[0], centre) and list(hints.symbol) == [HINT_SYMBOLS[True]]
    assert np.allclose(hints.face_color[0][:3], np.array(ORGAN_BY_NAME["spleen"].rgb) / 255)
    assert viewer.layers.selection.active is layer

    # napari's undo restores exactly the voxels before the click; redo brings the click back
    after = layer.data.copy()
    layer.undo()
    assert np.array_equal(layer.data, before)
    qtbot.waitUntil(lambda: dice.scores[SPLEEN - 1].dice == 0.0, timeout=2000)
    layer.redo()
    assert np.array_equal(layer.data, after)

    # a second click where the spleen is still missing: one more undo step; seconds per click with the model loaded
    reference = to_our_ids(np.asarray(viewer.layers["example_ct reference"].data), CONVENTIONS["TotalSegmentator"])
    still_missing = np.argwhere((reference == SPLEEN) & (layer.data != SPLEEN))
    second = tuple(int(v) for v in still_missing[np.argmin(((still_missing - np.asarray(centre)) ** 2).sum(1))])
    started = time.perf_counter()
    mouse(layer, [second])
    wait(panel, qtbot)
    print(f"second click: {time.perf_counter() - started:.2f} s to the labels; {panel.status}")
    layer.undo()
    assert np.array_equal(layer.data, after)

    panel["aids"]["clear_hints"].native.click()
    assert len(hints.data) == 0 and panel.hints == ()


def test_shift_click_scribble_keys_and_aids_each_one_undo_step(viewer, qtbot):
    layer = viewer.layers["missed spleen"]
    panel = CorrectionPanel(viewer)
    panel["correct"].value = True

    layer.keymap[next(k for k in layer.keymap if str(k) == "1")](layer)  # key 1: the liver
    assert panel["organ"].value == LIVER
    liver = np.argwhere(layer.data == LIVER)
    z, y, x = (int(v) for v in liver[len(liver) // 2])
    before = layer.data.copy()
    mouse(layer, [(z, y, x), (z, y + 1, x), (z, y + 2, x)], modifiers=("Shift",))  # a negative scribble
    wait(panel, qtbot)
    (hint,) = panel.hints
    assert not hint.positive and hint.label == LIVER and len(hint.points) == 3
    assert list(panel.hints_layer.symbol) == [HINT_SYMBOLS[False]] * 3
    removed = (before == LIVER) & (layer.data != LIVER)
    assert removed.any() and np.array_equal(layer.data[~removed], before[~removed]), "only liver voxels removed"
    layer.undo()
    assert np.array_equal(layer.data, before)

    panel["click"].value = REMOVE  # a click removes the clicked piece: here the whole right kidney
    kidney = ORGAN_BY_NAME["kidney_right"].label
    mouse(layer, [tuple(int(v) for v in np.argwhere(layer.data == kidney)[0])])
    wait(panel, qtbot)
    assert not (layer.data == kidney).any()
    layer.undo()
    assert np.array_equal(layer.data, before)

    slab = layer.data.copy()  # the liver of every other slice erased: fill between slices restores most of it
    slab[1::2][slab[1::2] == LIVER] = 0
    layer.data = slab.copy()
    panel["organ"].value = LIVER
    panel["aids"]["fill"].native.click()
    wait(panel, qtbot)
    assert (layer.data == LIVER).sum() > 1.5 * (slab == LIVER).sum(), panel.status
    layer.undo()
    assert np.array_equal(layer.data, slab)


def test_labels_in_another_datasets_ids_are_corrected_in_their_own_ids(viewer, qtbot):
    reference = viewer.layers["example_ct reference"]  # TotalSegmentator: spleen 1, liver 5, other organs kept
    panel = CorrectionPanel(viewer)
    panel["labels"].value = reference
    panel["correct"].value = True
    assert panel.refusal == ""
    before = np.asarray(reference.data).copy()
    liver = np.argwhere(before == 5)
    panel["organ"].value = SPLEEN
    mouse(reference, [tuple(int(v) for v in liver[len(liver) // 2])])
    wait(panel, qtbot)
    changed = reference.data != before
    assert changed.any() and set(np.unique(reference.data[changed])) == {1}, panel.status


def test_labels_not_on_the_scans_grid_are_refused_with_a_message(viewer):
    other = viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="other grid")
    panel = CorrectionPanel(viewer)
    panel["labels"].value = other
    assert "is not on the grid of the scan example_ct" in panel.refusal and "(4, 5, 6)" in panel.refusal
    panel["correct"].value = True
    assert not panel["correct"].value and panel["refusal"].native.isVisibleTo(panel.native)
    assert other.mouse_drag_callbacks == [] or panel._on_mouse not in other.mouse_drag_callbacks

    panel["labels"].value = viewer.layers["missed spleen"]
    assert panel.refusal == ""


def test_real_mouse_clicks_on_the_canvas_give_hints_and_a_drag_does_not_pan(make_napari_viewer, qtbot):
    """Through Qt, as a user's mouse: a click is a + hint at the voxel under the pointer, a
    Shift-click a − hint; the view does not move; unticking Correct gives napari its pan back."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    viewer = make_napari_viewer(show=True)
    placement = {"scale": (3.0, 1.5, 1.5), "translate": (0.0, -10.0, 5.0)}
    viewer.add_image(np.random.default_rng(0).normal(40, 10, (8, 64, 64)).astype(np.float32), name="scan",
                     **placement)
    layer = viewer.add_labels(np.zeros((8, 64, 64), np.uint8), name="labels", **placement)
    panel = CorrectionPanel(viewer)
    panel["modality"].value = "CT"
    panel["correct"].value = True
    viewer.dims.set_point(0, layer.data_to_world((4, 0, 0))[0])
    qtbot.wait(200)
    canvas = viewer.window._qt_viewer.canvas.native  # no public handle on the canvas widget

    def at(voxel) -> QPoint:
        camera = viewer.scene.camera
        world = np.asarray(layer.data_to_world(voxel))[1:]
        row, col = (world - np.asarray(camera.center[1:])) * camera.zoom + np.asarray(viewer.canvas.size) / 2
        return QPoint(round(col), round(row))

    center = viewer.scene.camera.center
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at((4, 30, 20)))
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, at((4, 10, 50)))
    wait(panel, qtbot)
    assert [(h.points, h.positive) for h in panel.hints] == [(((4, 30, 20),), True), (((4, 10, 50),), False)]
    assert viewer.scene.camera.center == center
    panel["correct"].value = False
    assert layer.mouse_pan and panel._on_mouse not in layer.mouse_drag_callbacks


def test_without_a_correction_model_a_click_paints_the_brush_and_says_so(tmp_path):
    from napari_mmseg.io.display_geometry import to_display
    from napari_mmseg.io.scan_io import read_scan
    from napari_mmseg.plugin.correction import HINT, Corrector, Interaction
    from napari_mmseg.plugin.sample_data import fetch

    image, geometry = to_display(read_scan(fetch("totalsegmentator/example_ct_sm.nii.gz")))
    labels = np.zeros(image.shape, np.uint8)
    hint = Hint(label=SPLEEN, positive=True, points=((15, 50, 60),))
    corrector = Corrector(model_path=str(tmp_path / "missing.safetensors"))
    edit = corrector.run(Interaction(HINT, SPLEEN, hints=(hint,)), labels, CONVENTIONS[OURS], image, geometry, "CT")
    assert "no correction model" in edit.note and edit.voxels > 0
    changed = set(zip(*(i.tolist() for i in edit.indices), strict=True))
    assert set(edit.values.tolist()) == {SPLEEN} and (15, 50, 60) in changed
    assert not labels.any(), "the layer's array is written by the GUI thread only"
