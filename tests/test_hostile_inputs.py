"""Hostile inputs made on the fly: a full disk, races, signals,
forged weights, impossible geometry. Each must end in exit 1 with exactly one line on
stderr and no traceback, and leave every file as it was: nothing created, nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import make_weights
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic import write_dicom_series

from napari_mmseg.cli import main
from napari_mmseg.errors import OutputError, ScanError
from napari_mmseg.inference import segment as inference
from napari_mmseg.io.safe_write import PARTIAL_PREFIX
from napari_mmseg.io.scan_io import write_labels
from napari_mmseg.models.weights import load_weights, save_weights
from napari_mmseg.models.weights_file import METADATA_KEY

REPO = Path(__file__).resolve().parents[1]


def tiny_scan(path: Path, values: np.ndarray | None = None, spacing=(4.0, 4.0, 4.0), direction=None,
              shape=(12, 20, 20)) -> Path:
    """A small CT-like volume (air on one side, soft tissue elsewhere) the tiny network segments in a second."""
    if values is None:
        values = np.random.default_rng(0).normal(40, 10, shape).astype(np.int16)
        values[:, :, :4] = -1000
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below `folder` and its content, without following links."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                state[rel] = "link to " + os.readlink(p)
            elif p.is_file():
                state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                state[rel] = "folder"
    return state


def refused(capfd, argv: list, folder: Path, match: str = "") -> str:
    """Run `mmseg argv`; assert exit 1, one `mmseg: error:` line, and `folder` untouched."""
    before = snapshot(folder)
    capfd.readouterr()
    code = main([str(a) for a in argv])
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("mmseg: error: "), err
    assert "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]
    assert snapshot(folder) == before
    return lines[0]


def segment_args(scan, out, weights, *extra) -> list:
    return ["segment", scan, "-o", out, "--modality", "CT", "--weights", weights, "--device", "cpu", "-q", *extra]


@pytest.fixture
def scan(tmp_path) -> Path:
    return tiny_scan(tmp_path / "scan.nii.gz")


@pytest.fixture
def no_segmentation(monkeypatch):
    """Outputs must be refused before the work: a segmentation that starts fails the test."""

    def ran(*args, **kwargs):
        raise AssertionError("the segmentation ran before the output was checked")

    monkeypatch.setattr(inference, "segment_image", ran)


def _tmpfs(folder: Path, options: str):
    """A tmpfs mounted at `folder` for one test, skipped with the reason where it cannot be."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def disk(tmp_path):
    """A 1 MB file system of its own, to fill."""
    yield from _tmpfs(tmp_path / "disk", "size=1m")


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system (root ignores permission bits, not a read-only mount)."""
    yield from _tmpfs(tmp_path / "ro", "ro,size=64k")


def fill(disk: Path, leave: int = 0) -> None:
    """Fill `disk` until it refuses more, then free `leave` bytes."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\1" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))


# ---------------------------------------------------------------- full disk


@pytest.mark.parametrize(("name", "leave"), [("prev.nii.gz", 0), ("prev.nii", 4096), ("prev.mha", 0),
                                             ("prev.nrrd", 0)])
def test_full_disk_keeps_the_previous_labels(capfd, disk, tmp_path, scan, tiny_weights, name, leave):
    big = tiny_scan(tmp_path / "big.nii.gz", shape=(24, 40, 40))
    assert main([str(a) for a in segment_args(big, disk / name, tiny_weights)]) == 0
    fill(disk, leave)
    refused(capfd, segment_args(big, disk / name, tiny_weights, "--overwrite"), disk, "Cannot write .*prev")


def test_full_disk_creates_no_labels_file(capfd, disk, scan, tiny_weights):
    fill(disk, 4096)
    refused(capfd, segment_args(scan, disk / "new.nii", tiny_weights), disk, "Cannot write")
    assert not list(disk.glob(PARTIAL_PREFIX + "*"))


def test_full_disk_csv_and_weights(capfd, disk, tmp_path):
    labels = tiny_scan(tmp_path / "pred.nii.gz", np.ones((4, 5, 6), np.uint8))
    good = make_weights(disk / "w.safetensors")
    fill(disk, 0)
    refused(capfd, ["evaluate", labels, labels, "--ref-labels", "mmseg", "--csv", disk / "t.csv"], disk,
            "No space left")
    before = good.read_bytes()
    loaded = load_weights(good)
    with pytest.raises(OutputError, match="Cannot write"):
        save_weights(loaded.model, loaded.meta, good)
    assert good.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["filler", "w.safetensors"]


# ---------------------------------------------------------------- outputs refused before the work


@pytest.mark.parametrize(("make_output", "match"), [
    (lambda d: (d / "file.txt").write_text("x") and d / "file.txt" / "labels.nii.gz", "is a file, not a folder"),
    (lambda d: (d / "loop.nii.gz").symlink_to(d / "loop.nii.gz") or d / "loop.nii.gz", "symbolic links"),
    (lambda d: (d / "old.nii.gz").write_text("keep me") and d / "old.nii.gz", "exists; pass --overwrite"),
    (lambda d: Path("/dev/null"), "not a folder"),
    (lambda d: d / "labels.png", "label files end in"),
])
def test_unwritable_outputs_are_refused_before_segmenting(capfd, tmp_path, scan, tiny_weights, no_segmentation,
                                                          make_output, match):
    refused(capfd, segment_args(scan, make_output(tmp_path), tiny_weights), tmp_path, match)


def test_read_only_output_folder(capfd, read_only, tmp_path, scan, tiny_weights, no_segmentation):
    refused(capfd, segment_args(scan, read_only / "labels.nii.gz", tiny_weights), tmp_path, "not writable")
    refused(capfd, segment_args(scan, read_only / "sub" / "labels.nii.gz", tiny_weights), tmp_path, "not writable")
    refused(capfd, ["evaluate", scan, scan, "--csv", read_only / "t.csv"], tmp_path, "not writable")


@pytest.fixture
def labels_pair(tmp_path) -> tuple[Path, Path]:
    values = np.zeros((4, 5, 6), np.uint8)
    values[1:3, 1:4, 1:5] = 1
    return tiny_scan(tmp_path / "pred.nii.gz", values), tiny_scan(tmp_path / "ref.nii.gz", values)


@pytest.mark.parametrize(("csv", "extra", "match"), [
    ("missing/t.csv", (), "does not exist"),
    ("pred.nii.gz", (), "exists; pass --overwrite"),
    ("ref.nii.gz", ("--overwrite",), "over the prediction or reference"),
    (".", ("--overwrite",), "is a folder"),
])
def test_csv_never_replaces_what_it_should_not(capfd, tmp_path, labels_pair, csv, extra, match):
    refused(capfd, ["evaluate", *labels_pair, "--csv", tmp_path / csv, *extra], tmp_path, match)


# ---------------------------------------------------------------- races and signals


def test_a_file_that_appears_during_the_run_is_kept(capfd, tmp_path, scan, tiny_weights, monkeypatch):
    out = tmp_path / "labels.nii.gz"
    real = sitk.WriteImage

    def intruder(*args, **kwargs):  # after every check, while our temporary file is written
        out.write_bytes(b"another program's file")
        return real(*args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", intruder)
    capfd.readouterr()
    assert main([str(a) for a in segment_args(scan, out, tiny_weights)]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "appeared while this ran" in err[0]
    assert out.read_bytes() == b"another program's file"
    assert not list(tmp_path.glob(PARTIAL_PREFIX + "*"))


def test_concurrent_writers_to_one_path_give_one_file(tmp_path):
    reference = sitk.GetImageFromArray(np.zeros((16, 32, 32), np.uint8))
    out = tmp_path / "labels.nii.gz"
    start, results = threading.Barrier(4), {}

    def writer(k: int) -> None:
        start.wait()
        try:
            write_labels(np.full((16, 32, 32), k, np.uint8), out, reference)
            results[k] = "written"
        except OutputError as e:
            results[k] = str(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [k for k, r in results.items() if r == "written"]
    assert len(winners) == 1, results
    assert all(re.search("appeared while this ran|exists", r) for k, r in results.items() if k != winners[0])
    assert np.all(sitk.GetArrayFromImage(sitk.ReadImage(str(out))) == winners[0])
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]


def test_sigterm_during_the_write_leaves_nothing(tmp_path, scan, tiny_weights):
    out, marker = tmp_path / "out" / "labels.nii.gz", tmp_path / "writing"
    child = (
        "import pathlib, sys, time, SimpleITK as sitk\n"
        "real = sitk.WriteImage\n"
        "def slow(*args, **kwargs):\n"
        "    real(*args, **kwargs)\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    time.sleep(120)\n"
        "sitk.WriteImage = slow\n"
        "from napari_mmseg.cli import main\n"
        f"sys.exit(main({[str(a) for a in segment_args(scan, out, tiny_weights)]!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the child never reached the write"
    assert list(out.parent.glob(PARTIAL_PREFIX + "*")), "the partial file should exist mid-write"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines() == ["mmseg: terminated"]
    assert list(out.parent.iterdir()) == []


def test_folder_input_ignores_partial_and_hidden_files(capfd, tmp_path, scan, tiny_weights):
    scans = tmp_path / "scans"
    scans.mkdir()
    scan.rename(scans / "a.nii.gz")
    (scans / f"{PARTIAL_PREFIX}x.nii.gz").write_bytes(b"\x1f\x8b half a file")
    (scans / ".lab.x1y2.nii.gz").write_bytes(b"\x1f\x8b an older version's leftover")
    assert main([str(a) for a in segment_args(scans, tmp_path / "out", tiny_weights)]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.nii.gz"]


# ---------------------------------------------------------------- forged weights


def _nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = {"x": value}
    return value


FORGERIES = {
    "network is a list": lambda d: d.update(network=[16, 32]),
    "normalization is text": lambda d: d.update(normalization="CT"),
    "classes is a list": lambda d: d.update(classes=["liver"]),
    "no MR normalisation": lambda d: d["normalization"].pop("MR"),
    "spacing 0": lambda d: d.update(spacing_mm=0),
    "spacing negative": lambda d: d.update(spacing_mm=-3.0),
    "spacing text": lambda d: d.update(spacing_mm="3"),
    "patch 100000": lambda d: d.update(patch_size=100_000),
    "patch not a multiple": lambda d: d.update(patch_size=30),
    "stride 0": lambda d: d["network"].update(strides=[1, 0, 2, 2, 1]),
    "negative filters": lambda d: d["network"].update(filters=[-4, 8, 8, 8, 8]),
    "huge filters": lambda d: d["network"].update(filters=[10**6] * 5),
    "fractional filters": lambda d: d["network"].update(filters=[4.0, 8, 8, 8, 8]),
    "a million units": lambda d: d["network"].update(units_per_scale=10**6),
    "deep metadata": lambda d: d.update(training=_nested(40)),
    "NaN std": lambda d: d["normalization"]["CT"].update(std=float("nan")),
    "zero std": lambda d: d["normalization"]["CT"].update(std=0.0),
    "reversed window": lambda d: d["normalization"]["CT"].update(window=[275.0, -125.0]),
    "infinite window": lambda d: d["normalization"]["CT"].update(window=[float("-inf"), 275.0]),
    "reversed percentiles": lambda d: d["normalization"]["MR"].update(percentiles=[99.5, 0.5]),
    "unknown kind": lambda d: d["normalization"]["MR"].update(kind="histogram"),
    "unknown variant": lambda d: d.update(variant="v9"),
    "context weight 2": lambda d: d.update(context_weight=2.0),
    "NaN context weight": lambda d: d.update(context_weight=float("nan")),
    "format version text": lambda d: d.update(format_version="1"),
    "empty metadata": lambda d: d.clear(),
}


def forge(tiny_weights: Path, path: Path, mutate=None, raw: str | None = None, nan_tensor: bool = False) -> Path:
    with safe_open(str(tiny_weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
        doc = json.loads(f.metadata()[METADATA_KEY])
    if mutate is not None:
        mutate(doc)
    if nan_tensor:
        name = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = torch.nan
    save_file(tensors, str(path), metadata={METADATA_KEY: raw if raw is not None else json.dumps(doc)})
    return path


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_metadata_is_one_line_for_info_and_segment(capfd, tmp_path, scan, tiny_weights, forgery):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    weights = forge(tiny_weights, tmp_path / "forged.safetensors", FORGERIES[forgery])
    refused(capfd, ["info", weights], tmp_path, "metadata")
    refused(capfd, segment_args(scan, tmp_path / "labels.nii.gz", weights), tmp_path, "metadata")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"refusing {forgery} took {grown_mb:.0f} MB"


def test_metadata_nested_beyond_the_parser_and_nan_weights(capfd, tmp_path, scan, tiny_weights):
    with safe_open(str(tiny_weights), framework="pt") as f:
        text = f.metadata()[METADATA_KEY]
    deep = text[:-1] + ', "training": ' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(capfd, ["info", forge(tiny_weights, tmp_path / "deep.safetensors", raw=deep)], tmp_path,
            "unreadable napari-mmseg metadata")
    nan = forge(tiny_weights, tmp_path / "nan.safetensors", nan_tensor=True)
    refused(capfd, ["info", nan], tmp_path, "NaN or infinite weights")
    refused(capfd, segment_args(scan, tmp_path / "labels.nii.gz", nan), tmp_path, "NaN or infinite weights")


# ---------------------------------------------------------------- scans


def _dicom(folder: Path, z_mm: list[float]) -> Path:
    folder.mkdir()
    values = np.random.default_rng(2).normal(40, 30, (len(z_mm), 16, 16)).astype(np.int16)
    return write_dicom_series(folder, values, z_mm, pixel_mm=4.0)


SCANS = {
    "complex": (lambda d: tiny_scan(d / "c.nii.gz", (np.ones((4, 5, 6)) * (1 + 2j)).astype(np.complex64)),
                "complex values"),
    "beyond float32": (lambda d: tiny_scan(d / "f.nrrd", np.linspace(0, 1e39, 120).reshape(4, 5, 6)),
                       "beyond what float32 holds"),
    "one NaN voxel in NIfTI": (lambda d: tiny_scan(
        d / "n.nii", np.where(np.arange(120).reshape(4, 5, 6) == 7, np.nan, np.arange(120.0).reshape(4, 5, 6))),
        "1 of 120 voxels .*NaN"),
    "sheared direction": (lambda d: tiny_scan(d / "s.mha", direction=(1, 0.3, 0, 0, 1, 0, 0, 0, 1)),
                          "sheared or scaled"),
    "scaled direction": (lambda d: tiny_scan(d / "scaled.mha", direction=(2, 0, 0, 0, 1, 0, 0, 0, 1)),
                         "sheared or scaled"),
    "100 mm voxels": (lambda d: tiny_scan(d / "h.nii.gz", np.random.default_rng(0).normal(
        0, 100, (10, 20, 20)).astype(np.int16), spacing=(100.0, 100.0, 100.0)), r"2000 × 2000 × 1000 mm.*voxels"),
    "DICOM with a duplicate slice": (lambda d: _dicom(d / "dup", [0, 4, 8, 8, 12, 16]), "not evenly spaced"),
    "DICOM with a missing slice": (lambda d: _dicom(d / "gap", [0, 4, 8, 16, 20, 24]), "not evenly spaced"),
}


@pytest.fixture
def no_network(monkeypatch):
    """Scans must be refused before the network: one that runs fails the test (and fast)."""

    def ran(*args, **kwargs):
        raise AssertionError("the network ran on a scan that should have been refused")

    monkeypatch.setattr(inference, "predict_probabilities", ran)


@pytest.mark.parametrize("kind", sorted(SCANS))
def test_unusable_scans_are_one_line(capfd, tmp_path, tiny_weights, no_network, kind):
    make, match = SCANS[kind]
    scan = make(tmp_path)
    refused(capfd, segment_args(scan, tmp_path / "labels.nii.gz", tiny_weights), tmp_path, match)


def test_napari_reader_explains_complex_scans(tmp_path):
    from napari_mmseg.plugin.reader import read_layers

    path, match = SCANS["complex"][0](tmp_path), SCANS["complex"][1]
    with pytest.raises(ScanError, match=match):
        read_layers(str(path))


def test_evenly_spaced_dicom_still_reads(capfd, tmp_path, tiny_weights):
    series = _dicom(tmp_path / "ok", [0, 4, 8, 12, 16, 20])
    assert main([str(a) for a in segment_args(series, tmp_path / "l.nii.gz", tiny_weights)]) == 0


# ---------------------------------------------------------------- messages


def test_reference_ids_given_twice(capfd, tmp_path, labels_pair):
    refused(capfd, ["evaluate", *labels_pair, "--ref-labels", "liver=1,spleen=1"], tmp_path, "more than one organ")


@pytest.mark.parametrize("content", ['["liver", "spleen"]', '{"labels": {"liver": [1, 2], "spleen": 3}}',
                                     '{"labels": ["liver"]}'])
def test_unusable_dataset_json_beside_the_reference(capfd, tmp_path, labels_pair, content):
    (tmp_path / "dataset.json").write_text(content)
    refused(capfd, ["evaluate", *labels_pair], tmp_path, "dataset.json")


# ---------------------------------------------------------------- what a header declares


def _nifti_header(dims: tuple[int, ...], datatype: int = 4, bitpix: int = 16, pixdim=(1.0, 1.0, 1.0),
                  sform=None) -> bytes:
    """A NIfTI-1 header (348 bytes and an empty extension) declaring `dims` voxels."""
    import struct

    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *[1] * (7 - len(dims)))
    struct.pack_into("<2h", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, *pixdim, *[1.0] * (7 - len(pixdim)))
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)  # scl_slope
    if sform is not None:
        struct.pack_into("<2h", header, 252, 0, 1)  # no qform; an sform
        struct.pack_into("<12f", header, 280, *np.ravel(sform))
    header[344:348] = b"n+1\0"
    return bytes(header)


def _forged_gzip(path: Path, dims: tuple[int, ...]) -> Path:
    """A few hundred bytes whose gzip trailer claims the whole declared size (so the
    completeness check by trailer passes)."""
    import gzip

    data = bytearray(gzip.compress(_nifti_header(dims) + bytes(64)))
    data[-4:] = ((352 + 2 * int(np.prod(dims))) % 2**32).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def _nrrd(path: Path, sizes: str, encoding: str = "raw", data_file: str | None = None, data: bytes = b"",
          spacings: str = "1 1 1") -> Path:
    text = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\nspacings: {spacings}\nencoding: {encoding}\n"
            "endian: little\n")
    text += f"data file: {data_file}\n" if data_file else "\n"
    path.write_bytes(text.encode() + (b"" if data_file else data))
    return path


def _mhd(path: Path, data_file: str, size: str = "4 5 6", spacing: str = "1 1 1") -> Path:
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementSpacing = {spacing}\n"
                    f"ElementType = MET_SHORT\nElementDataFile = {data_file}\n")
    return path


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "data.raw")
    return _mhd(d / "fifo.mhd", "data.raw")


def _linked_outside(d: Path) -> Path:
    (d / "data.raw").symlink_to("/etc/passwd")
    return _mhd(d / "linked.mhd", "data.raw")


def _float_nifti(d: Path, name: str, value: float) -> Path:
    values = np.arange(120, dtype=np.float32).reshape(4, 5, 6)
    values[1, 2, 3] = value
    return tiny_scan(d / name, values)


def _pixdim(d: Path, name: str, pixdim) -> Path:
    path = d / name
    path.write_bytes(_nifti_header((6, 5, 4), pixdim=pixdim) + np.arange(120, dtype=np.int16).tobytes())
    return path


def _near_orthonormal_nifti(d: Path, shear: float) -> Path:
    sform = np.array([[-2.0, 2 * shear, 0, 0], [0, -2.0, 0, 0], [0, 0, 3.0, 0]])
    path = d / f"sform-{shear:g}.nii"
    values = np.random.default_rng(0).normal(40, 10, (12, 20, 20)).astype(np.int16)
    values[:, :, :4] = -1000
    path.write_bytes(_nifti_header((20, 20, 12), pixdim=(2.0, 2.0, 3.0), sform=sform) + values.tobytes())
    return path


def _two_series(d: Path) -> Path:
    folder = _dicom(d / "two", [0, 4, 8, 12])
    other = _dicom(d / "other", [0, 5, 10])
    for i, f in enumerate(sorted(other.iterdir())):  # into the first folder, as another series
        image = sitk.ReadImage(str(f))
        image.SetMetaData("0020|000e", "1.2.3.5")
        image.SetMetaData("0008|0018", f"1.2.3.5.{i + 1}")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"b{i}.dcm"))
        writer.Execute(image)
    return folder


HEADERS = {
    "forged gzip trailer, 16384×16384×8": (lambda d: _forged_gzip(d / "big.nii.gz", (16384, 16384, 8)),
                                           "declares|more than"),
    "forged gzip trailer, 1000³": (lambda d: _forged_gzip(d / "g.nii.gz", (1000, 1000, 1000)),
                                   "more than its .* compressed bytes"),
    "NRRD declaring 1500³": (lambda d: _nrrd(d / "n.nrrd", "1500 1500 1500", data=bytes(5000)),
                             r"1500 × 1500 × 1500 .*forged"),
    "gzip NRRD declaring 900³": (lambda d: _nrrd(d / "z.nrrd", "900 900 900", "gzip", data=bytes(5000)),
                                 "truncated, or its header is wrong"),
    "raw NRRD shorter than declared": (lambda d: _nrrd(d / "s.nrrd", "40 40 40", data=bytes(5000)),
                                       "holds .* bytes of data"),
    "MHD on /dev/zero": (lambda d: _mhd(d / "z.mhd", "/dev/zero", "2000 2000 2000"), "outside the header's folder"),
    "MHD on a FIFO": (_fifo, "not a regular file"),
    "MHD on ../secret.raw": (lambda d: _mhd(d / "s.mhd", "../secret.raw"), "outside the header's folder"),
    "MHD on a link out of its folder": (_linked_outside, "outside the header's folder"),
    "NHDR on /etc/passwd": (lambda d: _nrrd(d / "p.nhdr", "4 5 6", data_file="/etc/passwd"),
                            "outside the header's folder"),
    "NHDR on a missing file": (lambda d: _nrrd(d / "m.nhdr", "4 5 6", data_file="absent.raw"), "does not exist"),
    "/dev/zero itself": (lambda d: Path("/dev/zero"), "not a regular file"),
    "Inf voxel in NIfTI": (lambda d: _float_nifti(d, "inf.nii", np.inf), "1 of 120 voxels .*NaN or infinite"),
    "Inf voxel in NRRD": (lambda d: _float_nifti(d, "inf.nrrd", -np.inf), "NaN or infinite"),
    "NIfTI pixdim 0": (lambda d: _pixdim(d, "zero.nii", (1.0, 0.0, 1.0)), r"voxel size of 1 × 0 × 1 mm"),
    "NIfTI pixdim NaN": (lambda d: _pixdim(d, "nan.nii", (1.0, 1.0, float("nan"))), "voxel size .*nan"),
    "NIfTI pixdim infinite": (lambda d: _pixdim(d, "inf.nii", (float("inf"), 1.0, 1.0)), "voxel size of inf"),
    "NRRD spacing NaN": (lambda d: _nrrd(d / "sp.nrrd", "4 5 6", data=bytes(240), spacings="nan 1 1"),
                         "voxel size of nan × 1 × 1"),
    "MHA spacing 0": (lambda d: (d / "raw.raw").write_bytes(bytes(240)) and _mhd(d / "sp.mhd", "raw.raw",
                                                                                 spacing="1 0 1"),
                      "voxel size of 1 × 0 × 1"),
    "direction 0.05 from orthonormal": (lambda d: _near_orthonormal_nifti(d, 0.05), "from orthonormal, beyond"),
    "2-slice DICOM, 100 mm apart": (lambda d: _dicom(d / "two-slices", [0, 100]), "2 slice"),
    "DICOM folder with two series": (_two_series, r"2 DICOM series \(1\.2\.3\.4 \(4 files\); 1\.2\.3\.5 .*folder of "
                                                  "its own"),
}


@pytest.mark.parametrize("kind", sorted(HEADERS))
def test_headers_are_checked_before_any_voxel_is_read(capfd, tmp_path, tiny_weights, no_network, kind):
    make, match = HEADERS[kind]
    (tmp_path / "secret.raw").write_bytes(bytes(240))
    folder = tmp_path / "in"
    folder.mkdir()
    scan = make(folder)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(capfd, segment_args(scan, tmp_path / "labels.nii.gz", tiny_weights), tmp_path, match)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"refusing {kind} took {grown_mb:.0f} MB"


def test_near_orthonormal_directions_are_read_as_the_nearest_rotation(capfd, tmp_path, tiny_weights):
    """Orthonormal to 2·10⁻⁴, as converted clinical files often are: read, with a note."""
    scan, out = _near_orthonormal_nifti(tmp_path, 2e-4), tmp_path / "labels.nii.gz"
    capfd.readouterr()
    assert main([str(a) for a in segment_args(scan, out, tiny_weights)[:-1]]) == 0
    stdout = capfd.readouterr().out
    assert "note: its direction cosines are orthonormal only to 2e-04" in stdout
    direction = np.reshape(sitk.ReadImage(str(out)).GetDirection(), (3, 3))
    assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-6)
    sheared = tiny_scan(tmp_path / "near.mha", direction=(1, 2e-4, 0, 0, 1, 0, 0, 0, 1))
    assert main([str(a) for a in segment_args(sheared, tmp_path / "l2.nii.gz", tiny_weights)[:-1]]) == 0
    assert "orthonormal only to 2e-04" in capfd.readouterr().out


def test_paths_that_are_not_utf8(capfd, tmp_path, scan, tiny_weights):
    bad = tmp_path / os.fsdecode(b"scan-\xff.nii.gz")
    bad.write_bytes(scan.read_bytes())
    refused(capfd, segment_args(bad, tmp_path / "labels.nii.gz", tiny_weights), tmp_path, r"not valid UTF-8")
    folder = tmp_path / os.fsdecode(b"out-\xfe")
    folder.mkdir()
    refused(capfd, segment_args(scan, folder / "labels.nii.gz", tiny_weights), tmp_path, r"not valid UTF-8")


# ---------------------------------------------------------------- training and averaging outputs


def _train_args(ct, out, *extra) -> list:
    return ["train", "--variant", "individual", "--ct", ct, "--steps", "1", "--batch-size", "1", "--val-cases", "0",
            "--augment", "p_coarse=0", "--device", "cpu", "--out", out, "-q", *extra]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "ct", "CT", 2)


def test_train_never_replaces_weights_unasked(capfd, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "individual-ct.safetensors").write_bytes(b"an earlier run's weights")
    refused(capfd, _train_args(tmp_path / "absent", tmp_path / "run"), tmp_path, "exists; pass --overwrite")
    start = make_weights(tmp_path / "run" / "v4.safetensors")
    refused(capfd, ["train", "--variant", "v4", "--ct", tmp_path / "absent", "--init-weights", start, "--out",
                    tmp_path / "run", "--overwrite"], tmp_path, "one of --init-weights")


def test_a_garbage_checkpoint_is_one_line(capfd, tmp_path, tiny_dataset):
    run = tmp_path / "run"
    run.mkdir()
    (run / "individual-ct.checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    capfd.readouterr()
    assert main([str(a) for a in _train_args(tiny_dataset, run)]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"mmseg: error: .*checkpoint.pt is not a checkpoint of this run", err[0]), err
    assert sorted(p.name for p in run.iterdir()) == ["individual-ct.checkpoint.pt", "train.log"]


def test_training_on_a_full_disk_leaves_no_partial_checkpoint(capfd, disk, tiny_dataset):
    capfd.readouterr()
    assert main([str(a) for a in _train_args(tiny_dataset, disk / "run")]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"mmseg: error: Cannot write .*checkpoint.pt: .*disk full", err[0]), err
    assert not [p.name for p in (disk / "run").iterdir() if p.name != "train.log"]


def test_average_never_writes_over_one_of_its_inputs(capfd, tmp_path):
    a, b = make_weights(tmp_path / "a.safetensors", "msbn", seed=0), make_weights(tmp_path / "b.safetensors",
                                                                                   "msbn", seed=1)
    refused(capfd, ["average", a, b, "-o", a, "--overwrite"], tmp_path, "one of the files averaged")
    refused(capfd, ["average", a, b, "-o", tmp_path / "." / "b.safetensors", "--overwrite"], tmp_path,
            "one of the files averaged")


def test_average_refuses_a_lineage_record_without_its_keys(capfd, tmp_path, tiny_weights):
    a = forge(tiny_weights, tmp_path / "a.safetensors",
              lambda d: d.update(training={"averaged_from": [{"averaged_from": ["x.safetensors"]}]}))
    b = forge(tiny_weights, tmp_path / "b.safetensors", lambda d: d.update(training={"earlier": ["not a record"]}))
    for forged in (a, b):
        refused(capfd, ["average", forged, tiny_weights, "-o", tmp_path / "soup.safetensors"], tmp_path,
                "training record .* (lacks 'file'|is not a list of records)")
    # a fine-tune records its start's lineage at the end: refused before any training
    refused(capfd, ["train", "--variant", "v4", "--ct", tmp_path / "absent", "--init-weights", a, "--out",
                    tmp_path / "run"], tmp_path, "lacks 'file'")


def test_weights_relabelled_to_another_dtype_are_refused(capfd, tmp_path, scan, tiny_weights):
    with safe_open(str(tiny_weights), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
        metadata = f.metadata()
    tensors = {k: t.half().view(torch.int16) if t.is_floating_point() else t for k, t in tensors.items()}
    save_file(tensors, str(tmp_path / "i16.safetensors"), metadata=metadata)
    refused(capfd, ["info", tmp_path / "i16.safetensors"], tmp_path, r"stores .* as int16, where the network holds "
            "float32")
    refused(capfd, segment_args(scan, tmp_path / "labels.nii.gz", tmp_path / "i16.safetensors"), tmp_path, "int16")


@pytest.mark.parametrize("argv", [
    ["train", "--variant", "msbn", "--batch-size", "0"],
    ["train", "--variant", "msbn", "--steps", "0"],
    ["train", "--variant", "msbn", "--val-cases", "-1"],
    ["train", "--variant", "msbn", "--steps", "ten"],
])
def test_impossible_counts_are_usage_errors(capfd, argv):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "Traceback" not in capfd.readouterr().err


def test_more_validation_cases_than_cases_and_empty_reference_ids(capfd, tmp_path, tiny_dataset, labels_pair):
    refused(capfd, _train_args(tiny_dataset, tmp_path / "run", "--val-cases", "1000"), tmp_path,
            "--val-cases 1000: the CT dataset has 2 case")
    refused(capfd, ["evaluate", *labels_pair, "--ref-labels", ",,,"], tmp_path, "--ref-labels")


# ---------------------------------------------------------------- signals at any moment


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated")])
def test_a_signal_while_starting_is_one_line(capfd, tmp_path, scan, tiny_weights, monkeypatch, sig, code, word):
    from napari_mmseg.models import weights as weights_module

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(5)
        raise AssertionError("the signal was not delivered")

    monkeypatch.setattr(weights_module, "load_weights", signalled)
    capfd.readouterr()
    assert main([str(a) for a in segment_args(scan, tmp_path / "labels.nii.gz", tiny_weights)]) == code
    assert capfd.readouterr().err.strip().splitlines() == [f"mmseg: {word}"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "main restores the handlers"
