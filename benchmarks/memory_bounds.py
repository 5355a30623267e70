"""Memory bounds: the peak resident memory of `mmseg segment` refusing each forged header,
beside a normal small run.

Each case runs in a fresh process (the whole command, bundled weights loaded first as in any
run) that reports its own peak RSS (`resource.getrusage`); a forged header must be refused
before any voxel is allocated, so its peak stays at a normal small run's, far under 1.5 GB.
The hostile files are the test suite's own catalogue (`tests/test_hostile_inputs.py`:
HEADERS), so the benchmark measures exactly what the tests refuse.

    python benchmarks/memory_bounds.py                  # every case, a table
    python benchmarks/memory_bounds.py --limit-mb 1500  # exit 1 if a forged case goes beyond
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "sample_data" / "totalsegmentator" / "example_ct_sm.nii.gz"

CHILD = """
import json, resource, sys
from napari_mmseg.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_case(scan: Path, out: Path, timeout: float) -> dict:
    argv = ["segment", str(scan), "-o", str(out), "--modality", "CT", "--device", "cpu", "-q"]
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, timeout=timeout, cwd=REPO,
                              encoding="utf-8", errors="replace", env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    except subprocess.TimeoutExpired:
        return {"code": "hang", "peak_mb": float("nan"), "seconds": timeout, "said": f"no answer in {timeout:.0f} s"}
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else \
        {"code": done.returncode, "peak_mb": float("nan")}
    said = next((ln for ln in done.stderr.splitlines() if ln.startswith("mmseg: ")), "")
    return {**result, "seconds": time.perf_counter() - t0, "said": said.removeprefix("mmseg: error: ")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit-mb", type=float, default=1500.0, help="the bound each forged case must stay under")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as a hang")
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from test_hostile_inputs import HEADERS  # the suite's catalogue of forged files

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "secret.raw").write_bytes(bytes(240))
        rows.append(("normal small run (sample CT 122×101×30)", run_case(SAMPLE_CT, root / "normal.nii.gz",
                                                                         args.timeout)))
        for i, (kind, (make, _)) in enumerate(sorted(HEADERS.items())):
            folder = root / f"case{i}"
            folder.mkdir()
            rows.append((kind, run_case(make(folder), root / f"labels{i}.nii.gz", args.timeout)))
    normal = rows[0][1]["peak_mb"]
    print(f"{'case':<42}{'exit':>5}{'peak MB':>9}{'vs normal':>11}{'s':>6}  message")
    print("-" * 120)
    over = []
    for kind, r in rows:
        print(f"{kind:<42}{r['code']!s:>5}{r['peak_mb']:>9.0f}{r['peak_mb'] - normal:>+11.0f}{r['seconds']:>6.1f}  "
              f"{r['said'][:70]}")
        if kind != rows[0][0] and not (r["peak_mb"] <= args.limit_mb and r["code"] == 1):
            over.append(kind)
    print(f"\nforged cases over {args.limit_mb:.0f} MB, hung or not refused: {', '.join(over) or 'none'}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
