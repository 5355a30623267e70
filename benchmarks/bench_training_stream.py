#!/usr/bin/env python
"""Training speed with the batches drawn in the trainer or in worker processes
(`napari_mmseg.training.patch_stream`): steps per second of the real loop (draw a batch, one
forward and backward pass of the light msbn network, Adam), alternating MR and CT batches
of the shipped recipe, for each number of workers asked for.

    python benchmarks/bench_training_stream.py --bundle .study/bundle.npz --workers 0 1 --steps 12
    # on a GPU machine: every core but one drawing
    python benchmarks/bench_training_stream.py --bundle .study/bundle.npz --workers 0 15 --steps 300

The bundle comes from `benchmarks/study_on_gpu.py --write-bundle`. Speeds are given as ratios
to the first row, measured in one run: machines and days differ too much for absolute ones.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from napari_mmseg.config import PRESETS
from napari_mmseg.device import place, resolve_device, tune_cpu, usable_cores
from napari_mmseg.models.dual_stream import MultiModalFCN
from napari_mmseg.training.patch_stream import resampling_device, training_batches
from napari_mmseg.training.trainer import train_step
from napari_mmseg.training.training_data import PatchSampler, fit_normalization, load_bundle

MODALITIES = ("CT", "MR")


def steps_per_second(cases: list, workers: int, steps: int, device: torch.device, augment: str | None,
                     batch: int) -> float:
    preset = PRESETS["light"].with_augmentation(augment)
    cfg = replace(preset.training, batch_size=batch)
    rng = np.random.default_rng(0)
    on = resampling_device(device, workers)
    samplers = {}
    for m in MODALITIES:
        mine = [c for c in cases if c.modality == m]
        samplers[m] = PatchSampler(mine, fit_normalization(m, mine), cfg.patch_size, cfg, rng, on)
    model = place(MultiModalFCN("msbn", preset.network, MODALITIES), device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr_for("msbn"), eps=cfg.adam_eps)
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
    warm = 2 + 2 * workers  # the workers' start and their first batches are not the steady rate
    t0 = None
    for step, modality, xs, ys in training_batches(samplers, MODALITIES, cfg.batch_size, 0, 0, 0, warm + steps,
                                                   workers, pin_memory=device.type == "cuda"):
        if step == warm:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        train_step(model, optimizer, loss_fn, place(xs, device), ys.to(device), modality, cfg.mixed_precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True, help="prepared cases (study_on_gpu.py --write-bundle)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="numbers of batch workers to compare")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per row (after a warm-up)")
    ap.add_argument("--batch-size", type=int, default=4, help="patches per step (the fine-tunes' 4)")
    ap.add_argument("--threads", type=int, help="torch threads of the trainer (default: every core)")
    ap.add_argument("--augment", default="p_enlarge=0.5,p_slab=0.3", help="the recipe's augmentation changes "
                    "(default: the shipped msbn's last rounds)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [c for c in load_bundle(args.bundle) if c.modality in MODALITIES and not c.name.startswith("ts-")]
    print(f"device {device}, {usable_cores()} cores, trainer with {torch.get_num_threads()} torch threads, "
          f"{len(cases)} cases, {args.steps} timed steps per row, batch {args.batch_size}")
    print("| batch workers | steps/s | s/step | ratio to first row |\n|---|---|---|---|")
    first = None
    for workers in args.workers:
        rate = steps_per_second(cases, workers, args.steps, device, args.augment, args.batch_size)
        first = first or rate
        print(f"| {workers} | {rate:.2f} | {1 / rate:.3f} | {rate / first:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
