"""How well the mirror check (`napari_mmseg/inference/orientation_check.py`) tells a scan from its
left–right mirror image, per network: every case as it is, cut to 60 mm slabs (through the
kidneys, through the liver and spleen) and with its spleen enlarged 2× in length. For each,
the liver the windows find as given and in the mirror image; a case counts as a **false
flag** when the check would flag it as given, and as **detected** when it would flag its
mirror image (the same two passes, roles swapped).

    python benchmarks/mirror_check.py --bundle .study/bundle.npz --weights napari_mmseg/weights/msbn.safetensors
    python benchmarks/mirror_check.py --ct ../shared/data/abdomen-ct-btcv --mr ../shared/data/abdomen-mr-chaos-t2 \\
        --totalseg ../shared/data/totalsegmentator-examples --weights FILE [FILE ...] --json out.json

Prints one table per network and the smallest margin seen (the liver's mean probability as
given minus in the mirror image) per kind of view: the room CONFIDENCE_MARGIN has on each
side. About 30 s per CT case and network on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from napari_mmseg.inference.orientation_check import LiverFound, MirrorCheck, liver_found
from napari_mmseg.inference.segment import InferenceOptions, predict_probabilities
from napari_mmseg.models.weights import load_weights
from napari_mmseg.organs import ORGAN_BY_NAME
from napari_mmseg.study.experiment import (
    ENLARGED_SPLEEN_FACTOR,
    THIN_SLAB_CENTRES,
    StudyConfig,
    load_cases,
    thin_slab,
)
from napari_mmseg.training.organ_enlargement import enlarge_organ


def views(case, spacing: tuple[float, ...]) -> dict[str, np.ndarray]:
    """The case's intensities as it is, as two 60 mm slabs, and with the spleen enlarged."""
    out = {"whole": case.values}
    for where, organs in THIN_SLAB_CENTRES.items():
        out[f"slab at the {where}"] = thin_slab(case.values, case.labels, organs)[0]
    out["spleen enlarged"] = enlarge_organ(case.values, case.labels, ORGAN_BY_NAME["spleen"].label,
                                           ENLARGED_SPLEEN_FACTOR, spacing)[0]
    return out


def measure(path: Path, cases, modality: str | None) -> list[dict]:
    loaded = load_weights(path)
    meta, device = loaded.meta, torch.device("cpu")
    rows = []
    for case in cases:
        if case.modality not in meta.modalities or (modality and case.modality != modality):
            continue
        norm = meta.normalization[case.modality]
        for view, values in views(case, (meta.spacing_mm,) * 3).items():
            if view == "spleen enlarged" and case.name.startswith("ts-example"):
                continue  # its labels are a model's: no warp of them
            found = [liver_found(predict_probabilities(loaded.model, norm.apply(np.ascontiguousarray(v)),
                                                       case.modality, meta.patch_size, device,
                                                       InferenceOptions(device="cpu")), meta.voxel_ml)
                     for v in (values, values[:, :, ::-1])]
            rows.append({"weights": str(path), "case": case.name, "view": view,
                         "given": asdict(found[0]), "mirrored": asdict(found[1])})
            print(f"  {path.name} {case.name} {view}: liver {found[0].ml:.0f} ml at {found[0].confidence:.3f}, "
                  f"mirrored {found[1].ml:.0f} ml at {found[1].confidence:.3f}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| view | scans | false flags (as given) | detected (mirrored) | smallest margin |",
             "|---|---|---|---|---|"]
    for view in dict.fromkeys(r["view"] for r in rows):
        mine = [r for r in rows if r["view"] == view]
        given = [(LiverFound(**r["given"]), LiverFound(**r["mirrored"])) for r in mine]
        false = sum(MirrorCheck(g, m).suspected for g, m in given)
        found = sum(MirrorCheck(m, g).suspected for g, m in given)
        margin = min(g.confidence - m.confidence for g, m in given)
        lines.append(f"| {view} | {len(mine)} | {false} | {found} of {len(mine)} | {margin:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", nargs="+", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, help="prepared cases (benchmarks/study_on_gpu.py --write-bundle)")
    ap.add_argument("--ct", type=Path)
    ap.add_argument("--mr", type=Path)
    ap.add_argument("--totalseg", type=Path)
    ap.add_argument("--modality", choices=("CT", "MR"), help="only this modality's cases")
    ap.add_argument("--json", type=Path, help="write every measurement here")
    args = ap.parse_args(argv)
    if args.bundle is None and (args.ct is None or args.mr is None):
        ap.error("give --bundle, or both --ct and --mr (and --totalseg for TotalSegmentator's examples)")
    torch.set_num_threads(1)
    study = StudyConfig(out_dir=Path("."), bundle=args.bundle, ct=args.ct, mr=args.mr, totalseg=args.totalseg)
    cases, totalseg = load_cases(study)
    rows = []
    for path in args.weights:
        mine = measure(path, [*cases, *totalseg], args.modality)
        rows += mine
        print(f"\n### {path}\n\n{table(mine)}\n", flush=True)
    if len(args.weights) > 1:
        print(f"### every network\n\n{table(rows)}\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
