"""Reader and writer: scans open as images, label files as named organs, and saved labels
carry exactly the source scan's geometry. No display needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Labels
from npe2 import PluginManager, PluginManifest
from synthetic import write_dicom_series

from napari_mmseg.errors import ScanError
from napari_mmseg.organs import ORGAN_BY_NAME
from napari_mmseg.plugin.conventions import CONVENTIONS, guess_label_names, parse_mapping, to_our_ids
from napari_mmseg.plugin.layers import CONVENTION, GEOMETRY, LABEL_NAMES, SCAN, label_features
from napari_mmseg.plugin.reader import get_reader

LIVER_RED = np.array([230, 25, 25, 255]) / 255


def read(path: Path):
    reader = get_reader(str(path))
    assert reader is not None, f"no reader for {path}"
    (layer,) = reader(str(path))
    return layer


@pytest.fixture
def save_labels():
    """Save through napari's own File › Save path, which picks the writer from the manifest."""
    PluginManager.instance().discover()

    def save(path: Path, data: np.ndarray, **kwargs) -> list[str]:
        return Labels(data, **kwargs).save(str(path), plugin="napari-mmseg")

    return save


def test_manifest_is_valid_and_declares_every_contribution():
    manifest = PluginManifest.from_distribution("napari-mmseg")  # through the entry point
    contributions = manifest.contributions
    assert {w.display_name for w in contributions.widgets} == {"Organ segmentation", "Dice per organ",
                                                                "Assisted correction"}
    assert {s.key for s in contributions.sample_data} == {"ct", "mr_t2", "mr_other"}
    assert contributions.readers[0].accepts_directories
    assert contributions.writers[0].layer_types == ["labels"]


def test_ct_opens_as_an_image_on_its_physical_grid(ct_scan):
    data, kwargs, kind = read(ct_scan)
    assert kind == "image"
    assert data.shape == (30, 101, 122)
    assert np.allclose(kwargs["scale"], (3.0, 3.0, 3.0))
    # The file is RAS-stored; the displayed corner is the patient's right-anterior-inferior one.
    assert np.allclose(kwargs["translate"], (94.3017578, -311.3190002, -185.0436707))
    assert kwargs["contrast_limits"] == (-160.0, 240.0)
    assert kwargs["metadata"][SCAN] == str(ct_scan)
    assert kwargs["metadata"][GEOMETRY].source.orientation == "RAS"


def test_totalsegmentator_labels_open_as_named_organs_in_the_papers_colours(data_dir):
    data, kwargs, kind = read(data_dir / "totalsegmentator-examples" / "example_seg.nii.gz")
    assert kind == "labels"
    assert data.dtype == np.uint8
    assert kwargs["metadata"][CONVENTION] == "TotalSegmentator"
    assert kwargs["metadata"][LABEL_NAMES][5] == "liver"
    assert np.allclose(kwargs["colormap"].map(np.array([5]))[0], LIVER_RED)
    features = kwargs["features"].set_index("index")
    assert features.loc[5, "organ"] == "Liver"
    assert features.loc[5, "volume_ml"] == f"{(data == 5).sum() * 27 / 1000:.1f}"  # as the status bar shows it



def test_the_status_bar_shows_a_large_volume_in_ml_with_one_decimal():
    """napari writes float features as `1.08e+04`: the volume is text with one decimal."""
    data = np.ones((40, 100, 100), np.uint8)
    layer = Labels(data, features=label_features(data, {1: "liver"}, (3.0, 3.0, 3.0)))
    assert layer.get_status((5, 5, 5), world=True)["value"] == "1; organ: Liver, volume_ml: 10800.0"


def test_float_label_file_opens_as_labels(data_dir):
    """CHAOS publishes its labels as float64: still a label map, named by the CHAOS convention."""
    data, kwargs, kind = read(data_dir / "chaos-t2-sample" / "label_2.nii.gz")
    assert kind == "labels"
    assert set(np.unique(data)) == {0, 1, 2, 3, 4}
    assert kwargs["metadata"][CONVENTION] == "CHAOS"


def test_nnunet_labels_take_their_names_from_dataset_json(data_dir, tmp_path):
    dataset = tmp_path / "Dataset001_test"
    (dataset / "labelsTr").mkdir(parents=True)
    shutil.copy(data_dir / "abdomen-ct-btcv" / "dataset.json", dataset / "dataset.json")
    labels = sitk.Image(6, 5, 4, sitk.sitkUInt8)
    labels[1, 1, 1] = 6
    sitk.WriteImage(labels, str(dataset / "labelsTr" / "case_001.nii.gz"))
    data, kwargs, kind = read(dataset / "labelsTr" / "case_001.nii.gz")
    assert kind == "labels"
    assert kwargs["metadata"][CONVENTION] == "dataset.json"
    assert kwargs["metadata"][LABEL_NAMES][6] == "liver"
    assert np.allclose(kwargs["colormap"].map(np.array([6]))[0], LIVER_RED)


def test_dicom_series_folder_opens_as_one_volume(tmp_path):
    values = (np.arange(4 * 6 * 5).reshape(4, 6, 5) * 7 - 900).astype(np.int16)
    write_dicom_series(tmp_path, values, [2.5 * z for z in range(4)])
    data, kwargs, kind = read(tmp_path)
    assert kind == "image"
    assert data.shape == values.shape
    assert np.array_equal(data, values)
    assert np.allclose(kwargs["scale"], (2.5, 0.8, 0.8))


def test_reader_declines_other_files_and_explains_bad_ones(tmp_path):
    assert get_reader(str(tmp_path / "photo.png")) is None
    flat = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(flat))
    with pytest.raises(ScanError, match="2-D"):
        get_reader(str(flat))(str(flat))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not an image")
    with pytest.raises(ScanError, match="corrupt"):
        get_reader(str(corrupt))(str(corrupt))


@pytest.mark.parametrize(
    ("labels", "suffix"),
    [("totalsegmentator-examples/example_seg.nii.gz", ".nii.gz"),
     ("totalsegmentator-examples/example_seg.nii.gz", ".nrrd"),
     ("chaos-t2-sample/label_2.nii.gz", ".nii.gz")],
)
def test_written_labels_match_the_source_file_exactly(data_dir, tmp_path, save_labels, labels, suffix):
    """Read → write → read: same voxels and same geometry as the file, including the
    TotalSegmentator CT's diag(-1, -1, 1) direction and CHAOS's slightly oblique one."""
    source = data_dir / labels
    data, kwargs, _ = read(source)
    out = tmp_path / f"corrected{suffix}"
    assert save_labels(out, data, **kwargs) == [str(out)]
    original, written = sitk.ReadImage(str(source)), sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(original))
    assert written.GetDirection() == pytest.approx(original.GetDirection(), abs=1e-6)
    assert written.GetOrigin() == pytest.approx(original.GetOrigin(), abs=1e-4)
    assert written.GetSpacing() == pytest.approx(original.GetSpacing(), abs=1e-6)
    assert written.GetPixelID() == sitk.sitkUInt8
    assert not list(tmp_path.glob(".corrected*")), "a temporary file was left behind"


def test_writer_refuses_to_overwrite_the_scan(ct_scan, tmp_path, save_labels):
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(ct_scan, scan)
    data, kwargs, _ = read(scan)
    placement = {key: kwargs[key] for key in ("scale", "translate", "metadata")}
    with pytest.raises(ScanError, match="over the scan"):
        save_labels(scan, np.zeros(data.shape, np.uint8), **placement)
    assert sitk.ReadImage(str(scan)).GetPixelID() == sitk.sitkInt16


def test_writer_uses_the_layer_transform_without_our_metadata(tmp_path, save_labels):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3] = 2
    out = tmp_path / "plain.nii.gz"
    save_labels(out, labels, scale=(2.0, 1.5, 0.5), translate=(10, 20, 30))
    written = sitk.ReadImage(str(out))
    assert written.GetSpacing() == (0.5, 1.5, 2.0)
    assert written.GetOrigin() == (30.0, 20.0, 10.0)
    assert sitk.GetArrayFromImage(written)[1, 2, 3] == 2
    with pytest.raises(ScanError, match="0–255"):
        save_labels(out, labels.astype(np.int32) + 300)


def test_label_conventions_map_to_our_ids_by_name(tmp_path):
    assert parse_mapping("liver=6, spleen=1; Right Kidney=2\n3:kidney_left") == {
        6: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left"
    }
    for bad in ("liver", "liver=x", "heart=3", ""):
        with pytest.raises(ValueError):
            parse_mapping(bad)
    btcv = np.array([0, 1, 2, 3, 6, 7])
    assert to_our_ids(btcv, CONVENTIONS["BTCV"]).tolist() == [
        0, ORGAN_BY_NAME["spleen"].label, ORGAN_BY_NAME["kidney_right"].label, ORGAN_BY_NAME["kidney_left"].label,
        ORGAN_BY_NAME["liver"].label, 0,
    ]
    assert guess_label_names(tmp_path / "pred.nii.gz", max_id=4)[1] == "napari-mmseg"
    assert guess_label_names(tmp_path / "pred.nii.gz", max_id=40) == ({}, "unknown")
    dataset = tmp_path / "d"
    (dataset / "labelsTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Liver"}}))
    assert guess_label_names(dataset / "labelsTr" / "x.nii.gz", max_id=1) == ({1: "Liver"}, "dataset.json")


def test_plugin_modules_do_not_import_torch():
    """napari imports the manifest's modules when it starts or opens a file; torch waits
    until a segmentation or correction panel opens."""
    code = (
        "import sys\n"
        "import napari_mmseg.plugin.reader, napari_mmseg.plugin.writer, napari_mmseg.plugin.sample_data\n"
        "import napari_mmseg.plugin.widget, napari_mmseg.plugin.dice_panel, napari_mmseg.plugin.launch\n"
        "import napari_mmseg.plugin.correction\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
