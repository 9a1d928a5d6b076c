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
    # the classes that every training label has (read here independently), recorded for predict-c2f's check
    import SimpleITK as sitk

    present = [set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(f))))) - {0}
               for f in sorted((c2f_dataset["raw"] / "labelsTr").glob("*.nii.gz"))]
    always = sorted(int(v) for v in set.intersection(*present))
    assert len(present) == 8 and always == [1, 2, 3], "the synthetic abdomen should have every organ in every case"
    assert coarse["nnunet_ext"]["c2f"] == "coarse" and fine["nnunet_ext"] == {
        "c2f": "fine", "coarse_configuration": "3d_coarse", "roi_margin_mm": 8.0, "roi_mode": "softmax",
        "roi_fg_threshold": 0.2, "roi_min_component_ml": 1.0, "roi_missing_class_margin_mm": 24.0,
        "always_present_classes": always}
    assert "classes that every training case has: 1 2 3" in c2f_dataset["log"]
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


def _edited_coarse(trained_root: Path, name: str, edit) -> str:
    """The trained coarse model copied under the trainer name ``name`` (for ``-tr_coarse``) with ``edit(key, tensor)``
    applied in place to every output layer (``decoder.seg_layers.*``, weight and bias) of its checkpoint. What a
    trained model predicts on a given input is not something a test can count on; an edited output layer is."""
    import torch

    folder = trained_root / f"{name}__nnUNetPlans__3d_coarse"
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(trained_root / f"{TINY}__nnUNetPlans__3d_coarse", tmp)
        ckpt_file = tmp / "fold_0" / "checkpoint_final.pth"
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
        heads = [k for k in ckpt["network_weights"] if k.startswith("decoder.seg_layers.")]
        assert heads, "no output layers found in the coarse checkpoint"
        for k in heads:
            edit(k, ckpt["network_weights"][k])
        torch.save(ckpt, ckpt_file)
        tmp.rename(folder)
    return name


def _blind(key, w):
    """Background everywhere: zero weights, bias 10 for background."""
    w.zero_()
    if key.endswith("bias"):
        w[0] = 10.0


KIDNEY = 2


def _no_kidney(key, w):
    """The kidney's score a constant -1000 (its weights zero): never the argmax, softmax probability 0. (Lowering
    the bias by 20 was not enough: a trained model's kidney score led by more than that in some voxels.)"""
    w[KIDNEY] = 0.0
    if key.endswith("bias"):
        w[KIDNEY] = -1000.0


@pytest.fixture(scope="module")
def c2f_test_images(c2f_trained, tmp_path_factory):
    inp = tmp_path_factory.mktemp("c2f_test_images")
    for f in sorted((c2f_trained["raw"] / "imagesTs").glob("*_0000.nii.gz")):
        shutil.copy(f, inp / f.name)
    return inp


@pytest.fixture(scope="module")
def c2f_fine_alone(c2f_trained, c2f_test_images, nnunet_env, nnunet_dirs, tmp_path_factory):
    """predict-c2f with a coarse model that predicts background everywhere: the fine model on the whole volume."""
    blind = _edited_coarse(nnunet_dirs["results"] / c2f_trained["name"], f"{TINY}Blind", _blind)
    out = tmp_path_factory.mktemp("c2f_fine_alone")
    proc = run_cli("nnunet-ext", ["predict-c2f", "-i", c2f_test_images, "-o", out, "-d", DS_C2F, "-tr", TINY,
                                  "-tr_coarse", blind, "-f", 0, "-device", "cpu"], nnunet_env)
    return {"out": out, "text": proc.stdout + proc.stderr}


def test_predict_c2f_falls_back_to_the_whole_volume_when_the_coarse_model_finds_nothing(c2f_trained, c2f_test_images,
                                                                                       c2f_fine_alone):
    """A coarse model that predicts background everywhere: the fine model segments the whole volume, with a
    warning per case."""
    import SimpleITK as sitk

    out, text = c2f_fine_alone["out"], c2f_fine_alone["text"]
    rows = {r["case"]: r for r in csv.DictReader(open(out / "predict_c2f_cases.csv"))}
    for f in sorted(c2f_test_images.glob("*_0000.nii.gz")):
        case = f.name[:-len("_0000.nii.gz")]
        assert f"WARNING {case}: the coarse prediction is empty; the fine model segmented the whole volume" in text, \
            text[-3000:]
        row = rows[case]
        assert row["status"] == "ok" and row["fallback"] and row["roi"] == "" and float(row["roi_fraction"]) == 1
        assert _geometry(out / f"{case}.nii.gz") == _geometry(f)
    case = "abdomen3d_ts001"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(c2f_trained["raw"] / "labelsTs" / f"{case}.nii.gz")))
    d, chance = _dice_and_chance(seg, ref)
    assert d > chance, f"the fine model on the whole volume: Dice {d} vs chance {chance}"


def _class_dice(pred, ref, c):
    return 2 * np.sum((pred == c) & (ref == c)) / (np.sum(pred == c) + np.sum(ref == c))


def test_a_coarse_model_that_misses_an_organ_does_not_cost_it(c2f_trained, c2f_test_images, c2f_fine_alone,
                                                               nnunet_env, nnunet_dirs):
    """Issue 27: the trained coarse model with the kidney's output removed (argmax never kidney, kidney probability
    0). plan-c2f recorded that every training case has a kidney, so predict-c2f names the case and the class in
    a warning and grows the ROI by the larger margin (3 x 8 mm; a second pass of the fine model, kept for the
    missing classes only): every kidney voxel of the reference lies in the ROI
    and the kidney's Dice is at least what the fine model alone gives on the whole volume. The rule before
    (``--roi-mode argmax``, run with fine plans from before the record: a note, no check) gives a box that the new
    one contains. Measured in 4 runs of this test (12 cases): kidney Dice 0.00-0.49 in 11 of 12 cases with the rule
    before (0.97 in one), 0.82-0.95 in all 12 with the new ROI (the fine model alone on the whole volume:
    0.23-0.67)."""
    import SimpleITK as sitk

    root = nnunet_dirs["results"] / c2f_trained["name"]
    weak = _edited_coarse(root, f"{TINY}NoKidney", _no_kidney)
    # the fine model as plan-c2f wrote it before issue 27: only the margin in its record
    old_fine = root / f"{TINY}Old__nnUNetPlans__3d_fine"
    if not old_fine.is_dir():
        shutil.copytree(root / f"{TINY}__nnUNetPlans__3d_fine", old_fine, ignore=shutil.ignore_patterns("validation"))
        plans = json.loads((old_fine / "plans.json").read_text())
        plans["configurations"]["3d_fine"]["nnunet_ext"] = {"c2f": "fine", "coarse_configuration": "3d_coarse",
                                                           "roi_margin_mm": 8.0}
        (old_fine / "plans.json").write_text(json.dumps(plans))
    out_new, out_old = nnunet_dirs["results"].parent / "c2f_no_kidney", nnunet_dirs["results"].parent / "c2f_old"
    for d in (out_new, out_old):
        shutil.rmtree(d, ignore_errors=True)
    base = ["predict-c2f", "-i", c2f_test_images, "-d", DS_C2F, "-tr", TINY, "-tr_coarse", weak, "-f", 0,
            "-device", "cpu"]
    new = run_cli("nnunet-ext", base + ["-o", out_new], nnunet_env)
    old = run_cli("nnunet-ext", base + ["-o", out_old, "-tr_fine", f"{TINY}Old", "--roi-mode", "argmax"], nnunet_env)
    new_text, old_text = new.stdout + new.stderr, old.stdout + old.stderr
    rows = {r["case"]: r for r in csv.DictReader(open(out_new / "predict_c2f_cases.csv"))}
    old_rows = {r["case"]: r for r in csv.DictReader(open(out_old / "predict_c2f_cases.csv"))}
    alone = {r["case"]: r for r in csv.DictReader(open(c2f_fine_alone["out"] / "predict_c2f_cases.csv"))}
    assert "NOTE" not in new_text and "always present: 1 2 3 (missed: 24 mm)" in new_text, new_text[-3000:]
    assert "NOTE: the fine model's plans do not record the classes that every training case has" in old_text
    assert "the coarse prediction has no" not in old_text, old_text[-3000:]
    dice, dice_alone = [], []
    assert set(rows) == set(old_rows) == set(alone) and len(rows) == 3
    assert any(r["roi"] for r in rows.values()), "the coarse model found nothing in any test case"
    for case, row in rows.items():
        warn = [ln for ln in new_text.splitlines() if ln.startswith(f"WARNING {case}: the coarse prediction has no ")]
        assert len(warn) == 1 and "kidney (2)" in warn[0], new_text[-3000:]
        assert row["status"] == "ok" and str(KIDNEY) in row["missing_classes"].split() and row["roi_mode"] == "softmax"
        old_row = old_rows[case]
        assert old_row["roi_mode"] == "argmax" and old_row["missing_classes"] == ""
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(c2f_trained["raw"] / "labelsTs" / f"{case}.nii.gz")))
        if row["roi"]:  # (a tiny-budget coarse model may find nothing at all in a case: then the whole volume)
            assert "ROI grown by 24 mm instead of 8 mm (a second pass of the fine model; from it only kidney (2)" \
                in warn[0] and float(row["roi_margin_mm"]) == 24, row
            box = json.loads(row["roi"])
            inside = np.zeros(ref.shape, bool)
            inside[tuple(slice(a, b) for a, b in box)] = True
            assert inside[ref == KIDNEY].all(), f"{case}: kidney voxels outside the ROI {box}"
            old_box = json.loads(old_row["roi"])
            assert all(a <= c and d <= b for (a, b), (c, d) in zip(box, old_box)), (box, old_box)
            assert float(old_row["roi_fraction"]) < float(row["roi_fraction"])
        read = lambda folder: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))  # noqa: E731
        dice.append(_class_dice(read(out_new), ref, KIDNEY))
        dice_alone.append(_class_dice(read(c2f_fine_alone["out"]), ref, KIDNEY))
        assert alone[case]["roi"] == ""
    # the fine model itself is a 30-iteration one: its kidney Dice varies with the box it is given (0.37-0.97 per
    # case in one pass on the widened boxes while this was written); on the whole volume it makes false positives
    # everywhere (0.19-0.67)
    assert np.mean(dice) >= np.mean(dice_alone) - 0.02 and np.mean(dice) > 0.3, (dice, dice_alone)


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
               C2F_TRAINER=TINY, C2F_FOLDS="0", C2F_DEVICE="cpu",
               PATH=os.path.dirname(_python()) + ":" + os.environ["PATH"])
    proc = subprocess.run(["sh", str(REPO / "submission" / "predict.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in outputs.glob("*.nii.gz")) == ["abdomen3d_ts000.nii.gz", "abdomen3d_ts001.nii.gz"]


def _python():
    import sys
    return sys.executable
