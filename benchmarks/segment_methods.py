"""The three ways of segmenting a scan the inference benchmark compares, and one measured run
of one of them (a module, not a script): ours (`segment_image`), MONAI's sliding window on the
whole volume, and the paper's non-overlapping tiles; same network, precision and windows per
batch. See benchmarks/README.md, Methods."""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import SimpleITK as sitk
import torch
from bench_common import autocast_for, peak_rss_mb, sync
from monai.inferers import sliding_window_inference
from segment_workloads import resolve_workload

from napari_mmseg.device import place, resolve_device
from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.scan_io import read_scan, write_labels
from napari_mmseg.metrics import dice_scores, mean_dice
from napari_mmseg.models.dual_stream import MultiModalFCN
from napari_mmseg.models.weights import LoadedModel, load_weights
from napari_mmseg.preprocessing import probabilities_to_native, to_canonical

METHODS = ("ours", "monai", "tiles")
STAGES = ("read", "resample", "normalise", "network", "stitching", "resample_back", "write")

SegmentFn = Callable[[sitk.Image, LoadedModel, str, torch.device, InferenceOptions], tuple[sitk.Image, dict]]


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
