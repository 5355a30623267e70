"""Enlarged organs, as a test condition and as an augmentation: the image and the labels move
together, the organ grows by about factor³, nothing folds, left and right stay put."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from synthetic import CT_NORM, organ_phantom

from napari_mmseg.config import AugmentationConfig, TrainingConfig
from napari_mmseg.training.organ_enlargement import enlarge_organ, source_radius
from napari_mmseg.training.training_data import PatchSampler

HU = {1: 110.0, 2: 120.0, 3: 180.0, 4: 180.0}


def test_the_radial_map_is_monotone_and_identity_far_away():
    r = torch.linspace(0, 100, 1001)
    src = source_radius(r, 2.0, 20.0, 50.0)
    assert torch.all(torch.diff(src) > 0), "a monotone map of r: nothing folds"
    assert torch.allclose(src[r <= 20], r[r <= 20] / 2)
    assert torch.allclose(src[r >= 50], r[r >= 50])


def test_an_enlarged_spleen_grows_with_its_image_and_keeps_its_side():
    case = organ_phantom()
    spacing = (3.0, 3.0, 3.0)
    values, labels = enlarge_organ(case.values, case.labels, 2, 1.4, spacing)
    before, after = (case.labels == 2).sum(), (labels == 2).sum()
    assert after == pytest.approx(before * 1.4**3, rel=0.25)
    for label, hu in HU.items():
        inner = binary_erosion(labels == label, iterations=1)
        if inner.any():
            assert np.median(values[inner]) == pytest.approx(hu, abs=1.0), "image and labels moved together"
    spleen_x = np.nonzero(labels == 2)[2].mean()
    liver_x = np.nonzero(labels == 1)[2].mean()
    assert liver_x < spleen_x, "the liver stays at the patient's right"
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}


def test_a_scan_without_the_organ_comes_back_unchanged():
    case = organ_phantom()
    labels = np.where(case.labels == 2, 0, case.labels).astype(np.uint8)
    values, out = enlarge_organ(case.values, labels, 2, 2.0, (3.0, 3.0, 3.0))
    assert np.array_equal(values, case.values) and np.array_equal(out, labels)


def test_enlarging_patches_keeps_labels_on_their_organs():
    appearance = AugmentationConfig(p_class_wise=0, p_curve=0, p_convolutional=0, p_gamma=0, p_bias=0, p_blur=0,
                                    p_thick_slices=0, p_slab=0, p_spatial=1.0, p_enlarge=1.0, ct_window_shift_hu=0,
                                    ct_window_scale=(1, 1))
    training = replace(TrainingConfig(noise_sigma=0.0, offset_sigma=0.0), augmentation=appearance)
    sampler = PatchSampler([organ_phantom()], CT_NORM, 32, training, np.random.default_rng(4))
    checked = 0
    for _ in range(40):
        x, y = sampler.sample(1)
        image, lab = x[0, 0], y[0, 0]
        for label, hu in HU.items():
            inner = binary_erosion(lab == label, iterations=2)
            if inner.sum() > 200:
                checked += 1
                assert np.median(image[inner] * CT_NORM.std + CT_NORM.mean) == pytest.approx(hu, abs=1.0)
        if (lab == 3).sum() > 50 and (lab == 4).sum() > 50:
            assert np.nonzero(lab == 3)[2].mean() < np.nonzero(lab == 4)[2].mean(), "left and right swapped"
    assert checked > 10
