"""Training-patch augmentation that changes how organs look, never where they are.

Why: the networks meet CT phases and MR sequences they were never trained on (non-contrast
CT, T1 MR). Following SLAug (random intensity curves, globally and per class) and GIN
(random non-monotone remapping by shallow random convolutional networks, blended through a
smooth random mask as its IPA does), every patch is shown with a random appearance: a random
CT window (as if another phase or scanner), organ-wise brightness and contrast (as if
enhanced differently), a random intensity curve, monotone or not (T2 ↔ T1 contrasts), a
random convolutional remapping (local texture and edges of another sequence, e.g. the dark
rims at fat–water boundaries of gradient-echo MR), for CT optionally fat as gradient-echo MR
shows it (bright, dark-rimmed in opposed phase), gamma, a smooth bias field, blur or thick
slices, noise; plus small rotations and scaling, and now and then a region around the
patch's centre magnified: organs larger than the training data holds (an enlarged spleen).
Never a flip: a mirrored abdomen swaps the right and the left kidney.

Intensity changes work in a unit range per volume (the CT window, or the MR volume's own
clip range), and the result is normalised as the weights' normalisation would normalise a
whole scan of that appearance, so training and inference see the same statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_mmseg.config import AugmentationConfig
from napari_mmseg.organs import NUM_CLASSES
from napari_mmseg.training.organ_enlargement import magnify_grid


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


AIR = 0.05  # the bottom of the unit range stays dark: air is dark in every CT and MR


def random_curve(
    rng: np.random.Generator, points: int, monotone: bool, inverted: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Control points (x, y) of a piecewise-linear map of [0, 1] onto [0, 1] that keeps air
    at 0 and remaps the body's intensities: increasing, decreasing, or neither."""
    xp = np.concatenate([[0.0, AIR], np.sort(rng.uniform(AIR, 1, points)), [1.0]])
    body = rng.uniform(0.1, 1, points + 2)
    if monotone:
        body = np.sort(body)[::-1] if inverted else np.sort(body)
    return xp, np.concatenate([[0.0], body])


@dataclass(frozen=True)
class GlobalRemap:
    """The volume-wide part of a patch's new appearance (curve, then gamma): applied to a
    sample of the volume too, so the patch can be normalised as its whole scan would be."""

    curve: tuple[np.ndarray, np.ndarray] | None
    gamma: float | None

    def __call__(self, u: np.ndarray) -> np.ndarray:
        if self.curve is not None:
            u = np.interp(u, *self.curve).astype(np.float32)
        if self.gamma is not None:
            u = np.power(np.clip(u, 0, 1), self.gamma, dtype=np.float32)
        return u

    @classmethod
    def draw(cls, cfg: AugmentationConfig, rng: np.random.Generator) -> GlobalRemap:
        curve = None
        if rng.random() < cfg.p_curve:
            non_monotone = rng.random() < cfg.p_curve_non_monotone
            curve = random_curve(rng, cfg.curve_points, not non_monotone,
                                 (not non_monotone) and rng.random() < cfg.p_curve_inverted)
        gamma = None
        if rng.random() < cfg.p_gamma:
            gamma = math.exp(rng.uniform(math.log(cfg.gamma[0]), math.log(cfg.gamma[1])))
        return cls(curve, gamma)


def class_wise(u: np.ndarray, labels: np.ndarray, cfg: AugmentationConfig, rng: np.random.Generator) -> np.ndarray:
    """Each class present gets its own brightness and contrast around its mean."""
    out = u.copy()
    for c in range(NUM_CLASSES):
        mask = labels == c
        if not mask.any():
            continue
        values = u[mask]
        centre = float(values.mean())
        scale = _uniform(rng, cfg.class_scale)
        shift = float(rng.uniform(-cfg.class_shift, cfg.class_shift))
        out[mask] = (values - centre) * scale + centre + shift
    return np.clip(out, 0.0, 1.0, out=out)


FAT_HU = -100.0  # pure fat
WATER_HU = 20.0  # fat-free soft tissue (below most organs, above fluid): no fat signal above
AIR_HU = -190.0  # below this, air or lung (partial volumes of air): no fat signal


def fat_fraction(hu: np.ndarray) -> np.ndarray:
    """Each CT voxel's fat fraction, from its HU between fat and fat-free tissue: 1 in fat,
    about 0.5 in a voxel that straddles a fat–organ boundary, 0 in organs and in air."""
    f = np.clip((WATER_HU - hu) / (WATER_HU - FAT_HU), 0.0, 1.0).astype(np.float32)
    f[hu < AIR_HU] = 0.0
    return f


def fat_signal(u: np.ndarray, fat: np.ndarray, brightness: float, opposed: bool) -> np.ndarray:
    """Gradient-echo MR's fat from a CT patch: voxel signal = water part ± fat part. In phase
    the two add (fat bright); in opposed phase they subtract, so voxels half fat and half
    water, at every fat–organ boundary, go dark (the "India ink" rim of T1 opposed phase)."""
    water, lipid = (1.0 - fat) * u, fat * np.float32(brightness)
    return np.abs(water - lipid) if opposed else water + lipid


def random_convolutions(x: torch.Tensor, rng: np.random.Generator, nets: int = 2, layers: int = 4,
                        width: int = 2) -> torch.Tensor:
    """GIN (Ouyang et al., TMI 2022): a (z, y, x) tensor through `nets` shallow networks of
    random 1³ or 3³ convolutions and leaky ReLUs (run as one grouped convolution), each
    mixed with the input by a random weight and rescaled to the input's Frobenius norm.
    Returns (nets, z, y, x)."""
    out, channels = x.expand(1, nets, *x.shape), 1
    for layer in range(layers):
        width_out = 1 if layer == layers - 1 else width
        k = int(rng.choice((1, 3)))
        kernel = torch.from_numpy(rng.standard_normal((nets * width_out, channels, k, k, k)).astype(np.float32))
        shift = torch.from_numpy(rng.standard_normal(nets * width_out).astype(np.float32))
        if k > 1:
            out = F.pad(out, [k // 2] * 6, mode="replicate")
        out = F.conv3d(out, kernel.to(x.device), shift.to(x.device), groups=nets)
        if layer < layers - 1:
            out = F.leaky_relu(out)
        channels = width_out
    alpha = torch.from_numpy(rng.random(nets).astype(np.float32)).to(x.device).view(nets, 1, 1, 1)
    mixed = alpha * out[0] + (1 - alpha) * x
    norms = torch.linalg.vector_norm(mixed.flatten(1), dim=1).view(nets, 1, 1, 1)
    return mixed * (torch.linalg.vector_norm(x) / (norms + 1e-5))


def smooth_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [0, 1]: where one appearance gives way to another."""
    return 1.0 / (1.0 + bias_field(shape, 2.0, rng) ** 2)


def convolutional_remap(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GIN with IPA's blending: two random convolutional remappings of a unit-range patch,
    mixed through a smooth random mask, back in the unit range (1st–99th percentile), air
    kept dark."""
    first, second = random_convolutions(torch.from_numpy(np.ascontiguousarray(u)), rng).numpy()
    mask = smooth_mask(u.shape, rng)
    out = first * mask + second * (1 - mask)
    lo, hi = np.percentile(out[::2, ::2, ::2], (1, 99))
    out = np.clip((out - lo) / max(float(hi - lo), 1e-6), 0, 1).astype(np.float32)
    out[u <= AIR] = 0.0
    return out


def bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field: a 4×4×4 random grid of log-gains, upsampled."""
    coarse = torch.from_numpy(rng.normal(0, strength, (1, 1, 4, 4, 4)).astype(np.float32))
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0]
    return torch.exp(field).numpy()


def thick_slices(x: torch.Tensor, factor: int) -> torch.Tensor:
    """As if acquired with `factor` times thicker slices: average along z, interpolate back."""
    depth = x.shape[-3]
    pooled = F.avg_pool3d(x, (factor, 1, 1), ceil_mode=True)
    return F.interpolate(pooled, size=(depth, *x.shape[-2:]), mode="trilinear", align_corners=False)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (N, C, z, y, x) tensor."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    taps /= taps.sum()
    channels = x.shape[1]
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = taps.numel()
        kernel = taps.view(1, 1, *shape).repeat(channels, 1, 1, 1, 1)
        padding = [0, 0, 0]
        padding[axis] = radius
        x = F.conv3d(F.pad(x, [p for p in reversed(padding) for _ in range(2)], mode="replicate"),
                     kernel, groups=channels)
    return x


def spatial_grid(
    patch: int, cfg: AugmentationConfig, rng: np.random.Generator, margin: int, device: torch.device | None = None
) -> torch.Tensor:
    """Sampling grid (1, p, p, p, 3) into a crop of `patch + 2 * margin` voxels per axis:
    a small rotation about each axis and a scaling around the crop's centre, isotropic unless
    `cfg.anisotropy`; every factor is positive, so nothing is ever mirrored."""
    angles = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, 3))
    scales = np.full(3, _uniform(rng, cfg.scale))
    if cfg.anisotropy:  # drawn only when asked: the default recipe's random stream stays as it was
        scales *= np.exp(rng.uniform(-cfg.anisotropy, cfg.anisotropy, 3))
    cz, cy, cx = np.cos(angles)
    sz, sy, sx = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    matrix = (rz @ ry @ rx) @ np.diag(scales) * (patch / (patch + 2 * margin))
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = torch.from_numpy(matrix.astype(np.float32))
    return F.affine_grid(theta.to(device), [1, 1, patch, patch, patch], align_corners=False)


def enlarged(grid: torch.Tensor, cfg: AugmentationConfig, rng: np.random.Generator) -> torch.Tensor:
    """`spatial_grid`'s grid (1, p, p, p, 3) with the region around the patch's centre
    magnified by a random factor: whatever organ is there looks larger than life."""
    p = grid.shape[1]
    centre = grid[0, p // 2, p // 2, p // 2]
    extent = float((grid[0, -1, -1, -1] - grid[0, 0, 0, 0]).abs().max())  # the patch's span in grid units
    inner = _uniform(rng, cfg.enlarge_radius) * extent
    return magnify_grid(grid, centre, _uniform(rng, cfg.enlarge_factor), inner, inner * 2.5)
