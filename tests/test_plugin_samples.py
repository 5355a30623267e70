"""Sample data through napari's File › Open Sample and `mmseg-napari`, with the network
blocked: the embedded files first (as a checkout and as a wheel carry them), pooch's cache
for a file that is not embedded, and the launcher's real window on screen."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from setuptools import find_packages

from napari_mmseg.io.scan_io import SCAN_DTYPES
from napari_mmseg.plugin import launch, sample_data
from napari_mmseg.plugin.correction import CorrectionPanel
from napari_mmseg.plugin.dice_panel import DicePanel
from napari_mmseg.plugin.sample_data import (
    CACHE_ENV,
    FILES,
    SampleDataError,
    embedded_dir,
    sample_ct,
    sample_mr_other,
    sample_mr_t2,
)
from napari_mmseg.plugin.widget import SegmentationWidget

ROOT = Path(__file__).resolve().parents[1]
SEEDS = {"totalsegmentator": "totalsegmentator-examples", "chaos-t2": "chaos-t2-sample"}


def no_network(*args, **kwargs):
    raise OSError("network blocked in tests")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No socket can connect or resolve a name, and pooch's cache is an empty folder."""
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def not_embedded(tmp_path, monkeypatch):
    """An installation whose embedded samples were left out."""
    monkeypatch.setattr(sample_data, "embedded_dir", lambda: tmp_path / "nothing embedded")


@pytest.mark.parametrize(
    ("sample", "shape", "convention"),
    [(sample_ct, (30, 101, 122), "TotalSegmentator"), (sample_mr_t2, (31, 256, 256), "CHAOS"),
     (sample_mr_other, (20, 91, 117), "TotalSegmentator")],
)
def test_each_sample_is_a_scan_with_aligned_reference_labels(offline, sample, shape, convention):
    (image, image_kwargs, image_type), (labels, labels_kwargs, labels_type) = sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert image.shape == labels.shape == shape
    assert image.dtype in SCAN_DTYPES  # as stored (the CT is int16), never float64
    for key in ("scale", "translate"):
        assert np.array_equal(image_kwargs[key], labels_kwargs[key])
    assert labels_kwargs["name"].endswith(" reference") and labels_kwargs["metadata"]["mmseg_convention"] == convention
    assert "Liver" in set(labels_kwargs["features"]["organ"])
    assert image_kwargs["metadata"]["mmseg_scan"].startswith(str(embedded_dir()))
    assert not any(offline.iterdir()), "nothing was downloaded"


def test_embedded_samples_are_the_published_voxels(data_dir):
    """TotalSegmentator's files byte for byte; CHAOS's with the same voxels and geometry in a
    smaller storage type (float64 → int16 / uint8, every published value a whole number)."""
    for name, (_, sha256) in FILES.items():
        embedded, published = embedded_dir() / name, data_dir / SEEDS[name.split("/")[0]] / Path(name).name
        if name.startswith("totalsegmentator/"):
            assert hashlib.sha256(embedded.read_bytes()).hexdigest() == sha256
            continue
        ours, theirs = sitk.ReadImage(str(embedded)), sitk.ReadImage(str(published))
        assert ours.GetPixelID() in (sitk.sitkInt16, sitk.sitkUInt8)
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
        for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(ours, attribute)() == getattr(theirs, attribute)()
    for licence in ("totalsegmentator/LICENSE", "chaos-t2/README.md"):
        assert (embedded_dir() / licence).is_file()
    assert "NonCommercial" in (embedded_dir() / "chaos-t2" / "README.md").read_text(encoding="utf-8")


def test_a_sample_not_embedded_comes_from_the_download_cache(not_embedded, offline, data_dir):
    for name in FILES:
        target = offline / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / SEEDS[target.parent.name] / target.name, target)
    image, labels = sample_mr_t2()
    assert image[1]["metadata"]["mmseg_scan"].startswith(str(offline))
    assert image[0].shape == labels[0].shape == (31, 256, 256)


def test_offline_without_an_embedded_or_cached_file_says_what_to_do(not_embedded, offline):
    with pytest.raises(SampleDataError, match="Could not download the sample example_ct_sm.nii.gz") as error:
        sample_ct()
    assert "https://github.com/wasserth/TotalSegmentator" in str(error.value)
    assert str(offline) in str(error.value)


def test_the_package_list_names_every_package():
    """pyproject lists the packages (so sample_data/ can be mapped in): none may be forgotten."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"]
    assert set(listed) == {*find_packages(str(ROOT), include=["napari_mmseg*"]), "napari_mmseg.sample_data"}


def test_a_wheel_carries_the_samples_where_the_plugin_looks(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "runs"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
         "-w", str(tmp_path / "dist")],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "installed")
    installed = tmp_path / "installed" / "napari_mmseg"
    for name in [*FILES, "totalsegmentator/LICENSE", "chaos-t2/README.md"]:
        assert (installed / "sample_data" / name).is_file(), name
    found = subprocess.run(
        [sys.executable, "-c", "from napari_mmseg.plugin.sample_data import embedded_dir; print(embedded_dir())"],
        cwd=tmp_path / "installed", check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert found == str(installed / "sample_data")


@pytest.mark.gui
def test_launcher_offline_shows_the_ct_and_its_reference_in_colour_where_a_radiologist_expects(
    offline, make_napari_viewer, monkeypatch, qtbot
):
    """`mmseg-napari` with the network blocked: the CT and its reference open, the widget is
    ready to run on the CT, and a screenshot of the real, shown window has the labels overlay
    drawn, liver red on the screen's left (patient right), left kidney yellow on the right."""
    monkeypatch.setattr(launch.napari, "Viewer", lambda **kwargs: make_napari_viewer(show=True, **kwargs))
    viewer = launch.open_viewer("ct")
    assert [layer.name for layer in viewer.layers] == ["example_ct", "example_ct reference"]
    docked = viewer.window.dock_widgets.values()
    assert {type(w) for w in docked} == {SegmentationWidget, CorrectionPanel, DicePanel}
    widget = next(w for w in docked if isinstance(w, SegmentationWidget))
    assert widget["scan"].value is viewer.layers["example_ct"] and widget["modality"].value == "CT"
    assert widget["model"].value != "file" and widget["run"].enabled
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
@pytest.mark.parametrize("size", [None, (1600, 1000)], ids=["default size", "1600x1000"])
def test_launcher_first_view_fits_the_whole_scan_and_cuts_no_text(offline, make_napari_viewer, monkeypatch, qtbot,
                                                                   size):
    """The view is fitted to the canvas the docked panels leave (not to the bare window), at
    napari's default window size and at 1600 × 1000; no line of the panels is cut; the Dice
    panel does not offer the reference as the prediction."""
    monkeypatch.setattr(launch.napari, "Viewer", lambda **kwargs: make_napari_viewer(show=True, **kwargs))
    viewer = launch.open_viewer("ct")
    if size is not None:
        viewer.window.resize(*size)
    qtbot.wait(300)
    extent = viewer.layers.extent.world[:, 1:]  # (y, x) of the scan in world millimetres
    height, width = viewer.canvas.size
    on_screen = viewer.scene.camera.zoom * (extent[1] - extent[0])
    assert (on_screen <= (height, width)).all(), f"scan {on_screen} px in a {width} × {height} canvas"
    assert (on_screen / (height, width)).max() == pytest.approx(0.95, abs=0.01), "fitted: 95 % of the canvas"
    assert np.allclose(viewer.scene.camera.center[1:], extent.mean(axis=0))

    docked = viewer.window.dock_widgets.values()
    widget = next(w for w in docked if isinstance(w, SegmentationWidget))
    correction = next(w for w in docked if isinstance(w, CorrectionPanel))
    assert not widget.native.visibleRegion().isEmpty(), "the segmentation panel is in front"
    assert correction.native.visibleRegion().isEmpty(), "correction: a tab behind segmentation"
    hint = widget["modality_hint"].native
    assert hint.isVisible() and "Suggested from the intensities: CT" in hint.text()
    assert hint.height() >= hint.heightForWidth(hint.width()), "the modality hint is cut"
    panel = next(w for w in docked if isinstance(w, DicePanel))
    assert panel["reference"].value is viewer.layers["example_ct reference"]
    assert panel["prediction"].value is None

    viewer.scene.camera.zoom *= 2  # the user zooms: a later resize leaves their view alone
    zoom = viewer.scene.camera.zoom
    viewer.window.resize(1200, 800)
    qtbot.wait(200)
    assert viewer.scene.camera.zoom == zoom


@pytest.mark.gui
def test_launcher_offline_without_embedded_samples_opens_the_widgets_alone(
    not_embedded, offline, make_napari_viewer, monkeypatch
):
    monkeypatch.setattr(launch.napari, "Viewer", lambda **kwargs: make_napari_viewer(**kwargs))
    warnings = []
    monkeypatch.setattr(launch, "show_warning", warnings.append)
    viewer = launch.open_viewer("ct")
    assert len(viewer.layers) == 0
    assert len(viewer.window.dock_widgets) == 3
    assert "Could not download" in warnings[0]
