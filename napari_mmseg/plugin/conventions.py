"""Which organ each label id of a label file means: dataset.json, known public conventions,
or a mapping the user types. Ids are mapped to ours by name, never by number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from napari_mmseg.io.datasets import LABEL_PRESETS, label_map_from_names, remap_labels
from napari_mmseg.organs import ORGANS, canonical_organ_name

OURS = "napari-mmseg"
# Label id → organ name of public label maps (only the four organs this plugin segments), from
# the presets `mmseg evaluate --ref-labels` knows; this tool's own ids under the plugin's name.
CONVENTIONS: dict[str, dict[int, str]] = {
    (OURS if preset.name == "mmseg" else preset.name): {label: name for name, label in preset.organs.items()}
    for preset in LABEL_PRESETS.values()
}
# Words in a file's path that name the dataset it comes from.
_PATH_HINTS = {"btcv": "BTCV", "synapse": "BTCV", "chaos": "CHAOS", "totalseg": "TotalSegmentator", "amos": "AMOS"}


def names_from_dataset_json(path: Path) -> dict[int, str]:
    """Label id → name from an nnU-Net dataset.json (v2 `name: id`, or v1 `"id": name`)."""
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels", {})
    except (OSError, ValueError, RecursionError, AttributeError):
        return {}
    if not isinstance(labels, dict):
        return {}
    if all(str(k).isdigit() for k in labels):
        return {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    return {int(v): str(k) for k, v in labels.items() if isinstance(v, int) and v != 0}


def nnunet_dataset_json(path: Path) -> Path | None:
    """dataset.json of an nnU-Net label file (`<dataset>/labelsTr/<case>.nii.gz`), if any."""
    candidate = path.parent.parent / "dataset.json"
    return candidate if path.parent.name.lower().startswith("labels") and candidate.is_file() else None


def guess_label_names(path: Path, max_id: int) -> tuple[dict[int, str], str]:
    """Names of a label file's ids and where they came from: its dataset.json, a dataset
    named in its path, this plugin's ids when it holds only 0–4, or none."""
    dataset_json = nnunet_dataset_json(path)
    if dataset_json is not None:
        names = names_from_dataset_json(dataset_json)
        if names:
            return names, "dataset.json"
    lowered = str(path).lower()
    for hint, convention in _PATH_HINTS.items():
        if hint in lowered:
            return dict(CONVENTIONS[convention]), convention
    if max_id <= len(ORGANS):
        return dict(CONVENTIONS[OURS]), OURS
    return {}, "unknown"


def parse_mapping(text: str) -> dict[int, str]:
    """`liver=6, spleen=1` (or `6:liver`) → {6: 'liver', 1: 'spleen'}; ValueError says what is wrong."""
    out: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in re.split(r"[,;\n]", text))):
        parts = [p.strip() for p in re.split(r"[=:]", item)]
        if len(parts) != 2:
            raise ValueError(f"{item!r}: write organ=id, e.g. liver=6.")
        name, number = parts if not parts[0].isdigit() else parts[::-1]
        if not number.isdigit():
            raise ValueError(f"{item!r}: the label id must be a whole number.")
        organ = canonical_organ_name(name)
        if organ is None:
            raise ValueError(f"{name!r} is not one of liver, spleen, kidney_right, kidney_left.")
        out[int(number)] = organ
    if not out:
        raise ValueError("Type a mapping such as liver=6, spleen=1, kidney_right=2, kidney_left=3.")
    return out


def to_our_ids(values: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """A label array in another convention, as our organ ids (other ids become background)."""
    label_map = label_map_from_names({name: label for label, name in names.items()})
    return remap_labels(values, label_map)
