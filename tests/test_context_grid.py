"""The context pass's grid: block averages down, trilinear back, and the blend in inference."""

import numpy as np
import SimpleITK as sitk
import torch
from conftest import make_weights

from napari_mmseg.inference.context_grid import coarsen, coarsen_labels, refine, with_context
from napari_mmseg.inference.segment import InferenceOptions, predict_probabilities, predict_scan, segment_image
from napari_mmseg.models.weights import load_weights, save_weights

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
    expected, used = with_context(fine.copy(), context, 0.25)
    assert blended == used
    np.testing.assert_allclose(probs, expected, atol=1e-5)
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


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(5, dtype=np.float32)[labels].transpose(3, 0, 1, 2)


def test_the_context_pass_is_consulted_only_for_an_organ_the_windows_find_too_small():
    labels = np.zeros((10, 10, 10), np.int64)
    labels[:4] = 2  # a spleen of 400 voxels
    fine = _one_hot(labels)
    grown = labels.copy()
    grown[4] = 2  # 500: not much larger
    probs, used = with_context(fine.copy(), _one_hot(grown), 0.5)
    assert not used and np.array_equal(probs, fine)
    grown[5] = 2  # 600: 1.5×, as an enlarged spleen the windows call background
    context = _one_hot(grown)
    probs, used = with_context(fine.copy(), context, 0.5)
    assert used
    np.testing.assert_allclose(probs, 0.5 * fine + 0.5 * context)
    assert not with_context(context.copy(), fine, 0.5)[1]  # the windows finding more is no reason


def test_an_organ_twice_as_large_in_the_context_pass_fills_only_the_windows_background():
    labels = np.zeros((10, 10, 10), np.int64)
    labels[:3] = 2  # the windows' spleen: 300 voxels
    labels[8:] = 1  # and liver
    labels[3, :, :5] = 4  # a left kidney of 50 voxels
    fine = _one_hot(labels) * 0.9 + 0.02
    grown = labels.copy()
    grown[3:9] = 2  # the context's spleen: 900 voxels, over background, the kidney and one slice of liver
    grown[9, :, :8] = 4  # its left kidney: 80 voxels (1.6×), in the windows' liver
    grown[2, :, :8] = 3  # a right kidney of 80 voxels the windows do not find, in their spleen
    context = _one_hot(grown) * 0.8 + 0.04
    probs, used = with_context(fine.copy(), context, 0.5)
    assert used
    filled = (labels == 0) & (grown == 2)
    np.testing.assert_array_equal(probs[:, filled], context[:, filled])  # the background inside: the context's
    np.testing.assert_array_equal(probs[:, ~filled], fine[:, ~filled])  # the rest as the windows said, unblended
    assert (probs.argmax(axis=0) == 2).sum() == 300 + 450 and (probs.argmax(axis=0) == 4).sum() == 50


def test_an_organ_grown_less_than_twice_keeps_the_blend_and_more_fills_every_grown_organ():
    labels = np.zeros((10, 10, 10), np.int64)
    labels[:2] = 2  # spleen 200
    labels[9, :, :5] = 4  # left kidney 50
    grown = labels.copy()
    grown[2:5] = 2  # spleen 500: 2.5×
    grown[8, :, :5] = 4  # left kidney 100: 2×, grown as much as the gate asks
    probs, _ = with_context(_one_hot(labels), _one_hot(grown), 0.5)
    assert ((probs.argmax(axis=0) == 2).sum(), (probs.argmax(axis=0) == 4).sum()) == (500, 100)
    grown[4] = 0  # spleen 400 (2×) and kidney 100 (2×): still filled
    assert (with_context(_one_hot(labels), _one_hot(grown), 0.5)[0].argmax(axis=0) == 2).sum() == 400
    grown[3] = 0  # spleen 300 (1.5×), kidney 2×: the kidney alone is reason to fill
    probs, _ = with_context(_one_hot(labels), _one_hot(grown), 0.5)
    assert (probs.argmax(axis=0) == 2).sum() == 300
    grown[8, :, :5] = 0
    grown[8, :, :2] = 4  # kidney 70 (1.4×), spleen 1.5×: blended
    probs, _ = with_context(_one_hot(labels), _one_hot(grown), 0.5)
    np.testing.assert_allclose(probs, 0.5 * _one_hot(labels) + 0.5 * _one_hot(grown))


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
