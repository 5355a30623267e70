"""Small synthetic abdominal-like volumes in the nnU-Net layout, for fast training tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.preprocessing import IntensityNorm
from napari_mmseg.training.training_data import PreparedCase

# label ids as BTCV and CHAOS number them, to prove mapping by name
LAYOUTS = {
    "CT": {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 6},
    "MR": {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4},
}


def _case(rng: np.random.Generator, modality: str, ids: dict) -> tuple[np.ndarray, np.ndarray]:
    shape = (24, 40, 40)  # z, y, x
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    jitter = rng.integers(-2, 3, size=2)
    # LPS array: x grows to the patient's left, so the liver and right kidney sit at small x
    blobs = [("liver", (12, 16, 10), 7), ("spleen", (12, 16, 30), 5),
             ("kidney_right", (10, 26, 12), 4), ("kidney_left", (10, 26, 28), 4)]
    for name, (cz, cy, cx), r in blobs:
        inside = (zz - cz) ** 2 + (yy - cy - jitter[0]) ** 2 + (xx - cx - jitter[1]) ** 2 < r * r
        labels[inside] = ids[name]
    body = (yy - 20) ** 2 / 18**2 + (xx - 20) ** 2 / 19**2 < 1
    if modality == "CT":
        image = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, shape)
        for name, value in (("liver", 120.0), ("spleen", 90.0), ("kidney_right", 180.0), ("kidney_left", 180.0)):
            image[labels == ids[name]] = value + rng.normal(0, 10)
    else:
        image = np.where(body, 300.0, 5.0) + rng.normal(0, 10, shape)
        for name, value in (("liver", 150.0), ("spleen", 600.0), ("kidney_right", 700.0), ("kidney_left", 700.0)):
            image[labels == ids[name]] = value + rng.normal(0, 20)
    return image.astype(np.float32), labels


def write_dataset(root: Path, modality: str, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ids = LAYOUTS[modality]
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        image, labels = _case(rng, modality, ids)
        for arr, path in ((image, root / "imagesTr" / f"case{i:02d}_0000.nii.gz"),
                          (labels, root / "labelsTr" / f"case{i:02d}.nii.gz")):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing((4.0, 4.0, 4.0))
            sitk.WriteImage(img, str(path))
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": modality}, "labels": ids, "numTraining": n, "file_ending": ".nii.gz"}))
    return root


def write_dicom_series(folder: Path, values: np.ndarray, z_mm: list[float], pixel_mm: float = 0.8) -> Path:
    """One CT slice file per plane of `values` (z, y, x), at the given slice positions."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i, (plane, z) in enumerate(zip(values, z_mm, strict=True)):
        slice_ = sitk.GetImageFromArray(plane)
        slice_.SetSpacing((pixel_mm, pixel_mm))
        for tag, value in {
            "0008|0060": "CT", "0020|000d": "1.2.3", "0020|000e": "1.2.3.4", "0020|0013": str(i + 1),
            "0020|0032": f"0\\0\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": f"{pixel_mm}\\{pixel_mm}",
            "0008|0018": f"1.2.3.4.{i + 1}",
        }.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{i:03d}.dcm"))
        writer.Execute(slice_)
    return folder


def organ_phantom() -> PreparedCase:
    """CT-like body with a liver and a right kidney at small x (the patient's right on the
    canonical LPS grid) and a spleen and left kidney at large x."""
    labels = np.zeros((40, 48, 64), np.uint8)
    labels[8:32, 10:30, 6:24] = 1
    labels[10:26, 12:24, 44:58] = 2
    labels[12:24, 30:40, 12:22] = 3
    labels[12:24, 30:40, 42:52] = 4
    values = np.full(labels.shape, -1000.0, np.float32)
    values[:, 4:44, 2:62] = 40.0
    for label, hu in ((1, 110.0), (2, 120.0), (3, 180.0), (4, 180.0)):
        values[labels == label] = hu
    return PreparedCase("phantom", "CT", values, labels)


# a CT normalisation with round numbers: network input × 100 − 50 gives HU back
CT_NORM = IntensityNorm("window", window=(-125.0, 275.0), mean=-50.0, std=100.0)
