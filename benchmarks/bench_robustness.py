"""Robustness benchmark: Dice per organ of each variant on its validation cases as
they are, on the same cases under contrast shifts made here (`napari_mmseg.contrast_shifts`),
and on TotalSegmentator's example CT and MR.

The shifts are proxies, not real unseen scans: an inverted T2 is not a T1 and a CT with its
organs darkened is not a non-contrast CT. TotalSegmentator's reference labels were made by a
model, not by hand. Both say where a model breaks, not what it scores on real scans.

    python benchmarks/bench_robustness.py [--weights FILE ...] [--cases CT=btcv_23,btcv_05 ...]
        [--data ../shared/data] [--device cpu] [--seed 0] [--enlarge-all] [--out tables.md] [--json numbers.json]

Without --weights, every bundled file (individual-ct and individual-mr as one variant). The
cases come from the weights' metadata (`validation_dice["cases"]`) when it names them, else
from --cases; the header says when they were part of the weights' training. --enlarge-all runs the
enlarged-spleen condition on all 24 CT and 16 MR patients (36 more segmentations per file; one
`msbn` file took 390 s with two threads): a steadier column than two scans per modality, for rules
that decide between rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from validate_weights import labelled_cases, score, totalseg_cases

from napari_mmseg.contrast_shifts import apply_shift, shifts_for
from napari_mmseg.io.datasets import LabelledCase
from napari_mmseg.models.weights import LoadedModel, bundled_weights_dir, load_weights
from napari_mmseg.organs import MODALITIES, ORGAN_BY_NAME, ORGANS
from napari_mmseg.study.experiment import ENLARGED_SPLEEN, ENLARGED_SPLEEN_FACTOR
from napari_mmseg.training.organ_enlargement import enlarge_organ

# The validation hold-out of `mmseg train --val-cases 2 --seed 0` (a seeded shuffle), used when
# the weights name no cases.
DEFAULT_CASES = {"CT": ["btcv_23", "btcv_05"], "MR": ["chaos_05", "chaos_33"]}
AS_IS = "as is"
ENLARGE_ALL_NOTE = ", on every labelled case (--enlarge-all), whether or not the weights were trained on it"
KINDS = (AS_IS, "shifted", "enlarged", "totalseg")  # table order; --enlarge-all reads other cases first
SUMMARY_COLUMNS = ("CT in-domain", "CT shifted", "CT spleen enlarged", "MR in-domain", "MR shifted",
                   "MR spleen enlarged", "TS CT", "TS MR")


@dataclass
class Variant:
    name: str
    models: dict[str, LoadedModel] = field(default_factory=dict)  # modality → model
    cases: dict[str, list[str]] = field(default_factory=dict)  # modality → validation case names
    trained_on_cases: list[str] = field(default_factory=list)  # validation cases it was trained on


@dataclass
class Row:
    variant: str
    modality: str
    kind: str  # one of KINDS
    condition: str
    case: str
    dice: list[float]  # ORGANS order
    warnings: list[str]
    seconds: float


def parse_cases(items: list[str]) -> dict[str, list[str]]:
    cases = {m: list(names) for m, names in DEFAULT_CASES.items()}
    for item in items:
        modality, _, names = item.partition("=")
        if modality.upper() not in MODALITIES or not names:
            raise SystemExit(f"--cases {item!r}: write MODALITY=case,case (e.g. CT=btcv_23,btcv_05)")
        cases[modality.upper()] = names.split(",")
    return cases


def load_variants(files: list[Path], fallback_cases: dict[str, list[str]]) -> list[Variant]:
    """One Variant per network kind and folder: individual-ct and individual-mr become one."""
    variants: dict[tuple[Path, str], Variant] = {}
    for path in files:
        loaded = load_weights(path)
        meta = loaded.meta
        key = (path.parent, meta.variant)
        if key in variants and set(variants[key].models) & set(meta.modalities):
            key = (path.parent, path.stem)
        variant = variants.setdefault(key, Variant(key[1]))
        listed = meta.validation_dice.get("cases", {})
        trained = set(re.findall(r"[\w-]+", meta.trained_on))
        for modality in meta.modalities:
            variant.models[modality] = loaded
            variant.cases[modality] = list(listed.get(modality) or fallback_cases.get(modality, []))
            variant.trained_on_cases += [c for c in variant.cases[modality] if c in trained]
    names = [v.name for v in variants.values()]
    for (folder, _), v in variants.items():
        if names.count(v.name) > 1:
            v.name = f"{v.name} ({folder})"
    return list(variants.values())


def run_one(
    variant: Variant, modality: str, kind: str, condition: str, case: str, image: sitk.Image, ref: sitk.Image,
    device: str,
) -> Row:
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dice = score(variant.models[modality], image, ref, modality, device)
    row = Row(variant.name, modality, kind, condition, case, dice,
              sorted({str(w.message) for w in caught}), round(time.perf_counter() - t, 2))
    print(f"  {variant.name:<12} {modality} {case:<24} {condition:<30} "
          f"{np.nanmean(dice):.3f}  {row.seconds:.1f} s{'  (warned)' if row.warnings else ''}",
          file=sys.stderr, flush=True)
    return row


def enlarged_spleen(image: sitk.Image, ref: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """The scan and its labels with the spleen magnified (`organ_enlargement`), same grid."""
    values, labels = enlarge_organ(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ref),
                                   ORGAN_BY_NAME["spleen"].label, ENLARGED_SPLEEN_FACTOR, image.GetSpacing()[::-1])
    out = [sitk.GetImageFromArray(values), sitk.GetImageFromArray(labels)]
    for o in out:
        o.CopyInformation(image)
    return out[0], out[1]


def run_all(
    variants: list[Variant], data: Path, device: str, seed: int, enlarge_all: bool = False,
) -> tuple[list[Row], list[str]]:
    """Case by case, condition by condition: each scan is read and shifted once for every variant.

    With `enlarge_all`, the enlarged-spleen condition runs on every labelled case of the modality,
    not only the validation cases: two scans per modality swing a round's verdict by 0.05-0.17."""
    wanted = {(m, c) for v in variants for m, names in v.cases.items() for c in names}
    found = labelled_cases(data)
    notes = [f"case {m} {c} not found under {data}: skipped" for m, c in sorted(wanted - {(c.modality, c.name)
                                                                                       for c in found})]
    rows: list[Row] = []
    for case in found:
        users = [v for v in variants if case.name in v.cases.get(case.modality, [])]
        enlargers = [v for v in variants if case.modality in v.models] if enlarge_all else users
        if not enlargers:
            continue
        image, ref = case.load()
        rows += [run_one(v, case.modality, AS_IS, AS_IS, case.name, image, ref, device) for v in users]
        for shift in shifts_for(case.modality):
            shifted = apply_shift(shift, image, ref, seed)
            rows += [run_one(v, case.modality, "shifted", shift.name, case.name, shifted, ref, device) for v in users]
        big_image, big_ref = enlarged_spleen(image, ref)
        rows += [run_one(v, case.modality, "enlarged", ENLARGED_SPLEEN, case.name, big_image, big_ref, device)
                 for v in enlargers]
    ts: list[LabelledCase] = [c for c in totalseg_cases(data) if c.image.is_file() and c.labels.is_file()]
    if len(ts) < 2:
        notes.append(f"TotalSegmentator examples missing under {data}: skipped")
    for case in ts:
        image, ref = case.load()
        condition = f"TotalSegmentator {case.name.removeprefix('ts-')}, labels by a model"
        rows += [run_one(v, case.modality, "totalseg", condition, case.name, image, ref, device)
                 for v in variants if case.modality in v.models]
    return rows, notes


def mean_row(rows: list[Row]) -> list[float]:
    """Dice per organ averaged over the rows' cases (organs absent from both maps left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an organ absent from every case
        return list(np.nanmean(np.array([r.dice for r in rows]), axis=0))


def summary(variant: Variant, rows: list[Row]) -> dict[str, float | None]:
    def mean_of(modality: str, kind: str) -> float | None:
        groups = {r.condition for r in rows if r.modality == modality and r.kind == kind}
        means = [np.nanmean(mean_row([r for r in rows if r.modality == modality and r.condition == g]))
                 for g in sorted(groups)]
        return float(np.mean(means)) if means else None

    return {
        "CT in-domain": mean_of("CT", AS_IS), "CT shifted": mean_of("CT", "shifted"),
        "CT spleen enlarged": mean_of("CT", "enlarged"),
        "MR in-domain": mean_of("MR", AS_IS), "MR shifted": mean_of("MR", "shifted"),
        "MR spleen enlarged": mean_of("MR", "enlarged"),
        "TS CT": mean_of("CT", "totalseg"), "TS MR": mean_of("MR", "totalseg"),
    }


def mean_of_summary(s: dict[str, float | None]) -> float | None:
    """The mean of the eight summary columns: the number the rules between training rounds compare."""
    values = [s[c] for c in SUMMARY_COLUMNS]
    return None if any(v is None for v in values) else float(np.mean(values))


def fmt(x: float | None) -> str:
    return "–" if x is None or np.isnan(x) else f"{x:.3f}"


def held_out_note(variant: Variant) -> str:
    listed = "; ".join(f"{m}: {', '.join(c)}" for m, c in variant.cases.items())
    if variant.trained_on_cases:
        return (f"Cases {listed}. **Not held out**: these weights were trained on "
                f"{', '.join(variant.trained_on_cases)} (`trained_on`), so the \"as is\" rows and their shifts "
                "are training-set numbers.")
    return f"Cases {listed}: held out from these weights' training."


def variant_table(variant: Variant, rows: list[Row], s: dict[str, float | None]) -> str:
    files = ", ".join(sorted({str(m.path) for m in variant.models.values()}))
    lines = [f"### {variant.name}", "", f"Weights: {files}. {held_out_note(variant)}", "",
             "| modality | condition | scans | " + " | ".join(o.display_name for o in ORGANS) + " | mean |",
             "|---|---|---|" + "---|" * (len(ORGANS) + 1)]
    for modality in variant.models:
        own = [r for r in rows if r.modality == modality]
        for condition in dict.fromkeys(r.condition for r in sorted(own, key=lambda r: KINDS.index(r.kind))):
            group = [r for r in own if r.condition == condition]
            organ = mean_row(group)
            cells = " | ".join(fmt(d) for d in organ)
            lines.append(f"| {modality} | {condition} | {len(group)} | {cells} | {fmt(np.nanmean(organ))} |")
    lines += ["", "Summary (mean Dice): " + ", ".join(f"{k} {fmt(v)}" for k, v in s.items() if v is not None)]
    warned = {}
    for r in rows:
        for w in r.warnings:
            warned.setdefault(w, []).append(f"{r.modality} {r.case} / {r.condition}")
    lines += [f"\n`segment_image` warned \"{w}\" on: {'; '.join(where)}" for w, where in warned.items()]
    return "\n".join(lines)


def cross_table(variants: list[Variant], summaries: dict[str, dict[str, float | None]]) -> str:
    lines = ["| variant | " + " | ".join(SUMMARY_COLUMNS) + " | mean of 8 | cases held out |",
             "|---|" + "---|" * (len(SUMMARY_COLUMNS) + 2)]
    for v in variants:
        s = summaries[v.name]
        lines.append(f"| {v.name} | " + " | ".join(fmt(s[c]) for c in SUMMARY_COLUMNS)
                     + f" | {fmt(mean_of_summary(s))} | {'no (trained on)' if v.trained_on_cases else 'yes'} |")
    return "\n".join(lines)


def without_nan(x):
    """NaN (an organ absent from both maps) as JSON null."""
    if isinstance(x, dict):
        return {k: without_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [without_nan(v) for v in x]
    return None if isinstance(x, float) and np.isnan(x) else x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", nargs="+", type=Path, help="weights files (default: every bundled one)")
    parser.add_argument("--cases", action="append", default=[], metavar="MOD=a,b",
                        help="validation cases when the weights name none "
                        "(default: CT=btcv_23,btcv_05, MR=chaos_05,chaos_33)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random shifts (bias field)")
    parser.add_argument("--enlarge-all", action="store_true",
                        help="the enlarged-spleen condition on every labelled case, not only the validation cases")
    parser.add_argument("--out", type=Path, help="write the Markdown tables here")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    files = args.weights or sorted(bundled_weights_dir().glob("*.safetensors"))
    if not files:
        print("no weights files given and none bundled", file=sys.stderr)
        return 1
    variants = load_variants(files, parse_cases(args.cases))
    t0 = time.perf_counter()
    rows, notes = run_all(variants, args.data, args.device, args.seed, args.enlarge_all)
    seconds = time.perf_counter() - t0
    header = (
        f"## Robustness benchmark\n\n`python benchmarks/bench_robustness.py {' '.join(argv or sys.argv[1:])}` — "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, device {args.device}, "
        f"cores {len(os.sched_getaffinity(0))}, torch threads {torch.get_num_threads()}, seed {args.seed}, "
        f"{seconds:.0f} s.\n\nShifted rows are the same cases under contrast shifts made here "
        "(`napari_mmseg.contrast_shifts`): proxies, not real unseen scans. Enlarged rows: the same cases with "
        "the spleen magnified about its centre (`napari_mmseg.training.organ_enlargement`), labels warped with it"
        f"{ENLARGE_ALL_NOTE if args.enlarge_all else ''}. "
        "TotalSegmentator rows: its example "
        "CT and MR, reference labels made by TotalSegmentator (a model, not manual); the MR is not T2. "
        "Dice per organ averaged over the scans; \"shifted\" in the summaries: the mean over the shifted rows."
    )
    own = {v.name: [r for r in rows if r.variant == v.name] for v in variants}
    summaries = {v.name: summary(v, own[v.name]) for v in variants}
    text = "\n\n".join([header, *(variant_table(v, own[v.name], summaries[v.name]) for v in variants),
                        "### All variants (mean Dice)", cross_table(variants, summaries), *notes])
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(without_nan({
            "organs": [o.name for o in ORGANS], "seed": args.seed, "device": args.device, "seconds": round(seconds, 1),
            "variants": [{"name": v.name, "files": {m: str(lm.path) for m, lm in v.models.items()},
                          "cases": v.cases, "trained_on_cases": v.trained_on_cases,
                          "summary": summaries[v.name], "mean_of_8": mean_of_summary(summaries[v.name])}
                         for v in variants],
            "rows": [asdict(r) for r in rows], "notes": notes,
        }), indent=1, allow_nan=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
