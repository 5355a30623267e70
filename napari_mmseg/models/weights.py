"""The one weights format: safetensors tensors plus JSON metadata that carries everything
inference needs (variant, network configuration, spacing, patch size, normalisation).

Loading never unpickles anything: safetensors holds only tensors and strings.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch

from napari_mmseg.config import VARIANTS, NetworkConfig
from napari_mmseg.errors import WeightsError
from napari_mmseg.models.dual_stream import MultiModalFCN
from napari_mmseg.models.metadata_schema import metadata_problem
from napari_mmseg.models.weights_file import checked_state, read_metadata_json, read_tensors, write_weights_file
from napari_mmseg.organs import ORGANS, check_modality
from napari_mmseg.preprocessing import IntensityNorm

FORMAT_VERSION = 2  # 2: context_weight (older readers would skip the context pass: they must refuse)


@dataclass
class ModelMetadata:
    variant: str
    modalities: tuple[str, ...]
    network: NetworkConfig
    spacing_mm: float
    patch_size: int
    normalization: dict[str, IntensityNorm]
    classes: dict[int, str] = field(
        default_factory=lambda: {0: "background", **{o.label: o.name for o in ORGANS}}
    )
    trained_on: str = ""
    training: dict = field(default_factory=dict)
    validation_dice: dict = field(default_factory=dict)
    # the context pass's share of the probabilities (`context_grid.py`); 0: none
    context_weight: float = 0.0
    format_version: int = FORMAT_VERSION

    @property
    def voxel_ml(self) -> float:
        """The volume of one voxel of the model's grid, in millilitres."""
        return self.spacing_mm**3 / 1000.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": self.format_version,
                "variant": self.variant,
                "modalities": list(self.modalities),
                "network": self.network.to_dict(),
                "spacing_mm": self.spacing_mm,
                "patch_size": self.patch_size,
                "normalization": {m: n.to_dict() for m, n in self.normalization.items()},
                "classes": {str(k): v for k, v in self.classes.items()},
                "trained_on": self.trained_on,
                "training": self.training,
                "validation_dice": self.validation_dice,
                "context_weight": self.context_weight,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        d = json.loads(text)
        return cls(
            variant=d["variant"],
            modalities=tuple(d["modalities"]),
            network=NetworkConfig.from_dict(d["network"]),
            spacing_mm=float(d["spacing_mm"]),
            patch_size=int(d["patch_size"]),
            normalization={m: IntensityNorm.from_dict(n) for m, n in d["normalization"].items()},
            classes={int(k): v for k, v in d.get("classes", {}).items()},
            trained_on=d.get("trained_on", ""),
            training=d.get("training", {}),
            validation_dice=d.get("validation_dice", {}),
            context_weight=float(d.get("context_weight", 0.0)),
            format_version=int(d["format_version"]),
        )


@dataclass
class LoadedModel:
    model: MultiModalFCN
    meta: ModelMetadata
    path: Path


def build_model(meta: ModelMetadata) -> MultiModalFCN:
    return MultiModalFCN(meta.variant, meta.network, meta.modalities)


def save_weights(
    model: MultiModalFCN, meta: ModelMetadata, path: str | os.PathLike, half: bool = False, overwrite: bool = True
) -> Path:
    """Write tensors and metadata whole or not at all (replacing an older file of that name
    only with `overwrite`); `half` stores float tensors as float16."""
    metadata_json = meta.to_json()
    problem = metadata_problem(json.loads(metadata_json))
    if problem is not None:  # never write a file that `load_weights` would refuse
        raise WeightsError(f"Cannot write {path}: its metadata would not load back ({problem}).")
    return write_weights_file(path, model.state_dict(), metadata_json, half=half, overwrite=overwrite)


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    p = Path(path)
    raw, doc = read_metadata_json(p)
    if isinstance(doc, dict) and doc.get("kind") == "correction":
        raise WeightsError(f"{p.name} holds the correction network of `mmseg refine`, not a segmentation network: "
                           "give a segmentation weights file.")
    version = doc.get("format_version") if isinstance(doc, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise WeightsError(f"{p} uses weights format {version}; upgrade napari-mmseg.")
    problem = metadata_problem(doc)
    if problem is not None:
        raise WeightsError(f"{p} has invalid napari-mmseg metadata: {problem}.")
    try:
        return ModelMetadata.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{p} has unreadable napari-mmseg metadata ({e}).") from None


def load_weights(
    path: str | os.PathLike, variant: str | None = None, modality: str | None = None
) -> LoadedModel:
    """Build the network the metadata describes and fill it; check it is the one asked for."""
    p = Path(path)
    meta = read_metadata(p)
    if variant is not None and meta.variant != variant:
        raise WeightsError(f"{p.name} holds weights for variant {meta.variant}, not {variant}.")
    if modality is not None and check_modality(modality) not in meta.modalities:
        raise WeightsError(
            f"{p.name} ({meta.variant}) was trained for {'/'.join(meta.modalities)}, not {modality}."
        )
    with torch.device("meta"):  # shapes only: nothing allocated before the file is known to match
        expected = build_model(meta).state_dict()
    stored = read_tensors(p)
    _fill_per_modality_statistics(stored, expected)
    state = checked_state(p, stored, expected, f"a {meta.variant} network")
    model = build_model(meta)
    model.load_state_dict(state)
    model.eval()
    return LoadedModel(model, meta, p)


def average_weights(paths: Sequence[str | os.PathLike]) -> LoadedModel:
    """The mean of several networks fine-tuned from one start (a "model soup", Wortsman et
    al. 2022): steadier on the columns where single runs swing from round to round. The
    files must be the same network with the same preprocessing; the metadata is the first
    one's, with `training` naming the files averaged and, in `earlier`, how each was made."""
    if len(paths) < 2:
        raise WeightsError("Averaging needs at least two weights files.")
    loaded = [load_weights(p) for p in paths]
    first = loaded[0].meta

    def network(m: ModelMetadata) -> tuple:
        return m.variant, m.modalities, m.network, m.spacing_mm, m.patch_size, m.context_weight

    for other in loaded[1:]:
        if not (network(other.meta) == network(first)
                and _same_normalization(other.meta.normalization, first.normalization)):
            raise WeightsError(
                f"{other.path} is not the same network as {loaded[0].path} (variant, network, spacing, "
                "patch size, normalisation and context weight must all match): only fine-tunes of one start "
                "can be averaged."
            )
    states = [m.model.state_dict() for m in loaded]
    mean = {
        k: torch.stack([s[k].float() for s in states]).mean(0).to(t.dtype) if t.is_floating_point() else t
        for k, t in states[0].items()
    }
    model = loaded[0].model  # already this network, in eval mode: it takes the mean
    model.load_state_dict(mean)
    # one record a file, though a fine-tune names its start by file name and the average by path
    records: list[dict] = []
    for p, m in zip(paths, loaded, strict=True):
        records += [r for r in checked_lineage(m.meta.training, str(p))
                    if not any(_same_file(r, seen) for seen in records)]
    training = {"averaged_from": [str(p) for p in paths], "earlier": records}
    presets = {m.meta.training.get("preset") for m in loaded}
    if len(presets) == 1:
        training = {"preset": presets.pop(), **training}
    return LoadedModel(model, replace(first, training=training, validation_dice={}), loaded[0].path)


# kept out of a file's own record in its descendants' `earlier` lists: the ancestors are
# listed there already, and a run's validation curve is its own file's business
_NOT_INHERITED = ("earlier", "earlier_averages", "validation_history")


def lineage(training: dict, file: str) -> list[dict]:
    """How the file with this `training` record was made, as flat records oldest first:
    its ancestors', then its own (a run's settings, or the files it averaged) named `file`.
    Flat, because a tree nested two levels a round until the metadata was too deep to load;
    a fine-tune records it for its start, an average for each file it averages."""
    earlier = list(training.get("earlier", []))
    legacy: list[dict] = list(training.get("earlier_averages", []))  # files averaged before `earlier` existed
    own = {k: v for k, v in training.items() if k not in _NOT_INHERITED}
    if "averaged_from" in own:
        own["averaged_from"] = _flattened(own["averaged_from"], legacy)
    return earlier + legacy + [{"file": file, **own}]


def checked_lineage(training: dict, file: str) -> list[dict]:
    """`lineage`, with a record this program could not have written (an `averaged_from` entry
    without its file, an `earlier` entry that is not a record) refused in one sentence."""
    try:
        records = lineage(training, file)
        for record in records:
            str(record["file"])
    except (KeyError, TypeError, AttributeError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else "is not a list of records"
        raise WeightsError(f"{file}: its training record (how it was made: earlier, averaged_from) {what}; the "
                           "file was not written by napari-mmseg or was edited.") from None
    return records


def _same_file(a: dict, b: dict) -> bool:
    """Two records of one file: the same file name and the same record besides."""
    return Path(a["file"]).name == Path(b["file"]).name and {**a, "file": ""} == {**b, "file": ""}


def _flattened(sources: list, records: list[dict]) -> list[str]:
    """The file names of an `averaged_from` list; each average nested in it (as files
    averaged before 2026-12-01 record them) appended to `records` as a flat record."""
    names = []
    for source in sources:
        if isinstance(source, dict):
            records.append({"file": source["file"], "averaged_from": _flattened(source["averaged_from"], records)})
            source = source["file"]
        names.append(str(source))
    return names


def _same_normalization(a: dict[str, IntensityNorm], b: dict[str, IntensityNorm]) -> bool:
    """Equal up to float noise: each training run measures the CT mean and std afresh."""
    def close(x: float | None, y: float | None) -> bool:
        return x == y or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-4))

    return a.keys() == b.keys() and all(
        (a[m].kind, a[m].window, a[m].percentiles) == (b[m].kind, b[m].window, b[m].percentiles)
        and close(a[m].mean, b[m].mean) and close(a[m].std, b[m].std)
        for m in a
    )


_PER_MODALITY_STAT = re.compile(r"\.running_(mean|var)_(CT|MR)$")


def _fill_per_modality_statistics(stored: dict, expected: dict) -> None:
    """Dual-stream files written before shared BN layers kept statistics per modality have
    only the blended ones: use those for both modalities, which is how such files behaved."""
    for key in expected:
        if key not in stored and _PER_MODALITY_STAT.search(key):
            blended = _PER_MODALITY_STAT.sub(r".bn.running_\1", key)
            if blended in stored:
                stored[key] = stored[blended]


def bundled_weights_dir() -> Path:
    return Path(str(resources.files("napari_mmseg") / "weights"))


def bundled_name(variant: str, modality: str | None) -> str:
    if variant == "individual":
        if modality is None:
            raise WeightsError("The individual variant has one network per modality: give the modality.")
        return f"individual-{check_modality(modality).lower()}.safetensors"
    return f"{variant}.safetensors"


def bundled_weights(variant: str, modality: str | None = None) -> Path:
    if variant not in VARIANTS:
        raise WeightsError(f"Unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    path = bundled_weights_dir() / bundled_name(variant, modality)
    if not path.is_file():
        raise WeightsError(
            f"No bundled weights for {variant}{' ' + modality if modality else ''} in this "
            "installation yet: train them with `mmseg train` and pass the file with --weights."
        )
    return path


def available_variants(modality: str) -> list[str]:
    """Variants with bundled weights that serve `modality`."""
    out = []
    for v in VARIANTS:
        p = bundled_weights_dir() / bundled_name(v, modality)
        if p.is_file() and check_modality(modality) in read_metadata(p).modalities:
            out.append(v)
    return out

