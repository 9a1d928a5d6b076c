"""STEGO as in the authors' code (docs/methods/stego.md), four points pinned on hand-made inputs:

1. negatives: each random draw pairs every image with another image of the batch (a permutation whose fixed
   points move on by one), and the negative image is sampled at the second point set (the partner's points);
2. centring: each random draw's feature correlation is centred with its own global mean;
3. dropout: the linear branch, the non-linear branch and the loss features get three independent Dropout2d masks;
4. cluster probe: its loss sees the batch images' codes only, never their kNN partners' codes.

Plus the batch-of-one behaviour (a clear error; no random pairing with ``n_negatives = 0``)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ext.core.loss_terms import StepState
from nnunet_ext.errors import UserError
from nnunet_ext.stego.backbone import FrozenBackbone
from nnunet_ext.stego.head import STEGOHead
from nnunet_ext.stego.losses import CorrelationWeights, centre, negative_indices, pairings, stego_loss
from nnunet_ext.stego.network import STEGONetwork
from nnunet_ext.stego.term import STEGOTerm
from nnunet_ext.stego.trainer import nnUNetTrainerSTEGO


# ---------------------------------------------------------------------------------------------- 1. negatives
def test_negatives_are_a_permutation_with_fixed_points_moved_on():
    for b in range(2, 10):
        for seed in range(40):
            neg = negative_indices(b, torch.Generator().manual_seed(seed))
            perm = torch.randperm(b, generator=torch.Generator().manual_seed(seed))
            expected = [(i + 1) % b if int(p) == i else int(p) for i, p in enumerate(perm)]
            assert neg.tolist() == expected, (b, seed)
            assert all(int(n) != i for i, n in enumerate(neg)), f"self-negative (batch {b}, seed {seed})"


def _coded_features(b: int, h: int = 7, w: int = 9) -> torch.Tensor:
    """Channel 0 = the image's index (constant), channels 1 and 2 = x and y in [-1, 1]: bilinear sampling with
    align_corners=True returns the image and the sampling coordinates themselves."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([torch.stack([torch.full((h, w), float(i)), xs, ys]) for i in range(b)])


def test_random_pairing_uses_other_images_at_the_second_point_set():
    for b in (2, 3, 5, 8):
        feats = _coded_features(b)
        for seed in range(10):
            pairs = pairings(feats, feats, feats, feats, n_points=4, n_negatives=5,
                             generator=torch.Generator().manual_seed(seed))
            f1, f2 = pairs["knn"][0], pairs["knn"][1]  # the partner (here: the image itself) sampled at p2
            q1, neg, _, neg_codes = pairs["rand"]
            assert neg.shape == (5 * b, 3, 4, 4) and torch.equal(neg, neg_codes)
            for d in range(5):
                rows = slice(d * b, (d + 1) * b)
                torch.testing.assert_close(q1[rows], f1)  # the query: each image at its first point set
                who = neg[rows, 0].round()
                assert (who == who[:, :1, :1]).all(), "one negative image per query image"
                assert all(int(who[i, 0, 0]) != i for i in range(b)), f"self-negative (batch {b}, seed {seed})"
                # sampled where the partner was sampled (p2 of the query's batch position), not at p1
                torch.testing.assert_close(neg[rows, 1:], f2[:, 1:], atol=1e-5, rtol=0)
                assert not torch.allclose(neg[rows, 1:], f1[:, 1:], atol=1e-3)


# ----------------------------------------------------------------------------------------------- 2. centring
def _corr(a, b):
    return torch.einsum("nchw,ncij->nhwij", F.normalize(a, dim=1), F.normalize(b, dim=1))


def test_centre_uses_each_draws_own_global_mean():
    g = torch.Generator().manual_seed(0)
    draw_a = 2.0 + torch.randn(3, 2, 2, 4, 4, generator=g)
    draw_b = -1.0 + torch.randn(3, 2, 2, 4, 4, generator=g)
    fd = torch.cat([draw_a, draw_b])
    expected = torch.cat([d - d.mean(dim=(3, 4), keepdim=True) + d.mean() for d in (draw_a, draw_b)])
    one_mean = fd - fd.mean(dim=(3, 4), keepdim=True) + fd.mean()
    assert (expected - one_mean).abs().max() > 1.0, "the hand-made case tells the two apart"
    torch.testing.assert_close(centre(fd, draws=2), expected)
    torch.testing.assert_close(centre(fd), one_mean)  # one pairing (self, kNN): its own global mean


def _two_group_features(b=4, c=8, h=6, w=6, seed=0):
    """Images 0, 1 along +u, images 2, 3 along -u (plus noise): draws pairing alike images have a high mean
    correlation, the others a low one."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(c, generator=g)
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(b, 1, 1, 1)
    return sign * u.view(1, c, 1, 1) + 0.5 * torch.randn(b, c, h, w, generator=g)


def test_random_loss_centres_each_draw_on_its_own():
    feats = _two_group_features()
    codes = feats.clone()  # codes that follow the features: the clamp weights differ between draws
    b, n, shift = 4, 5, CorrelationWeights().b_rand
    for seed in range(5):
        q, neg, cq, cneg = pairings(feats, codes, feats, codes, n_negatives=n,
                                    generator=torch.Generator().manual_seed(seed))["rand"]
        fd, s = _corr(q, neg), _corr(cq, cneg).clamp(min=0)
        per_draw = []
        for d in range(n):
            x = fd[d * b:(d + 1) * b]
            per_draw.append(x - x.mean(dim=(3, 4), keepdim=True) + x.mean())
        expected = -(s * (torch.cat(per_draw) - shift)).mean()
        one_mean = -(s * (fd - fd.mean(dim=(3, 4), keepdim=True) + fd.mean() - shift)).mean()
        assert abs(float(expected - one_mean)) > 0.02, "the hand-made case tells the two apart"
        got = stego_loss(feats, codes, feats, codes, n_negatives=n, generator=torch.Generator().manual_seed(seed))
        assert float(got["rand"]) == pytest.approx(float(expected), abs=1e-5)


# ------------------------------------------------------------------------------------------------ 3. dropout
def _head_inputs(head: STEGOHead, feats: torch.Tensor):
    """(linear branch's input, non-linear branch's input, features for the loss) of one forward pass."""
    seen = {}
    hooks = [head.linear.register_forward_pre_hook(lambda m, a: seen.__setitem__("linear", a[0])),
             head.nonlinear[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("nonlinear", a[0]))]
    loss_feats, _ = head(feats)
    for h in hooks:
        h.remove()
    return seen["linear"], seen["nonlinear"], loss_feats


def test_dropout_is_drawn_three_times_independently():
    head = STEGOHead(256, dim=4)  # default Dropout2d(0.1)
    torch.manual_seed(0)
    ones = torch.ones(8, 256, 3, 3)
    inputs = _head_inputs(head, ones)
    kept = [(x[:, :, 0, 0] > 0) for x in inputs]  # Dropout2d: whole channels dropped, the rest scaled by 1 / 0.9
    for x, k in zip(inputs, kept):
        assert torch.allclose(x[k], torch.tensor(1 / 0.9)) and (x[~k] == 0).all()
        assert 0.05 < (~k).float().mean() < 0.15, "p = 0.1 per channel"
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert not torch.equal(kept[i], kept[j]), f"inputs {i} and {j} share a dropout mask"
        both = (~kept[i] & ~kept[j]).float().mean()
        assert both < 0.04, f"inputs {i} and {j}: {both:.3f} of the channels dropped in both (independent: ~0.01)"
    head.eval()
    for x in _head_inputs(head, ones):
        assert torch.equal(x, ones), "no dropout in evaluation"


# ------------------------------------------------------------------------------------------ 4. cluster probe
def _network(seed=0) -> STEGONetwork:
    torch.manual_seed(seed)
    backbone = FrozenBackbone(nn.Conv2d(3, 16, 8, stride=8), "taesd", 8, 16)
    return STEGONetwork(backbone, n_clusters=3, in_channels=1, dim=8).train()


def test_cluster_loss_ignores_the_partners_codes():
    net = _network()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 1, 32, 32, generator=g)
    partners = [torch.randn(3, 1, 32, 32, generator=g), 5 * torch.randn(3, 1, 32, 32, generator=g) + 2]
    outs = []
    for p in partners:
        data = torch.cat((images, p))
        torch.manual_seed(7)  # the same dropout masks for both runs
        outs.append(nnUNetTrainerSTEGO.training_forward(SimpleNamespace(network=net), data, None))
    a, b = outs
    assert not torch.allclose(a["codes"][3:], b["codes"][3:]), "the partners' codes differ"
    torch.testing.assert_close(a["codes"][:3], b["codes"][:3])
    assert a["cluster_loss"].item() == b["cluster_loss"].item()
    assert a["cluster_loss"].item() == pytest.approx(net.probe.loss(a["codes"][:3]).item(), abs=1e-6)
    assert abs(float(net.probe.loss(a["codes"])) - float(net.probe.loss(b["codes"]))) > 1e-4, \
        "the partners' codes would change a loss over all codes"
    term = STEGOTerm(n_points=3)(StepState(data=torch.cat((images, partners[0])), target=None, output=a))
    assert term["stego_cluster"].value.item() == a["cluster_loss"].item()
    a["cluster_loss"].backward()
    assert net.probe.centroids.grad is not None and net.head.linear.weight.grad is None, "detached codes"


# ------------------------------------------------------------------------------------------------- batch of 1
def test_batch_of_one():
    f, c = torch.randn(1, 6, 5, 5), torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="at least 2 images"):
        negative_indices(1)
    with pytest.raises(ValueError, match="at least 2 images"):
        stego_loss(f, c, f, c)
    out = stego_loss(f, c, f, c, n_negatives=0)
    assert float(out["rand"]) == 0.0 and torch.isfinite(out["self"]) and torch.isfinite(out["knn"])
    w = CorrelationWeights()
    assert float(out["total"]) == pytest.approx(float(w.lambda_self * out["self"] + w.lambda_knn * out["knn"]))
    trainer = SimpleNamespace(was_initialized=True, stego_negatives=5, batch_size=1)
    with pytest.raises(UserError, match="at least 2 images"):
        nnUNetTrainerSTEGO.on_train_start(trainer)
