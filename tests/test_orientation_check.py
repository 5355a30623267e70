"""The mirror check: a scan whose file swaps left and right is flagged by comparing the
liver the network finds in it and in its mirror image."""

import numpy as np
import pytest

from napari_mmseg.inference.orientation_check import (
    CONFIDENCE_MARGIN,
    LIVER,
    MIN_LIVER_ML,
    LiverFound,
    MirrorCheck,
    liver_found,
)
from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.scan_io import read_scan
from napari_mmseg.models.weights import load_weights
from napari_mmseg.review.flags import ScanReview


def test_the_liver_found_is_its_volume_and_mean_probability():
    probs = np.zeros((5, 4, 10, 10), np.float32)
    probs[0] = 1.0
    probs[:, :2] = 0.0
    probs[LIVER, :2] = 0.8  # 200 voxels labelled liver, probability 0.8 …
    probs[2, :2] = 0.2
    probs[LIVER, 1, 0, :] = 0.6  # … but for 10 at 0.6
    probs[2, 1, 0, :] = 0.4
    probs[LIVER, 2:, 0, 0] = 0.4  # liver probability where background wins: not counted
    found = liver_found(probs, voxel_ml=0.027)
    assert found.ml == pytest.approx(200 * 0.027)
    assert found.confidence == pytest.approx((190 * 0.8 + 10 * 0.6) / 200)
    assert liver_found(np.eye(5, dtype=np.float32)[[0]].T[..., None, None], 1.0) == LiverFound(0.0, 0.0)


def test_a_surer_liver_in_the_mirror_image_is_suspect_but_not_a_sliver_or_a_near_tie():
    sure, unsure = LiverFound(1500.0, 0.95), LiverFound(900.0, 0.85)
    assert not MirrorCheck(given=sure, mirrored=unsure).suspected
    assert MirrorCheck(given=sure, mirrored=unsure).flag is None
    swapped = MirrorCheck(given=unsure, mirrored=sure)
    assert swapped.suspected
    assert swapped.flag.startswith("left and right look swapped") and "(confidence 0.95 against 0.85)" in swapped.flag
    # a larger liver in the mirror image is not enough (a big spleen mirrored into the liver's place) …
    assert not MirrorCheck(given=LiverFound(800.0, 0.93), mirrored=LiverFound(1900.0, 0.92)).suspected
    # … nor a surer one within the margin, nor one too small to judge by (a slab at the kidneys)
    assert not MirrorCheck(given=unsure, mirrored=LiverFound(900.0, 0.85 + CONFIDENCE_MARGIN / 2)).suspected
    slivers = LiverFound(MIN_LIVER_ML - 1, 0.7), LiverFound(MIN_LIVER_ML - 1, 0.95)
    assert not MirrorCheck(*slivers).suspected


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
