"""Stray pieces of an organ become background; halves of comparable size stay."""

import numpy as np

from napari_mmseg.inference.organ_pieces import stray_pieces, without_stray_pieces


def _labels() -> np.ndarray:
    lab = np.zeros((30, 40, 40), np.uint8)
    lab[2:20, 2:20, 2:20] = 1  # liver
    lab[25:28, 2:5, 2:5] = 1  # a speck of "liver" apart from it: stray
    lab[5:12, 25:35, 25:35] = 3  # a kidney in two halves of comparable size: both stay
    lab[14:20, 25:35, 25:35] = 3
    lab[22:29, 30:38, 30:38] = 4  # the other kidney, in one piece
    lab[26, 36, 22] = 4  # and one stray voxel of it
    return lab


def test_only_pieces_far_smaller_than_the_organs_largest_are_stray():
    lab = _labels()
    stray = stray_pieces(lab)
    expected = np.zeros_like(stray)
    expected[25:28, 2:5, 2:5] = True
    expected[26, 36, 22] = True
    np.testing.assert_array_equal(stray, expected)
    # diagonal neighbours are one piece (26-connected): a voxel touching a corner is not stray
    lab[20, 20, 20] = 1
    assert not stray_pieces(lab)[20, 20, 20]


def test_stray_voxels_become_background_and_the_input_is_left_alone():
    lab = _labels()
    probs = np.full((5, *lab.shape), 0.1, np.float32)
    np.put_along_axis(probs, lab[None].astype(np.int64), 0.6, axis=0)
    before = probs.copy()
    out = without_stray_pieces(probs)
    np.testing.assert_array_equal(probs, before)
    expected = lab.copy()
    expected[stray_pieces(lab)] = 0
    np.testing.assert_array_equal(out.argmax(axis=0), expected)
    assert np.allclose(out.sum(axis=0), out.sum(axis=0).flat[0])  # still a distribution per voxel
    clean = np.where(stray_pieces(lab), 0, lab).astype(np.uint8)
    probs_clean = np.full((5, *lab.shape), 0.1, np.float32)
    np.put_along_axis(probs_clean, clean[None].astype(np.int64), 0.6, axis=0)
    assert without_stray_pieces(probs_clean) is probs_clean  # nothing stray: nothing copied
