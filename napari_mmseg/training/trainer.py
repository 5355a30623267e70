"""Training one variant on unpaired CT and MR: the paper's recipe (class-balanced patches,
noise and offset augmentation, soft Dice, Adam, alternating MR/CT batches), with
checkpoints, resume, fixed seeds and PyTorch DDP when started by `torchrun`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from monai.losses import DiceCELoss, DiceLoss

from napari_mmseg.config import Preset
from napari_mmseg.device import mixed_precision, place, resolve_device, sampler_workers, tune_cpu
from napari_mmseg.errors import OutputError, WeightsError
from napari_mmseg.inference.context_grid import context_weight
from napari_mmseg.inference.segment import labels_on_model_grid, predict_scan
from napari_mmseg.io.datasets import LabelledCase
from napari_mmseg.io.safe_write import write_atomic
from napari_mmseg.metrics import dice_scores
from napari_mmseg.models.dual_stream import MultiModalFCN
from napari_mmseg.models.weights import ModelMetadata, checked_lineage, load_weights, read_metadata, save_weights
from napari_mmseg.organs import MODALITIES
from napari_mmseg.training.patch_stream import resampling_device, training_batches
from napari_mmseg.training.training_data import PatchSampler, PreparedCase, fit_normalization, prepare_case

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class TrainingRun:
    variant: str
    preset: Preset
    out_dir: Path
    modalities: tuple[str, ...] = MODALITIES  # one modality for `individual`
    device: str = "auto"
    steps: int | None = None  # overrides the preset's
    seed: int | None = None
    progress_bar: bool = True
    # start from these weights (fine-tuning, e.g. the shipped files with a new recipe); the
    # optimiser and the learning-rate schedule start afresh
    init_weights: Path | None = None
    # processes drawing batches beside the trainer (`patch_stream`); None: as the device
    # suits (`device.sampler_workers`). They change the speed, never the batches.
    sampler_workers: int | None = None
    # replace weights already in `out_dir` (the command line passes its --overwrite)
    overwrite: bool = True

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.preset.training.steps

    @property
    def name(self) -> str:
        if self.variant == "individual":
            return f"individual-{self.modalities[0].lower()}"
        return self.variant


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
    modality: str, mixed: bool = True,
) -> torch.Tensor:
    """One optimisation step on one single-modality batch; returns the loss."""
    with mixed_precision(x.device, training=True) if mixed else nullcontext():
        logits = model(x, modality)
    loss = loss_fn(logits.float(), y.long())  # labels travel as uint8: converted where they arrive
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _distributed() -> tuple[int, int, bool]:
    """Rank, world size, and whether this call started the process group (and so must end it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world, started) if world > 1 else (0, 1, False)


def save_checkpoint(path: Path, state: dict) -> None:
    """Whole or not at all, as every file (`safe_write`): a full disk keeps the previous one."""

    def write(tmp: Path) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError:  # torch's writer reports a short write so ("enforce fail at inline_container")
            raise OutputError(f"Cannot write {path}: the writer failed (is the disk full?).") from None

    def verify(tmp: Path) -> None:
        try:
            torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (whatever the unpickler raises: the file is not whole)
            raise OutputError(f"Cannot write {path}: the written file reads back incomplete (is the disk full?).") \
                from None

    write_atomic(path, write, overwrite=True, verify=verify)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> int:
    """Resume from a checkpoint this program wrote; anything else is refused in one sentence."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])
    except Exception as e:  # noqa: BLE001 (unpickling, shapes, keys: all mean "not this run's checkpoint")
        raise WeightsError(f"{path} is not a checkpoint of this run ({type(e).__name__}): remove it to start "
                           "afresh, or give another --out.") from None


def validate(
    model: MultiModalFCN, cases: dict[str, list[PreparedCase]], norms: dict, patch: int,
    spacing: float, device: torch.device, context: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Mean Dice per organ and modality on held-out cases, on the model grid, labelled as
    `segment_image` labels (`context`: the context pass's share)."""
    out: dict[str, dict[str, float]] = {}
    model.eval()
    for modality, prepared in cases.items():
        per_organ: dict[str, list[float]] = {}
        for case in prepared:
            probs, _ = predict_scan(model, case.values, norms[modality], modality, patch, device, context)
            pred = labels_on_model_grid(probs)
            for s in dice_scores(pred, case.labels, (spacing,) * 3):
                per_organ.setdefault(s.organ, []).append(s.dice)
        if per_organ:
            out[modality] = {k: float(np.nanmean(v)) for k, v in per_organ.items()}
            out[modality]["mean"] = float(np.nanmean(list(out[modality].values())))
    model.train()
    return out


def train(
    run: TrainingRun,
    train_cases: list[LabelledCase],
    val_cases: list[LabelledCase] = (),
    log: LogFn = print,
) -> Path:
    """Train, checkpointing to `run.out_dir`; resumes from its checkpoint. Returns the weights."""
    cfg = run.preset.training
    t0 = time.perf_counter()
    prepared = {m: [prepare_case(c, cfg.spacing_mm, cfg.patch_size) for c in train_cases if c.modality == m]
                for m in run.modalities}
    held_out = {m: [prepare_case(c, cfg.spacing_mm, cfg.patch_size) for c in val_cases if c.modality == m]
                for m in run.modalities}
    log(f"prepared {sum(map(len, prepared.values()))} training cases in {time.perf_counter() - t0:.0f} s")
    return train_prepared(run, prepared, held_out, log)


def train_prepared(
    run: TrainingRun,
    prepared: dict[str, list[PreparedCase]],
    held_out: dict[str, list[PreparedCase]] | None = None,
    log: LogFn = print,
) -> Path:
    """`train` on cases already on the model grid (a study's folds, a bundle on a GPU machine)."""
    rank, world, started = _distributed()
    cfg = run.preset.training
    if run.seed is not None:
        cfg = replace(cfg, seed=run.seed)
    device = resolve_device(run.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cpu":
        tune_cpu()
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    out = Path(run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepared = {m: list(prepared.get(m, [])) for m in run.modalities}
    held_out = {m: list((held_out or {}).get(m, [])) for m in run.modalities}
    for m, cases in prepared.items():
        if not cases:
            raise ValueError(f"No {m} training cases: variant {run.variant} needs them.")
    norms = {m: fit_normalization(m, prepared[m]) for m in run.modalities}
    context = context_weight(cfg.augmentation)  # how the network will be run: validated so too
    workers = sampler_workers(device) if run.sampler_workers is None else run.sampler_workers
    resample_on = resampling_device(device, workers)
    samplers = {m: PatchSampler(prepared[m], norms[m], cfg.patch_size, cfg, rng, resample_on) for m in run.modalities}
    if cfg.augmentation.enabled and cfg.augmentation.p_ct_as_mr > 0 and set(run.modalities) == {"CT", "MR"}:
        samplers["MR"].guest = samplers["CT"].shown_as_mr(norms["MR"])

    model = place(MultiModalFCN(run.variant, run.preset.network, run.modalities), device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr_for(run.variant), betas=(0.9, 0.999), eps=cfg.adam_eps
    )
    loss_fn = (DiceCELoss if cfg.loss == "dice_ce" else DiceLoss)(
        softmax=True, to_onehot_y=True, include_background=True
    )
    step = 0
    checkpoint = out / f"{run.name}.checkpoint.pt"
    weights = out / f"{run.name}.safetensors"
    # how the start was made, read now: a record it cannot give is refused before the training
    earlier = None if run.init_weights is None else checked_lineage(
        read_metadata(run.init_weights).training, Path(run.init_weights).name)
    if run.init_weights is not None and not checkpoint.is_file():
        start = load_weights(run.init_weights, run.variant)
        if start.meta.network != run.preset.network or start.meta.modalities != run.modalities:
            raise ValueError(f"{run.init_weights} holds a {start.meta.network} network for "
                             f"{'/'.join(start.meta.modalities)}: not the one this run trains.")
        model.load_state_dict(start.model.state_dict())
        if rank == 0:
            log(f"{run.name} starts from {run.init_weights}")
    if checkpoint.is_file():
        step = load_checkpoint(checkpoint, model, optimizer, device)
        if rank == 0:
            log(f"resumed {run.name} at step {step}")
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    base_lr = cfg.lr_for(run.variant)

    bar = None
    if run.progress_bar and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=run.total_steps, initial=step, desc=run.name, unit="step", dynamic_ncols=True)
    history: list[dict] = []
    scores: dict = {}
    model.train()
    if rank == 0 and workers:
        log(f"{run.name}: batches drawn by {workers} worker processes")
    batches = training_batches(samplers, run.modalities, cfg.batch_size, cfg.seed, rank, step, run.total_steps,
                               workers, pin_memory=device.type == "cuda")
    for _, modality, xs, ys in batches:
        x, y = place(xs, device), ys.to(device)
        lr = base_lr * (1 - step / run.total_steps) ** 0.9 if cfg.lr_schedule == "poly" else base_lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = train_step(train_model, optimizer, loss_fn, x, y, modality, cfg.mixed_precision)
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", mod=modality)
        if rank != 0:
            continue
        if step % cfg.checkpoint_every == 0 or step == run.total_steps:
            save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "step": step})
        if any(held_out.values()) and (step % cfg.validate_every == 0 or step == run.total_steps):
            scores = validate(model, held_out, norms, cfg.patch_size, cfg.spacing_mm, device, context)
            history.append({"step": step, **{m: s["mean"] for m, s in scores.items()}})
            shown = ", ".join(f"{m} {s['mean']:.3f}" for m, s in scores.items())
            log(f"{run.name} step {step}: validation Dice {shown}")
        if step % 50 == 0:
            log(f"{run.name} step {step}/{run.total_steps} loss {loss.item():.4f} lr {lr:.2e} "
                f"{time.perf_counter() - t0:.0f} s")
    if bar is not None:
        bar.close()
    if rank == 0:
        final = {}
        if any(held_out.values()):  # the last step's validation, unless the loop just ran it
            final = scores if history and history[-1]["step"] == step else validate(
                model, held_out, norms, cfg.patch_size, cfg.spacing_mm, device, context)
        meta = ModelMetadata(
            variant=run.variant,
            modalities=run.modalities,
            network=run.preset.network,
            spacing_mm=cfg.spacing_mm,
            patch_size=cfg.patch_size,
            normalization=norms,
            trained_on="; ".join(
                f"{m}: {len(prepared[m])} cases ({', '.join(c.name for c in prepared[m])})" for m in run.modalities
            ),
            training={"preset": run.preset.name, **asdict(cfg), "steps": run.total_steps,
                      "init_weights": None if run.init_weights is None else Path(run.init_weights).name,
                      "world_size": world, "device": str(device),
                      "wall_time_s": round(time.perf_counter() - t0, 1), "validation_history": history,
                      # how the start was made: without it a fine-tune's file forgets every earlier round
                      **({} if earlier is None else {"earlier": earlier})},
            validation_dice={
                "cases": {m: [c.name for c in held_out[m]] for m in run.modalities},
                "on": "model grid",
                **final,
            },
            context_weight=context,
        )
        save_weights(model, meta, weights, overwrite=run.overwrite)
        log(f"wrote {weights}" + (f"; validation {json.dumps(final)}" if final else ""))
    if world > 1:
        dist.barrier()
    if started:
        # Left to interpreter exit, gloo's threads are torn down mid-flight and abort the process.
        dist.destroy_process_group()
    return weights


def split_cases(cases: list[LabelledCase], n_val: int, seed: int) -> tuple[list, list]:
    """Hold out `n_val` cases per modality, chosen by a seeded shuffle."""
    train_cases, val_cases = [], []
    for m in MODALITIES:
        mine = [c for c in cases if c.modality == m]
        order = np.random.default_rng(seed).permutation(len(mine))
        k = min(n_val, max(len(mine) - 1, 0)) if mine else 0
        val_cases += [mine[i] for i in order[:k]]
        train_cases += [mine[i] for i in order[k:]]
    return train_cases, val_cases

