"""Memory flatness: `mmseg segment` run many times in one process must not grow.

Each run is the whole command (read, segment, write through `safe_write` with its read-back
check, with --overwrite onto the same file), as a long napari run or a batch would repeat it.
The resident set size after each run is recorded, and the slope of a straight line fitted
to the runs after a warm-up is printed in KB per run: a leak of one label volume per run
shows as its size, a flat process as a few KB either way (allocator noise).

    python benchmarks/memory_flatness.py                     # 100 runs, bundled weights, sample CT
    python benchmarks/memory_flatness.py --runs 30 --scan my_scan.nii.gz --weights my.safetensors
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from napari_mmseg.cli import main as mmseg

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCAN = DATA / "totalsegmentator-examples" / "example_ct_sm.nii.gz"


def rss_slope_kb(rss_mb: list[float], warm_up: int) -> float:
    """KB per run of a least-squares line through the runs after the warm-up."""
    y = np.asarray(rss_mb[warm_up:]) * 1024
    return float(np.polyfit(np.arange(y.size), y, 1)[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warm-up", type=int, default=10, help="first runs left out of the fit (caches, allocator)")
    p.add_argument("--scan", type=Path, default=SCAN)
    p.add_argument("--modality", default="CT")
    p.add_argument("--weights", help="a weights file (default: the bundled ones)")
    args = p.parse_args()
    if not args.scan.exists():
        raise SystemExit(f"{args.scan} not found: give --scan")
    process = psutil.Process()
    rss_mb, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "labels.nii.gz"
        argv = ["segment", str(args.scan), "-o", str(out), "--modality", args.modality, "--device", "cpu",
                "--overwrite", "-q"] + (["--weights", args.weights] if args.weights else [])
        for run in range(args.runs):
            t0 = time.perf_counter()
            if mmseg(argv) != 0:
                raise SystemExit(f"run {run} failed")
            seconds.append(time.perf_counter() - t0)
            rss_mb.append(process.memory_info().rss / 2**20)
    print(f"scan {args.scan.name}, {args.runs} runs in one process, {np.median(seconds):.2f} s per run (median), "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"RSS after run 1: {rss_mb[0]:.0f} MB, after run {args.warm_up}: {rss_mb[args.warm_up - 1]:.0f} MB, "
          f"after run {args.runs}: {rss_mb[-1]:.0f} MB, highest {max(rss_mb):.0f} MB")
    print(f"RSS slope over runs {args.warm_up + 1}-{args.runs}: {rss_slope_kb(rss_mb, args.warm_up):+.1f} KB per run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
