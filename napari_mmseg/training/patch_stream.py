"""The training batches, one per step, made in worker processes when cores are to spare.

On a GPU the network step takes milliseconds and drawing a batch of augmented patches a
quarter of a second of one CPU core, so one run trains only as fast as one core samples.
Workers draw the batches of later steps meanwhile. Each step's batch is drawn with its own
generator, seeded by (seed, rank, step): the batches are the same whatever the number of
workers, and a resumed run draws what the uninterrupted run would have drawn."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from napari_mmseg.training.training_data import PatchSampler

# batches each worker keeps ready: enough to ride out a slow patch (an enlarged organ's warp)
PREFETCH = 4


def modality_for_step(step: int, modalities: tuple[str, ...]) -> str:
    """Alternating batches: MR on even steps, CT on odd ones (or the one modality)."""
    if len(modalities) == 1:
        return modalities[0]
    return ("MR", "CT")[step % 2]


def batch_for_step(
    samplers: dict[str, PatchSampler], modalities: tuple[str, ...], batch: int, seed: int, rank: int, step: int,
) -> tuple[str, np.ndarray, np.ndarray]:
    """The modality and the (images, labels) batch of one training step."""
    modality = modality_for_step(step, modalities)
    xs, ys = samplers[modality].sample(batch, np.random.default_rng((seed, rank, step)))
    return modality, xs, ys


class _Steps(IterableDataset):
    """Steps first…last-1; with workers, worker k of n draws steps first+k, first+k+n, …, which
    the loader hands back in step order (it takes from its workers in turn)."""

    def __init__(self, samplers: dict[str, PatchSampler], modalities: tuple[str, ...], batch: int, seed: int,
                 rank: int, first: int, last: int) -> None:
        self.args = samplers, modalities, batch, seed, rank
        self.first, self.last = first, last

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
        info = get_worker_info()
        k, n = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.first + k, self.last, n):
            yield step, *batch_for_step(*self.args, step)


def resampling_device(device: torch.device, workers: int) -> torch.device | None:
    """Where a sampler rotates and scales its patches: on the GPU when it draws in the
    trainer (1 ms there against 25 on a CPU core), on the CPU (None) when workers draw,
    since a forked process cannot use the parent's GPU."""
    return device if device.type == "cuda" and workers == 0 else None


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # the workers share the cores with each other and the network


def training_batches(
    samplers: dict[str, PatchSampler], modalities: tuple[str, ...], batch: int, seed: int, rank: int,
    first: int, last: int, workers: int = 0, pin_memory: bool = False,
) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor]]:
    """(step, modality, images, labels) for steps first…last-1, drawn in this process
    (`workers` 0) or in that many worker processes; the samplers resample where
    `resampling_device` says."""
    steps = _Steps(samplers, modalities, batch, seed, rank, first, last)
    if workers == 0:
        for step, modality, xs, ys in steps:
            yield step, modality, torch.from_numpy(xs), torch.from_numpy(ys)
        return
    loader = DataLoader(steps, batch_size=None, num_workers=workers, prefetch_factor=PREFETCH,
                        worker_init_fn=_one_thread, pin_memory=pin_memory)
    expected = first
    for step, modality, xs, ys in loader:
        if step != expected:  # the loader's order is what makes a run independent of the workers
            raise RuntimeError(f"worker batches out of order: step {step} where {expected} was due")
        yield step, modality, xs, ys
        expected += 1
