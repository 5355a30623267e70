#!/usr/bin/env python
"""Inference benchmark: where the time and memory of segmenting a scan go, how our sliding
window compares with plain MONAI and with the paper's non-overlapping tiles, and how close the
network part comes to the conv3d throughput this machine reaches.

    python benchmarks/bench_segment.py --weights FILE [--device cpu|cuda] [--quick] [--out results.json]

Every (workload, method) pair runs in a fresh child process (this script re-invoked with the
hidden `--one` flag), so that the peak memory of one does not mix with another's. See
benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from torch.utils.flop_counter import FlopCounterMode

from napari_mmseg.config import PRESETS
from napari_mmseg.device import mixed_precision, place, resolve_device, tune_cpu
from napari_mmseg.errors import DeviceError, WeightsError
from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.datasets import LabelledCase, label_map_from_names, load_nnunet_dataset
from napari_mmseg.io.scan_io import read_scan, write_labels
from napari_mmseg.metrics import dice_scores, mean_dice
from napari_mmseg.models.dual_stream import MultiModalFCN
from napari_mmseg.models.weights import LoadedModel, ModelMetadata, build_model, bundled_weights, load_weights
from napari_mmseg.organs import ORGANS
from napari_mmseg.preprocessing import probabilities_to_native, to_canonical

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORKLOADS = ("ts-ct", "ts-mr", "btcv", "chaos", "synthetic", "full-size")
METHODS = ("ours", "monai", "tiles")
STAGES = ("read", "resample", "normalise", "network", "stitching", "resample_back", "write")
# TotalSegmentator's ids for our four organs (its other ids are other structures).
TS_LABELS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5}
SYNTHETIC_SIZE = (512, 512, 300)  # x, y, z voxels
SYNTHETIC_SPACING = (0.8, 0.8, 1.5)  # mm
# Scans this script writes: a phantom, and the largest BTCV CT resampled to clinical size.
GENERATED = {"synthetic": "synthetic_ct.nii.gz", "full-size": "full_size_ct.nii.gz"}
FULL_SIZE_LABELS = "full_size_labels.nii.gz"
FULL_SIZE_SOURCE = "full_size_source.txt"  # which case it was made from, for the table

SegmentFn = Callable[[sitk.Image, LoadedModel, str, torch.device, InferenceOptions], tuple[sitk.Image, dict]]


class Skip(Exception):
    """A workload that cannot run here; the message says why."""


@dataclass(frozen=True)
class Workload:
    name: str
    modality: str
    scan: Path
    reference: LabelledCase | None  # labels in our ids for Dice; None: no reference


# ---------------------------------------------------------------------------- machine


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


def conv3d_peak(device: torch.device, options: InferenceOptions, repeats: int) -> dict:
    """FLOP/s of a plain 32→32, 3³ Conv3d on 2×32×64³ in the network's precision and memory
    format (channels-last, the faster one here): warm-up, best of `repeats`."""
    conv = place(torch.nn.Conv3d(32, 32, 3, padding=1, bias=False), device).eval()
    x = place(torch.randn(2, 32, 64, 64, 64), device)
    flops = 2 * x[:, :1].numel() * 32 * 32 * 27  # 2 × output elements × in_channels × kernel volume
    calls = 10 if device.type == "cuda" else 1  # a GPU needs several calls per timing to be measurable
    best = math.inf
    with torch.inference_mode(), autocast_for(device, options):
        conv(x)
        sync(device)
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(calls):
                conv(x)
            sync(device)
            best = min(best, (time.perf_counter() - t) / calls)
    precision = "fp16" if device.type == "cuda" and options.mixed_precision else "fp32"
    return {"flop_per_s": flops / best, "seconds": best, "flop": flops, "precision": precision}


def flops_per_window(meta: ModelMetadata, modality: str) -> int:
    """Convolution FLOPs of one patch³ window (counted on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = build_model(meta).eval()
        x = torch.zeros(1, 1, *(meta.patch_size,) * 3)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, modality)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------- workloads


def _ts_workload(data: Path, name: str, image: str, labels: str, modality: str) -> Workload:
    folder = data / "totalsegmentator-examples"
    scan, seg = folder / image, folder / labels
    for p in (scan, seg):
        if not p.is_file():
            raise Skip(f"{p} not found")
    case = LabelledCase(name, modality, scan, seg, label_map_from_names(TS_LABELS))
    return Workload(name, modality, scan, case)


def _voxels(path: Path) -> int:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return math.prod(reader.GetSize())


def _nnunet_cases(folder: Path, modality: str) -> list[LabelledCase]:
    if not (folder / "dataset.json").is_file():
        raise Skip(f"{folder}/dataset.json not found")
    return load_nnunet_dataset(folder, modality)


def _largest_btcv(data: Path) -> LabelledCase:
    return max(_nnunet_cases(data / "abdomen-ct-btcv", "CT"), key=lambda c: _voxels(c.image))


def resolve_workload(name: str, data: Path, scratch: Path | None) -> Workload:
    """The scan and reference a workload name stands for; raises Skip when they are absent.
    `scratch` holds the scans this script generates (`make_generated`)."""
    if name == "ts-ct":
        return _ts_workload(data, name, "example_ct_sm.nii.gz", "example_seg.nii.gz", "CT")
    if name == "ts-mr":
        return _ts_workload(data, name, "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "MR")
    if name == "btcv":
        case = _largest_btcv(data)
        return Workload(f"btcv ({case.name})", "CT", case.image, case)
    if name == "chaos":
        cases = _nnunet_cases(data / "abdomen-mr-chaos-t2", "MR")
        case = next((c for c in cases if c.name == "chaos_02"), cases[0])
        return Workload(f"chaos ({case.name})", "MR", case.image, case)
    if name in GENERATED:
        scan = scratch / GENERATED[name] if scratch is not None else None
        if scan is None or not scan.is_file():
            raise Skip(f"{name} scan not written")
        if name == "synthetic":
            return Workload("synthetic", "CT", scan, None)
        source = (scratch / FULL_SIZE_SOURCE).read_text().strip()
        labels = scratch / FULL_SIZE_LABELS
        return Workload(f"full-size ({source})", "CT", scan,
                        LabelledCase(name, "CT", scan, labels, {o.label: o.label for o in ORGANS}))
    raise ValueError(f"unknown workload {name!r}")


def make_synthetic(path: Path, size: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    """A CT-like scan (HU, int16): air, a body ellipse with a fat rim, a liver-like blob, a
    spine, noise. Stored flipped in x and y as NIfTI from scanners usually is, so that the
    canonical resample has to reorient it."""
    nx, ny, nz = size
    rng = np.random.default_rng(0)
    y, x = np.ogrid[:ny, :nx]
    volume = np.empty((nz, ny, nx), np.int16)
    for z in range(nz):
        grow = 1.0 + 0.08 * math.sin(math.pi * z / max(nz - 1, 1))
        r2 = ((y - ny / 2) / (0.36 * ny * grow)) ** 2 + ((x - nx / 2) / (0.45 * nx * grow)) ** 2
        body = r2 <= 1.0
        piece = np.full((ny, nx), -1000.0, np.float32)
        piece[body] = 40.0
        piece[body & (r2 >= 0.8)] = -100.0
        if z > nz // 3:
            liver = ((y - 0.45 * ny) / (0.15 * ny)) ** 2 + ((x - 0.62 * nx) / (0.17 * nx)) ** 2 <= 1.0
            piece[liver & body] = 60.0
        spine = ((y - 0.7 * ny) / (0.05 * ny)) ** 2 + ((x - nx / 2) / (0.05 * nx)) ** 2 <= 1.0
        piece[spine] = 500.0
        piece += rng.standard_normal((ny, nx), dtype=np.float32) * 12.0
        volume[z] = np.clip(piece, -1024, 3071).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((nx * spacing[0] / 2, ny * spacing[1] / 2, -nz * spacing[2] / 2))
    sitk.WriteImage(image, str(path), useCompression=True)


def make_full_size(source: LabelledCase, scan_path: Path, labels_path: Path, size: tuple[int, int, int],
                   spacing: tuple[float, float, float]) -> None:
    """A real CT at clinical resolution: `source` resampled (linear; labels nearest) onto
    size voxels at spacing, centred on its organs, stored flipped in x and y like the phantom."""
    image, labels = source.load()
    centre = np.mean(np.argwhere(sitk.GetArrayViewFromImage(labels) > 0), axis=0)[::-1]  # x, y, z index
    target = sitk.Image(list(size), sitk.sitkUInt8)
    target.SetSpacing(spacing)
    target.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    target.SetOrigin((0.0, 0.0, 0.0))
    middle = np.asarray(target.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    target.SetOrigin(tuple(np.asarray(image.TransformContinuousIndexToPhysicalPoint(centre.tolist())) - middle))
    scan = sitk.Resample(image, target, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    sitk.WriteImage(scan, str(scan_path), useCompression=True)
    organs = sitk.Resample(labels, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    sitk.WriteImage(organs, str(labels_path), useCompression=True)


def make_generated(names: list[str], data: Path, scratch: Path, size: tuple[int, int, int]) -> list[str]:
    """Write the generated scans the selected workloads need; notes on what could not be."""
    notes = []
    for name in names:
        t = time.perf_counter()
        if name == "synthetic":
            make_synthetic(scratch / GENERATED[name], size, SYNTHETIC_SPACING)
        elif name == "full-size":
            try:
                source = _largest_btcv(data)
            except Skip as e:
                notes.append(f"skipped full-size: {e}")
                continue
            make_full_size(source, scratch / GENERATED[name], scratch / FULL_SIZE_LABELS, size, SYNTHETIC_SPACING)
            (scratch / FULL_SIZE_SOURCE).write_text(source.name)
        else:
            continue
        print(f"(wrote the {name} scan {'×'.join(map(str, size))} in {time.perf_counter() - t:.0f} s)",
              file=sys.stderr)
    # Flushed and read once, so that the first child does not pay for the write-back and the
    # page cache (it read the full-size scan 2.5x slower than the next children otherwise).
    os.sync()
    for path in scratch.iterdir():
        path.read_bytes()
    return notes


# ---------------------------------------------------------------------------- the three methods


class TimedNetwork:
    """The model as a sliding-window predictor: timed (synchronised on CUDA), in the same
    precision as ours, with or without the softmax ours applies before blending."""

    def __init__(
        self, model: MultiModalFCN, modality: str, device: torch.device, options: InferenceOptions, softmax: bool
    ) -> None:
        self.model, self.modality, self.device, self.softmax = model, modality, device, softmax
        self.autocast = autocast_for(device, options)
        self.seconds = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        with self.autocast:
            out = self.model(place(x, self.device), self.modality).float()
            if self.softmax:
                out = torch.softmax(out, dim=1)
        sync(self.device)
        self.seconds += time.perf_counter() - t
        return out


def canonical_volume(
    image: sitk.Image, loaded: LoadedModel, modality: str, timings: dict
) -> tuple[sitk.Image, np.ndarray]:
    """Reorient + resample and normalise exactly as `segment_image` does, without the body crop."""
    t = time.perf_counter()
    canonical = to_canonical(image, loaded.meta.spacing_mm)
    raw = sitk.GetArrayFromImage(canonical)
    timings["resample"] = time.perf_counter() - t
    t = time.perf_counter()
    volume = loaded.meta.normalization[modality].apply(raw)
    timings["normalise"] = time.perf_counter() - t
    return canonical, volume


def back_to_native(probs: np.ndarray, canonical: sitk.Image, image: sitk.Image, timings: dict) -> sitk.Image:
    t = time.perf_counter()
    native = probabilities_to_native(probs, canonical, image)
    timings["resample_back"] = time.perf_counter() - t
    return native


def segment_ours(
    image: sitk.Image, loaded: LoadedModel, modality: str, device: torch.device, options: InferenceOptions
) -> tuple[sitk.Image, dict]:
    """(a) `segment_image` itself: body crop, overlapping Gaussian-weighted windows."""
    result = segment_image(image, loaded, modality, options)
    return result.labels, dict(result.timings)


def segment_monai(
    image: sitk.Image, loaded: LoadedModel, modality: str, device: torch.device, options: InferenceOptions
) -> tuple[sitk.Image, dict]:
    """(b) MONAI's sliding_window_inference (Gaussian) on the whole normalised canonical volume."""
    timings: dict[str, float] = {}
    canonical, volume = canonical_volume(image, loaded, modality, timings)
    patch = loaded.meta.patch_size
    net = TimedNetwork(loaded.model, modality, device, options, softmax=True)
    t = time.perf_counter()
    with torch.inference_mode():
        x = torch.from_numpy(volume)[None, None].to(device)
        probs = sliding_window_inference(
            x, (patch,) * 3, options.windows_per_batch, net, overlap=options.overlap,
            mode="gaussian", padding_mode="constant", cval=float(volume.min()),
        )
        probs = probs[0].float().cpu().numpy()
    timings["network"] = net.seconds
    timings["stitching"] = time.perf_counter() - t - net.seconds
    return back_to_native(probs, canonical, image, timings), timings


def tile_probabilities(volume: np.ndarray, patch: int, batch: int, net: TimedNetwork, classes: int) -> np.ndarray:
    """Non-overlapping patch³ tiles over the volume padded to multiples of the patch, each
    tile's softmax put in place as it is: no overlap, no weighting (argmax comes after)."""
    padded_shape = tuple(math.ceil(n / patch) * patch for n in volume.shape)
    pad = [(0, p - n) for p, n in zip(padded_shape, volume.shape, strict=True)]
    padded = np.pad(volume, pad, constant_values=float(volume.min()))
    out = np.empty((classes, *padded_shape), np.float32)
    starts = list(itertools.product(*(range(0, n, patch) for n in padded_shape)))
    with torch.inference_mode():
        for i in range(0, len(starts), batch):
            group = starts[i : i + batch]
            tiles = np.stack([padded[z : z + patch, y : y + patch, x : x + patch] for z, y, x in group])
            probs = net(torch.from_numpy(tiles)[:, None].to(net.device)).cpu().numpy()
            for (z, y, x), tile in zip(group, probs, strict=True):
                out[:, z : z + patch, y : y + patch, x : x + patch] = tile
    return out[(slice(None), *(slice(0, n) for n in volume.shape))]


def segment_tiles(
    image: sitk.Image, loaded: LoadedModel, modality: str, device: torch.device, options: InferenceOptions
) -> tuple[sitk.Image, dict]:
    """(c) The paper's scheme: non-overlapping windows, no weighting, argmax, no body crop."""
    timings: dict[str, float] = {}
    canonical, volume = canonical_volume(image, loaded, modality, timings)
    net = TimedNetwork(loaded.model, modality, device, options, softmax=True)
    t = time.perf_counter()
    classes = loaded.meta.network.num_classes
    probs = tile_probabilities(volume, loaded.meta.patch_size, options.windows_per_batch, net, classes)
    timings["network"] = net.seconds
    timings["stitching"] = time.perf_counter() - t - net.seconds
    return back_to_native(probs, canonical, image, timings), timings


SEGMENTERS: dict[str, SegmentFn] = {"ours": segment_ours, "monai": segment_monai, "tiles": segment_tiles}


# ---------------------------------------------------------------------------- one child run


class WindowCounter:
    """Counts the windows the network actually runs (a forward hook on the whole model)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.count = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.count += int(inputs[0].shape[0])


def warm_up(loaded: LoadedModel, modality: str, device: torch.device, options: InferenceOptions) -> None:
    """One batch through the network first, so that one-time costs (allocator, oneDNN or cuDNN
    set-up) do not land in the first method's network time."""
    p = loaded.meta.patch_size
    net = TimedNetwork(place(loaded.model, device).eval(), modality, device, options, softmax=True)
    with torch.inference_mode():
        net(torch.zeros(options.windows_per_batch, 1, p, p, p, device=device))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def run_segment(args: argparse.Namespace) -> dict:
    """Child: read, segment with one method, write; times, peak memory, windows and Dice."""
    device = resolve_device(args.device)
    workload = resolve_workload(args.one, args.data, args.scratch)
    loaded = load_weights(args.weights)
    options = InferenceOptions(overlap=args.overlap, device=str(device), windows_per_batch=args.windows_per_batch,
                               check_orientation=args.check_orientation, try_inverted_mr=args.read_inverted_mr)
    warm_up(loaded, workload.modality, device, options)
    windows = WindowCounter(loaded.model)
    segment = SEGMENTERS[args.method]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        base_rss_mb = psutil.Process().memory_info().rss / 2**20  # libraries, model, warm-up
        t0 = time.perf_counter()
        image = read_scan(workload.scan)
        read_s = time.perf_counter() - t0
        labels, timings = segment(image, loaded, workload.modality, device, options)
        t = time.perf_counter()
        write_labels(labels, Path(tmp) / "labels.nii.gz", image, source=workload.scan)
        timings["write"] = time.perf_counter() - t
        total = time.perf_counter() - t0
    timings["read"] = read_s
    result = {
        "workload": workload.name,
        "method": args.method,
        "modality": workload.modality,
        "size": list(image.GetSize()),
        "spacing_mm": [round(s, 3) for s in image.GetSpacing()],
        "windows": windows.count,
        "timings": {k: timings.get(k, 0.0) for k in STAGES},
        "total": total,
        "other": total - sum(timings.get(k, 0.0) for k in STAGES),
        "peak_rss_mb": peak_rss_mb(),
        "base_rss_mb": base_rss_mb,
        "warnings": sorted({str(w.message) for w in caught}),
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if workload.reference is not None:
        _, reference = workload.reference.load()
        scores = dice_scores(
            sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(reference), image.GetSpacing()
        )
        result["dice"] = mean_dice(scores)
        result["dice_per_organ"] = {s.organ: s.dice for s in scores}
    return result


def timed_repeats(fn: Callable[[], object], min_runs: int, max_runs: int, budget_s: float) -> list[float]:
    """Wall times of `fn`, at least `min_runs`, then more while within `budget_s` (at most `max_runs`)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def run_training(args: argparse.Namespace) -> dict:
    """Child: PatchSampler.sample vs a forward+backward step of the same network on the light
    preset's batch, on 2 prepared CT cases."""
    from monai.losses import DiceCELoss, DiceLoss

    from napari_mmseg.training.trainer import train_step
    from napari_mmseg.training.training_data import PatchSampler, fit_normalization, prepare_case

    cfg = PRESETS["light"].training
    device = resolve_device(args.device)
    loaded = load_weights(args.weights)
    if "CT" not in loaded.meta.modalities:
        raise Skip("the weights do not serve CT")
    cases = _nnunet_cases(args.data / "abdomen-ct-btcv", "CT")[:2]
    t = time.perf_counter()
    prepared = [prepare_case(c, cfg.spacing_mm, cfg.patch_size) for c in cases]
    prepare_s = time.perf_counter() - t
    norm = fit_normalization("CT", prepared)
    t = time.perf_counter()
    sampler = PatchSampler(
        prepared, norm, cfg.patch_size, cfg, np.random.default_rng(0),
    )
    sampler_init_s = time.perf_counter() - t

    model = place(loaded.model, device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr_for(loaded.meta.variant), eps=cfg.adam_eps)
    loss_fn = (DiceCELoss if cfg.loss == "dice_ce" else DiceLoss)(softmax=True, to_onehot_y=True)

    def step(xs: np.ndarray, ys: np.ndarray) -> None:
        x, y = place(torch.from_numpy(xs), device), torch.from_numpy(ys).to(device)
        train_step(model, optimizer, loss_fn, x, y, "CT", cfg.mixed_precision)  # what `mmseg train` runs
        sync(device)

    fixed = sampler.sample(cfg.batch_size)
    step(*fixed)  # warm-up
    runs = (3, 10, 8.0) if args.quick else (5, 30, 45.0)
    sample_s = timed_repeats(lambda: sampler.sample(cfg.batch_size), *runs)
    pure_s = timed_repeats(lambda: step(*fixed), *runs)
    full_s = timed_repeats(lambda: step(*sampler.sample(cfg.batch_size)), *runs)
    median = float(np.median(pure_s))
    return {
        "cases": [c.name for c in cases],
        "batch": [cfg.batch_size, 1, *(cfg.patch_size,) * 3],
        "prepare_s": prepare_s,
        "sampler_init_s": sampler_init_s,
        "sample_s": float(np.median(sample_s)),
        "forward_backward_s": median,
        "step_with_sampling_s": float(np.median(full_s)),
        "ratio": float(np.median(full_s)) / median,
        "runs": len(full_s),
        "peak_rss_mb": peak_rss_mb(),
    }


def child_main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    try:
        result = run_training(args) if args.one == "training" else run_segment(args)
    except Skip as e:
        result = {"skipped": str(e)}
    args.result.write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------- parent: run and report


def run_child(args: argparse.Namespace, weights: Path, one: str, method: str | None, scratch: Path | None) -> dict:
    """Re-invoke this script for one measurement in a fresh process; its result as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--one", one, "--result", str(result_file),
            "--weights", str(weights), "--device", args.device, "--data", str(args.data),
            "--overlap", str(args.overlap), "--windows-per-batch", str(args.windows_per_batch),
            "--threads", str(torch.get_num_threads()),
        ]
        if method is not None:
            cmd += ["--method", method]
        if scratch is not None:
            cmd += ["--scratch", str(scratch)]
        if args.quick:
            cmd.append("--quick")
        if args.check_orientation:
            cmd.append("--check-orientation")
        if args.read_inverted_mr:
            cmd.append("--read-inverted-mr")
        rc = subprocess.run(cmd).returncode
        if rc != 0 or not result_file.is_file():
            return {"failed": f"child exited with status {rc}"}
        return json.loads(result_file.read_text())


def resolve_weights(args: argparse.Namespace) -> Path:
    if args.weights:
        return Path(args.weights)
    return bundled_weights(args.variant, "CT" if args.variant == "individual" else None)


def fmt_s(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


COLUMNS = (
    ("workload", 18), ("method", 6), ("size", 12), ("win", 5), ("read", 6), ("resamp", 6), ("norm", 6),
    ("net", 7), ("stitch", 6), ("back", 6), ("write", 6), ("other", 6), ("total", 7), ("×ours", 5),
    ("GFLOP", 7), ("%peak", 5), ("RSS MB", 6), ("+MB", 5), ("GPU MB", 6), ("Dice", 5),
)


def table_row(row: dict, ours_total: float | None, flop_window: int, peak: float, cuda: bool) -> list[str]:
    t = row["timings"]
    flop = flop_window * row["windows"]
    net = t["network"]
    cells = [
        row["workload"], row["method"], "×".join(map(str, row["size"])), str(row["windows"]),
        *(fmt_s(t[k]) for k in STAGES[:3]), fmt_s(net), *(fmt_s(t[k]) for k in STAGES[4:]),
        fmt_s(row["other"]), fmt_s(row["total"]),
        f"{row['total'] / ours_total:.2f}" if ours_total else "–",
        f"{flop / 1e9:.1f}", f"{100 * flop / net / peak:.1f}" if net > 0 else "–",
        f"{row['peak_rss_mb']:.0f}", f"{row['peak_rss_mb'] - row['base_rss_mb']:.0f}",
    ]
    if cuda:
        cells.append(f"{row.get('cuda_peak_mb', 0):.0f}")
    dice = row.get("dice")
    cells.append("–" if dice is None or math.isnan(dice) else f"{dice:.3f}")
    return cells


def print_table(rows: list[dict], flop_window: int, peak: float, cuda: bool) -> None:
    columns = [c for c in COLUMNS if cuda or c[0] != "GPU MB"]
    lines = [[name for name, _ in columns]]
    ours_totals = {r["workload"]: r["total"] for r in rows if r["method"] == "ours"}
    for row in rows:
        lines.append(table_row(row, ours_totals.get(row["workload"]), flop_window, peak, cuda))
    widths = [max(w, *(len(line[i]) for line in lines)) for i, (_, w) in enumerate(columns)]
    for n, line in enumerate(lines):
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_machine(machine: dict, weights: Path, meta: ModelMetadata, args: argparse.Namespace) -> None:
    gpu = f" ({machine['gpu']})" if "gpu" in machine else ""
    print(f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
          f"load average {machine['load_average_1min']}; torch {machine['torch']} with {machine['torch_threads']} "
          f"threads, MONAI {machine['monai']}; device {machine['device']}{gpu}")
    print(f"weights: {weights} ({meta.variant}, filters {list(meta.network.filters)}, patch {meta.patch_size}³ "
          f"at {meta.spacing_mm:g} mm); overlap {args.overlap}, {args.windows_per_batch} windows per batch")
    if machine["load_average_1min"] > 0.5 * machine["usable_cores"]:
        print(f"WARNING: the machine is busy (load average {machine['load_average_1min']} on "
              f"{machine['usable_cores']} cores): these numbers do not show what it can do.")
    sys.stdout.flush()


def print_footer(peak: dict, flop_window: int, training: dict | None, notes: list[str]) -> None:
    print(f"\nconv3d peak: {peak['flop_per_s'] / 1e9:.1f} GFLOP/s ({peak['precision']}, 32→32 channels, 3³ kernel, "
          f"2×32×64³ input, best of {peak['repeats']}); network: {flop_window / 1e9:.3f} GFLOP per window")
    if training is not None and "ratio" in training:
        print(f"training data: sample {1e3 * training['sample_s']:.0f} ms, forward+backward "
              f"{1e3 * training['forward_backward_s']:.0f} ms, step with sampling "
              f"{1e3 * training['step_with_sampling_s']:.0f} ms → ratio {training['ratio']:.2f} "
              f"(batch {'×'.join(map(str, training['batch']))}, {', '.join(training['cases'])}, "
              f"median of {training['runs']}; sampler set-up {training['sampler_init_s']:.1f} s)")
    elif training is not None:
        print(f"training data: skipped ({training.get('skipped') or training.get('failed')})")
    for note in notes:
        print(note)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = InferenceOptions()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--weights", help="a weights file (.safetensors)")
    source.add_argument("--variant", default="v4", help="bundled weights of this variant (default v4)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="only the TotalSegmentator CT, fewer repeats")
    p.add_argument("--out", help="also write the results as JSON to this file")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    p.add_argument("--no-training", action="store_true", help="skip the training-data measurement")
    p.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    p.add_argument("--overlap", type=float, default=defaults.overlap)
    p.add_argument("--windows-per-batch", type=int, default=defaults.windows_per_batch)
    p.add_argument("--check-orientation", action="store_true",
                   help="run our method as `mmseg segment` does by default, with the second pass on the mirror "
                   "image (off here so that every method does the same work)")
    p.add_argument("--read-inverted-mr", action="store_true",
                   help="read MR as `mmseg segment` does by default, as given and with its grey levels inverted "
                   "(off here so that every method does the same work)")
    p.add_argument("--threads", type=int, help="use only the first N cores (default: every core this process may use)")
    p.add_argument("--synthetic-size", default=",".join(map(str, SYNTHETIC_SIZE)),
                   help="x,y,z voxels of the synthetic and full-size scans (default: full clinical size)")
    # The child's interface: one workload (or "training") with one method, result to a file.
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def selected_workloads(args: argparse.Namespace) -> list[str]:
    if args.quick:
        return ["ts-ct"]
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}: choose from {', '.join(WORKLOADS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    set_threads(args.threads)
    try:
        device = resolve_device(args.device)
        weights = resolve_weights(args)
        meta = load_weights(weights).meta
    except (DeviceError, WeightsError) as e:
        print(f"bench_segment: {e}", file=sys.stderr)
        return 2
    machine = machine_info(device)
    print_machine(machine, weights, meta, args)
    options = InferenceOptions(overlap=args.overlap, windows_per_batch=args.windows_per_batch,
                               check_orientation=args.check_orientation, try_inverted_mr=args.read_inverted_mr)
    repeats = 3 if args.quick else 5
    peak = {**conv3d_peak(device, options, repeats), "repeats": repeats}
    flop_window = flops_per_window(meta, meta.modalities[0])

    rows: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-segment-") as tmp:
        scratch = Path(tmp)
        names = selected_workloads(args)
        notes += make_generated(names, args.data, scratch, tuple(int(v) for v in args.synthetic_size.split(",")))
        for name in names:
            try:
                workload = resolve_workload(name, args.data, scratch)
            except Skip as e:
                notes.append(f"skipped {name}: {e}")
                print(f"skipped {name}: {e}", file=sys.stderr)
                continue
            if workload.modality not in meta.modalities:
                notes.append(f"skipped {name}: the weights serve {'/'.join(meta.modalities)}, not {workload.modality}")
                continue
            for method in METHODS:
                print(f"... {workload.name}: {method}", file=sys.stderr, flush=True)
                row = run_child(args, weights, name, method, scratch)
                if "timings" not in row:
                    notes.append(f"{workload.name} {method}: {row.get('skipped') or row.get('failed')}")
                    continue
                rows.append(row)
                notes += [f"{workload.name} {method}: warning: {w}" for w in row["warnings"]]
        training = None
        if not args.no_training:
            print("... training data", file=sys.stderr, flush=True)
            training = run_child(args, weights, "training", None, None)

    print()
    print_table(rows, flop_window, peak["flop_per_s"], device.type == "cuda")
    print_footer(peak, flop_window, training, notes)
    if args.out:
        out = {
            "machine": machine, "weights": str(weights), "variant": meta.variant,
            "patch_size": meta.patch_size, "spacing_mm": meta.spacing_mm, "overlap": args.overlap,
            "windows_per_batch": args.windows_per_batch, "conv3d_peak": peak, "flop_per_window": flop_window,
            "rows": rows, "training": training, "notes": notes,
        }
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
