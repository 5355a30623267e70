"""Reading an MR scan both ways round: as given and with its grey levels inverted, keeping
the reading the network is surer of (T1-like sequences read as the T2 it was trained on)."""

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.inference.mr_polarity import INVERSION_MARGIN, PolarityChoice, organ_confidence
from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.datasets import label_map_from_names, read_dataset_json, remap_labels, totalsegmentator_examples
from napari_mmseg.io.scan_io import read_scan
from napari_mmseg.metrics import dice_scores
from napari_mmseg.models.weights import bundled_weights, load_weights

FAST = InferenceOptions(device="cpu", check_orientation=False, uncertainty=False)


def test_organ_confidence_averages_each_organs_mean_top_probability():
    probs = np.zeros((5, 2, 4, 4), np.float32)
    probs[0] = 0.6  # background wins here, with 0.6: not counted
    probs[1] = 0.4
    probs[:, 0] = np.array([0.1, 0.9, 0.0, 0.0, 0.0])[:, None, None]  # 16 liver voxels at 0.9
    probs[:, 1, 0] = np.array([0.3, 0.0, 0.0, 0.7, 0.0])[:, None]  # 4 right kidney voxels at 0.7
    # each organ once, not each voxel: (0.9 + 0.7) / 2, not (16 × 0.9 + 4 × 0.7) / 20
    assert organ_confidence(probs) == pytest.approx(0.8)
    assert organ_confidence(np.eye(5, dtype=np.float32)[[0]].T[..., None, None]) == 0.0


def test_the_inverted_reading_is_kept_only_when_surer_by_the_margin():
    assert not PolarityChoice(given=0.93, inverted=0.93 + INVERSION_MARGIN / 2).read_inverted
    assert PolarityChoice(given=0.93, inverted=0.93).note == ""
    surer = PolarityChoice(given=0.93, inverted=0.95)
    assert surer.read_inverted
    assert "grey levels inverted" in surer.note and "0.950 against 0.930" in surer.note


def _mean_dice(labels: sitk.Image, reference: sitk.Image) -> float:
    arrays = (sitk.GetArrayFromImage(i) for i in (labels, reference))
    return float(np.mean([s.dice for s in dice_scores(*arrays, labels.GetSpacing()[::-1])]))


@pytest.fixture(scope="module")
def msbn():
    return load_weights(bundled_weights("msbn"))


def test_a_t2_scan_is_read_as_given(mr_scan, msbn):
    result = segment_image(read_scan(mr_scan), msbn, "MR", FAST)
    assert result.polarity is not None and not result.read_inverted and result.notes == ()
    assert "mr_polarity" in result.timings


def test_a_t1_like_scan_is_read_inverted_and_labelled_better(data_dir, msbn):
    """TotalSegmentator's example MR (bright fat: read as given, the perirenal fat is taken
    for kidney). Its labels were made by a model; the comparison is between two readings."""
    case = next(c for c in totalsegmentator_examples(data_dir / "totalsegmentator-examples") if c.modality == "MR")
    image, reference = case.load()
    both = segment_image(image, msbn, "MR", FAST)
    assert both.read_inverted and "grey levels inverted" in both.notes[0]
    only_given = segment_image(image, msbn, "MR", replace(FAST, try_inverted_mr=False))
    assert only_given.polarity is None and "mr_polarity" not in only_given.timings
    assert _mean_dice(both.labels, reference) > _mean_dice(only_given.labels, reference) + 0.03


def test_a_blended_context_pass_does_not_tip_the_choice(data_dir):
    """CHAOS patient 33 with its spleen enlarged (a training patient): as given, the context
    pass finds the spleen and is blended in, which lowers the confidence of that reading;
    judged after blending, `joint` read the scan inverted and lost half its spleen (Dice
    0.35). The choice is made on the windows of both readings, before blending."""
    from napari_mmseg.organs import ORGAN_BY_NAME
    from napari_mmseg.study.experiment import ENLARGED_SPLEEN_FACTOR
    from napari_mmseg.training.organ_enlargement import enlarge_organ

    root = data_dir / "abdomen-mr-chaos-t2"
    ids = label_map_from_names(read_dataset_json(root / "dataset.json")["labels"])
    image = read_scan(root / "imagesTr" / "chaos_33_0000.nii.gz")
    labels = remap_labels(sitk.GetArrayFromImage(read_scan(root / "labelsTr" / "chaos_33.nii.gz")), ids)
    values, _ = enlarge_organ(sitk.GetArrayFromImage(image), labels, ORGAN_BY_NAME["spleen"].label,
                              ENLARGED_SPLEEN_FACTOR, image.GetSpacing()[::-1])
    enlarged = sitk.GetImageFromArray(values)
    enlarged.CopyInformation(image)
    result = segment_image(enlarged, load_weights(bundled_weights("joint")), "MR", FAST)
    assert result.context_blended and not result.read_inverted


def test_ct_is_never_read_inverted(ct_scan, tiny_weights):
    result = segment_image(read_scan(ct_scan), load_weights(tiny_weights), "CT", FAST)
    assert result.polarity is None and not result.read_inverted



@pytest.mark.parametrize("as_given", [False, True])
def test_the_command_line_says_which_reading_it_kept(capsys, tmp_path, data_dir, as_given):
    import json

    from napari_mmseg.cli import main

    scan = data_dir / "totalsegmentator-examples" / "example_mr_sm.nii.gz"
    report = tmp_path / "report.json"
    args = [str(scan), "-o", str(tmp_path / "labels.nii.gz"), "--modality", "MR", "--device", "cpu",
            "--no-orientation-check", "--report", str(report)]
    assert main(["segment", *args, *(["--as-given"] if as_given else [])]) == 0
    stdout = capsys.readouterr().out
    assert json.loads(report.read_text())[str(scan)]["read_inverted"] is not as_given
    assert ("note: the scan was read with its grey levels inverted" in stdout) is not as_given
