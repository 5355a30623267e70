"""Inference: progress, cancel, device choice, window counting and modality checks."""

import numpy as np
import pytest
import torch

from napari_mmseg.device import available_devices, resolve_device
from napari_mmseg.errors import Cancelled, DeviceError
from napari_mmseg.inference.segment import InferenceOptions, segment_image, window_count
from napari_mmseg.io.scan_io import read_scan
from napari_mmseg.models.weights import load_weights
from napari_mmseg.preprocessing import guess_modality


def test_progress_reaches_one_and_never_goes_back(ct_scan, tiny_weights):
    seen = []
    segment_image(read_scan(ct_scan), load_weights(tiny_weights), "CT", InferenceOptions(device="cpu"),
                  progress=lambda f, stage: seen.append((f, stage)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stages = [s for _, s in seen]
    windows = [s for s in stages if s.startswith("windows ")]
    n = int(windows[-1].split()[-1])
    assert stages[0] == "resampling to the model's grid" and windows[0] == f"windows 0 of {n}"
    assert windows[-1] == f"windows {n} of {n}" and stages[-4:] == [
        "resampling back to the scan's grid", "confidence and uncertainty maps", "checking the organs", "done"]


def test_cancel_between_windows(ct_scan, tiny_weights):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        segment_image(read_scan(ct_scan), load_weights(tiny_weights), "CT", InferenceOptions(device="cpu"),
                      cancel=cancel)
    assert len(calls) == 2


def test_timings_cover_the_stages(ct_scan, tiny_weights):
    result = segment_image(read_scan(ct_scan), load_weights(tiny_weights), "CT", InferenceOptions(device="cpu"))
    assert set(result.timings) >= {"resample", "normalise", "network", "stitching", "resample_back"}
    assert result.device == "cpu" and result.variant == "v4"


def test_devices():
    assert resolve_device("auto").type == available_devices()[0]
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="Unknown device"):
        resolve_device("tpu")


def test_worker_processes_keep_one_thread(monkeypatch):
    """`tune_cpu` (called by training) must not undo a worker's one thread: two training
    workers with a thread per core each ran 3–7× slower on a 2-core machine."""
    from napari_mmseg.device import one_thread_per_worker, tune_cpu

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    try:
        one_thread_per_worker()
        tune_cpu()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_window_count_matches_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for shape in [(40, 90, 100), (64, 64, 64), (30, 200, 65)]:
        padded = tuple(max(n, 64) for n in shape)
        interval = _get_scan_interval(padded, (64, 64, 64), 3, (0.5,) * 3)
        assert window_count(shape, 64, 0.5) == len(dense_patch_slices(padded, (64, 64, 64), interval))


def test_guess_modality(ct_scan, mr_scan, data_dir):
    from SimpleITK import GetArrayFromImage

    assert guess_modality(GetArrayFromImage(read_scan(ct_scan))) == "CT"
    assert guess_modality(GetArrayFromImage(read_scan(mr_scan))) == "MR"
    btcv = data_dir / "abdomen-ct-btcv" / "imagesTr" / "btcv_01_0000.nii.gz"
    assert guess_modality(GetArrayFromImage(read_scan(btcv))) == "CT"


def test_weights_for_one_modality_refuse_the_other(mr_scan, tmp_path):
    from conftest import make_weights

    ct_only = load_weights(make_weights(tmp_path / "ct.safetensors", "individual", ("CT",)))
    with pytest.raises(ValueError, match="serve CT, not MR"):
        segment_image(read_scan(mr_scan), ct_only, "MR")


def test_overlap_is_checked():
    with pytest.raises(ValueError, match="overlap"):
        InferenceOptions(overlap=1.0)
    assert np.isclose(InferenceOptions().overlap, 0.5)


def test_stray_pieces_are_dropped_unless_asked_to_keep_them(tiny_weights):
    """On a scan at the model's grid, the labels come back without stray pieces (the random
    test network labels a speckle of them); with the option off, they stay. (Nearly without:
    the canonical grid is nudged by a micrometre, and interpolating back can leave a voxel.)"""
    import SimpleITK as sitk

    from napari_mmseg.inference.organ_pieces import stray_pieces

    rng = np.random.default_rng(0)
    values = rng.normal(40, 30, (24, 40, 40)).astype(np.float32)
    values[:, :, :4] = -1000  # air at one side: a body box to crop to
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((4.0, 4.0, 4.0))
    loaded = load_weights(tiny_weights)
    labels = {}
    for drop in (True, False):
        options = InferenceOptions(device="cpu", uncertainty=False, drop_stray_pieces=drop)
        labels[drop] = sitk.GetArrayFromImage(segment_image(image, loaded, "CT", options).labels)
    stray_before = int(stray_pieces(labels[False]).sum())
    assert stray_before > 100  # else this test shows nothing
    assert stray_pieces(labels[True]).sum() <= 0.01 * stray_before
    kept = labels[True] > 0
    assert np.array_equal(labels[True][kept], labels[False][kept])  # nothing relabelled, only dropped
