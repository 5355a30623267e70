"""Display geometry: the displayed array and its layer transform put every voxel where
SimpleITK puts it, and labels go back onto the source grid exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.errors import ScanError
from napari_mmseg.io.display_geometry import (
    OBLIQUE_TOLERANCE_DEG,
    geometry_from_matrix,
    image_from_layer,
    labels_to_source,
    to_display,
)


def napari_world(transform: dict, index_zyx) -> np.ndarray:
    """What napari computes for a data index: affine(translate + scale * index), in z, y, x."""
    point = transform["translate"] + transform["scale"] * np.asarray(index_zyx, float)
    affine = transform["affine"]
    return point if affine is None else affine[:3, :3] @ point + affine[:3, 3]


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def synthetic(direction: np.ndarray, size=(7, 5, 4)) -> sitk.Image:
    values = np.arange(np.prod(size), dtype=np.int16).reshape(size[::-1])
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((-12.5, 40.25, 3.0))
    image.SetDirection(tuple(direction.ravel()))
    return image


def signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            yield np.eye(3)[list(perm)] * np.array(signs)[:, None]


@pytest.mark.parametrize("tilt", [0.0, 0.4, 20.0])
def test_every_axis_order_round_trips_and_lands_on_the_same_world_points(tilt):
    corners = list(itertools.product((0, 1), repeat=3))
    for axes in signed_permutations():
        image = synthetic(rotation(0, tilt) @ rotation(2, tilt / 2) @ axes)
        array, geometry = to_display(image)
        shown = geometry.display.image(array)
        # The displayed grid runs along L, P, S (exactly, up to the residual tilt).
        assert geometry.display.orientation == "LPS"
        assert geometry.oblique == (tilt > OBLIQUE_TOLERANCE_DEG)
        transform = geometry.layer_transform()
        for corner in corners:
            index = [c * (n - 1) for c, n in zip(corner, shown.GetSize(), strict=True)]
            expected = shown.TransformIndexToPhysicalPoint(index)
            got = napari_world(transform, index[::-1])[::-1]
            # Residual tilts below the tolerance are left out of the display, by design.
            assert np.allclose(got, expected, atol=1e-6 if tilt == 0 or geometry.oblique else 0.5)
        # The same voxel value sits at the same physical point in the file and on screen.
        source_point = image.TransformIndexToPhysicalPoint((0, 0, 0))
        display_index = shown.TransformPhysicalPointToIndex(source_point)
        assert array[display_index[::-1]] == sitk.GetArrayViewFromImage(image)[0, 0, 0]
        back = labels_to_source(array, geometry)
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
        assert (back.GetSize(), back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == (
            image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
        )


@pytest.mark.parametrize(
    "path",
    ["totalsegmentator-examples/example_ct_sm.nii.gz", "chaos-t2-sample/label_2.nii.gz",
     "totalsegmentator-examples/example_mr_sm.nii.gz"],
)
def test_real_scans_round_trip_exactly(data_dir, path):
    image = sitk.ReadImage(str(data_dir / path))
    array, geometry = to_display(image)
    back = labels_to_source(array, geometry)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    assert back.GetSpacing() == image.GetSpacing()


def test_patient_right_is_on_screen_left_and_anterior_up(data_dir):
    """TotalSegmentator's CT is stored RAS (direction diag(-1, -1, 1)); on screen the liver
    (patient right) must be left of the spleen and the kidneys behind (below) the liver."""
    seg = sitk.ReadImage(str(data_dir / "totalsegmentator-examples" / "example_seg.nii.gz"))
    assert seg.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    array, _ = to_display(seg)

    def centre(label):  # (z, y, x) index: x grows to screen right, y to screen bottom
        return np.argwhere(array == label).mean(axis=0)

    liver, spleen, kidney_right = centre(5), centre(1), centre(2)
    assert liver[2] < spleen[2]
    assert liver[1] < kidney_right[1]


def test_image_from_layer_rebuilds_the_displayed_grid(data_dir):
    image = sitk.ReadImage(str(data_dir / "totalsegmentator-examples" / "example_ct_sm.nii.gz"))
    array, geometry = to_display(image)
    rebuilt = image_from_layer(array, geometry)
    assert rebuilt.GetSize() == geometry.display.size
    assert rebuilt.GetOrigin() == geometry.display.origin
    assert rebuilt.GetDirection() == geometry.display.direction
    with pytest.raises(ScanError, match="does not fit"):
        image_from_layer(array[:-1], geometry)


def test_a_layer_matrix_gives_back_the_grid_it_came_from():
    image = synthetic(rotation(1, 30.0) @ rotation(2, 10.0))
    array, geometry = to_display(image)
    transform = geometry.layer_transform()
    matrix = np.eye(4) if transform["affine"] is None else transform["affine"]
    physical = np.diag([*transform["scale"], 1.0])
    physical[:3, 3] = transform["translate"]
    recovered = geometry_from_matrix(array.shape, matrix @ physical)
    assert recovered.source.size == geometry.display.size
    assert np.allclose(recovered.source.spacing, geometry.display.spacing)
    assert np.allclose(recovered.source.origin, geometry.display.origin)
    assert np.allclose(recovered.source.direction, geometry.display.direction)


def test_bad_layer_transforms_are_refused_in_words():
    shear = np.eye(4)
    shear[0, 1] = 0.5
    with pytest.raises(ScanError, match="shear"):
        geometry_from_matrix((4, 5, 6), shear)
    with pytest.raises(ScanError, match="2-D"):
        geometry_from_matrix((5, 6), np.eye(3))
    with pytest.raises(ScanError, match="3-D"):
        to_display(sitk.Image(5, 6, sitk.sitkUInt8))
