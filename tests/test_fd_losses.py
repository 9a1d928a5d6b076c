"""SelfReg-UNet's intra_fd / inter_fd against values computed by hand on small tensors."""
import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.fd.losses import channel_saliency, feature_distillation, inter_fd, intra_fd, pool_to_common_size


def test_channel_saliency_is_mean_of_spatially_normalised_maps():
    # channel 0: [3, 4] -> normalised [0.6, 0.8], mean 0.7; channel 1: [1, 0] -> [1, 0], mean 0.5
    f = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]]])  # (1, 2, 1, 2)
    assert torch.allclose(channel_saliency(f), torch.tensor([0.7, 0.5]))


def test_intra_fd_sorts_channels_and_compares_halves():
    # 4 channels of a (1, 4, 1, 2) map. Saliencies (spatially normalised, averaged):
    # c0 [1, 0] -> 0.5 ; c1 [1, 1] -> 0.7071 ; c2 [2, 0] -> 0.5 ; c3 [3, 4] -> 0.7
    f = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]], [[3.0, 4.0]]]])
    # descending: c1 (0.707), c3 (0.7), then c0 / c2 (0.5, tie). Top half {c1, c3} vs bottom half.
    order = torch.argsort(channel_saliency(f), descending=True)
    assert order[:2].tolist() == [1, 3]
    expected = F.mse_loss(f[:, order[:2]], f[:, order[2:]])
    assert torch.allclose(intra_fd(f), expected)
    # by hand for the tie order c0 then c2: ((1-1)^2 + (1-0)^2 + (3-2)^2 + (4-0)^2) / 4 = 18 / 4
    # and c2 then c0: ((1-2)^2 + (1-0)^2 + (3-1)^2 + (4-0)^2) / 4 = 22 / 4
    assert intra_fd(f).item() in (pytest.approx(4.5), pytest.approx(5.5))


def test_intra_fd_3d_odd_channels_and_gradient():
    f = torch.randn(2, 5, 3, 4, 4, requires_grad=True)
    loss = intra_fd(f)
    loss.backward()
    # odd C: the least salient channel is left out, so it receives no gradient
    order = torch.argsort(channel_saliency(f.detach()), descending=True)
    assert f.grad[:, order[-1]].abs().sum() == 0
    assert f.grad[:, order[0]].abs().sum() > 0


def test_intra_fd_gradient_matches_autograd_reference():
    torch.manual_seed(0)
    f = torch.randn(2, 7, 3, 5, dtype=torch.float64, requires_grad=True)
    # equals the plain index_select formulation, value and gradient (odd C: one channel left out)
    order = torch.argsort(channel_saliency(f), descending=True)
    ref = F.mse_loss(f[:, order[:3]], f[:, order[3:6]])
    g_ref, = torch.autograd.grad(ref, f)
    val = intra_fd(f)
    g, = torch.autograd.grad(val, f)
    assert torch.allclose(val, ref) and torch.allclose(g, g_ref)
    # and a central finite difference along a random direction
    v, eps = torch.randn_like(f), 1e-6
    with torch.no_grad():
        fd = (intra_fd(f + eps * v) - intra_fd(f - eps * v)) / (2 * eps)
    assert torch.allclose(fd, (g * v).sum(), rtol=1e-5)


def test_backward_twice_with_retain_graph_accumulates_twice():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 3, 3, requires_grad=True)
    t = torch.randn(2, 5, 3, 3)
    intra, inter = feature_distillation([f], t, generator=torch.Generator().manual_seed(0))
    (intra + inter).backward(retain_graph=True)
    once = f.grad.clone()
    (intra + inter).backward()
    assert torch.allclose(f.grad, 2 * once)


def test_in_place_change_of_a_feature_after_the_loss_is_caught():
    f = torch.randn(1, 4, 3, 3, requires_grad=True)
    g = f * 1.0
    loss = intra_fd(g)
    g.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_workspace_reuse_gives_same_values_and_gradients():
    from nnunet_ext.fd.losses import Workspace

    ws = Workspace()
    leaves = [torch.randn(2, 6, 8, 8, requires_grad=True), torch.randn(2, 12, 4, 4, requires_grad=True)]
    teacher = torch.randn(2, 6, 8, 8)
    results = []
    for workspace in (None, ws, ws):  # twice with the same workspace: buffers are recycled
        for f in leaves:
            f.grad = None
        # non-leaf maps with a second consumer, as in a network: autograd accumulates into the buffer
        feats = [f * 1.0 for f in leaves]
        other = sum((f * f).sum() for f in feats)
        intra, inter = feature_distillation(feats, teacher, generator=torch.Generator().manual_seed(0),
                                            workspace=workspace)
        (intra + inter + other).backward()
        results.append((intra.item(), inter.item(), [f.grad for f in leaves]))
    assert len(ws._buffers) == 2  # the buffers were used
    for r in results[1:]:
        assert r[0] == pytest.approx(results[0][0]) and r[1] == pytest.approx(results[0][1])
        for a, b in zip(r[2], results[0][2]):
            assert torch.allclose(a, b)


def test_inter_fd_with_more_student_than_teacher_channels():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 8, 4, 4, requires_grad=True), torch.randn(2, 3, 8, 8)
    loss = inter_fd(s, t, generator=g)
    g2 = torch.Generator().manual_seed(3)
    idx_s, idx_t = torch.randperm(8, generator=g2)[:3], torch.randperm(3, generator=g2)[:3]
    assert torch.allclose(loss, F.mse_loss(s[:, idx_s], F.adaptive_avg_pool2d(t, (4, 4))[:, idx_t]))
    loss.backward()
    unused = sorted(set(range(8)) - set(idx_s.tolist()))
    assert s.grad[:, unused].abs().sum() == 0


def test_inter_fd_pools_to_smaller_size_and_detaches_teacher():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = torch.randn(2, 6, 4, 4, requires_grad=True)
    loss = inter_fd(s, t, generator=g)
    # the same draws by hand
    g2 = torch.Generator().manual_seed(0)
    idx_s = torch.randperm(4, generator=g2)[:4]
    idx_t = torch.randperm(6, generator=g2)[:4]
    expected = F.mse_loss(F.adaptive_avg_pool2d(s, (4, 4))[:, idx_s], t[:, idx_t])
    assert torch.allclose(loss, expected)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # teacher detached


def test_inter_fd_pools_each_axis_to_the_minimum_3d():
    a, b = torch.randn(1, 2, 4, 8, 8), torch.randn(1, 3, 8, 4, 8)
    pa, pb = pool_to_common_size(a, b)
    assert pa.shape[2:] == pb.shape[2:] == (4, 4, 8)


def test_inter_fd_channel_pairing_reproducible_under_seed():
    s, t = torch.randn(1, 8, 4, 4), torch.randn(1, 16, 4, 4)
    v1 = inter_fd(s, t, torch.Generator().manual_seed(123))
    v2 = inter_fd(s, t, torch.Generator().manual_seed(123))
    v3 = inter_fd(s, t, torch.Generator().manual_seed(124))
    assert torch.equal(v1, v2)
    assert not torch.equal(v1, v3)
    torch.manual_seed(5)
    w1 = inter_fd(s, t)
    torch.manual_seed(5)
    assert torch.equal(w1, inter_fd(s, t))


def test_inter_fd_of_maps_that_agree_after_pooling_is_zero():
    # a constant student pooled to the teacher's size equals the constant teacher in every channel
    assert inter_fd(torch.full((1, 4, 8, 8), 2.0), torch.full((1, 6, 4, 4), 2.0)).item() == 0
    assert inter_fd(torch.full((1, 4, 8, 8), 2.0), torch.full((1, 6, 4, 4), 3.0)).item() == pytest.approx(1.0)


def test_feature_distillation_averages_and_skips_teacher_in_inter():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)
    teacher = torch.randn(1, 4, 8, 8)
    intra, inter = feature_distillation([f1, f2, teacher], teacher, generator=g)
    assert torch.allclose(intra, (intra_fd(f1) + intra_fd(f2) + intra_fd(teacher)) / 3)
    g2 = torch.Generator().manual_seed(0)
    assert torch.allclose(inter, (inter_fd(f1, teacher, g2) + inter_fd(f2, teacher, g2)) / 2)
    i0, e0 = feature_distillation([f1], teacher, use_intra=False)
    assert i0.item() == 0 and e0.item() > 0


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="feature map"):
        intra_fd(torch.randn(3, 4))


def _naive_reference(features, teacher, seed):
    """METHODS.md section 4, written the plain way (index_select + mse_loss)."""
    g = torch.Generator().manual_seed(seed)
    intra = []
    for f in features:
        order = torch.argsort(channel_saliency(f), descending=True)
        h = f.shape[1] // 2
        intra.append(F.mse_loss(f.index_select(1, order[:h]), f.index_select(1, order[h:2 * h])))
    inter = []
    for f in features:
        if f is teacher:
            continue
        s, t = pool_to_common_size(f, teacher.detach())
        k = min(s.shape[1], t.shape[1])
        idx_s = torch.randperm(s.shape[1], generator=g)[:k]
        idx_t = torch.randperm(t.shape[1], generator=g)[:k]
        inter.append(F.mse_loss(s[:, idx_s], t[:, idx_t]))
    return torch.stack(intra).mean(), torch.stack(inter).mean()


@pytest.mark.parametrize("dim", [2, 3])
def test_fused_feature_distillation_equals_naive_reference(dim):
    torch.manual_seed(0)
    sp = (8, 8) if dim == 2 else (4, 8, 8)
    half = tuple(x // 2 for x in sp)
    double = tuple(x * 2 for x in sp)
    quarter = tuple(max(1, x // 4) for x in sp)  # pooled from the already pooled half-size teacher
    # more, as many and fewer channels than the teacher, odd channel counts (whose left-out channel may
    # or may not be drawn for inter_fd), smaller and larger maps than the teacher
    base = [torch.randn(2, 4, *sp), torch.randn(2, 8, *half), torch.randn(2, 16, *half), torch.randn(2, 5, *sp),
            torch.randn(2, 3, *sp), torch.randn(2, 7, *half), torch.randn(2, 2, *double), torch.randn(2, 6, *quarter),
            torch.randn(2, 4, *sp)]
    results = []
    for impl in ("fused", "naive"):
        feats = [b.clone().requires_grad_(True) for b in base]
        teacher = feats[-1]
        if impl == "fused":
            intra, inter = feature_distillation(feats, teacher, generator=torch.Generator().manual_seed(7))
        else:
            intra, inter = _naive_reference(feats, teacher, 7)
        (0.015 * (intra + inter)).backward()
        results.append((intra.item(), inter.item(), [f.grad.clone() for f in feats]))
    (i1, e1, g1), (i2, e2, g2) = results
    assert i1 == pytest.approx(i2, rel=1e-5) and e1 == pytest.approx(e2, rel=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-4)


def test_half_precision_maps_get_gradients_of_their_dtype_close_to_fp32():
    torch.manual_seed(0)
    base = [torch.randn(2, 6, 8, 8), torch.randn(2, 12, 4, 4), torch.randn(2, 6, 8, 8)]
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        feats = [b.to(dtype).clone().requires_grad_(True) for b in base]
        intra, inter = feature_distillation(feats, feats[-1], generator=torch.Generator().manual_seed(1))
        assert intra.dtype == inter.dtype == torch.float32
        (1000 * (intra + inter)).backward()
        assert all(f.grad.dtype == dtype for f in feats)
        out[dtype] = (intra.item(), inter.item(), [f.grad.float() for f in feats])
    a, b = out[torch.float32], out[torch.bfloat16]
    assert b[0] == pytest.approx(a[0], rel=2e-2) and b[1] == pytest.approx(a[1], rel=2e-2)
    for ga, gb in zip(a[2], b[2]):
        assert torch.allclose(ga, gb, rtol=5e-2, atol=5e-2 * ga.abs().max().item())
