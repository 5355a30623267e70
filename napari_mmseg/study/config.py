"""What a run of the paper's study is: datasets, networks, protocols, splits and budget."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from napari_mmseg.config import PRESETS, PROTOCOLS, Preset


@dataclass(frozen=True)
class StudyConfig:
    out_dir: Path
    ct: Path | None = None  # dataset folders, or
    bundle: Path | None = None  # prepared cases (`training_data.save_bundle`), e.g. on a GPU machine
    mr: Path | None = None
    totalseg: Path | None = None  # folder of TotalSegmentator's example CT and MR
    preset: str = "light"
    variants: tuple[str, ...] = ("individual", "joint", "msbn", "v4")
    protocols: tuple[str, ...] = PROTOCOLS
    repetitions: int = 3
    folds: int = 2
    steps: int | None = None  # N, per modality (default: the preset's)
    batch_size: int | None = None  # default: the preset's
    curve_points: int = 8  # validation Dice this many times along each run of repetition 0
    workers: int = 1
    device: str = "auto"
    shipping_steps: int | None = None  # per modality: also train each variant on every case
    stop_after_s: float | None = None  # tasks not begun by then are left for a later call
    only_fold: int | None = None  # run this fold alone (a longer learning-curve run)
    augment: str | None = None  # the preset's augmentation changed, "field=value,..." (AugmentationConfig)

    def preset_used(self) -> Preset:
        preset = PRESETS[self.preset].with_augmentation(self.augment)
        if self.batch_size is not None:
            preset = replace(preset, training=replace(preset.training, batch_size=self.batch_size))
        return preset

    @property
    def steps_per_modality(self) -> int:
        return self.steps if self.steps is not None else PRESETS[self.preset].training.steps
