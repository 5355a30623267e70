"""Canonical grid, normalisation, and the orientation invariance of segmentation."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from napari_mmseg import preprocessing
from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.scan_io import read_scan
from napari_mmseg.models.weights import load_weights
from napari_mmseg.preprocessing import (
    IntensityNorm,
    _argmax,
    _cells_on_aligned_native,
    _cells_resampled,
    _index_map,
    canonical_grid,
    default_norm,
    probabilities_to_native,
    to_canonical,
)


def test_canonical_grid_is_lps_and_covers_the_scan():
    img = sitk.Image(20, 30, 10, sitk.sitkFloat32)
    img.SetSpacing((1.0, 1.0, 3.0))
    img.SetDirection((-1, 0, 0, 0, 0, 1, 0, -1, 0))
    grid = canonical_grid(img, 2.0)
    assert grid.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert grid.GetSize() == (10, 15, 15)


def test_lps_anatomy_is_found_in_the_same_array_place_whatever_the_storage():
    arr = np.zeros((8, 10, 12), np.float32)
    arr[2, 3, 1] = 100.0  # voxel (x=1, y=3, z=2) in an LPS-aligned file
    img = sitk.GetImageFromArray(arr)
    flipped = sitk.Flip(img, [True, True, False])  # same physical content, RAS-style storage
    assert flipped.GetDirection()[0] == -1
    a = sitk.GetArrayFromImage(to_canonical(img, 1.0))
    b = sitk.GetArrayFromImage(to_canonical(flipped, 1.0))
    assert np.allclose(a, b)
    assert np.unravel_index(a.argmax(), a.shape) == (2, 3, 1)


def test_window_norm_clips_and_scales():
    norm = default_norm("CT", mean=75.0, std=200.0)
    out = norm.apply(np.array([-1000.0, 75.0, 3000.0]))
    assert out.tolist() == pytest.approx([-1.0, 0.0, 1.0])
    assert out.dtype == np.float32
    assert IntensityNorm.from_dict(norm.to_dict()) == norm


def _mr_like(rng: np.random.Generator, air_rows: int, slices: int = 20) -> np.ndarray:
    body = rng.gamma(4.0, 100.0, size=(slices, 30, 30))
    return np.concatenate([rng.uniform(0, 5, (slices, air_rows, 30)), body], axis=1)


def test_foreground_norm_ignores_scale_offset_and_the_air_around_the_body():
    norm = default_norm("MR")
    assert norm.kind == "foreground"
    rng = np.random.default_rng(0)
    x = _mr_like(rng, 4)
    a, b = norm.apply(x), norm.apply(3.0 * x + 10.0)
    assert np.allclose(a, b, atol=1e-4)
    # the same body in a field of view with far more air: its voxels get the same values
    wide = np.concatenate([rng.uniform(0, 5, (20, 60, 30)), x], axis=1)
    assert np.allclose(norm.apply(wide)[:, 60:][:, 4:], a[:, 4:], atol=0.05)
    assert abs(float(a[:, 4:].mean())) < 0.05, "the body is z-scored, not body and air together"


def test_a_thin_slab_is_segmented_on_its_own_grid(tiny_weights):
    """A 7-slice MR slab (fewer slices than a window) comes back labelled, slice for slice."""
    values = _mr_like(np.random.default_rng(1), 6, slices=7).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.5, 1.5, 3.0))
    labels = segment_image(image, load_weights(tiny_weights), "MR", InferenceOptions(device="cpu")).labels
    assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == image.GetSpacing()


@pytest.mark.parametrize("scan_fixture, modality", [("ct_scan", "CT"), ("mr_scan", "MR")])
def test_same_physical_labels_whatever_the_axis_order_and_direction(request, tiny_weights, scan_fixture, modality):
    """A copy of a scan stored with flipped and permuted axes gives the same labels in physical space."""
    image = read_scan(request.getfixturevalue(scan_fixture))
    other = sitk.PermuteAxes(sitk.Flip(image, [True, False, True]), [2, 0, 1])
    assert other.GetDirection() != image.GetDirection()
    loaded = load_weights(tiny_weights)
    options = InferenceOptions(device="cpu")
    a = segment_image(image, loaded, modality, options).labels
    b = segment_image(other, loaded, modality, options).labels
    assert b.GetSize() == other.GetSize() and b.GetDirection() == other.GetDirection()
    b_on_a = sitk.Resample(b, a, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
    la, lb = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b_on_a)
    assert (lb != 255).all(), "the two grids hold the same voxel centres"
    assert len(np.unique(la)) > 1, "the random network must label something for the test to mean anything"
    assert (la == lb).mean() > 0.999


def test_argmax_takes_the_first_of_tied_classes_as_numpy_does():
    rng = np.random.default_rng(3)
    probs = rng.integers(0, 3, size=(5, 6, 7, 8)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(_argmax(probs), np.argmax(probs, axis=0))


def _interpolate_everywhere(probs, grid, native):
    """The plain definition: every class resampled linearly onto the scan, then the argmax."""
    channels = []
    for k in range(probs.shape[0]):
        channel = sitk.GetImageFromArray(probs[k])
        channel.CopyInformation(grid)
        channels.append(sitk.GetArrayFromImage(
            sitk.Resample(channel, native, sitk.Transform(), sitk.sitkLinear, float(k == 0), sitk.sitkFloat32)))
    return np.argmax(np.stack(channels), axis=0)


OBLIQUE = (0.985, -0.174, 0.0, 0.0, 0.0, 1.0, -0.174, -0.985, 0.0)  # 10° about one axis, y and z swapped


@pytest.mark.parametrize(
    "direction, organs",
    [
        ((-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0), "everywhere"),  # flipped, y and z swapped
        ((-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0), "inside"),
        ((-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0), "at one edge"),
        (OBLIQUE, "inside"),
        (OBLIQUE, "at one edge"),
        (OBLIQUE, "at two edges"),
        (OBLIQUE, "nowhere"),
    ],
)
def test_labels_back_on_the_scan_equal_interpolating_every_voxel(direction, organs, monkeypatch):
    """Interpolating only in cells whose corners disagree, and only in the part of the scan
    around organs, must give the plain result."""
    rng = np.random.default_rng(1)
    native = sitk.Image([70, 60, 24], sitk.sitkUInt8)
    native.SetSpacing((0.8, 0.9, 2.5))
    native.SetDirection(direction)
    native.SetOrigin((30.0, -12.0, 40.0))
    grid = canonical_grid(native, 3.0)
    shape = tuple(reversed(grid.GetSize()))
    # smooth random class scores: blobs of every organ with borders in all directions
    logits = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 1.5) * 8 for _ in range(5)])
    # background beyond a box (as outside the body), the box inside the grid or up to edges
    box = {"inside": np.s_[2:-2, 3:-3, 3:-4], "at one edge": np.s_[0:-2, 3:-3, 3:-4],
           "at two edges": np.s_[0:-2, 3:-3, 3:]}.get(organs, np.s_[:, :, :])
    scores = np.exp(logits - logits.max(axis=0))
    probs = (scores / scores.sum(axis=0)).astype(np.float32)
    if organs != "everywhere":
        keep = np.zeros(shape, bool)
        keep[box] = organs != "nowhere"
        probs[:, ~keep] = np.eye(5, dtype=np.float32)[0][:, None]  # exactly background
    labels = probabilities_to_native(probs, grid, native)
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert (labels.GetSize(), labels.GetSpacing(), labels.GetOrigin(), labels.GetDirection()) == (
        native.GetSize(), native.GetSpacing(), native.GetOrigin(), native.GetDirection())
    ours = sitk.GetArrayFromImage(labels)
    plain = _interpolate_everywhere(probs, grid, native)
    assert set(np.unique(ours)) == ({0} if organs == "nowhere" else {0, 1, 2, 3, 4})
    if organs not in ("everywhere", "nowhere"):
        assert (plain == 0).mean() > 0.3, "the test needs background around the organs"
    assert np.count_nonzero(ours != plain) == 0
    # given only the box of probabilities, as `segment_image` does after its body crop, and
    # interpolating the border in many pieces
    monkeypatch.setattr(preprocessing, "BAND_PIECE", 97)
    where = tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, shape, strict=True))
    from_box = probabilities_to_native(np.ascontiguousarray(probs[(slice(None), *where)]), grid, native, where)
    assert np.count_nonzero(sitk.GetArrayFromImage(from_box) != plain) == 0


@pytest.mark.parametrize(
    "direction",
    [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 0, -1, 1, 0, 0, 0, -1, 0)],
    ids=["identity", "flipped", "permuted"],
)
def test_aligned_cell_lookup_equals_simpleitk_resampling(direction):
    """The 1-D lookups for scans whose axes run along the grid's give SimpleITK's nearest
    neighbours, on any region, with spacings that do not divide the grid's."""
    native = sitk.Image([61, 47, 23], sitk.sitkUInt8)
    native.SetSpacing((0.77, 1.3, 2.9))
    native.SetDirection(direction)
    native.SetOrigin((11.3, -7.1, 40.2))
    grid = canonical_grid(native, 3.0)
    cells = np.random.default_rng(2).integers(0, 6, size=tuple(n + 1 for n in reversed(grid.GetSize())), dtype=np.uint8)
    for region in (np.s_[0:23, 0:47, 0:61], np.s_[3:20, 5:40, 1:60]):
        fast = _cells_on_aligned_native(cells, *_index_map(native, grid), region)
        np.testing.assert_array_equal(fast, _cells_resampled(cells, grid, native, region))
    oblique = sitk.Image(native)
    oblique.SetDirection(OBLIQUE)
    assert _cells_on_aligned_native(cells, *_index_map(oblique, canonical_grid(oblique, 3.0)), region) is None
