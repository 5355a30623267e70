"""Building blocks of the paper's FCN: pre-activation residual units and upscore units.

Every block takes `(x, modality)` so that a normalisation layer can keep statistics per
modality (the `msbn` variant) without the blocks knowing which variant they are in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# BN momentum matching TensorFlow's 0.99 moving average, and its eps.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


class BatchNorm(nn.Module):
    """BatchNorm3d with the `(x, modality)` signature and one scale and shift for all.

    A BN layer shared by alternating MR and CT batches normalises each batch with that
    modality's own statistics in training, but its running statistics blend both, so at test
    time it normalises each modality with the blend. With `modalities`, the layer also keeps
    running statistics per modality (buffers only; the learned scale and shift stay shared)
    and evaluates with them, as training did. `blended = True` evaluates the old way.
    """

    def __init__(self, channels: int, modalities: Sequence[str] = ()) -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.modalities = tuple(modalities)
        self.blended = False
        for m in self.modalities:
            self.register_buffer(f"running_mean_{m}", torch.zeros(channels))
            self.register_buffer(f"running_var_{m}", torch.ones(channels))

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        if modality not in self.modalities:
            return self.bn(x)
        mean, var = getattr(self, f"running_mean_{modality}"), getattr(self, f"running_var_{modality}")
        if self.training:
            with torch.no_grad():
                torch.batch_norm_update_stats(x, mean, var, BN_MOMENTUM)
            return self.bn(x)
        if self.blended:
            mean, var = self.bn.running_mean, self.bn.running_var
        return F.batch_norm(x, mean, var, self.bn.weight, self.bn.bias, False, 0.0, BN_EPS)


class ModalityBatchNorm(nn.Module):
    """One BatchNorm per modality, so each keeps its own running statistics (Dou et al. 2020)."""

    def __init__(self, channels: int, modalities: Sequence[str]) -> None:
        super().__init__()
        self.norms = nn.ModuleDict(
            {m: nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM) for m in modalities}
        )

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return self.norms[modality](x)


NormFactory = Callable[[int], nn.Module]


def conv3d(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv3d:
    padding = (kernel - stride) // 2 if stride > 1 else kernel // 2
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False)


class ResidualUnit(nn.Module):
    """BN → LeakyReLU → conv_a → BN → LeakyReLU → conv_b, plus the shortcut (He et al. 2016)."""

    def __init__(
        self, cin: int, cout: int, stride: int, norm: NormFactory, strided_kernel: int
    ) -> None:
        super().__init__()
        self.stride = stride
        self.cin, self.cout = cin, cout
        self.norm_a = norm(cin)
        kernel = strided_kernel if stride > 1 else 3
        self.conv_a = conv3d(cin, cout, kernel, stride)
        self.norm_b = norm(cout)
        self.conv_b = conv3d(cout, cout, 3)
        self.project = conv3d(cin, cout, 1) if cin > cout else None

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        h = self.conv_a(F.leaky_relu(self.norm_a(x, modality), 0.01))
        h = self.conv_b(F.leaky_relu(self.norm_b(h, modality), 0.01))
        shortcut = F.max_pool3d(x, self.stride) if self.stride > 1 else x
        if self.cout > self.cin:
            grow = self.cout - self.cin
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, 0, grow // 2, grow - grow // 2))
        elif self.project is not None:
            shortcut = self.project(shortcut)
        return h + shortcut


class Scale(nn.Module):
    """`units` residual units; the first carries the stride and changes the channel count."""

    def __init__(
        self, cin: int, cout: int, stride: int, units: int, norm: NormFactory, strided_kernel: int
    ) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            ResidualUnit(cin if i == 0 else cout, cout, stride if i == 0 else 1, norm, strided_kernel)
            for i in range(units)
        )

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        for unit in self.units:
            x = unit(x, modality)
        return x


class Stem(nn.Module):
    """The initial 3×3×3 convolution; its output is skip 0 (no BN or activation after it)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv3d(cin, cout, 3)

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return self.conv(x)


def _bilinear_taps() -> torch.Tensor:
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    return taps[:, None, None] * taps[None, :, None] * taps[None, None, :]


class UpscoreUnit(nn.Module):
    """FCN decoder step in `num_classes` channels: upsample the coarse input with a fixed
    trilinear transposed convolution and add the skip's 1×1×1 conv + BN."""

    def __init__(
        self, cin: int, skip_channels: int, num_classes: int, stride: int, norm: NormFactory,
        upsample: str,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.upsample = upsample
        self.reduce = conv3d(cin, num_classes, 3) if cin != num_classes else None
        self.skip_conv = conv3d(skip_channels, num_classes, 1)
        self.skip_norm = norm(num_classes)
        kernel = _bilinear_taps().expand(num_classes, 1, 4, 4, 4).contiguous()
        self.register_buffer("up_kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, modality: str) -> torch.Tensor:
        if self.reduce is not None:
            x = self.reduce(x)
        if self.stride > 1:
            if self.upsample == "transposed":
                x = F.conv_transpose3d(
                    x, self.up_kernel.to(x.dtype), stride=2, padding=1, groups=x.shape[1]
                )
            else:
                x = F.interpolate(x, scale_factor=self.stride, mode="trilinear")
        return x + self.skip_norm(self.skip_conv(skip), modality)


class Decoder(nn.Module):
    """Upscore from the bottleneck through skips 3, 2, 1, 0, then a final 1×1×1 conv."""

    def __init__(
        self, filters: Sequence[int], strides: Sequence[int], num_classes: int,
        norm: NormFactory, upsample: str,
    ) -> None:
        super().__init__()
        steps = []
        cin = filters[4]
        for level in (3, 2, 1, 0):
            steps.append(
                UpscoreUnit(cin, filters[level], num_classes, strides[level + 1], norm, upsample)
            )
            cin = num_classes
        self.steps = nn.ModuleList(steps)
        self.final = conv3d(num_classes, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor], modality: str) -> torch.Tensor:
        *skips, x = features
        for step, skip in zip(self.steps, reversed(skips), strict=True):
            x = step(x, skip, modality)
        return self.final(x)
