"""The output classes, their names and the paper's colours: the one place they are defined."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Organ:
    label: int
    name: str
    display_name: str
    rgb: tuple[int, int, int]


BACKGROUND = 0
# The paper's order and its figures' colours (liver red, spleen green, right kidney blue,
# left kidney yellow).
ORGANS: tuple[Organ, ...] = (
    Organ(1, "liver", "Liver", (230, 25, 25)),
    Organ(2, "spleen", "Spleen", (25, 200, 25)),
    Organ(3, "kidney_right", "Right kidney", (40, 90, 255)),
    Organ(4, "kidney_left", "Left kidney", (255, 220, 0)),
)
NUM_CLASSES = len(ORGANS) + 1
ORGAN_BY_LABEL = {o.label: o for o in ORGANS}
ORGAN_BY_NAME = {o.name: o for o in ORGANS}
MODALITIES = ("CT", "MR")

# Spellings seen in public datasets, normalised by `canonical_organ_name`.
_ALIASES = {
    "liver": "liver",
    "spleen": "spleen",
    "kidneyright": "kidney_right",
    "rightkidney": "kidney_right",
    "rk": "kidney_right",
    "kidneyr": "kidney_right",
    "rkidney": "kidney_right",
    "kidneyrt": "kidney_right",
    "rtkidney": "kidney_right",
    "kidneyleft": "kidney_left",
    "leftkidney": "kidney_left",
    "lk": "kidney_left",
    "kidneyl": "kidney_left",
    "lkidney": "kidney_left",
    "kidneylt": "kidney_left",
    "ltkidney": "kidney_left",
}


def canonical_organ_name(name: str) -> str | None:
    """Map a label name as datasets spell it (`Right Kidney`, `kidney_right`, `RK`) to ours."""
    key = re.sub(r"[^a-z]", "", name.lower())
    return _ALIASES.get(key)


def check_modality(modality: str) -> str:
    m = modality.upper()
    if m not in MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}: use CT or MR.")
    return m
