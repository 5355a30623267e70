"""How close a network comes to this machine's convolution speed (a module, not a script):
the FLOP/s a plain 3-D convolution reaches here, and the FLOPs of one window of a network."""

from __future__ import annotations

import math
import time

import torch
from bench_common import autocast_for, sync
from torch.utils.flop_counter import FlopCounterMode

from napari_mmseg.device import place
from napari_mmseg.inference.segment import InferenceOptions
from napari_mmseg.models.weights import ModelMetadata, build_model


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
