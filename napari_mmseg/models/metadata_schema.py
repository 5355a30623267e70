"""What a weights file's metadata may say: a JSON Schema with bounds, plus the checks a
schema cannot express, applied before anything is built from it.

A forged or damaged file must end in one sentence, never in a network of 10⁶ units, a
RecursionError, or empty labels from a NaN standard deviation. New fields or normalisation
kinds are one more entry in `SCHEMA` or `NORMALIZATION_KINDS`.
"""

from __future__ import annotations

import math

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

from napari_mmseg.config import VARIANTS, NetworkConfig
from napari_mmseg.organs import MODALITIES, ORGANS

MAX_DEPTH = 16  # nesting of JSON containers; the free-form fields hold a few levels


def _number(low: float, high: float, exclusive_low: bool = False) -> dict:
    return {"type": "number", "exclusiveMinimum" if exclusive_low else "minimum": low, "maximum": high}


def _int(low: int, high: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": high}


def _pair(item: dict) -> dict:
    return {"type": "array", "items": item, "minItems": 2, "maxItems": 2}


INTENSITY = _number(-1e6, 1e6)  # CT Hounsfield units, MR grey values
PERCENTILES = {"required": ["percentiles"], "properties": {"percentiles": _pair(_number(0, 100))}}
NORMALIZATION_KINDS: dict[str, dict] = {
    "window": {"required": ["window", "mean", "std"],
               "properties": {"window": _pair(INTENSITY), "mean": INTENSITY, "std": _number(0, 1e6, True)}},
    "percentile": PERCENTILES,
    "foreground": PERCENTILES,  # MR over body voxels: the new training recipe's (on main)
}
NORMALIZATION = {
    "type": "object",
    "required": ["kind"],
    "properties": {"kind": {"enum": sorted(NORMALIZATION_KINDS)}},
    "allOf": [{"if": {"properties": {"kind": {"const": kind}}}, "then": rule}
              for kind, rule in NORMALIZATION_KINDS.items()],
}
NETWORK = {
    "type": "object",
    "properties": {
        "filters": {"type": "array", "items": _int(1, 1024), "minItems": 5, "maxItems": 5},
        "strides": {"type": "array", "items": {"type": "integer", "enum": [1, 2]}, "minItems": 5, "maxItems": 5},
        "units_per_scale": _int(1, 8),
        "num_classes": {"type": "integer", "const": len(ORGANS) + 1},
        "in_channels": {"type": "integer", "enum": [1, 3]},  # the scan, or it and 2 coordinate channels
        "strided_kernel": {"type": "integer", "enum": [2, 4]},
        "upsample": {"enum": ["transposed", "interpolate"]},
    },
}
SCHEMA = {
    "type": "object",
    "required": ["format_version", "variant", "modalities", "network", "spacing_mm", "patch_size", "normalization"],
    "properties": {
        "format_version": _int(1, 1_000_000),
        "variant": {"enum": list(VARIANTS)},
        "modalities": {"type": "array", "items": {"enum": list(MODALITIES)}, "minItems": 1,
                       "maxItems": len(MODALITIES), "uniqueItems": True},
        "network": NETWORK,
        "spacing_mm": _number(0.1, 20.0),
        "patch_size": _int(8, 512),
        "normalization": {"type": "object", "propertyNames": {"enum": list(MODALITIES)},
                          "additionalProperties": NORMALIZATION},
        "classes": {"type": "object", "propertyNames": {"pattern": "^[0-9]{1,3}$"},
                    "additionalProperties": {"type": "string", "maxLength": 200}},
        "trained_on": {"type": "string", "maxLength": 100_000},
        "training": {"type": "object"},
        "validation_dice": {"type": "object"},
        "context_weight": _number(0, 1),
    },
}
# JSON Schema counts 16.0 as an integer; torch does not take it for a channel count.
_VALIDATOR = validators.extend(Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, v: isinstance(v, int) and not isinstance(v, bool)))(SCHEMA)
# The normalisation kinds' bounds that must run low to high.
ORDERED_PAIRS = {"window": "window", "percentile": "percentiles", "foreground": "percentiles"}
# Fields whose numbers must be finite: bounds alone let NaN through (NaN < x is false).
FINITE_FIELDS = ("network", "spacing_mm", "patch_size", "normalization", "context_weight")


def _depth(value: object) -> int:
    """Nesting depth of JSON containers, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _non_finite(value: object, where: str) -> str | None:
    """The place of the first NaN or infinite number in `value`, else None."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path
        if isinstance(item, dict):
            stack.extend((v, f"{path}.{k}") for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return None


def metadata_problem(doc: object) -> str | None:
    """What is wrong with parsed weights metadata, in a few words; None when it is sound."""
    if _depth(doc) > MAX_DEPTH:
        return f"its JSON is nested more than {MAX_DEPTH} levels deep"
    error = best_match(_VALIDATOR.iter_errors(doc))
    if error is not None:
        return f"{error.json_path}: {error.message}"
    for key in (k for k in FINITE_FIELDS if k in doc):  # context_weight is new in format 2
        place = _non_finite(doc[key], f"$.{key}")
        if place is not None:
            return f"{place} is NaN or infinite"
    missing = [m for m in doc["modalities"] if m not in doc["normalization"]]
    if missing:
        return f"no intensity normalisation for {', '.join(missing)}"
    for modality, norm in doc["normalization"].items():
        key = ORDERED_PAIRS.get(norm["kind"])
        if key is not None and not norm[key][0] < norm[key][1]:
            return f"$.normalization.{modality}.{key} runs backwards ({norm[key][0]} to {norm[key][1]})"
    multiple = math.prod(doc["network"].get("strides", NetworkConfig().strides))
    if doc["patch_size"] % multiple:
        return f"patch size {doc['patch_size']} is not a multiple of the network's downsampling ({multiple})"
    return None
