"""Training batches drawn in worker processes: the same batches in the same order as drawn
in the trainer, and a resumed run draws what the uninterrupted one would have."""

import multiprocessing

import numpy as np
import pytest
import torch
from test_training import TINY, data  # noqa: F401 (the fixture)

from napari_mmseg.config import TrainingConfig
from napari_mmseg.device import sampler_workers, usable_cores
from napari_mmseg.models.weights import load_weights
from napari_mmseg.preprocessing import IntensityNorm
from napari_mmseg.training import trainer as training
from napari_mmseg.training.patch_stream import training_batches
from napari_mmseg.training.trainer import TrainingRun, train
from napari_mmseg.training.training_data import PatchSampler, PreparedCase


def _samplers() -> dict[str, PatchSampler]:
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:12, 5:12, 5:12] = 3
    labels[20:35, 20:35, 20:35] = 1
    values = labels.astype(np.float32) * 60 + rng.normal(0, 5, labels.shape).astype(np.float32)
    cfg = TrainingConfig(patch_size=16)  # the shipped recipe: every augmentation on
    norms = {"CT": IntensityNorm("window", window=(-125.0, 275.0), mean=0.0, std=100.0),
             "MR": IntensityNorm("foreground", percentiles=(0.5, 99.5))}
    return {m: PatchSampler([PreparedCase(f"toy-{m}", m, values + (m == "MR") * 100, labels)], norms[m], 16,
                            cfg, rng) for m in ("CT", "MR")}


def _draw(workers: int, first: int = 0, last: int = 7) -> list[tuple]:
    return list(training_batches(_samplers(), ("CT", "MR"), 2, seed=5, rank=0, first=first, last=last,
                                 workers=workers))


def test_workers_draw_the_trainers_batches_in_step_order():
    here, two = _draw(0), _draw(2)
    assert [(s, m) for s, m, _, _ in here] == [(s, ("MR", "CT")[s % 2]) for s in range(7)]
    assert [(s, m) for s, m, _, _ in two] == [(s, m) for s, m, _, _ in here]
    for (_, _, xa, ya), (_, _, xb, yb) in zip(here, two, strict=True):
        assert xa.shape == (2, 1, 16, 16, 16) and ya.dtype == torch.uint8
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(here[0][2], here[2][2]), "each step draws its own patches"


def test_a_resumed_stream_continues_where_the_whole_one_would():
    whole, resumed = _draw(0), _draw(1, first=4)
    assert [s for s, *_ in resumed] == [4, 5, 6]
    for (_, _, xa, ya), (_, _, xb, yb) in zip(whole[4:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_with_batch_workers_gives_the_same_network(data, tmp_path):  # noqa: F811
    _, _, cases = data
    a, b = (train(TrainingRun("joint", TINY, tmp_path / str(w), device="cpu", steps=3, seed=4, progress_bar=False,
                              sampler_workers=w), cases, [], log=lambda s: None) for w in (0, 2))
    sa, sb = load_weights(a).model.state_dict(), load_weights(b).model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_run_stopped_and_resumed_trains_the_network_of_one_run(data, tmp_path, monkeypatch, workers):  # noqa: F811
    _, _, cases = data

    def run(folder: str) -> TrainingRun:
        return TrainingRun("msbn", TINY, tmp_path / folder, device="cpu", steps=4, seed=6, progress_bar=False,
                           sampler_workers=workers)

    whole = train(run("whole"), cases, [], log=lambda s: None)

    def stopped_at_step_2(*args, **kwargs):  # as a killed run: after the checkpoint of step 2
        for item in training_batches(*args, **kwargs):
            if item[0] == 2:
                raise KeyboardInterrupt
            yield item

    with monkeypatch.context() as m:
        m.setattr(training, "training_batches", stopped_at_step_2)
        with pytest.raises(KeyboardInterrupt):
            train(run("parts"), cases, [], log=lambda s: None)
    lines: list[str] = []
    resumed = train(run("parts"), cases, [], log=lines.append)
    assert any("resumed msbn at step 2" in ln for ln in lines)
    sa, sb = load_weights(whole).model.state_dict(), load_weights(resumed).model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _workers_in_a_pool(_: int) -> int:
    return sampler_workers(torch.device("cuda"))


def test_batch_workers_by_default_only_beside_a_gpu_and_never_inside_a_pool():
    assert sampler_workers(torch.device("cpu")) == 0
    assert sampler_workers(torch.device("cuda")) == max(usable_cores() - 1, 0)
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # daemonic: no processes of its own
        assert pool.map(_workers_in_a_pool, [0]) == [0]
