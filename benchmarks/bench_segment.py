#!/usr/bin/env python
"""Inference benchmark: where the time and memory of segmenting a scan go, how our sliding
window compares with plain MONAI and with the paper's non-overlapping tiles, and how close the
network part comes to the conv3d throughput this machine reaches; then, unless
--no-training, how long training waits for its batches (bench_training_data.py).

    python benchmarks/bench_segment.py --weights FILE [--device cpu|cuda] [--quick] [--out results.json]

Every (workload, method) pair runs in a fresh child process (this script re-invoked with the
hidden `--one` flag), so that the peak memory of one does not mix with another's. The
workloads are in segment_workloads.py, the methods and one measured run in
segment_methods.py. See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from bench_common import DATA, add_weights_arguments, machine_info, resolve_weights, set_threads
from bench_training_data import training_line
from network_peak import conv3d_peak, flops_per_window
from segment_methods import METHODS, STAGES, run_segment
from segment_workloads import SYNTHETIC_SIZE, WORKLOADS, Skip, make_generated, resolve_workload

from napari_mmseg.device import resolve_device
from napari_mmseg.errors import DeviceError, WeightsError
from napari_mmseg.inference.segment import InferenceOptions
from napari_mmseg.models.weights import ModelMetadata, load_weights

TRAINING_SCRIPT = Path(__file__).resolve().with_name("bench_training_data.py")


def child_main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    try:
        result = run_segment(args)
    except Skip as e:
        result = {"skipped": str(e)}
    args.result.write_text(json.dumps(result))
    return 0


def run_child(args: argparse.Namespace, weights: Path, one: str, method: str | None, scratch: Path | None) -> dict:
    """One measurement in a fresh process (this script re-invoked with --one, or
    bench_training_data.py for "training"); its result as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        common = ["--result", str(result_file), "--weights", str(weights), "--device", args.device,
                  "--data", str(args.data), "--threads", str(torch.get_num_threads())]
        if one == "training":
            cmd = [sys.executable, str(TRAINING_SCRIPT), *common, *(["--quick"] if args.quick else [])]
            return _child_result(cmd, result_file)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", one, *common,
               "--overlap", str(args.overlap), "--windows-per-batch", str(args.windows_per_batch)]
        if method is not None:
            cmd += ["--method", method]
        if scratch is not None:
            cmd += ["--scratch", str(scratch)]
        if args.quick:
            cmd.append("--quick")
        if args.check_orientation:
            cmd.append("--check-orientation")
        if args.read_inverted_mr:
            cmd.append("--read-inverted-mr")
        return _child_result(cmd, result_file)


def _child_result(cmd: list[str], result_file: Path) -> dict:
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
    if rc != 0 or not result_file.is_file():
        return {"failed": f"child exited with status {rc}"}
    return json.loads(result_file.read_text())


def fmt_s(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


COLUMNS = (
    ("workload", 18), ("method", 6), ("size", 12), ("win", 5), ("read", 6), ("resamp", 6), ("norm", 6),
    ("net", 7), ("stitch", 6), ("back", 6), ("write", 6), ("other", 6), ("total", 7), ("×ours", 5),
    ("GFLOP", 7), ("%peak", 5), ("RSS MB", 6), ("+MB", 5), ("GPU MB", 6), ("Dice", 5),
)


def table_row(row: dict, ours_total: float | None, flop_window: int, peak: float, cuda: bool) -> list[str]:
    t = row["timings"]
    flop = flop_window * row["windows"]
    net = t["network"]
    cells = [
        row["workload"], row["method"], "×".join(map(str, row["size"])), str(row["windows"]),
        *(fmt_s(t[k]) for k in STAGES[:3]), fmt_s(net), *(fmt_s(t[k]) for k in STAGES[4:]),
        fmt_s(row["other"]), fmt_s(row["total"]),
        f"{row['total'] / ours_total:.2f}" if ours_total else "–",
        f"{flop / 1e9:.1f}", f"{100 * flop / net / peak:.1f}" if net > 0 else "–",
        f"{row['peak_rss_mb']:.0f}", f"{row['peak_rss_mb'] - row['base_rss_mb']:.0f}",
    ]
    if cuda:
        cells.append(f"{row.get('cuda_peak_mb', 0):.0f}")
    dice = row.get("dice")
    cells.append("–" if dice is None or math.isnan(dice) else f"{dice:.3f}")
    return cells


def print_table(rows: list[dict], flop_window: int, peak: float, cuda: bool) -> None:
    columns = [c for c in COLUMNS if cuda or c[0] != "GPU MB"]
    lines = [[name for name, _ in columns]]
    ours_totals = {r["workload"]: r["total"] for r in rows if r["method"] == "ours"}
    for row in rows:
        lines.append(table_row(row, ours_totals.get(row["workload"]), flop_window, peak, cuda))
    widths = [max(w, *(len(line[i]) for line in lines)) for i, (_, w) in enumerate(columns)]
    for n, line in enumerate(lines):
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_machine(machine: dict, weights: Path, meta: ModelMetadata, args: argparse.Namespace) -> None:
    gpu = f" ({machine['gpu']})" if "gpu" in machine else ""
    print(f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
          f"load average {machine['load_average_1min']}; torch {machine['torch']} with {machine['torch_threads']} "
          f"threads, MONAI {machine['monai']}; device {machine['device']}{gpu}")
    print(f"weights: {weights} ({meta.variant}, filters {list(meta.network.filters)}, patch {meta.patch_size}³ "
          f"at {meta.spacing_mm:g} mm); overlap {args.overlap}, {args.windows_per_batch} windows per batch")
    if machine["load_average_1min"] > 0.5 * machine["usable_cores"]:
        print(f"WARNING: the machine is busy (load average {machine['load_average_1min']} on "
              f"{machine['usable_cores']} cores): these numbers do not show what it can do.")
    sys.stdout.flush()


def print_footer(peak: dict, flop_window: int, training: dict | None, notes: list[str]) -> None:
    print(f"\nconv3d peak: {peak['flop_per_s'] / 1e9:.1f} GFLOP/s ({peak['precision']}, 32→32 channels, 3³ kernel, "
          f"2×32×64³ input, best of {peak['repeats']}); network: {flop_window / 1e9:.3f} GFLOP per window")
    if training is not None:
        print(training_line(training))
    for note in notes:
        print(note)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = InferenceOptions()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    add_weights_arguments(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="only the TotalSegmentator CT, fewer repeats")
    p.add_argument("--out", help="also write the results as JSON to this file")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    p.add_argument("--no-training", action="store_true", help="skip the training-data measurement "
                   "(bench_training_data.py)")
    p.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    p.add_argument("--overlap", type=float, default=defaults.overlap)
    p.add_argument("--windows-per-batch", type=int, default=defaults.windows_per_batch)
    p.add_argument("--check-orientation", action="store_true",
                   help="run our method as `mmseg segment` does by default, with the second pass on the mirror "
                   "image (off here so that every method does the same work)")
    p.add_argument("--read-inverted-mr", action="store_true",
                   help="read MR as `mmseg segment` does by default, as given and with its grey levels inverted "
                   "(off here so that every method does the same work)")
    p.add_argument("--threads", type=int, help="use only the first N cores (default: every core this process may use)")
    p.add_argument("--synthetic-size", default=",".join(map(str, SYNTHETIC_SIZE)),
                   help="x,y,z voxels of the synthetic and full-size scans (default: full clinical size)")
    # The child's interface: one workload with one method, result to a file.
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def selected_workloads(args: argparse.Namespace) -> list[str]:
    if args.quick:
        return ["ts-ct"]
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}: choose from {', '.join(WORKLOADS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    set_threads(args.threads)
    try:
        device = resolve_device(args.device)
        weights = resolve_weights(args)
        meta = load_weights(weights).meta
    except (DeviceError, WeightsError) as e:
        print(f"bench_segment: {e}", file=sys.stderr)
        return 2
    machine = machine_info(device)
    print_machine(machine, weights, meta, args)
    options = InferenceOptions(overlap=args.overlap, windows_per_batch=args.windows_per_batch,
                               check_orientation=args.check_orientation, try_inverted_mr=args.read_inverted_mr)
    repeats = 3 if args.quick else 5
    peak = {**conv3d_peak(device, options, repeats), "repeats": repeats}
    flop_window = flops_per_window(meta, meta.modalities[0])

    rows: list[dict] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-segment-") as tmp:
        scratch = Path(tmp)
        names = selected_workloads(args)
        notes += make_generated(names, args.data, scratch, tuple(int(v) for v in args.synthetic_size.split(",")))
        for name in names:
            try:
                workload = resolve_workload(name, args.data, scratch)
            except Skip as e:
                notes.append(f"skipped {name}: {e}")
                print(f"skipped {name}: {e}", file=sys.stderr)
                continue
            if workload.modality not in meta.modalities:
                notes.append(f"skipped {name}: the weights serve {'/'.join(meta.modalities)}, not {workload.modality}")
                continue
            for method in METHODS:
                print(f"... {workload.name}: {method}", file=sys.stderr, flush=True)
                row = run_child(args, weights, name, method, scratch)
                if "timings" not in row:
                    notes.append(f"{workload.name} {method}: {row.get('skipped') or row.get('failed')}")
                    continue
                rows.append(row)
                notes += [f"{workload.name} {method}: warning: {w}" for w in row["warnings"]]
        training = None
        if not args.no_training:
            print("... training data", file=sys.stderr, flush=True)
            training = run_child(args, weights, "training", None, None)

    print()
    print_table(rows, flop_window, peak["flop_per_s"], device.type == "cuda")
    print_footer(peak, flop_window, training, notes)
    if args.out:
        out = {
            "machine": machine, "weights": str(weights), "variant": meta.variant,
            "patch_size": meta.patch_size, "spacing_mm": meta.spacing_mm, "overlap": args.overlap,
            "windows_per_batch": args.windows_per_batch, "conv3d_peak": peak, "flop_per_window": flop_window,
            "rows": rows, "training": training, "notes": notes,
        }
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
