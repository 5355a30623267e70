"""The learned correction network, what it is fed, and its weights file.

A small 3-D U-Net (MONAI's) sees a cube of the scan around the user's last hint on an
LPS-aligned grid of `spacing_mm`, the current labels there (one channel per label), and the
hints (one channel per label and sign, each point a Gaussian ball), and answers with class
logits for the cube: the previous mask and the prompts as input channels, as nnInteractive
and DeepEdit feed them. Small enough for one forward pass well under half a second on two
CPU cores.

The weights are safetensors with JSON metadata of kind "correction" (what the channels are,
the grid, the normalisation, the training cases and the held-out ones): loaded without
unpickling anything, and a segmentation network's file is refused by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch.nn.utils.fusion import fuse_conv_bn_eval

from napari_mmseg.device import place, resolve_device
from napari_mmseg.errors import WeightsError
from napari_mmseg.models.weights import bundled_weights_dir
from napari_mmseg.models.weights_file import checked_state, read_metadata_json, read_tensors, write_weights_file
from napari_mmseg.organs import NUM_CLASSES, ORGANS, check_modality
from napari_mmseg.preprocessing import IntensityNorm

KIND = "correction"
FORMAT_VERSION = 1
LABEL_NAMES = ("background", *(o.name for o in sorted(ORGANS, key=lambda o: o.label)))
INPUTS = ("image", *(f"labels:{n}" for n in LABEL_NAMES), *(f"hint+:{n}" for n in LABEL_NAMES),
          *(f"hint-:{n}" for n in LABEL_NAMES))


@dataclass(frozen=True)
class CorrectionNetworkConfig:
    """MONAI `UNet` settings: widths per level, the strides between them, residual units."""

    # the first level at full resolution: a border can move by one voxel of the crop
    channels: tuple[int, ...] = (16, 32, 64, 96, 128)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    num_res_units: int = 0  # residual units make a forward pass 6x slower on a CPU (0.6 vs 0.1 s at 64³)

    @classmethod
    def from_dict(cls, d: dict) -> CorrectionNetworkConfig:
        return cls(tuple(int(v) for v in d["channels"]), tuple(int(v) for v in d["strides"]), int(d["num_res_units"]))


@dataclass(frozen=True)
class CorrectionMetadata:
    """What a correction weights file is: its network, its input channels and grid, the
    normalisation per modality, and how it was trained (cases, steps, held-out cases)."""

    normalization: dict[str, IntensityNorm]
    network: CorrectionNetworkConfig = CorrectionNetworkConfig()
    spacing_mm: float = 2.0
    crop: int = 64  # voxels per side of the cube recomputed around a hint
    hint_sigma_mm: float = 3.0  # the Gaussian ball a hint point becomes
    inputs: tuple[str, ...] = INPUTS
    training: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps({
            "kind": KIND,
            "format_version": self.format_version,
            "network": asdict(self.network),
            "spacing_mm": self.spacing_mm,
            "crop": self.crop,
            "hint_sigma_mm": self.hint_sigma_mm,
            "inputs": list(self.inputs),
            "classes": {str(i): n for i, n in enumerate(LABEL_NAMES)},
            "normalization": {m: n.to_dict() for m, n in self.normalization.items()},
            "training": self.training,
        })

    @classmethod
    def from_json(cls, text: str) -> CorrectionMetadata:
        d = json.loads(text)
        return cls(
            normalization={m: IntensityNorm.from_dict(n) for m, n in d["normalization"].items()},
            network=CorrectionNetworkConfig.from_dict(d["network"]),
            spacing_mm=float(d["spacing_mm"]),
            crop=int(d["crop"]),
            hint_sigma_mm=float(d["hint_sigma_mm"]),
            inputs=tuple(d["inputs"]),
            training=dict(d.get("training", {})),
            format_version=int(d["format_version"]),
        )

    def norm_for(self, modality: str) -> IntensityNorm:
        m = check_modality(modality)
        if m not in self.normalization:
            raise WeightsError(f"This correction model was trained for {'/'.join(self.normalization)}, not {m}.")
        return self.normalization[m]


class CorrectionNet(torch.nn.Module):
    """A U-Net whose logits are added to the current labels (one-hot, times a learned
    `prior`): keeping the labels as they are is the network's starting point, and it learns
    only where to depart from them."""

    def __init__(self, config: CorrectionNetworkConfig) -> None:
        super().__init__()
        # Batch norm, not instance norm: at inference it folds into the convolutions, where
        # instance norm took half of a CPU forward pass.
        self.unet = UNet(spatial_dims=3, in_channels=len(INPUTS), out_channels=NUM_CLASSES, channels=config.channels,
                         strides=config.strides, num_res_units=config.num_res_units, norm="batch")
        self.prior = torch.nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x) + self.prior * x[:, 1 : 1 + NUM_CLASSES]


def build_network(config: CorrectionNetworkConfig) -> CorrectionNet:
    return CorrectionNet(config)


def _folded(network: torch.nn.Module) -> torch.nn.Module:
    """For inference: each batch norm folded into the convolution before it (the same
    answer, a tenth faster on a CPU)."""
    for module in list(network.modules()):
        adn = getattr(module, "adn", None)
        if isinstance(module, Convolution) and isinstance(getattr(adn, "N", None), torch.nn.BatchNorm3d):
            transposed = isinstance(module.conv, torch.nn.ConvTranspose3d)
            module.conv = fuse_conv_bn_eval(module.conv, adn.N, transpose=transposed)
            adn.N = torch.nn.Identity()
    return network


@dataclass(frozen=True)
class CorrectionModel:
    network: torch.nn.Module
    meta: CorrectionMetadata
    device: torch.device
    path: Path | None = None


@dataclass(frozen=True)
class CropHint:
    """A hint in a crop's voxels: continuous (z, y, x) indices, possibly outside the crop."""

    label: int
    positive: bool
    points: np.ndarray  # (N, 3)


def hint_channels(shape: tuple[int, int, int], hints: Sequence[CropHint], sigma_vox: float) -> np.ndarray:
    """(10, *shape): positive hints for labels 0..4, then negative ones; each point a
    Gaussian ball of `sigma_vox` (peak 1; overlapping balls take the maximum), cut at 3 sigma."""
    out = np.zeros((2 * NUM_CLASSES, *shape), np.float32)
    reach = int(np.ceil(3 * sigma_vox))
    size = np.asarray(shape)
    for h in hints:
        channel = out[h.label if h.positive else NUM_CLASSES + h.label]
        for point in np.asarray(h.points, float).reshape(-1, 3):
            lo = np.maximum(np.floor(point).astype(int) - reach, 0)
            hi = np.minimum(np.floor(point).astype(int) + reach + 2, size)
            if (hi <= lo).any():
                continue
            axes = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
            d2 = sum((a - c) ** 2 for a, c in zip(axes, point, strict=True))
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            np.maximum(channel[box], np.exp(-d2 / (2 * sigma_vox * sigma_vox)).astype(np.float32), out=channel[box])
    return out


def network_input(image: np.ndarray, labels: np.ndarray, hints: Sequence[CropHint], sigma_vox: float) -> np.ndarray:
    """The (16, *shape) input: normalised image, labels one-hot, hint maps."""
    one_hot = (labels[None] == np.arange(NUM_CLASSES, dtype=labels.dtype)[:, None, None, None]).astype(np.float32)
    return np.concatenate([image[None].astype(np.float32), one_hot, hint_channels(image.shape, hints, sigma_vox)])


def bundled_correction_weights() -> Path:
    return bundled_weights_dir() / "correction.safetensors"


def save_correction_model(network: torch.nn.Module, meta: CorrectionMetadata, path: str | os.PathLike) -> Path:
    """Tensors (float16: half the file, no loss a user sees) and metadata, whole or not at all."""
    return write_weights_file(path, network.state_dict(), meta.to_json(), half=True, overwrite=True)


def read_correction_metadata(path: str | os.PathLike) -> CorrectionMetadata:
    p = Path(path)
    raw, doc = read_metadata_json(p)
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        what = f"a segmentation network ({doc['variant']})" if isinstance(doc, dict) and "variant" in doc \
            else "not a correction model"
        raise WeightsError(f"{p.name} holds {what}, not a correction model: give a correction weights file.")
    if not isinstance(doc.get("format_version"), int) or doc["format_version"] > FORMAT_VERSION:
        raise WeightsError(f"{p} uses correction weights format {doc.get('format_version')}; upgrade napari-mmseg.")
    try:
        meta = CorrectionMetadata.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{p} has unreadable correction metadata ({e}).") from None
    if meta.inputs != INPUTS:
        raise WeightsError(f"{p.name} expects other input channels than this napari-mmseg feeds; upgrade it.")
    return meta


def is_correction_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a correction network's file (for `mmseg info`, which shows either kind)."""
    try:
        _, doc = read_metadata_json(Path(path))
    except WeightsError:
        return False
    return isinstance(doc, dict) and doc.get("kind") == KIND


def summary_lines(meta: CorrectionMetadata, name: str) -> list[str]:
    """What a correction file is, in the few lines `mmseg info` prints."""
    training = meta.training
    cases = training.get("cases", [])
    counts = ", ".join(f"{sum(c.startswith(p) for c in cases)} {label}"
                       for p, label in (("btcv", "CT (BTCV)"), ("chaos", "T2 MR (CHAOS)")))
    held = training.get("held_out", [])
    rows = [
        ("kind", "correction network: re-labels the region around a user's hint"),
        ("inputs", "the scan, the current labels (one-hot) and positive / negative hint maps per label"),
        ("grid", f"{meta.spacing_mm:g} mm voxels, a {meta.crop}³ cube around the last hint"),
        ("network", f"U-Net, channels {'-'.join(map(str, meta.network.channels))}"),
        ("trained on", f"{counts}; {training.get('steps', '?')} steps of simulated clicks"
                       + (f" ({training['date']})" if training.get("date") else "")),
        ("held out", f"{len(held)} cases ({', '.join(held)}): benchmarks/bench_correction.py --held-out"),
    ]
    return [name] + [f"  {key:<16} {value}" for key, value in rows]


def read_correction_network(path: str | os.PathLike) -> tuple[CorrectionNet, CorrectionMetadata]:
    """The network in `path` as it was trained (batch norm apart: training can go on from it)."""
    p = Path(path)
    meta = read_correction_metadata(p)
    network = build_network(meta.network)
    network.load_state_dict(checked_state(p, read_tensors(p), network.state_dict(), "the correction network"))
    return network, meta


def load_correction_model(path: str | os.PathLike | None = None, device: str = "auto") -> CorrectionModel:
    """The bundled correction network (None) or the one in `path`, ready for inference."""
    p = Path(path) if path is not None else bundled_correction_weights()
    network, meta = read_correction_network(p)
    where = resolve_device(device)
    place(_folded(network.eval()), where)
    return CorrectionModel(network, meta, where, p)
