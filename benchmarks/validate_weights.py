"""Dice of weights files on the cases their training held out, at each scan's native
resolution, plus the TotalSegmentator example CT and MR (reference labels made by a model,
not by hand: a check across scanners and sequences, not ground truth).

    python benchmarks/validate_weights.py [WEIGHTS ...] [--data ../shared/data] [--out table.md]

Without WEIGHTS, every bundled weights file. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.datasets import LabelledCase, load_nnunet_dataset, totalsegmentator_examples
from napari_mmseg.metrics import dice_scores
from napari_mmseg.models.weights import LoadedModel, bundled_weights_dir, load_weights
from napari_mmseg.organs import ORGANS


def labelled_cases(data: Path) -> list[LabelledCase]:
    """Every case of the BTCV CT and CHAOS T2 datasets under `data`."""
    return load_nnunet_dataset(data / "abdomen-ct-btcv") + load_nnunet_dataset(data / "abdomen-mr-chaos-t2")


def held_out_cases(data: Path, names: dict[str, list[str]]) -> list[LabelledCase]:
    return [c for c in labelled_cases(data) if c.name in names.get(c.modality, [])]


def totalseg_cases(data: Path) -> list[LabelledCase]:
    return totalsegmentator_examples(data / "totalsegmentator-examples")


def score(loaded: LoadedModel, image: sitk.Image, ref: sitk.Image, modality: str, device: str = "cpu") -> list[float]:
    """Dice per organ (ORGANS order) of the model's labels against `ref`, on the scan's grid
    (without the mirror check: it informs the review, never the labels)."""
    options = InferenceOptions(device=device, uncertainty=False, check_orientation=False)
    pred = segment_image(image, loaded, modality, options).labels
    scores = dice_scores(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref), image.GetSpacing())
    return [s.dice for s in scores]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="*", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    files = args.weights or sorted(bundled_weights_dir().glob("*.safetensors"))
    if not files:
        print("no weights files given and none bundled", file=sys.stderr)
        return 1
    header = "| weights | case | modality | " + " | ".join(o.display_name for o in ORGANS) + " | mean |"
    lines = [header, "|" + "---|" * (len(ORGANS) + 4)]
    summary: dict[tuple[str, str], list[float]] = {}
    t0 = time.perf_counter()
    for weights in files:
        loaded = load_weights(weights)
        cases = held_out_cases(args.data, loaded.meta.validation_dice.get("cases", {})) + totalseg_cases(args.data)
        for case in cases:
            if case.modality not in loaded.meta.modalities:
                continue
            dice = score(loaded, *case.load(), case.modality)
            mean = float(np.nanmean(dice))
            if not case.name.startswith("ts-"):
                summary.setdefault((weights.stem, case.modality), []).append(dice)
            cells = " | ".join(f"{d:.3f}" for d in dice)
            lines.append(f"| {weights.stem} | {case.name} | {case.modality} | {cells} | {mean:.3f} |")
            print(lines[-1], flush=True)
    lines += ["", "Held-out cases, mean per organ:", "", header, "|" + "---|" * (len(ORGANS) + 4)]
    for (name, modality), rows in summary.items():
        per_organ = np.nanmean(np.array(rows), axis=0)
        cells = " | ".join(f"{d:.3f}" for d in per_organ)
        lines.append(f"| {name} | {len(rows)} held out | {modality} | {cells} | {np.nanmean(per_organ):.3f} |")
    lines.append(f"\n{time.perf_counter() - t0:.0f} s")
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
