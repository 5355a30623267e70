"""What the inference and training benchmarks share (a module, not a script): the machine they
run on, the threads they use, device synchronisation and precision, peak memory, repeated
timings, and which weights file to measure."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from napari_mmseg.device import mixed_precision, tune_cpu
from napari_mmseg.inference.segment import InferenceOptions
from napari_mmseg.models.weights import bundled_weights

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def set_threads(n: int | None) -> int:
    """Torch threads: every core this process may run on. `n` pins the process to its first n
    cores instead, so that `segment_image` (which takes every core it may use) follows too."""
    if n:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    tune_cpu()  # what segment_image does: every core, large blocks kept (for the peak too)
    return torch.get_num_threads()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    import monai

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(device),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device: torch.device, options: InferenceOptions) -> AbstractContextManager:
    """The same autocast `predict_probabilities` uses."""
    return mixed_precision(device, training=False) if options.mixed_precision else nullcontext()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def timed_repeats(fn: Callable[[], object], min_runs: int, max_runs: int, budget_s: float) -> list[float]:
    """Wall times of `fn`, at least `min_runs`, then more while within `budget_s` (at most `max_runs`)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="a weights file (.safetensors)")
    source.add_argument("--variant", default="v4", help="bundled weights of this variant (default v4)")


def resolve_weights(args: argparse.Namespace) -> Path:
    if args.weights:
        return Path(args.weights)
    return bundled_weights(args.variant, "CT" if args.variant == "individual" else None)
