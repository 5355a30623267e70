"""Shared fixtures: the real scans in ../shared/data and small weights files made here.

The weights made here are tiny, randomly initialised networks: they exercise the real
loading, inference and writing code quickly; their labels are meaningless.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from napari_mmseg.config import NetworkConfig
from napari_mmseg.models.dual_stream import MultiModalFCN
from napari_mmseg.models.weights import ModelMetadata, save_weights
from napari_mmseg.preprocessing import default_norm

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = NetworkConfig(filters=(4, 8, 8, 8, 8), units_per_scale=1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "README.md").is_file():
        pytest.skip(f"real scans not found at {DATA} (the project's shared data folder)")
    return DATA


@pytest.fixture(scope="session")
def ct_scan(data_dir) -> Path:
    return data_dir / "totalsegmentator-examples" / "example_ct_sm.nii.gz"


@pytest.fixture(scope="session")
def mr_scan(data_dir) -> Path:
    return data_dir / "abdomen-mr-chaos-t2" / "imagesTr" / "chaos_02_0000.nii.gz"


def make_weights(path: Path, variant: str = "v4", modalities=("CT", "MR"), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = MultiModalFCN(variant, TINY, modalities)
    meta = ModelMetadata(
        variant=variant,
        modalities=tuple(modalities),
        network=TINY,
        spacing_mm=4.0,
        patch_size=32,
        normalization={m: default_norm(m, mean=75.0, std=200.0) for m in modalities},
        trained_on="nothing: a randomly initialised test network",
    )
    return save_weights(model, meta, path)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return make_weights(tmp_path_factory.mktemp("weights") / "v4.safetensors")


def pytest_collection_modifyitems(config, items):
    """GUI tests need a display; without one Qt would abort the whole run."""
    import os

    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    skip = pytest.mark.skip(reason="no display: run GUI tests under `xvfb-run -a`")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)
