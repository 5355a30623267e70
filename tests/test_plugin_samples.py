"""Sample data through napari's File › Open Sample (pooch, with its cache pre-seeded from the
shared data folder and the network blocked), and the launcher's real window on screen."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import requests

from napari_mmseg.plugin import launch
from napari_mmseg.plugin.dice_panel import DicePanel
from napari_mmseg.plugin.sample_data import (
    CACHE_ENV,
    FILES,
    SampleDataError,
    sample_ct,
    sample_mr_other,
    sample_mr_t2,
)
from napari_mmseg.plugin.widget import SegmentationWidget
from napari_mmseg.scan_io import SCAN_DTYPES

SEEDS = {"totalsegmentator": "totalsegmentator-examples", "chaos-t2": "chaos-t2-sample"}


def no_network(*args, **kwargs):
    raise requests.ConnectionError("network blocked in tests")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(requests, "get", no_network)


@pytest.fixture
def sample_cache(tmp_path, data_dir, monkeypatch, offline):
    """pooch's cache, filled with the very files pooch would download."""
    for name in FILES:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / SEEDS[target.parent.name] / target.name, target)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("sample", "shape", "convention"),
    [(sample_ct, (30, 101, 122), "TotalSegmentator"), (sample_mr_t2, (31, 256, 256), "CHAOS"),
     (sample_mr_other, (20, 91, 117), "TotalSegmentator")],
)
def test_each_sample_is_a_scan_with_aligned_reference_labels(sample_cache, sample, shape, convention):
    (image, image_kwargs, image_type), (labels, labels_kwargs, labels_type) = sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert image.shape == labels.shape == shape
    assert image.dtype in SCAN_DTYPES  # as stored (the CT is int16), never float64
    for key in ("scale", "translate"):
        assert np.array_equal(image_kwargs[key], labels_kwargs[key])
    assert labels_kwargs["name"].endswith(f"({convention})")
    assert "Liver" in set(labels_kwargs["features"]["organ"])


def test_offline_without_a_cached_file_says_what_to_do(tmp_path, monkeypatch, offline):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(SampleDataError, match="Could not download the sample example_ct_sm.nii.gz") as error:
        sample_ct()
    assert "https://github.com/wasserth/TotalSegmentator" in str(error.value)
    assert str(tmp_path) in str(error.value)


@pytest.mark.gui
def test_launcher_window_shows_the_organs_in_colour_where_a_radiologist_expects(
    sample_cache, make_napari_viewer, monkeypatch, qtbot
):
    """A screenshot of the real, shown window: the labels overlay is drawn, liver red on the
    screen's left (patient right), the left kidney yellow on the screen's right."""
    monkeypatch.setattr(launch.napari, "Viewer", lambda **kwargs: make_napari_viewer(show=True, **kwargs))
    viewer = launch.open_viewer("ct")
    docked = viewer.window.dock_widgets.values()
    assert {type(w) for w in docked} == {SegmentationWidget, DicePanel}
    image = viewer.layers["example_ct"]
    viewer.dims.set_point(0, image.data_to_world((12, 0, 0))[0])  # a slice through both kidneys
    qtbot.wait(200)

    window = viewer.screenshot(canvas_only=False, flash=False)
    assert window.shape[0] > 300 and window[..., :3].std() > 20, "the window screenshot is blank"
    canvas = viewer.screenshot(canvas_only=True, flash=False).astype(int)
    red, green, blue = canvas[..., 0], canvas[..., 1], canvas[..., 2]
    liver = (red > green + 60) & (red > blue + 60)
    kidney_left = (red > blue + 60) & (green > blue + 60)
    assert liver.sum() > 500 and kidney_left.sum() > 100
    width = canvas.shape[1]
    assert np.argwhere(liver)[:, 1].mean() < width / 2 < np.argwhere(kidney_left)[:, 1].mean()


@pytest.mark.gui
def test_launcher_offline_opens_the_widgets_without_the_sample(tmp_path, make_napari_viewer, monkeypatch, offline):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(launch.napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    warnings = []
    monkeypatch.setattr(launch, "show_warning", warnings.append)
    viewer = launch.open_viewer("ct")
    assert len(viewer.layers) == 0
    assert len(viewer.window.dock_widgets) == 2
    assert "Could not download" in warnings[0]
