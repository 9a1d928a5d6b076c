"""S2S2's trainer variants: the total loss each one trains on, computed by the trainer's own train-step code
(``forward_with_terms`` with its feature taps and terms) on a fixed small batch through a small nnU-Net U-Net and
nnU-Net's Dice + CE, against the same total written out from separate forward passes of the real image and the
copy. Checks the papers' weights and ratios: FCBFormer's 0.4 on two encoder features (0.8 in all), and the paper
weights variant's consistency-to-segmentation ratio equal to TransUNet's (the default's is half of it); the
variants are found the way nnU-Net finds trainers."""
from __future__ import annotations

import os
from functools import lru_cache

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch import nn

from nnunet_ext.core.feature_taps import FeatureTaps
from nnunet_ext.errors import UserError
from nnunet_ext.s2s2.losses import cosine_consistency
from nnunet_ext.s2s2.term import S2S2Term

N_STAGES = 4


@lru_cache(maxsize=None)
def _find(name: str):
    """The trainer class as ``nnUNetv2_train -tr name`` finds it: nnU-Net's lookup through nnUNet_extTrainer."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_ext.paths import trainers_path

    before = os.environ.get("nnUNet_extTrainer")
    os.environ["nnUNet_extTrainer"] = str(trainers_path())
    try:
        return recursive_find_trainer_class_by_name(name)
    finally:
        if before is None:
            del os.environ["nnUNet_extTrainer"]
        else:
            os.environ["nnUNet_extTrainer"] = before


def _net():
    torch.manual_seed(0)
    return PlainConvUNet(input_channels=1, n_stages=N_STAGES, features_per_stage=[8, 16, 24, 32], conv_op=nn.Conv2d,
                         kernel_sizes=[3] * N_STAGES, strides=[1, 2, 2, 2], n_conv_per_stage=[2] * N_STAGES,
                         num_classes=3, n_conv_per_stage_decoder=[2] * (N_STAGES - 1), conv_bias=True,
                         norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def _nnunet_loss():
    """nnU-Net's Dice + CE for label maps (weights 1 and 1, as nnUNetTrainer._build_loss)."""
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)


def _batch():
    g = torch.Generator().manual_seed(3)
    real, copy = torch.randn(2, 1, 32, 32, generator=g), torch.randn(2, 1, 32, 32, generator=g)
    target = torch.randint(0, 3, (2, 1, 32, 32), generator=g)
    return real, copy, target


def _trainer_step(cls):
    """(total, seg_loss, terms) of ``cls``'s train-step computation on the pair (real, copy)."""
    t = cls.__new__(cls)  # no plans needed: only the attributes the train step's loss uses
    t.network, t.loss = _net(), _nnunet_loss()
    t.loss_terms = t.build_loss_terms()
    t.feature_taps = FeatureTaps(t.network, [n for term in t.loss_terms for n in term.required_features(t.network)])
    real, copy, target = _batch()
    return t.forward_with_terms(torch.cat((real, copy)), torch.cat((target, target)))


def _reference_parts():
    """Per-image segmentation losses and consistencies from two separate passes, features read by plain hooks on
    the U-Net's stage modules (encoder stage outputs; the last decoder stage's output = the seg head's input)."""
    net, loss = _net(), _nnunet_loss()
    real, copy, target = _batch()
    passes = []
    for x in (real, copy):
        feats = {}
        hooks = [s.register_forward_hook(lambda m, i, o, k=k: feats.__setitem__(k, o))
                 for k, s in [(f"enc{i}", st) for i, st in enumerate(net.encoder.stages)]
                 + [("dec", net.decoder.stages[-1])]]
        out = net(x)
        for h in hooks:
            h.remove()
        passes.append((loss(out, target), feats))
    (seg_r, f_r), (seg_c, f_c) = passes
    cons = {k: cosine_consistency(f_r[k], f_c[k]) for k in f_r}
    return {"seg_real": seg_r, "seg_copy": seg_c, "enc1": cons[f"enc{N_STAGES - 1}"],
            "enc2": cons[f"enc{N_STAGES - 2}"], "dec": cons["dec"]}


def _transunet_total(p):
    """The paper's TransUNet total: 0.5 (CE + CE') + 0.5 (Dice + Dice') + enc + dec = 0.5 (seg + seg') + enc + dec."""
    return 0.5 * (p["seg_real"] + p["seg_copy"]) + p["enc1"] + p["dec"]


#: variant -> (expected total from the reference parts, {term: weight}, consistency weight / real-image seg weight)
EXPECTED = {
    "nnUNetTrainerS2S2": (lambda p: p["seg_real"] + p["seg_copy"] + p["enc1"] + p["dec"],
                          {"seg_copy": 1.0, "consist_enc": 1.0, "consist_dec": 1.0}, 2.0),
    "nnUNetTrainerS2S2_paperWeights": (lambda p: 2 * _transunet_total(p),
                                       {"seg_copy": 1.0, "consist_enc": 2.0, "consist_dec": 2.0}, 4.0),
    "nnUNetTrainerS2S2_fcbformer": (lambda p: p["seg_real"] + p["seg_copy"] + 0.4 * (p["enc1"] + p["enc2"]),
                                    {"seg_copy": 1.0, "consist_enc": 0.4, "consist_enc_2": 0.4}, 0.8),
    "nnUNetTrainerS2S2_enc04": (lambda p: p["seg_real"] + p["seg_copy"] + 0.4 * p["enc1"],
                                {"seg_copy": 1.0, "consist_enc": 0.4}, 0.4),
    "nnUNetTrainerS2S2_encOnly": (lambda p: p["seg_real"] + p["seg_copy"] + p["enc1"],
                                  {"seg_copy": 1.0, "consist_enc": 1.0}, 1.0),
    "nnUNetTrainerS2S2_slaug": (lambda p: p["seg_real"] + 0.1 * p["seg_copy"] + 0.1 * p["enc1"],
                                {"seg_copy": 0.1, "consist_enc": 0.1}, 0.1),
}


@pytest.fixture(scope="module")
def reference():
    return _reference_parts()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variant_total_loss_matches_its_formula(name, reference):
    expected_total, weights, consistency_weight = EXPECTED[name]
    total, seg_loss, terms = _trainer_step(_find(name))
    assert {k: t.weight for k, t in terms.items()} == pytest.approx(weights)
    assert sum(t.weight for k, t in terms.items() if k.startswith("consist")) == pytest.approx(consistency_weight)
    torch.testing.assert_close(seg_loss, reference["seg_real"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["seg_copy"].value, reference["seg_copy"], rtol=1e-5, atol=1e-6)
    for key, ref in (("consist_enc", "enc1"), ("consist_enc_2", "enc2"), ("consist_dec", "dec")):
        if key in terms:
            torch.testing.assert_close(terms[key].value, reference[ref], rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(total, expected_total(reference), rtol=1e-5, atol=1e-6)


def test_paper_weights_keep_transunets_ratio_and_the_default_halves_it(reference):
    """Consistency relative to segmentation: TransUNet 2 features x 1.0 against per-image seg weight 0.5 (ratio 4);
    nnUNetTrainerS2S2_paperWeights the same ratio (4 / 1); nnUNetTrainerS2S2 half of it (2 / 1). Also as losses:
    the paper-weights total is the TransUNet total times 2 (the same gradient direction)."""
    paper_ratio = (1.0 + 1.0) / 0.5
    for name, ratio in (("nnUNetTrainerS2S2_paperWeights", paper_ratio), ("nnUNetTrainerS2S2", paper_ratio / 2)):
        terms = _trainer_step(_find(name))[2]
        seg_weight = 1.0  # the real image's nnU-Net loss enters the total at weight 1 (Dice and CE at 1 each)
        assert terms["seg_copy"].weight == seg_weight, "the copy's segmentation loss weighs as the real image's"
        assert sum(t.weight for k, t in terms.items() if k.startswith("consist")) / seg_weight == ratio, name
    total = _trainer_step(_find("nnUNetTrainerS2S2_paperWeights"))[0]
    torch.testing.assert_close(total / 2, _transunet_total(reference), rtol=1e-5, atol=1e-6)


def test_fcbformer_taps_the_two_deepest_encoder_stages():
    term = S2S2Term(None, 1.0, 0.4, 0.0, enc_stages=2)
    assert term.required_features(_net()) == [f"encoder.{N_STAGES - 1}", f"encoder.{N_STAGES - 2}"]
    assert term.consistency_taps() == {"consist_enc": f"encoder.{N_STAGES - 1}",
                                       "consist_enc_2": f"encoder.{N_STAGES - 2}"}
    assert _find("nnUNetTrainerS2S2_fcbformer").s2s2_enc_stages == 2
    assert _find("nnUNetTrainerS2S2_enc04").s2s2_enc_stages == 1
    with pytest.raises(UserError, match="s2s2_enc_stages"):
        S2S2Term(None, enc_stages=N_STAGES + 1).required_features(_net())
    with pytest.raises(UserError, match="s2s2_enc_stages"):
        S2S2Term(None, enc_stages=0)


def test_variants_are_found_like_nnunet_finds_trainers():
    """nnU-Net's own lookup through nnUNet_extTrainer (``_find``), and ``nnunet-ext trainers``'s list."""
    from nnunet_ext.cli import _trainer_classes

    listed = _trainer_classes()
    names = set(EXPECTED) | {"nnUNetTrainerS2S2_gin", "nnUNetTrainerS2S2_diffusion", "nnUNetTrainerS2S2_controlnet",
                             "nnUNetTrainerS2S2FD"}
    for name in sorted(names):
        assert name in listed, name
        assert _find(name).__name__ == name
        assert listed[name][1], f"{name} has a one-line description"
