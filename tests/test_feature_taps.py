"""Feature taps on nnU-Net's architectures: outputs unchanged, right tensors, DS on/off, compile, DDP."""
import os
import tempfile

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_ext.core.feature_taps import FeatureTaps, UntappableNetworkError, stage_block_names, tap_points


def make_net(arch: str, dim: int, deep_supervision: bool, n_stages: int = 4, in_ch: int = 2, classes: int = 3):
    torch.manual_seed(0)
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    feats = [8, 16, 24, 32, 40][:n_stages]
    common = dict(input_channels=in_ch, n_stages=n_stages, features_per_stage=feats, conv_op=conv,
                  kernel_sizes=[3] * n_stages, strides=[1] + [2] * (n_stages - 1), num_classes=classes,
                  n_conv_per_stage_decoder=[2] * (n_stages - 1), conv_bias=True, norm_op=norm,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                  deep_supervision=deep_supervision)
    if arch == "plain":
        return PlainConvUNet(n_conv_per_stage=[2] * n_stages, **common)
    return ResidualEncoderUNet(n_blocks_per_stage=[1, 3, 4, 6, 6][:n_stages], **common)


def sample(dim: int, in_ch: int = 2):
    torch.manual_seed(1)
    return torch.randn(2, in_ch, *((16, 24, 16) if dim == 3 else (32, 48)))


def _all_hooks(net):
    return sum(len(m._forward_hooks) for m in net.modules())


CASES = [(a, d, ds) for a in ("plain", "resenc") for d in (2, 3) for ds in (True, False)]


@pytest.mark.parametrize("arch,dim,ds", CASES)
def test_taps_keep_outputs_and_return_the_right_features(arch, dim, ds):
    net = make_net(arch, dim, ds).eval()
    x = sample(dim)
    with torch.no_grad():
        ref = net(x)
        skips = net.encoder(x)
    names = list(tap_points(net))
    taps = FeatureTaps(net, names)
    out = net(x)  # with autograd on, as in a training step
    feats = {k: v.detach() for k, v in taps.pop().items()}
    out = [o.detach() for o in out] if ds else out.detach()
    ref_l, out_l = (ref, out) if ds else ([ref], [out])
    assert len(ref_l) == len(out_l)
    for r, o in zip(ref_l, out_l):
        assert torch.equal(r, o)
    assert set(feats) == set(names)
    for i, s in enumerate(skips):
        assert torch.equal(feats[f"encoder.{i}"], s)
        assert torch.equal(feats[f"encoder.{i}.last"], s)
        assert feats[f"encoder.{i}.first"].shape == s.shape  # first block already has the stage's width/stride
    final = feats["decoder.final"]
    assert final.shape[1] == net.encoder.output_channels[0] and final.shape[2:] == x.shape[2:]
    # the segmentation head applied to the tapped final feature reproduces the network output
    head = net.decoder.seg_layers[-1]
    with torch.no_grad():
        assert torch.allclose(head(final), out_l[0], atol=1e-6)
    assert taps.pop() == {}  # popped: empty until the next forward
    taps.remove()
    assert _all_hooks(net) == 0


@pytest.mark.parametrize("arch", ["plain", "resenc"])
def test_stage_block_names_cover_first_and_last_block_of_every_stage(arch):
    net = make_net(arch, 2, True)
    names = stage_block_names(net)
    n_enc, n_dec = len(net.encoder.stages), len(net.decoder.stages)
    for i in range(n_dec):
        assert f"decoder.{i}.first" in names and f"decoder.{i}.last" in names
    for i in range(n_enc):
        assert f"encoder.{i}.last" in names
    if arch == "resenc":  # stage 0 has one residual block: first is last, listed once
        assert "encoder.0.first" not in names
        assert "encoder.1.first" in names
    else:
        assert len(names) == 2 * (n_enc + n_dec)


def test_no_requested_feature_registers_no_hook():
    net = make_net("plain", 3, True)
    taps = FeatureTaps(net, [])
    assert not taps and _all_hooks(net) == 0
    net(sample(3))
    assert taps.pop() == {}


def test_only_requested_modules_are_hooked():
    net = make_net("plain", 2, True)
    FeatureTaps(net, ["decoder.final", "decoder.2.last"])  # the same module: one hook
    assert _all_hooks(net) == 1


def test_unknown_tap_and_untappable_architecture_give_clear_errors():
    net = make_net("plain", 2, False)
    with pytest.raises(KeyError, match="encoder.99.last"):
        FeatureTaps(net, ["encoder.99.last"])
    with pytest.raises(UntappableNetworkError, match="Sequential"):
        FeatureTaps(nn.Sequential(nn.Conv2d(1, 1, 3)), ["decoder.final"])


def test_tapped_features_carry_gradients():
    net = make_net("resenc", 3, True).train()
    taps = FeatureTaps(net, ["encoder.1.first", "decoder.final"])
    net(sample(3))
    feats = taps.pop()
    feats["encoder.1.first"].pow(2).mean().backward()  # only the tapped feature enters the loss
    assert net.encoder.stages[1].blocks[0].conv1.conv.weight.grad.abs().sum() > 0
    assert net.decoder.stages[0].convs[0].conv.weight.grad is None  # after the tap: untouched


def test_hooks_store_nothing_without_autograd():
    net = make_net("plain", 2, True)
    taps = FeatureTaps(net, ["encoder.0.first", "decoder.final"])
    with torch.no_grad():
        net(sample(2))
    assert taps.pop() == {}
    with torch.inference_mode():
        net(sample(2))
    assert taps.pop() == {}
    net(sample(2))
    assert set(taps.pop()) == {"encoder.0.first", "decoder.final"}


def test_taps_under_torch_compile():
    import torch._dynamo

    net = make_net("plain", 2, True).train()
    x = sample(2)
    eager_taps = FeatureTaps(net, ["encoder.3.last", "decoder.final"])
    net(x)
    eager = eager_taps.pop()
    eager_taps.remove()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(net, backend="aot_eager")
    taps = FeatureTaps(compiled, ["encoder.3.last", "decoder.final"])  # after compile, before first call
    for _ in range(3):  # later calls reuse the compiled graph with the same (cleared) store
        compiled(x)
        feats = taps.pop()
        assert set(feats) == {"encoder.3.last", "decoder.final"}
        for k in feats:
            assert torch.allclose(feats[k], eager[k], atol=1e-5)
        with torch.no_grad():  # a validation step in between must not force recompiles of the train graph
            compiled(x)
        assert taps.pop() == {}
    # one graph for training, one for no_grad: like an untapped network
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2
    assert not torch._dynamo.utils.counters["graph_break"]
    feats["encoder.3.last"].mean().backward()
    assert net.encoder.stages[3][0].convs[0].conv.weight.grad.abs().sum() > 0
    dec_grad = net.decoder.stages[-1].convs[0].conv.weight.grad  # compiled graphs may return zeros
    assert dec_grad is None or dec_grad.abs().sum() == 0


def test_taps_under_ddp():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(d, 'pg')}", rank=0, world_size=1)
        try:
            net = DDP(make_net("plain", 3, True).train())
            taps = FeatureTaps(net, ["encoder.1.first", "decoder.final"])
            out = net(sample(3))
            feats = taps.pop()
            (out[0].mean() + feats["encoder.1.first"].pow(2).mean()).backward()
            assert net.module.encoder.stages[1][0].convs[0].conv.weight.grad is not None
        finally:
            dist.destroy_process_group()
