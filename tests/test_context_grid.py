"""The context pass's grid: block averages down, trilinear back, and the blend in inference."""

import numpy as np
import SimpleITK as sitk
import torch
from conftest import make_weights

from napari_mmseg.context_grid import coarsen, coarsen_labels, needs_context, refine
from napari_mmseg.inference import InferenceOptions, predict_probabilities, predict_scan, segment_image
from napari_mmseg.weights import load_weights, save_weights

CPU = torch.device("cpu")


def test_coarsen_averages_blocks_and_the_partial_edge_block_averages_what_it_has():
    values = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    coarse = coarsen(values)
    assert coarse.shape == (3, 2, 2)
    assert coarse[0, 0, 0] == values[:2, :2, :2].mean()
    assert coarse[2, 1, 1] == values[4:, 2:, 2:].mean()  # 1 × 2 × 1 voxels


def test_labels_take_each_blocks_majority():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[:2, :2, :2] = 1
    labels[0, 0, 0] = 2  # one voxel of eight: the block stays 1
    labels[2:, 2:, 2:][:, :, 0] = 3  # half a block: a tie with background goes to the lower id
    assert coarsen_labels(labels, 5).tolist() == [[[1, 0], [0, 0]], [[0, 0], [0, 0]]]


def test_refine_puts_block_centres_on_the_centres_of_their_voxels():
    z = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((10, 6, 6), np.float32)
    back = refine(coarsen(z)[None], z.shape)[0]  # a linear ramp comes back as it was, inside
    assert back.shape == z.shape
    np.testing.assert_allclose(back[1:-1], z[1:-1], atol=1e-5)


def test_the_context_pass_is_blended_by_the_weights_share(tmp_path):
    loaded = load_weights(make_weights(tmp_path / "v4.safetensors"))
    rng = np.random.default_rng(0)
    raw = rng.normal(40, 30, (36, 24, 28)).astype(np.float32)  # longer than a window (32) along z
    norm, model, patch = loaded.meta.normalization["CT"], loaded.model, loaded.meta.patch_size
    fine = predict_probabilities(model, norm.apply(raw), "CT", patch, CPU)
    context = refine(predict_probabilities(model, norm.apply(coarsen(raw)), "CT", patch, CPU), raw.shape)
    seen = []
    probs, blended = predict_scan(model, raw, norm, "CT", patch, CPU, 0.25,
                                  progress=lambda f, s: seen.append((f, s)))
    if needs_context(fine, context):
        assert blended
        np.testing.assert_allclose(probs, 0.75 * fine + 0.25 * context, atol=1e-5)
    else:
        assert not blended
        np.testing.assert_allclose(probs, fine, atol=1e-6)
    np.testing.assert_allclose(predict_scan(model, raw, norm, "CT", patch, CPU, 0.0)[0], fine, atol=1e-6)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[-1][1].startswith("context windows")


def test_a_slab_shorter_than_a_window_gets_no_context_pass(tmp_path):
    loaded = load_weights(make_weights(tmp_path / "v4.safetensors"))
    norm, model, patch = loaded.meta.normalization["CT"], loaded.model, loaded.meta.patch_size
    raw = np.random.default_rng(2).normal(40, 30, (patch - 1, 24, 28)).astype(np.float32)
    seen = []
    probs, blended = predict_scan(model, raw, norm, "CT", patch, CPU, 0.5, progress=lambda f, s: seen.append(s))
    assert not blended and not any("context" in s for s in seen)
    np.testing.assert_allclose(probs, predict_probabilities(model, norm.apply(raw), "CT", patch, CPU), atol=1e-6)


def test_the_context_pass_is_consulted_only_for_an_organ_the_windows_find_too_small():
    fine = np.zeros((5, 10, 10, 10), np.float32)
    fine[0] = 1.0
    fine[:, :4] = 0.0
    fine[2, :4] = 1.0  # a spleen of 400 voxels
    context = fine.copy()
    context[:, 4:5] = 0.0
    context[2, 4:5] = 1.0  # 500: not much larger
    assert not needs_context(fine, context)
    context[:, 5:6] = 0.0
    context[2, 5:6] = 1.0  # 600: 1.5×, as an enlarged spleen the windows call background
    assert needs_context(fine, context)
    assert not needs_context(context, fine)  # the windows finding more is no reason


def test_weights_with_a_context_pass_segment_a_scan(tmp_path):
    loaded = load_weights(make_weights(tmp_path / "v4.safetensors"))
    loaded.meta.context_weight = 0.5
    path = save_weights(loaded.model, loaded.meta, tmp_path / "context.safetensors")
    assert load_weights(path).meta.context_weight == 0.5
    values = np.random.default_rng(1).normal(40, 30, (16, 30, 30)).astype(np.float32)
    values[:, :, :3] = -1000  # air: a CT
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((4.0, 4.0, 4.0))
    result = segment_image(image, load_weights(path), "CT", InferenceOptions(device="cpu", uncertainty=False))
    assert result.labels.GetSize() == image.GetSize()
