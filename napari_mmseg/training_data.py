"""Training cases on the model's grid, and class-balanced patch sampling from them.

A case is prepared exactly as inference prepares a scan (canonical grid, crop to the body,
normalisation), so the network trains on what it will see. Prepared cases are cached on
disk, keyed by the source files and the spacing, because resampling 40 scans takes minutes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .datasets import LabelledCase
from .inference import body_box
from .organs import NUM_CLASSES
from .preprocessing import IntensityNorm, default_norm, to_canonical

CACHE_VERSION = 2
SAMPLES_PER_CLASS = 20_000


def cache_dir() -> Path:
    base = os.environ.get("MMSEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "napari-mmseg")
    return Path(base) / "prepared"


@dataclass
class PreparedCase:
    name: str
    modality: str
    values: np.ndarray  # float32 z, y, x: HU for CT (normalised later), normalised MR
    labels: np.ndarray  # uint8, our organ ids
    normalised: bool

    def image(self, norm: IntensityNorm) -> np.ndarray:
        return self.values if self.normalised else norm.apply(self.values)


def prepare_case(case: LabelledCase, spacing_mm: float, patch_size: int) -> PreparedCase:
    """Resample to the model grid and crop to the body as `segment_image` does; cached."""
    src = [case.image, case.labels]
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in src)
    key += f"|{spacing_mm}|{patch_size}|{case.modality}|{sorted(case.label_map.items())}|{CACHE_VERSION}"
    path = cache_dir() / f"{case.name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return PreparedCase(case.name, case.modality, z["values"], z["labels"], bool(z["normalised"]))
    image, labels = case.load()
    raw = sitk.GetArrayFromImage(to_canonical(image, spacing_mm))
    lab = sitk.GetArrayFromImage(to_canonical(labels, spacing_mm, is_label=True))
    box = body_box(raw, margin=patch_size // 8)
    raw, lab = raw[box], lab[box]
    norm = default_norm(case.modality)
    normalised = norm.kind == "percentile"  # per-volume statistics: apply now, on this crop
    values = norm.apply(raw) if normalised else raw.astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Per-process name: ranks of a torchrun job prepare the same cases at the same time.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, values=values, labels=lab.astype(np.uint8), normalised=normalised)
    os.replace(tmp, path)
    return PreparedCase(case.name, case.modality, values, lab.astype(np.uint8), normalised)


def fit_normalization(modality: str, cases: list[PreparedCase]) -> IntensityNorm:
    """CT: clip to the window, then the training data's mean and std; MR: per volume."""
    norm = default_norm(modality)
    if norm.kind != "window":
        return norm
    clipped = np.concatenate([np.clip(c.values[::2, ::2, ::2], *norm.window).ravel() for c in cases])
    return default_norm(modality, mean=float(clipped.mean()), std=float(clipped.std()))


class PatchSampler:
    """Class-balanced patches: each patch centre is a voxel of a class drawn uniformly
    (background included), shifted at random; Gaussian noise and an intensity offset."""

    def __init__(
        self, images: list[np.ndarray], labels: list[np.ndarray], patch: int,
        noise_sigma: float, offset_sigma: float, rng: np.random.Generator,
    ) -> None:
        self.images, self.labels, self.patch = images, labels, patch
        self.noise_sigma, self.offset_sigma, self.rng = noise_sigma, offset_sigma, rng
        self.coords = [self._class_coords(lab) for lab in labels]

    def _class_coords(self, lab: np.ndarray) -> list[np.ndarray]:
        out = []
        for c in range(NUM_CLASSES):
            idx = np.flatnonzero(lab.ravel() == c)
            if idx.size > SAMPLES_PER_CLASS:
                idx = self.rng.choice(idx, SAMPLES_PER_CLASS, replace=False)
            out.append(np.stack(np.unravel_index(idx, lab.shape), axis=1) if idx.size else np.empty((0, 3), int))
        return out

    def _crop(self, volume: np.ndarray, start: np.ndarray, fill: float) -> np.ndarray:
        p = self.patch
        src = tuple(slice(max(s, 0), min(s + p, n)) for s, n in zip(start, volume.shape, strict=True))
        pad = [(max(-s, 0), max(s + p - n, 0)) for s, n in zip(start, volume.shape, strict=True)]
        piece = volume[src]
        if any(a or b for a, b in pad):
            piece = np.pad(piece, pad, constant_values=fill)
        return piece

    def sample(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        xs = np.empty((batch, 1, p, p, p), np.float32)
        ys = np.empty((batch, 1, p, p, p), np.int64)
        for b in range(batch):
            i = int(self.rng.integers(len(self.images)))
            present = [c for c in range(NUM_CLASSES) if len(self.coords[i][c])]
            cls = present[int(self.rng.integers(len(present)))]
            centre = self.coords[i][cls][int(self.rng.integers(len(self.coords[i][cls])))]
            start = centre - p // 2 + self.rng.integers(-p // 4, p // 4 + 1, size=3)
            image = self.images[i]
            x = self._crop(image, start, float(image.min()))
            x = x + self.rng.normal(0, self.noise_sigma, x.shape).astype(np.float32)
            xs[b, 0] = x + np.float32(self.rng.normal(0, self.offset_sigma))
            ys[b, 0] = self._crop(self.labels[i], start, 0)
        return xs, ys
