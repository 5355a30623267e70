"""Segmenting a cohort: every scan is tried, each failure is named and recorded, and one
report (JSON and CSV) lists every scan's status, time, volumes, confidence and flags.

Started by `torchrun`, the same batch is sharded: rank r of w takes the scans i with
i % w == r, on GPU LOCAL_RANK where there are GPUs. Each scan's record goes, as soon as
the scan is done, to a hidden folder beside the report (so an interrupted or killed run
loses only the scans in progress, and `--skip-existing` finds the records of the others);
after a `torch.distributed` barrier rank 0 merges them into the one report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from napari_mmseg.errors import MmsegError, ScanError
from napari_mmseg.inference.segment import InferenceOptions, segment_image
from napari_mmseg.io.header_checks import sitk_path
from napari_mmseg.io.safe_write import check_output, refuse_over_inputs, write_csv_atomic, write_text_atomic
from napari_mmseg.io.scan_io import (
    LABEL_SUFFIXES,
    SCAN_SUFFIXES,
    ScanNote,
    path_suffix,
    read_scan,
    strip_suffix,
    write_labels,
)
from napari_mmseg.models.weights import LoadedModel
from napari_mmseg.organs import ORGANS

# A rank that finishes its share waits at the barrier for the slowest one: with thousands of
# scans that can be hours, far beyond torch.distributed's 30-minute default.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """This process's place among the processes `torchrun` started (one process: 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Shard:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ScanError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (as torchrun sets them).") \
                from None
        if not (world >= 1 and 0 <= rank < world and local >= 0):
            raise ScanError(f"RANK {rank} of WORLD_SIZE {world} is not a process of the group.")
        return cls(rank, world, local)

    def share(self, items: Sequence) -> list:
        return list(items[self.rank :: self.world])

    def device(self, request: str) -> str:
        """Each rank on its own GPU where the run is on GPUs."""
        from napari_mmseg.device import resolve_device

        if self.world > 1 and resolve_device(request).type == "cuda":
            return f"cuda:{self.local_rank}"
        return request


@dataclass(frozen=True)
class ReportPaths:
    """Where the report goes: JSON (and a CSV beside it), or only a CSV when asked for one."""

    json: Path | None
    csv: Path

    @classmethod
    def of(cls, path: str | os.PathLike) -> ReportPaths:
        p = Path(path)
        if p.suffix.lower() == ".csv":
            return cls(None, p)
        return cls(p, p.with_suffix(".csv"))

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.json, self.csv) if p is not None)

    @property
    def parts(self) -> Path:
        """The hidden folder of per-scan records the report is merged from."""
        first = self.files[0]
        return first.parent / f".{first.name}.mmseg-parts"


def scan_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given; a folder of scan files gives each file, sorted, except hidden ones (such
    as `safe_write`'s partial files or macOS `._` twins); any other folder is a DICOM series."""
    scans: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise ScanError(f"{p} does not exist: check the path.")
        if p.is_dir():
            files = sorted(f for f in p.iterdir()
                           if f.is_file() and not f.name.startswith(".") and path_suffix(f) in SCAN_SUFFIXES)
            scans.extend(files or [p])
        else:
            scans.append(p)
    return scans


def output_paths(scans: list[Path], output: str, overwrite: bool, skip_existing: bool = False,
                 shard: Shard = Shard()) -> list[Path]:
    """Where each scan's labels go, checked before any work: a label file for one scan, else
    a folder (existing, or a name without a file extension). With `skip_existing`, labels
    already there are kept (and their scans skipped) instead of refused. Each rank checks its
    own share: another rank may have written its first labels already."""
    out_path = Path(output)
    suffix = "" if output.endswith(("/", os.sep)) or out_path.is_dir() else path_suffix(out_path)
    if len(scans) == 1 and suffix in LABEL_SUFFIXES:
        outs = [out_path]
    elif len(scans) == 1 and suffix:
        raise ScanError(f"-o {output}: label files end in .nii.gz, .nii, .nrrd or .mha (a folder name, in /).")
    else:
        if out_path.exists() and not out_path.is_dir():
            what = "with several inputs, -o names a folder" if len(scans) > 1 else \
                "give a label file (.nii.gz, .nii, .nrrd, .mha) or a folder"
            raise ScanError(f"-o {output} is not a folder: {what}.")
        outs = [out_path / f"{strip_suffix(s)}.nii.gz" for s in scans]
    if len(set(outs)) != len(outs):
        raise ScanError("Two inputs have the same name; segment them into different output folders.")
    for _, out in shard.share(list(zip(scans, outs, strict=True))):
        sitk_path(out.parent, "output folder")
        refuse_over_inputs(out, scans, "the scans")
        check_output(out, overwrite or (skip_existing and out.is_file()), make_parents=True)
    return outs


def report_paths(report: str | None, scans: list[Path], outs: list[Path], overwrite: bool) -> ReportPaths | None:
    """The report's files, refused before the work when they exist (without `overwrite`) or are
    a scan or labels; checked again when written at the end."""
    if report is None:
        return None
    paths = ReportPaths.of(report)
    for path in paths.files:
        if any(path.resolve() == p.resolve() for p in (*scans, *outs)):
            raise ScanError(f"--report {path} is one of the scans or label files; choose another name.")
        check_output(path, overwrite)
    return paths


@dataclass(frozen=True)
class Cohort:
    """One batch: the scans, their labels' paths and how to segment them."""

    scans: tuple[Path, ...]
    outs: tuple[Path, ...]
    modality: str
    options: InferenceOptions
    overwrite: bool = False
    skip_existing: bool = False
    report: ReportPaths | None = None
    quiet: bool = False


def _record_name(scan: Path) -> str:
    return hashlib.sha1(str(scan).encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".json"


def _reason(scan: Path, error: BaseException) -> str:
    """The error's sentence, led by the scan's path unless it names it already."""
    text = str(error) if not isinstance(error, MemoryError) else \
        "out of memory; try --device cpu, a smaller --overlap, or a machine with more memory."
    if isinstance(error, OSError) and not isinstance(error, MmsegError):
        text = f"{error.strerror or error}."
    shown = os.fsencode(str(scan)).decode("utf-8", "backslashreplace")  # as `sitk_path` shows a non-UTF-8 name
    return text if str(scan) in text or shown in text else f"{scan}: {text}"


def segment_one(scan: Path, out: Path, loaded: LoadedModel, cohort: Cohort) -> dict:
    """Read, segment and write one scan; its record for the report."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as read_notes:
        warnings.simplefilter("always", ScanNote)
        image = read_scan(scan)
    # percent done and time left, no counts or rate ("99/100, 9.5%/s"); left on screen at 100 %
    with tqdm(total=100, desc=scan.name, disable=cohort.quiet,
              bar_format="{desc}: {percentage:3.0f}% |{bar}| {elapsed}<{remaining}{postfix}") as bar:

        def progress(fraction: float, stage: str) -> None:
            bar.set_postfix_str(stage, refresh=False)  # drawn once, with the new percentage
            bar.update(round(100 * fraction) - bar.n)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = segment_image(image, loaded, cohort.modality, cohort.options, progress=progress)
    for w in caught:
        print(f"warning: {scan.name}: {w.message}", file=sys.stderr)
    notes = [str(w.message) for w in read_notes] + list(result.notes)
    write_labels(result.labels, out, image, source=scan, overwrite=cohort.overwrite)
    seconds = time.perf_counter() - t0
    if not cohort.quiet:
        print(f"{scan} -> {out} ({loaded.meta.variant}, {cohort.modality}, {result.device}, {seconds:.1f} s)")
        for note in notes:
            print(f"  note: {note}")
        for flag in result.review.flags:
            print(f"  check: {flag}")
    return {"status": "done", "seconds": round(seconds, 2), "labels": str(out), "variant": loaded.meta.variant,
            "modality": cohort.modality, "device": result.device, "context_blended": result.context_blended,
            "read_inverted": result.read_inverted, "notes": notes, **result.review.to_dict()}


def run_cohort(cohort: Cohort, loaded: LoadedModel, shard: Shard = Shard()) -> int:
    """Segment this shard's scans, going on past failures (each named in one `mmseg: error:`
    line); rank 0 writes the merged report and returns 1 when any scan of the cohort failed.
    The other ranks return 0 once rank 0 is done: `torchrun` stops every process as soon as
    one ends with an error, which would cut rank 0 off in the middle of the report."""
    started = _join_group(shard)
    counts = dict.fromkeys(("done", "failed", "skipped"), 0)
    mine = shard.share(list(zip(cohort.scans, cohort.outs, strict=True)))
    cohort = replace(cohort, options=replace(cohort.options, device=shard.device(cohort.options.device)))
    try:
        for scan, out in mine:
            if cohort.skip_existing and out.is_file():
                record = _earlier_record(cohort.report.parts, scan, out) if cohort.report else {"status": "skipped"}
            else:
                t0 = time.perf_counter()
                try:
                    record = segment_one(scan, out, loaded, cohort)
                except (MmsegError, ValueError, OSError, MemoryError) as e:
                    reason = _reason(scan, e)
                    print(f"mmseg: error: {reason}", file=sys.stderr)
                    record = {"status": "failed", "seconds": round(time.perf_counter() - t0, 2),
                              "labels": str(out), "error": reason}
            counts[record["status"]] += 1
            if cohort.report is not None:
                _save_record(cohort.report.parts, scan, {**record, "rank": shard.rank})
        counts = _summed(counts, shard)  # after every rank's last scan
        failure = None
        if shard.rank == 0 and cohort.report is not None:
            try:
                _write_report(cohort.report, _merge(cohort), cohort.overwrite)
                shutil.rmtree(cohort.report.parts, ignore_errors=True)
            except MmsegError as e:  # said once every rank is done
                failure = e
        if shard.world > 1:
            import torch.distributed as dist

            dist.barrier()
        if failure is not None:
            raise failure
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()  # left to interpreter exit, gloo's threads abort the process
    if shard.rank != 0:
        return 0
    if not cohort.quiet:
        where = f"; report: {', '.join(map(str, cohort.report.files))}" if cohort.report else ""
        print(f"{sum(counts.values())} scans: {counts['done']} segmented, {counts['failed']} failed, "
              f"{counts['skipped']} skipped (labels there already){where}")
    return 1 if counts["failed"] else 0


def _summed(counts: dict[str, int], shard: Shard) -> dict[str, int]:
    """The counts over every rank (their sum waits for the slowest rank)."""
    if shard.world == 1:
        return counts
    import torch
    import torch.distributed as dist

    total = torch.tensor(list(counts.values()), dtype=torch.int64)
    dist.all_reduce(total)
    return dict(zip(counts, total.tolist(), strict=True))


def _join_group(shard: Shard) -> bool:
    """Join the process group `torchrun` set up (unless joined already: then False), on gloo
    whatever the device: the cohort exchanges three numbers, and gloo works across machines
    and on CPUs alike."""
    if shard.world == 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return True


def _save_record(parts: Path, scan: Path, record: dict) -> None:
    parts.mkdir(exist_ok=True)
    text = json.dumps({"scan": str(scan), **record}, allow_nan=False)
    write_text_atomic(parts / _record_name(scan), text, overwrite=True)  # this run's own hidden record


def _read_record(parts: Path, scan: Path) -> dict | None:
    try:
        record = json.loads((parts / _record_name(scan)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("scan") == str(scan) else None


def _earlier_record(parts: Path, scan: Path, out: Path) -> dict:
    """A scan skipped because its labels are there: what the run that wrote them recorded."""
    earlier = _read_record(parts, scan)
    if earlier is None or earlier.get("status") not in ("done", "skipped") or earlier.get("labels") != str(out):
        return {"status": "skipped", "labels": str(out), "note": "labels there already"}
    earlier.pop("scan")
    return {**earlier, "status": "skipped", "note": "labels there already, from an earlier run"}


def _merge(cohort: Cohort) -> dict[str, dict]:
    """Every scan's record, in the cohort's order (each rank left one for each of its scans)."""
    records = {}
    for scan, out in zip(cohort.scans, cohort.outs, strict=True):
        record = _read_record(cohort.report.parts, scan) or {
            "status": "failed", "labels": str(out), "error": "no record: the process that had it stopped"}
        record.pop("scan", None)
        records[str(scan)] = record
    return records


def _write_report(paths: ReportPaths, records: dict[str, dict], overwrite: bool) -> None:
    """Written once, at the end, refusing a file that appeared at its path meanwhile."""
    if paths.json is not None:
        write_text_atomic(paths.json, json.dumps(records, indent=2, allow_nan=False) + "\n", overwrite=overwrite)
    header = ["scan", "status", "seconds", "labels", "error",
              *(f"{o.name}_{what}" for o in ORGANS for what in ("ml", "confidence")), "flags"]
    rows = []
    for scan, r in records.items():
        organs = r.get("organs", {})
        cells = [organs.get(o.name, {}).get(what) for o in ORGANS for what in ("volume_ml", "confidence")]
        rows.append([scan, r["status"], r.get("seconds", ""), r["labels"], r.get("error", ""),
                     *("" if c is None else c for c in cells), "; ".join(r.get("flags", []))])
    write_csv_atomic(paths.csv, header, rows, overwrite)
