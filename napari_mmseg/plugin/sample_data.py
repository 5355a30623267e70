"""File › Open Sample: public abdominal scans with reference labels, so napari-mmseg can be
tried offline. They are embedded (the top-level `sample_data/`, package data in a wheel,
each with its licence); a file missing there is downloaded with pooch (checked against
sha256) into `pooch.os_cache("napari-mmseg")`, or the folder named by MMSEG_DATA_CACHE.
"""

from __future__ import annotations

from pathlib import Path

import pooch
import requests

from napari_mmseg.errors import MmsegError
from napari_mmseg.io.scan_io import read_labels, read_scan
from napari_mmseg.plugin.conventions import CONVENTIONS
from napari_mmseg.plugin.layers import LayerData, image_layer_data, labels_layer_data

CACHE_ENV = "MMSEG_DATA_CACHE"
_TOTALSEG = (
    "https://github.com/wasserth/TotalSegmentator/raw/0e65a448d557382b1e925276212b3bec7f5aff83/tests/reference_files/"
)
_CHAOS = (
    "https://github.com/QYAOYang/VLAlignSeg-/raw/3981d0690eb6537ff25364b9ec2a8a910b8f84f2/"
    "data/CHAOST2/chaos_MR_T2_normalized/"
)
# Path inside the embedded folder and the cache → (URL, sha256 of the published file; the
# embedded CHAOS files differ from it in storage type only, see sample_data/chaos-t2/README.md).
FILES = {
    "totalsegmentator/example_ct_sm.nii.gz": (
        _TOTALSEG + "example_ct_sm.nii.gz", "e50c00b2914e2cac0aaee8e7f3b5f57d44d9f21bfd5c0577271c54c0cb49e9fb"
    ),
    "totalsegmentator/example_seg.nii.gz": (
        _TOTALSEG + "example_seg.nii.gz", "8be652475a4aaae83103a66bfb3345314b1fc06742807a06cf5005f7a7913a2d"
    ),
    "totalsegmentator/example_mr_sm.nii.gz": (
        _TOTALSEG + "example_mr_sm.nii.gz", "209b46efaff595dd54a9332872e17a722b62654bbb68dbd89acd5090701bbd4f"
    ),
    "totalsegmentator/example_seg_mr.nii.gz": (
        _TOTALSEG + "example_seg_mr.nii.gz", "e73a5ee12962aa2bb2f3e43ab58dfc67990c5a7ef2dcb426a1bf5e5982b9587f"
    ),
    "chaos-t2/image_2.nii.gz": (
        _CHAOS + "image_2.nii.gz", "2ff6e0d80caa6000a586f007498fe23c603b737e26f9021c9d48f9f694a40859"
    ),
    "chaos-t2/label_2.nii.gz": (
        _CHAOS + "label_2.nii.gz", "9c0626f5538e076f2f3d077aa6452a981aaa4ce2738984f3e0921eb780f0d884"
    ),
}


class SampleDataError(MmsegError):
    """A sample that cannot be downloaded (offline, or the server changed the file)."""


def _registry() -> pooch.Pooch:
    return pooch.create(
        path=pooch.os_cache("napari-mmseg"),
        base_url="",
        registry={name: f"sha256:{digest}" for name, (_, digest) in FILES.items()},
        urls={name: url for name, (url, _) in FILES.items()},
        env=CACHE_ENV,
    )


def embedded_dir() -> Path:
    """Where the embedded samples are: `napari_mmseg/sample_data/` in a wheel, the checkout's
    top-level `sample_data/` in a source tree or an editable install."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "sample_data"
    return installed if installed.is_dir() else package.parent / "sample_data"


def fetch(name: str) -> Path:
    """The embedded file, else the cached one, downloaded first if needed; a clear message
    when that fails."""
    embedded = embedded_dir() / name
    if embedded.is_file():
        return embedded
    registry = _registry()
    url = FILES[name][0]
    try:
        return Path(registry.fetch(name))
    except requests.RequestException as e:
        raise SampleDataError(
            f"Could not download the sample {Path(name).name} ({type(e).__name__}): check the network "
            f"connection, or download {url} by hand into {Path(registry.path) / Path(name).parent} "
            f"(or the folder set in {CACHE_ENV})."
        ) from None
    except ValueError as e:  # pooch's hash check
        raise SampleDataError(f"The downloaded {Path(name).name} is not the expected file: {e}") from None


def _sample(image: str, labels: str, convention: str, layer_name: str) -> list[LayerData]:
    image_path, labels_path = fetch(image), fetch(labels)
    return [
        image_layer_data(read_scan(image_path), layer_name, scan=image_path),
        labels_layer_data(
            read_labels(labels_path), f"{layer_name} reference", CONVENTIONS[convention],
            convention, scan=image_path,
        ),
    ]


def sample_ct() -> list[LayerData]:
    """Abdominal CT (TotalSegmentator example, 3 mm) with TotalSegmentator's labels."""
    return _sample(
        "totalsegmentator/example_ct_sm.nii.gz", "totalsegmentator/example_seg.nii.gz", "TotalSegmentator",
        "example_ct",
    )


def sample_mr_t2() -> list[LayerData]:
    """T2-SPIR MR (CHAOS patient 2, CC BY-NC-SA 4.0) with its manual labels."""
    return _sample("chaos-t2/image_2.nii.gz", "chaos-t2/label_2.nii.gz", "CHAOS", "chaos_t2_patient_2")


def sample_mr_other() -> list[LayerData]:
    """An MR of another sequence (TotalSegmentator example, not T2-SPIR): a robustness test."""
    return _sample(
        "totalsegmentator/example_mr_sm.nii.gz", "totalsegmentator/example_seg_mr.nii.gz", "TotalSegmentator",
        "example_mr",
    )
