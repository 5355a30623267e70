"""The paper's networks as one class: which parts of the FCN exist once per modality
(a "stream") and which are shared is the only thing that differs between variants."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from napari_mmseg.config import VARIANTS, NetworkConfig
from napari_mmseg.models.blocks import BatchNorm, Decoder, ModalityBatchNorm, NormFactory, Scale, Stem
from napari_mmseg.organs import MODALITIES

PARTS = ("stem", "scale1", "scale2", "scale3", "bottleneck", "decoder")

# Parts that get one copy of the weights per modality; the others are shared.
STREAM_PARTS: dict[str, tuple[str, ...]] = {
    "individual": (),
    "joint": (),
    "v1": ("stem", "scale1", "scale2", "scale3", "bottleneck"),
    "v2": ("stem", "scale1"),
    "v3": ("decoder",),
    "v4": ("stem", "scale1", "scale2", "scale3", "decoder"),
    "msbn": (),
}


DUAL_STREAM = ("v1", "v2", "v3", "v4")


def use_blended_statistics(model: nn.Module, blended: bool = True) -> None:
    """Evaluate shared BN layers with running statistics blended over both modalities (what
    a plain shared BN does) instead of per modality; the study measures the difference."""
    for module in model.modules():
        if isinstance(module, BatchNorm):
            module.blended = blended


class PerModality(nn.Module):
    """One copy of a part per modality; the batch's modality picks the copy."""

    def __init__(self, make: Callable[[], nn.Module], modalities: Sequence[str]) -> None:
        super().__init__()
        self.streams = nn.ModuleDict({m: make() for m in modalities})

    def forward(self, x, modality: str) -> torch.Tensor:
        return self.streams[modality](x, modality)


class MultiModalFCN(nn.Module):
    """`model(x, modality)` → logits (N × classes × D × H × W). A batch holds one modality."""

    def __init__(
        self, variant: str, config: NetworkConfig, modalities: Sequence[str] = MODALITIES
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
        modalities = tuple(modalities)
        if variant == "individual" and len(modalities) != 1:
            raise ValueError("An individual network serves exactly one modality.")
        if variant != "individual" and set(modalities) != set(MODALITIES):
            raise ValueError(f"Variant {variant} serves both CT and MR.")
        self.variant = variant
        self.config = config
        self.modalities = modalities

        f, s, c = config.filters, config.strides, config
        streams = STREAM_PARTS[variant]

        def norm_for(part: str) -> NormFactory:
            if variant == "msbn":
                return lambda ch: ModalityBatchNorm(ch, modalities)
            if variant in DUAL_STREAM and part not in streams:  # shared by modalities the net tells apart
                return lambda ch: BatchNorm(ch, modalities)
            return BatchNorm

        makers = {
            "stem": lambda norm: Stem(c.in_channels, f[0]),
            "bottleneck": lambda norm: Scale(f[3], f[4], s[4], c.units_per_scale, norm, c.strided_kernel),
            "decoder": lambda norm: Decoder(f, s, c.num_classes, norm, c.upsample),
        }
        for i in (1, 2, 3):
            makers[f"scale{i}"] = (
                lambda norm, i=i: Scale(f[i - 1], f[i], s[i], c.units_per_scale, norm, c.strided_kernel)
            )
        for part in PARTS:
            make = partial(makers[part], norm_for(part))
            self.add_module(part, PerModality(make, modalities) if part in streams else make())

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        if modality not in self.modalities:
            raise ValueError(
                f"This {self.variant} network serves {'/'.join(self.modalities)}, not {modality}."
            )
        m = self.size_multiple
        if any(n % m for n in x.shape[2:]):
            raise ValueError(f"Spatial input sizes must be multiples of {m}, got {tuple(x.shape[2:])}")
        features = [self.stem(x, modality)]
        for part in ("scale1", "scale2", "scale3", "bottleneck"):
            features.append(getattr(self, part)(features[-1], modality))
        return self.decoder(features, modality)

    @property
    def size_multiple(self) -> int:
        return self.config.size_multiple


def parameter_modality(name: str) -> str | None:
    """The modality a parameter belongs to (by its name), or None when it is shared."""
    parts = name.split(".")
    for m in MODALITIES:
        if m in parts:
            return m
    return None
