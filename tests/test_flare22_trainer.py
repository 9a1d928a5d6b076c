"""nnUNetTrainerFLARE22 (CPS + UIF + FD + S2S2 where a stack exists): the composition of the terms on the network
pair by hand, and end to end with nnU-Net's CLIs on a synthetic 3D dataset with unlabelled images: first without a
GIN stack (every term logged, a crash and --c), then nnUNetv2_predict; without a stack (in-process): trains
CPS + UIF + FD and says so."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from conftest import run_cli

from nnunet_ext.core.feature_taps import FeatureTaps
from nnunet_ext.core.loss_terms import StepState
from nnunet_ext.cps.network import CPSNetworkPair
from nnunet_ext.cps.term import CPSTerm
from nnunet_ext.fd.term import FeatureDistillationTerm
from nnunet_ext.flare22.trainer import PerNetworkTerm, labelled_real_and_copy, nnUNetTrainerFLARE22
from nnunet_ext.s2s2.term import S2S2Term

DS_FLARE = 522


# ------------------------------------------------------------------------------------------ the composition
def _tiny_unet(seed: int):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(seed)
    return PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv2d, 3, (1, 2, 2), 2, 3, (2, 2), True,
                         torch.nn.InstanceNorm2d, {"affine": True}, None, None, torch.nn.LeakyReLU,
                         {"inplace": True}, deep_supervision=True)


def _grads(loss, net):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()), retain_graph=True,
                                                               allow_unused=True) if g is not None])


def test_fd_on_the_pair_is_fd_on_each_network():
    """Each network's features are tapped (net_a.*, net_b.*); the logged value is the mean of FD on each network
    alone and the weight 2 lambda, so each network gets exactly FD's gradient."""
    pair = CPSNetworkPair(_tiny_unet(0), _tiny_unet(1)).train()
    term = PerNetworkTerm(FeatureDistillationTerm(0.015, seed=5))
    names = term.required_features(pair)
    assert {n.split(".")[0] for n in names} == {"net_a", "net_b"} and "net_a.decoder.final" in names
    taps = FeatureTaps(pair, names)
    x = torch.randn(3, 1, 16, 16)  # e.g. 2 labelled + 1 unlabelled patch
    out = pair(x)
    feats = taps.pop()
    assert set(feats) == set(names) and all(f.shape[0] == 3 for f in feats.values())
    terms = term(StepState(data=x, target=None, output=out, features=feats))
    assert set(terms) == {"intra_fd", "inter_fd"} and all(t.weight == pytest.approx(0.03) for t in terms.values())

    alone, ref = FeatureDistillationTerm(0.015, seed=5), {}  # same channel draws, in the same order (A, then B)
    for name, net in zip(("net_a", "net_b"), pair.networks):
        single_taps = FeatureTaps(net, alone.required_features(net))
        net(x)
        ref[name] = alone(StepState(data=x, target=None, output=None, features=single_taps.pop()))
        single_taps.remove()
    for k in ("intra_fd", "inter_fd"):
        assert terms[k].value.item() == pytest.approx((ref["net_a"][k].value + ref["net_b"][k].value).item() / 2,
                                                      rel=1e-5)
    total = sum(t.weight * t.value for t in terms.values())
    for name, net in zip(("net_a", "net_b"), pair.networks):
        single = sum(t.weight * t.value for t in ref[name].values())
        assert torch.allclose(_grads(total, net), _grads(single, net), rtol=1e-4, atol=1e-8)


def test_s2s2_on_the_pair_sees_real_and_copy_of_the_labelled_patches_only():
    """Batch [real (2), copy (2), unlabelled (1)]: S2S2's copy loss and consistency on each network's first 4."""
    pair = CPSNetworkPair(_tiny_unet(0), _tiny_unet(1)).train()
    seg_loss = lambda o, t: F.cross_entropy(o[0], t[0][:, 0].long())  # noqa: E731
    term = PerNetworkTerm(S2S2Term(seg_loss), view=labelled_real_and_copy)
    taps = FeatureTaps(pair, term.required_features(pair))
    x = torch.randn(5, 1, 16, 16)
    target = [torch.randint(0, 3, (2, 1, 16, 16)), torch.randint(0, 3, (2, 1, 8, 8))]
    out = pair(x)
    feats = taps.pop()
    terms = term(StepState(data=x, target=target, output=out, features=feats))
    assert set(terms) == {"seg_copy", "consist_enc", "consist_dec"} and terms["seg_copy"].weight == 2.0
    from nnunet_ext.s2s2.losses import cosine_consistency
    dec = [cosine_consistency(feats[f"{n}.decoder.final"][:2], feats[f"{n}.decoder.final"][2:4]) for n in ("net_a", "net_b")]
    assert terms["consist_dec"].value.item() == pytest.approx((dec[0] + dec[1]).item() / 2, rel=1e-5)
    copy = [seg_loss([o[2:4] for o in out_i], target) for out_i in out]
    assert terms["seg_copy"].value.item() == pytest.approx((copy[0] + copy[1]).item() / 2, rel=1e-5)


@pytest.mark.parametrize("stack", [True, False])
def test_trainer_composes_the_parts_terms(stack):
    """build_loss_terms of the real trainer (no nnU-Net setup): CPS's on the pair, FD's and (with a stack) S2S2's
    on each network, with the FLARE22 settings."""
    t = nnUNetTrainerFLARE22.__new__(nnUNetTrainerFLARE22)
    t.loss, t.enable_deep_supervision = (lambda o, g: o.sum()), False
    t._s2s2_checked, t._s2s2_folder = True, (Path("stack") if stack else None)
    terms = t.build_loss_terms()
    assert isinstance(terms[0], CPSTerm) and terms[0].weight == 1.0
    assert isinstance(terms[1], PerNetworkTerm) and isinstance(terms[1].term, FeatureDistillationTerm)
    assert terms[1].term.lambda_ == 0.015 and terms[1].view is None
    if stack:
        assert len(terms) == 3 and isinstance(terms[2].term, S2S2Term) and terms[2].view is labelled_real_and_copy
    else:
        assert len(terms) == 2
    assert t.uif_keep == 0.1 and t.cps_rampup == 0.0


def test_without_a_stack_it_trains_cps_uif_fd_and_says_so(tmp_path):
    """No stack for the configuration: nnU-Net's dataset, no S2S2 term, one line in the training log."""
    from types import SimpleNamespace

    t = nnUNetTrainerFLARE22.__new__(nnUNetTrainerFLARE22)
    lines = []
    t.print_to_log_file = lambda *a, **k: lines.append(" ".join(map(str, a)))
    t._generate_command = lambda: "nnunet-ext s2s2-generate -d 1 -c 3d_fullres --generator gin"
    t.preprocessed_dataset_folder_base = str(tmp_path)
    t.configuration_manager = SimpleNamespace(data_identifier="nnUNetPlans_3d_fullres")
    t.loss, t.enable_deep_supervision = (lambda o, g: o.sum()), False
    assert t.s2s2_stack() is None
    assert len(lines) == 1 and "no semantic stack" in lines[0] and "without S2S2" in lines[0]
    assert not any(isinstance(x, PerNetworkTerm) and isinstance(x.term, S2S2Term) for x in t.build_loss_terms())
    assert len(lines) == 1, "decided once per run"


def test_prefixed_tap_names_reach_the_sub_networks():
    pair = CPSNetworkPair(_tiny_unet(0), _tiny_unet(1))
    with pytest.raises(KeyError, match="net_c.encoder.1"):
        FeatureTaps(pair, ["net_a.encoder.1", "net_c.encoder.1"])
    taps = FeatureTaps(pair, ["net_b.encoder.1"])
    own = FeatureTaps(pair.net_b, ["encoder.1"])  # the same point tapped on net_b itself
    pair.train()(torch.randn(1, 1, 16, 16))
    assert taps.pop()["net_b.encoder.1"] is own.pop()["encoder.1"]


# ------------------------------------------------------------------------------------------ end to end
def _fold(nnunet_dirs, ds, trainer):
    return Path(nnunet_dirs["results"]) / ds["name"] / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def flare_dataset(nnunet_dirs, nnunet_env):
    """Synthetic 3D dataset (5 labelled, 1 test, 4 unlabelled), planned, preprocessed, preprocess-unlabeled."""
    from nnunet_ext.core.synthetic import generate_dataset_3d

    folder = Path(generate_dataset_3d(str(nnunet_dirs["raw"]), DS_FLARE, name="FLARE22Phantom", num_train=5,
                                      num_test=1, num_unlabeled=4, seed=22))
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS_FLARE, "-c", "3d_fullres", "-npfp", 1, "-np", 1], nnunet_env)
    run_cli("nnunet-ext", ["preprocess-unlabeled", "-d", DS_FLARE, "-c", "3d_fullres", "-np", 1, "-q"], nnunet_env)
    return {"id": DS_FLARE, "raw": folder, "name": folder.name}


@pytest.fixture(scope="module")
def trained_with_stack(flare_dataset, nnunet_env, nnunet_dirs):
    """GIN stack (K=2); nnUNetTrainerFLARE22_tiny crashes at epoch 2 and is resumed with --c."""
    run_cli("nnunet-ext", ["s2s2-generate", "-d", DS_FLARE, "-c", "3d_fullres", "-k", 2, "--generator", "gin", "-q"],
            nnunet_env)
    trainer = "nnUNetTrainerFLARE22_tiny"
    args = [DS_FLARE, "3d_fullres", 0, "-tr", trainer, "-device", "cpu"]
    crashed = run_cli("nnUNetv2_train", args, dict(nnunet_env, nnUNet_ext_test_crash_at_epoch="2"), check=False)
    assert crashed.returncode != 0 and "test crash at epoch 2" in crashed.stdout + crashed.stderr
    fold = _fold(nnunet_dirs, flare_dataset, trainer)
    latest = _ckpt(fold / "checkpoint_latest.pth")
    run_cli("nnUNetv2_train", args + ["--c"], nnunet_env)
    return {"fold": fold, "latest": latest, "final": _ckpt(fold / "checkpoint_final.pth"), "trainer": trainer}


def test_with_a_gin_stack_every_term_is_logged_and_resume_continues(trained_with_stack):
    latest, final, fold = trained_with_stack["latest"], trained_with_stack["final"], trained_with_stack["fold"]
    assert latest["current_epoch"] == 2 and final["current_epoch"] == 3
    assert latest["nnunet_ext"]["uif_scored_epoch"] == 1 and len(latest["nnunet_ext"]["uif_selection"]) == 2
    assert final["nnunet_ext"] == latest["nnunet_ext"], "the resumed run continues with the saved UIF selection"
    log = final["logging"]
    for k in ("train_losses", "seg_b", "cps_a", "cps_b", "intra_fd", "inter_fd", "seg_copy", "consist_enc",
              "consist_dec", "pseudo_dice_a", "pseudo_dice_b"):
        assert len(log[k]) == 3 and all(np.isfinite(log[k])), k
    assert all(0 <= v <= 2 for v in log["consist_enc"])
    weights = final["network_weights"]
    assert any(k.startswith("net_a.") for k in weights) and any(k.startswith("net_b.") for k in weights)
    assert weights["net_a.encoder.stages.0.0.convs.0.conv.weight"].shape[1] == 1, "the plain pair: 1 input channel"
    assert len(final["optimizer_state"]["param_groups"]) == 2
    logs = sorted(fold.glob("training_log_*.txt"))
    assert "S2S2: semantic stack" in logs[0].read_text() and "no semantic stack" not in logs[0].read_text()
    assert "UIF: scored 4 unlabelled case(s) at epoch 1; keeping 2" in logs[0].read_text()
    assert "S2S2: semantic stack" in logs[-1].read_text(), "the resumed run uses the stack too"


def test_flare22_predicts_with_nnunet_predict(trained_with_stack, flare_dataset, nnunet_env, tmp_path):
    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", flare_dataset["raw"] / "imagesTs", "-o", out, "-d", DS_FLARE, "-c",
                                 "3d_fullres", "-f", 0, "-tr", trained_with_stack["trainer"], "-device", "cpu",
                                 "--disable_tta", "-npp", 1, "-nps", 1], nnunet_env)
    refs = sorted((flare_dataset["raw"] / "labelsTs").glob("*.nii.gz"))
    assert refs
    for ref_path in refs:
        pred_img, ref_img = sitk.ReadImage(str(out / ref_path.name)), sitk.ReadImage(str(ref_path))
        assert pred_img.GetSize() == ref_img.GetSize()
        assert np.allclose(pred_img.GetSpacing(), ref_img.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(pred_img))) <= {0, 1, 2}
