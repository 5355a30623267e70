"""The weights shipped in the package: real, complete, and good on cases they never saw."""

import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmseg.config import VARIANTS
from napari_mmseg.datasets import load_nnunet_dataset
from napari_mmseg.inference import InferenceOptions, segment_image
from napari_mmseg.metrics import dice_scores, mean_dice
from napari_mmseg.weights import bundled_weights_dir, load_weights

BUNDLED = sorted(bundled_weights_dir().glob("*.safetensors"))


def test_bundle_stays_small():
    assert sum(p.stat().st_size for p in BUNDLED) < 60e6


@pytest.mark.parametrize("path", BUNDLED, ids=[p.stem for p in BUNDLED])
def test_bundled_weights_say_how_they_were_made(path):
    loaded = load_weights(path)
    meta = loaded.meta
    assert meta.variant in VARIANTS
    assert path.stem == (f"individual-{meta.modalities[0].lower()}" if meta.variant == "individual" else meta.variant)
    assert meta.spacing_mm > 0 and meta.patch_size % loaded.model.size_multiple == 0
    assert set(meta.normalization) == set(meta.modalities)
    assert "cases" in meta.trained_on and meta.training["steps"] > 0
    for modality in meta.modalities:
        assert meta.validation_dice[modality]["mean"] > 0.7, "validation Dice recorded at training time"


@pytest.mark.parametrize("path", [p for p in BUNDLED if p.stem == "v4"], ids=["v4"])
def test_v4_on_its_held_out_patients_at_native_resolution(path, data_dir):
    loaded = load_weights(path)
    held_out = loaded.meta.validation_dice["cases"]
    cases = load_nnunet_dataset(data_dir / "abdomen-ct-btcv") + load_nnunet_dataset(data_dir / "abdomen-mr-chaos-t2")
    for case in (c for c in cases if c.name in held_out.get(c.modality, [])[:1]):
        assert case.name not in loaded.meta.trained_on
        image, ref = case.load()
        pred = segment_image(image, loaded, case.modality, InferenceOptions(device="cpu")).labels
        scores = dice_scores(sitk.GetArrayFromImage(pred), sitk.GetArrayFromImage(ref), image.GetSpacing())
        assert mean_dice(scores) > 0.7, f"{case.name}: {[round(s.dice, 3) for s in scores]}"
        assert not np.isnan(mean_dice(scores))
