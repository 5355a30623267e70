"""Labelled scans on disk and how their label ids map to our organs, by name.

Layouts, as people download the paper's data (`load_dataset` recognises which):
- nnU-Net v2 raw (`dataset.json`, `imagesTr/`, `labelsTr/`): organ ids are taken from the
  names in `dataset.json`, never assumed.
- BTCV (`RawData/Training/` holding `img/img0001.nii.gz` and `label/label0001.nii.gz`):
  the challenge's fixed ids.
- CHAOS MR (`Train_Sets/MR/<patient>/T2SPIR/DICOM_anon/*.dcm` with one PNG mask per slice
  in `T2SPIR/Ground/`): grey values per organ, masks matched to slices by file name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.errors import ScanError
from napari_mmseg.io.scan_io import (
    SCAN_SUFFIXES,
    dicom_series_files,
    labels_to_image,
    path_suffix,
    read_image,
    read_labels,
    read_scan,
    strip_suffix,
)
from napari_mmseg.organs import NUM_CLASSES, ORGAN_BY_NAME, ORGANS, canonical_organ_name, check_modality


@dataclass(frozen=True)
class LabelConvention:
    """What a label file's ids mean: the ids of our organs, and every id that has a meaning
    at all (our organs and the other structures the dataset labels), so that an id with no
    meaning is noticed instead of being read as background."""

    name: str
    organs: dict[str, int]  # our organ name → the file's id
    known_ids: frozenset[int]

    def label_map(self) -> dict[int, int]:
        """The file's id → our organ id."""
        return {src: ORGAN_BY_NAME[name].label for name, src in self.organs.items()}

    def describe(self) -> str:
        return ", ".join(f"{name} {self.organs[name]}" for name in ORGAN_BY_NAME if name in self.organs)

    def from_our_ids(self, ours: np.ndarray) -> np.ndarray:
        """Our organ ids (0 background) as this numbering's ids; an organ it has no id for is refused."""
        values, missing = to_their_ids(ours, self.label_map())
        if missing:
            raise ScanError(f"The {self.name} numbering ({self.describe()}) has no id for {', '.join(missing)}.")
        return values


def _preset(name: str, organs: dict[str, int], last_id: int) -> LabelConvention:
    return LabelConvention(name, organs, frozenset(range(1, last_id + 1)))


# Public datasets' ids, checked against their own label lists: BTCV's 13 organs (Landman et
# al. 2015); CHAOS as SSL-ALPNet's conversion numbers the T2-SPIR masks (the release's PNGs
# use grey values, `CHAOS_GREY`); AMOS's 15 (Ji et al. 2022); TotalSegmentator v2's 117 CT
# classes, whose MR task (56 classes) gives our organs the same ids.
LABEL_PRESETS: dict[str, LabelConvention] = {
    p.name: p
    for p in (
        _preset("mmseg", {o.name: o.label for o in ORGANS}, len(ORGANS)),  # this tool's output
        _preset("BTCV", {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 6}, 13),
        _preset("CHAOS", {"liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}, 4),
        _preset("AMOS", {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 6}, 15),
        _preset("TotalSegmentator", {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5}, 117),
    )
}

# CHAOS MR masks: grey value per organ (63, 126, 189, 252) with the tolerance bands the
# challenge documents, so that a mask re-saved with slight rounding still maps.
CHAOS_GREY = {
    "liver": range(55, 71),
    "kidney_right": range(110, 136),
    "kidney_left": range(175, 201),
    "spleen": range(240, 256),
}
CHAOS_LABEL_MAP = {grey: ORGAN_BY_NAME[name].label for name, band in CHAOS_GREY.items() for grey in band}
CHAOS_SEQUENCE = "T2SPIR"  # the MR sequence the paper used; T1DUAL is not read
LAYOUTS = (
    "an nnU-Net v2 raw dataset (dataset.json, imagesTr/, labelsTr/), a BTCV folder (img/, label/) "
    "or CHAOS MR (<patient>/T2SPIR/DICOM_anon/ and T2SPIR/Ground/)"
)


@dataclass(frozen=True)
class LabelledCase:
    name: str
    modality: str
    image: Path
    labels: Path
    # source label id → our organ id; every other id becomes background
    label_map: dict[int, int] = field(default_factory=dict)

    def load(self) -> tuple[sitk.Image, sitk.Image]:
        """The scan (float32) and its labels in our ids (uint8), on the same grid."""
        image = read_scan(self.image)
        labels = read_labels(self.labels)
        if labels.GetSize() != image.GetSize():
            raise ScanError(f"{self.labels.name} has size {labels.GetSize()}, its scan {image.GetSize()}.")
        mapped = remap_labels(sitk.GetArrayViewFromImage(labels), self.label_map)
        out = sitk.GetImageFromArray(mapped)
        out.CopyInformation(image)
        return image, out


@dataclass(frozen=True)
class ChaosCase(LabelledCase):
    """A CHAOS MR case: `image` is the DICOM folder, `labels` the Ground folder of PNG masks.

    CHAOS gives one mask per slice, named like its DICOM file; file names need not follow slice
    position, so each mask is placed on the slice whose file has its name.
    """

    def load(self) -> tuple[sitk.Image, sitk.Image]:
        """The DICOM series (float32) and its stacked masks in our ids (uint8), on its grid."""
        image = read_scan(self.image)
        files = [Path(f) for f in dicom_series_files(self.image)]
        if len(files) != image.GetSize()[2]:
            raise ScanError(f"{self.image} holds {len(files)} slice files for {image.GetSize()[2]} slices.")
        masks = {p.stem: p for p in self.labels.glob("*.png")}
        missing = [f.name for f in files if f.stem not in masks]
        if missing:
            raise ScanError(
                f"{self.labels} has no mask for {len(missing)} of {len(files)} DICOM slices (e.g. {missing[0]}): "
                "each slice needs a PNG of the same name."
            )
        shape = tuple(reversed(image.GetSize()[:2]))
        grey = np.stack([_read_mask(masks[f.stem], shape) for f in files])
        return image, labels_to_image(remap_labels(grey, self.label_map), image)


def _read_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One 2-D grey-value mask; a grey PNG saved as RGB gives its first channel."""
    values = sitk.GetArrayFromImage(read_image(path))
    if values.ndim == 3 and values.shape[:2] == shape:
        values = values[..., 0]
    if values.shape != shape:
        raise ScanError(f"{path} is {values.shape[1]}×{values.shape[0]} pixels, its DICOM slice {shape[1]}×{shape[0]}.")
    return values


def remap_labels(values: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """Source ids to ours through a lookup table; ids not in the map become background."""
    lut = np.zeros(max(int(values.max()), max(label_map, default=0)) + 1, np.uint8)
    for src, dst in label_map.items():
        lut[src] = dst
    return lut[values]


def to_their_ids(ours: np.ndarray, label_map: dict[int, int]) -> tuple[np.ndarray, list[str]]:
    """Our organ ids (0 background) in a numbering given as its id → our id (the inverse of
    `remap_labels` on the organs), and the names of the organs present that it has no id for
    (their voxels are -1)."""
    lut = np.full(NUM_CLASSES, -1, np.int64)
    lut[0] = 0
    for their, our in label_map.items():
        lut[our] = their
    values = lut[ours]
    missing = [o.name for o in ORGANS if o.label in np.unique(ours[values < 0])]
    return values, missing


def label_map_from_names(names_to_ids: dict[str, int]) -> dict[int, int]:
    """{'kidney_right': 2, 'liver': 6, ...} → {2: 3, 6: 1}: source id → our id, by name."""
    out: dict[int, int] = {}
    for name, src in names_to_ids.items():
        ours = canonical_organ_name(name)
        if ours is not None:
            out[int(src)] = ORGAN_BY_NAME[ours].label
    return out


def read_dataset_json(path: str | os.PathLike) -> dict:
    """An nnU-Net dataset.json whose `labels` map names to integer ids (checked: a list, or
    nnU-Net's region labels such as `"liver": [1, 2]`, cannot be mapped by name)."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ScanError(f"Cannot read {path}: {str(e)[:200] or type(e).__name__}") from None
    if not isinstance(meta, dict):
        raise ScanError(f"{path} holds a JSON {type(meta).__name__}, not the object nnU-Net's dataset.json is.")
    labels = meta.get("labels", {})
    if not isinstance(labels, dict) or not all(type(v) is int for v in labels.values()):
        raise ScanError(f"{path}: \"labels\" must map names to integer ids, e.g. {{\"liver\": 1}} "
                        "(region labels such as [1, 2] are not supported).")
    return meta


def load_nnunet_dataset(folder: str | os.PathLike, modality: str | None = None) -> list[LabelledCase]:
    """Every case of an nnU-Net v2 raw dataset, with its labels mapped by name."""
    root = Path(folder)
    meta = read_dataset_json(root / "dataset.json")
    label_map = label_map_from_names(meta.get("labels", {}))
    if len(label_map) != len(ORGAN_BY_NAME):
        found = sorted(ORGAN_BY_NAME[n].name for n in (canonical_organ_name(k) for k in meta.get("labels", {})) if n)
        raise ScanError(f"{root}/dataset.json names {found or 'none'} of liver, spleen, kidney_right, kidney_left.")
    if modality is None:
        channel = str(meta.get("channel_names", {}).get("0", ""))
        modality = "CT" if channel.upper() == "CT" else "MR"
    modality = check_modality(modality)
    ending = meta.get("file_ending", ".nii.gz")
    cases = []
    for lab in sorted((root / "labelsTr").glob(f"*{ending}")):
        name = lab.name[: -len(ending)]
        img = root / "imagesTr" / f"{name}_0000{ending}"
        if img.is_file():
            cases.append(LabelledCase(name, modality, img, lab, label_map))
    if not cases:
        raise ScanError(f"No labelled cases in {root} (expected imagesTr/ and labelsTr/).")
    return cases


def load_btcv_folder(folder: str | os.PathLike) -> list[LabelledCase]:
    """Every labelled case of a BTCV folder (`img/imgXXXX` paired with `label/labelXXXX`), CT."""
    root = Path(folder)
    label_map = LABEL_PRESETS["BTCV"].label_map()
    cases = []
    for img in sorted((root / "img").glob("img*")):
        suffix = path_suffix(img)
        if suffix not in SCAN_SUFFIXES or not img.is_file():
            continue
        number = strip_suffix(img)[len("img") :]
        lab = root / "label" / f"label{number}{suffix}"
        if lab.is_file():
            cases.append(LabelledCase(f"btcv_{number}", "CT", img, lab, label_map))
    if not cases:
        raise ScanError(f"No labelled cases in {root} (expected img/img0001.nii.gz with label/label0001.nii.gz).")
    return cases


def _chaos_case(patient: Path) -> ChaosCase | None:
    sequence = patient / CHAOS_SEQUENCE
    # `DICOM_anon` in the release; other spellings (`DICOMA_anon`) are seen in copies of it.
    dicom = next((d for d in sorted(sequence.glob("DICOM*")) if d.is_dir()), None)
    ground = sequence / "Ground"
    if dicom is None or not ground.is_dir():
        return None
    # Zero-padded like the SSL-ALPNet preprocessing (patient 2 → chaos_02), so names agree.
    name = f"chaos_{int(patient.name):02d}" if patient.name.isdigit() else f"chaos_{patient.name}"
    return ChaosCase(name, "MR", dicom, ground, CHAOS_LABEL_MAP)


def _chaos_cases(root: Path) -> list[LabelledCase]:
    """The labelled cases under `Train_Sets/`, `MR/` or one patient folder; [] when none."""
    if (root / "MR").is_dir():
        root = root / "MR"
    if (root / CHAOS_SEQUENCE).is_dir():
        patients = [root]
    else:
        patients = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    return sorted((c for c in map(_chaos_case, patients) if c is not None), key=lambda c: c.name)


def load_chaos_folder(folder: str | os.PathLike) -> list[LabelledCase]:
    """Every labelled T2-SPIR case of CHAOS MR: the `MR/` folder or a single patient folder."""
    root = Path(folder)
    cases = _chaos_cases(root)
    if not cases:
        raise ScanError(
            f"No CHAOS MR cases in {root} (expected <patient>/{CHAOS_SEQUENCE}/DICOM_anon/*.dcm "
            f"and <patient>/{CHAOS_SEQUENCE}/Ground/*.png)."
        )
    return cases


def load_dataset(folder: str | os.PathLike, modality: str | None = None) -> list[LabelledCase]:
    """The labelled cases of a folder in any layout we read, recognised from what it holds."""
    root = Path(folder)
    if not root.is_dir():
        raise ScanError(f"{root} is not a folder: give {LAYOUTS}.")
    if (root / "dataset.json").is_file():
        return load_nnunet_dataset(root, modality)
    is_btcv = (root / "img").is_dir() and (root / "label").is_dir()
    cases = load_btcv_folder(root) if is_btcv else _chaos_cases(root)
    if not cases:
        raise ScanError(f"{root} holds no dataset layout we read: give {LAYOUTS}.")
    # BTCV and CHAOS fix their modality: a different one asked for is a mistake, not an override.
    if modality is not None and check_modality(modality) != cases[0].modality:
        raise ScanError(f"{root} holds {cases[0].modality} scans, not {modality}: leave the modality out.")
    return cases


def totalsegmentator_examples(folder: str | os.PathLike) -> list[LabelledCase]:
    """TotalSegmentator's example CT and MR (labels made by its model, not by hand); the
    ones present in `folder`."""
    root = Path(folder)
    mapping = LABEL_PRESETS["TotalSegmentator"].label_map()
    cases = [
        LabelledCase("ts-example-ct", "CT", root / "example_ct_sm.nii.gz", root / "example_seg.nii.gz", mapping),
        LabelledCase("ts-example-mr (not T2)", "MR", root / "example_mr_sm.nii.gz", root / "example_seg_mr.nii.gz",
                     mapping),
    ]
    return [c for c in cases if c.image.is_file() and c.labels.is_file()]
