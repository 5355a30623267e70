"""Contrast shifts of the robustness benchmark: grid and labels untouched, intensities as
specified, deterministic with the seed."""

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.contrast_shifts import (
    SHIFTS,
    apply_shift,
    bias_field,
    gamma,
    invert,
    rescale,
    thick_slices,
    uncontrasted_ct,
)


def _scan(modality: str) -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(1)
    shape = (12, 20, 24)  # z, y, x
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    for label, cx in ((1, 6), (2, 18), (3, 9), (4, 15)):
        labels[(zz - 6) ** 2 + (yy - 10) ** 2 + (xx - cx) ** 2 < 9] = label
    body = (yy - 10) ** 2 / 81 + (xx - 12) ** 2 / 121 < 1
    if modality == "CT":
        values = np.where(body, -80.0, -1000.0)
        for label, hu in ((1, 110.0), (2, 120.0), (3, 180.0), (4, 170.0)):
            values[labels == label] = hu
    else:
        values = np.where(body, 300.0, 5.0)
        for label, level in ((1, 150.0), (2, 600.0), (3, 700.0), (4, 650.0)):
            values[labels == label] = level
    values = (values + rng.normal(0, 10, shape)).astype(np.float32)
    image, ref = sitk.GetImageFromArray(values), sitk.GetImageFromArray(labels)
    for im in (image, ref):
        im.SetSpacing((1.5, 1.5, 3.0))
        im.SetOrigin((-10.0, 20.0, 5.0))
        im.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image, ref


@pytest.mark.parametrize("shift", SHIFTS, ids=lambda s: f"{s.modality} {s.name}")
def test_shift_keeps_grid_and_labels_and_is_deterministic(shift):
    image, ref = _scan(shift.modality)
    before = sitk.GetArrayFromImage(ref)
    a, b = apply_shift(shift, image, ref, seed=3), apply_shift(shift, image, ref, seed=3)
    for attr in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(a, attr)() == getattr(image, attr)()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), before)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert not np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(image))


def test_uncontrasted_ct_puts_organ_medians_at_unenhanced_hu_keeping_texture():
    image, ref = _scan("CT")
    values, labels = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ref)
    out = uncontrasted_ct(values, labels)
    for label, hu in ((1, 55.0), (2, 45.0), (3, 35.0), (4, 35.0)):
        organ = labels == label
        assert np.median(out[organ]) == pytest.approx(hu, abs=1e-3)
        assert np.std(out[organ]) == pytest.approx(np.std(values[organ]), rel=1e-4)
    np.testing.assert_array_equal(out[labels == 0], values[labels == 0])


def test_gamma_keeps_range_and_darkens_or_brightens_midtones():
    values = np.linspace(10.0, 110.0, 101, dtype=np.float32).reshape(1, 1, -1)
    dark, bright = gamma(values, 2.0), gamma(values, 0.5)
    assert dark.min() == pytest.approx(10.0) and dark.max() == pytest.approx(110.0)
    assert dark[0, 0, 50] == pytest.approx(35.0) and bright[0, 0, 50] == pytest.approx(10 + 100 * 0.5**0.5)


def test_rescale_moves_the_hu_scale():
    np.testing.assert_allclose(rescale(np.array([100.0, -1000.0]), 0.9, -40.0), [50.0, -940.0])


def test_inversion_swaps_bright_and_dark_inside_the_body_only():
    image, ref = _scan("MR")
    values, labels = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ref)
    out = invert(values)
    assert out[labels == 3].mean() < out[labels == 1].mean()  # bright kidney now darker than liver
    np.testing.assert_array_equal(out[0, 0, 0], values[0, 0, 0])  # air stays air


def test_bias_field_is_smooth_within_the_strength_and_seeded():
    values = np.full((10, 16, 16), 100.0, np.float32)
    a = bias_field(values, 0.3, np.random.default_rng(0))
    assert a.min() >= 70.0 - 1e-3 and a.max() <= 130.0 + 1e-3
    assert max(100.0 - a.min(), a.max() - 100.0) == pytest.approx(30.0, abs=1e-3)
    assert np.abs(np.diff(a, axis=2)).max() < 10.0
    assert not np.array_equal(a, bias_field(values, 0.3, np.random.default_rng(1)))


def test_thick_slices_average_along_the_coarsest_axis_only():
    values = np.zeros((4, 9, 5), np.float32)
    values[:, 4, :] = 90.0  # one bright 1 mm "slice" across y, the coarsest axis here
    out = thick_slices(values, (0.5, 1.0, 0.5), 9.0)
    assert out.shape == values.shape
    assert out.sum() == pytest.approx(values.sum(), rel=1e-5)  # one slab, its mean everywhere
    np.testing.assert_allclose(out, 10.0, rtol=1e-5)
    constant = np.full((6, 3, 3), 7.0, np.float32)
    np.testing.assert_allclose(thick_slices(constant, (3.0, 1.0, 1.0), 9.0), 7.0, rtol=1e-6)
