"""Non-learned correction aids on tiny synthetic label maps."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mmseg.correction.aids import fill_between_slices, relabel_piece, remove_piece


def test_fill_between_two_drawn_slices_fills_the_middle_ones():
    labels = np.zeros((7, 20, 20), np.uint8)
    labels[1, 5:15, 5:15] = 2
    labels[5, 7:13, 7:13] = 2
    before = labels.copy()
    out = fill_between_slices(labels, 2, axis=0)
    assert np.array_equal(labels, before)  # input untouched
    for k in (2, 3, 4):
        assert (out[k] == 2).sum() > 0
        assert (out[k][10, 10]) == 2
    # the drawn slices and the slices outside the drawn ones stay as they were
    assert np.array_equal(out[[0, 1, 5, 6]], labels[[0, 1, 5, 6]])
    # the area shrinks monotonically from the larger drawn contour to the smaller one
    areas = [(out[k] == 2).sum() for k in range(1, 6)]
    assert areas == sorted(areas, reverse=True)


def test_fill_between_slices_along_another_axis_and_never_over_another_organ():
    labels = np.zeros((20, 20, 6), np.uint8)
    labels[5:15, 5:15, 0] = 1
    labels[5:15, 5:15, 4] = 1
    labels[8:12, 8:12, 2] = 3  # another organ in a middle slice
    out = fill_between_slices(labels, 1, axis=2)
    assert (out[..., 1:4] == 1).sum() > 0
    assert np.all(out[8:12, 8:12, 2] == 3)
    assert np.array_equal(out[..., 5], labels[..., 5])


def test_fill_between_slices_with_one_drawn_slice_changes_nothing():
    labels = np.zeros((5, 8, 8), np.uint8)
    labels[2, 2:5, 2:5] = 4
    assert np.array_equal(fill_between_slices(labels, 4), labels)


def test_remove_piece_touches_only_that_piece():
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[1:3, 1:4, 1:4] = 2  # a stray spleen piece
    labels[4:8, 8:15, 8:15] = 2  # the spleen
    labels[4:8, 1:6, 1:6] = 1
    out = remove_piece(labels, (2, 2, 2))
    expected = labels.copy()
    expected[1:3, 1:4, 1:4] = 0
    assert np.array_equal(out, expected)
    assert labels[2, 2, 2] == 2  # input untouched


def test_relabel_piece_touches_only_that_piece_and_corner_contact_is_one_piece():
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[1, 1, 1] = 3
    labels[2, 2, 2] = 3  # touches the first at a corner: the same piece
    labels[4, 7:9, 7:9] = 3  # another piece of the same label
    out = relabel_piece(labels, (1, 1, 1), 4)
    assert out[1, 1, 1] == 4 and out[2, 2, 2] == 4
    assert np.all(out[4, 7:9, 7:9] == 3)
    assert np.count_nonzero(out != labels) == 2


def test_a_click_on_background_changes_nothing_and_bad_input_is_refused():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, 0] = 1
    out = remove_piece(labels, (3, 3, 3))
    assert np.array_equal(out, labels) and out is not labels
    with pytest.raises(ValueError, match="outside"):
        remove_piece(labels, (4, 0, 0))
    with pytest.raises(ValueError, match="not one of"):
        relabel_piece(labels, (0, 0, 0), 9)
