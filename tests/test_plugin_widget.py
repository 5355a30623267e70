"""The segmentation widget in a real napari viewer, with a tiny random-weights network:
its labels are meaningless, so these tests check the layer, not the anatomy."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from conftest import make_weights
from napari.layers import Image, Labels

from napari_mmseg.device import available_devices
from napari_mmseg.organs import ORGANS
from napari_mmseg.plugin.dice_panel import DicePanel
from napari_mmseg.plugin.layers import GEOMETRY, MODEL
from napari_mmseg.plugin.review import UNCERTAINTY, confidence_text, flag_lines
from napari_mmseg.plugin.widget import WEIGHTS_FILE, SegmentationWidget

pytestmark = pytest.mark.gui
TIMEOUT_MS = 120_000


@pytest.fixture
def viewer(make_napari_viewer, ct_scan):
    viewer = make_napari_viewer()
    viewer.open(str(ct_scan), plugin="napari-mmseg")
    return viewer


def widget_with(viewer, weights) -> SegmentationWidget:
    widget = SegmentationWidget(viewer)
    widget["model"].value = WEIGHTS_FILE
    widget["weights"].value = weights
    widget["quality"].value = 0.25  # fewest windows: these tests are about the layer, not the labels
    return widget


def run(widget: SegmentationWidget, qtbot) -> None:
    widget["run"].native.click()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def test_run_adds_an_aligned_coloured_layer_with_organ_volumes_and_review(viewer, tiny_weights, qtbot):
    image = viewer.layers["example_ct_sm"]
    widget = widget_with(viewer, tiny_weights)
    assert widget["modality"].value == "CT" and widget.modality_warning == ""
    assert "v4 weights for CT/MR" in widget["weights_info"].value
    reviews = []
    show_review = widget._show_review
    widget._show_review = lambda layer, review: (reviews.append(review), show_review(layer, review))
    stages: list[tuple[float, str]] = []
    widget._relay.changed.connect(lambda _f, stage: stages.append((time.perf_counter(), stage)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clicked = time.perf_counter()
        run(widget, qtbot)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]

    # progress says what happens from the start: the first update within 0.5 s of Run
    first_update_s = stages[0][0] - clicked
    print(f"\nfirst progress update {1000 * first_update_s:.0f} ms after Run: {stages[0][1]!r}")
    assert first_update_s < 0.5
    names = [stage for _, stage in stages]
    assert names[:2] == ["loading the model", "resampling to the model's grid"]
    assert names[2].startswith("windows 0 of ") and names[-5].startswith("mirror check: windows ")
    assert names[-4:] == ["resampling back to the scan's grid", "confidence and uncertainty maps",
                          "checking the organs", "done"]

    layer = viewer.layers["example_ct_sm v4"]
    assert isinstance(layer, Labels)
    assert layer.data.shape == image.data.shape
    for attribute in ("scale", "translate"):
        assert np.array_equal(getattr(layer, attribute), getattr(image, attribute))
    assert np.array_equal(layer.affine.affine_matrix, image.affine.affine_matrix)
    assert layer.metadata[GEOMETRY] == image.metadata[GEOMETRY]
    assert layer.metadata[MODEL]["variant"] == "v4"
    for organ in ORGANS:
        assert np.allclose(layer.colormap.map(np.array([organ.label]))[0][:3], np.array(organ.rgb) / 255)
    features = layer.features.set_index("index")
    assert list(features["organ"]) == [o.display_name for o in ORGANS]
    voxel_ml = np.prod(image.scale) / 1000
    for organ in ORGANS:
        volume = features.loc[organ.label, "volume_ml"]
        assert volume == f"{(layer.data == organ.label).sum() * voxel_ml:.1f}"  # as the status bar shows it

    # the review: confidence per organ in the features and the widget, flags listed visibly
    (review,) = reviews
    for organ in review.organs:
        confidence = confidence_text(organ.confidence)  # 0.93, or – for an organ not found
        assert features.loc[organ.label, "confidence"] == confidence
        assert features.loc[organ.label, "flags"] == "; ".join(organ.flags)
        assert f"{organ.volume_ml:.1f} ml, confidence {confidence}" in widget["organs"].value
    assert widget.flags == flag_lines(review) and bool(widget.flags) == bool(review.flags)
    assert widget["flags"].native.isVisibleTo(widget.native) == bool(review.flags)

    # the uncertainty layer: hidden, on the scan's grid, for an annotator to show
    uncertainty = viewer.layers["example_ct_sm v4 uncertainty"]
    assert isinstance(uncertainty, Image) and not uncertainty.visible
    assert uncertainty.metadata[UNCERTAINTY] == layer.name and uncertainty.colormap.name == "inferno"
    assert uncertainty.data.shape == layer.data.shape and uncertainty.data.dtype == np.float32
    assert np.array_equal(uncertainty.scale, layer.scale)
    assert widget["progress"].value == 100
    assert "on cpu" in widget.status or "on cuda" in widget.status
    assert widget["run"].text == "Run"

    # the volumes follow the user's corrections, undo included
    def spleen_ml():
        return float(layer.features.set_index("index").loc[2, "volume_ml"])

    before = spleen_ml()
    layer.brush_size = 10
    layer.paint((15, 50, 60), 2)
    qtbot.waitUntil(lambda: spleen_ml() > before, timeout=2000)
    assert spleen_ml() == pytest.approx((layer.data == 2).sum() * voxel_ml, abs=0.05)
    assert f"Spleen: {spleen_ml():.1f} ml" in widget["organs"].value  # the panel lists the edited volume
    assert "(volumes as edited)" in widget["organs"].value
    assert layer.features.set_index("index").loc[2, "confidence"] == features.loc[2, "confidence"]  # kept
    layer.undo()
    qtbot.waitUntil(lambda: spleen_ml() == before, timeout=2000)

    # deleting the result layer ends its watcher: none pile up over a long day of work
    assert [w.layers for w in widget._volume_watchers] == [(layer,)]
    viewer.layers.remove(layer)
    assert widget._volume_watchers == []


def test_rerun_replaces_only_an_unedited_result_and_the_dice_panel_follows_the_newest(
    viewer, tiny_weights, ct_scan, qtbot
):
    viewer.open(str(ct_scan.parent / "example_seg.nii.gz"), plugin="napari-mmseg")
    viewer.layers.selection.active = viewer.layers["example_ct_sm"]
    panel = DicePanel(viewer)
    widget = widget_with(viewer, tiny_weights)
    run(widget, qtbot)
    first = viewer.layers["example_ct_sm v4"]
    run(widget, qtbot)
    results = [layer.name for layer in viewer.layers if isinstance(layer, Labels) and MODEL in layer.metadata]
    assert results == ["example_ct_sm v4"] and viewer.layers["example_ct_sm v4"] is first
    assert panel["prediction"].value is first and panel["reference"].value is viewer.layers["example_seg"]

    first.paint((15, 50, 60), 2)  # the user corrects the result
    edited = first.data.copy()
    run(widget, qtbot)
    second = viewer.layers["example_ct_sm v4 (2)"]
    assert np.array_equal(first.data, edited)
    assert "example_ct_sm v4 (2) uncertainty" in viewer.layers
    assert panel["prediction"].value is second  # the newest result

    panel["prediction"].value = first  # the user's choice: new results no longer take its place
    second.paint((15, 50, 60), 2)
    run(widget, qtbot)
    assert "example_ct_sm v4 (3)" in viewer.layers and panel["prediction"].value is first


def test_a_modality_that_contradicts_the_intensities_is_warned_about_and_may_still_run(viewer, tiny_weights, qtbot):
    widget = widget_with(viewer, tiny_weights)
    assert widget["modality"].value == "CT" and not widget["modality_warning"].native.isVisibleTo(widget.native)
    widget["modality"].value = "MR"
    assert "look like CT, not MR" in widget.modality_warning
    assert widget["modality_warning"].native.isVisibleTo(widget.native)
    assert "orange" in widget["modality_warning"].native.styleSheet()
    run(widget, qtbot)
    assert "example_ct_sm v4" in viewer.layers and widget.status.startswith("Done")
    widget["modality"].value = "CT"
    assert widget.modality_warning == "" and not widget["modality_warning"].native.isVisibleTo(widget.native)


def test_stray_pieces_are_dropped_unless_the_user_keeps_them(viewer, tiny_weights):
    widget = widget_with(viewer, tiny_weights)
    assert widget._make_job().options.drop_stray_pieces, "dropped by default, as the CLI does"
    widget["keep_stray_pieces"].value = True
    assert not widget._make_job().options.drop_stray_pieces


def test_cancel_stops_the_run_and_adds_no_layer(viewer, tiny_weights, qtbot):
    widget = widget_with(viewer, tiny_weights)
    widget["run"].native.click()
    assert widget["run"].text == "Cancel"
    widget["run"].native.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == ["example_ct_sm"]
    assert widget.status.startswith("Cancelled")
    assert widget["run"].text == "Run" and widget["run"].enabled


def test_bad_inputs_are_explained_not_crashed(make_napari_viewer, tiny_weights, tmp_path, qtbot):
    viewer = make_napari_viewer()
    widget = widget_with(viewer, tiny_weights)
    widget["run"].native.click()
    assert "Open a scan first" in widget.status

    viewer.add_image(np.random.default_rng(0).normal(size=(64, 64)), name="slice")
    widget["run"].native.click()
    assert "2-D" in widget.status and not widget.running

    viewer.add_image(np.random.default_rng(0).normal(100, 20, size=(8, 32, 32)).astype(np.float32), name="mr")
    widget["scan"].value = viewer.layers["mr"]
    widget["model"].value = WEIGHTS_FILE
    widget["weights"].value = make_weights(tmp_path / "ct-only.safetensors", "individual", ("CT",))
    widget["modality"].value = "MR"
    widget["run"].native.click()
    assert "not MR" in widget.status

    widget["weights"].value = tmp_path / "missing.safetensors"
    widget["run"].native.click()
    assert "Choose a weights file" in widget.status

    if "cuda" not in available_devices():
        widget["weights"].value = tiny_weights
        widget["device"].value = "cuda"
        widget["run"].native.click()
        assert "no CUDA GPU" in widget.status
        assert widget.status.endswith('pick "auto" or "CPU" in the Device box.') and "--device" not in widget.status
    assert not widget.running and len(viewer.layers) == 2


def test_gui_thread_keeps_beating_while_a_segmentation_runs(make_napari_viewer, data_dir, tiny_weights, qtbot,
                                                            record_property):
    """A 10 ms timer on the GUI thread: the longest gap between its beats while the network
    runs is how long the user would see the window freeze."""
    import time

    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer(show=True)
    viewer.open(str(data_dir / "abdomen-ct-btcv" / "imagesTr" / "btcv_02_0000.nii.gz"), plugin="napari-mmseg")
    widget = widget_with(viewer, tiny_weights)
    widget["quality"].value = 0.5
    beats: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    finished = {}
    add_result = widget._add_result

    def timed_add_result(*args):
        finished["run"] = time.perf_counter()
        layer = add_result(*args)
        finished["layer"] = time.perf_counter()
        return layer

    widget._add_result = timed_add_result
    timer.start(10)
    qtbot.wait(200)
    run(widget, qtbot)
    timer.stop()
    during = np.array([b for b in beats if b <= finished["run"]])
    gaps = np.diff(np.append(during, finished["run"]))
    worst_ms = 1000 * float(gaps.max())
    layer_ms = 1000 * (finished["layer"] - finished["run"])
    record_property("worst_gui_gap_ms", worst_ms)
    print(f"\nGUI heartbeat while the segmentation ran: {len(during)} beats, worst gap {worst_ms:.0f} ms, "
          f"median {1000 * np.median(gaps):.0f} ms; adding the result layer afterwards took {layer_ms:.0f} ms")
    # The target is 100 ms (docs/performance.md reports the measured gap on a quiet machine); a
    # loaded 2-core CI machine schedules the GUI thread late now and then, so the test guards
    # against real freezes (an import or a GIL-holding call on the way: 1.7 s before the fix).
    assert worst_ms < 500, f"the GUI froze for {worst_ms:.0f} ms while the segmentation ran"


@pytest.mark.parametrize("scan, reference, liver_id, modality", [
    ("totalsegmentator-examples/example_ct_sm.nii.gz", "totalsegmentator-examples/example_seg.nii.gz", 5, "CT"),
    ("abdomen-mr-chaos-t2/imagesTr/chaos_02_0000.nii.gz", "abdomen-mr-chaos-t2/labelsTr/chaos_02.nii.gz", 1, "MR"),
])
def test_bundled_v4_puts_the_liver_where_the_reference_has_it(make_napari_viewer, data_dir, qtbot, scan, reference,
                                                               liver_id, modality):
    from napari_mmseg.models.weights import available_variants

    if "v4" not in available_variants(modality):
        pytest.skip("no bundled v4 weights in this installation")
    viewer = make_napari_viewer()
    viewer.open(str(data_dir / scan), plugin="napari-mmseg")
    viewer.open(str(data_dir / reference), plugin="napari-mmseg", layer_type="labels")
    image, ref = viewer.layers[0], viewer.layers[1]
    widget = SegmentationWidget(viewer)
    widget["scan"].value = image
    assert widget["modality"].value == modality
    widget["model"].value = "v4"
    run(widget, qtbot)
    result = viewer.layers[f"{image.name} v4"]
    assert np.array_equal(result.scale, ref.scale) and result.data.shape == ref.data.shape
    liver, ref_liver = result.data == 1, np.asarray(ref.data) == liver_id
    dice = 2 * (liver & ref_liver).sum() / (liver.sum() + ref_liver.sum())
    assert dice > 0.75, f"liver Dice {dice:.3f} against the reference"
