"""The default nnUNetTrainerFD equals the authors' SelfReg-UNet composition, transcribed independently.

The transcription (docs/methods/fd.md, in this file's own words): run the U-Net's encoder and
re-run its decoder loop by hand; the students are the encoder stage outputs except the first
(full-resolution) one and the decoder stage outputs except the last; the teacher is the last
decoder stage output, detached, with no intra term. Loss = lambda * (mean intra over the encoder
students + mean intra over the decoder students + mean inter over all students). The channel draws
of inter are shared by seeding torch's global generator identically before both evaluations.
"""
import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.core.feature_taps import FeatureTaps
from nnunet_ext.core.loss_terms import StepState
from nnunet_ext.fd.term import FeatureDistillationTerm, distillation_groups
from nnunet_ext.fd.trainer import nnUNetTrainerFD

from test_feature_taps import make_net


def _intra(f):
    """Channels ranked by the mean of the per-(sample, channel) L2-normalised map; MSE of the halves."""
    flat = f.detach().flatten(2)
    score = (flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-12)).mean(dim=(0, 2))
    rank = score.argsort(descending=True)
    h = f.shape[1] // 2
    return ((f[:, rank[:h]] - f[:, rank[h:2 * h]]) ** 2).mean()


def _inter(s, t):
    """Pool both to the common size; k = min channels drawn from each (student first); MSE."""
    size = [min(a, b) for a, b in zip(s.shape[2:], t.shape[2:])]
    pool = F.adaptive_avg_pool3d if s.ndim == 5 else F.adaptive_avg_pool2d
    s, t = pool(s, size), pool(t, size)
    k = min(s.shape[1], t.shape[1])
    i = torch.randperm(s.shape[1])[:k]
    j = torch.randperm(t.shape[1])[:k]
    return ((s[:, i] - t[:, j]) ** 2).mean()


def authors_composition(net, x, lambda_):
    skips = net.encoder(x)                      # x1 .. x5
    dec, low = [], skips[-1]
    for s, stage in enumerate(net.decoder.stages):  # up1 .. up4
        low = stage(torch.cat((net.decoder.transpconvs[s](low), skips[-(s + 2)]), 1))
        dec.append(low)
    enc_students, dec_students, teacher = skips[1:], dec[:-1], dec[-1].detach()
    intra = torch.stack([_intra(f) for f in enc_students]).mean() + torch.stack([_intra(f) for f in dec_students]).mean()
    inter = torch.stack([_inter(f, teacher) for f in enc_students + dec_students]).mean()
    return lambda_ * (intra + inter), len(enc_students) + len(dec_students)


def default_term():
    """The loss terms of the real default trainer (its class attributes, no nnU-Net setup needed)."""
    terms = nnUNetTrainerFD.build_loss_terms(nnUNetTrainerFD.__new__(nnUNetTrainerFD))
    assert len(terms) == 1
    return terms[0]


@pytest.mark.parametrize("arch,dim", [(a, d) for a in ("plain", "resenc") for d in (2, 3)])
def test_default_trainer_loss_equals_authors_composition(arch, dim):
    n_stages = 5 if dim == 2 else 4
    net = make_net(arch, dim, deep_supervision=True, n_stages=n_stages)
    torch.manual_seed(3)
    x = torch.randn(2, 2, *((32, 32) if dim == 2 else (16, 16, 16)))

    term = default_term()
    taps = FeatureTaps(net, term.required_features(net))
    out = net(x)
    torch.manual_seed(11)
    terms = term(StepState(data=x, target=None, output=out, features=taps.pop()))
    ours = sum(t.weight * t.value for t in terms.values())
    g_ours = torch.autograd.grad(ours, list(net.parameters()), allow_unused=True)
    taps.remove()

    torch.manual_seed(11)
    ref, n_students = authors_composition(net, x, 0.015)
    g_ref = torch.autograd.grad(ref, list(net.parameters()), allow_unused=True)

    assert n_students == 2 * n_stages - 3  # 7 on a 5-stage U-Net, as in the paper
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert [a is None for a in g_ours] == [b is None for b in g_ref]
    a = torch.cat([g.flatten() for g in g_ours if g is not None])
    b = torch.cat([g.flatten() for g in g_ref if g is not None])
    # (conv biases before instance norm have gradients of 0 up to rounding: compare on the global scale)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_default_groups_map_stages_as_documented():
    net = make_net("plain", 2, True, n_stages=5)
    intra, inter = distillation_groups(net)
    assert intra == [["encoder.1", "encoder.2", "encoder.3", "encoder.4"], ["decoder.0", "decoder.1", "decoder.2"]]
    assert inter == [intra[0] + intra[1]]
    term = default_term()
    assert term.lambda_ == 0.015 and term.selection == "stages"
    assert "decoder.final" in term.required_features(net) and "encoder.0" not in term.required_features(net)


@pytest.mark.parametrize("arch", ["plain", "resenc"])
def test_all_blocks_variant_groups(arch):
    net = make_net(arch, 2, True, n_stages=4)
    intra, inter = distillation_groups(net, "blocks")
    ef, el, df, dl = intra
    assert el == [f"encoder.{i}.last" for i in range(4)]
    assert dl == ["decoder.0.last", "decoder.1.last"]  # decoder.2.last is the teacher
    assert df == ["decoder.0.first", "decoder.1.first", "decoder.2.first"]
    assert ef == ([f"encoder.{i}.first" for i in range(4)] if arch == "plain"
                  else [f"encoder.{i}.first" for i in range(1, 4)])  # resenc stage 0 has one block
    assert inter == [ef + el, df + dl]
    term = FeatureDistillationTerm(selection="blocks")
    taps = FeatureTaps(net, term.required_features(net))
    out = net(torch.randn(2, 2, 32, 32))
    terms = term(StepState(data=None, target=None, output=out, features=taps.pop()))
    assert set(terms) == {"intra_fd", "inter_fd"} and all(t.value.item() > 0 for t in terms.values())


def test_unknown_selection_is_rejected():
    with pytest.raises(ValueError, match="selection"):
        FeatureDistillationTerm(selection="everything")
