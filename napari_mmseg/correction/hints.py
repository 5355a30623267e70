"""A user's correction hints (clicks and scribbles) and their files in world millimetres.

A hint says "this is organ k" (positive) or "this is not organ k" (negative) at one voxel
(a click) or several (a scribble). On disk the points are in millimetres in the scan's
physical space (LPS, as SimpleITK reports it), so a batch of corrections can be replayed on
the same scan whatever viewer placed them; in memory they are voxel indices `(z, y, x)` of
the scan's own array, the array napari shows.

CSV: header `x,y,z,organ,sign[,stroke]`; rows sharing a stroke id form one scribble, a row
without one is a click. JSON: `{"hints": [{"organ": "spleen", "sign": "+", "points_mm": [[x, y, z], ...]}]}`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.errors import HintError
from napari_mmseg.io.safe_write import write_text_atomic
from napari_mmseg.organs import ORGANS, canonical_organ_name

CORRECTION_LABELS = ("background", *(o.name for o in ORGANS))  # index = label value
SIGNS = {"+": True, "-": False}
CSV_HEADER = ("x", "y", "z", "organ", "sign", "stroke")
HINT_SUFFIXES = (".csv", ".json")


@dataclass(frozen=True)
class Hint:
    label: int  # 0..4, the organ the hint is about (0 background)
    positive: bool  # True "this is `label`", False "this is not `label`"
    points: tuple[tuple[int, int, int], ...]  # voxel indices (z, y, x); 1 point = a click, more = a scribble

    @property
    def organ(self) -> str:
        return CORRECTION_LABELS[self.label]

    @property
    def sign(self) -> str:
        return "+" if self.positive else "-"


def label_of(organ: str, where: str) -> int:
    """The label value of an organ name (ours, `background`, or a dataset spelling such as `Right Kidney`)."""
    name = organ.strip()
    if name.lower() == "background":
        return 0
    canonical = canonical_organ_name(name)
    if canonical is None:
        raise HintError(f"{where}: unknown organ {organ!r}; use one of {', '.join(CORRECTION_LABELS)}.")
    return CORRECTION_LABELS.index(canonical)


def positive_of(sign: str, where: str) -> bool:
    if not isinstance(sign, str) or sign.strip() not in SIGNS:
        raise HintError(f"{where}: the sign is {sign!r}; use + (this is the organ) or - (this is not the organ).")
    return SIGNS[sign.strip()]


def scan_extent_mm(scan: sitk.Image) -> tuple[tuple[float, float], ...]:
    """(min, max) mm along x, y, z of the scan's voxel centres: where a hint may lie."""
    size = scan.GetSize()
    pts = np.array([scan.TransformIndexToPhysicalPoint([i * (n - 1) for i, n in zip(corner, size, strict=True)])
                    for corner in np.ndindex(2, 2, 2)])
    return tuple((float(lo), float(hi)) for lo, hi in zip(pts.min(0), pts.max(0), strict=True))


def voxel_of(point_mm: Sequence[float], scan: sitk.Image, where: str) -> tuple[int, int, int]:
    """The (z, y, x) index of the voxel nearest a point in mm; a point off the scan is an error."""
    if len(point_mm) != 3:
        raise HintError(f"{where}: a point needs 3 coordinates (x, y, z in mm), not {len(point_mm)}.")
    if not all(math.isfinite(v) for v in point_mm):
        raise HintError(f"{where}: the point {tuple(point_mm)} has a coordinate that is not a number.")
    continuous = scan.TransformPhysicalPointToContinuousIndex([float(v) for v in point_mm])
    index = [math.floor(c + 0.5) for c in continuous]
    if not all(0 <= i < n for i, n in zip(index, scan.GetSize(), strict=True)):
        x, y, z = point_mm
        extent = ", ".join(f"{axis} {lo:.1f}..{hi:.1f}" for axis, (lo, hi) in zip("xyz", scan_extent_mm(scan),
                                                                                  strict=True))
        raise HintError(f"{where}: the point ({x:.1f}, {y:.1f}, {z:.1f}) mm lies outside the scan "
                        f"(its voxels span {extent} mm).")
    return index[2], index[1], index[0]


def point_mm_of(index: Sequence[int], scan: sitk.Image) -> tuple[float, float, float]:
    """The LPS position in mm of voxel (z, y, x)'s centre."""
    z, y, x = (int(i) for i in index)
    px, py, pz = scan.TransformIndexToPhysicalPoint((x, y, z))
    return px, py, pz


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise HintError(f"{where}: {text!r} is not a coordinate in mm.") from None


def _read_csv(text: str, path: Path, scan: sitk.Image) -> list[Hint]:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise HintError(f"{path} is not a readable CSV file: {e}.") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    missing = [c for c in CSV_HEADER[:5] if c not in header]
    if missing:
        raise HintError(f"{path}: the first line must be the header x,y,z,organ,sign[,stroke]; "
                        f"{', '.join(missing)} missing.")
    col = {name: header.index(name) for name in CSV_HEADER if name in header}
    needed = max(col[name] for name in CSV_HEADER[:5]) + 1  # the stroke may be left off
    strokes: dict[str, int] = {}  # stroke id → position in `grouped`
    grouped: list[tuple[int, bool, list[tuple[int, int, int]], str]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path.name} line {line}"
        if len(row) < needed:
            raise HintError(f"{where}: {len(row)} fields where the header names {needed} (x,y,z,organ,sign).")
        label = label_of(row[col["organ"]], where)
        positive = positive_of(row[col["sign"]], where)
        point = voxel_of([_number(row[col[a]], where) for a in "xyz"], scan, where)
        stroke = row[col["stroke"]].strip() if "stroke" in col and len(row) > col["stroke"] else ""
        if stroke and stroke in strokes:
            k = strokes[stroke]
            if grouped[k][:2] != (label, positive):
                raise HintError(f"{where}: stroke {stroke} changes organ or sign ({grouped[k][3]} started it).")
            grouped[k][2].append(point)
            continue
        if stroke:
            strokes[stroke] = len(grouped)
        grouped.append((label, positive, [point], where))
    return [Hint(label, positive, tuple(points)) for label, positive, points, _ in grouped]


def _read_json(text: str, path: Path, scan: sitk.Image) -> list[Hint]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise HintError(f"{path} is not valid JSON: {str(e)[:120]}.") from None
    entries = data.get("hints") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise HintError(f'{path}: expected {{"hints": [{{"organ": ..., "sign": "+", "points_mm": [[x, y, z]]}}]}}.')
    hints = []
    for k, entry in enumerate(entries, start=1):
        where = f"{path.name} hint {k}"
        if not isinstance(entry, dict) or not {"organ", "sign", "points_mm"} <= entry.keys():
            raise HintError(f"{where}: each hint needs organ, sign and points_mm.")
        points = entry["points_mm"]
        if not isinstance(entry["organ"], str):
            raise HintError(f"{where}: the organ must be a name, not {entry['organ']!r}.")
        if not isinstance(points, list) or not points:
            raise HintError(f"{where}: points_mm must be a non-empty list of [x, y, z] in mm.")
        for p in points:
            if not (isinstance(p, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)):
                raise HintError(f"{where}: {p!r} is not a point [x, y, z] in mm.")
        label = label_of(entry["organ"], where)
        positive = positive_of(entry["sign"], where)
        hints.append(Hint(label, positive, tuple(voxel_of(p, scan, where) for p in points)))
    return hints


def read_hints(path: str | os.PathLike, scan: sitk.Image) -> list[Hint]:
    """The hints of a CSV or JSON file, in file order, as voxel indices of `scan`."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in HINT_SUFFIXES:
        raise HintError(f"{p}: hints must be a .csv or .json file.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HintError(f"{p} does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HintError(f"Cannot read {p}: {getattr(e, 'strerror', None) or str(e)[:120]}.") from None
    if not text.strip():
        raise HintError(f"{p} is empty: it holds no hints.")
    hints = _read_csv(text, p, scan) if suffix == ".csv" else _read_json(text, p, scan)
    if not hints:
        raise HintError(f"{p} holds no hints.")
    return hints


def write_hints(path: str | os.PathLike, hints: Sequence[Hint], scan: sitk.Image, overwrite: bool = False) -> Path:
    """Hints as CSV or JSON (by the suffix) in mm, so that `read_hints` gives them back."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in HINT_SUFFIXES:
        raise HintError(f"{p}: hints are written as .csv or .json.")
    if suffix == ".json":
        entries = [{"organ": h.organ, "sign": h.sign, "points_mm": [list(point_mm_of(i, scan)) for i in h.points]}
                   for h in hints]
        return write_text_atomic(p, json.dumps({"hints": entries}, indent=1) + "\n", overwrite)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(CSV_HEADER)
    for stroke, h in enumerate(hints, start=1):
        for index in h.points:
            writer.writerow([*(repr(v) for v in point_mm_of(index, scan)), h.organ, h.sign, stroke])
    return write_text_atomic(p, table.getvalue(), overwrite)
