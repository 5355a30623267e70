#!/usr/bin/env python
"""How long `mmseg` takes to answer, each the median of a few fresh processes: until
`mmseg --help` has printed its usage, until a `mmseg segment` run prints its first line, and
until that run shows its progress bar (the scan read and the network loaded: torch's import,
seconds on its own, is most of that).

    python benchmarks/bench_startup.py [--repeats 3] [--scan FILE --modality CT]

Each segment run is stopped once the line waited for appears. Run it on a quiet machine;
the numbers include the Python interpreter's own start.
"""

from __future__ import annotations

import argparse
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "totalsegmentator" / "example_ct_sm.nii.gz"
MMSEG = [sys.executable, "-m", "napari_mmseg.cli"]


def seconds_to_exit(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(MMSEG + args, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def seconds_until(args: list[str], marker: str) -> tuple[float, str]:
    """Seconds until the command's stdout or stderr holds `marker` ("" for any output), and
    the line that holds it; the command is then stopped."""
    t0 = time.perf_counter()
    with subprocess.Popen(MMSEG + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        selector = selectors.DefaultSelector()
        for stream in (proc.stdout, proc.stderr):
            selector.register(stream, selectors.EVENT_READ)
        text = ""
        while selector.get_map() and not (text.strip() and marker in text):
            for key, _ in selector.select():
                chunk = os.read(key.fileobj.fileno(), 4096)
                if not chunk:
                    selector.unregister(key.fileobj)
                text += chunk.decode(errors="replace")
        seconds = time.perf_counter() - t0
        proc.kill()
    if marker not in text:
        raise SystemExit(f"mmseg {' '.join(args)} ended without printing {marker!r}:\n{text}")
    return seconds, next(line for line in text.replace("\r", "\n").splitlines() if line.strip() and marker in line)


def _seconds(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s ({', '.join(f'{s:.2f}' for s in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scan", type=Path, default=SAMPLE)
    parser.add_argument("--modality", default="CT")
    args = parser.parse_args()
    help_s = [seconds_to_exit(["--help"]) for _ in range(args.repeats)]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for what, marker in (("first line", ""), ("progress bar (scan read, network loaded)", "%")):
            rows[what] = [seconds_until(["segment", str(args.scan), "-o", str(Path(tmp) / f"{i}.nii.gz"),
                                         "--modality", args.modality, "--device", "cpu"], marker)
                          for i in range(args.repeats)]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; median of {args.repeats}")
    print(f"mmseg --help: {_seconds(help_s)}")
    for what, runs in rows.items():
        print(f"mmseg segment, {what}: {_seconds([s for s, _ in runs])}: {runs[0][1].strip()[:70]!r}")


if __name__ == "__main__":
    main()
