"""Reading scans, rejecting what cannot be segmented, and writing labels with the scan's geometry."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.errors import OutputError, ScanError
from napari_mmseg.io.scan_io import read_labels, read_scan, same_geometry, write_labels


def volume(shape=(6, 7, 8), direction=(0, 1, 0, -1, 0, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-10.0, 20.0, 30.0))
    img.SetDirection(direction)
    return img


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_read_keeps_geometry(tmp_path, suffix):
    img = volume()
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(img, str(path))
    back = read_scan(path)
    assert same_geometry(back, img)
    assert back.GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize(
    ("stored", "kept"),
    [(np.int16, np.int16), (np.uint8, np.uint8), (np.uint16, np.uint16), (np.float32, np.float32),
     (np.float64, np.float32), (np.int32, np.float32)],
)
def test_scans_keep_small_voxel_types_and_the_rest_become_float32(tmp_path, stored, kept):
    values = (np.arange(6 * 7 * 8).reshape(6, 7, 8) % 200).astype(stored)
    img = sitk.GetImageFromArray(values)
    sitk.WriteImage(img, str(tmp_path / "scan.nii.gz"))
    back = sitk.GetArrayFromImage(read_scan(tmp_path / "scan.nii.gz"))
    assert back.dtype == kept
    np.testing.assert_array_equal(back, values.astype(kept))


def test_read_dicom_series_folder(tmp_path):
    img = sitk.Cast(volume() * 100, sitk.sitkInt16)
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")
        s.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(s)
    back = read_scan(tmp_path)
    assert back.GetSize() == img.GetSize()
    assert np.allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-3)
    assert np.allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-3)


def write(tmp_path, name, array):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def write4d(tmp_path):
    path = tmp_path / "series.nii.gz"
    frames = [sitk.GetImageFromArray(np.random.rand(3, 4, 5).astype(np.float32)) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write(p, "flat.nii.gz", np.ones((5, 6), np.float32)), "2-D"),
        (lambda p: write4d(p), "4-D"),
        (lambda p: write(p, "slice.nii.gz", np.random.rand(1, 5, 6).astype(np.float32)), "single slice"),
        (lambda p: write(p, "nan.nrrd", np.full((4, 5, 6), np.nan, np.float32)), "NaN"),
        (lambda p: write(p, "one-nan.mha", np.where(np.arange(120).reshape(4, 5, 6) == 7, np.nan, 1.0)),
         "1 of 120 voxels .*NaN"),
        (lambda p: write(p, "one-inf.nrrd", np.where(np.arange(120).reshape(4, 5, 6) == 7, -np.inf, 1.0)),
         "infinite"),
        # NIfTI I/O would turn NaN into 0: the file's own voxels are counted instead
        (lambda p: write(p, "nan.nii.gz", np.full((4, 5, 6), np.nan, np.float32)), "120 of 120 voxels .*NaN .*as 0"),
        (lambda p: write(p, "one-nan.nii", np.where(np.arange(120).reshape(4, 5, 6) == 7, np.nan, 1.0)),
         "1 of 120 voxels .*NaN"),
        (lambda p: write(p, "const.nii.gz", np.zeros((4, 5, 6), np.float32)), "empty"),
    ],
)
def test_bad_volumes_get_a_clear_message(tmp_path, make, message):
    with pytest.raises(ScanError, match=message):
        read_scan(make(tmp_path))


def test_rgb_is_rejected(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(ScanError, match="RGB"):
        read_scan(tmp_path / "rgb.mha")


def test_missing_empty_corrupt_and_truncated_files(tmp_path):
    with pytest.raises(ScanError, match="does not exist"):
        read_scan(tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ScanError, match="empty"):
        read_scan(tmp_path / "empty.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not an image" * 100))
    with pytest.raises(ScanError, match="corrupt"):
        read_scan(tmp_path / "junk.nii.gz")
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(volume((20, 30, 40)), str(good))
    (tmp_path / "cut.nii.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ScanError, match="corrupt or\\s+truncated|truncated"):
        read_scan(tmp_path / "cut.nii.gz")
    with pytest.raises(ScanError, match="without a DICOM series"):
        read_scan(tmp_path)


def as_image(values: np.ndarray, scan: sitk.Image, pixel: int, nudge: float) -> sitk.Image:
    image = sitk.Cast(sitk.GetImageFromArray(values), pixel)
    image.CopyInformation(scan)
    image.SetOrigin(tuple(o + nudge for o in scan.GetOrigin()))
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize(
    "form",
    [lambda v, scan: v,  # a numpy array
     lambda v, scan: as_image(v, scan, sitk.sitkUInt8, 0.0),  # what segment_image returns
     lambda v, scan: as_image(v, scan, sitk.sitkUInt8, 1e-3),  # nearly the scan's grid
     lambda v, scan: as_image(v, scan, sitk.sitkUInt16, 0.0)],  # as read_labels returns them
)
def test_write_labels_has_exactly_the_scans_geometry(tmp_path, suffix, form):
    scan = volume()
    labels = np.random.default_rng(1).integers(0, 5, size=(6, 7, 8)).astype(np.uint8)
    out = write_labels(form(labels, scan), tmp_path / f"labels{suffix}", scan)
    back = sitk.ReadImage(str(out))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert back.GetSize() == scan.GetSize()
    assert back.GetSpacing() == pytest.approx(scan.GetSpacing(), abs=1e-5)
    assert back.GetOrigin() == pytest.approx(scan.GetOrigin(), abs=1e-5)
    assert back.GetDirection() == pytest.approx(scan.GetDirection(), abs=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(back), labels)
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "no temporary file left behind"


def test_write_refuses_the_scan_itself_and_wrong_shapes(tmp_path):
    scan_path = tmp_path / "scan.nii.gz"
    scan = volume()
    sitk.WriteImage(scan, str(scan_path))
    before = scan_path.read_bytes()
    with pytest.raises(ScanError, match="over the scan"):
        write_labels(np.zeros((6, 7, 8), np.uint8), scan_path, scan, source=scan_path)
    assert scan_path.read_bytes() == before
    with pytest.raises(ScanError, match="do not fit"):
        write_labels(np.zeros((6, 7, 9), np.uint8), tmp_path / "l.nii.gz", scan)
    with pytest.raises(ScanError, match="use .nii.gz"):
        write_labels(np.zeros((6, 7, 8), np.uint8), tmp_path / "l.png", scan)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    scan = volume()
    out = tmp_path / "labels.nii.gz"
    write_labels(np.ones((6, 7, 8), np.uint8), out, scan)
    before = out.read_bytes()

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(OutputError, match="writer failed"):
        write_labels(np.zeros((6, 7, 8), np.uint8), out, scan, overwrite=True)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


def test_read_labels_rejects_fractions(tmp_path):
    path = write(tmp_path, "frac.nii.gz", np.full((4, 5, 6), 0.5, np.float32))
    with pytest.raises(ScanError, match="non-integer"):
        read_labels(path)


def test_nii_gz_is_read_even_beside_an_uncompressed_twin(tmp_path):
    """SimpleITK (nifticlib) silently opens `x.nii` when asked for `x.nii.gz` and both exist."""
    write(tmp_path, "scan.nii", np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    write(tmp_path, "scan.nii.gz", -np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    assert sitk.GetArrayViewFromImage(read_scan(tmp_path / "scan.nii.gz")).min() == -119
    assert sitk.GetArrayViewFromImage(read_scan(tmp_path / "scan.nii")).max() == 119


def test_twin_that_cannot_be_set_aside_gets_a_clear_message(tmp_path, monkeypatch):
    write(tmp_path, "scan.nii", np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    write(tmp_path, "scan.nii.gz", -np.arange(120, dtype=np.int16).reshape(4, 5, 6))

    def refused(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "symlink_to", refused)
    monkeypatch.setattr(shutil, "copyfile", refused)
    with pytest.raises(ScanError, match="scan.nii beside it .*No space left on device.*move one"):
        read_scan(tmp_path / "scan.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii", "scan.nii.gz"]
