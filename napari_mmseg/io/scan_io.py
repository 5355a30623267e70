"""Reading scans and writing label maps with SimpleITK, keeping the scan's geometry.

A label map is always written with exactly its source scan's size, spacing, origin and
direction, whole or not at all (`safe_write`), and never over the scan itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.errors import OutputError, ScanError
from napari_mmseg.io.header_checks import (
    DEFLATE_MAX_RATIO,
    check_bytes_on_disk,
    check_declared_size,
    data_layout,
    declared_size,
    sitk_path,
)
from napari_mmseg.io.safe_write import write_atomic

SCAN_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# Voxel types a scan keeps; any other is converted to float32. A CT stays int16: half the
# memory of float32, and no conversion pass (0.2-0.8 s for 512×512×300 in a fresh process
# here, mostly page faults on the new 315 MB).
SCAN_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.float32))
# How far from orthonormal a direction matrix may be (largest entry of DᵀD − I) and still be
# read as the rotation nearest to it: converted clinical files are often off by about 2·10⁻⁴
# from rounding, and at 10⁻³ the rotation moves no point of a 500 mm field of view by more
# than 0.5 mm, under a voxel. Beyond it the grid is sheared or scaled, and taking it as a
# rotation would misplace the anatomy by more than a voxel.
DIRECTION_TOLERANCE = 1e-3


class ScanNote(UserWarning):
    """How a scan was read where that was not the plain way (e.g. its direction made orthonormal)."""


def path_suffix(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def strip_suffix(path: str | os.PathLike) -> str:
    """The file name without its image extension (`case.nii.gz` → `case`)."""
    name = Path(path).name
    suffix = path_suffix(name)
    return name[: -len(suffix)] if suffix else name


def dicom_series_files(folder: str | os.PathLike) -> tuple[str, ...]:
    """The slice files of the folder's one series, in GDCM's order by slice position; empty
    when the folder holds no DICOM series. Several series are refused: which one the user
    means cannot be guessed (the largest may be a localiser stack or another phase)."""
    reader = sitk.ImageSeriesReader
    name = sitk_path(folder, "DICOM folder")
    series = reader.GetGDCMSeriesIDs(name)
    if len(series) > 1:
        listed = "; ".join(f"{s} ({len(reader.GetGDCMSeriesFileNames(name, s))} files)" for s in series[:5])
        raise ScanError(f"{folder} holds {len(series)} DICOM series ({listed}{' …' if len(series) > 5 else ''}): "
                        "move each series into a folder of its own and pass the folder of the one to segment.")
    return reader.GetGDCMSeriesFileNames(name, series[0]) if series else ()


def _read_dicom_series(folder: Path) -> sitk.Image:
    files = dicom_series_files(folder)
    if not files:
        raise ScanError(f"{folder} is a folder without a DICOM series: give a scan file or a DICOM folder.")
    if len(files) < 3:
        raise ScanError(f"{folder}: a DICOM series of {len(files)} slice(s) is not a volume whose slice spacing "
                        "can be checked; give a series of at least 3 slices.")
    first = sitk.ImageFileReader()
    first.SetFileName(sitk_path(files[0]))
    try:
        first.ReadImageInformation()
    except RuntimeError as e:
        raise ScanError(f"Cannot read the DICOM series in {folder}: {_first_line(e)}") from None
    check_declared_size(folder, (*first.GetSize()[:2], len(files)))
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
    if not all(reader.HasMetaDataKey(i, key) for i in range(n)):
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


def _nifti_spacing_problem(p: Path) -> str | None:
    """ITK's NIfTI reader takes a voxel size of 0, NaN or infinity as 1 mm: a wrong scale, silently."""
    with _open_nifti(p) as f:
        header = f.read(348)
    for order in "<>":
        if len(header) == 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            ndim = max(0, min(struct.unpack(order + "h", header[40:42])[0], 3))
            pixdim = struct.unpack(order + "8f", header[76:108])[1 : 1 + ndim]
            if not all(np.isfinite(v) and v != 0 for v in pixdim):
                shown = " × ".join(f"{v:g}" for v in pixdim)
                return f"the header gives a voxel size of {shown} mm (0, NaN or infinite: SimpleITK would take 1 mm)"
    return None


def _nifti_nonfinite_count(p: Path) -> tuple[int, int]:
    """NaN or infinite voxels in a float NIfTI file, and all voxels: ITK's reader turns them into 0."""
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
            values = np.frombuffer(data[: len(data) // dtype.itemsize * dtype.itemsize], dtype)
            nan += values.size - int(np.isfinite(values).sum())
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
            if expected is not None and expected > DEFLATE_MAX_RATIO * p.stat().st_size + 4096:
                raise ScanError(f"{p} declares {expected:,} bytes, more than its {p.stat().st_size:,} compressed "
                                "bytes can hold: it is truncated, or its header is forged; copy it again.")
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
    """Any image SimpleITK reads (file or DICOM folder), with a clear error when it cannot;
    what the file declares is checked before any voxel is read (`header_checks`)."""
    p = Path(path)
    sitk_path(p)
    if not p.exists():
        raise ScanError(f"{p} does not exist: check the path.")
    if p.is_dir():
        return _read_dicom_series(p)
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        raise ScanError(f"{p} is not a regular file (a device, pipe or socket): give a scan file.")
    if st.st_size == 0:
        raise ScanError(f"{p} is an empty file.")
    layout = data_layout(p)
    if layout is not None and layout.spacing_problem() is not None:
        raise ScanError(f"{p}: {layout.spacing_problem()}; fix the header.")
    _check_nifti_complete(p)
    nifti = path_suffix(p) in (".nii", ".nii.gz")
    permissive = _nifti_sform_deviation(p) if nifti else None
    with _sform_permissive(permissive is not None):
        size, nbytes = declared_size(p)
        check_declared_size(p, size)
        if layout is not None:
            check_bytes_on_disk(p, layout, nbytes)
        if nifti:
            problem = _nifti_spacing_problem(p)
            if problem is not None:
                raise ScanError(f"{p}: {problem}; fix the header.")
            bad, total = _nifti_nonfinite_count(p)
            if bad:
                raise ScanError(f"{p}: {_share(bad, total)} are NaN or infinite (SimpleITK would read them as "
                                "0); fix or re-export the file.")
        image = _read_file(p)
    if permissive:
        warnings.warn(ScanNote(f"its direction cosines are orthonormal only to {permissive:.0e} (common in "
                               "converted data): read as the nearest rotation"), stacklevel=2)
    return image


def _read_file(p: Path) -> sitk.Image:
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


def _direction_deviation(direction: np.ndarray) -> float:
    """How far a direction matrix is from a rotation: the largest entry of DᵀD − I."""
    return float(np.abs(direction.T @ direction - np.eye(3)).max())


def _nifti_sform_deviation(p: Path) -> float | None:
    """For a NIfTI file whose only orientation is an sform that is a rotation up to rounding,
    that rounding (ITK refuses such a file unless told to take the nearest rotation); None
    when ITK reads the file as it is. Beyond `DIRECTION_TOLERANCE`, a refusal that says why."""
    with _open_nifti(p) as f:
        header = f.read(348)
    for order in "<>":
        if len(header) == 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            qform_code, sform_code = struct.unpack(order + "2h", header[252:256])
            if qform_code > 0 or sform_code <= 0:
                return None
            rows = np.array(struct.unpack(order + "12f", header[280:328]), np.float64).reshape(3, 4)[:, :3]
            norms = np.linalg.norm(rows, axis=0)
            if not np.all(np.isfinite(rows)) or not np.all(norms > 0):
                return None  # the pixdim check says what is wrong
            deviation = _direction_deviation(rows / norms)
            if deviation <= 1e-6:
                return None
            if deviation > DIRECTION_TOLERANCE:
                raise ScanError(
                    f"{p}: its direction cosines (sform) are {deviation:.1g} from orthonormal, beyond the "
                    f"{DIRECTION_TOLERANCE:g} that rounding explains: the grid is sheared or scaled, and cannot "
                    "be segmented or saved faithfully; resample it first."
                )
            return deviation
    return None


@contextlib.contextmanager
def _sform_permissive(on: bool) -> Iterator[None]:
    """ITK's switch to read a NIfTI sform as the nearest rotation (its warnings held: the
    deviation is reported as a note instead)."""
    if not on:
        yield
        return
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    before = os.environ.get("ITK_NIFTI_SFORM_PERMISSIVE")
    os.environ["ITK_NIFTI_SFORM_PERMISSIVE"] = "1"
    sitk.ProcessObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
        if before is None:
            os.environ.pop("ITK_NIFTI_SFORM_PERMISSIVE", None)
        else:
            os.environ["ITK_NIFTI_SFORM_PERMISSIVE"] = before


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
    if not all(np.isfinite(v) and v > 0 for v in image.GetSpacing()):
        raise ScanError(f"The {what}'s voxel size {image.GetSpacing()} mm is not positive and finite: fix the header.")
    direction = np.reshape(image.GetDirection(), (3, 3))
    deviation = _direction_deviation(direction)
    if deviation > DIRECTION_TOLERANCE or not np.isfinite(deviation):
        raise ScanError(
            f"The {what}'s direction matrix {np.round(direction, 3).tolist()} is sheared or scaled, not a "
            f"rotation ({deviation:.1g} from orthonormal, beyond the {DIRECTION_TOLERANCE:g} that rounding "
            "explains): such a grid cannot be segmented or saved faithfully; resample it first."
        )
    if deviation > 1e-4:  # rounding: the nearest rotation (polar decomposition)
        u, _, vt = np.linalg.svd(direction)
        image.SetDirection((u @ vt).ravel().tolist())
        warnings.warn(ScanNote(f"its direction cosines are orthonormal only to {deviation:.0e} (common in "
                               "converted data): read as the nearest rotation"), stacklevel=2)


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
    try:
        sitk_path(out.parent, "output folder")
    except ScanError as e:
        raise OutputError(str(e)) from None
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
