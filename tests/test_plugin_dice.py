"""The Dice panel: the same numbers as `metrics.dice_scores`, following paint strokes."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_mmseg.metrics import dice_scores
from napari_mmseg.organs import ORGAN_BY_NAME
from napari_mmseg.plugin.conventions import CONVENTIONS, OURS, to_our_ids
from napari_mmseg.plugin.dice_panel import CUSTOM, DicePanel
from napari_mmseg.plugin.layers import GEOMETRY, MODEL, labels_kwargs

pytestmark = pytest.mark.gui
LIVER = ORGAN_BY_NAME["liver"].label
SPLEEN = ORGAN_BY_NAME["spleen"].label


@pytest.fixture
def viewer(make_napari_viewer, data_dir):
    """The TotalSegmentator labels as reference, and a 'prediction' in our ids made from
    them with the liver's top half removed and a slab of spleen added."""
    viewer = make_napari_viewer()
    (reference,) = viewer.open(str(data_dir / "totalsegmentator-examples" / "example_seg.nii.gz"),
                               plugin="napari-mmseg")
    ours = to_our_ids(reference.data, CONVENTIONS["TotalSegmentator"])
    ours[15:][ours[15:] == LIVER] = 0
    ours[5:8, 40:60, 40:60] = SPLEEN
    kwargs = labels_kwargs(ours, reference.metadata[GEOMETRY], "prediction", CONVENTIONS[OURS], OURS, None)
    viewer.add_labels(ours, **kwargs)
    return viewer


def expected(viewer) -> list:
    reference = to_our_ids(viewer.layers["example_seg"].data, CONVENTIONS["TotalSegmentator"])
    return dice_scores(viewer.layers["prediction"].data, reference, tuple(viewer.layers["prediction"].scale))


def test_panel_matches_metrics_and_follows_a_paint_stroke(viewer, qtbot, tmp_path):
    panel = DicePanel(viewer)
    assert panel["prediction"].value is viewer.layers["prediction"]
    assert panel["reference"].value is viewer.layers["example_seg"]
    qtbot.waitUntil(lambda: bool(panel.scores), timeout=2000)
    assert panel.scores == expected(viewer)
    liver = panel.scores[0]
    assert 0.2 < liver.dice < 0.95
    assert panel["table"].data[0][0] == f"{liver.dice:.3f}"

    # A paint stroke on the prediction: the panel recomputes by itself after the debounce.
    prediction = viewer.layers["prediction"]
    prediction.brush_size = 20
    prediction.paint((20, 45, 35), LIVER)
    qtbot.waitUntil(lambda: panel.scores[0].dice != liver.dice, timeout=2000)
    assert panel.scores == expected(viewer)

    # Undo sends no paint event; the panel follows it all the same.
    prediction.undo()
    qtbot.waitUntil(lambda: panel.scores[0].dice == liver.dice, timeout=2000)
    assert panel.scores == expected(viewer)

    out = tmp_path / "dice.csv"
    panel.export_csv(out)
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert [r["organ"] for r in rows] == ["liver", "spleen", "kidney_right", "kidney_left"]
    assert float(rows[0]["dice"]) == pytest.approx(panel.scores[0].dice, abs=1e-4)


def test_reference_conventions_and_custom_mapping(viewer):
    panel = DicePanel(viewer)
    panel["convention"].value = "BTCV"  # the wrong convention for this file: BTCV's liver is 6
    panel.update_scores()
    reference = viewer.layers["example_seg"]
    assert panel.scores[0].reference_ml == pytest.approx((reference.data == 6).sum() * 27 / 1000)
    panel["convention"].value = CUSTOM
    panel["mapping"].value = "liver=5, spleen=1, kidney_right=2, kidney_left=3"
    panel.update_scores()
    assert panel.scores == expected(viewer)
    panel["mapping"].value = "liver=five"
    panel.update_scores()
    assert "whole number" in panel.message and panel.scores == []


def test_layers_of_different_shape_give_a_message(viewer):
    viewer.add_labels(np.zeros((4, 5, 6), np.uint8), name="other grid")
    panel = DicePanel(viewer)
    panel["prediction"].value = viewer.layers["prediction"]
    panel["reference"].value = viewer.layers["other grid"]
    panel.update_scores()
    assert "differ in shape" in panel.message
    assert panel.scores == [] and not panel["export"].enabled


def test_defaults_never_offer_one_layer_as_both_prediction_and_reference(make_napari_viewer):
    viewer = make_napari_viewer()
    grid = np.zeros((4, 8, 8), np.uint8)
    reference = viewer.add_labels(grid, name="case reference")
    panel = DicePanel(viewer)
    assert panel["reference"].value is reference and panel["prediction"].value is None  # one layer: one box
    panel.update_scores()
    assert "two different Labels layers" in panel.message

    edited = viewer.add_labels(grid.copy(), name="edited")
    assert panel["prediction"].value is edited and panel["reference"].value is reference
    result = viewer.add_labels(grid.copy(), name="case msbn", metadata={MODEL: {"variant": "msbn"}})
    assert panel["prediction"].value is result and panel["reference"].value is reference  # the newest result

    viewer.layers.remove(reference)
    assert panel["prediction"].value is result and panel["reference"].value is edited

    alone = make_napari_viewer()
    labels = alone.add_labels(grid.copy(), name="labels")
    panel = DicePanel(alone)
    assert panel["prediction"].value is labels and panel["reference"].value is None
