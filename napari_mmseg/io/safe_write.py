"""Writing a file so that it is either complete or not there: the one path every writer takes.

The data goes to a temporary file beside the target (same file system, so the last step is
atomic), is flushed to disk, and is checked — ITK's writers do not report short writes on a
full disk, so a size and read-back check is the only way to know the file is whole. Then
it is renamed over the target (overwrite) or hard-linked into place, which fails rather
than replace a file that appeared while we worked. Temporary names start with
`PARTIAL_PREFIX` (a hidden file): folder inputs never take them for scans, and a failed
or interrupted write (Ctrl-C, or SIGTERM as the command line raises it) removes its own.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from napari_mmseg.errors import OutputError

PARTIAL_PREFIX = ".mmseg-partial-"


def _nearest_existing(folder: Path) -> Path:
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def refuse_over_inputs(out: Path, inputs: Iterable[str | os.PathLike], inputs_are: str) -> None:
    """An output that is one of the command's own inputs is refused, even with --overwrite:
    `inputs_are` says which in the message ("the scan", "one of the files averaged")."""
    if out.exists() and any(Path(p).exists() and out.samefile(p) for p in inputs):
        raise OutputError(f"Refusing to write {out} over {inputs_are}: never written over, even with --overwrite; "
                          "choose another name.")


def check_output(path: str | os.PathLike, overwrite: bool, make_parents: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written: an existing file without
    `overwrite`, a folder, a device, a symlink loop, a missing or read-only folder."""
    out = Path(path)
    try:
        st = os.stat(out)
    except (FileNotFoundError, NotADirectoryError):  # the folder checks below say which
        st = None
        if os.path.lexists(out) and not overwrite:
            raise OutputError(f"{out} exists (a broken symbolic link); pass --overwrite to replace it.") from None
    except OSError as e:
        raise OutputError(f"Cannot write {out}: {e.strerror}.") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{out} is a folder: give a file name.")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{out} is not a regular file (a device, pipe or socket): give a file name.")
        if not overwrite:
            raise OutputError(f"{out} exists; pass --overwrite to replace it, or choose another output.")
    folder = _nearest_existing(out.parent) if make_parents else out.parent
    if not folder.exists():
        raise OutputError(f"Cannot write {out}: the folder {folder} does not exist.")
    if not folder.is_dir():
        raise OutputError(f"Cannot write {out}: {folder} is a file, not a folder.")
    try:  # a real probe: permissions, read-only mounts, ACLs, quotas on inodes
        fd, probe = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"Cannot write {out}: {folder} is not writable ({e.strerror}).") from None
    return out


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_in_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, out)
        return
    appeared = OutputError(f"{out} appeared while this ran; it was left alone (pass --overwrite to replace it).")
    try:
        os.link(tmp, out)  # fails if `out` exists: never replaces what another process wrote
    except FileExistsError:
        raise appeared from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # no hard links on this file system: claim the name exclusively, then replace it
        try:
            os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise appeared from None
        os.replace(tmp, out)


def write_atomic(
    path: str | os.PathLike,
    write: Callable[[Path], None],
    overwrite: bool,
    verify: Callable[[Path], None] | None = None,
    make_parents: bool = False,
) -> Path:
    """`write(tmp)` to a temporary file beside `path`, flush it to disk, `verify(tmp)` (raise
    `OutputError` when it is not what was meant), then put it in place. Any OS error becomes
    one `OutputError` sentence; on any failure or signal, nothing is left behind."""
    out = Path(path)
    check_output(out, overwrite, make_parents)
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        name = out.name
        suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else out.suffix  # writers pick the format by it
        fd, tmp_name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=suffix, dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        _fsync(tmp)
        if tmp.stat().st_size == 0:
            raise OutputError(f"Cannot write {out}: nothing was written (is the disk full?).")
        if verify is not None:
            verify(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; a saved file is the user's usual kind
        _put_in_place(tmp, out, overwrite)
        with contextlib.suppress(OSError):  # the rename itself survives a crash
            _fsync(out.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        raise OutputError(f"Cannot write {out}: {e.strerror or e}.") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return out


def write_bytes_atomic(path: str | os.PathLike, data: bytes, overwrite: bool, make_parents: bool = False) -> Path:
    """`data` as the whole file, checked by reading it back."""

    def verify(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise OutputError(f"Cannot write {path}: the file reads back different from what was written.")

    return write_atomic(path, lambda tmp: tmp.write_bytes(data), overwrite, verify, make_parents)


def write_text_atomic(path: str | os.PathLike, text: str, overwrite: bool, make_parents: bool = False) -> Path:
    """UTF-8; a file name that is not valid UTF-8 (in a report's rows) keeps its own bytes."""
    return write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"), overwrite, make_parents)


def write_csv_atomic(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence], overwrite: bool) -> Path:
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(header)
    w.writerows(rows)
    return write_text_atomic(path, table.getvalue(), overwrite)
