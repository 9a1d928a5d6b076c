"""STEGO's building blocks on hand-made inputs: correlation loss (correlated features with identical codes lower
the loss; centring removes the mean; the clamp is on the codes), head, cluster probe, kNN (a planted
near-duplicate is the nearest neighbour), Hungarian matching (a permuted label map scores 1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nnunet_ext.stego.head import STEGOHead
from nnunet_ext.stego.knn import draw_positive, pooled_descriptor, top_neighbours
from nnunet_ext.stego.losses import centre, correlation, correlation_loss, stego_loss
from nnunet_ext.stego.metrics import confusion, hungarian, matched_scores
from nnunet_ext.stego.probe import ClusterProbe


def _two_region_features(b=4, c=16, h=12, w=12, seed=0):
    """Features with two regions (left / right) of different, consistent directions plus noise."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(c, generator=g), torch.randn(c, generator=g)
    f = torch.empty(b, c, h, w)
    f[..., : w // 2] = u[None, :, None, None]
    f[..., w // 2:] = v[None, :, None, None]
    return f + 0.1 * torch.randn(b, c, h, w, generator=g)


def test_correlation_loss_rewards_codes_that_follow_the_features():
    f = _two_region_features()
    region = torch.zeros(4, 2, 12, 12)
    region[:, 0, :, :6] = 1
    region[:, 1, :, 6:] = 1
    good = stego_loss(f, region * 5 + 0.01, f, region * 5 + 0.01, generator=torch.Generator().manual_seed(1))
    rand = stego_loss(f, torch.randn(4, 2, 12, 12), f, torch.randn(4, 2, 12, 12),
                      generator=torch.Generator().manual_seed(1))
    assert good["self"] < rand["self"] and good["knn"] < rand["knn"]
    assert set(good) == {"self", "knn", "rand", "total"}


def test_centring_removes_the_mean_over_the_second_image():
    fd = torch.randn(2, 3, 3, 4, 4)
    c = centre(fd)
    torch.testing.assert_close(c.mean(dim=(3, 4)), torch.full((2, 3, 3), float(fd.mean())), atol=1e-6, rtol=0)
    shifted = fd + torch.randn(2, 3, 3, 1, 1)  # a per-query offset is removed, up to the global mean
    torch.testing.assert_close(centre(shifted) - shifted.mean(), c - fd.mean(), atol=1e-5, rtol=0)


def test_clamp_is_on_the_code_correlation_not_on_the_features():
    f = torch.randn(1, 8, 3, 3)
    c = torch.randn(1, 4, 3, 3)
    loss = correlation_loss(f, f, c, -c, 0.0)  # anti-correlated codes: negative S is clamped to 0
    s = correlation(c, -c)
    fd = centre(correlation(f, f))
    assert loss.item() == pytest.approx(float(-(s.clamp(min=0) * fd).mean()), abs=1e-6)
    c.requires_grad_()
    correlation_loss(f, f, c, c, 0.5).backward()
    assert c.grad is not None and c.grad.abs().sum() > 0


def test_head_and_probe():
    head = STEGOHead(16, dim=70)
    f, code = head(torch.randn(2, 16, 8, 8))
    assert f.shape == (2, 16, 8, 8) and code.shape == (2, 70, 8, 8)
    torch.manual_seed(0)
    probe = ClusterProbe(dim=2, n_clusters=2)
    pts = torch.cat([torch.tensor([1.0, 0.0]) + 0.05 * torch.randn(50, 2),
                     torch.tensor([0.0, 1.0]) + 0.05 * torch.randn(50, 2)])
    codes = pts.T.reshape(1, 2, 10, 10).requires_grad_()
    opt = torch.optim.SGD(probe.parameters(), lr=0.5)
    before = probe.loss(codes).item()
    for _ in range(100):
        opt.zero_grad()
        probe.loss(codes).backward()
        opt.step()
    assert probe.loss(codes).item() < before and codes.grad is None, "only the centroids learn (codes detached)"
    labels = probe.logits(codes).argmax(1).flatten()
    assert labels[:50].unique().numel() == 1 and labels[50:].unique().numel() == 1 and labels[0] != labels[-1]


def test_knn_finds_a_planted_near_duplicate():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(20, 32, 4, 4, generator=g)
    feats[13] = feats[5] + 0.01 * torch.randn(32, 4, 4, generator=g)
    nn_idx = top_neighbours(pooled_descriptor(feats), k=5)
    assert nn_idx.shape == (20, 5) and (nn_idx[:, 0] == torch.arange(20)).all(), "each image first"
    assert nn_idx[5, 1] == 13 and nn_idx[13, 1] == 5
    pos = draw_positive(nn_idx, generator=g, first=1, last=4)
    assert all(int(p) in nn_idx[i, 1:].tolist() for i, p in enumerate(pos))


def test_hungarian_on_a_permuted_label_map_gives_accuracy_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(8, 16, 16))
    perm = np.array([2, 0, 3, 1])
    clusters = perm[labels]
    conf = confusion(clusters, labels, 4, 4)
    assert hungarian(conf) == {int(perm[c]): c for c in range(4)}
    s = matched_scores(conf)
    assert s["accuracy"] == 1.0 and s["miou"] == 1.0 and s["dice"] == [1.0] * 4
    noisy = clusters.copy()
    noisy[0] = 0
    assert matched_scores(confusion(noisy, labels, 4, 4))["accuracy"] < 1.0
