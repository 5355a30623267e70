#!/usr/bin/env python
"""Training data benchmark: how long drawing a training batch takes next to the training step
it feeds, on the light preset's batch from 2 BTCV CT cases.

    python benchmarks/bench_training_data.py --weights FILE [--device cpu|cuda] [--quick] [--result out.json]

It prints the median time of sampling, of a step on a fixed batch and of a step that samples
its batch first; the ratio of the last two is 1.00 when sampling costs nothing next to the
network. `bench_segment.py` runs it in a fresh process after its table (unless --no-training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import DATA, add_weights_arguments, peak_rss_mb, resolve_weights, set_threads, sync, timed_repeats
from segment_workloads import Skip, nnunet_cases

from napari_mmseg.config import PRESETS
from napari_mmseg.device import place, resolve_device
from napari_mmseg.models.weights import load_weights


def run_training(args: argparse.Namespace) -> dict:
    """PatchSampler.sample vs a forward+backward step of the same network on the light
    preset's batch, on 2 prepared CT cases."""
    from monai.losses import DiceCELoss, DiceLoss

    from napari_mmseg.training.trainer import train_step
    from napari_mmseg.training.training_data import PatchSampler, fit_normalization, prepare_case

    cfg = PRESETS["light"].training
    device = resolve_device(args.device)
    loaded = load_weights(resolve_weights(args))
    if "CT" not in loaded.meta.modalities:
        raise Skip("the weights do not serve CT")
    cases = nnunet_cases(args.data / "abdomen-ct-btcv", "CT")[:2]
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


def training_line(result: dict) -> str:
    """The measurement in one line, or why there is none."""
    if "ratio" not in result:
        return f"training data: skipped ({result.get('skipped') or result.get('failed')})"
    return (f"training data: sample {1e3 * result['sample_s']:.0f} ms, forward+backward "
            f"{1e3 * result['forward_backward_s']:.0f} ms, step with sampling "
            f"{1e3 * result['step_with_sampling_s']:.0f} ms → ratio {result['ratio']:.2f} "
            f"(batch {'×'.join(map(str, result['batch']))}, {', '.join(result['cases'])}, "
            f"median of {result['runs']}; sampler set-up {result['sampler_init_s']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_weights_arguments(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--threads", type=int, help="use only the first N cores (default: every core this process may use)")
    p.add_argument("--result", type=Path, help="also write the numbers as JSON to this file")
    args = p.parse_args(argv)
    set_threads(args.threads)
    try:
        result = run_training(args)
    except Skip as e:
        result = {"skipped": str(e)}
    print(training_line(result))
    if args.result:
        args.result.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
