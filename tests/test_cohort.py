"""Cohorts: a batch goes on past a bad scan, names it, reports every scan, resumes with
--skip-existing, and runs sharded under `torchrun` with the same labels and one report."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.cli import main
from napari_mmseg.inference import cohort as cohort_module
from napari_mmseg.inference.cohort import Shard

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "sample_data" / "totalsegmentator" / "example_ct_sm.nii.gz"


@pytest.fixture
def scans(tmp_path) -> Path:
    """Two small crops of the real sample CT around a file that is not a scan."""
    folder = tmp_path / "scans"
    folder.mkdir()
    image = sitk.ReadImage(str(SAMPLE_CT))
    sitk.WriteImage(image[20:80, 20:70, 5:25], str(folder / "a.nii.gz"))
    (folder / "b.nii.gz").write_bytes(b"not a scan")
    sitk.WriteImage(image[40:100, 30:80, 5:25], str(folder / "c.nii.gz"))
    return folder


def segment(capfd, scans: Path, out: Path, weights: Path, *extra) -> tuple[int, str, str]:
    capfd.readouterr()
    code = main(["segment", str(scans), "-o", str(out), "--modality", "CT", "--weights", str(weights),
                 "--device", "cpu", "--no-orientation-check", *map(str, extra)])
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("mmseg: ")]


def test_shards_take_every_scan_once():
    items = list(range(7))
    shares = [Shard(r, 3).share(items) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


def test_a_batch_goes_on_past_a_bad_scan_and_reports_every_scan(capfd, tmp_path, scans, tiny_weights):
    report = tmp_path / "cohort.json"
    code, out, err = segment(capfd, scans, tmp_path / "labels", tiny_weights, "--report", report)
    assert code == 1
    assert errors(err) == [next(ln for ln in err.splitlines() if ln.startswith("mmseg: "))]
    assert errors(err)[0].startswith(f"mmseg: error: {scans / 'b.nii.gz'}") and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["a.nii.gz", "c.nii.gz"]
    records = json.loads(report.read_text())
    assert [(Path(k).name, v["status"]) for k, v in records.items()] == [
        ("a.nii.gz", "done"), ("b.nii.gz", "failed"), ("c.nii.gz", "done")]
    assert "corrupt" in records[str(scans / "b.nii.gz")]["error"]
    assert records[str(scans / "a.nii.gz")]["organs"]["liver"]["volume_ml"] > 0
    assert "3 scans: 2 segmented, 1 failed" in out
    with open(tmp_path / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert float(rows[0]["liver_ml"]) == records[str(scans / "a.nii.gz")]["organs"]["liver"]["volume_ml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.csv", "cohort.json", "labels", "scans"]


def test_an_interrupted_batch_resumes_with_skip_existing(capfd, tmp_path, scans, tiny_weights, monkeypatch):
    report, labels = tmp_path / "cohort.json", tmp_path / "labels"
    real = cohort_module.segment_one

    def interrupted_at_c(scan, *args):
        if scan.name == "c.nii.gz":
            raise KeyboardInterrupt
        return real(scan, *args)

    monkeypatch.setattr(cohort_module, "segment_one", interrupted_at_c)
    code, _, err = segment(capfd, scans, labels, tiny_weights, "--report", report, "-q")
    assert code == 130 and errors(err)[-1] == "mmseg: interrupted" and not report.exists()
    first = (labels / "a.nii.gz").read_bytes()
    monkeypatch.setattr(cohort_module, "segment_one", real)
    code, _, err = segment(capfd, scans, labels, tiny_weights, "--report", report, "--skip-existing", "-q")
    assert code == 1 and len(errors(err)) == 1 and "b.nii.gz" in errors(err)[0]
    assert (labels / "a.nii.gz").read_bytes() == first and (labels / "c.nii.gz").is_file()
    records = {Path(k).name: v for k, v in json.loads(report.read_text()).items()}
    assert [r["status"] for r in records.values()] == ["skipped", "failed", "done"]
    assert records["a.nii.gz"]["organs"]["liver"]["volume_ml"] > 0, "the earlier run's record is kept"
    assert not list(tmp_path.glob(".*"))


def test_a_report_that_appears_during_the_batch_is_kept(capfd, tmp_path, scans, tiny_weights, monkeypatch):
    report = tmp_path / "cohort.json"
    real = cohort_module.segment_one

    def intruder(scan, *args):
        report.write_text("another program's file")
        return real(scan, *args)

    monkeypatch.setattr(cohort_module, "segment_one", intruder)
    code, _, err = segment(capfd, scans, tmp_path / "labels", tiny_weights, "--report", report, "-q")
    assert code == 1 and "cohort.json exists; pass --overwrite" in errors(err)[-1]
    assert report.read_text() == "another program's file"
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["a.nii.gz", "c.nii.gz"]


def test_skip_existing_and_overwrite_exclude_each_other(capfd, tmp_path, scans, tiny_weights):
    with pytest.raises(SystemExit) as stopped:
        segment(capfd, scans, tmp_path / "labels", tiny_weights, "--overwrite", "--skip-existing")
    assert stopped.value.code == 2


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")
def test_torchrun_on_two_ranks_gives_the_labels_and_report_of_one_process(capfd, tmp_path, scans, tiny_weights):
    single, labels, report = tmp_path / "single", tmp_path / "labels", tmp_path / "cohort.json"
    assert segment(capfd, scans, single, tiny_weights, "-q")[0] == 1
    mmseg = [sys.executable, "-c", "import sys; from napari_mmseg.cli import main; sys.exit(main())"]
    done = subprocess.run(
        ["torchrun", "--standalone", "--nproc-per-node", "2", "--no-python", *mmseg, "segment", str(scans),
         "-o", str(labels), "--modality", "CT", "--weights", str(tiny_weights), "--device", "cpu",
         "--no-orientation-check", "--report", str(report), "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ours = [ln for ln in done.stderr.splitlines() if ln.startswith("mmseg: ")]
    assert done.returncode == 1 and len(ours) == 1 and "b.nii.gz" in ours[0], done.stderr
    for name in ("a.nii.gz", "c.nii.gz"):
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(labels / name))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(single / name)))), name
    records = {Path(k).name: (v["status"], v["rank"]) for k, v in json.loads(report.read_text()).items()}
    assert records == {"a.nii.gz": ("done", 0), "b.nii.gz": ("failed", 1), "c.nii.gz": ("done", 0)}
    assert not list(tmp_path.glob(".*"))
