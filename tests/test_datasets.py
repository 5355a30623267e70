"""Dataset layouts: small synthetic fixtures in each layout, and the real folders when present.

Every fixture is made in tmp_path from one synthetic volume whose organ blobs are known in our
ids; each layout encodes them its own way, and loading must give them back on the same voxels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.errors import ScanError
from napari_mmseg.io.datasets import (
    CHAOS_LABEL_MAP,
    LABEL_PRESETS,
    ChaosCase,
    label_map_from_names,
    load_btcv_folder,
    load_chaos_folder,
    load_dataset,
    to_their_ids,
)
from napari_mmseg.io.scan_io import SCAN_DTYPES, same_geometry
from napari_mmseg.organs import ORGAN_BY_NAME

SHAPE = (6, 24, 20)  # z, y, x
SPACING = (1.5, 1.25, 4.0)  # x, y, z in mm
ORIGIN = (-30.0, 12.5, 40.0)
ORGAN_IDS = {o.name: o.label for o in ORGAN_BY_NAME.values()}
LIVER, SPLEEN, KIDNEY_R, KIDNEY_L = (ORGAN_IDS[n] for n in ("liver", "spleen", "kidney_right", "kidney_left"))


def synthetic_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scan (z, y, x), its organ blobs in our ids, and a mask of one extra, unwanted organ."""
    rng = np.random.default_rng(seed)
    ours = np.zeros(SHAPE, np.uint8)
    ours[0:4, 2:10, 2:9] = LIVER
    ours[1:5, 2:8, 12:18] = SPLEEN
    ours[3:6, 14:20, 2:7] = KIDNEY_R
    ours[2:5, 14:21, 13:17] = KIDNEY_L
    ours[5, 0, 0] = LIVER  # a lone voxel on the last slice: tells slices apart
    other = np.zeros(SHAPE, bool)
    other[0:2, 20:23, 10:12] = True
    scan = rng.normal(100, 10, SHAPE) + 40 * ours
    return scan.astype(np.float32), ours, other


def encode(ours: np.ndarray, other: np.ndarray, ids: dict[str, int], other_id: int) -> np.ndarray:
    """Our ids → a dataset's ids (by organ name), plus an organ we do not segment."""
    out = np.zeros(ours.shape, np.uint16)
    for name, src in ids.items():
        out[ours == ORGAN_IDS[name]] = src
    out[other] = other_id
    return out


def write_nifti(values: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # not the identity: geometry must be kept
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def check_loaded(image: sitk.Image, labels: sitk.Image, ours: np.ndarray) -> None:
    assert sitk.GetArrayViewFromImage(image).dtype in SCAN_DTYPES
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert same_geometry(image, labels)
    assert np.allclose(image.GetSpacing(), SPACING) and np.allclose(image.GetOrigin(), ORIGIN)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), ours)


# --- label names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("right_kidney", "kidney_right"),
        ("Kidney (R)", "kidney_right"),
        ("kidney R", "kidney_right"),
        ("R kidney", "kidney_right"),
        ("Right Kidney", "kidney_right"),
        ("Kidney_Rt", "kidney_right"),
        ("left kidney", "kidney_left"),
        ("Kidney (L)", "kidney_left"),
        ("kidney_left", "kidney_left"),
        ("LK", "kidney_left"),
        ("Liver", "liver"),
        ("spleen", "spleen"),
    ],
)
def test_label_map_from_names_spellings(name: str, ours: str) -> None:
    assert label_map_from_names({name: 9, "gallbladder": 4, "background": 0}) == {9: ORGAN_IDS[ours]}


# --- nnU-Net and BTCV -------------------------------------------------------------------------


def test_nnunet_maps_unusual_ids_by_name(tmp_path: Path) -> None:
    scan, ours, other = synthetic_case()
    names = {"Kidney (R)": 3, "Liver": 11, "kidney L": 7, "SPLEEN": 5}
    ids = {"kidney_right": 3, "liver": 11, "kidney_left": 7, "spleen": 5}
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "gallbladder": 1, **names}}
    meta["file_ending"] = ".nii.gz"
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    write_nifti(scan, tmp_path / "imagesTr" / "case_7_0000.nii.gz")
    write_nifti(encode(ours, other, ids, other_id=1), tmp_path / "labelsTr" / "case_7.nii.gz")

    (case,) = load_dataset(tmp_path)
    assert (case.name, case.modality) == ("case_7", "CT")
    check_loaded(*case.load(), ours)


def test_btcv_folder_pairs_img_with_label(tmp_path: Path) -> None:
    for number, seed in (("0001", 0), ("0022", 1)):
        scan, ours, other = synthetic_case(seed)
        btcv = encode(ours, other, {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 6}, other_id=4)
        write_nifti(scan, tmp_path / "img" / f"img{number}.nii.gz")
        write_nifti(btcv, tmp_path / "label" / f"label{number}.nii.gz")
    write_nifti(scan, tmp_path / "img" / "img0040.nii.gz")  # no labels: not a training case

    cases = load_dataset(tmp_path)
    assert [(c.name, c.modality) for c in cases] == [("btcv_0001", "CT"), ("btcv_0022", "CT")]
    assert load_btcv_folder(tmp_path) == cases
    check_loaded(*cases[1].load(), synthetic_case(1)[1])
    with pytest.raises(ScanError, match="CT scans, not MR"):
        load_dataset(tmp_path, modality="MR")


# --- CHAOS ------------------------------------------------------------------------------------

CHAOS_GREY = {"liver": 63, "kidney_right": 126, "kidney_left": 189, "spleen": 252}
# File number of the slice at each position: sorted file names are not slice order.
FILE_NUMBER = (4, 1, 6, 2, 5, 3)


def write_chaos_patient(patient: Path, seed: int = 0) -> np.ndarray:
    """A T2SPIR DICOM series and its Ground PNG masks as CHAOS ships them; returns our ids."""
    scan, ours, other = synthetic_case(seed)
    grey = encode(ours, other, CHAOS_GREY, other_id=0).astype(np.uint8)
    grey[0, 2, 2] = 60  # within the challenge's liver band (55-70)
    dicom, ground = patient / "T2SPIR" / "DICOM_anon", patient / "T2SPIR" / "Ground"
    dicom.mkdir(parents=True)
    ground.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z, number in enumerate(FILE_NUMBER):
        stem = f"IMG-0002-{number:05d}"
        position = (ORIGIN[0], ORIGIN[1], ORIGIN[2] + z * SPACING[2])
        slice_ = sitk.GetImageFromArray(np.round(scan[z] * 10).astype(np.uint16))
        slice_.SetSpacing(SPACING[:2])  # GDCM writes 0028|0030 (pixel spacing) from this
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.2.{number}",
            "0020|0013": str(number),
            "0020|0032": "\\".join(f"{v:g}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{SPACING[2]:g}",
        }
        for key, value in tags.items():
            slice_.SetMetaData(key, value)
        writer.SetFileName(str(dicom / f"{stem}.dcm"))
        writer.Execute(slice_)
        sitk.WriteImage(sitk.GetImageFromArray(grey[z]), str(ground / f"{stem}.png"))
    return ours


def check_chaos(image: sitk.Image, labels: sitk.Image, ours: np.ndarray) -> None:
    assert sitk.GetArrayViewFromImage(image).dtype in SCAN_DTYPES and labels.GetPixelID() == sitk.sitkUInt8
    assert same_geometry(image, labels)
    assert np.allclose(image.GetSpacing(), SPACING) and np.allclose(image.GetOrigin(), ORIGIN)
    assert np.allclose(image.GetDirection(), np.eye(3).ravel())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), ours)


def test_chaos_matches_masks_to_slices_by_file_name(tmp_path: Path) -> None:
    mr = tmp_path / "Train_Sets" / "MR"
    ours = {"2": write_chaos_patient(mr / "2", seed=0), "10": write_chaos_patient(mr / "10", seed=1)}

    cases = load_dataset(mr)
    assert [(c.name, c.modality) for c in cases] == [("chaos_02", "MR"), ("chaos_10", "MR")]
    assert all(isinstance(c, ChaosCase) and c.label_map == CHAOS_LABEL_MAP for c in cases)
    assert cases[0].image == mr / "2" / "T2SPIR" / "DICOM_anon" and cases[0].labels.name == "Ground"
    check_chaos(*cases[0].load(), ours["2"])
    # The Train_Sets folder and a single patient folder are read too.
    assert load_dataset(tmp_path / "Train_Sets") == cases
    (single,) = load_chaos_folder(mr / "10")
    check_chaos(*single.load(), ours["10"])


def test_chaos_slice_without_mask_is_named(tmp_path: Path) -> None:
    write_chaos_patient(tmp_path / "5")
    (tmp_path / "5" / "T2SPIR" / "Ground" / "IMG-0002-00003.png").unlink()
    (case,) = load_chaos_folder(tmp_path / "5")
    with pytest.raises(ScanError, match="IMG-0002-00003.dcm"):
        case.load()


# --- unknown layouts --------------------------------------------------------------------------


def test_unknown_layout_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "notes.txt").write_text("not a dataset")
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(ScanError) as e:
            load_dataset(folder)
        message = str(e.value)
        assert all(word in message for word in ("nnU-Net", "BTCV", "CHAOS"))
        assert message.count(". ") == 0 and message.endswith(".")
    with pytest.raises(ScanError, match="No CHAOS MR cases"):
        load_chaos_folder(tmp_path)
    with pytest.raises(ScanError, match="No labelled cases"):
        load_btcv_folder(tmp_path)


# --- the real data ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "modality", "count"), [("abdomen-ct-btcv", "CT", 24), ("abdomen-mr-chaos-t2", "MR", 16)]
)
def test_real_datasets(data_dir: Path, folder: str, modality: str, count: int) -> None:
    cases = load_dataset(data_dir / folder)
    assert len(cases) == count and {c.modality for c in cases} == {modality}
    image, labels = cases[0].load()
    assert same_geometry(image, labels)
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) == {0, *ORGAN_IDS.values()}


def test_our_ids_go_back_into_a_numbering_and_the_organs_it_lacks_are_named():
    ours = np.array([0, 1, 2, 3, 4], np.uint8)
    assert LABEL_PRESETS["BTCV"].from_our_ids(ours).tolist() == [0, 6, 1, 2, 3]
    assert LABEL_PRESETS["CHAOS"].from_our_ids(ours).tolist() == [0, 1, 4, 2, 3]
    values, missing = to_their_ids(ours, {6: 1, 1: 2})  # liver and spleen only
    assert values.tolist() == [0, 6, 1, -1, -1] and missing == ["kidney_right", "kidney_left"]
