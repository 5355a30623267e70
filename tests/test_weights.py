"""The weights format: round trip, metadata, and a clear sentence for every wrong file."""

from dataclasses import replace

import pytest
import torch
from conftest import make_weights

from napari_mmseg.errors import WeightsError
from napari_mmseg.models.weights import average_weights, bundled_weights, load_weights, read_metadata, save_weights


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = make_weights(tmp_path / "w.safetensors", "v2")
    loaded = load_weights(path, variant="v2", modality="MR")
    again = make_weights(tmp_path / "same.safetensors", "v2")
    ref = load_weights(again).model.state_dict()
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    meta = loaded.meta
    assert meta.variant == "v2" and meta.modalities == ("CT", "MR")
    assert meta.spacing_mm == 4.0 and meta.patch_size == 32
    assert meta.normalization["CT"].window == (-125.0, 275.0)
    assert meta.classes[3] == "kidney_right"
    assert not loaded.model.training


def test_half_precision_storage_loads_as_float32(tmp_path):
    loaded = load_weights(make_weights(tmp_path / "w.safetensors"))
    half = save_weights(loaded.model, loaded.meta, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < (tmp_path / "w.safetensors").stat().st_size
    back = load_weights(half)
    assert all(t.dtype != torch.float16 for t in back.model.state_dict().values())


def test_wrong_variant_and_modality(tmp_path):
    path = make_weights(tmp_path / "w.safetensors", "v1")
    with pytest.raises(WeightsError, match="variant v1, not v4"):
        load_weights(path, variant="v4")
    ind = make_weights(tmp_path / "ct.safetensors", "individual", ("CT",))
    with pytest.raises(WeightsError, match="trained for CT, not MR"):
        load_weights(ind, modality="MR")


def test_not_a_weights_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="not a napari-mmseg weights file"):
        read_metadata(junk)
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")


def test_pickle_is_never_loaded(tmp_path):
    pkl = tmp_path / "model.pt"
    torch.save({"a": torch.zeros(2)}, pkl)
    with pytest.raises(WeightsError, match="not a napari-mmseg weights file"):
        load_weights(pkl)


def test_truncated_file(tmp_path):
    path = make_weights(tmp_path / "w.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(WeightsError, match="corrupt or truncated|not a napari-mmseg"):
        load_weights(cut)


def test_missing_and_misshaped_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    path = make_weights(tmp_path / "w.safetensors")
    meta = read_metadata(path)
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    del tensors[name]
    save_file(tensors, str(tmp_path / "missing.safetensors"), metadata={"napari_mmseg": meta.to_json()})
    with pytest.raises(WeightsError, match=f"missing {name}"):
        load_weights(tmp_path / "missing.safetensors")
    tensors = load_file(str(path))
    conv = next(k for k in tensors if k.endswith("conv.weight"))
    tensors[conv] = torch.zeros(1, 1, 1, 1, 1)
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata={"napari_mmseg": meta.to_json()})
    with pytest.raises(WeightsError, match="mis-shaped"):
        load_weights(tmp_path / "shape.safetensors")


def test_safetensors_without_our_metadata(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="without napari-mmseg metadata"):
        read_metadata(tmp_path / "other.safetensors")


def test_bundled_lookup_names_the_variant_and_modality():
    with pytest.raises(WeightsError, match="Unknown variant"):
        bundled_weights("v9")
    with pytest.raises(WeightsError, match="give the modality"):
        bundled_weights("individual")


def test_dual_stream_file_without_per_modality_statistics_uses_the_blended_ones(tmp_path):
    """Files written before shared BN layers kept per-modality statistics still load."""
    from safetensors.torch import load_file, save_file

    path = make_weights(tmp_path / "w.safetensors", "v4")
    meta = read_metadata(path)
    tensors = load_file(str(path))
    old = {k: v for k, v in tensors.items() if not k.endswith(("_CT", "_MR"))}
    assert len(old) < len(tensors)
    save_file(old, str(tmp_path / "old.safetensors"), metadata={"napari_mmseg": meta.to_json()})
    state = load_weights(tmp_path / "old.safetensors").model.state_dict()
    key = next(k for k in state if k.endswith("running_mean_MR"))
    assert torch.equal(state[key], tensors[key.replace("running_mean_MR", "bn.running_mean")])


def test_files_of_format_1_have_no_context_pass(tmp_path):
    """Files written before the context pass (format 1, no context_weight) load as before."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_mmseg.models.weights_file import METADATA_KEY

    path = make_weights(tmp_path / "v4.safetensors")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
        doc = json.loads(f.metadata()[METADATA_KEY])
    doc.pop("context_weight")
    doc["format_version"] = 1
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={METADATA_KEY: json.dumps(doc)})
    assert load_weights(tmp_path / "old.safetensors").meta.context_weight == 0.0


def test_averages_of_averages_load_however_many_rounds_they_took(tmp_path):
    # each round averages the last round's file with a fine-tune of it, as the shipped files were made
    fine_tune = make_weights(tmp_path / "fine-tune.safetensors", "msbn", seed=1)
    current = make_weights(tmp_path / "round0.safetensors", "msbn", seed=0)
    for i in range(1, 21):
        soup = average_weights([current, fine_tune])
        current = save_weights(soup.model, soup.meta, tmp_path / f"round{i}.safetensors")
    training = load_weights(current).meta.training
    assert training["averaged_from"] == [str(tmp_path / "round19.safetensors"), str(fine_tune)]
    # each file once, oldest first: the first start and the fine-tune, then every earlier average
    assert [r["file"] for r in training["earlier"]] == [str(tmp_path / "round0.safetensors"), str(fine_tune)] + [
        str(tmp_path / f"round{i}.safetensors") for i in range(1, 20)]


def test_an_average_records_each_files_run_and_claims_none_as_its_own(tmp_path):
    runs = []
    for name, record in (("start", {"preset": "light", "seed": 0, "steps": 5}),
                         ("tuned", {"preset": "light", "seed": 1, "steps": 7, "init_weights": "start.safetensors"})):
        loaded = load_weights(make_weights(tmp_path / f"{name}.safetensors", "msbn", seed=record["seed"]))
        loaded.meta.training.update(record, validation_history=[{"step": 5}])
        runs.append((save_weights(loaded.model, loaded.meta, tmp_path / f"{name}.safetensors"), record))
    training = average_weights([p for p, _ in runs]).meta.training
    assert training == {"preset": "light", "averaged_from": [str(p) for p, _ in runs],
                        "earlier": [{"file": str(p), **record} for p, record in runs]}
    # the start, named by file name in the fine-tune's own record, is listed once
    tuned = load_weights(runs[1][0])
    tuned.meta.training["earlier"] = [{"file": "start.safetensors", **runs[0][1]}]
    save_weights(tuned.model, tuned.meta, runs[1][0])
    training = average_weights([p for p, _ in runs]).meta.training
    assert [r["file"] for r in training["earlier"]] == [str(p) for p, _ in runs]


def test_an_old_nested_record_of_averages_is_flattened(tmp_path):
    a = make_weights(tmp_path / "a.safetensors", "msbn", seed=0)
    old = load_weights(a)
    old.meta.training["averaged_from"] = [{"file": "x", "averaged_from": [{"file": "y", "averaged_from": ["p", "q"]},
                                                                         "z"]}, "w"]
    nested = save_weights(old.model, old.meta, tmp_path / "nested.safetensors")
    training = average_weights([nested, a]).meta.training
    assert training["averaged_from"] == [str(nested), str(a)]
    assert [r for r in training["earlier"] if "averaged_from" in r] == [
        {"file": "y", "averaged_from": ["p", "q"]},
        {"file": "x", "averaged_from": ["y", "z"]},
        {"file": str(nested), **{k: v for k, v in old.meta.training.items() if k != "validation_history"},
         "averaged_from": ["x", "w"]}]


def test_weights_whose_metadata_would_not_load_are_not_written(tmp_path):
    loaded = load_weights(make_weights(tmp_path / "a.safetensors", "msbn"))
    deep: list = ["run"]
    for _ in range(20):
        deep = [deep]
    loaded.meta.training["history"] = deep
    with pytest.raises(WeightsError, match="would not load back.*nested"):
        save_weights(loaded.model, loaded.meta, tmp_path / "deep.safetensors")
    assert not (tmp_path / "deep.safetensors").exists()


def test_averaged_weights_are_the_mean_of_the_files_and_only_of_one_network(tmp_path):
    a = make_weights(tmp_path / "a.safetensors", "msbn", seed=0)
    b = make_weights(tmp_path / "b.safetensors", "msbn", seed=1)
    soup = average_weights([a, b])
    sa, sb = (load_weights(p).model.state_dict() for p in (a, b))
    for k, v in soup.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, (sa[k] + sb[k]) / 2), k
        else:
            assert torch.equal(v, sa[k]), k  # counters are not averaged
    assert soup.meta.training["averaged_from"] == [str(a), str(b)]
    saved = save_weights(soup.model, soup.meta, tmp_path / "soup.safetensors")
    assert load_weights(saved).meta.variant == "msbn"
    again = average_weights([saved, a])  # an average of an average records both levels
    assert again.meta.training["averaged_from"] == [str(saved), str(a)]
    assert [(r["file"], "averaged_from" in r) for r in again.meta.training["earlier"]] == [
        (str(a), False), (str(b), False), (str(saved), True)]
    # each run measures the CT mean afresh: float noise is the same preprocessing, a new window is not
    noisy = load_weights(b)
    noisy.meta.normalization["CT"] = replace(noisy.meta.normalization["CT"], mean=75.0 + 1e-5)
    average_weights([a, save_weights(noisy.model, noisy.meta, tmp_path / "noisy.safetensors")])
    noisy.meta.normalization["CT"] = replace(noisy.meta.normalization["CT"], window=(-160.0, 240.0))
    with pytest.raises(WeightsError, match="not the same network"):
        average_weights([a, save_weights(noisy.model, noisy.meta, tmp_path / "window.safetensors")])
    other = make_weights(tmp_path / "v4.safetensors", "v4")
    with pytest.raises(WeightsError, match="not the same network"):
        average_weights([a, other])
    with pytest.raises(WeightsError, match="at least two"):
        average_weights([a])


def test_a_correction_file_is_refused_as_a_segmentation_network_by_name():
    from napari_mmseg.correction.model import bundled_correction_weights

    with pytest.raises(WeightsError, match="correction network .*not a segmentation network"):
        load_weights(bundled_correction_weights())
