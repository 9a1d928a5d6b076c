"""``nnunet-ext robustness``: the corruptions (unit tests) and the whole pipeline on a tiny trained 2D model."""
from __future__ import annotations

import argparse
import csv
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from nnunet_ext.robustness.corruptions import (CORRUPTIONS, GENERIC, MRI_ONLY, RGB_ONLY, available_corruptions,
                                               corrupt, intensity_stats)

from conftest import run_cli


# ------------------------------------------------------------------------------------------- test images
def _image_3d(scale: float = 800.0, offset: float = 0.0) -> np.ndarray:
    """(1, 12, 24, 24) MRI-like volume: a bright ellipsoid in textured tissue, dark background, noise."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(12), np.arange(24), np.arange(24), indexing="ij")
    body = ((z - 6) / 6.5) ** 2 + ((y - 12) / 11) ** 2 + ((x - 12) / 11) ** 2 < 1
    blob = ((z - 6) / 3) ** 2 + ((y - 10) / 5) ** 2 + ((x - 13) / 6) ** 2 < 1
    img = 0.05 + 0.5 * body + 0.3 * blob + 0.08 * ndimage.gaussian_filter(rng.standard_normal(body.shape), 1.5) * body
    img = img + 0.02 * rng.standard_normal(body.shape)
    return (img * scale + offset).astype(np.float32)[None]


def _image_2d_rgb() -> np.ndarray:
    """(3, 40, 40) uint8 photograph-like image: coloured blob on a textured background."""
    rng = np.random.default_rng(1)
    y, x = np.meshgrid(np.arange(40), np.arange(40), indexing="ij")
    blob = ((y - 18) / 9) ** 2 + ((x - 22) / 11) ** 2 < 1
    chans = []
    for c, (bg, fg) in enumerate(((90, 200), (110, 60), (70, 140))):
        tex = ndimage.gaussian_filter(rng.standard_normal((40, 40)), 1.5) * 40
        chans.append(np.where(blob, fg, bg) + tex + 6 * rng.standard_normal((40, 40)))
    return np.clip(np.stack(chans), 0, 255).astype(np.uint8)


IMG3D, SP3D = _image_3d(), (2.5, 1.0, 1.0)
IMG2D, SP2D = _image_2d_rgb(), (1.0, 1.0)
CASES = [("3d", n) for n in available_corruptions(1, False)] + [("2d", n) for n in available_corruptions(3, True)]


def _img(kind):
    return (IMG3D, SP3D) if kind == "3d" else (IMG2D, SP2D)


def _statistic(name: str, clean: np.ndarray, out: np.ndarray) -> float:
    """A simple image statistic that must increase with the severity of ``name``."""
    c, o = clean.astype(np.float64), out.astype(np.float64)
    if name == "gaussian_noise":
        return float(np.std(o - c))
    if name == "gaussian_blur":  # high-frequency energy decreases
        return -float(np.mean([np.abs(ndimage.laplace(ch)).mean() for ch in o]))
    if name == "contrast":  # spread decreases
        return -float(o.std())
    return float(np.abs(o - c).mean())


# ------------------------------------------------------------------------------------------- unit tests
def test_table_has_five_severities_and_applicability():
    assert all(len(v) == 5 for v in CORRUPTIONS.values())
    assert set(GENERIC) | set(MRI_ONLY) | set(RGB_ONLY) == set(CORRUPTIONS)
    assert available_corruptions(1, False) == [n for n in CORRUPTIONS if n not in RGB_ONLY]
    assert available_corruptions(3, True) == [n for n in CORRUPTIONS if n not in MRI_ONLY]
    assert available_corruptions(1, True) == list(GENERIC)
    assert available_corruptions(4, False) == list(GENERIC)  # multi-channel 3D: no MRI acquisition artefacts


@pytest.mark.parametrize("kind,name", CASES)
def test_severity_zero_is_identity(kind, name):
    img, sp = _img(kind)
    out = corrupt(img, name, 0, sp, seed=5)
    assert out.dtype == img.dtype and out is not img
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("kind,name", CASES)
def test_severities_are_monotone(kind, name):
    img, sp = _img(kind)
    outs = [corrupt(img, name, k, sp, seed=7) for k in range(6)]
    assert all(o.shape == img.shape and o.dtype == img.dtype for o in outs)
    stats = [_statistic(name, img, o) for o in outs]
    assert all(b > a for a, b in zip(stats, stats[1:])), f"{name} ({kind}): {np.round(stats, 4)}"


@pytest.mark.parametrize("kind,name", CASES)
def test_deterministic_given_seed(kind, name):
    img, sp = _img(kind)
    a, b = corrupt(img, name, 3, sp, seed=11), corrupt(img, name, 3, sp, seed=11)
    np.testing.assert_array_equal(a, b)
    if name in ("gaussian_noise", "bias_field", "motion"):  # the random ones: another seed, another draw
        assert not np.array_equal(a, corrupt(img, name, 3, sp, seed=12))


@pytest.mark.parametrize("name", GENERIC)
def test_intensity_scale_aware(name):
    """corrupt(a * x + b) == a * corrupt(x) + b: severities mean the same whatever the intensity unit."""
    x = _image_3d(scale=1.0)
    y = _image_3d(scale=1000.0, offset=-200.0)
    cx, cy = corrupt(x, name, 3, SP3D, seed=2), corrupt(y, name, 3, SP3D, seed=2)
    np.testing.assert_allclose(cy, cx * 1000.0 - 200.0, rtol=1e-3, atol=1e-2)


def test_intensity_stats_use_the_foreground():
    lo, hi, mean, std = intensity_stats(IMG3D[0])
    body = IMG3D[0] > 0.3 * 800
    assert lo < 100 < hi and abs(mean - IMG3D[0][body].mean()) < 0.1 * mean


def test_blur_is_isotropic_in_mm():
    """On an anisotropic grid the blur along the coarse axis is smaller in voxels: a point stays a mm-ball."""
    img = np.zeros((1, 21, 41, 41), np.float32)
    img[0, 10, 20, 20] = 1.0
    out = corrupt(img, "gaussian_blur", 5, (3.0, 1.0, 1.0))[0]
    assert out[10, 20, 23] > out[11, 20, 20] > 0  # 3 voxels in x = 3 mm = 1 voxel in z


def test_integer_images_stay_in_range():
    out = corrupt(IMG2D, "gaussian_noise", 5, SP2D, seed=0)
    assert out.dtype == np.uint8 and out.min() >= 0 and out.max() <= 255


def test_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(IMG3D, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(IMG3D, "gamma", 6)
    with pytest.raises(ValueError, match="does not apply"):
        corrupt(IMG2D, "motion", 1)
    with pytest.raises(ValueError, match="does not apply"):
        corrupt(IMG3D, "jpeg", 1)


def test_cli_registration():
    from nnunet_ext.robustness.cli import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    a = p.parse_args(["robustness", "-d", "4", "-c", "2d", "-tr", "nnUNetTrainer,nnUNetTrainerFD", "-f", "0",
                      "--corruptions", "gamma,jpeg", "--severities", "0,2", "-device", "cpu", "--disable-tta"])
    assert a.trainers == ["nnUNetTrainer", "nnUNetTrainerFD"] and a.corruptions == ["gamma", "jpeg"]
    assert a.severities == [0, 2] and a.disable_tta and a.step_size == 0.5 and callable(a.func)


def test_cli_user_errors_are_one_line(nnunet_env, nnunet_dirs):
    for args, msg in ((["-d", 999, "-c", "2d", "-f", 0], "no dataset with id 999"),
                      (["-d", 999, "-c", "2d", "-f", 0, "--corruptions", "fog"], "unknown corruption 'fog'")):
        proc = run_cli("nnunet-ext", ["robustness", *args], nnunet_env, check=False)
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and msg in err[0] and "Traceback" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------- end to end
TRAINER = "nnUNetTrainer_robustnessMicro"  # tests/ext_trainers/robustness_trainers.py


def test_end_to_end_2d(dataset2d, nnunet_dirs, nnunet_env, tmp_path):
    from PIL import Image

    from nnunet_ext.evaluation import evaluate_folders

    ds = dataset2d["id"]
    # a missing model: one clear line naming the folder and the command that trains it
    proc = run_cli("nnunet-ext", ["robustness", "-d", ds, "-c", "2d", "-f", 0, "-tr", "nnUNetTrainer_notTrained"],
                   nnunet_env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "nnUNetTrainer_notTrained__nnUNetPlans__2d/fold_0" in proc.stderr
    assert f"nnUNetv2_train {ds} 2d 0 -tr nnUNetTrainer_notTrained" in proc.stderr

    model = nnunet_dirs["results"] / dataset2d["name"] / f"{TRAINER}__nnUNetPlans__2d"
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        run_cli("nnUNetv2_train", [ds, "2d", 0, "-tr", TRAINER, "-device", "cpu"], nnunet_env)

    out = tmp_path / "robustness"
    args = ["robustness", "-d", ds, "-c", "2d", "-tr", TRAINER, "-f", 0, "-o", out,
            "--corruptions", "gaussian_noise,jpeg", "--severities", "0,2", "-device", "cpu", "--no-progress"]
    run_cli("nnunet-ext", args, nnunet_env)
    for f in ("robustness.csv", "robustness.md", "robustness.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    assert set(rows[0]) == {"trainer", "corruption", "severity", "class", "name", "dice", "nsd", "hd95", "n_cases"}
    assert {(r["corruption"], r["severity"]) for r in rows} == {(c, k) for c in ("gaussian_noise", "jpeg")
                                                                for k in ("0", "2")}
    assert {r["class"] for r in rows} == {"1", "2", "mean"}
    assert all(r["n_cases"] == "2" for r in rows)  # fold 0 of 10 cases: 2 validation cases
    md = (out / "robustness.md").read_text()
    assert f"| {TRAINER} | gaussian_noise |" in md and f"| {TRAINER} | jpeg |" in md
    # per case: clean once + each corruption's severity 2, 2 cases x 2 classes; the means agree with robustness.csv
    per_case = list(csv.DictReader((out / "robustness_per_case.csv").open()))
    assert {(r["corruption"], r["severity"]) for r in per_case} == {("clean", "0"), ("gaussian_noise", "2"),
                                                                    ("jpeg", "2")}
    assert len(per_case) == 3 * 2 * 2 and {r["class"] for r in per_case} == {"1", "2"}
    for r in rows:
        if r["class"] != "mean":
            c = "clean" if r["severity"] == "0" else r["corruption"]
            d = [float(q["dice"]) for q in per_case if (q["corruption"], q["severity"], q["class"]) ==
                 (c, r["severity"], r["class"])]
            assert abs(np.nanmean(d) - float(r["dice"])) < 1e-4, (r, d)

    # severity 0 is nnU-Net's own prediction of the clean images
    val = json.loads((nnunet_dirs["preprocessed"] / dataset2d["name"] / "splits_final.json").read_text())[0]["val"]
    inp, ref = tmp_path / "clean_in", tmp_path / "clean_pred"
    inp.mkdir()
    for c in val:
        shutil.copy(dataset2d["raw"] / "imagesTr" / f"{c}_0000.png", inp)
    run_cli("nnUNetv2_predict", ["-i", inp, "-o", ref, "-d", ds, "-c", "2d", "-f", 0, "-tr", TRAINER,
                                 "-device", "cpu", "-npp", 0, "-nps", 0], nnunet_env)  # sequential: no worker start-up
    clean = out / "predictions" / TRAINER / "clean_s0"
    for c in val:
        np.testing.assert_array_equal(np.asarray(Image.open(clean / f"{c}.png")),
                                      np.asarray(Image.open(ref / f"{c}.png")))
    ref_dice = evaluate_folders(str(out / "labels"), str(ref), labels={1: "blob", 2: "satellite"}, file_ending=".png",
                                progress=False)["overall"]["dice"]
    s0 = [float(r["dice"]) for r in rows if r["severity"] == "0" and r["class"] == "mean"]
    assert s0 and all(abs(d - ref_dice) < 1e-6 for d in s0), (s0, ref_dice)

    # a second run resumes: nothing is predicted or evaluated again
    def mtimes():
        return {p: p.stat().st_mtime_ns for sub in ("predictions", "evaluation") for p in (out / sub).rglob("*")
                if p.is_file()}
    before = mtimes()
    assert len(before) == 3 * 2 + 3  # clean_s0, gaussian_noise_s2, jpeg_s2: 2 cases each + 3 evaluation jsons
    proc = run_cli("nnunet-ext", args, nnunet_env)
    assert "0 folder(s) computed, 3 already done" in proc.stderr, proc.stderr
    assert mtimes() == before
    # ... and a lost prediction is redone, with its folder's evaluation only
    lost = out / "predictions" / TRAINER / "jpeg_s2" / f"{val[0]}.png"
    lost.unlink()
    proc = run_cli("nnunet-ext", args, nnunet_env)
    assert "1 folder(s) computed, 2 already done" in proc.stderr, proc.stderr
    after = mtimes()
    changed = {p.relative_to(out).as_posix() for p in after if after[p] != before.get(p)}
    assert changed == {f"predictions/{TRAINER}/jpeg_s2/{val[0]}.png", f"evaluation/{TRAINER}/jpeg_s2.json"}


def test_compare_under_corruptions_pairs_cases_over_seeds_and_severities():
    from nnunet_ext.robustness.compare import compare_under_corruptions, comparison_markdown

    rows = []
    for seed in (0, 1):
        for case in ("a", "b", "c"):
            for cls in ("1", "2"):
                base = 0.5 + 0.1 * "abc".index(case) + 0.01 * seed
                rows.append({"trainer": "A", "corruption": "clean", "severity": "0", "case": case, "class": cls,
                             "dice": base, "seed": seed})
                rows.append({"trainer": "B", "corruption": "clean", "severity": "0", "case": case, "class": cls,
                             "dice": base, "seed": seed})
                for sev in (1, 2):
                    rows.append({"trainer": "A", "corruption": "noise", "severity": str(sev), "case": case,
                                 "class": cls, "dice": base - 0.1 * sev, "seed": seed})
                    rows.append({"trainer": "B", "corruption": "noise", "severity": str(sev), "case": case,
                                 "class": cls, "dice": base - 0.1 * sev + (0.2 if case == "a" else 0.05),
                                 "seed": seed})
    # a severity-0 row of a corruption (nnunet-ext robustness writes clean once, but older tables repeat it)
    rows.append({"trainer": "A", "corruption": "noise", "severity": "0", "case": "a", "class": "1", "dice": 0.0,
                 "seed": 0})
    cmp = compare_under_corruptions(rows, ["A", "B"])
    assert list(cmp) == ["clean", "noise"]
    assert cmp["clean"]["A"]["mean"] == pytest.approx(0.605) and cmp["clean"]["B"]["delta"]["mean"] == 0
    assert cmp["noise"]["A"]["mean"] == pytest.approx(0.605 - 0.15)
    d = cmp["noise"]["B"]["delta"]
    assert d["n_cases"] == 3 and d["mean"] == pytest.approx(0.1)
    assert 0.05 - 1e-9 <= d["ci_low"] < 0.1 < d["ci_high"] <= 0.2 + 1e-9
    assert cmp["noise"]["A"]["delta"] is None
    md = comparison_markdown(cmp)
    assert "| noise | 0.4550 | 0.5550 | +0.1000 [" in md and "ΔDice B [95% CI]" in md
