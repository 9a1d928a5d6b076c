"""FLARE22 coarse-to-fine end to end: ``nnunet-ext plan-c2f`` (3d_coarse + 3d_fine planned by nnU-Net), both trained
with ``nnUNetv2_train`` on a synthetic abdomen with a large background, ``nnunet-ext predict-c2f`` (geometry kept,
Dice above chance, corrupt input reported while the other cases go on, empty coarse prediction falls back to the
whole volume, ``--continue``), and ``submission/predict.sh`` run as the FLARE container would run it."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli

DS_C2F = 523
TINY = "nnUNetTrainer_tinyC2F"


def test_the_fine_crop_is_handed_to_preprocess_unlabeled():
    """flare22 registers its ROI crop with the unlabelled-data package (which imports no method) when nnunet-ext
    builds its verbs; the crop applies to the fine configuration only."""
    from nnunet_ext.cli import build_parser
    from nnunet_ext.flare22.plan import FINE_ROI_CROP
    from nnunet_ext.flare22.preprocess import ROICropPreprocessor
    from nnunet_ext.unlabeled.roi import registered_roi_crops, roi_crop_for

    build_parser()
    crops = registered_roi_crops()
    assert crops.count(FINE_ROI_CROP) == 1
    fine = {"nnunet_ext": {"c2f": "fine", "coarse_configuration": "3d_coarse", "roi_margin_mm": 8.0}}
    assert roi_crop_for(fine, crops) is FINE_ROI_CROP
    assert roi_crop_for({"nnunet_ext": {"c2f": "coarse"}}, crops) is None and roi_crop_for({}, crops) is None
    assert FINE_ROI_CROP.preprocessor() is ROICropPreprocessor
    hint = FINE_ROI_CROP.masks_hint("22", "3d_fine", fine, "/raw/imagesUnlabeled")
    assert "--roi-masks DIR" in hint and "nnUNetv2_predict -i /raw/imagesUnlabeled -o DIR -d 22 -c 3d_coarse" in hint


@pytest.fixture(scope="module")
def c2f_dataset(nnunet_dirs, nnunet_env):
    """Synthetic abdomen (8 train, 3 test), planned and preprocessed by plan-c2f alone (no plans before)."""
    from nnunet_ext.core.synthetic import generate_abdomen_dataset_3d

    folder = generate_abdomen_dataset_3d(str(nnunet_dirs["raw"]), DS_C2F, num_train=8, num_test=3, seed=3)
    proc = run_cli("nnunet-ext", ["plan-c2f", "-d", DS_C2F, "--coarse-size", 32, "--margin-mm", 8, "-np", 1],
                   nnunet_env)
    return {"id": DS_C2F, "raw": Path(folder), "name": Path(folder).name, "log": proc.stdout,
            "pre": nnunet_dirs["preprocessed"] / Path(folder).name}


def test_plan_c2f_adds_coarse_and_fine_configurations(c2f_dataset):
    import pickle

    plans = json.loads((c2f_dataset["pre"] / "nnUNetPlans.json").read_text())
    cfg = plans["configurations"]
    full, coarse, fine = cfg["3d_fullres"], cfg["3d_coarse"], cfg["3d_fine"]
    assert coarse["nnunet_ext"]["c2f"] == "coarse" and fine["nnunet_ext"] == {
        "c2f": "fine", "coarse_configuration": "3d_coarse", "roi_margin_mm": 8.0}
    # coarse: the median volume (24 x 64 x 64 at 3 x 2 x 2 mm) at most 32 voxels per axis, small network
    assert coarse["spacing"] == [3.0, 4.0, 4.0] and coarse["median_image_size_in_voxels"] == [24, 32, 32]
    assert coarse["architecture"]["arch_kwargs"]["features_per_stage"][0] == 16
    # fine: full resolution, planned on the ROI (smaller than the volume)
    assert fine["spacing"] == full["spacing"]
    assert np.prod(fine["median_image_size_in_voxels"]) < 0.5 * np.prod(full["median_image_size_in_voxels"])
    # preprocessed: coarse by nnU-Net, fine cropped to labels + 8 mm with the crop recorded for nnU-Net's export
    assert len(list((c2f_dataset["pre"] / "nnUNetPlans_3d_coarse").glob("*.b2nd"))) == 16  # data + seg per case
    pkl = sorted((c2f_dataset["pre"] / "nnUNetPlans_3d_fine").glob("*.pkl"))
    assert len(pkl) == 8
    props = pickle.load(open(pkl[0], "rb"))
    assert tuple(props["shape_before_cropping"]) == (24, 64, 64)
    box = props["nnunet_ext_roi"]
    assert all(0 <= a < b <= n for (a, b), n in zip(box, (24, 64, 64)))
    assert np.prod([b - a for a, b in box]) < 0.5 * 24 * 64 * 64, "the ROI should be a small part of the volume"
    assert [list(b) for b in props["bbox_used_for_cropping"]] == box  # CT: nnU-Net's non-zero crop keeps all


def test_unlabelled_cases_for_the_fine_configuration_are_cropped_to_their_roi_masks(c2f_dataset, nnunet_env,
                                                                                      tmp_path):
    import pickle

    raw = c2f_dataset["raw"]
    (raw / "imagesUnlabeled").mkdir(exist_ok=True)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, f in enumerate(sorted((raw / "imagesTs").glob("*_0000.nii.gz"))[:2]):
        shutil.copy(f, raw / "imagesUnlabeled" / f"u{i}_0000.nii.gz")
    shutil.copy(sorted((raw / "labelsTs").glob("*.nii.gz"))[0], masks / "u0.nii.gz")  # u1 has no mask
    proc = run_cli("nnunet-ext", ["preprocess-unlabeled", "-d", DS_C2F, "-c", "3d_fine", "-np", 1], nnunet_env,
                   check=False)
    assert proc.returncode == 2 and "--roi-masks" in proc.stderr, proc.stderr[-2000:]
    proc = run_cli("nnunet-ext", ["preprocess-unlabeled", "-d", DS_C2F, "-c", "3d_fine", "-np", 1, "--roi-masks",
                                  masks, "-q"], nnunet_env)
    out = c2f_dataset["pre"] / "nnUNetPlans_3d_fine_unlabeled"
    props = pickle.load(open(out / "u0.pkl", "rb"))
    assert tuple(props["shape_before_cropping"]) == (24, 64, 64)
    assert np.prod(props["shape_after_cropping_and_before_resampling"]) < 0.5 * 24 * 64 * 64
    skipped = json.loads((out / "skipped.json").read_text())
    assert list(skipped) == ["u1"] and "u1.nii.gz" in skipped["u1"]
    shutil.rmtree(raw / "imagesUnlabeled")


@pytest.fixture(scope="module")
def c2f_trained(c2f_dataset, nnunet_env):
    for c in ("3d_coarse", "3d_fine"):
        run_cli("nnUNetv2_train", [DS_C2F, c, 0, "-tr", TINY, "-device", "cpu"], nnunet_env, timeout=1800)
    return c2f_dataset


def test_fine_validation_is_exported_into_the_whole_volume(c2f_trained, nnunet_dirs):
    """nnU-Net's final validation of 3d_fine predicts the ROI crops and, through the crop recorded by
    ROICropPreprocessor, writes whole volumes with the reference's geometry (validation Dice on full labels)."""
    fold = nnunet_dirs["results"] / c2f_trained["name"] / f"{TINY}__nnUNetPlans__3d_fine" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["foreground_mean"]["Dice"] > 0.2, summary["foreground_mean"]
    for pred in (fold / "validation").glob("*.nii.gz"):
        assert _geometry(pred) == _geometry(c2f_trained["raw"] / "labelsTr" / pred.name)


def _geometry(path):
    import SimpleITK as sitk

    im = sitk.ReadImage(str(path))
    return im.GetSize(), im.GetSpacing(), im.GetOrigin(), im.GetDirection()


def _write_like(array, reference_path, out_path, direction=None):
    import SimpleITK as sitk

    ref = sitk.ReadImage(str(reference_path))
    im = sitk.GetImageFromArray(array)
    im.CopyInformation(ref)
    if direction is not None:
        im.SetDirection(direction)
    sitk.WriteImage(im, str(out_path))


def _dice_and_chance(pred, ref):
    """Mean foreground Dice over the organs present, and what a random labelling with the true foreground share
    would get (its expected Dice = that share)."""
    dices = [2 * np.sum((pred == v) & (ref == v)) / (np.sum(pred == v) + np.sum(ref == v))
             for v in np.unique(ref) if v != 0]
    return float(np.mean(dices)), float(np.mean(ref > 0))


@pytest.fixture(scope="module")
def c2f_inputs(c2f_trained, tmp_path_factory):
    """The 3 test images + a rotated-direction copy + a corrupt file."""
    import SimpleITK as sitk

    src = c2f_trained["raw"] / "imagesTs"
    inp = tmp_path_factory.mktemp("c2f_in")
    for f in sorted(src.glob("*.nii.gz")):
        shutil.copy(f, inp / f.name)
    first = sorted(src.glob("*.nii.gz"))[0]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(first)))
    _write_like(arr, first, inp / "flipped_0000.nii.gz", direction=(-1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0))
    (inp / "broken_0000.nii.gz").write_bytes(first.read_bytes()[:300])  # truncated gzip
    return inp


@pytest.fixture(scope="module")
def c2f_predicted(c2f_inputs, nnunet_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("c2f_out")
    proc = run_cli("nnunet-ext", ["predict-c2f", "-i", c2f_inputs, "-o", out, "-d", DS_C2F, "-tr", TINY, "-f", 0,
                                  "-device", "cpu"], nnunet_env, check=False)
    return {"out": out, "proc": proc, "inputs": c2f_inputs}


def test_predict_c2f_keeps_geometry_and_beats_chance(c2f_predicted, c2f_trained):
    out, inp = c2f_predicted["out"], c2f_predicted["inputs"]
    import SimpleITK as sitk

    for f in sorted(inp.glob("*_0000.nii.gz")):
        case = f.name[:-len("_0000.nii.gz")]
        if case == "broken":
            continue
        pred = out / f"{case}.nii.gz"
        assert pred.is_file(), f"{pred} missing:\n{c2f_predicted['proc'].stdout[-3000:]}"
        assert _geometry(pred) == _geometry(f), f"{case}: output geometry differs from the input"
    dices, chances = [], []
    for ref in sorted((c2f_trained["raw"] / "labelsTs").glob("*.nii.gz")):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / ref.name)))
        assert set(np.unique(seg)) <= {0, 1, 2, 3}
        d, c = _dice_and_chance(seg, sitk.GetArrayFromImage(sitk.ReadImage(str(ref))))
        dices.append(d)
        chances.append(c)
    assert np.mean(dices) > np.mean(chances) + 0.1, f"Dice {dices} vs chance {chances}"
    assert not list(out.glob(".*partial*")), "temporary files left behind"


def test_predict_c2f_reports_corrupt_input_and_goes_on(c2f_predicted):
    proc = c2f_predicted["proc"]
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "ERROR broken" in text and "broken_0000.nii.gz" in text, "the corrupt file must be named"
    rows = {r["case"]: r for r in csv.DictReader(open(c2f_predicted["out"] / "predict_c2f_cases.csv"))}
    assert set(rows) == {"abdomen3d_ts000", "abdomen3d_ts001", "abdomen3d_ts002", "flipped", "broken"}
    assert rows["broken"]["status"] == "failed"
    real = [r for c, r in rows.items() if c.startswith("abdomen3d_ts")]
    assert all(r["status"] == "ok" for r in real)
    with_roi = [r for r in real if r["roi"]]  # a tiny-budget coarse model may miss the organs in a case
    assert with_roi and with_roi[0]["roi"].startswith("[["), "the coarse model found no ROI in any test case"
    ok = with_roi[0]
    assert float(ok["peak_ram_mb"]) > 0
    t = {k: float(ok[k]) for k in ("read_s", "coarse_s", "fine_s", "write_s", "total_s", "network_s")}
    assert abs(t["read_s"] + t["coarse_s"] + t["fine_s"] + t["write_s"] - t["total_s"]) < 1e-3
    assert 0 < t["network_s"] < t["total_s"]
    assert "% in the networks" in text


def test_predict_c2f_falls_back_to_the_whole_volume_when_the_coarse_model_finds_nothing(c2f_trained, c2f_inputs,
                                                                                       nnunet_env, nnunet_dirs,
                                                                                       tmp_path):
    """A coarse model that predicts background everywhere (the trained one with its output layers set to favour
    background, copied under another trainer name for ``-tr_coarse``; what a trained model predicts on any given
    input is not something a test can count on): the fine model segments the whole volume, with a warning."""
    trained = nnunet_dirs["results"] / c2f_trained["name"]
    blind = trained / f"{TINY}Blind__nnUNetPlans__3d_coarse"
    if not blind.is_dir():
        shutil.copytree(trained / f"{TINY}__nnUNetPlans__3d_coarse", blind)
        import torch

        ckpt_file = blind / "fold_0" / "checkpoint_final.pth"
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
        heads = [k for k in ckpt["network_weights"] if k.startswith("decoder.seg_layers.")]
        assert heads, "no output layers found in the coarse checkpoint"
        for k in heads:
            w = ckpt["network_weights"][k]
            w.zero_()
            if k.endswith("bias"):
                w[0] = 10.0
        torch.save(ckpt, ckpt_file)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    case = "abdomen3d_ts001"
    shutil.copy(c2f_inputs / f"{case}_0000.nii.gz", inp)
    proc = run_cli("nnunet-ext", ["predict-c2f", "-i", inp, "-o", out, "-d", DS_C2F, "-tr", TINY, "-tr_coarse",
                                  f"{TINY}Blind", "-f", 0, "-device", "cpu"], nnunet_env)
    text = proc.stdout + proc.stderr
    assert f"WARNING {case}: the coarse prediction is empty" in text and "whole volume" in text, text[-3000:]
    row, = csv.DictReader(open(out / "predict_c2f_cases.csv"))
    assert row["status"] == "ok" and row["fallback"] and row["roi"] == ""
    assert _geometry(out / f"{case}.nii.gz") == _geometry(inp / f"{case}_0000.nii.gz")
    import SimpleITK as sitk

    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(c2f_trained["raw"] / "labelsTs" / f"{case}.nii.gz")))
    d, chance = _dice_and_chance(seg, ref)
    assert d > chance, f"the fine model on the whole volume: Dice {d} vs chance {chance}"


def test_predict_c2f_continue_skips_finished_cases(c2f_predicted, nnunet_env, tmp_path):
    out, inp = c2f_predicted["out"], c2f_predicted["inputs"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    good = tmp_path / "in"
    good.mkdir()
    for f in inp.glob("abdomen3d_ts*_0000.nii.gz"):
        shutil.copy(f, good / f.name)
    proc = run_cli("nnunet-ext", ["predict-c2f", "-i", good, "-o", out, "-d", DS_C2F, "-tr", TINY, "-f", 0,
                                  "-device", "cpu", "--continue", "--csv", tmp_path / "cases.csv"], nnunet_env)
    assert "predict-c2f:" in proc.stdout
    rows = list(csv.DictReader(open(tmp_path / "cases.csv")))
    assert {r["status"] for r in rows} == {"skipped (output exists)"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == before


def test_submission_predict_sh_runs_the_flare_convention(c2f_trained, c2f_inputs, nnunet_env, tmp_path):
    """predict.sh reads /workspace/inputs and writes /workspace/outputs in the container; here the same script runs
    with the folders and the model given through its environment variables."""
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    for f in c2f_inputs.glob("abdomen3d_ts00[01]_0000.nii.gz"):
        shutil.copy(f, inputs / f.name)
    env = dict(nnunet_env, INPUT_DIR=str(inputs), OUTPUT_DIR=str(outputs), C2F_DATASET=str(DS_C2F),
               C2F_TRAINER=TINY, C2F_FOLDS="0", C2F_DEVICE="cpu", PATH=os.path.dirname(_python()) + ":" + os.environ["PATH"])
    proc = subprocess.run(["sh", str(REPO / "submission" / "predict.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in outputs.glob("*.nii.gz")) == ["abdomen3d_ts000.nii.gz", "abdomen3d_ts001.nii.gz"]


def _python():
    import sys
    return sys.executable
