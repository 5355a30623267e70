"""Training the correction network on simulated annotators.

Each sample is a training patch of the segmentation networks (`PatchSampler`: the same
appearance and spatial augmentation, so corrections work on the CT phases and MR sequences
segmentation does), its reference labels corrupted the way automatic results go wrong
(an organ eroded or dilated, partly taken by a neighbour, a piece missing, a false blob,
a whole organ missed), and clicks where the labels are wrong: at the voxel deepest inside
the largest error region, positive for the reference's label there, negative for the
current one (the SEGFM3D challenge's simulated user). Clicks are iterated as in DeepEdit:
now and then the network's own answer to the earlier clicks is the next input, and the next
click goes to its largest remaining error. Some samples get a click where the labels are
already right, so a hint there changes nothing. The network learns the reference labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceLoss
from scipy import ndimage

from napari_mmseg.config import PRESETS
from napari_mmseg.correction.hints import Hint
from napari_mmseg.correction.model import (
    CorrectionMetadata,
    CorrectionNet,
    CropHint,
    build_network,
    network_input,
    save_correction_model,
)
from napari_mmseg.correction.simulated_annotator import next_click
from napari_mmseg.device import place
from napari_mmseg.io.datasets import LabelledCase
from napari_mmseg.organs import NUM_CLASSES
from napari_mmseg.training.training_data import PatchSampler, PreparedCase

# The last cases of each dataset in sorted order are never trained on: the benchmark's.
HELD_OUT_PER_MODALITY = {"CT": 6, "MR": 4}


def split_held_out(cases: list[LabelledCase]) -> tuple[list[LabelledCase], list[LabelledCase]]:
    """(training cases, held-out cases): per modality the last `HELD_OUT_PER_MODALITY` names."""
    held = set()
    for modality, n in HELD_OUT_PER_MODALITY.items():
        names = sorted(c.name for c in cases if c.modality == modality)
        held |= set(names[len(names) - n:]) if len(names) > n else set()
    return [c for c in cases if c.name not in held], [c for c in cases if c.name in held]


def _ball(shape: tuple[int, ...], centre: np.ndarray, radius: float) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius * radius


def _random_voxel(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(mask)
    return np.asarray(np.unravel_index(int(idx[rng.integers(idx.size)]), mask.shape))


# how an automatic result goes wrong, and how often each kind is drawn
CORRUPTIONS = {"erode": 0.1, "dilate": 0.1, "erode here": 0.15, "dilate here": 0.15, "neighbour": 0.15,
               "piece": 0.1, "blob": 0.05, "missed": 0.2}


def corrupt(reference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference labels as an automatic result might have them wrong: 1–3 of erosion,
    dilation (of a whole organ, or of its border in one place, the commonest error of a good
    result), a neighbour taking part of an organ, a piece missing, a false blob, a missed
    organ."""
    labels = reference.copy()
    for _ in range(int(rng.integers(1, 4))):
        organs = [k for k in range(1, NUM_CLASSES) if (labels == k).any()]
        kind = rng.choice(list(CORRUPTIONS), p=list(CORRUPTIONS.values()))
        if not organs or kind == "blob":
            k = int(rng.integers(1, NUM_CLASSES))
            centre = _random_voxel(labels != k, rng) if (labels != k).any() else np.asarray(labels.shape) // 2
            labels[_ball(labels.shape, centre, rng.uniform(3, 9))] = k
            continue
        k = int(rng.choice(organs))
        organ = labels == k
        here = np.ones(labels.shape, bool)
        if kind.endswith(" here"):  # only within a ball around a point of the organ's border
            border = organ & ~ndimage.binary_erosion(organ)
            here = _ball(labels.shape, _random_voxel(border, rng), rng.uniform(6, 16))
        if kind.startswith("erode"):
            labels[here & organ & ~ndimage.binary_erosion(organ, iterations=int(rng.integers(1, 4)))] = 0
        elif kind.startswith("dilate"):
            grown = ndimage.binary_dilation(organ, iterations=int(rng.integers(1, 4)))
            labels[here & grown & (labels == 0)] = k
        elif kind == "neighbour":  # a half of the organ beyond a random plane goes to another label
            others = [j for j in range(NUM_CLASSES) if j != k]
            j = int(rng.choice(others))
            centre = _random_voxel(organ, rng)
            normal = rng.normal(size=3)
            grid = np.ogrid[tuple(slice(0, n) for n in labels.shape)]
            side = sum((g - c) * w for g, c, w in zip(grid, centre, normal, strict=True)) > 0
            labels[organ & side] = j
        elif kind == "piece":
            labels[organ & _ball(labels.shape, _random_voxel(organ, rng), rng.uniform(4, 12))] = 0
        else:
            labels[organ] = 0
    return labels


@dataclass(frozen=True)
class SimulationConfig:
    max_clicks: int = 3  # clicks on one sample: 1 .. this
    p_neutral: float = 0.1  # a sample whose one click is where the labels are right
    p_iterate: float = 0.3  # of the others: earlier clicks answered by the network itself (a CPU step costs 2x)


def simulated_sample(image: np.ndarray, reference: np.ndarray, rng: np.random.Generator, sigma_vox: float,
                     sim: SimulationConfig, answer: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """The network input for one patch (the target is `reference`). `answer` maps an input
    to the network's labels, for iterated clicks; None: clicks on the corrupted labels only."""
    current = corrupt(reference, rng)
    clicks: list[Hint] = []
    iso = (1.0, 1.0, 1.0)
    if rng.random() < sim.p_neutral:
        right = current == reference
        if right.any():
            at = _random_voxel(right, rng)
            clicks.append(Hint(int(reference[tuple(at)]), True, (tuple(int(v) for v in at),)))
    else:
        n = int(rng.integers(1, sim.max_clicks + 1))
        iterate = answer is not None and rng.random() < sim.p_iterate
        clicked = np.zeros(reference.shape, bool)
        for _ in range(n):
            click = next_click(reference, current, iso, None if iterate else clicked)
            if click is None:
                break
            clicks.append(click)
            if iterate and len(clicks) < n:
                current = answer(network_input(image, current, _crop_hints(clicks), sigma_vox))
            else:  # the same region is not clicked twice on unchanged labels
                pieces, _ = ndimage.label(current != reference)
                clicked |= pieces == pieces[click.points[0]]
    return network_input(image, current, _crop_hints(clicks), sigma_vox)


def _crop_hints(clicks: list[Hint]) -> list[CropHint]:
    return [CropHint(c.label, c.positive, np.asarray(c.points, float)) for c in clicks]


@dataclass(frozen=True)
class CorrectionTraining:
    out: Path  # checkpoints and the log
    seconds: float  # the time budget; training stops after it
    max_steps: int = 100_000
    batch_size: int = 4
    patch: int = 48  # fully convolutional: trained on 48³, applied to the metadata's crop
    lr: float = 1e-3
    checkpoint_every: int = 100
    seed: int = 0
    # extra cross-entropy weight of a voxel the input labels have wrong (1 + this, against 1):
    # a cube is mostly right already, and copying it must not be the cheapest answer. It also
    # moves the network towards adding too much (a missed voxel costs more than a false one):
    # the shipped network's last stage trained without it.
    error_weight: float = 0.0
    simulation: SimulationConfig = SimulationConfig()


def correction_loss(logits: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor, error_weight: float,
                    dice: DiceLoss) -> torch.Tensor:
    """Dice over the batch (an organ absent from one cube is not scored there) plus
    cross-entropy weighted towards the voxels whose input label is wrong."""
    wrong = inputs[:, 1 : 1 + NUM_CLASSES].argmax(1) != target
    weight = 1.0 + error_weight * wrong.float()
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return dice(logits, target[:, None]) + (ce * weight).sum() / weight.sum()


def train_correction(run: CorrectionTraining, cases: list[PreparedCase], meta: CorrectionMetadata,
                     log: Callable[[str], None] = print, init: CorrectionNet | None = None) -> Path:
    """Train until the time budget or step count is spent, from `init`'s weights when given;
    write `last.safetensors` at each checkpoint (and at the end, with the steps in the
    metadata). Returns its path."""
    rng = np.random.default_rng(run.seed)
    torch.manual_seed(run.seed)
    light = PRESETS["light"].training
    # the coarse copies are the context pass's grid; the random convolutions at half the rate: a
    # third of a CPU step
    aug = replace(light.augmentation, p_coarse=0.0, p_convolutional=light.augmentation.p_convolutional / 2)
    config = replace(light, spacing_mm=meta.spacing_mm, patch_size=run.patch, augmentation=aug)
    samplers = {m: PatchSampler([c for c in cases if c.modality == m], meta.norm_for(m), run.patch, config, rng)
                for m in sorted({c.modality for c in cases})}
    device = torch.device("cpu")
    network = place(build_network(meta.network), device)
    if init is not None:
        network.load_state_dict(init.state_dict())
    optimiser = torch.optim.AdamW(network.parameters(), lr=run.lr, weight_decay=1e-5)
    dice = DiceLoss(to_onehot_y=True, softmax=True, batch=True)
    sigma_vox = meta.hint_sigma_mm / meta.spacing_mm

    def answer(x: np.ndarray) -> np.ndarray:
        network.eval()
        with torch.inference_mode():
            out = network(place(torch.from_numpy(x)[None], device)).argmax(1)[0].numpy().astype(np.uint8)
        network.train()
        return out

    start, step, recent = time.monotonic(), 0, []
    path = run.out / "last.safetensors"
    modalities = list(samplers)
    names = sorted(c.name for c in cases)
    while step < run.max_steps and time.monotonic() - start < run.seconds:
        modality = modalities[step % len(modalities)]
        images, refs = samplers[modality].sample(run.batch_size, rng)
        inputs = np.stack([simulated_sample(images[b, 0], refs[b, 0], rng, sigma_vox, run.simulation,
                                            answer if step > 200 else None) for b in range(run.batch_size)])
        for group in optimiser.param_groups:  # poly decay over the time budget: the steps are not known ahead
            group["lr"] = run.lr * max(0.0, 1 - (time.monotonic() - start) / run.seconds) ** 0.9
        network.train()
        x = place(torch.from_numpy(inputs), device)
        loss = correction_loss(network(x), x, torch.from_numpy(refs[:, 0].astype(np.int64)).to(device),
                               run.error_weight, dice)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        recent.append(loss.item())
        if step % run.checkpoint_every == 0 or step == run.max_steps:
            log(f"step {step} loss {np.mean(recent):.4f} ({time.monotonic() - start:.0f} s)")
            recent = []
            _save(network, meta, names, run, step, path)
    _save(network, meta, names, run, step, path)
    log(f"done: {step} steps in {time.monotonic() - start:.0f} s -> {path}")
    return path


def _save(network: torch.nn.Module, meta: CorrectionMetadata, names: list[str], run: CorrectionTraining,
          step: int, path: Path) -> None:
    training = {**meta.training, "cases": names, "steps": step + int(meta.training.get("init_steps", 0)),
                "batch_size": run.batch_size, "patch": run.patch, "lr": run.lr,
                "error_weight": run.error_weight,
                "date": time.strftime("%Y-%m-%d"), "simulation": run.simulation.__dict__}
    save_correction_model(network, replace(meta, training=training), path)
    save_correction_model(network, replace(meta, training=training), path.with_name(f"step{step:06d}.safetensors"))
