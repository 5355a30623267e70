"""Per-voxel confidence and uncertainty: their values, and their place on the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.scan_io import read_scan
from napari_mmseg.models.weights import load_weights
from napari_mmseg.preprocessing import canonical_grid
from napari_mmseg.review.confidence import normalised_entropy, probability_maps


def test_normalised_entropy_runs_from_sure_to_uniform():
    probs = np.zeros((5, 1, 1, 3), np.float32)
    probs[2, 0, 0, 0] = 1.0  # one-hot
    probs[:, 0, 0, 1] = 0.2  # uniform
    probs[:2, 0, 0, 2] = 0.5  # two classes tied: log 2 / log 5
    assert normalised_entropy(probs)[0, 0].tolist() == pytest.approx([0.0, 1.0, np.log(2) / np.log(5)], abs=1e-6)


def scan_and_probabilities() -> tuple[sitk.Image, sitk.Image, np.ndarray]:
    """A scan stored flipped in x and y at 2.5 mm, its 4 mm canonical grid, and probabilities
    there: certain background except a blob of mixed classes."""
    scan = sitk.Image([40, 36, 30], sitk.sitkInt16)
    scan.SetSpacing((2.5, 2.5, 2.5))
    scan.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    scan.SetOrigin((50.0, 40.0, -30.0))
    grid = canonical_grid(scan, 4.0)
    shape = tuple(reversed(grid.GetSize()))
    probs = np.zeros((5, *shape), np.float32)
    probs[0] = 1.0
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    blob = (z - 10) ** 2 + (y - 12) ** 2 + (x - 8) ** 2 < 16
    mix = np.exp(-((z - 10) ** 2 + (y - 12) ** 2 + (x - 8) ** 2) / 8.0)
    probs[0][blob] = 1.0 - mix[blob]
    probs[1][blob] = 0.7 * mix[blob]
    probs[3][blob] = 0.3 * mix[blob]
    return scan, grid, probs


def resampled(values: np.ndarray, grid: sitk.Image, scan: sitk.Image, outside: float) -> np.ndarray:
    """What one plain SimpleITK resampling of a whole map gives: the reference."""
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(grid)
    return sitk.GetArrayFromImage(sitk.Resample(image, scan, sitk.Transform(), sitk.sitkLinear, outside))


def test_maps_equal_a_plain_resampling_of_the_whole_grid():
    scan, grid, probs = scan_and_probabilities()
    confidence, uncertainty = probability_maps(probs, grid, scan)
    for image in (confidence, uncertainty):
        assert image.GetPixelID() == sitk.sitkFloat32
        assert (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == (
            scan.GetSize(), scan.GetSpacing(), scan.GetOrigin(), scan.GetDirection())
    expected_conf = resampled(probs.max(axis=0), grid, scan, 1.0)
    expected_unc = resampled(normalised_entropy(probs), grid, scan, 0.0)
    assert expected_conf.min() < 0.75 and expected_unc.max() > 0.3  # the blob reaches the scan
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(confidence), expected_conf, atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(uncertainty), expected_unc, atol=1e-5)


def test_maps_from_the_body_box_alone():
    scan, grid, probs = scan_and_probabilities()
    box = (slice(4, 18), slice(6, 20), slice(2, 14))  # holds the blob and a margin
    whole = probability_maps(probs, grid, scan)
    cropped = probability_maps(np.ascontiguousarray(probs[(slice(None), *box)]), grid, scan, where=box)
    for a, b in zip(whole, cropped, strict=True):
        np.testing.assert_allclose(sitk.GetArrayViewFromImage(b), sitk.GetArrayViewFromImage(a), atol=1e-6)


def test_segmentation_carries_the_maps_and_the_review(ct_scan, tiny_weights):
    image = read_scan(ct_scan)
    loaded = load_weights(tiny_weights)
    result = segment_image(image, loaded, "CT", InferenceOptions(device="cpu"))
    assert {"uncertainty", "review"} <= set(result.timings)
    conf = sitk.GetArrayViewFromImage(result.confidence)
    unc = sitk.GetArrayViewFromImage(result.uncertainty)
    assert conf.shape == unc.shape == sitk.GetArrayViewFromImage(image).shape
    assert result.confidence.GetDirection() == image.GetDirection()
    assert conf.min() >= 0.2 - 1e-6 and conf.max() <= 1.0
    assert unc.min() >= 0.0 and unc.max() <= 1.0
    labels = sitk.GetArrayViewFromImage(result.labels)
    for organ in result.review.organs:
        inside = labels == organ.label
        if inside.any():
            assert organ.confidence == pytest.approx(float(conf[inside].mean()), rel=1e-4)
    bare = segment_image(image, loaded, "CT", InferenceOptions(device="cpu", uncertainty=False))
    assert bare.confidence is None and bare.uncertainty is None and "uncertainty" not in bare.timings
    assert np.array_equal(sitk.GetArrayViewFromImage(bare.labels), labels)
    assert [o.volume_ml for o in bare.review.organs] == [o.volume_ml for o in result.review.organs]


def test_a_sure_network_gives_certain_maps_without_interpolating():
    scan, grid, probs = scan_and_probabilities()
    probs[:] = 0.0
    probs[2] = 1.0  # sure of the spleen everywhere
    confidence, uncertainty = probability_maps(probs, grid, scan)
    assert sitk.GetArrayViewFromImage(confidence).min() == 1.0
    assert sitk.GetArrayViewFromImage(uncertainty).max() == 0.0
