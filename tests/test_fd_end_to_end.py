"""End to end with nnU-Net's real CLIs: plan and preprocess, train nnUNetTrainerFD on CPU, predict,
check Dice above chance and output geometry; resume with --c; 2d and ResEnc plans; error messages."""
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import run_cli


def _dice(pred, ref, label):
    p, r = pred == label, ref == label
    denom = p.sum() + r.sum()
    return 2.0 * np.logical_and(p, r).sum() / denom if denom else 1.0


def _fold_dir(nnunet_dirs, ds, trainer, plans="nnUNetPlans", config="3d_fullres"):
    return Path(nnunet_dirs["results"]) / ds["name"] / f"{trainer}__{plans}__{config}" / "fold_0"


@pytest.fixture(scope="module")
def trained_fd(dataset3d, nnunet_env, nnunet_dirs):
    """nnUNetTrainerFD_tinyCrash (3 epochs): stops with an error at the start of epoch 2, resumed with --c.
    Returns the fold folder and checkpoint_latest.pth as it was at the crash."""
    trainer = "nnUNetTrainerFD_tinyCrash"
    args = [dataset3d["id"], "3d_fullres", 0, "-tr", trainer, "-device", "cpu"]
    proc = run_cli("nnUNetv2_train", args, dict(nnunet_env, nnUNet_ext_test_crash_at_epoch="2"), check=False)
    assert proc.returncode != 0 and "test crash at epoch 2" in proc.stderr + proc.stdout
    fold = _fold_dir(nnunet_dirs, dataset3d, trainer)
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    run_cli("nnUNetv2_train", args + ["--c"], nnunet_env)
    return {"fold": fold, "latest": latest, "trainer": trainer}


def test_train_logs_aux_losses_and_saves_plain_network(trained_fd):
    fold = trained_fd["fold"]
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "progress.png").is_file()
    assert (fold / "validation" / "summary.json").is_file(), "nnU-Net's final validation ran"
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "intra_fd" in log and "inter_fd" in log
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = ckpt["logging"]
    n_epochs = ckpt["current_epoch"]
    for k in ("intra_fd", "inter_fd", "train_losses"):
        assert len(logging[k]) == n_epochs and all(np.isfinite(logging[k]))
    # the checkpointed network is nnU-Net's plain U-Net (no wrapper prefixes, no extra modules)
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in ckpt["network_weights"])
    assert any(k.startswith("encoder.stages.") for k in ckpt["network_weights"])
    assert ckpt["trainer_name"] == trained_fd["trainer"]
    # progress.png has our fourth panel: taller than nnU-Net's three-panel figure (30 x 54 in at 100 dpi)
    from PIL import Image
    assert Image.open(fold / "progress.png").height > 5400


def test_predict_dice_above_chance_and_geometry_kept(trained_fd, dataset3d, nnunet_env, tmp_path):
    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", dataset3d["raw"] / "imagesTs", "-o", out, "-d", dataset3d["id"],
                                 "-c", "3d_fullres", "-f", 0, "-tr", trained_fd["trainer"], "-device", "cpu",
                                 "--disable_tta", "-npp", 1, "-nps", 1], nnunet_env)
    refs = sorted((dataset3d["raw"] / "labelsTs").glob("*.nii.gz"))
    assert refs
    dices, chance = {1: [], 2: []}, {1: [], 2: []}
    for ref_path in refs:
        pred_img = sitk.ReadImage(str(out / ref_path.name))
        ref_img = sitk.ReadImage(str(ref_path))
        img = sitk.ReadImage(str(dataset3d["raw"] / "imagesTs" / ref_path.name.replace(".nii.gz", "_0000.nii.gz")))
        assert pred_img.GetSize() == img.GetSize()
        assert np.allclose(pred_img.GetSpacing(), img.GetSpacing())
        assert np.allclose(pred_img.GetOrigin(), img.GetOrigin())
        assert np.allclose(pred_img.GetDirection(), img.GetDirection())
        pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
        assert set(np.unique(pred)) <= {0, 1, 2}
        for c in (1, 2):
            dices[c].append(_dice(pred, ref, c))
            chance[c].append((ref == c).mean())  # Dice of a random labelling with the true class frequency
    fg_dice = np.mean([np.mean(v) for v in dices.values()])
    fg_chance = np.mean([np.mean(v) for v in chance.values()])
    # far above chance overall, and above chance for every class
    assert fg_dice > 5 * fg_chance, (dices, chance)
    for c in (1, 2):
        assert np.mean(dices[c]) > 2 * np.mean(chance[c]), (c, dices, chance)


def test_resume_with_c_continues_exactly(trained_fd):
    fold, latest = trained_fd["fold"], trained_fd["latest"]
    assert latest["current_epoch"] == 2
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3
    for k in ("intra_fd", "inter_fd", "train_losses", "mean_fg_dice", "lrs"):
        assert len(final["logging"][k]) == 3
        assert final["logging"][k][:2] == latest["logging"][k][:2], k  # epochs 0-1 restored, not re-run
    # the poly schedule continues where it stopped (nnU-Net: lr = 0.01 * (1 - epoch / num_epochs) ** 0.9)
    assert final["logging"]["lrs"][2] == pytest.approx(0.01 * (1 - 2 / 3) ** 0.9)
    assert final["optimizer_state"]["state"], "optimiser state (momentum buffers) restored and saved"
    logs = sorted(fold.glob("training_log_*.txt"))
    resumed = logs[-1].read_text()
    # nnU-Net's log lines end with a space: "<time>: Epoch 0 "
    assert re.search(r": Epoch 2 ?$", resumed, re.M) and not re.search(r": Epoch 0 ?$", resumed, re.M)
    assert "intra_fd" in resumed


def test_fd_trains_2d_configuration(dataset2d, nnunet_env, nnunet_dirs):
    run_cli("nnUNetv2_train", [dataset2d["id"], "2d", 0, "-tr", "nnUNetTrainerFD_micro", "-device", "cpu"],
            nnunet_env)
    fold = _fold_dir(nnunet_dirs, dataset2d, "nnUNetTrainerFD_micro", config="2d")
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert np.isfinite(ckpt["logging"]["intra_fd"][0]) and np.isfinite(ckpt["logging"]["inter_fd"][0])


def test_fd_trains_with_resenc_plans(dataset3d, nnunet_env, nnunet_dirs):
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", dataset3d["id"], "-pl", "nnUNetPlannerResEncM", "-c", "3d_fullres",
                                             "-np", 1], nnunet_env)
    run_cli("nnUNetv2_train", [dataset3d["id"], "3d_fullres", 0, "-tr", "nnUNetTrainerFD_micro",
                               "-p", "nnUNetResEncUNetMPlans", "-device", "cpu"], nnunet_env)
    fold = _fold_dir(nnunet_dirs, dataset3d, "nnUNetTrainerFD_micro", plans="nnUNetResEncUNetMPlans")
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert any(".blocks." in k for k in ckpt["network_weights"])  # residual encoder was trained
    assert np.isfinite(ckpt["logging"]["inter_fd"][0])


def test_unknown_trainer_name_gives_clear_error(dataset3d, nnunet_env):
    proc = run_cli("nnUNetv2_train", [dataset3d["id"], "3d_fullres", 0, "-tr", "nnUNetTrainerFD_doesNotExist",
                                      "-device", "cpu"], nnunet_env, check=False)
    assert proc.returncode != 0
    assert "Could not find requested nnunet trainer nnUNetTrainerFD_doesNotExist" in proc.stderr


def test_missing_ext_trainer_variable_gives_clear_error(dataset3d, nnunet_env):
    env = {k: v for k, v in nnunet_env.items() if k != "nnUNet_extTrainer"}
    proc = run_cli("nnUNetv2_train", [dataset3d["id"], "3d_fullres", 0, "-tr", "nnUNetTrainerFD", "-device", "cpu"],
                   env, check=False)
    assert proc.returncode != 0 and "nnUNet_extTrainer" in proc.stderr
    # our CLI tells the user the exact fix
    hint = run_cli("nnunet-ext", ["trainers"], env, check=False)
    assert hint.returncode == 2  # the listing is not a success while nnU-Net cannot find the trainers
    assert 'export nnUNet_extTrainer="$(nnunet-ext trainers-path)"' in hint.stderr
    assert "nnUNetTrainerFD_lambda0010" in hint.stdout
