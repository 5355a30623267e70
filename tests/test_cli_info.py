"""`mmseg info`: a short summary a user reads (no run paths), the full record with --json."""

import json
from dataclasses import replace

from conftest import make_weights

from napari_mmseg.cli import main
from napari_mmseg.config import DEFAULT_VARIANT
from napari_mmseg.models.weights import load_weights, save_weights


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_without_a_file_summarises_the_default_and_lists_the_bundled_files(capsys):
    code, stdout, err = run(capsys, "info")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"{DEFAULT_VARIANT}.safetensors"
    for key in ("variant", "modalities", "grid", "trained on", "training", "validation Dice"):
        assert any(line.startswith(f"  {key} ") for line in lines), key
    assert "CT 24 cases (BTCV); MR 16 cases (CHAOS T2-SPIR)" in stdout
    assert "individual-ct.safetensors" in stdout and "v4.safetensors" in stdout
    assert "runs/" not in stdout and "{" not in stdout and len(lines) < 30


def test_info_shows_held_out_dice_and_the_recipe_and_json_the_whole_record(capsys, tmp_path):
    path = make_weights(tmp_path / "w.safetensors", "v3")
    loaded = load_weights(path)
    meta = replace(loaded.meta, trained_on="CT: 3 cases (btcv_01, btcv_02, btcv_03); MR: 2 cases (chaos_02, chaos_03)",
                   training={"preset": "light", "steps": 1200, "init_weights": "runs/x/start.safetensors"},
                   validation_dice={"cases": {"CT": ["btcv_04"], "MR": []}, "on": "model grid",
                                    "CT": {"liver": 0.9, "spleen": 0.8, "kidney_right": 0.7, "kidney_left": 0.6,
                                           "mean": 0.75}})
    save_weights(loaded.model, meta, path)
    code, stdout, err = run(capsys, "info", path)
    assert code == 0, err
    assert "v3 (dual-stream: decoder per modality, the rest shared)" in stdout
    assert "CT 3 cases (BTCV); MR 2 cases (CHAOS T2-SPIR)" in stdout
    assert "preset light, 1 200 steps fine-tuning an earlier network" in stdout
    assert "CT 0.750 on 1 held-out cases (liver 0.900, spleen 0.800, right kidney 0.700, left kidney 0.600)" in stdout
    assert "runs/" not in stdout
    code, stdout, _ = run(capsys, "info", path, "--json")
    assert code == 0 and json.loads(stdout)["training"]["init_weights"] == "runs/x/start.safetensors"


def test_info_on_the_correction_network_says_what_it_is(capsys):
    from napari_mmseg.correction.model import bundled_correction_weights

    path = bundled_correction_weights()
    code, stdout, err = run(capsys, "info", path)
    assert code == 0, err
    assert stdout.splitlines()[1].startswith("  kind             correction network")
    assert "held out" in stdout and "{" not in stdout
    code, stdout, err = run(capsys, "info", path, "--json")
    assert code == 0, err
    assert json.loads(stdout)["kind"] == "correction"
