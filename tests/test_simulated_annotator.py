"""The simulated annotator clicks where a careful user would: deepest in the largest error."""

from __future__ import annotations

import numpy as np

from napari_mmseg.correction.hints import Hint
from napari_mmseg.correction.simulated_annotator import next_click


def test_click_is_at_the_centre_of_the_largest_error_and_positive_for_the_reference_organ():
    reference = np.zeros((12, 30, 30), np.uint8)
    reference[2:10, 5:25, 5:25] = 2  # spleen
    labels = reference.copy()
    labels[2:9, 5:12, 5:12] = 1  # a corner of it called liver: the largest error, 7×7×7
    labels[0, 0:2, 0:2] = 4  # a small false piece
    assert next_click(reference, labels, (1.0, 1.0, 1.0)) == Hint(2, True, ((5, 8, 8),))


def test_click_is_negative_where_the_reference_is_background_and_depth_is_in_mm():
    reference = np.zeros((10, 40, 40), np.uint8)
    labels = reference.copy()
    labels[3:6, 10:21, 10:21] = 3  # a false piece: 3 slices of 5 mm, 11×11 voxels of 1 mm
    # in voxels every voxel 2 deep in the middle slice ties; in mm only the centre is deepest
    assert next_click(reference, labels, (5.0, 1.0, 1.0)) == Hint(3, False, ((4, 15, 15),))


def test_the_largest_error_region_wins_over_a_smaller_deeper_one():
    reference = np.zeros((20, 20, 120), np.uint8)
    labels = reference.copy()
    labels[5:12, 5:12, 2:9] = 1  # 343 voxels, 4 deep
    labels[15:17, 15:17, 10:110] = 4  # 400 voxels, 1 deep: the largest
    assert next_click(reference, labels, (1, 1, 1)).label == 4
    labels[15:17, 15:17, 50:110] = 0  # now 160 voxels
    assert next_click(reference, labels, (1, 1, 1)).label == 1


def test_no_click_when_nothing_is_left_to_correct():
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 1, 1] = 1
    assert next_click(labels, labels.copy(), (1, 1, 1)) is None


def test_excluded_errors_are_not_clicked():
    reference = np.zeros((10, 10, 30), np.uint8)
    labels = reference.copy()
    labels[2:8, 2:8, 2:8] = 1
    labels[3:6, 3:6, 20:23] = 2
    exclude = np.zeros(labels.shape, bool)
    exclude[:, :, :10] = True
    assert next_click(reference, labels, (1, 1, 1), exclude=exclude) == Hint(2, False, ((4, 4, 21),))
