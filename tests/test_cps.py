"""Cross pseudo supervision, UIF and unlabelled data: the loss by hand, uncertainty ranking, the network pair,
DDP (gloo, 2 processes), and end to end with nnU-Net's CLIs on a synthetic 3D dataset with unlabelled images
(preprocess-unlabeled with bad files, nnUNetTrainerCPS_UIF with a crash and --c, nnUNetv2_predict, pseudo-label)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from conftest import run_cli

from nnunet_ext.cps.losses import cps_losses, pseudo_label_ce, sigmoid_rampup
from nnunet_ext.cps.network import CPSNetworkPair
from nnunet_ext.cps.term import CPSTerm
from nnunet_ext.cps.uncertainty import keep_count, pair_uncertainty, select_most_certain, tile_positions
from nnunet_ext.core.loss_terms import StepState

DS_CPS = 503


# ---------------------------------------------------------------------------------------------- the loss
def test_cps_loss_by_hand_and_no_gradient_to_the_pseudo_labels():
    # 2 voxels, 2 classes: A's logits and B's logits; B's argmax = [1, 0], A's argmax = [0, 0]
    a = torch.tensor([[[2.0, 1.0]], [[0.0, 0.5]]]).permute(1, 0, 2).requires_grad_()  # (b=1, C=2, n=2)
    b = torch.tensor([[[0.0, 3.0]], [[1.0, 0.0]]]).permute(1, 0, 2).requires_grad_()
    la, lb = cps_losses(a, b)
    # by hand: CE(A at voxel 0, class 1) and CE(A at voxel 1, class 0), averaged
    ce = lambda z, k: -math.log(math.exp(z[k]) / sum(math.exp(v) for v in z))  # noqa: E731
    assert la.item() == pytest.approx((ce([2.0, 0.0], 1) + ce([1.0, 0.5], 0)) / 2, rel=1e-6)
    assert lb.item() == pytest.approx((ce([0.0, 1.0], 0) + ce([3.0, 0.0], 0)) / 2, rel=1e-6)
    la.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is None, "the pseudo-label (argmax of B) must carry no gradient to B"


def test_identical_confident_networks_pay_almost_nothing():
    # the intended loss (no class shift between pseudo-targets and predictions): agreement costs ~0
    logits = torch.full((2, 3, 4, 4), -10.0)
    logits[:, 1] = 10.0
    la, lb = cps_losses(logits, logits.clone())
    assert la.item() < 1e-6 and lb.item() < 1e-6


def test_deep_supervision_uses_nnunet_weights_per_scale():
    torch.manual_seed(0)
    a = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    b = [torch.randn_like(t) for t in a]
    w = [4 / 7, 2 / 7, 0.0]  # nnU-Net's normalised weights with the lowest scale switched off
    la, lb = cps_losses(a, b, w)
    assert la.item() == pytest.approx(sum(wi * pseudo_label_ce(x, y).item() for wi, x, y in zip(w, a, b)), rel=1e-6)
    assert lb.item() == pytest.approx(sum(wi * pseudo_label_ce(y, x).item() for wi, x, y in zip(w, a, b)), rel=1e-6)


def test_cps_term_uses_labelled_part_for_seg_and_all_patches_for_cps():
    torch.manual_seed(1)
    out_a, out_b = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    target = torch.randint(0, 3, (2, 1, 4, 4))
    seen = {}

    def seg_loss(output, tgt):
        seen["n"] = output.shape[0]
        return F.cross_entropy(output, tgt[:, 0])

    terms = CPSTerm(seg_loss, weight=1.5)(StepState(data=None, target=target, output=(out_a, out_b)))
    assert seen["n"] == 2  # the 2 labelled patches of 5
    assert terms["cps_a"].weight == 1.5 and terms["seg_b"].weight == 1.0
    assert terms["cps_a"].value.item() == pytest.approx(pseudo_label_ce(out_a, out_b).item())
    assert terms["seg_b"].value.item() == pytest.approx(F.cross_entropy(out_b[:2], target[:, 0]).item())


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 0) == 1.0
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(5, 10) < sigmoid_rampup(8, 10) < 1.0


# ------------------------------------------------------------------------------------------- uncertainty
def test_confident_prediction_ranks_above_uncertain_one():
    confident = torch.zeros(1, 3, 8, 8)
    confident[:, 2] = 8.0
    uncertain = torch.zeros(1, 3, 8, 8)  # uniform softmax
    uncertain[:, 1, :4] = 0.3
    s_conf = pair_uncertainty(confident, confident.clone())
    s_unc = pair_uncertainty(uncertain, uncertain.flip(-2))
    assert s_conf["entropy"] < 0.01 and s_unc["entropy"] > 0.9
    assert s_conf["disagreement"] == 0.0 and s_unc["disagreement"] > 0
    scores = {"unsure": s_unc["entropy"], "sure": s_conf["entropy"], "mid": 0.5}
    assert select_most_certain(scores, 1 / 3) == ["sure"]  # keep <= 1 is a fraction, > 1 a count
    assert select_most_certain(scores, 2.0) == ["mid", "sure"]
    assert select_most_certain(scores, 2 / 3) == ["mid", "sure"]


def test_keep_count_and_tile_positions():
    assert keep_count(0.1, 2000) == 200 and keep_count(200, 2000) == 200 and keep_count(0.01, 10) == 1
    assert keep_count(5000, 10) == 10
    with pytest.raises(ValueError):
        keep_count(0, 10)
    pos = tile_positions((40, 50, 30), (16, 32, 32), 4)
    assert len(pos) == 4 and len(set(pos)) == 4
    assert all(0 <= p[d] <= max(0, s - k) for p in pos for d, (s, k) in enumerate(zip((40, 50, 30), (16, 32, 32))))


# ------------------------------------------------------------------------------------------------ the pair
def _tiny_unet(seed: int, ds: bool = True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    return PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv2d, 3, (1, 2, 2), 2, 3, (2, 2), True,
                         torch.nn.InstanceNorm2d, {"affine": True}, None, None, torch.nn.LeakyReLU,
                         {"inplace": True}, deep_supervision=ds)


def test_pair_training_returns_both_eval_returns_mean_of_logits():
    pair = CPSNetworkPair(_tiny_unet(0), _tiny_unet(1))
    x = torch.randn(2, 1, 16, 16)
    pair.train()
    out_a, out_b = pair(x)
    assert isinstance(out_a, list) and len(out_a) == 2
    pair.eval()
    pair.set_deep_supervision(False)
    with torch.no_grad():
        mean = pair(x)
        a, b = pair.net_a(x), pair.net_b(x)
    assert torch.allclose(mean, (a + b) / 2, atol=1e-6)
    assert not torch.allclose(a, b), "the two networks start from different initialisations"
    keys = list(pair.state_dict())
    assert any(k.startswith("net_a.") for k in keys) and any(k.startswith("net_b.") for k in keys)


def _ddp_worker(rank: int, world: int, init_file: str, result_file: str):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunet_ext.unlabeled.data import shard

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pair = DDP(CPSNetworkPair(_tiny_unet(rank), _tiny_unet(10 + rank)))  # DDP broadcasts rank 0's weights
        torch.manual_seed(100 + rank)  # every rank its own batch
        x = torch.randn(3, 1, 16, 16)
        target = torch.randint(0, 3, (1, 1, 16, 16))
        out = pair(x)
        terms = CPSTerm(lambda o, t: F.cross_entropy(o[0], t[0][:, 0].long()), 1.0, [0.7, 0.3])(
            StepState(data=x, target=[target], output=out))
        sum(t.weight * t.value for t in terms.values()).backward()
        mod = pair.module
        grads = [p.grad.detach().clone() for p in mod.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        ids = [f"case{i}" for i in range(7)]
        shards = [None] * world
        dist.all_gather_object(shards, shard(ids, dist.get_rank(), dist.get_world_size()))
        if rank == 0:
            json.dump({"same_grads": all(torch.allclose(gathered[0], g, atol=1e-6) for g in gathered[1:]),
                       "grads_a": mod.net_a.encoder.stages[0][0].convs[0].conv.weight.grad is not None,
                       "grads_b": mod.net_b.encoder.stages[0][0].convs[0].conv.weight.grad is not None,
                       "shards": shards}, open(result_file, "w"))
    finally:
        dist.destroy_process_group()


def test_pair_under_ddp_gloo_two_processes():
    """nnU-Net's DDP needs CUDA; on CPU: the pair wrapped as one DDP module, both networks' gradients
    all-reduced, and the unlabelled cases sharded disjointly over the ranks."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        result = os.path.join(d, "result.json")
        mp.spawn(_ddp_worker, args=(2, os.path.join(d, "pg"), result), nprocs=2, join=True)
        r = json.load(open(result))
    assert r["same_grads"] and r["grads_a"] and r["grads_b"]
    a, b = r["shards"]
    assert not set(a) & set(b) and sorted(a + b) == [f"case{i}" for i in range(7)]


# ------------------------------------------------------------------------------------------- raw layout
def test_unlabeled_listing_names_bad_files(tmp_path):
    from nnunet_ext.unlabeled.raw import unlabeled_cases

    folder = tmp_path / "imagesUnlabeled"
    folder.mkdir()
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "c.nii.gz", "d_0000.png"):
        (folder / name).write_bytes(b"x")
    cases, problems = unlabeled_cases(tmp_path, {"file_ending": ".nii.gz", "channel_names": {"0": "T1", "1": "T2"}})
    assert list(cases) == ["a"] and len(cases["a"]) == 2
    assert "b" in problems and "0001" in problems["b"]
    assert "c.nii.gz" in problems and "d_0000.png" in problems


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def cps_dataset(nnunet_dirs, nnunet_env):
    """Synthetic 3D dataset: 8 labelled, 2 test and 6 unlabelled cases plus a corrupt and a misnamed file in
    imagesUnlabeled; planned and preprocessed by nnU-Net, then preprocess-unlabeled."""
    from nnunet_ext.core.synthetic import generate_dataset_3d

    folder = Path(generate_dataset_3d(str(nnunet_dirs["raw"]), DS_CPS, name="CPSPhantom", num_train=8, num_test=2,
                                      num_unlabeled=6, seed=3))
    (folder / "imagesUnlabeled" / "broken_0000.nii.gz").write_bytes(b"not a nifti file")
    (folder / "imagesUnlabeled" / "scan.nii.gz").write_bytes(b"no channel suffix")
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS_CPS, "-c", "3d_fullres", "-npfp", 1, "-np", 1], nnunet_env)
    proc = run_cli("nnunet-ext", ["preprocess-unlabeled", "-d", DS_CPS, "-c", "3d_fullres", "-np", 1, "-q"],
                   nnunet_env)
    pre = Path(nnunet_dirs["preprocessed"]) / folder.name
    return {"id": DS_CPS, "raw": folder, "name": folder.name, "pre": pre, "proc": proc}


def test_preprocess_unlabeled_skips_and_names_bad_files_and_resumes(cps_dataset, nnunet_env):
    out = cps_dataset["pre"] / "nnUNetPlans_3d_fullres_unlabeled"
    err = cps_dataset["proc"].stderr
    assert "broken" in err and "unreadable" in err and "scan.nii.gz" in err
    skipped = json.loads((out / "skipped.json").read_text())
    assert set(skipped) == {"broken", "scan.nii.gz"}
    cases = sorted(p.stem for p in out.glob("*.pkl"))
    assert cases == [f"cpsphantom_unlabeled{i:03d}" for i in range(6)]
    assert not list(out.glob("*_seg.b2nd")), "no placeholder segmentation is ever written"
    # same preprocessing as nnU-Net's training cases: z-scored, cropped/resampled to the plans' spacing
    import blosc2
    data = blosc2.open(str(out / "cpsphantom_unlabeled000.b2nd"), mode="r")[:]
    assert data.shape[0] == 1 and abs(float(data.mean())) < 0.5 and 0.5 < float(data.std()) < 2
    again = run_cli("nnunet-ext", ["preprocess-unlabeled", "-d", DS_CPS, "-c", "3d_fullres", "-np", 1, "-q"],
                    nnunet_env)
    # resumed: the 6 good cases are not redone; the broken one is tried again (it may have been fixed) and skipped
    assert "6 already preprocessed, 1 to do" in again.stdout and "skipped broken" in again.stderr


def test_cps_trainer_without_unlabelled_images_gives_clear_error(dataset3d, nnunet_env):
    proc = run_cli("nnUNetv2_train", [dataset3d["id"], "3d_fullres", 0, "-tr", "nnUNetTrainerCPS_tiny",
                                      "-device", "cpu"], nnunet_env, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "needs unlabelled images" in text and "imagesUnlabeled" in text
    assert f"nnunet-ext preprocess-unlabeled -d {dataset3d['id']} -c 3d_fullres" in text


@pytest.fixture(scope="module")
def trained_cps(cps_dataset, nnunet_env, nnunet_dirs):
    """nnUNetTrainerCPS_UIF_tiny: UIF scores at epoch 1, the run crashes at epoch 2 and is resumed with --c."""
    trainer = "nnUNetTrainerCPS_UIF_tiny"
    args = [DS_CPS, "3d_fullres", 0, "-tr", trainer, "-device", "cpu"]
    crashed = run_cli("nnUNetv2_train", args, dict(nnunet_env, nnUNet_ext_test_crash_at_epoch="2"), check=False)
    assert crashed.returncode != 0 and "test crash at epoch 2" in crashed.stdout + crashed.stderr
    fold = Path(nnunet_dirs["results"]) / cps_dataset["name"] / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    run_cli("nnUNetv2_train", args + ["--c"], nnunet_env)
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    return {"fold": fold, "latest": latest, "final": final, "trainer": trainer}


def test_uif_selection_is_checkpointed_and_survives_resume(trained_cps):
    latest, final, fold = trained_cps["latest"], trained_cps["final"], trained_cps["fold"]
    assert latest["current_epoch"] == 2 and final["current_epoch"] == 3
    sel = latest["nnunet_ext"]["uif_selection"]
    assert len(sel) == 3 and latest["nnunet_ext"]["uif_scored_epoch"] == 1  # half of 6, scored at epoch 1
    assert final["nnunet_ext"] == latest["nnunet_ext"], "the resumed run continues with the saved selection"
    record = json.loads((fold / "uif" / "selection.json").read_text())
    assert record["selected"] == sel and record["num_scored"] == 6 and record["num_kept"] == 3
    assert (fold / "uif" / "histogram_epoch0001.png").is_file()
    scores = json.loads((fold / "uif" / "scores_epoch0001.json").read_text())["scores"]
    assert max(scores[c]["entropy"] for c in sel) <= min(s["entropy"] for c, s in scores.items() if c not in sel)
    resumed = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
    assert "Epoch 2" in resumed and "UIF: scored" not in resumed, "no re-scoring after --c"
    first = sorted(fold.glob("training_log_*.txt"))[0].read_text()
    assert "UIF: scored 6 unlabelled case(s) at epoch 1; keeping 3" in first


def test_cps_checkpoint_holds_both_networks_and_logs_terms(trained_cps):
    final = trained_cps["final"]
    weights = final["network_weights"]
    assert any(k.startswith("net_a.") for k in weights) and any(k.startswith("net_b.") for k in weights)
    assert len(final["optimizer_state"]["param_groups"]) == 2, "one SGD parameter group per network"
    assert final["optimizer_state"]["state"], "momentum buffers saved"
    log = final["logging"]
    for k in ("seg_b", "cps_a", "cps_b", "pseudo_dice_a", "pseudo_dice_b", "train_losses"):
        assert len(log[k]) == 3 and all(np.isfinite(log[k])), k
    assert log["lrs"][2] == pytest.approx(0.01 * (1 - 2 / 3) ** 0.9)  # poly schedule resumed


def _dice(pred, ref, label):
    p, r = np.isin(pred, label), np.isin(ref, label)
    denom = p.sum() + r.sum()
    return 2.0 * np.logical_and(p, r).sum() / denom if denom else 1.0


def test_cps_predict_with_nnunet_predict(trained_cps, cps_dataset, nnunet_env, tmp_path):
    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", cps_dataset["raw"] / "imagesTs", "-o", out, "-d", DS_CPS, "-c", "3d_fullres",
                                 "-f", 0, "-tr", trained_cps["trainer"], "-device", "cpu", "--disable_tta",
                                 "-npp", 1, "-nps", 1], nnunet_env)
    dice, chance = [], []
    for ref_path in sorted((cps_dataset["raw"] / "labelsTs").glob("*.nii.gz")):
        pred_img, ref_img = sitk.ReadImage(str(out / ref_path.name)), sitk.ReadImage(str(ref_path))
        assert pred_img.GetSize() == ref_img.GetSize()
        assert np.allclose(pred_img.GetSpacing(), ref_img.GetSpacing())
        assert np.allclose(pred_img.GetOrigin(), ref_img.GetOrigin())
        pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
        assert set(np.unique(pred)) <= {0, 1, 2}
        dice.append(np.mean([_dice(pred, ref, c) for c in (1, 2)]))
        chance.append(np.mean([(ref == c).mean() for c in (1, 2)]))
    # 30 CPU iterations: far above chance (a random labelling with the class frequencies)
    assert np.mean(dice) > 5 * np.mean(chance), (dice, chance)


def test_pseudo_label_route_writes_a_dataset_stock_nnunet_accepts(trained_cps, cps_dataset, nnunet_env, nnunet_dirs):
    proc = run_cli("nnunet-ext", ["pseudo-label", "-d", DS_CPS, "-c", "3d_fullres", "-tr", trained_cps["trainer"],
                                  "--target-id", 504, "--keep", "0.5", "--disable-tta", "-device", "cpu", "-q"],
                   nnunet_env)
    assert "kept 3 of 6" in proc.stdout
    new = Path(nnunet_dirs["raw"]) / "Dataset504_CPSPhantomPL"
    record = json.loads((new / "pseudo_labels.json").read_text())
    kept = sorted(c for c, r in record["cases"].items() if r["kept"])
    assert len(kept) == 3 and record["labelled"] == 8
    assert max(record["cases"][c]["uncertainty"] for c in kept) <= \
        min(r["uncertainty"] for c, r in record["cases"].items() if not r["kept"] and "uncertainty" in r)
    ds = json.loads((new / "dataset.json").read_text())
    assert ds["numTraining"] == 11 and ds["labels"] == json.loads((cps_dataset["raw"] / "dataset.json").read_text())["labels"]
    for c in kept:
        assert (new / "imagesTr" / f"{c}_0000.nii.gz").is_file() and (new / "labelsTr" / f"{c}.nii.gz").is_file()
    assert len(list((new / "imagesUnlabeled").glob("*"))) == 8  # carried over (bad files too: named again if used)
    # the source is untouched; an existing target is not overwritten without --overwrite
    assert len(list((cps_dataset["raw"] / "imagesTr").glob("*"))) == 8
    again = run_cli("nnunet-ext", ["pseudo-label", "-d", DS_CPS, "-c", "3d_fullres", "-tr", trained_cps["trainer"],
                                   "--target-id", 504, "-device", "cpu", "-q"], nnunet_env, check=False)
    assert again.returncode == 2 and "exists" in again.stderr and "--overwrite" in again.stderr
    # stock nnU-Net takes the new dataset as it is
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", 504, "-c", "3d_fullres", "-npfp", 1, "-np", 1,
                                             "--verify_dataset_integrity"], nnunet_env)


def test_pseudo_label_stability_filter_end_to_end(trained_cps, cps_dataset, nnunet_env, nnunet_dirs, tmp_path):
    """Round 2 against a hand-made round 1: an unchanged case is kept, a changed one dropped, a missing one named;
    a previous round of another dataset is refused before anything is written."""
    args = ["pseudo-label", "-d", DS_CPS, "-c", "3d_fullres", "-tr", trained_cps["trainer"], "--disable-tta",
            "-device", "cpu", "-q", "--keep", "1.0"]
    cache = trained_cps["fold"].parent / "pseudo_labels" / "fold0_checkpoint_final_noTTA"
    if not cache.is_dir():  # predicted once (the route's test above, or here)
        run_cli("nnunet-ext", args + ["--target-id", 506], nnunet_env)
    scores = json.loads((cache / "scores.json").read_text())
    predicted = sorted(c for c, r in scores.items() if r.get("foreground_voxels", 0) > 0)
    assert len(predicted) >= 3, scores
    changed, missing = predicted[0], predicted[-1]
    prev = tmp_path / "round1"
    prev.mkdir()
    for c in predicted:
        if c == missing:
            continue
        img = sitk.ReadImage(str(cache / f"{c}.nii.gz"))
        if c == changed:  # the previous round saw nothing where this round sees foreground
            img = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(img)))
        sitk.WriteImage(img, str(prev / f"{c}.nii.gz"))
    proc = run_cli("nnunet-ext", args + ["--target-id", 505, "--previous", prev, "--min-stability", "0.9"],
                   nnunet_env)
    assert "missing from the previous round" in proc.stderr and missing in proc.stderr
    new = Path(nnunet_dirs["raw"]) / "Dataset505_CPSPhantomPL"
    record = json.loads((new / "pseudo_labels.json").read_text())
    assert record["min_stability"] == 0.9 and record["previous"] == str(prev)
    cases = record["cases"]
    assert cases[changed]["stability"] == 0.0 and not cases[changed]["kept"]
    assert cases[missing]["stability"] is None and not cases[missing]["kept"]
    stable = [c for c in predicted if c not in (changed, missing)]
    assert all(cases[c]["stability"] == 1.0 and cases[c]["kept"] for c in stable)
    assert "uncertainty" in cases[stable[0]]  # beside the uncertainty score
    assert sorted(c for c, r in cases.items() if r["kept"]) == stable
    assert not (new / "labelsTr" / f"{changed}.nii.gz").exists()
    # a previous round of another dataset (other labels): one line, no target written
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "labels": {"background": 0, "x": 1}}))
    bad = run_cli("nnunet-ext", args + ["--target-id", 507, "--previous", other, "--min-stability", "0.9"],
                  nnunet_env, check=False)
    errors = [line for line in bad.stderr.strip().splitlines() if "pseudo-label: skipped" not in line]
    assert bad.returncode == 2 and len(errors) == 1 and "another dataset" in errors[0], bad.stderr
    assert not list(Path(nnunet_dirs["raw"]).glob("*Dataset507*"))
