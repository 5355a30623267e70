"""Training cases on the model's grid, and class-balanced patch sampling from them.

A case is prepared exactly as inference prepares a scan (canonical grid, crop to the body,
normalisation), so the network trains on what it will see. Prepared cases are cached on
disk, keyed by the source files and the spacing, because resampling 40 scans takes minutes.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from napari_mmseg.config import TrainingConfig
from napari_mmseg.inference.context_grid import coarsen, coarsen_labels
from napari_mmseg.inference.segment import body_box
from napari_mmseg.io.datasets import LabelledCase
from napari_mmseg.io.safe_write import write_atomic
from napari_mmseg.organs import NUM_CLASSES
from napari_mmseg.preprocessing import IntensityNorm, body_mask, default_norm, to_canonical
from napari_mmseg.training.augmentation import (
    GlobalRemap,
    bias_field,
    class_wise,
    convolutional_remap,
    enlarged,
    fat_fraction,
    fat_signal,
    gaussian_blur,
    spatial_grid,
    thick_slices,
)

CACHE_VERSION = 3
SAMPLES_PER_CLASS = 20_000


def cache_dir() -> Path:
    base = os.environ.get("MMSEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "napari-mmseg")
    return Path(base) / "prepared"


@dataclass
class PreparedCase:
    name: str
    modality: str
    values: np.ndarray  # float32 z, y, x, as the scan stores them (HU for CT)
    labels: np.ndarray  # uint8, our organ ids

    def image(self, norm: IntensityNorm) -> np.ndarray:
        return norm.apply(self.values)


def _save_npz(path: Path, compressed: bool, **arrays: np.ndarray) -> None:
    """Through the project's one write path, parents made (the README's .study/ is not there
    on a fresh clone), replacing what was there."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the temporary name
            (np.savez_compressed if compressed else np.savez)(f, **arrays)

    write_atomic(path, write, overwrite=True, make_parents=True)


def prepare_case(case: LabelledCase, spacing_mm: float, patch_size: int) -> PreparedCase:
    """Resample to the model grid and crop to the body as `segment_image` does; cached."""
    src = [case.image, case.labels]
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in src)
    key += f"|{spacing_mm}|{patch_size}|{case.modality}|{sorted(case.label_map.items())}|{CACHE_VERSION}"
    path = cache_dir() / f"{case.name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return PreparedCase(case.name, case.modality, z["values"], z["labels"])
    image, labels = case.load()
    raw = sitk.GetArrayFromImage(to_canonical(image, spacing_mm))
    lab = sitk.GetArrayFromImage(to_canonical(labels, spacing_mm, is_label=True))
    box = body_box(raw, margin=patch_size // 8)
    values, lab = raw[box].astype(np.float32), lab[box].astype(np.uint8)
    # Ranks of a torchrun job prepare the same cases at the same time: each writes its own
    # temporary file and the last complete one stays.
    _save_npz(path, compressed=False, values=values, labels=lab)
    return PreparedCase(case.name, case.modality, values, lab)


def coarsened(case: PreparedCase) -> PreparedCase:
    """The case on the context pass's grid (twice the spacing), as inference sees a scan there."""
    return PreparedCase(case.name, case.modality, coarsen(case.values), coarsen_labels(case.labels, NUM_CLASSES))


def save_bundle(cases: list[PreparedCase], path: Path) -> None:
    """Prepared cases in one compressed file, to train where the scans are not (a GPU
    machine). Values are rounded to int16 where their range is wide enough (≥ 256) for that
    rounding to be noise: CT in HU, MR in scanner units; the file is then half the size."""
    arrays: dict[str, np.ndarray] = {}
    for i, c in enumerate(cases):
        if "|" in c.name + c.modality:
            raise ValueError(f"case name {c.name!r} holds '|', the bundle's separator: rename it")
        lo, hi = float(c.values.min()), float(c.values.max())
        whole = lo >= -32768 and hi <= 32767 and hi - lo >= 256
        arrays[f"values_{i}"] = np.round(c.values).astype(np.int16) if whole else c.values.astype(np.float32)
        arrays[f"labels_{i}"] = c.labels
    names = np.array([f"{c.name}|{c.modality}" for c in cases])
    _save_npz(path, compressed=True, names=names, **arrays)


def load_bundle(path: Path) -> list[PreparedCase]:
    with np.load(path) as z:
        return [PreparedCase(*str(key).split("|"), z[f"values_{i}"].astype(np.float32), z[f"labels_{i}"])
                for i, key in enumerate(z["names"])]


def fit_normalization(modality: str, cases: list[PreparedCase]) -> IntensityNorm:
    """CT: clip to the window, then the training data's mean and std; MR: per volume."""
    norm = default_norm(modality)
    if norm.kind != "window":
        return norm
    clipped = np.concatenate([np.clip(c.values[::2, ::2, ::2], *norm.window).ravel() for c in cases])
    return default_norm(modality, mean=float(clipped.mean()), std=float(clipped.std()))


class PatchSampler:
    """Class-balanced patches: each patch centre is a voxel of a class drawn uniformly
    (background included), shifted at random; then the appearance and spatial
    augmentation of `augmentation.py`, Gaussian noise and an intensity offset.

    Patches are normalised here, per patch, as `norm` would normalise a whole scan of the
    patch's (augmented) appearance. `guest`: a sampler some of this one's patches come from
    (CT shown as MR: `shown_as_mr`, `AugmentationConfig.p_ct_as_mr`)."""

    def __init__(
        self, cases: list[PreparedCase], norm: IntensityNorm, patch: int, training: TrainingConfig,
        rng: np.random.Generator, device: torch.device | None = None, guest: PatchSampler | None = None,
    ) -> None:
        if norm.kind not in ("window", "foreground"):  # what `fit_normalization` gives
            raise ValueError(f"patches are normalised by a window or by the body, not {norm.kind!r}")
        self.cases, self.norm, self.patch, self.rng = cases, norm, patch, rng
        self.guest = guest
        self.shown_as: IntensityNorm | None = None  # set by `shown_as_mr`
        # where the rotation and scaling are resampled: a GPU does in 1 ms what takes a CPU core 25
        self.device = device if device is not None else torch.device("cpu")
        self.noise_sigma, self.offset_sigma = training.noise_sigma, training.offset_sigma
        self.aug = training.augmentation
        # a coarse copy of each case follows the cases: patch i + len(cases) is case i coarsened
        self.n_fine = len(cases)
        if self.aug.enabled and self.aug.p_coarse > 0:
            cases = cases + [coarsened(c) for c in cases]
            self.cases = cases
        self.coords = [self._class_coords(c.labels) for c in cases]
        self.ranges = [self._unit_range(c.values) for c in cases]
        self.body_samples = [self._body_sample(c.values, r) for c, r in zip(cases, self.ranges, strict=True)]

    def shown_as_mr(self, mr_norm: IntensityNorm) -> PatchSampler:
        """This CT sampler's patches shown as gradient-echo MR (fat from HU) and normalised
        as `mr_norm` normalises an MR scan: the same cases and sampling tables, not a copy."""
        if self.norm.kind != "window":
            raise ValueError("only CT patches (a window) can be shown as MR")
        shown = copy.copy(self)
        shown.shown_as = mr_norm
        return shown

    def _class_coords(self, lab: np.ndarray) -> list[np.ndarray]:
        out = []
        for c in range(NUM_CLASSES):
            idx = np.flatnonzero(lab.ravel() == c)
            if idx.size > SAMPLES_PER_CLASS:
                idx = self.rng.choice(idx, SAMPLES_PER_CLASS, replace=False)
            out.append(np.stack(np.unravel_index(idx, lab.shape), axis=1) if idx.size else np.empty((0, 3), int))
        return out

    def _unit_range(self, values: np.ndarray) -> tuple[float, float]:
        """The intensities that map to 0 and 1: the CT window, or the MR volume's clip range."""
        if self.norm.kind == "window":
            return self.norm.window
        sample = values[::2, ::2, ::2]
        lo, hi, _, _ = self.norm.foreground_statistics(sample[body_mask(sample)])
        return lo, max(hi, lo + 1e-6)

    def _body_sample(self, values: np.ndarray, unit: tuple[float, float]) -> np.ndarray:
        """Body voxels in the unit range, to normalise a remapped patch as its scan would be."""
        body = values[body_mask(values)]
        body = body[self.rng.choice(body.size, min(body.size, 20_000), replace=False)]
        return np.clip((body - unit[0]) / (unit[1] - unit[0]), 0, 1).astype(np.float32)

    def _crop(self, volume: np.ndarray, start: np.ndarray, size: int, fill: float) -> np.ndarray:
        src = tuple(slice(max(s, 0), min(s + size, n)) for s, n in zip(start, volume.shape, strict=True))
        pad = [(max(-s, 0), max(s + size - n, 0)) for s, n in zip(start, volume.shape, strict=True)]
        piece = volume[src]
        if any(a or b for a, b in pad):
            piece = np.pad(piece, pad, constant_values=fill)
        return piece

    def _to_network(self, u: np.ndarray, body: np.ndarray) -> np.ndarray:
        """Unit-range intensities → network input, as `norm.apply` would give for a scan
        whose voxels look like `body`."""
        norm = self.shown_as or self.norm
        if norm.kind == "window":
            w0, w1 = norm.window
            return ((u * (w1 - w0) + w0 - norm.mean) / norm.std).astype(np.float32)
        inside = body[body > 0.1 * np.percentile(body, 99)]  # the body as `body_mask` finds it after the remap
        body = inside if inside.size else body.ravel()  # a patch of air only
        lo, hi, mean, std = norm.foreground_statistics(body)
        return ((np.clip(u, lo, hi) - mean) / max(std, 1e-6)).astype(np.float32)

    def _one(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p, aug = self.patch, self.aug
        if len(self.cases) > self.n_fine and rng.random() < aug.p_coarse:
            i += self.n_fine
        case = self.cases[i]
        present = [c for c in range(NUM_CLASSES) if len(self.coords[i][c])]
        cls = present[int(rng.integers(len(present)))]
        centre = self.coords[i][cls][int(rng.integers(len(self.coords[i][cls])))]
        start = centre - p // 2 + rng.integers(-p // 4, p // 4 + 1, size=3)
        fill = float(case.values.min())
        if aug.enabled and rng.random() < aug.p_spatial:
            margin = p // 5
            crop_start = start - margin
            raw = self._crop(case.values, crop_start, p + 2 * margin, fill)
            lab = self._crop(case.labels, crop_start, p + 2 * margin, 0)
            grid = spatial_grid(p, aug, rng, margin, self.device)
            if rng.random() < aug.p_enlarge:
                grid = enlarged(grid, aug, rng)
            raw_t = torch.from_numpy(np.ascontiguousarray(raw)).to(self.device)[None, None]
            lab_t = torch.from_numpy(lab).to(self.device, torch.float32)[None, None]
            raw = F.grid_sample(raw_t, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
            lab = F.grid_sample(lab_t, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
            raw, lab = raw.cpu().numpy(), lab.cpu().numpy().astype(np.uint8)
        else:
            raw = self._crop(case.values, start, p, fill)
            lab = self._crop(case.labels, start, p, 0)

        lo, hi = self.ranges[i]
        values = raw
        if aug.enabled and self.norm.kind == "window":  # another phase, scanner or calibration
            values = raw * np.float32(rng.uniform(*aug.ct_window_scale)) + np.float32(
                rng.uniform(-aug.ct_window_shift_hu, aug.ct_window_shift_hu))
        u = np.clip((values - lo) / (hi - lo), 0, 1).astype(np.float32)
        body = self.body_samples[i]
        if aug.enabled:
            if rng.random() < aug.p_class_wise:
                u = class_wise(u, lab, aug, rng)
            remap = GlobalRemap.draw(aug, rng)
            if remap.curve is None and rng.random() < aug.p_convolutional:
                # a local remapping has no whole-scan equivalent: the patch is its own scan
                u = body = convolutional_remap(remap(u), rng)
            else:
                u, body = remap(u), remap(body)
            if self.norm.kind == "window" and (self.shown_as is not None or rng.random() < aug.p_fat_signal):
                u = fat_signal(u, fat_fraction(raw), float(rng.uniform(*aug.fat_brightness)),
                               rng.random() < aug.p_opposed_phase)
                if self.shown_as is not None:  # no whole-scan equivalent: the patch is its own scan
                    body = u
            if rng.random() < aug.p_bias:
                u = u * bias_field(u.shape, aug.bias_strength, rng)
        x = torch.from_numpy(self._to_network(u, body))[None, None]
        if aug.enabled:
            if rng.random() < aug.p_blur:
                x = gaussian_blur(x, float(rng.uniform(*aug.blur_sigma)))
            if rng.random() < aug.p_thick_slices:
                x = thick_slices(x, int(rng.integers(aug.thick_factor[0], aug.thick_factor[1] + 1)))
        x = x[0, 0].numpy()
        x = x + np.float32(self.noise_sigma) * rng.standard_normal(x.shape, dtype=np.float32)
        x += np.float32(rng.normal(0, self.offset_sigma))
        if aug.enabled and rng.random() < aug.p_slab:
            k = int(rng.integers(aug.slab_slices[0], aug.slab_slices[1] + 1))
            z0 = int(rng.integers(0, max(1, p - k + 1)))
            outside = np.ones(p, bool)
            outside[z0:z0 + k] = False
            x[outside] = x[~outside].min()
            lab = lab.copy()
            lab[outside] = 0
        return x.astype(np.float32, copy=False), lab

    def sample(self, batch: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`batch` patches drawn with `rng` (a training step's own: `patch_stream`), or with
        the sampler's."""
        rng = self.rng if rng is None else rng
        p = self.patch
        xs = np.empty((batch, 1, p, p, p), np.float32)
        ys = np.empty((batch, 1, p, p, p), np.uint8)  # 1/8 of int64 through the workers' shared memory
        for b in range(batch):
            if self.guest is not None and rng.random() < self.aug.p_ct_as_mr:
                xs[b, 0], ys[b, 0] = self.guest._one(int(rng.integers(self.guest.n_fine)), rng)
            else:
                xs[b, 0], ys[b, 0] = self._one(int(rng.integers(self.n_fine)), rng)
        return xs, ys
