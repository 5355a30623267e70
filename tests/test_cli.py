"""End-to-end `mmseg segment` / `evaluate` / `info` on real scans, and clean failures."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_weights

from napari_mmseg.cli import main
from napari_mmseg.metrics import dice_scores


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("scan_fixture, modality, extra", [("ct_scan", "CT", ()),
                                                            ("mr_scan", "MR", ("--no-orientation-check",))])
def test_segment_writes_labels_on_the_scans_grid(request, capsys, tmp_path, tiny_weights, scan_fixture, modality,
                                                 extra):
    scan = request.getfixturevalue(scan_fixture)
    out = tmp_path / "labels.nii.gz"
    code, stdout, err = run(capsys, "segment", scan, "-o", out, "--modality", modality,
                            "--weights", tiny_weights, "--device", "cpu", "-q", *extra)
    assert code == 0, err
    labels, image = sitk.ReadImage(str(out)), sitk.ReadImage(str(scan))
    assert labels.GetPixelID() == sitk.sitkUInt8
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == pytest.approx(image.GetSpacing())
    assert labels.GetOrigin() == pytest.approx(image.GetOrigin())
    assert labels.GetDirection() == pytest.approx(image.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 1, 2, 3, 4}


def test_stray_pieces_are_dropped_unless_the_command_keeps_them(capsys, tmp_path, ct_scan, tiny_weights):
    """The random test network labels a speckle: by default its stray pieces go, with
    --keep-stray-pieces they stay. (Pieces are dropped on the model's 4 mm grid; on the
    scan's finer grid, interpolation leaves some slivers, a quarter as many here.)"""
    from napari_mmseg.inference.organ_pieces import stray_pieces

    stray = {}
    for keep in (False, True):
        out = tmp_path / f"keep-{keep}.nii.gz"
        code, _, err = run(capsys, "segment", ct_scan, "-o", out, "--modality", "CT", "--weights", tiny_weights,
                           "--device", "cpu", "-q", *(["--keep-stray-pieces"] if keep else []))
        assert code == 0, err
        stray[keep] = int(stray_pieces(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))).sum())
    assert stray[True] > 1000 and stray[False] < 0.5 * stray[True], stray


def test_segment_many_into_a_folder_and_never_overwrite(capsys, tmp_path, data_dir, tiny_weights):
    scans = tmp_path / "scans"
    scans.mkdir()
    example = (data_dir / "totalsegmentator-examples" / "example_ct_sm.nii.gz").read_bytes()
    for name in ("a", "b"):
        (scans / f"{name}.nii.gz").write_bytes(example)
    out = tmp_path / "out"
    args = ("segment", scans, "-o", out, "--modality", "CT", "--weights", tiny_weights, "-q")
    assert run(capsys, *args)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    code, _, err = run(capsys, *args)
    assert code == 1 and "exists; pass --overwrite" in err
    code, _, err = run(capsys, "segment", scans / "a.nii.gz", "-o", scans / "a.nii.gz", "--modality", "CT",
                       "--weights", tiny_weights, "--overwrite")
    assert code == 1 and "over the scan" in err


def test_evaluate_agrees_with_an_independent_dice(capsys, tmp_path, data_dir):
    ref = data_dir / "abdomen-ct-btcv" / "labelsTr" / "btcv_01.nii.gz"
    ref_arr = sitk.GetArrayFromImage(sitk.ReadImage(str(ref)))
    # A prediction in our ids: the reference mapped by hand, then damaged.
    ours = np.zeros_like(ref_arr, dtype=np.uint8)
    for src, dst in ((6, 1), (1, 2), (2, 3), (3, 4)):
        ours[ref_arr == src] = dst
    ours[:, :, : ours.shape[2] // 2][ours[:, :, : ours.shape[2] // 2] == 1] = 0  # cut half the liver
    pred_img = sitk.GetImageFromArray(ours)
    pred_img.CopyInformation(sitk.ReadImage(str(ref)))
    pred = tmp_path / "pred.nii.gz"
    sitk.WriteImage(pred_img, str(pred))
    code, stdout, err = run(capsys, "evaluate", pred, ref, "--csv", tmp_path / "d.csv")
    assert code == 0, err
    assert "dataset.json" in stdout  # ids found by name beside the labels folder
    liver_ref, liver_pred = ref_arr == 6, ours == 1
    expected = 2 * (liver_ref & liver_pred).sum() / (liver_ref.sum() + liver_pred.sum())
    line = next(ln for ln in stdout.splitlines() if ln.startswith("liver"))
    assert float(line.split()[1]) == pytest.approx(expected, abs=1e-4)
    assert float(next(ln for ln in stdout.splitlines() if ln.startswith("spleen")).split()[1]) == 1.0
    # and the dataset's numbering by name gives the same
    code, stdout2, _ = run(capsys, "evaluate", pred, ref, "--ref-labels", "BTCV")
    assert code == 0 and stdout2.splitlines()[1:] == stdout.splitlines()[1:]
    spacing = pred_img.GetSpacing()
    ml = next(s for s in dice_scores(ours, ours, spacing) if s.organ == "liver").predicted_ml
    assert f"{ml:.1f}" in line


def test_evaluate_refuses_another_grid(capsys, data_dir):
    code, _, err = run(capsys, "evaluate", data_dir / "abdomen-ct-btcv/labelsTr/btcv_01.nii.gz",
                       data_dir / "abdomen-ct-btcv/labelsTr/btcv_02.nii.gz")
    assert code == 1 and "same grid" in err and "Traceback" not in err


def test_info_json_prints_the_metadata(capsys, tmp_path):
    path = make_weights(tmp_path / "w.safetensors", "v3")
    code, stdout, _ = run(capsys, "info", path, "--json")
    assert code == 0 and '"variant": "v3"' in stdout and '"spacing_mm": 4.0' in stdout


def test_average_writes_a_half_precision_soup_and_never_replaces_a_file_unasked(capsys, tmp_path):
    a, b = (make_weights(tmp_path / f"{n}.safetensors", "msbn", seed=i) for i, n in enumerate("ab"))
    out = tmp_path / "soup.safetensors"
    code, stdout, err = run(capsys, "average", a, b, "-o", out, "--half")
    assert code == 0 and str(out) in stdout, err
    assert out.stat().st_size < a.stat().st_size
    before = out.read_bytes()
    code, _, err = run(capsys, "average", a, b, "-o", out)
    assert code == 1 and "--overwrite" in err and out.read_bytes() == before


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda p: p / "missing.nii.gz", "does not exist"),
        (lambda p: (p / "bad.nii.gz").write_bytes(b"garbage") and p / "bad.nii.gz", "corrupt"),
        (lambda p: sitk.WriteImage(sitk.GetImageFromArray(np.ones((9, 9), np.float32)), str(p / "2d.nii.gz"))
         or p / "2d.nii.gz", "2-D"),
        (lambda p: sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 9, 3, 3), np.uint8), isVector=True),
                                   str(p / "rgb.nrrd")) or p / "rgb.nrrd", "RGB"),
        (lambda p: sitk.WriteImage(sitk.GetImageFromArray(np.full((5, 9, 9), np.nan, np.float32)),
                                   str(p / "nan.nrrd")) or p / "nan.nrrd", "NaN"),
    ],
)
def test_bad_input_ends_with_one_line_and_nonzero_exit(capsys, tmp_path, tiny_weights, setup, expected):
    scan = setup(tmp_path)
    code, _, err = run(capsys, "segment", scan, "-o", tmp_path / "o.nii.gz", "--modality", "CT",
                       "--weights", tiny_weights)
    assert code == 1
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_gpu_and_wrong_weights(capsys, tmp_path, ct_scan, tiny_weights):
    import torch

    if not torch.cuda.is_available():
        code, _, err = run(capsys, "segment", ct_scan, "-o", tmp_path / "o.nii.gz", "--modality", "CT",
                           "--weights", tiny_weights, "--device", "cuda")
        assert code == 1 and "use --device auto or cpu" in err
    code, _, err = run(capsys, "segment", ct_scan, "-o", tmp_path / "o.nii.gz", "--modality", "CT",
                       "--variant", "v1", "--weights", tiny_weights)
    assert code == 1 and "variant v4, not v1" in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_modality_mismatch_warns(capsys, tmp_path, mr_scan, tiny_weights):
    code, _, err = run(capsys, "segment", mr_scan, "-o", tmp_path / "o.nii.gz", "--modality", "CT",
                       "--weights", tiny_weights, "-q")
    assert code == 0 and "look like MR, not CT" in err


def test_default_variant_is_the_bundled_default(capsys, tmp_path, ct_scan):
    from napari_mmseg.config import DEFAULT_VARIANT

    out = tmp_path / "labels.nii.gz"
    code, stdout, err = run(capsys, "segment", ct_scan, "-o", out, "--modality", "CT", "--device", "cpu")
    assert code == 0, err
    assert f"({DEFAULT_VARIANT}, CT, cpu" in stdout
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out))).max() > 0


def test_report_lists_volumes_confidence_and_flags_per_scan(capsys, tmp_path, ct_scan):
    """The CT sample stored with its x direction negated (orientation metadata that swap left
    and right): the report and the printed checks must flag the liver, with volumes that
    match the written labels."""
    import json

    mirrored = sitk.ReadImage(str(ct_scan))
    direction = np.reshape(mirrored.GetDirection(), (3, 3)).copy()
    direction[0] *= -1
    mirrored.SetDirection(direction.ravel().tolist())
    scan = tmp_path / "mirrored.nii.gz"
    sitk.WriteImage(mirrored, str(scan))
    out, report = tmp_path / "labels.nii.gz", tmp_path / "report.json"
    args = ("segment", scan, "-o", out, "--modality", "CT", "--device", "cpu", "--report", report)
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    entry = json.loads(report.read_text())[str(scan)]
    assert entry["labels"] == str(out) and entry["modality"] == "CT"
    # said in the report and on screen alike (the mirrored liver is one the context pass finds larger)
    assert entry["context_blended"] is ("note: an organ looked larger" in stdout)
    labels = sitk.ReadImage(str(out))
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=5)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000
    for name, organ in entry["organs"].items():
        assert organ["volume_ml"] == pytest.approx(counts[organ["label"]] * voxel_ml, abs=0.05), name
    assert entry["organs"]["liver"]["confidence"] > 0.8
    # the network labels the mirrored liver poorly or on the wrong side: either way the liver is flagged
    assert entry["organs"]["liver"]["flags"] and any(f.startswith("Liver: ") for f in entry["flags"])
    assert "check: Liver: " in stdout
    code, _, err = run(capsys, "segment", scan, "-o", tmp_path / "again.nii.gz", "--modality", "CT",
                       "--report", report)
    assert code == 1 and "report.json exists; pass --overwrite" in err


def test_train_refuses_start_weights_of_another_network(tmp_path, tiny_weights):
    """Fine-tuning starts only from a file of the variant asked for, before any training."""
    from synthetic import write_dataset

    from napari_mmseg.models.weights import read_metadata

    ct = write_dataset(tmp_path / "ct", "CT", 2)
    held = read_metadata(tiny_weights).variant
    other = "joint" if held != "joint" else "msbn"
    with pytest.raises(SystemExit, match=f"holds a {held} network, not {other}"):
        main(["train", "--variant", other, "--ct", str(ct), "--init-weights", str(tiny_weights),
              "--out", str(tmp_path / "run"), "-q"])
    assert not (tmp_path / "run" / f"{other}.safetensors").exists()


def test_train_changes_the_augmentation_on_request_and_refuses_an_unknown_field_first(tmp_path, capsys):
    """`--augment p_coarse=0` trains without coarse patches, so the file carries no context pass;
    a misspelt field, or a negative number of batch workers, is refused before any data is read."""
    from synthetic import write_dataset

    from napari_mmseg.models.weights import read_metadata

    with pytest.raises(SystemExit, match="'p_coars' is not a probability"):
        main(["train", "--variant", "msbn", "--ct", str(tmp_path / "absent"), "--augment", "p_coars=0"])
    with pytest.raises(SystemExit, match="--sampler-workers -1: give 0"):
        main(["train", "--variant", "msbn", "--ct", str(tmp_path / "absent"), "--sampler-workers", "-1"])
    ct = write_dataset(tmp_path / "ct", "CT", 2)
    code, _, _ = run(capsys, "train", "--variant", "individual", "--ct", ct, "--steps", "1", "--batch-size", "1",
                     "--val-cases", "0", "--augment", "p_coarse=0,p_gamma=0", "--out", tmp_path / "run", "-q")
    meta = read_metadata(tmp_path / "run" / "individual-ct.safetensors")
    assert code == 0 and meta.context_weight == 0.0
    assert meta.training["augmentation"]["p_coarse"] == 0.0 and meta.training["augmentation"]["p_gamma"] == 0.0


def test_experiment_trains_every_run_with_the_changed_augmentation_and_refuses_an_unknown_field(tmp_path):
    """`mmseg experiment --augment` names the recipe of a held-out trial as `train --augment` does."""
    from napari_mmseg.study.experiment import StudyConfig, plan

    with pytest.raises(SystemExit, match="experiment --augment p_enlarg=0: 'p_enlarg' is not a probability"):
        main(["experiment", "--bundle", str(tmp_path / "absent.npz"), "--augment", "p_enlarg=0"])
    study = StudyConfig(out_dir=tmp_path, folds=2, repetitions=1, steps=2, augment="p_enlarge=0,p_gamma=0.5")
    for task in plan(study):
        augmentation = task.training_run(study).preset.training.augmentation
        assert augmentation.p_enlarge == 0.0 and augmentation.p_gamma == 0.5
    default = StudyConfig(out_dir=tmp_path).preset_used().training.augmentation
    assert default.p_enlarge == 0.25, "no --augment: the preset's recipe"
