"""Reading scans and writing label maps with SimpleITK, keeping the scan's geometry.

A label map is always written with exactly its source scan's size, spacing, origin and
direction, whole or not at all (`safe_write`), and never over the scan itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.errors import OutputError, ScanError
from napari_mmseg.io.safe_write import write_atomic

SCAN_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# Voxel types a scan keeps; any other is converted to float32. A CT stays int16: half the
# memory of float32, and no conversion pass (0.2-0.8 s for 512×512×300 in a fresh process
# here, mostly page faults on the new 315 MB).
SCAN_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.float32))


def path_suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def strip_suffix(path: str | os.PathLike) -> str:
    """The file name without its image extension (`case.nii.gz` → `case`)."""
    name = Path(path).name
    suffix = path_suffix(name)
    return name[: -len(suffix)] if suffix else name


def dicom_series_files(folder: str | os.PathLike) -> tuple[str, ...]:
    """The slice files of the folder's largest series (the volume a user means), in GDCM's
    order by slice position; empty when the folder holds no DICOM series."""
    reader = sitk.ImageSeriesReader
    series = reader.GetGDCMSeriesIDs(str(folder))
    return max((reader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len, default=())


def _read_dicom_series(folder: Path) -> sitk.Image:
    files = dicom_series_files(folder)
    if not files:
        raise ScanError(f"{folder} is a folder without a DICOM series: give a scan file or a DICOM folder.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    warnings_shown = reader.GetGlobalWarningDisplay()
    reader.GlobalWarningDisplayOff()  # ITK's multi-line "non uniform sampling" note: checked below instead
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise ScanError(f"Cannot read the DICOM series in {folder}: {_first_line(e)}") from None
    finally:
        reader.SetGlobalWarningDisplay(warnings_shown)
    _check_even_slices(reader, image, folder)
    return image


def _check_even_slices(reader: sitk.ImageSeriesReader, image: sitk.Image, folder: Path) -> None:
    """ITK stacks a series with a missing, duplicate or stray slice as if its slices were
    evenly spaced, distorting the anatomy: refuse it."""
    key = "0020|0032"  # Image Position (Patient)
    n = image.GetDepth()
    if n < 3 or not all(reader.HasMetaDataKey(i, key) for i in range(n)):
        return
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, key).split("\\")] for i in range(n)])
    except ValueError:
        return
    normal = np.reshape(image.GetDirection(), (3, 3))[:, 2]
    gaps = np.diff(positions @ normal)
    typical = float(np.median(np.abs(gaps)))
    if typical == 0 or np.ptp(gaps) > 0.01 * typical + 1e-3:
        raise ScanError(
            f"{folder}: the {n} slices are not evenly spaced (gaps from {gaps.min():.2f} to {gaps.max():.2f} mm: "
            "a missing, duplicate or stray slice); re-export the series."
        )


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = next((ln for ln in lines if "ERROR" in ln.upper() or "exception" in ln.lower()), "")
    return (msg or (lines[-1] if lines else type(e).__name__))[:200]


def _nifti_layout(header: bytes) -> tuple[str, int, int, int, int] | None:
    """Byte order, voxel count, bits per voxel, datatype code and data offset of a NIfTI-1 header."""
    import struct

    if len(header) < 348:
        return None
    for order in "<>":
        if struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            vox_offset = struct.unpack(order + "f", header[108:112])[0]
            n = 1
            for d in dims[1 : 1 + max(0, min(dims[0], 7))]:
                n *= max(int(d), 1)
            return order, n, bitpix, datatype, int(vox_offset)
    return None


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Header size plus voxel data, from a NIfTI-1 header (either byte order)."""
    layout = _nifti_layout(header)
    return None if layout is None else layout[4] + layout[1] * layout[2] // 8


NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64


def _open_nifti(p: Path):
    import gzip

    return gzip.open(p, "rb") if path_suffix(p) == ".nii.gz" else open(p, "rb")


def _nifti_nan_count(p: Path) -> tuple[int, int]:
    """NaN voxels in a float NIfTI file, and all voxels: ITK's reader turns NaN into 0."""
    with _open_nifti(p) as f:
        layout = _nifti_layout(f.read(348))
        if layout is None or layout[3] not in NIFTI_FLOATS:
            return 0, 0
        order, n, _, datatype, offset = layout
        dtype = np.dtype(order + NIFTI_FLOATS[datatype])
        f.seek(offset)
        nan, chunk = 0, 1 << 22
        for start in range(0, n, chunk):
            data = f.read(min(chunk, n - start) * dtype.itemsize)
            nan += int(np.isnan(np.frombuffer(data[: len(data) // dtype.itemsize * dtype.itemsize], dtype)).sum())
    return nan, n


def _check_nifti_complete(p: Path) -> None:
    """ITK reads a truncated .nii/.nii.gz without complaint (missing voxels become 0), so
    compare the data size the header promises with what the file holds."""
    import gzip
    import zlib

    suffix = path_suffix(p)
    if suffix == ".nii":
        with open(p, "rb") as f:
            expected = _nifti_expected_bytes(f.read(348))
        if expected is not None and p.stat().st_size < expected:
            raise ScanError(f"{p} is truncated: it holds {p.stat().st_size} of {expected} bytes; copy it again.")
    elif suffix == ".nii.gz":
        try:
            with gzip.open(p, "rb") as f:
                expected = _nifti_expected_bytes(f.read(348))
            with open(p, "rb") as f:
                f.seek(-4, os.SEEK_END)
                stored = int.from_bytes(f.read(4), "little")  # gzip trailer: size mod 2**32
            if expected is None or stored == expected % 2**32:
                return
            with gzip.open(p, "rb") as f:  # rare: several gzip members; decompress to be sure
                total = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 24), b""))
        except (EOFError, OSError, zlib.error):
            raise ScanError(f"{p} is truncated or corrupt (its compressed data ends early); copy it again.") from None
        if total < expected:
            raise ScanError(f"{p} is truncated: it holds {total} of {expected} bytes; copy it again.")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Any image SimpleITK reads (file or DICOM folder), with a clear error when it cannot."""
    p = Path(path)
    if not p.exists():
        raise ScanError(f"{p} does not exist: check the path.")
    if p.is_dir():
        return _read_dicom_series(p)
    if p.stat().st_size == 0:
        raise ScanError(f"{p} is an empty file.")
    _check_nifti_complete(p)
    if path_suffix(p) in (".nii", ".nii.gz"):
        nan, total = _nifti_nan_count(p)
        if nan:
            raise ScanError(f"{p}: {_share(nan, total)} are NaN (SimpleITK would read them as 0); "
                            "fix or re-export the file.")
    try:
        if path_suffix(p) == ".nii.gz" and p.with_name(strip_suffix(p) + ".nii").exists():
            # nifticlib opens `x.nii` instead of the `x.nii.gz` asked for when both exist
            with tempfile.TemporaryDirectory() as alone:
                try:
                    (Path(alone) / p.name).symlink_to(p.resolve())
                except OSError:  # no symlinks here (e.g. Windows without the privilege)
                    try:
                        shutil.copyfile(p, Path(alone) / p.name)
                    except OSError as e:
                        raise ScanError(
                            f"Cannot read {p}: {strip_suffix(p)}.nii beside it hides it from the "
                            f"NIfTI reader, and a private copy failed ({e.strerror}); move one of the two "
                            "to another folder."
                        ) from None
                return sitk.ReadImage(str(Path(alone) / p.name))
        return sitk.ReadImage(str(p))
    except RuntimeError:
        raise ScanError(
            f"Cannot read {p}: not an image SimpleITK understands, or the file is corrupt or "
            "truncated (NIfTI, NRRD, MHA/MHD or a DICOM folder are supported)."
        ) from None


def check_volume(image: sitk.Image, what: str = "scan") -> None:
    """A 3-D, single-channel, real-valued volume, at least 2 voxels along every axis, whose
    direction matrix is a rotation (a sheared or scaled one cannot be written back as it is)."""
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise ScanError(f"The {what} holds complex values (raw MR data?): give a real-valued magnitude image.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(
            f"The {what} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(RGB or vector image): give a single-channel 3-D grey-value volume."
        )
    dim = image.GetDimension()
    if dim != 3:
        raise ScanError(
            f"The {what} is {dim}-D {tuple(image.GetSize())}: give one 3-D volume "
            "(for a 4-D series, save the volume you want as its own file)."
        )
    if min(image.GetSize()) < 2:
        raise ScanError(
            f"The {what} has size {tuple(image.GetSize())}: a single slice is a 2-D image; "
            "give a 3-D volume."
        )
    direction = np.reshape(image.GetDirection(), (3, 3))
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4):
        raise ScanError(
            f"The {what}'s direction matrix {np.round(direction, 3).tolist()} is sheared or scaled, not a "
            "rotation: such a grid cannot be segmented or saved faithfully; resample it first."
        )


def segmentable(values: np.ndarray) -> np.ndarray:
    """`values` as they are when of a `SCAN_DTYPES` type, else as float32."""
    return values if values.dtype in SCAN_DTYPES else values.astype(np.float32)


def read_scan(path: str | os.PathLike) -> sitk.Image:
    """A 3-D grey-value scan (8/16-bit integers or float32, as stored; other types become
    float32), geometry kept; rejects what cannot be segmented."""
    return as_scan(read_image(path), path)


def as_scan(image: sitk.Image, path: str | os.PathLike) -> sitk.Image:
    """`read_scan`'s checks and conversion, for an image already read from `path`."""
    check_volume(image)
    values = sitk.GetArrayViewFromImage(image)
    low, high = values.min(), values.max()  # a NaN or infinity anywhere shows in one of them
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = values.size - int(np.isfinite(values).sum())
        raise ScanError(f"{path}: {_share(bad, values.size)} are NaN or infinite; fix or re-export the scan.")
    if low == high:
        raise ScanError(f"{path}: every voxel has the value {low:g}; the scan is empty.")
    reach, float32_max = max(-float(low), float(high)), float(np.finfo(np.float32).max)
    if values.dtype not in SCAN_DTYPES and reach > float32_max:
        raise ScanError(f"{path}: values reach {reach:.3g}, beyond what float32 holds ({float32_max:.3g}); "
                        "rescale the scan.")
    if values.dtype in SCAN_DTYPES:
        return image
    return sitk.Cast(image, sitk.sitkFloat32)


def _share(part: int, whole: int) -> str:
    """`3 of 1200 voxels (0.25 %)`: a count, so that one voxel never reads as 0 %."""
    return f"{part} of {whole} voxels ({100 * part / whole:.2g} %)"


def read_labels(path: str | os.PathLike) -> sitk.Image:
    """An integer label map (any integer type, or float holding whole numbers) as uint16."""
    return as_labels(read_image(path), path)


def as_labels(image: sitk.Image, path: str | os.PathLike) -> sitk.Image:
    """`read_labels`'s checks and conversion, for an image already read from `path`."""
    check_volume(image, "label map")
    values = sitk.GetArrayViewFromImage(image)
    integral = np.issubdtype(values.dtype, np.integer) or (
        np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0)
    )
    if not integral:
        raise ScanError(f"{path} holds non-integer values: it is not a label map.")
    if values.min() < 0 or values.max() > 65535:
        raise ScanError(f"{path} holds label ids outside 0–65535: it is not a label map.")
    return sitk.Cast(image, sitk.sitkUInt16)


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol * 10)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def _same_information(a: sitk.Image, b: sitk.Image) -> bool:
    """Exactly the same grid, to the last bit (`same_geometry` allows for rounding)."""
    return (a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (
        b.GetSize(), b.GetSpacing(), b.GetOrigin(), b.GetDirection())


def labels_to_image(labels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A uint8 label image (array in SimpleITK's z, y, x order) on the reference's grid."""
    expected = tuple(reversed(reference.GetSize()))
    if labels.shape != expected:
        raise ScanError(f"Labels of shape {labels.shape} do not fit a scan of shape {expected}.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.CopyInformation(reference)
    return image


@contextlib.contextmanager
def _c_stderr_kept() -> Iterator[list[str]]:
    """Hold what C libraries print on file descriptor 2 (nifticlib reports a short write
    there, not to its caller), so that it becomes part of one message instead of a second;
    the list gets the text on exit."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read().decode(errors="replace"))


def write_labels(
    labels: sitk.Image | np.ndarray,
    path: str | os.PathLike,
    reference: sitk.Image,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write labels with the reference scan's exact geometry, never over `source`; the file
    is complete and reads back as written, or it is not there (`safe_write.write_atomic`)."""
    out = Path(path)
    suffix = path_suffix(out)
    if suffix not in LABEL_SUFFIXES:
        raise ScanError(f"Cannot write labels to {out.name}: use .nii.gz, .nii, .nrrd or .mha.")
    if source is not None and Path(source).exists() and out.exists() and out.samefile(source):
        raise ScanError(f"Refusing to write labels over the scan itself ({out}); choose another file.")
    values = labels if isinstance(labels, np.ndarray) else sitk.GetArrayViewFromImage(labels)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ScanError(f"Label ids must lie in 0–255 to be saved as uint8; these span {values.min()}–{values.max()}.")
    if isinstance(labels, np.ndarray):
        image = labels_to_image(labels, reference)
    else:
        if labels.GetSize() != reference.GetSize():
            raise ScanError(f"Labels of size {labels.GetSize()} do not fit a scan of size {reference.GetSize()}.")
        if labels.GetPixelID() == sitk.sitkUInt8 and _same_information(labels, reference):
            image = labels  # as `segment_image` returns them: no 78 MB copy at 512×512×300
        else:
            image = sitk.Cast(labels, sitk.sitkUInt8)
            image.CopyInformation(reference)

    def write(tmp: Path) -> None:
        with _c_stderr_kept() as said:
            try:
                sitk.WriteImage(image, str(tmp), useCompression=True)
            except RuntimeError:
                raise OutputError(f"Cannot write {out}: the image writer failed (is the disk full?).") from None
        complaint = next((ln for ln in said[0].splitlines() if "ERROR" in ln), None)
        if complaint is not None:  # nifticlib: "** ERROR: NWAD: wrote only 3744 of 38400 bytes to file"
            what = complaint.strip(" *").replace("ERROR: ", "")
            raise OutputError(f"Cannot write {out}: {what} (is the disk full?).")
        if said[0]:
            os.write(2, said[0].encode())

    def verify(tmp: Path) -> None:
        """ITK writes short files on a full disk without a word, and reads a truncated
        .nii.gz back as zeros: check the compressed stream and every voxel."""
        wrong = OutputError(f"Cannot write {out}: the written file reads back incomplete (is the disk full?).")
        try:
            _check_nifti_complete(tmp)
            back = sitk.ReadImage(str(tmp))
        except (ScanError, RuntimeError):
            raise wrong from None
        if not (same_geometry(back, image) and np.array_equal(
                sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))):
            raise wrong

    return write_atomic(out, write, overwrite, verify, make_parents=True)
