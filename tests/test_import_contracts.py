"""The package's layering (pyproject.toml, [tool.importlinter]) holds, and the contracts do
catch a break: a copy of the package whose I/O imports Qt fails them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="import-linter is installed with the test extra")


def lint_imports(cwd: Path, package_parent: Path) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.path.insert(0, {str(package_parent)!r}); "
            "from importlinter.cli import lint_imports_command; lint_imports_command()")
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          encoding="utf-8", env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=120)


def test_contracts_kept():
    result = lint_imports(ROOT, ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_contracts_fail_when_the_core_imports_qt(tmp_path):
    shutil.copytree(ROOT / "napari_mmseg", tmp_path / "napari_mmseg", ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    scan_io = tmp_path / "napari_mmseg" / "io" / "scan_io.py"
    scan_io.write_text(scan_io.read_text(encoding="utf-8") + "\nfrom qtpy import QtWidgets  # noqa\n", encoding="utf-8")
    result = lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "The compute core never imports napari or Qt BROKEN" in result.stdout.replace("\n", " ")


def test_contracts_fail_when_a_lower_part_imports_a_higher_one(tmp_path):
    shutil.copytree(ROOT / "napari_mmseg", tmp_path / "napari_mmseg", ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    organs = tmp_path / "napari_mmseg" / "organs.py"
    organs.write_text(organs.read_text(encoding="utf-8") + "\nfrom napari_mmseg.inference import segment  # noqa\n",
                      encoding="utf-8")
    result = lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
