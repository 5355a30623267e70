"""Training the correction network: the corruptions make errors to click on, and a short run
continues from a saved file and writes one the loader takes."""

import numpy as np
import torch

from napari_mmseg.correction.model import CorrectionMetadata, load_correction_model, read_correction_network
from napari_mmseg.correction.training import CORRUPTIONS, CorrectionTraining, corrupt, train_correction
from napari_mmseg.models.weights import bundled_weights, read_metadata
from napari_mmseg.training.training_data import PreparedCase


def organs(shape=(48, 48, 48)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[8:30, 8:30, 8:30] = 1
    labels[30:44, 30:44, 6:20] = 2
    return labels


def test_every_corruption_leaves_labels_to_correct_and_the_reference_untouched():
    reference = organs()
    kept = reference.copy()
    rng = np.random.default_rng(0)
    assert abs(sum(CORRUPTIONS.values()) - 1) < 1e-9
    changed = [(corrupt(reference, rng) != reference).any() for _ in range(40)]
    assert np.mean(changed) > 0.9
    assert np.array_equal(reference, kept)


def test_a_short_run_continues_from_a_saved_file_and_writes_one_the_loader_takes(tmp_path):
    start_net, meta = read_correction_network(load_correction_model(device="cpu").path)
    seg = read_metadata(bundled_weights("msbn"))
    meta = CorrectionMetadata(normalization={m: seg.normalization[m] for m in ("CT", "MR")},
                              network=meta.network, training={"held_out": []})
    rng = np.random.default_rng(1)
    values = (rng.normal(40, 10, (64, 64, 64)) + 60 * (organs((64, 64, 64)) > 0)).astype(np.float32)
    case = PreparedCase("phantom", "CT", values, organs((64, 64, 64)))
    run = CorrectionTraining(tmp_path, seconds=600, max_steps=2, batch_size=1, patch=32, checkpoint_every=2)
    path = train_correction(run, [case], meta, log=lambda _: None, init=start_net)
    trained, trained_meta = read_correction_network(path)
    assert trained_meta.training["steps"] == 2
    # two small steps from the saved weights, not from a fresh start
    before, after = start_net.state_dict(), trained.state_dict()
    first = "unet.model.0.conv.weight"
    assert torch.allclose(before[first], after[first].float(), atol=0.05)
    assert load_correction_model(path, device="cpu").meta.training["cases"] == ["phantom"]
