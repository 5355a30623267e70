"""The mirror check: a scan whose file swaps left and right is flagged by comparing the
liver the network finds in it and in its mirror image."""

import numpy as np
import pytest

from napari_mmseg.inference import InferenceOptions, segment_image
from napari_mmseg.orientation_check import LIVER, MIN_LIVER_ML, MirrorCheck, liver_evidence_ml
from napari_mmseg.review import ScanReview
from napari_mmseg.scan_io import read_scan
from napari_mmseg.weights import load_weights


def test_liver_evidence_weights_the_labelled_liver_by_its_probability():
    probs = np.zeros((5, 4, 10, 10), np.float32)
    probs[0] = 1.0
    probs[:, :2] = 0.0
    probs[LIVER, :2] = 0.8  # 200 voxels labelled liver, probability 0.8
    probs[2, :2] = 0.2
    probs[LIVER, 2:, 0, 0] = 0.4  # liver probability where background wins: not counted
    assert liver_evidence_ml(probs, voxel_ml=0.027) == pytest.approx(200 * 0.8 * 0.027)


def test_the_mirror_image_finding_more_liver_is_suspect_but_small_livers_say_nothing():
    assert not MirrorCheck(liver_ml=1500.0, liver_ml_mirrored=600.0).suspected
    assert MirrorCheck(liver_ml=1500.0, liver_ml_mirrored=600.0).flag is None
    mirrored = MirrorCheck(liver_ml=600.0, liver_ml_mirrored=1500.0)
    assert mirrored.suspected
    assert mirrored.flag.startswith("left and right look swapped") and "(1500 ml against 600 ml)" in mirrored.flag
    # a slab at the kidneys' lower poles: a sliver of liver either way is no evidence
    assert not MirrorCheck(liver_ml=20.0, liver_ml_mirrored=MIN_LIVER_ML - 1).suspected
    assert MirrorCheck(liver_ml=20.0, liver_ml_mirrored=MIN_LIVER_ML + 1).suspected


def test_scan_flags_come_first_and_travel_in_the_report():
    review = ScanReview((), scan_flags=("left and right look swapped",))
    assert review.flags == ("Scan: left and right look swapped",)
    assert review.to_dict()["flags"] == ["Scan: left and right look swapped"]


def test_the_check_is_a_second_pass_that_can_be_skipped(ct_scan, tiny_weights):
    image, loaded = read_scan(ct_scan), load_weights(tiny_weights)
    checked = segment_image(image, loaded, "CT", InferenceOptions(device="cpu"))
    skipped = segment_image(image, loaded, "CT", InferenceOptions(device="cpu", check_orientation=False))
    assert "mirror_check" in checked.timings and "mirror_check" not in skipped.timings
    # the labels are the scan's own: the mirror pass only informs the review
    np.testing.assert_array_equal(*(r.labels for r in (checked, skipped)))
