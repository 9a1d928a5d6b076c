"""SelfReg-UNet's intra_fd / inter_fd against values computed by hand on small tensors."""
import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.fd.losses import channel_saliency, inter_fd, intra_fd, pool_to_common_size, selfreg_loss


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


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="feature map"):
        intra_fd(torch.randn(3, 4))


def test_selfreg_loss_sums_group_means_and_detaches_the_teacher():
    torch.manual_seed(0)
    a, b, c = (torch.randn(1, 4, 8, 8, requires_grad=True), torch.randn(1, 8, 4, 4, requires_grad=True),
               torch.randn(1, 6, 4, 4, requires_grad=True))
    teacher = torch.randn(1, 4, 8, 8, requires_grad=True)
    intra, inter = selfreg_loss([[a, b], [c]], [[a, b, c]], teacher, torch.Generator().manual_seed(0))
    assert torch.allclose(intra, (intra_fd(a) + intra_fd(b)) / 2 + intra_fd(c))
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(inter, (inter_fd(a, teacher, g) + inter_fd(b, teacher, g) + inter_fd(c, teacher, g)) / 3)
    (intra + inter).backward()
    assert teacher.grad is None and all(x.grad is not None for x in (a, b, c))
    # empty groups are left out; no group at all gives zeros
    i0, e0 = selfreg_loss([[], [c]], [], teacher)
    assert torch.allclose(i0, intra_fd(c)) and e0.item() == 0


def test_half_precision_maps_give_fp32_values_close_to_fp32():
    torch.manual_seed(0)
    base = [torch.randn(2, 6, 8, 8), torch.randn(2, 12, 4, 4)]
    teacher = torch.randn(2, 6, 8, 8)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        feats = [x.to(dtype).clone().requires_grad_(True) for x in base]
        intra, inter = selfreg_loss([feats], [feats], teacher.to(dtype), torch.Generator().manual_seed(1))
        assert intra.dtype == inter.dtype == torch.float32
        (intra + inter).backward()
        assert all(f.grad.dtype == dtype for f in feats)
        out[dtype] = (intra.item(), inter.item())
    assert out[torch.bfloat16][0] == pytest.approx(out[torch.float32][0], rel=2e-2)
    assert out[torch.bfloat16][1] == pytest.approx(out[torch.float32][1], rel=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logged_values_are_exact_for_near_equal_channels(dtype):
    """Paired channels that nearly coincide: the logged value must match the direct formula in float64
    to 1e-3 relative (a difference of sums would lose it entirely)."""
    torch.manual_seed(0)
    base = 100 * torch.randn(2, 1, 16, 16, dtype=torch.float64)
    eps = 1e-3 * torch.randn(2, 4, 16, 16, dtype=torch.float64)
    f = (base + eps).to(dtype)  # 4 channels, all ~equal: every intra pair nearly coincides
    order = torch.argsort(channel_saliency(f), descending=True)
    f64 = f.double()
    direct = ((f64[:, order[:2]] - f64[:, order[2:4]]) ** 2).mean()
    assert intra_fd(f).item() == pytest.approx(direct.item(), rel=1e-3)
    t = f.clone()
    t[:, 0] += torch.tensor(1e-2, dtype=dtype)
    g = torch.Generator().manual_seed(4)
    g2 = torch.Generator().manual_seed(4)
    idx_s, idx_t = torch.randperm(4, generator=g2), torch.randperm(4, generator=g2)
    direct = ((f64[:, idx_s] - t.double()[:, idx_t]) ** 2).mean()
    assert inter_fd(f, t, g).item() == pytest.approx(direct.item(), rel=1e-3)


def test_block_mean_equals_average_pooling_with_its_gradient():
    from nnunet_ext.fd.losses import block_mean

    for shape, k in [((3, 4, 12, 10), (2, 2)), ((2, 3, 8, 6, 9), (4, 1, 3)), ((2, 3, 8, 6), (8, 3))]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        pool = F.avg_pool3d if len(shape) == 5 else F.avg_pool2d
        assert torch.allclose(block_mean(x, k), pool(x, k, k))
        assert torch.autograd.gradcheck(lambda y: block_mean(y, k), (x,))
    x = torch.randn(2, 3, 4, 4)
    assert block_mean(x, (1, 1)) is x  # nothing to pool: the map itself


def test_per_channel_and_gather_paths_agree(monkeypatch):
    """Large CPU maps are subtracted channel by channel, small ones (and GPU maps) gathered: same values and
    gradients (threshold lowered here so that tiny maps take each path)."""
    import nnunet_ext.fd.losses as fd_losses

    torch.manual_seed(0)
    enc = [torch.randn(3, 12, 8, 6, dtype=torch.float64, requires_grad=True),
           torch.randn(3, 25, 4, 3, dtype=torch.float64, requires_grad=True)]
    dec = [torch.randn(3, 13, 8, 6, dtype=torch.float64, requires_grad=True)]
    teacher = torch.randn(3, 7, 16, 12, dtype=torch.float64, requires_grad=True)

    def run(threshold):
        monkeypatch.setattr(fd_losses, "PER_CHANNEL_MIN_ELEMENTS", threshold)
        for f in enc + dec:
            f.grad = None
        intra, inter = selfreg_loss([enc, dec], [enc + dec], teacher, torch.Generator().manual_seed(3))
        (intra + 2 * inter).backward()
        return torch.stack([intra, inter]).detach(), [f.grad.clone() for f in enc + dec]

    (v_gather, g_gather), (v_loop, g_loop) = run(10 ** 9), run(1)
    assert torch.allclose(v_gather, v_loop)
    assert all(torch.allclose(a, b) for a, b in zip(g_gather, g_loop))
    assert teacher.grad is None
    x = torch.randn(2, 9, 5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 5, 4, dtype=torch.float64)
    top, bottom = torch.tensor([0, 3, 5, 7]), torch.tensor([1, 2, 8, 6])
    idx_s, idx_t = torch.tensor([2, 4, 0]), torch.tensor([3, 0, 1])
    assert torch.autograd.gradcheck(
        lambda y: sum(fd_losses._PairedChannelMSE.apply(y, top, bottom, idx_s, t, idx_t)), (x,))
