"""What a weights file is, in the few lines a user reads before trusting it: the network, the
grid it works on, what it was trained on and how, and the held-out Dice the file records.
The full metadata (`mmseg info --json`) keeps everything else, including where each
training run wrote its files; the summary leaves such paths out."""

from __future__ import annotations

import re
from collections import Counter

from napari_mmseg.config import VARIANTS
from napari_mmseg.models.dual_stream import STREAM_PARTS
from napari_mmseg.models.weights import ModelMetadata, bundled_name, bundled_weights_dir, read_metadata
from napari_mmseg.organs import MODALITIES, ORGAN_BY_NAME

# Case-name prefixes of the datasets the trainer reads, as people call the datasets.
DATASET_NAMES = {"btcv": "BTCV", "chaos": "CHAOS T2-SPIR", "amos": "AMOS", "ts": "TotalSegmentator"}
_TRAINED_ON = re.compile(r"(\w+): (\d+) cases \(([^)]*)\)")


def variant_text(variant: str) -> str:
    """Which parts the network shares between CT and MR, in words."""
    if variant == "individual":
        return "one network for one modality"
    if variant == "joint":
        return "one network for CT and MR, every part shared"
    if variant == "msbn":
        return "one network for CT and MR, convolutions shared, batch norm per modality"
    return f"dual-stream: {', '.join(STREAM_PARTS[variant])} per modality, the rest shared"


def trained_on_text(trained_on: str) -> str:
    """'CT: 24 cases (btcv_01, …); MR: 16 cases (chaos_02, …)' → 'CT 24 cases (BTCV); MR 16 cases (CHAOS T2-SPIR)'."""
    parts = []
    for modality, count, names in _TRAINED_ON.findall(trained_on):
        prefixes = Counter(re.match(r"[a-z]*", n.strip().lower()).group() for n in names.split(",") if n.strip())
        datasets = ", ".join(DATASET_NAMES.get(p, p) for p in prefixes if p)
        parts.append(f"{modality} {count} cases" + (f" ({datasets})" if datasets else ""))
    return "; ".join(parts) or "not recorded"


def training_text(training: dict) -> str:
    """The recipe in one line: preset, this file's own steps or averaging, and how many earlier
    runs it records (in full with --json)."""
    text = f"preset {training.get('preset', 'unknown')}"
    if "steps" in training:
        text += f", {format(int(training['steps']), ',').replace(',', ' ')} steps"
        if training.get("init_weights"):
            text += " fine-tuning an earlier network"
    if "averaged_from" in training:
        text += f", an average of {len(training['averaged_from'])} fine-tunes of one start"
    earlier = len(training.get("earlier", []))
    if earlier:
        text += f"; {earlier} earlier runs and averages recorded"
    return text


def validation_text(validation: dict, modalities: tuple[str, ...]) -> list[str]:
    """Held-out Dice per modality (mean, then per organ), or why the file records none."""
    lines = []
    for modality in modalities:
        scores = validation.get(modality)
        if isinstance(scores, dict) and "mean" in scores:
            cases = len(validation.get("cases", {}).get(modality, []))
            organs = ", ".join(f"{ORGAN_BY_NAME[o].display_name.lower()} {scores[o]:.3f}"
                               for o in ORGAN_BY_NAME if o in scores)
            lines.append(f"{modality} {scores['mean']:.3f} on {cases} held-out cases ({organs})")
    if lines:
        return lines
    held_out = any(validation.get("cases", {}).values())
    why = "none recorded in the file" if held_out or not validation else "none held out: trained on every case"
    return [f"{why} (held-out results of this recipe: docs/model-card.md)"]


def summary_lines(meta: ModelMetadata, name: str) -> list[str]:
    grid = f"{meta.spacing_mm:g} mm voxels, windows of {meta.patch_size}³"
    if meta.context_weight:
        grid += f", with a coarse context pass (weight {meta.context_weight:g})"
    rows = [
        ("variant", f"{meta.variant} ({variant_text(meta.variant)})"),
        ("modalities", ", ".join(meta.modalities)),
        ("grid", grid),
        ("trained on", trained_on_text(meta.trained_on)),
        ("training", training_text(meta.training)),
    ]
    rows += [("validation Dice" if i == 0 else "", line)
             for i, line in enumerate(validation_text(meta.validation_dice, meta.modalities))]
    return [name] + [f"  {key:<17}{value}" for key, value in rows]


def bundled_lines() -> list[str]:
    """One line per segmentation network shipped with the package: file, variant, modalities."""
    names = sorted({bundled_name(v, m) for v in VARIANTS for m in MODALITIES})
    lines = []
    for path in (bundled_weights_dir() / n for n in names):
        if path.is_file():
            meta = read_metadata(path)
            lines.append(f"  {path.name:<28}{meta.variant:<12}{', '.join(meta.modalities)}")
    return lines
