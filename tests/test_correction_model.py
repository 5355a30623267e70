"""The learned correction (bundled weights) and the brush on a small synthetic CT: hints do
what they say, only near themselves, and never touch the caller's array."""

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.correction.hints import Hint
from napari_mmseg.correction.model import INPUTS, bundled_correction_weights, load_correction_model
from napari_mmseg.correction.refine import brush, refine
from napari_mmseg.errors import WeightsError
from napari_mmseg.models.weights import bundled_weights

SPACING = (1.5, 1.5, 3.0)  # x, y, z: anisotropic, as CT usually is
LIVER, SPLEEN = 1, 2


@pytest.fixture(scope="module")
def model():
    return load_correction_model(device="cpu")


def ball(shape, centre, radius_mm):
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    sz, sy, sx = SPACING[::-1]
    return ((z - centre[0]) * sz) ** 2 + ((y - centre[1]) * sy) ** 2 + ((x - centre[2]) * sx) ** 2 <= radius_mm**2


@pytest.fixture(scope="module")
def phantom():
    """A body in air, a spleen (120 HU, contrast-enhanced) of 24 mm radius and a liver (90 HU)
    beside it; the reference labels. The body is fat (-100 HU), as around abdominal organs: a
    body of uniform soft tissue at an unenhanced organ's density would be spleen-like to a
    network trained on non-contrast appearances too."""
    shape = (40, 96, 96)
    rng = np.random.default_rng(0)
    values = np.full(shape, -1000.0, np.float32)
    values[ball(shape, (20, 48, 48), 70)] = -100
    reference = np.zeros(shape, np.uint8)
    spleen, liver = ball(shape, (20, 48, 64), 24), ball(shape, (20, 48, 26), 26)
    values[spleen], values[liver] = 120, 90
    reference[spleen], reference[liver] = SPLEEN, LIVER
    values += rng.normal(0, 8, shape).astype(np.float32)
    scan = sitk.GetImageFromArray(values)
    scan.SetSpacing(SPACING)
    scan.SetOrigin((-72.0, -72.0, -60.0))
    return scan, reference


def dice(a, b, k):
    return 2 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k))


def test_no_hints_leaves_the_labels_as_they_are(model, phantom):
    scan, reference = phantom
    out = refine(scan, reference, [], "CT", model)
    assert np.array_equal(out.labels, reference) and out.labels is not reference
    assert all(r.stop == r.start for r in out.region)


def test_a_positive_click_adds_the_missed_part_and_only_inside_its_region(model, phantom):
    scan, reference = phantom
    labels = reference.copy()
    labels[:, :, 64:][labels[:, :, 64:] == SPLEEN] = 0  # the spleen's right half missed
    before = labels.copy()
    click = Hint(SPLEEN, True, ((20, 48, 72),))
    out = refine(scan, labels, [click], "CT", model)
    assert np.array_equal(labels, before), "the caller's array is never modified"
    assert out.labels[20, 48, 72] == SPLEEN
    assert dice(out.labels, reference, SPLEEN) > dice(labels, reference, SPLEEN) + 0.1
    outside = np.ones(labels.shape, bool)
    outside[out.region] = False
    assert np.array_equal(out.labels[outside], labels[outside])
    changed = out.labels != labels
    assert set(np.unique(out.labels[changed])) <= {SPLEEN}, "a positive spleen click only adds spleen"


def test_a_negative_click_removes_a_false_piece(model, phantom):
    scan, reference = phantom
    labels = reference.copy()
    false_piece = ball(labels.shape, (20, 80, 48), 9) & (reference == 0)
    labels[false_piece] = LIVER
    out = refine(scan, labels, [Hint(LIVER, False, ((20, 80, 48),))], "CT", model)
    assert out.labels[20, 80, 48] != LIVER
    assert np.sum(out.labels[false_piece] == LIVER) < 0.5 * false_piece.sum()
    changed = out.labels != labels
    assert (labels[changed] == LIVER).all(), "a negative liver click only takes liver away"


def test_the_brush_paints_a_ball_of_the_radius(phantom):
    scan, reference = phantom
    labels = np.zeros_like(reference)
    out = brush(scan, labels, Hint(SPLEEN, True, ((20, 48, 48),)), radius_mm=5.0)
    painted = out.labels == SPLEEN
    assert painted[20, 48, 48] and np.array_equal(painted, ball(labels.shape, (20, 48, 48), 5.0))
    assert not labels.any()
    erased = brush(scan, out.labels, Hint(SPLEEN, False, ((20, 48, 48),)))
    assert not erased.labels.any()


def test_the_bundled_weights_say_what_they_are():
    meta = load_correction_model(device="cpu").meta
    assert bundled_correction_weights().is_file() and meta.inputs == INPUTS
    assert set(meta.normalization) == {"CT", "MR"}
    assert meta.training["steps"] > 0 and meta.training["cases"]
    assert not set(meta.training["held_out"]) & set(meta.training["cases"])


def test_a_segmentation_weights_file_is_refused_by_name():
    with pytest.raises(WeightsError, match="segmentation network .*not a correction model"):
        load_correction_model(bundled_weights("msbn"))


def test_a_scan_stored_mirrored_gets_the_same_answer(model, phantom):
    """The cube is cut on an LPS-aligned grid: how a file orders its axes does not matter."""
    scan, reference = phantom
    labels = reference.copy()
    labels[:, :, 64:][labels[:, :, 64:] == SPLEEN] = 0
    mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(scan)[:, :, ::-1].copy())
    mirrored.SetSpacing(scan.GetSpacing())
    mirrored.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    mirrored.SetOrigin(scan.TransformIndexToPhysicalPoint((scan.GetSize()[0] - 1, 0, 0)))
    width = labels.shape[2]
    plain = refine(scan, labels, [Hint(SPLEEN, True, ((20, 48, 72),))], "CT", model)
    click = Hint(SPLEEN, True, ((20, 48, width - 1 - 72),))
    flipped = refine(mirrored, labels[:, :, ::-1].copy(), [click], "CT", model)
    assert np.mean(flipped.labels[:, :, ::-1] == plain.labels) > 0.999
