"""Review aids: volumes, confidence and plausibility flags on label maps of known anatomy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.review.flags import TRAINING_VOLUMES_ML, VOLUME_MARGIN, review_image

SPACING = (2.0, 2.0, 2.0)  # mm: a voxel is 0.008 ml
VOXEL_ML = 0.008
# label: x range of its box; x index grows to the patient's left
# with the identity direction (LPS), so the liver and right kidney sit at small x.
BOXES = {1: (5, 60), 2: (150, 175), 3: (70, 90), 4: (110, 130)}


def anatomy() -> np.ndarray:
    """Liver 55×50×50 voxels (1100 ml), spleen 25×40×40 (320 ml), kidneys 20×40×20 (128 ml),
    laid out right to left as in a patient seen in LPS."""
    labels = np.zeros((60, 60, 180), np.uint8)
    for label, (x0, x1) in BOXES.items():
        zy = {1: np.s_[5:55, 5:55], 2: np.s_[10:50, 10:50]}.get(label, np.s_[20:40, 10:50])
        labels[(*zy, slice(x0, x1))] = label
    return labels


def image(labels: np.ndarray, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    out = sitk.GetImageFromArray(labels)
    out.SetSpacing(SPACING)
    out.SetDirection(tuple(float(v) for v in direction))
    out.SetOrigin((-180.0, 30.0, 12.5))
    return out


def by_name(review) -> dict:
    return {o.name: o for o in review.organs}


def test_volumes_components_and_no_flags_on_plausible_anatomy():
    labels = anatomy()
    review = review_image(image(labels))
    organs = by_name(review)
    for label, name in enumerate(("liver", "spleen", "kidney_right", "kidney_left"), start=1):
        assert organs[name].label == label
        assert organs[name].volume_ml == pytest.approx((labels == label).sum() * VOXEL_ML)
        assert organs[name].components == 1
        assert math.isnan(organs[name].confidence)
    assert organs["liver"].volume_ml > TRAINING_VOLUMES_ML["liver"][0]  # the layout is plausible on purpose
    assert review.flags == ()


def test_volume_outside_the_training_range_and_missing_organ():
    labels = anatomy()
    labels[labels == 2] = 0  # no spleen
    labels[labels == 4] = 0
    labels[20:40, 10:50, 110:115] = 4  # a 32 ml left kidney
    review = review_image(image(labels))
    organs = by_name(review)
    assert organs["spleen"].flags == ("not found",)
    assert organs["spleen"].volume_ml == 0.0 and organs["spleen"].components == 0
    lo, hi = TRAINING_VOLUMES_ML["kidney_left"]
    assert organs["kidney_left"].volume_ml < lo / VOLUME_MARGIN
    assert organs["kidney_left"].flags == (f"volume 32.0 ml is below the training range {lo:.0f}–{hi:.0f} ml",)
    assert "Spleen: not found" in review.flags
    assert "Left kidney: volume 32.0 ml is below" in " ".join(review.flags)


def test_volume_above_the_range():
    labels = np.zeros((100, 120, 150), np.uint8)
    labels[:, :, :80] = 1  # 100 × 120 × 80 voxels = 7.68 l of liver
    (flag,) = by_name(review_image(image(labels)))["liver"].flags
    assert flag.startswith("volume 7680.0 ml is above the training range")


def test_an_organ_cut_by_the_scans_edge_is_not_called_small():
    """A 10 mm slab through the same anatomy: every organ is cut by its top and bottom
    slices, so its volume is partial; the reviewer is told that, not "below the range"."""
    review = review_image(image(anatomy()[28:33].copy()))
    organs = by_name(review)
    for name, organ in organs.items():
        assert organ.at_scan_edge, name
        assert organ.volume_ml < TRAINING_VOLUMES_ML[name][0] / VOLUME_MARGIN
        assert organ.flags == (f"reaches the edge of the scan: its {organ.volume_ml:.1f} ml are only the part in view",)
    assert not any(o.at_scan_edge for o in review_image(image(anatomy())).organs)


def test_organ_split_into_large_pieces_but_not_by_specks():
    labels = anatomy()
    labels[20:40, 10:50, 78:82] = 0  # the right kidney cut into two halves of 51.2 ml
    labels[45, 45, 100] = 3  # a speck of one voxel
    organs = by_name(review_image(image(labels)))
    assert organs["kidney_right"].components == 2
    assert any(f.startswith("split into 2 large pieces (the second 51.2 ml") for f in organs["kidney_right"].flags)
    labels[20:40, 10:50, 78:82] = 3
    assert by_name(review_image(image(labels)))["kidney_right"].components == 1  # the speck is not large


def test_swapped_kidneys_are_flagged_by_side():
    labels = anatomy()
    swapped = labels.copy()
    swapped[labels == 3], swapped[labels == 4] = 4, 3
    organs = by_name(review_image(image(swapped)))
    assert "on the patient's left of the midline" in organs["kidney_right"].flags[0]
    assert "on the patient's right of the midline" in organs["kidney_left"].flags[0]
    assert organs["liver"].flags == () and organs["spleen"].flags == ()


def test_one_kidney_on_the_wrong_side_without_the_other():
    labels = anatomy()
    labels[labels == 3] = 0
    labels[labels == 4] = 3  # the only kidney, labelled right, lies left: liver–spleen midline
    organs = by_name(review_image(image(labels)))
    assert any("patient's left of the midline" in f for f in organs["kidney_right"].flags)


def test_left_and_right_come_from_physical_coordinates_not_array_order():
    labels = anatomy()
    flipped = (-1, 0, 0, 0, 1, 0, 0, 0, 1)
    # the same array read with x flipped: every organ is now on the other side of the patient
    mirrored = review_image(image(labels, flipped))
    assert "on the patient's left of the spleen" in by_name(mirrored)["liver"].flags[0]
    assert len(mirrored.flags) == 3  # liver, both kidneys
    # the array stored flipped, with a direction that says so: correct anatomy, no flags
    assert review_image(image(labels[:, :, ::-1].copy(), flipped)).flags == ()


def test_confidence_is_the_mean_inside_each_organ_and_the_report_is_json():
    labels = anatomy()
    confidence = np.where(labels == 1, 0.9, 0.6).astype(np.float32)
    confidence[labels == 3] = np.linspace(0.5, 1.0, (labels == 3).sum(), dtype=np.float32)
    conf = image(confidence)
    review = review_image(image(labels), conf)
    organs = by_name(review)
    assert organs["liver"].confidence == pytest.approx(0.9, abs=1e-6)
    assert organs["spleen"].confidence == pytest.approx(0.6, abs=1e-6)
    assert organs["kidney_right"].confidence == pytest.approx(0.75, abs=1e-5)
    report = json.loads(json.dumps(review.to_dict(), allow_nan=False))
    assert report["organs"]["liver"] == {"label": 1, "volume_ml": round(organs["liver"].volume_ml, 1),
                                         "confidence": 0.9, "components": 1, "at_scan_edge": False,
                                         "flags": []}
    absent = review_image(image(np.zeros_like(labels)), conf).to_dict()
    assert absent["organs"]["spleen"]["confidence"] is None
    assert len(absent["flags"]) == 4


def test_confidence_on_another_grid_is_refused():
    with pytest.raises(ValueError, match="voxels"):
        review_image(image(anatomy()), image(np.ones((10, 10, 10), np.float32)))


def test_a_real_scan_passes_and_its_mirror_image_is_flagged(mr_scan):
    """CHAOS patient 2 (a training case: a check of the flags, not of accuracy) with the
    bundled MR network: every organ found on its side, confident inside. The same voxels
    with the x axis of the direction negated (a file with wrong orientation metadata) put
    the liver on the patient's left: the review must say that left and right look swapped."""
    from napari_mmseg.inference.segment import InferenceOptions, segment_image
    from napari_mmseg.io.scan_io import read_scan
    from napari_mmseg.models.weights import bundled_weights, load_weights

    scan = read_scan(mr_scan)
    loaded = load_weights(bundled_weights("individual", "MR"))
    review = segment_image(scan, loaded, "MR", InferenceOptions(device="cpu")).review
    assert not [f for f in review.flags if " lies " in f or "not found" in f or f.startswith("Scan:")], review.flags
    assert all(o.confidence > 0.9 for o in review.organs)
    mirrored = sitk.Image(scan)
    direction = np.reshape(scan.GetDirection(), (3, 3)).copy()
    direction[0] *= -1  # physical x flipped: left and right swap
    mirrored.SetDirection(direction.ravel().tolist())
    flags = segment_image(mirrored, loaded, "MR", InferenceOptions(device="cpu")).review.flags
    # a network that knows where organs lie labels the mirrored scan by position: the mirror
    # check (orientation_check.py) must say so, whatever the volumes
    assert flags[0].startswith("Scan: left and right look swapped"), flags
