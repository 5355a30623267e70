#!/usr/bin/env python
"""What the review aids add to `segment_image`: the confidence and uncertainty maps
(`InferenceOptions(uncertainty=True)`) and the review, on bench_segment's full-size CT
(btcv_02 resampled to 512×512×300 at 0.8×0.8×1.5 mm), with the bundled CT weights.

    python benchmarks/bench_review_cost.py [--repeats 3]

Each run is a fresh child process (this script with `--one`), maps on and off in turn, so
that peak memory (`ru_maxrss`) is each run's own; one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil
from bench_common import DATA
from segment_workloads import SYNTHETIC_SPACING, largest_btcv, make_full_size

SIZE = (512, 512, 300)


def one(scan: Path, maps: bool) -> dict:
    from napari_mmseg.device import tune_cpu
    from napari_mmseg.inference.segment import InferenceOptions, segment_image
    from napari_mmseg.io.scan_io import read_scan
    from napari_mmseg.models.weights import bundled_weights, load_weights

    tune_cpu()
    loaded = load_weights(bundled_weights("individual", "CT"))
    image = read_scan(scan)
    before = psutil.Process().memory_info().rss / 2**20
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = segment_image(image, loaded, "CT", InferenceOptions(device="cpu", uncertainty=maps))
    total = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"maps": maps, "segment_s": round(total, 3), **{k: round(v, 3) for k, v in result.timings.items()},
            "peak_MB": round(peak), "added_MB": round(peak - before), "flags": list(result.review.flags)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # scan, maps on (1) or off (0)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(Path(args.one[0]), args.one[1] == "1")))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        scan = Path(tmp) / "full_size_ct.nii.gz"
        make_full_size(largest_btcv(DATA), scan, Path(tmp) / "labels.nii.gz", SIZE, SYNTHETIC_SPACING)
        for _ in range(args.repeats):
            for maps in ("1", "0"):
                child = subprocess.run([sys.executable, __file__, "--one", str(scan), maps],
                                       capture_output=True, text=True, check=True)
                print(child.stdout.strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
