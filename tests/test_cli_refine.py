"""`mmseg refine`: hints in mm applied to labels; bad hints end in one line with nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.cli import main
from napari_mmseg.correction.hints import Hint, point_mm_of, write_hints

BUNDLED = Path(__file__).resolve().parents[1] / "napari_mmseg" / "weights" / "correction.safetensors"


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def scan_and_labels(tmp_path) -> tuple[Path, Path, sitk.Image]:
    values = np.random.default_rng(0).normal(0, 20, (8, 16, 16)).astype(np.int16)
    scan = sitk.GetImageFromArray(values)
    scan.SetSpacing((2.0, 2.0, 4.0))
    scan.SetOrigin((10.0, -20.0, 50.0))
    labels = np.zeros(values.shape, np.uint8)
    labels[2:6, 4:12, 4:12] = 1
    labels_image = sitk.GetImageFromArray(labels)
    labels_image.CopyInformation(scan)
    sitk.WriteImage(scan, str(tmp_path / "scan.nii.gz"))
    sitk.WriteImage(labels_image, str(tmp_path / "labels.nii.gz"))
    return tmp_path / "scan.nii.gz", tmp_path / "labels.nii.gz", scan


def _csv(path: Path, body: str) -> Path:
    path.write_text(f"x,y,z,organ,sign\n{body}\n")
    return path


@pytest.mark.parametrize(
    ("hints", "message"),
    [
        (lambda d: _csv(d / "h.csv", "500,0,0,spleen,+"), "h.csv line 2: the point (500.0, 0.0, 0.0) mm lies outside "
                                                          "the scan (its voxels span x 10.0..40.0, y -20.0..10.0, z "
                                                          "50.0..78.0 mm)."),
        (lambda d: _csv(d / "h.csv", "20,-10,60,pancreas,+"), "h.csv line 2: unknown organ 'pancreas'; use one of "
                                                             "background, liver, spleen, kidney_right, kidney_left."),
        (lambda d: (d / "h.csv").touch() or d / "h.csv", "h.csv is empty: it holds no hints."),
        (lambda d: _csv(d / "h.csv", "20,-10,60,liver,*"), "h.csv line 2: the sign is '*'"),
    ],
)
def test_bad_hints_end_in_one_line_and_nothing_is_written(capsys, tmp_path, scan_and_labels, hints, message):
    scan, labels, _ = scan_and_labels
    out = tmp_path / "out" / "refined.nii.gz"
    code, stdout, err = run(capsys, "refine", scan, "--labels", labels, "--hints", hints(tmp_path), "-o", out,
                            "--modality", "CT")
    assert code == 1 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("mmseg: error: ") and message in err
    assert not out.parent.exists()


def test_refuses_to_overwrite_and_to_write_over_an_input(capsys, tmp_path, scan_and_labels):
    scan, labels, image = scan_and_labels
    hints = write_hints(tmp_path / "h.json", [Hint(2, True, ((4, 8, 8),))], image)
    out = tmp_path / "refined.nii.gz"
    out.write_bytes(b"mine")
    code, _, err = run(capsys, "refine", scan, "--labels", labels, "--hints", hints, "-o", out, "--modality", "CT")
    assert code == 1 and "exists; pass --overwrite" in err and out.read_bytes() == b"mine"
    for given in (labels, scan):
        before = given.read_bytes()
        code, _, err = run(capsys, "refine", scan, "--labels", labels, "--hints", hints, "-o", given,
                           "--modality", "CT", "--overwrite")
        assert code == 1 and "over an input" in err and given.read_bytes() == before


def test_labels_off_the_scans_grid_are_refused(capsys, tmp_path, scan_and_labels):
    scan, _, image = scan_and_labels
    other = sitk.Image(16, 16, 8, sitk.sitkUInt8)
    other.SetSpacing((2.0, 2.0, 5.0))
    sitk.WriteImage(other, str(tmp_path / "other.nii.gz"))
    hints = write_hints(tmp_path / "h.csv", [Hint(2, True, ((4, 8, 8),))], image)
    code, _, err = run(capsys, "refine", scan, "--labels", tmp_path / "other.nii.gz", "--hints", hints,
                       "-o", tmp_path / "o.nii.gz", "--modality", "CT")
    assert code == 1 and "not on the scan's grid" in err and not (tmp_path / "o.nii.gz").exists()


@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"no bundled correction weights at {BUNDLED}")
def test_a_click_in_a_missed_spleen_is_applied_and_written_on_the_scans_grid(capsys, tmp_path, data_dir):
    """Hints in mm reach the model at the right voxel, one click brings most of a missed
    organ back, the summary says what changed, the file has the scan's geometry."""
    from napari_mmseg.io.datasets import totalsegmentator_examples

    case = totalsegmentator_examples(data_dir / "totalsegmentator-examples")[0]
    scan, reference = case.load()
    truth = sitk.GetArrayFromImage(reference)
    labels = truth.copy()
    labels[labels == 2] = 0  # the spleen missed
    start = sitk.GetImageFromArray(labels)
    start.CopyInformation(scan)
    sitk.WriteImage(start, str(tmp_path / "start.nii.gz"))
    spleen = np.argwhere(truth == 2)
    centre = tuple(spleen[np.argmin(((spleen - spleen.mean(0)) ** 2).sum(1))])  # a spleen voxel near its centre
    hints = tmp_path / "h.csv"
    hints.write_text("x,y,z,organ,sign\n{},{},{},spleen,+\n".format(*point_mm_of(centre, scan)))
    out = tmp_path / "refined.nii.gz"
    code, stdout, err = run(capsys, "refine", case.image, "--labels", tmp_path / "start.nii.gz", "--hints", hints,
                            "-o", out, "--modality", "CT", "--device", "cpu")
    assert code == 0, err
    added = np.count_nonzero(sitk.GetArrayFromImage(sitk.ReadImage(str(out))) == 2)
    voxel_ml = float(np.prod(scan.GetSpacing())) / 1000
    summary = (f"hint 1: +spleen (1 point): {added} voxels changed ({added * voxel_ml:.1f} ml), "
               f"spleen {added * voxel_ml:+.1f} ml, ")
    assert re.fullmatch(re.escape(summary) + r"\d+\.\d\d s", stdout.splitlines()[0])
    assert stdout.splitlines()[1:] == [f"wrote {out}"]
    refined_image = sitk.ReadImage(str(out))
    assert refined_image.GetSize() == scan.GetSize() and refined_image.GetOrigin() == scan.GetOrigin()
    assert refined_image.GetDirection() == scan.GetDirection()
    refined = sitk.GetArrayFromImage(refined_image)
    assert refined[centre] == 2
    found = np.count_nonzero((refined == 2) & (truth == 2)) / np.count_nonzero(truth == 2)
    assert found > 0.5 and np.count_nonzero((refined == 2) & (truth != 2)) < 0.5 * added, found
    assert np.array_equal(refined[refined != 2], labels[refined != 2])  # a + spleen hint only adds spleen


def test_labels_in_another_numbering_are_corrected_and_written_in_their_own_ids(capsys, tmp_path, scan_and_labels):
    """CHAOS numbers the spleen 4 (this tool's left kidney): a spleen hint must add 4s, and
    every voxel it did not correct keeps its id."""
    scan_path, _, scan = scan_and_labels
    chaos = np.zeros((8, 16, 16), np.uint8)
    chaos[2:6, 4:12, 1:6] = 1  # liver (CHAOS 1)
    chaos[2:6, 4:12, 12:15] = 4  # spleen (CHAOS 4)
    image = sitk.GetImageFromArray(chaos)
    image.CopyInformation(scan)
    sitk.WriteImage(image, str(tmp_path / "chaos.nii.gz"))
    centre = (4, 8, 9)  # background between them
    hints = _csv(tmp_path / "h.csv", "{},{},{},spleen,+".format(*point_mm_of(centre, scan)))
    out = tmp_path / "o.nii.gz"
    code, _, err = run(capsys, "refine", scan_path, "--labels", tmp_path / "chaos.nii.gz", "--label-ids", "CHAOS",
                       "--hints", hints, "-o", out, "--modality", "CT", "--device", "cpu")
    assert code == 0, err
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    changed = refined != chaos
    assert refined[centre] == 4 and changed.any()
    assert set(np.unique(refined[changed])) == {4}



def test_labels_whose_organs_lie_on_the_wrong_sides_in_our_ids_get_a_warning(capsys, tmp_path, scan_and_labels):
    scan_path, _, scan = scan_and_labels
    chaos = np.zeros((8, 16, 16), np.uint8)
    chaos[2:6, 4:12, 1:6] = 1  # liver on the patient's right (low x in LPS)
    chaos[2:6, 4:12, 12:15] = 4  # CHAOS's spleen: this tool's left kidney, on the patient's left: fine
    chaos[2:6, 2:4, 12:15] = 3  # CHAOS's left kidney: this tool's right kidney, on the patient's left: wrong
    image = sitk.GetImageFromArray(chaos)
    image.CopyInformation(scan)
    sitk.WriteImage(image, str(tmp_path / "chaos.nii.gz"))
    hints = _csv(tmp_path / "h.csv", "{},{},{},liver,+".format(*point_mm_of((4, 8, 6), scan)))
    code, _, err = run(capsys, "refine", scan_path, "--labels", tmp_path / "chaos.nii.gz", "--hints", hints,
                       "-o", tmp_path / "o.nii.gz", "--modality", "CT", "--device", "cpu")
    assert code == 0 and "warning" in err and "--label-ids" in err
