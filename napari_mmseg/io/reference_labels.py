"""Which organ each id of a reference label file means, so that Dice is never taken against
the wrong organ.

In order: what the user says (`--ref-labels`: a public dataset's name from `LABEL_PRESETS`,
or `name=id` pairs), the nnU-Net `dataset.json` beside the file (in its folder or the one
above), or else the one public numbering that explains the file. A numbering explains a file
when every id in it has a meaning there (other structures' ids included), all four organs
are present, the liver and right kidney lie on the patient's right of the spleen and left
kidney, and the liver is larger than either kidney. Ids alone often fit several numberings
(CHAOS and this tool both use 1–4, for different organs); the organs' sides tell them apart.
When no numbering or more than one (with different ids for an organ) explains the file,
nothing is guessed: the user is told which `--ref-labels` to pass.

Whatever the source, a file holding an id with no meaning under it is refused: that id would
otherwise count as background, and a wrong numbering would score quietly low.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.errors import ScanError
from napari_mmseg.io.datasets import LABEL_PRESETS, LabelConvention, read_dataset_json
from napari_mmseg.organs import ORGAN_BY_NAME, ORGANS, canonical_organ_name

# organs on the patient's right, and on the left: every one of the first lies right of every one of the second
RIGHT_SIDE, LEFT_SIDE = ("liver", "kidney_right"), ("spleen", "kidney_left")
NAME_IDS_HELP = "liver=ID,spleen=ID,kidney_right=ID,kidney_left=ID (and the other structures' ids, e.g. gallbladder=4)"


@dataclass(frozen=True)
class OrganLayout:
    """A label file's ids: voxels of each, and how far to the patient's left its centre lies
    (LPS x in mm, from the file's own geometry)."""

    voxels: dict[int, int]
    left_mm: dict[int, float]

    @property
    def ids(self) -> list[int]:
        return sorted(self.voxels)


@dataclass(frozen=True)
class ReferenceIds:
    convention: LabelConvention
    source: str  # where the numbering came from, in words
    warning: str | None = None  # the organs lie where that numbering does not put them


def organ_layout(labels: sitk.Image) -> OrganLayout:
    """Voxel count and centre of every non-zero id, from one histogram per slice along each axis."""
    values = sitk.GetArrayViewFromImage(labels)
    counts = np.bincount(values.ravel())
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    compact = np.zeros(len(counts), np.intp)  # id → 0..n, so that the histograms stay small
    compact[ids] = np.arange(1, len(ids) + 1)
    centre = np.zeros((len(ids) + 1, 3))
    for axis in range(3):
        per_slice = np.stack([np.bincount(compact[s.ravel()], minlength=len(ids) + 1)
                              for s in np.moveaxis(values, axis, 0)])
        centre[:, axis] = np.arange(values.shape[axis]) @ per_slice / np.maximum(per_slice.sum(0), 1)
    left = {int(i): labels.TransformContinuousIndexToPhysicalPoint(centre[k + 1, ::-1].tolist())[0]
            for k, i in enumerate(ids)}
    return OrganLayout({int(i): int(counts[i]) for i in ids}, left)


def unexplained_ids(convention: LabelConvention, layout: OrganLayout) -> list[int]:
    return [i for i in layout.ids if i not in convention.known_ids]


def misplaced(convention: LabelConvention, layout: OrganLayout) -> str | None:
    """Where the file's organs, read with this numbering, contradict anatomy; None if nowhere."""
    present = {name: i for name, i in convention.organs.items() if i in layout.voxels}
    for right in (n for n in RIGHT_SIDE if n in present):
        for left in (n for n in LEFT_SIDE if n in present):
            if layout.left_mm[present[right]] >= layout.left_mm[present[left]]:
                return (f"its {right} (id {present[right]}) lies on the patient's left of its {left} "
                        f"(id {present[left]})")
    return None


def _does_not_explain(convention: LabelConvention, layout: OrganLayout) -> str | None:
    """Why this numbering cannot be the file's, or None when it explains every id and organ."""
    unknown = unexplained_ids(convention, layout)
    if unknown:
        return f"ids {_id_list(unknown)} mean nothing there"
    missing = [n for n, i in convention.organs.items() if i not in layout.voxels]
    if missing:
        return f"no {', '.join(missing)}"
    wrong_side = misplaced(convention, layout)
    if wrong_side:
        return wrong_side
    liver = layout.voxels[convention.organs["liver"]]
    if any(layout.voxels[convention.organs[k]] >= liver for k in ("kidney_right", "kidney_left")):
        return f"its liver (id {convention.organs['liver']}) is smaller than a kidney"
    return None


def infer_reference_ids(path: Path, layout: OrganLayout, flag: str = "--ref-labels") -> ReferenceIds:
    """The one public numbering that explains the file; refused when none or several do."""
    fits = [p for p in LABEL_PRESETS.values() if _does_not_explain(p, layout) is None]
    numberings = {tuple(sorted(p.organs.items())) for p in fits}
    names = " or ".join(p.name for p in fits)
    if len(numberings) == 1:
        return ReferenceIds(fits[0], f"{names}, inferred from the ids present and the organs' sides")
    if fits:
        raise ScanError(f"{path} fits several numberings that differ for our organs "
                        f"({', '.join(p.name for p in fits)}): pass "
                        f"{' or '.join(f'{flag} {p.name}' for p in fits)}.")
    ids = _id_list(layout.ids) or "none"
    raise ScanError(f"{path} (ids {ids}, no dataset.json beside it) fits none of "
                    f"{', '.join(LABEL_PRESETS)}: pass {flag} with its dataset's name or {NAME_IDS_HELP}.")


def reference_ids(path: Path, labels: sitk.Image, spec: str | None, flag: str = "--ref-labels") -> ReferenceIds:
    """The file's numbering: from `spec` (the command's `flag`), a dataset.json beside the
    file, or inferred; refused when the file holds ids that numbering gives no meaning."""
    layout = organ_layout(labels)
    if spec:
        preset = {name.lower(): p for name, p in LABEL_PRESETS.items()}.get(spec.strip().lower())
        chosen = ReferenceIds(preset, f"{flag} {preset.name}") if preset else \
            ReferenceIds(parse_name_ids(spec, flag), flag)
    else:
        dataset_json = next((c for c in (path.parent / "dataset.json", path.parent.parent / "dataset.json")
                             if c.is_file()), None)
        if dataset_json is None:
            return infer_reference_ids(path, layout, flag)
        chosen = ReferenceIds(convention_from_dataset_json(dataset_json), str(dataset_json))
    unknown = unexplained_ids(chosen.convention, layout)
    if unknown:
        fits = [p.name for p in LABEL_PRESETS.values() if _does_not_explain(p, layout) is None]
        hint = f"pass {flag} {' or '.join(fits)}, or name them" if fits else f"name them: {NAME_IDS_HELP}"
        raise ScanError(f"{path} holds ids {_id_list(unknown)}, which {chosen.source} gives no meaning "
                        f"({chosen.convention.describe()}): {hint}.")
    wrong_side = misplaced(chosen.convention, layout)
    if wrong_side:
        chosen = ReferenceIds(chosen.convention, chosen.source,
                              f"read with {chosen.source}, {wrong_side}: check the ids or the file's orientation")
    return chosen


def convention_from_dataset_json(path: Path) -> LabelConvention:
    """The ids an nnU-Net dataset.json names: our organs by their spellings, the rest as other structures."""
    labels = read_dataset_json(path).get("labels", {})
    organs = {ours: int(i) for name, i in labels.items() if (ours := canonical_organ_name(name)) is not None}
    if not organs:
        raise ScanError(f"{path} names none of {', '.join(ORGAN_BY_NAME)} among its labels.")
    return LabelConvention(str(path), organs, frozenset(int(i) for i in labels.values() if i != 0))


def parse_name_ids(text: str, flag: str = "--ref-labels") -> LabelConvention:
    """`liver=6,spleen=1,kidney_right=2,kidney_left=3,gallbladder=4` → a numbering. Names of
    our organs in any common spelling; other names are other structures, unless one looks
    like a misspelt organ that is not named otherwise (`livr=6`)."""
    pairs: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = (part.strip() for part in item.partition("="))
        if not value.isdigit() or not name:
            raise ScanError(f"Cannot read {item!r} in {flag}: write name=id, e.g. liver=6,spleen=1, "
                            f"or a dataset's name ({', '.join(LABEL_PRESETS)}).")
        if name in pairs:
            raise ScanError(f"{flag} names {name} twice.")
        pairs[name] = int(value)
    ids = [i for i in pairs.values() if i != 0]
    shared = sorted({i for i in ids if ids.count(i) > 1})
    if shared:
        raise ScanError(f"{flag} gives id {shared[0]} to more than one organ or structure: one id each.")
    organs = {ours: i for name, i in pairs.items() if (ours := canonical_organ_name(name)) is not None}
    spellings = {_key(o.name): o.name for o in ORGANS} | {_key(o.display_name): o.name for o in ORGANS}
    for name in (n for n in pairs if canonical_organ_name(n) is None):
        close = difflib.get_close_matches(_key(name), list(spellings), n=1, cutoff=0.75)
        if close and spellings[close[0]] not in organs:
            raise ScanError(f"{flag} names {name!r}: did you mean {spellings[close[0]]}?")
    if not organs:
        raise ScanError(f"{flag} names none of {', '.join(ORGAN_BY_NAME)}: write e.g. liver=6,spleen=1, "
                        f"or a dataset's name ({', '.join(LABEL_PRESETS)}).")
    return LabelConvention(flag, organs, frozenset(ids))


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _id_list(ids: list[int], most: int = 8) -> str:
    """[1, 2, 3, 4, 6, 9] → '1–4, 6, 9' (the first `most` runs)."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}–{b}" if b > a else f"{a}" for a, b in runs[:most])
    return text + (", …" if len(runs) > most else "")
