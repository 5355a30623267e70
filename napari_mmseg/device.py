"""The one place that decides which device runs the networks."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import platform
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from napari_mmseg.config import DEVICE_CHOICES
from napari_mmseg.errors import DeviceError


def available_devices() -> list[str]:
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(request: str = "auto", remedy: str = "use --device auto or cpu") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; asking for one that is absent is an error
    that ends with `remedy`, in the words of the front end (command line or GUI)."""
    request = (request or "auto").lower()
    if request not in DEVICE_CHOICES and not request.startswith("cuda:"):
        raise DeviceError(f"Unknown device {request!r}: use one of {', '.join(DEVICE_CHOICES)}.")
    available = available_devices()
    if request == "auto":
        return torch.device(available[0])
    kind = request.split(":")[0]
    if kind not in available:
        why = {
            "cuda": "this PyTorch build or machine has no CUDA GPU"
            + (" (CPU-only PyTorch)" if torch.version.cuda is None else ""),
            "mps": "this machine has no Apple MPS device",
        }.get(kind, "it is not available")
        raise DeviceError(f"Device {request} was asked for, but {why}: {remedy}.")
    if kind == "cuda" and ":" in request and int(request.split(":")[1]) >= torch.cuda.device_count():
        raise DeviceError(f"{request} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return torch.device(request)


# 3-D convolutions run several times faster on oneDNN (CPU) with channels-last tensors:
# measured 3.7× for a light V4 forward pass on 2 × 64³ windows (1.02 s → 0.28 s) and about
# 1.2× for a training step, on this project's 2-core CPU. Outputs agree to 4e-5.
MEMORY_FORMAT = torch.channels_last_3d


def place(tensor_or_module, device: torch.device):
    """Move a network or a 5-D batch to `device` in the memory format convolutions like best."""
    return tensor_or_module.to(device=device, memory_format=MEMORY_FORMAT)


# glibc's malloc hands every block over 32 MB to mmap and unmaps it on free, so each large
# 3-D feature map is page-faulted in afresh for every window batch; keeping such blocks in
# the heap made a light V4 window 1.45x faster (50 → 34 ms) on this project's CPU.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BLOCKS_UP_TO = 1 << 30


def _numpy_without_hugepage_advice() -> None:
    """numpy asks the kernel for transparent huge pages on every large array; where the kernel
    answers such requests by compacting memory on the spot (THP defrag "madvise", a common
    default), first touching a fresh 40 MB array took 0.1-0.2 s instead of 0.01 s. Labels
    back to a 512×512×300 scan: 1.0 → 0.65 s. Same as NUMPY_MADVISE_HUGEPAGE=0 at import."""
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    switch = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if switch is not None:
        switch(False)


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_cpu() -> None:
    """Let torch use every core this process may run on (containers often limit them), or
    OMP_NUM_THREADS where it is set (worker processes that share the cores: more threads than
    cores made each of two training workers 3–7× slower), let glibc reuse large blocks
    instead of mapping them anew, and keep numpy's large arrays off on-the-spot memory
    compaction."""
    limit = os.environ.get("OMP_NUM_THREADS", "")
    n = usable_cores()
    if limit.isdigit() and int(limit) > 0:
        n = min(n, int(limit))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BLOCKS_UP_TO)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP_BLOCKS_UP_TO)
    _numpy_without_hugepage_advice()


def usable_cores() -> int:
    """The cores this process may run on (containers often limit them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def sampler_workers(device: torch.device) -> int:
    """Processes that draw training batches beside the one that trains (`patch_stream`): on a
    GPU every core but the trainer's, since drawing a batch takes a core far longer than the
    GPU's step. On the CPU none: there the network's step takes ten times a batch's drawing,
    and on this project's 2-core machine a worker beside a 2-thread trainer made it 7-9 %
    slower (`benchmarks/bench_training_stream.py`). None in a pool's worker process either,
    which may not start processes of its own and shares the cores already."""
    if device.type == "cpu" or multiprocessing.current_process().daemon:
        return 0
    return max(usable_cores() - 1, 0)


def one_thread_per_worker() -> None:
    """For worker processes that share the cores: one torch thread each, kept by `tune_cpu`."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def release_memory() -> None:
    """Give the heap's free blocks back to the system, e.g. when a viewer that stays open has
    finished a segmentation. Not after every scan of a batch: the next one would page-fault
    them in again (0.15 s more on a small CT)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _cpu_has_bf16() -> bool:
    # private probes; older torch builds lack them: then no bfloat16 autocast
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in
               ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def mixed_precision(device: torch.device, training: bool) -> AbstractContextManager:
    """Autocast where it pays: CUDA (float16 for inference, bfloat16 for training, which
    needs no loss scaling) and CPUs with bfloat16 units for training. On this project's CPU
    (AMX) a light training step drops from 0.30 s to 0.20 s; CPU inference gains nothing,
    so it stays float32."""
    if device.type == "cuda":
        if not training:
            return torch.autocast("cuda", dtype=torch.float16)
        if torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    elif device.type == "cpu" and training and _cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()
