"""Train the correction network on simulated clicks (napari_mmseg/correction/training.py).

    MMSEG_CACHE=/tmp/cache OMP_NUM_THREADS=2 python benchmarks/train_correction.py \
        --ct ../shared/data/abdomen-ct-btcv --mr ../shared/data/abdomen-mr-chaos-t2 \
        --out runs/correction --minutes 60 [--init FILE]

Writes OUT/last.safetensors and OUT/stepNNNNNN.safetensors at each checkpoint, the log to
OUT/train.log. The last cases of each dataset in sorted order are held out (their names
are in the weights' metadata, `training.held_out`); the CT and MR normalisation are the
bundled msbn segmentation's, so both networks see a scan alike.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_mmseg.correction.model import CorrectionMetadata, read_correction_network
from napari_mmseg.correction.training import CorrectionTraining, split_held_out, train_correction
from napari_mmseg.io.datasets import load_dataset
from napari_mmseg.models.weights import bundled_weights, read_metadata
from napari_mmseg.training.training_data import prepare_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", help="nnU-Net raw CT dataset")
    parser.add_argument("--mr", help="nnU-Net raw MR dataset")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--minutes", type=float, required=True, help="time budget of the training loop")
    parser.add_argument("--init", help="correction weights to continue from")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--error-weight", type=float, default=CorrectionTraining.error_weight,
                        help="extra cross-entropy weight of voxels whose input label is wrong (0: plain)")
    args = parser.parse_args()

    cases = (load_dataset(args.ct, "CT") if args.ct else []) + (load_dataset(args.mr, "MR") if args.mr else [])
    train_cases, held_out = split_held_out(cases)
    init, meta = read_correction_network(args.init) if args.init else (None, None)
    if meta is None:
        seg = read_metadata(bundled_weights("msbn"))
        meta = CorrectionMetadata(normalization={m: seg.normalization[m] for m in ("CT", "MR")})
    training = {"held_out": sorted(c.name for c in held_out), "normalization_from": "msbn",
                "init": Path(args.init).name if args.init else None,
                "init_steps": int(meta.training.get("steps", 0)) if init else 0}
    meta = CorrectionMetadata(**{**meta.__dict__, "training": training})
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train.log"

    def log(line: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    prepared = [prepare_case(c, meta.spacing_mm, 48) for c in train_cases]
    log(f"training on {len(prepared)} cases; held out {training['held_out']}")
    run = CorrectionTraining(args.out, args.minutes * 60, batch_size=args.batch_size, lr=args.lr,
                             checkpoint_every=args.checkpoint_every, seed=args.seed,
                             error_weight=args.error_weight)
    print(f"wrote {train_correction(run, prepared, meta, log, init)} (log: {log_path})")


if __name__ == "__main__":
    main()
