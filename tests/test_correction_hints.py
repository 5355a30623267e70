"""Correction hints in world millimetres: files round-trip, bad files give one clear HintError."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.correction.hints import Hint, point_mm_of, read_hints, voxel_of, write_hints
from napari_mmseg.errors import HintError, MmsegError


@pytest.fixture()
def scan() -> sitk.Image:
    """A small scan on an oblique, anisotropic grid stored flipped, as scanner files are."""
    image = sitk.GetImageFromArray(np.zeros((6, 10, 12), np.int16))  # z, y, x
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetOrigin((120.0, -40.5, 300.0))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((-c, -s, 0.0, s * 1.0, -c, 0.0, 0.0, 0.0, 1.0))
    return image


HINTS = [
    Hint(2, True, ((1, 2, 3),)),
    Hint(0, False, ((5, 9, 11),)),
    Hint(4, False, ((0, 0, 0), (0, 1, 1), (1, 2, 2))),  # a scribble
]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_hints_round_trip(tmp_path, scan, suffix):
    path = write_hints(tmp_path / f"hints{suffix}", HINTS, scan)
    assert read_hints(path, scan) == HINTS
    with pytest.raises(MmsegError, match="exists"):
        write_hints(path, HINTS, scan)
    write_hints(path, HINTS[:1], scan, overwrite=True)
    assert read_hints(path, scan) == HINTS[:1]


def test_points_are_lps_mm_of_the_voxel_centres(scan):
    x, y, z = point_mm_of((1, 2, 3), scan)
    assert np.allclose((x, y, z), scan.TransformIndexToPhysicalPoint((3, 2, 1)))
    # a point 0.3 voxel off a centre still lands on that voxel
    nudged = scan.TransformContinuousIndexToPhysicalPoint((3.3, 1.7, 1.2))
    assert voxel_of(nudged, scan, "test") == (1, 2, 3)


def test_csv_rows_with_a_stroke_form_one_scribble_and_organ_spellings_are_understood(tmp_path, scan):
    a, b = point_mm_of((0, 0, 0), scan), point_mm_of((0, 1, 1), scan)
    path = tmp_path / "h.csv"
    path.write_text("x,y,z,organ,sign,stroke\n"
                    f"{a[0]},{a[1]},{a[2]},Right Kidney,+,s1\n"
                    f"{a[0]},{a[1]},{a[2]},liver,-,\n"
                    f"{b[0]},{b[1]},{b[2]},kidney_right,+,s1\n"
                    f"{b[0]},{b[1]},{b[2]},background,+\n")  # the stroke left off
    assert read_hints(path, scan) == [Hint(3, True, ((0, 0, 0), (0, 1, 1))), Hint(1, False, ((0, 0, 0),)),
                                      Hint(0, True, ((0, 1, 1),))]


def _csv(tmp_path, body: str, header: str = "x,y,z,organ,sign"):
    path = tmp_path / "hints.csv"
    path.write_text(f"{header}\n{body}\n")
    return path


def _centre(scan):
    return point_mm_of((2, 4, 5), scan)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, s: _csv(d, "1000,0,0,spleen,+"), r"line 2: the point \(1000.0, 0.0, 0.0\) mm lies outside the scan "
                                                    r"\(its voxels span x .* mm\)"),
        (lambda d, s: _csv(d, "{},{},{},pancreas,+".format(*_centre(s))),
         "unknown organ 'pancreas'; use one of background, liver, spleen, kidney_right, kidney_left"),
        (lambda d, s: _csv(d, "{},{},{},liver,yes".format(*_centre(s))), "the sign is 'yes'; use \\+"),
        (lambda d, s: _csv(d, "nan,0,0,liver,+"), "not a number"),
        (lambda d, s: _csv(d, "abc,0,0,liver,+"), "'abc' is not a coordinate"),
        (lambda d, s: _csv(d, "1,2,liver,+"), "4 fields where the header names 5"),
        (lambda d, s: _csv(d, "1,2,3,liver,+", header="a,b,c"), "header x,y,z,organ,sign"),
        (lambda d, s: _csv(d, "", header="x,y,z,organ,sign"), "holds no hints"),
        (lambda d, s: (d / "e.csv").touch() or d / "e.csv", "is empty"),
        (lambda d, s: (d / "e.json").write_text("  \n") and d / "e.json", "is empty"),
        (lambda d, s: (d / "h.json").write_text("{not json") and d / "h.json", "not valid JSON"),
        (lambda d, s: (d / "h.json").write_text('{"hints": []}') and d / "h.json", "holds no hints"),
        (lambda d, s: (d / "h.json").write_text('[1, 2]') and d / "h.json", "expected"),
        (lambda d, s: (d / "h.json").write_text('{"hints": [{"organ": "liver", "sign": "+"}]}') and d / "h.json",
         "hint 1: each hint needs organ, sign and points_mm"),
        (lambda d, s: (d / "h.json").write_text(json.dumps(
            {"hints": [{"organ": "liver", "sign": "+", "points_mm": [[1, 2]]}]})) and d / "h.json",
         "needs 3 coordinates"),
        (lambda d, s: (d / "h.json").write_text('{"hints": [{"organ": "liver", "sign": "+", '
                                                '"points_mm": [[NaN, 0, 0]]}]}') and d / "h.json", "not a number"),
        (lambda d, s: (d / "h.json").write_text(json.dumps(
            {"hints": [{"organ": "liver", "sign": "+", "points_mm": [[0, 0, -500]]}]})) and d / "h.json",
         "lies outside the scan"),
        (lambda d, s: _csv(d, "1,2,3,liver," + "+" * 200_000), "not a readable CSV file"),  # beyond csv's field limit
        (lambda d, s: d / "missing.csv", "does not exist"),
        (lambda d, s: (d / "h.txt").write_text("x") and d / "h.txt", "must be a .csv or .json"),
    ],
)
def test_bad_hints_give_one_clear_hint_error(tmp_path, scan, make, message):
    with pytest.raises(HintError, match=message) as caught:
        read_hints(make(tmp_path, scan), scan)
    assert "\n" not in str(caught.value)


def test_a_stroke_cannot_change_organ(tmp_path, scan):
    a = _centre(scan)
    path = _csv(tmp_path, "{0},{1},{2},liver,+,1\n{0},{1},{2},spleen,+,1".format(*a), header="x,y,z,organ,sign,stroke")
    with pytest.raises(HintError, match="line 3: stroke 1 changes organ or sign"):
        read_hints(path, scan)
