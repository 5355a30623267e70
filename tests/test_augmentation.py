"""The appearance augmentation: labels untouched, left and right never swapped, the
normalisation of an augmented patch as its whole scan would get it."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, binary_erosion
from synthetic import CT_NORM, organ_phantom

from napari_mmseg.config import TrainingConfig
from napari_mmseg.preprocessing import default_norm
from napari_mmseg.training import augmentation as aug
from napari_mmseg.training.augmentation import AugmentationConfig, GlobalRemap
from napari_mmseg.training.training_data import PatchSampler, PreparedCase

ALWAYS = AugmentationConfig(p_class_wise=1.0, p_curve=1.0, p_convolutional=1.0, p_gamma=1.0, p_bias=1.0, p_blur=1.0,
                            p_thick_slices=1.0, p_spatial=1.0, p_slab=0.0, p_fat_signal=1.0)




@pytest.mark.parametrize("name, transform", [
    ("class_wise", lambda u, lab, rng: aug.class_wise(u, lab, ALWAYS, rng)),
    ("curve", lambda u, lab, rng: GlobalRemap.draw(ALWAYS, rng)(u)),
    ("bias", lambda u, lab, rng: u * aug.bias_field(u.shape, 0.35, rng)),
    ("blur", lambda u, lab, rng: aug.gaussian_blur(torch.from_numpy(u)[None, None], 1.0)[0, 0].numpy()),
    ("thick", lambda u, lab, rng: aug.thick_slices(torch.from_numpy(u)[None, None], 3)[0, 0].numpy()),
    ("convolutional", lambda u, lab, rng: aug.convolutional_remap(u, rng)),
    ("fat signal", lambda u, lab, rng: aug.fat_signal(u, aug.fat_fraction(fatty_phantom().values), 0.9, True)),
])
def test_intensity_augmentations_change_the_image_only(name, transform):
    case = organ_phantom()
    u = np.clip((case.values - -125.0) / 400.0, 0, 1).astype(np.float32)
    labels = case.labels.copy()
    out = transform(u.copy(), labels, np.random.default_rng(3))
    assert out.shape == u.shape and out.dtype == np.float32
    assert np.array_equal(labels, case.labels), f"{name} must not touch the labels"
    assert not np.allclose(out, u), f"{name} changed nothing"
    assert np.isfinite(out).all()


def fatty_phantom():
    """The phantom with a 4-voxel layer of fat (-100 HU) around the right kidney."""
    case = organ_phantom()
    around = binary_dilation(case.labels == 3, iterations=4) & (case.labels == 0)
    case.values[around] = -100.0
    return case


def test_fat_fraction_follows_hu_and_gradient_echo_rims_appear_at_fat_boundaries():
    hu = np.array([-1000.0, -300.0, -100.0, -40.0, 20.0, 60.0, 180.0], np.float32)
    assert aug.fat_fraction(hu).tolist() == pytest.approx([0.0, 0.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    u = np.array([0.5, 0.5, 0.5], np.float32)  # tissue, a fat–tissue boundary voxel, fat
    fat = np.array([0.0, 0.5, 1.0], np.float32)
    assert aug.fat_signal(u, fat, 0.5, opposed=True).tolist() == pytest.approx([0.5, 0.0, 0.5])  # the dark rim
    assert aug.fat_signal(u, fat, 0.9, opposed=False).tolist() == pytest.approx([0.5, 0.7, 0.9])  # fat bright
    # through the sampler (same seed, with and without): fat, the darkest tissue in the CT
    # window, comes out brighter than the kidney it surrounds; the labels are the same
    plain = AugmentationConfig(p_class_wise=0, p_curve=0, p_convolutional=0, p_gamma=0, p_bias=0, p_blur=0,
                               p_thick_slices=0, p_slab=0, p_spatial=0, p_coarse=0, ct_window_shift_hu=0,
                               ct_window_scale=(1, 1), p_opposed_phase=0.0, fat_brightness=(1.0, 1.0))
    def patches(appearance):  # one patch per seed: the draws after the fat signal's do not shift the next crop
        training = TrainingConfig(noise_sigma=0.0, offset_sigma=0.0, augmentation=appearance)
        return [np.concatenate(a) for a in zip(*(
            PatchSampler([fatty_phantom()], CT_NORM, 32, training, np.random.default_rng(seed)).sample(1)
            for seed in range(8)), strict=True)]
    (x0, y0), (x1, y1) = patches(plain), patches(replace(plain, p_fat_signal=1.0))
    assert np.array_equal(y0, y1)
    hu = x0 * CT_NORM.std + CT_NORM.mean
    fat, kidney = np.isclose(hu, -100.0, atol=1.0), y0 == 3
    assert fat.sum() > 100 and kidney.sum() > 100, "no fat or kidney in the patches: the test proved nothing"
    assert x1[fat].mean() > x1[kidney].mean() > x0[fat].mean()
    assert np.allclose(x1[kidney], x0[kidney])  # fat-free tissue keeps its intensity


def test_ct_patches_shown_as_mr_keep_their_labels_and_are_normalised_as_mr():
    """The MR sampler's guest: CT patches, fat bright, normalised as an MR scan would be."""
    off = AugmentationConfig(p_class_wise=0, p_curve=0, p_convolutional=0, p_gamma=0, p_bias=0, p_blur=0,
                             p_thick_slices=0, p_slab=0, p_spatial=0, p_coarse=0, ct_window_shift_hu=0,
                             ct_window_scale=(1, 1), p_opposed_phase=0.0, fat_brightness=(1.0, 1.0), p_ct_as_mr=1.0)
    training = TrainingConfig(noise_sigma=0.0, offset_sigma=0.0, augmentation=off)
    mr_norm, rng, ct = default_norm("MR"), np.random.default_rng(5), fatty_phantom()
    ct.values[ct.values < -500] = 40.0  # no air: every voxel of a patch is the body MR normalises
    guest = PatchSampler([ct], CT_NORM, 32, training, rng).shown_as_mr(mr_norm)
    organless_mr = PreparedCase("mr", "MR", np.full_like(ct.values, 300.0), np.zeros_like(ct.labels))
    xs, ys = PatchSampler([organless_mr], mr_norm, 32, training, rng, guest=guest).sample(8)
    assert set(np.unique(ys)) > {0}, "every patch is the guest's: its CT labels come with it"
    kidney = ys == 3
    fat = np.stack([binary_dilation(k, iterations=3) & (y == 0) for k, y in zip(kidney, ys, strict=True)])
    assert kidney.sum() > 100 and fat.sum() > 100, "no kidney in the patches: the test proved nothing"
    assert xs[fat].mean() > xs[kidney].mean(), "fat bright, as gradient-echo MR shows it"
    means, stds = xs.mean(axis=(1, 2, 3, 4)), xs.std(axis=(1, 2, 3, 4))
    assert np.abs(means).max() < 0.1 and np.abs(stds - 1).max() < 0.1, "normalised as an MR scan: its body"
    with pytest.raises(ValueError, match="only CT patches"):
        PatchSampler([organless_mr], mr_norm, 32, training, rng).shown_as_mr(mr_norm)


def test_curves_keep_air_dark_and_take_every_form():
    rng = np.random.default_rng(0)
    forms = set()
    for _ in range(200):
        remap = GlobalRemap.draw(ALWAYS, rng)
        xp, yp = remap.curve
        assert yp[0] == 0.0 and xp[1] == aug.AIR, "air stays at 0"
        body = yp[1:]
        forms.add("up" if np.all(np.diff(body) >= 0) else "down" if np.all(np.diff(body) <= 0) else "neither")
    assert forms == {"up", "down", "neither"}, "monotone, inverted and non-monotone contrasts are all seen"


@pytest.mark.parametrize("anisotropy", [0.0, 0.3], ids=["isotropic", "anisotropic"])
def test_spatial_augmentation_moves_image_and_labels_together_and_never_mirrors(anisotropy):
    """With rotation and scaling always on, voxels well inside an organ keep the organ's
    intensity, and the right kidney stays at the patient's right (smaller x) of the left one."""
    case = organ_phantom()
    training = TrainingConfig(noise_sigma=0.0, offset_sigma=0.0,
                              augmentation=AugmentationConfig(p_class_wise=0, p_curve=0, p_convolutional=0, p_gamma=0,
                                                              p_bias=0, p_blur=0, p_thick_slices=0, p_slab=0,
                                                              p_spatial=1.0, anisotropy=anisotropy,
                                                              ct_window_shift_hu=0, ct_window_scale=(1, 1)))
    sampler = PatchSampler([case], CT_NORM, 32, training, np.random.default_rng(1))
    both = 0
    for _ in range(60):
        x, y = sampler.sample(1)
        image, lab = x[0, 0], y[0, 0]
        for label, hu in ((1, 110.0), (3, 180.0)):
            inner = binary_erosion(lab == label, iterations=2)  # well inside: no voxel blends a border
            if inner.sum() > 200:
                values = image[inner] * CT_NORM.std + CT_NORM.mean
                assert np.median(values) == pytest.approx(hu, abs=1.0)
        if (lab == 3).sum() > 50 and (lab == 4).sum() > 50:
            both += 1
            assert np.nonzero(lab == 3)[2].mean() < np.nonzero(lab == 4)[2].mean()
    assert both > 0, "no patch held both kidneys: the test proved nothing"


def test_anisotropic_scaling_changes_each_axis_on_its_own_and_isotropic_does_not():
    """The sampling grid's span along each axis (no rotation): equal when isotropic, unequal
    with `anisotropy`, and positive either way (a negative span would mirror the patch)."""
    spans = {}
    for anisotropy in (0.0, 0.3):
        cfg = AugmentationConfig(rotate_deg=0.0, anisotropy=anisotropy)
        grid = aug.spatial_grid(32, cfg, np.random.default_rng(3), margin=6)[0]
        spans[anisotropy] = (grid[-1, -1, -1] - grid[0, 0, 0]).numpy()
        assert (spans[anisotropy] > 0).all()
    assert np.ptp(spans[0.0]) < 1e-5
    assert np.ptp(spans[0.3]) > 0.02


@pytest.mark.parametrize("appearance", [ALWAYS, replace(ALWAYS, p_curve=0.0)], ids=["curve", "convolutional"])
@pytest.mark.parametrize("norm", [CT_NORM, default_norm("MR")], ids=["CT", "MR"])
def test_every_augmentation_at_once_keeps_labels_on_their_organs(appearance, norm):
    case = organ_phantom()
    training = TrainingConfig(augmentation=appearance)
    sampler = PatchSampler([case], norm, 32, training, np.random.default_rng(2))
    xs, ys = sampler.sample(24)
    assert xs.shape == (24, 1, 32, 32, 32) and ys.shape == (24, 1, 32, 32, 32)
    assert np.isfinite(xs).all()
    assert set(np.unique(ys)) <= {0, 1, 2, 3, 4}
    for y in ys[:, 0]:
        if (y == 3).sum() > 50 and (y == 4).sum() > 50:
            assert np.nonzero(y == 3)[2].mean() < np.nonzero(y == 4)[2].mean(), "left and right swapped"


def test_slab_patches_blank_everything_outside_the_slab():
    case = organ_phantom()
    training = TrainingConfig(noise_sigma=0.0, offset_sigma=0.0,
                              augmentation=AugmentationConfig(p_slab=1.0, p_spatial=0.0, slab_slices=(6, 6)))
    x, y = PatchSampler([case], CT_NORM, 32, training, np.random.default_rng(4)).sample(4)
    for image, lab in zip(x[:, 0], y[:, 0], strict=True):
        varying = [z for z in range(32) if np.ptp(image[z]) > 0 or lab[z].any()]
        assert len(varying) <= 6


def test_mr_patches_are_normalised_as_their_remapped_scan_would_be():
    """A remapped MR patch gets the values that the foreground normalisation would give the
    whole scan remapped the same way: what the network sees at inference."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.uniform(0, 5, (40, 10, 48)), rng.gamma(4.0, 100.0, (40, 38, 48))], axis=1)
    case = PreparedCase("mr", "MR", values.astype(np.float32), np.zeros(values.shape, np.uint8))
    norm = default_norm("MR")
    sampler = PatchSampler([case], norm, 32, TrainingConfig(augmentation=ALWAYS), rng)
    lo, hi = sampler.ranges[0]
    u = np.clip((case.values - lo) / (hi - lo), 0, 1)
    for _ in range(10):
        remap = GlobalRemap.draw(ALWAYS, rng)
        remapped = remap(u)
        whole_scan = norm.apply(remapped * (hi - lo) + lo)
        patch = sampler._to_network(remapped, remap(sampler.body_samples[0]))
        body = np.s_[:, 12:, :]
        assert np.abs(patch[body] - whole_scan[body]).mean() < 0.1


def test_convolutional_remap_keeps_air_dark_and_the_unit_range():
    case = organ_phantom()
    u = np.clip((case.values - -125.0) / 400.0, 0, 1).astype(np.float32)
    for seed in range(20):
        out = aug.convolutional_remap(u, np.random.default_rng(seed))
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.all(out[u <= aug.AIR] == 0.0), "air stays dark"
        assert np.ptp(out[u > aug.AIR]) > 0.1, "the body keeps contrast"


def test_coarse_patches_show_the_scan_at_twice_the_spacing():
    """With p_coarse=1 every patch comes from the case at twice the spacing: organs half as
    long (an eighth of the voxels), their intensities kept, left and right in place."""
    case = organ_phantom()
    off = AugmentationConfig(p_class_wise=0, p_curve=0, p_convolutional=0, p_gamma=0, p_bias=0, p_blur=0,
                             p_thick_slices=0, p_slab=0, p_spatial=0, ct_window_shift_hu=0, ct_window_scale=(1, 1))
    counts = {}
    for p_coarse in (0.0, 1.0):
        training = TrainingConfig(noise_sigma=0.0, offset_sigma=0.0, augmentation=replace(off, p_coarse=p_coarse))
        x, y = PatchSampler([case], CT_NORM, 32, training, np.random.default_rng(6)).sample(40)
        counts[p_coarse] = max(int((lab == 1).sum()) for lab in y[:, 0])
        for image, lab in zip(x[:, 0], y[:, 0], strict=True):
            inner = binary_erosion(lab == 1, iterations=1)
            if inner.any():
                assert np.median(image[inner] * CT_NORM.std + CT_NORM.mean) == pytest.approx(110.0, abs=1.0)
            if (lab == 3).any() and (lab == 4).any():
                assert np.nonzero(lab == 3)[2].mean() < np.nonzero(lab == 4)[2].mean()
    assert counts[1.0] == 12 * 10 * 9  # the whole 24×20×18 liver, in blocks of 2³
    assert counts[0.0] > 4 * counts[1.0]


def test_a_recipe_is_changed_by_name_and_an_unknown_field_is_refused():
    """`mmseg train --augment` and the recipe trial name a variation of the recipe this way."""
    base = AugmentationConfig()
    changed = base.changed("p_coarse=0,enabled=false, p_gamma=0.25")
    assert (changed.p_coarse, changed.enabled, changed.p_gamma) == (0.0, False, 0.25)
    assert changed.p_curve == base.p_curve and base.changed("") == base
    with pytest.raises(ValueError, match="'p_coars' is not"):
        base.changed("p_coars=0")
    with pytest.raises(ValueError, match="'gamma' is not"):  # a range, not one number
        base.changed("gamma=2")
