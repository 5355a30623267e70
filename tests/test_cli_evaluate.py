"""`mmseg evaluate` reads the reference's ids right or refuses: dataset.json, a dataset's name,
name=id pairs, or the one numbering that explains the file, never a silent guess."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.cli import main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
CHAOS = {1: 1, 4: 2, 2: 3, 3: 4}  # CHAOS id → ours (liver, spleen, right kidney, left kidney)
TOTALSEG = {5: 1, 1: 2, 2: 3, 3: 4}


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def dice_column(stdout: str) -> dict[str, float]:
    rows = [line.split() for line in stdout.splitlines()[2:]]
    return {row[0]: float(row[1]) for row in rows}


def write_like(values: np.ndarray, like: sitk.Image, path: Path) -> Path:
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path))
    return path


def damaged_prediction(reference: Path, to_ours: dict[int, int], path: Path) -> tuple[Path, dict[str, float]]:
    """The reference in our ids with the front half of each organ's slices removed, and its true Dice."""
    ref_img = sitk.ReadImage(str(reference))
    ref = sitk.GetArrayFromImage(ref_img)
    ours = np.zeros(ref.shape, np.uint8)
    for src, dst in to_ours.items():
        ours[ref == src] = dst
    pred = ours.copy()
    pred[: ref.shape[0] // 3][pred[: ref.shape[0] // 3] == 1] = 0  # part of the liver missed
    pred[ours == 2] = 3 * (np.arange(ours.size).reshape(ours.shape)[ours == 2] % 2 == 0)  # spleen half right kidney
    expected = {}
    for name, label in (("liver", 1), ("spleen", 2), ("kidney_right", 3), ("kidney_left", 4)):
        p, r = pred == label, ours == label
        expected[name] = 2 * (p & r).sum() / (p.sum() + r.sum())
    return write_like(pred, ref_img, path), expected


@pytest.mark.parametrize(("reference", "to_ours", "dataset"), [
    (SAMPLES / "chaos-t2" / "label_2.nii.gz", CHAOS, "CHAOS"),
    (SAMPLES / "totalsegmentator" / "example_seg.nii.gz", TOTALSEG, "TotalSegmentator"),
    (SAMPLES / "totalsegmentator" / "example_seg_mr.nii.gz", TOTALSEG, "TotalSegmentator"),
])
def test_the_samples_are_scored_right_without_ref_labels(capsys, tmp_path, reference, to_ours, dataset):
    """CHAOS's 1–4 are not this tool's 1–4 (the spleen is 4, not 2): the organs' sides tell;
    TotalSegmentator's 117 ids fit only its own numbering."""
    pred, expected = damaged_prediction(reference, to_ours, tmp_path / "pred.nii.gz")
    code, stdout, err = run(capsys, "evaluate", pred, reference)
    assert code == 0, err
    assert stdout.startswith(f"reference ids ({dataset}, inferred")
    assert dice_column(stdout) == pytest.approx({**expected, "mean": np.mean(list(expected.values()))}, abs=1e-4)


def test_this_tools_own_labels_are_recognised(capsys, tmp_path):
    ref_img = sitk.ReadImage(str(SAMPLES / "chaos-t2" / "label_2.nii.gz"))
    lut = np.zeros(5, np.uint8)
    lut[list(CHAOS)] = list(CHAOS.values())
    ours = lut[sitk.GetArrayFromImage(ref_img)]
    labels = write_like(ours, ref_img, tmp_path / "labels.nii.gz")
    code, stdout, err = run(capsys, "evaluate", labels, labels)
    assert code == 0 and stdout.startswith("reference ids (mmseg, inferred"), err
    assert set(dice_column(stdout).values()) == {1.0}


def test_a_wrong_numbering_by_name_is_flagged(capsys, tmp_path):
    """Asked to read CHAOS labels as this tool's: scored as told, with a warning that the
    spleen and kidneys then lie on the wrong sides."""
    reference = SAMPLES / "chaos-t2" / "label_2.nii.gz"
    pred, _ = damaged_prediction(reference, CHAOS, tmp_path / "pred.nii.gz")
    code, stdout, err = run(capsys, "evaluate", pred, reference, "--ref-labels", "mmseg")
    assert code == 0 and "reference ids (--ref-labels mmseg)" in stdout
    assert err.startswith("warning: read with --ref-labels mmseg, its ") and "patient's left" in err


def refused(capsys, *args) -> str:
    code, stdout, err = run(capsys, "evaluate", *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("mmseg: error: "), err
    assert stdout == ""
    return lines[0]


def test_ids_the_numbering_cannot_explain_are_refused(capsys, tmp_path):
    """CHAOS's PNG grey values (63, 126, 189, 252): no numbering explains them, and this
    tool's ids named explicitly do not either."""
    ref_img = sitk.ReadImage(str(SAMPLES / "chaos-t2" / "label_2.nii.gz"))
    grey = (sitk.GetArrayFromImage(ref_img) * 63).astype(np.uint8)
    reference = write_like(grey, ref_img, tmp_path / "grey.nii.gz")
    pred = write_like(np.zeros_like(grey), ref_img, tmp_path / "pred.nii.gz")
    message = refused(capsys, pred, reference)
    assert "ids 63, 126, 189, 252" in message and "fits none of" in message and "--ref-labels" in message
    message = refused(capsys, pred, reference, "--ref-labels", "mmseg")
    assert "which --ref-labels mmseg gives no meaning" in message
    code, stdout, _ = run(capsys, "evaluate", pred, reference, "--ref-labels",
                          "liver=63,kidney_right=126,kidney_left=189,spleen=252")
    assert code == 0 and "reference ids (--ref-labels): liver 63, spleen 252" in stdout


def blobs(ids_at: dict[int, tuple[int, int]]) -> np.ndarray:
    """A label map with each id a block at columns [a, b) (x: toward the patient's left)."""
    values = np.zeros((4, 6, 60), np.uint8)
    for label, (a, b) in ids_at.items():
        values[:, label % 3 * 2: label % 3 * 2 + 2, a:b] = label
    return values


def test_two_numberings_that_fit_with_different_organs_are_refused(capsys, tmp_path):
    """Ids 1–13 with large blocks at 5 and 6 on the right fit BTCV (liver 6) and
    TotalSegmentator (liver 5) alike: nothing is guessed."""
    layout = {1: (50, 56), 2: (2, 6), 3: (44, 48), 5: (6, 20), 6: (20, 34)}
    layout |= {i: (40 + i % 3, 41 + i % 3) for i in (4, 7, 8, 9, 10, 11, 12, 13)}
    image = sitk.GetImageFromArray(blobs(layout))
    reference = tmp_path / "ref.nii.gz"
    sitk.WriteImage(image, str(reference))
    message = refused(capsys, reference, reference)
    assert "fits several numberings" in message
    assert "--ref-labels BTCV" in message and "--ref-labels TotalSegmentator" in message


def test_name_id_pairs_must_name_every_id_and_catch_a_misspelt_organ(capsys, tmp_path):
    layout = {1: (40, 46), 2: (2, 8), 3: (48, 54), 4: (30, 32), 6: (8, 28)}
    reference = tmp_path / "ref.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(blobs(layout)), str(reference))
    message = refused(capsys, reference, reference, "--ref-labels", "liver=6,spleen=1,kidney_right=2,kidney_left=3")
    assert "holds ids 4, which --ref-labels gives no meaning" in message and "BTCV" in message
    message = refused(capsys, reference, reference, "--ref-labels", "livr=6,spleen=1,RK=2,LK=3,gallbladder=4")
    assert "did you mean liver?" in message
    pred = write_like(np.where(blobs(layout) == 6, 1, 0).astype(np.uint8), sitk.ReadImage(str(reference)),
                      tmp_path / "pred.nii.gz")
    code, stdout, err = run(capsys, "evaluate", pred, reference, "--ref-labels",
                            "liver=6,spleen=1,right kidney=2,left kidney=3,gallbladder=4")
    assert code == 0 and dice_column(stdout)["liver"] == 1.0, err


def test_a_dataset_json_that_names_the_liver_alone_scores_the_liver_alone(capsys, tmp_path):
    labels = tmp_path / "labelsTr"
    labels.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}}))
    values = np.zeros((4, 6, 20), np.uint8)
    values[:, :, 2:10] = 1
    values[:, :, 5:7] = 2
    reference = labels / "case.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(reference))
    code, stdout, err = run(capsys, "evaluate", reference, reference)
    assert code == 0, err
    assert f"reference ids ({tmp_path / 'dataset.json'}): liver 1" in stdout
    assert list(dice_column(stdout)) == ["liver", "mean"]  # no spleen or kidney to score against
