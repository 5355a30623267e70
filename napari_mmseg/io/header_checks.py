"""What a scan file declares, checked before any voxel is read.

A header of a few bytes can declare billions of voxels, and ITK allocates them before it
finds the data missing; a NRRD or MetaImage header can name any file as its data (a
password file, `/dev/zero`, a FIFO that blocks forever). So, before SimpleITK reads the
voxels: the path must be one SimpleITK can take, detached data files must be regular files
inside the header's folder, the declared size must be a body scan's, and the bytes on disk
must be able to hold it.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.errors import ScanError

# 1024³: a whole-body CT of 512 × 512 × 4096 slices fits; 2 GB as int16. Beyond it the
# header is wrong or forged (1500³ or 16384 × 16384 × 8 voxels from a file of a few bytes).
MAX_SCAN_VOXELS = 1 << 30
# deflate's largest possible compression ratio (runs of one byte: 258-byte matches at
# about two bits each): a gzip stream cannot inflate to more than this many times its size
DEFLATE_MAX_RATIO = 1032
HEADER_BYTES = 1 << 16  # more than any real NRRD or MetaImage header


def sitk_path(path: str | os.PathLike, what: str = "scan") -> str:
    """The path as SimpleITK takes it: its C++ side aborts the whole process on a path that
    is not valid UTF-8 (bytes a file system allows, but no text encoding)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise ScanError(f"The {what} path {shown} is not valid UTF-8, which SimpleITK cannot open: rename it "
                        "(or its folder).") from None
    return text


@dataclass(frozen=True)
class DataLayout:
    """Where a NRRD or MetaImage header keeps its voxels, and how they are stored."""

    files: tuple[Path, ...]  # the detached data files; empty: the data follow the header
    encoding: str  # raw, gzip, bzip2, ascii or hex
    voxel_mm: tuple[float, ...] = ()  # the voxel sizes the header gives (NRRD spacings or space
    # directions' lengths, MetaImage ElementSpacing), to refuse 0, NaN or infinite ones ITK misreads

    def spacing_problem(self) -> str | None:
        if all(math.isfinite(v) and v != 0 for v in self.voxel_mm):
            return None
        shown = " × ".join(f"{v:g}" for v in self.voxel_mm)
        return f"the header gives a voxel size of {shown} mm (0, NaN or infinite)"


def _numbers(text: str) -> tuple[float, ...]:
    values = []
    for word in text.replace(",", " ").split():
        try:
            values.append(float(word))
        except ValueError:
            continue  # "none" in NRRD space directions
    return tuple(values)


def _header_lines(path: Path) -> list[str]:
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    return head.decode("latin-1").splitlines()


def _expand(value: str, lines_after: list[str]) -> list[str]:
    """NRRD and MetaImage name their data as one file, `LIST` (the names follow, one a line)
    or a pattern `name%03d.raw first last step`."""
    parts = value.split()
    if not parts:
        return []
    if parts[0].upper() == "LIST":
        return [ln.strip() for ln in lines_after if ln.strip()]
    if "%" in parts[0] and len(parts) >= 4:
        try:
            first, last, step = (int(v) for v in parts[1:4])
            if step == 0 or abs(last - first) // abs(step) > 100_000:
                raise ValueError
            return [parts[0] % i for i in range(first, last + (1 if step > 0 else -1), step)]
        except (ValueError, TypeError):
            raise ScanError(f"Cannot read the data file pattern {value!r}.") from None
    return [value.strip()]


def data_layout(path: Path) -> DataLayout | None:
    """The layout a NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) header declares; None for
    other formats."""
    lines = _header_lines(path)
    names: list[str] = []
    voxel_mm: tuple[float, ...] = ()
    if lines and lines[0].startswith("NRRD"):
        encoding = "raw"
        for i, line in enumerate(lines[1:], start=1):
            if not line.strip():
                break
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            key, value = key.strip().lower(), value.lstrip("=").strip()
            if key == "encoding":
                encoding = {"gz": "gzip", "bz2": "bzip2", "txt": "ascii", "text": "ascii"}.get(value.lower(),
                                                                                            value.lower())
            elif key == "spacings":
                voxel_mm = _numbers(value)
            elif key == "space directions":
                voxel_mm = tuple(math.hypot(*v) if v else 0.0
                                 for v in (_numbers(d) for d in re.findall(r"\(([^)]*)\)", value)))
            elif key in ("data file", "datafile"):
                names = _expand(value, lines[i + 1:])
                break
        return DataLayout(_data_files(path, names), encoding, voxel_mm)
    if path.suffix.lower() in (".mha", ".mhd"):
        compressed = False
        for i, line in enumerate(lines):
            key, _, value = line.partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "compresseddata":
                compressed = value.lower() == "true"
            elif key == "elementspacing":
                voxel_mm = _numbers(value)
            elif key == "elementdatafile":
                names = [] if value.upper() == "LOCAL" else _expand(value, lines[i + 1:])
                break
        return DataLayout(_data_files(path, names), "gzip" if compressed else "raw", voxel_mm)
    return None


def _data_files(header: Path, names: list[str]) -> tuple[Path, ...]:
    """Detached data files, each a regular file inside the header's folder (or below it)."""
    folder = header.resolve().parent
    files = []
    for name in names:
        target = (header.parent / name).resolve()
        if not target.is_relative_to(folder):
            raise ScanError(f"{header} names {name} as its data file, outside the header's folder: refused (a "
                            "scan's data file lies beside its header).")
        try:
            st = os.stat(target)
        except OSError:
            raise ScanError(f"{header} names {name} as its data file, which does not exist.") from None
        if not stat.S_ISREG(st.st_mode):
            raise ScanError(f"{header} names {name} as its data file, which is not a regular file (a device, pipe "
                            "or folder): refused.")
        files.append(target)
    return tuple(files)


def declared_size(path: Path) -> tuple[tuple[int, ...], int]:
    """The size and the bytes of the voxels the header declares, from the header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(sitk_path(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ScanError(
            f"Cannot read {path}: not an image SimpleITK understands, or the file is corrupt or "
            "truncated (NIfTI, NRRD, MHA/MHD or a DICOM folder are supported)."
        ) from None
    size = tuple(int(n) for n in reader.GetSize())
    components = max(int(reader.GetNumberOfComponents()), 1)
    try:
        one = sitk.Image([1, 1], reader.GetPixelID(), components)
    except RuntimeError:
        one = sitk.Image([1, 1], reader.GetPixelID())
    itemsize = sitk.GetArrayViewFromImage(one).dtype.itemsize  # of one component
    return size, int(np.prod(size, dtype=object)) * components * itemsize


def check_declared_size(path: Path, size: tuple[int, ...], what: str = "scan") -> None:
    voxels = int(np.prod(size, dtype=object))
    if voxels > MAX_SCAN_VOXELS:
        shown = " × ".join(map(str, size))
        raise ScanError(f"{path} declares {shown} = {voxels:,} voxels, more than any body {what} holds (at most "
                        f"{MAX_SCAN_VOXELS:,}, 1024³): its header is wrong or forged; nothing was read.")


def check_bytes_on_disk(path: Path, layout: DataLayout, declared_bytes: int) -> None:
    """Refuse a header whose data cannot fill the voxels it declares, before ITK allocates them."""
    available = sum(f.stat().st_size for f in layout.files) if layout.files else path.stat().st_size
    if layout.encoding == "gzip":
        enough = declared_bytes <= DEFLATE_MAX_RATIO * available + 4096
    elif layout.encoding == "hex":
        enough = 2 * declared_bytes <= available
    elif layout.encoding == "raw":
        enough = declared_bytes <= available
    elif layout.encoding == "ascii":  # at least a digit and a separator a value, of at most 8 bytes
        enough = declared_bytes <= 4 * available
    else:  # bzip2 has no useful bound on its ratio: the voxel count's bound alone
        enough = True
    if not enough:
        raise ScanError(f"{path} declares {declared_bytes:,} bytes of voxels ({layout.encoding}) but holds "
                        f"{available:,} bytes of data: it is truncated, or its header is wrong; copy it again.")
