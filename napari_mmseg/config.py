"""Configuration as small dataclasses: the network's shape and the training recipe, and the
presets that pair them (`paper` for a GPU, `light` for a 2-core CPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

VARIANTS = ("individual", "joint", "v1", "v2", "v3", "v4", "msbn")
# The bundled weights to use when nobody says: one network for CT and MR, the best on CT and
# within 0.02 of the best on MR in the cross-validated study at equal exposure, in-domain and
# under contrast shifts, and the best shipped file on every benchmark column
# (docs/results.md and docs/model-card.md).
DEFAULT_VARIANT = "msbn"
# How long the study trains a multi-modal network: as many steps per modality as an
# individual network gets (2N in all), or the same total as the paper did (N).
PROTOCOLS = ("equal-exposure", "same-total")
# Where the networks run (`device.resolve_device`); here, apart from torch, so that the
# command line parses its arguments without importing it.
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class NetworkConfig:
    """The FCN of the paper's Figure 1; every variant shares this topology."""

    filters: tuple[int, ...] = (16, 64, 128, 256, 512)
    strides: tuple[int, ...] = (1, 2, 2, 2, 1)
    units_per_scale: int = 3
    num_classes: int = 5
    in_channels: int = 1
    # Kernel of the strided convolution that opens a downsampling scale: the released code
    # used kernel = stride (2); the paper's text says twice the stride (4).
    strided_kernel: int = 2
    # "transposed": fixed trilinear transposed convolution (the released code);
    # "interpolate": F.interpolate(trilinear).
    upsample: str = "transposed"

    def __post_init__(self) -> None:
        if len(self.filters) != 5 or len(self.strides) != 5:
            raise ValueError("filters and strides need five entries (initial conv + 4 scales)")
        if self.strided_kernel not in (2, 4):
            raise ValueError("strided_kernel must be 2 (= stride) or 4 (twice the stride)")
        if self.upsample not in ("transposed", "interpolate"):
            raise ValueError("upsample must be 'transposed' or 'interpolate'")

    @property
    def size_multiple(self) -> int:
        """Spatial input sizes must be multiples of this (the total downsampling)."""
        m = 1
        for s in self.strides:
            m *= s
        return m

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**kw)


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges; `enabled=False` gives the paper's noise-and-offset only."""

    enabled: bool = True
    ct_window_shift_hu: float = 60.0  # random HU offset before the window, ± this
    ct_window_scale: tuple[float, float] = (0.8, 1.2)  # random HU scale before the window
    p_class_wise: float = 0.5  # organ-wise brightness/contrast (enhancement differences)
    class_shift: float = 0.3  # ± this in the unit range
    class_scale: tuple[float, float] = (0.6, 1.4)
    # a random intensity curve through random control points; of the other patches, a random
    # convolutional remapping (below). With 0.6 and 0.75 one patch in ten kept its grey levels;
    # with 0.4 and 0.5, three in ten, and on the fold-0 held-out patients 800 steps gained in
    # every column, contrast shifts and the T1 proxy included (CT +0.009 as is, +0.008
    # shifted; MR +0.009, +0.008; docs/results.md#training-recipe)
    p_curve: float = 0.4
    p_curve_non_monotone: float = 0.35  # of those, non-monotone (otherwise monotone)
    p_curve_inverted: float = 0.3  # of the monotone ones, decreasing (T1 ↔ T2)
    curve_points: int = 4
    # of the patches without a curve: a random convolutional remapping (GIN + IPA) instead;
    # in the recipe trial (docs/results.md) level in-domain and under contrast shifts, +0.04
    # (CT) and +0.08 (MR) with the spleen enlarged (in the kidneys that warp squeezes)
    p_convolutional: float = 0.5
    p_gamma: float = 0.4
    gamma: tuple[float, float] = (0.5, 2.0)
    p_bias: float = 0.4
    bias_strength: float = 0.35  # the field's log amplitude
    p_blur: float = 0.15
    blur_sigma: tuple[float, float] = (0.5, 1.2)  # voxels
    p_thick_slices: float = 0.2
    thick_factor: tuple[int, int] = (2, 3)  # slices averaged along z
    p_slab: float = 0.1  # only a thin slab of slices (a 20-slice MR)
    slab_slices: tuple[int, int] = (12, 32)
    p_spatial: float = 0.5
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.85, 1.15)
    # each axis scaled by a further exp(±this) of its own, so organs also change shape (a liver
    # whose left lobe reaches further across). Off: at 0.15 for 800 steps the held-out MR liver
    # rose 0.846 -> 0.852 but MR as is fell 0.009, one patient's spleen split in two
    # (docs/results.md#what-did-not-help)
    anisotropy: float = 0.0
    # of the rotated and scaled patches: a region magnified (organs larger than any we have).
    # At 0.5 for 800 steps the trial lost 0.02 on CT as is; at 0.25 for 2000 steps it gained
    # +0.05 (CT) and +0.09 (MR) with the spleen enlarged, and the two real enlarged MR spleens
    # of fold 0, with nothing lost as is (docs/results.md#training-recipe)
    p_enlarge: float = 0.25
    enlarge_factor: tuple[float, float] = (1.2, 2.0)  # in length
    enlarge_radius: tuple[float, float] = (0.15, 0.4)  # of the patch's extent, before magnifying
    # patches drawn from the scan at twice the spacing, so that the network also knows organs
    # at half their size: on that grid (inference's context pass) an organ twice too large
    # looks normal, and a window holds the whole abdomen (docs/results.md#context-pass)
    p_coarse: float = 0.3
    # CT patches shown as gradient-echo MR shows fat: bright, and at fat–water boundaries
    # (in opposed phase) the dark rim of cancelled signal, from each voxel's fat fraction in HU
    p_fat_signal: float = 0.0
    p_opposed_phase: float = 0.5  # of those: opposed phase (dark rims), otherwise in phase
    fat_brightness: tuple[float, float] = (0.6, 1.0)  # in the unit range
    # of the MR batches' patches: a CT patch with its labels, fat shown as gradient-echo MR
    # shows it and normalised as an MR scan, so that the MR stream meets bright fat (T1),
    # which T2-SPIR (fat suppressed) never shows it; variants trained on both modalities.
    # Off: at 0.25 the trial gained MR +0.006 and lost MR slabs 0.022, the enlarged MR spleen
    # 0.056 (docs/results.md#what-did-not-help)
    p_ct_as_mr: float = 0.0

    def changed(self, spec: str) -> AugmentationConfig:
        """This recipe with "field=value,field=value" changed: how the command line and the
        recipe trial name a variation of it. Raises ValueError naming an unknown field."""
        # annotations are strings here (`from __future__ import annotations`); ranges are not settable
        settable = {f.name: f.type for f in fields(self) if f.type in ("bool", "float")}
        changes: dict[str, float | bool] = {}
        for item in filter(None, spec.split(",")):
            key, _, value = (part.strip() for part in item.partition("="))
            if key not in settable:
                raise ValueError(f"{key!r} is not a probability, number or switch of the augmentation "
                                 f"(one of {', '.join(settable)})")
            changes[key] = value.lower() in ("true", "1", "on") if settable[key] == "bool" else float(value)
        return replace(self, **changes)


@dataclass(frozen=True)
class TrainingConfig:
    spacing_mm: float = 2.0
    patch_size: int = 64
    batch_size: int = 16
    steps: int = 10_000
    lr_single: float = 1e-3  # individual and joint
    lr_dual: float = 1e-4  # dual-stream variants and msbn
    adam_eps: float = 1e-5
    loss: str = "dice"  # "dice" (the paper's) or "dice_ce"
    lr_schedule: str = "constant"  # the paper's; "poly" decays to 0 over the steps
    # bfloat16 autocast where the device has it (see device.mixed_precision); weights stay float32
    mixed_precision: bool = True
    noise_sigma: float = 0.1
    offset_sigma: float = 0.1
    # The paper's augmentation is noise and offset only; the appearance augmentation is ours.
    augmentation: AugmentationConfig = field(default_factory=lambda: AugmentationConfig(enabled=False))
    validate_every: int = 500
    checkpoint_every: int = 250
    seed: int = 0

    def lr_for(self, variant: str) -> float:
        return self.lr_single if variant in ("individual", "joint") else self.lr_dual

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    name: str
    network: NetworkConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def with_augmentation(self, spec: str | None) -> Preset:
        """This preset with its augmentation changed by "field=value,..." (see
        `AugmentationConfig.changed`); None or "" leaves it as it is."""
        if not spec:
            return self
        return replace(self, training=replace(self.training, augmentation=self.training.augmentation.changed(spec)))


PRESETS: dict[str, Preset] = {
    "paper": Preset("paper", NetworkConfig(), TrainingConfig()),
    # Same topology, narrower and shallower, at 3 mm: fits a 2-core CPU. The appearance
    # augmentation: robust to CT phases and MR sequences the training data does not hold.
    "light": Preset(
        "light",
        NetworkConfig(filters=(16, 32, 64, 128, 128), units_per_scale=1),
        TrainingConfig(
            spacing_mm=3.0,
            patch_size=64,
            batch_size=2,
            steps=2000,
            lr_single=1e-3,
            lr_dual=1e-3,
            loss="dice_ce",
            lr_schedule="poly",
            validate_every=500,
            checkpoint_every=100,
            augmentation=AugmentationConfig(),
        ),
    ),
}
