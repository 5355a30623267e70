"""A napari-mmseg weights file, whatever network it holds: safetensors tensors with the
JSON metadata under one key, written whole or not at all, and read back with every check a
forged or damaged file needs (no unpickling; names, shapes, dtypes and finite numbers
against the network the metadata describes). The segmentation networks (`weights.py`) and
the correction network (`correction/model.py`) both store their files through here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from napari_mmseg.errors import OutputError, WeightsError
from napari_mmseg.io.safe_write import write_atomic

METADATA_KEY = "napari_mmseg"


def write_weights_file(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata_json: str, half: bool,
                       overwrite: bool) -> Path:
    """Write tensors and metadata whole or not at all (replacing an older file of that name
    only with `overwrite`); `half` stores float tensors as float16."""
    tensors = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        tensors[name] = t.half() if half and t.is_floating_point() else t
    metadata = {METADATA_KEY: metadata_json}

    def verify(tmp: Path) -> None:
        try:
            with safe_open(str(tmp), framework="pt") as f:
                whole = f.metadata() == metadata and set(f.keys()) == set(tensors)
        except (SafetensorError, OSError, ValueError):
            whole = False
        if not whole:
            raise OutputError(f"Cannot write {path}: the written file reads back incomplete (is the disk full?).")

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:  # the Rust writer's I/O errors, e.g. a full disk
            raise OutputError(f"Cannot write {path}: {str(e).rpartition(': ')[2] or e}.") from None

    return write_atomic(path, write, overwrite=overwrite, verify=verify, make_parents=True)


def read_metadata_json(path: Path) -> tuple[str, object]:
    """The file's napari-mmseg metadata, as stored and parsed, or a WeightsError saying why
    the file is not one of ours."""
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a napari-mmseg weights file (not readable as safetensors: {e}).") from None
    if raw is None:
        raise WeightsError(f"{path} is a safetensors file without napari-mmseg metadata; it is not ours.")
    try:
        return raw, json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise WeightsError(f"{path} has unreadable napari-mmseg metadata ({str(e)[:100] or 'nested too deeply'}).") \
            from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is corrupt or truncated ({e}).") from None


def checked_state(path: Path, stored: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                  network: str) -> dict[str, torch.Tensor]:
    """`stored` as the state of the network whose (meta-device) state is `expected`, after
    checking that it is that network's, whole, with real numbers where it holds them, and
    finite; `network` names it in the messages ("a msbn network")."""
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    shapes = [k for k in expected if k in stored and stored[k].shape != expected[k].shape]
    if missing or extra or shapes:
        what = "; ".join(
            f"{label} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", extra), ("mis-shaped", shapes))
            if keys
        )
        raise WeightsError(f"{path.name} does not match {network} as its metadata describes: {what}.")
    retyped = [k for k in expected if stored[k].is_floating_point() != expected[k].is_floating_point()
               or stored[k].dtype.is_complex or stored[k].dtype == torch.bool]
    if retyped:
        k = retyped[0]
        raise WeightsError(f"{path.name} stores {k} as {str(stored[k].dtype).removeprefix('torch.')}, where the "
                           f"network holds {str(expected[k].dtype).removeprefix('torch.')}"
                           f"{f' (and {len(retyped) - 1} more like it)' if len(retyped) > 1 else ''}: the file is "
                           "damaged or forged.")
    broken = [k for k in expected if stored[k].is_floating_point() and not torch.isfinite(stored[k]).all()]
    if broken:
        raise WeightsError(f"{path.name} holds NaN or infinite weights ({', '.join(broken[:3])}): it is damaged.")
    return {k: stored[k].to(expected[k].dtype) for k in expected}
