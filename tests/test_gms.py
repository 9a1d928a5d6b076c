"""GMS: the latent mapping model (shape, parameter count), the network around the frozen VAE (logits, state dict
without the VAE, a changed VAE detected), the fast training path against the plain formulation (same loss and
gradients), and end to end with the real TAESD weights on the synthetic 2D dataset (plan-gms, nnUNetv2_train -tr
nnUNetTrainerGMS, nnUNetv2_predict, Dice above chance); a missing VAE's error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED, foreground_dice_2d, run_cli

from nnunet_ext.core.loss_terms import StepState
from nnunet_ext.core.vae import VAE_ENV, load_vae
from nnunet_ext.gms.mapping import LatentMappingModel, SpatialSelfAttention
from nnunet_ext.gms.losses import heads_soft_dice, latent_mse, onehot_foreground, soft_dice_loss
from nnunet_ext.gms.network import USED_LEVELS, GMSNetwork, VAEChangedError
from nnunet_ext.gms.term import GMSDiceLoss, LatentMSETerm

TAESD = SHARED / "weights" / "taesd"


def test_mapping_model_keeps_size_and_has_the_published_parameter_count():
    m = LatentMappingModel(4, 4, width=32)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 1_564_976
    out = m(torch.randn(2, 4, 12, 20))
    assert set(out) == {"level3", "level2", "level1", "out"}
    assert all(v.shape == (2, 4, 12, 20) for v in out.values()), "no down- or up-sampling"


def _tiny_kl(folder, seed):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=8).save_pretrained(str(folder))
    return load_vae(str(folder))


def test_losses_by_hand():
    """Soft Dice per sample and class, averaged; both parts summed over the heads asked for; half precision
    compared in float32."""
    t = torch.zeros(1, 2, 2, 2)
    t[0, 0, 0] = 1  # class 1: two pixels; class 2: none
    p = torch.full_like(t, 0.5)
    # class 1: 1 - (2 * 1 + eps) / (2 + 2 + eps); class 2: 1 - eps / (2 + eps)
    eps = 1e-5
    expected = ((1 - (2 + eps) / (4 + eps)) + (1 - eps / (2 + eps))) / 2
    assert soft_dice_loss(p, t).item() == pytest.approx(expected, rel=1e-6)
    assert soft_dice_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert heads_soft_dice({"a": p, "b": t, "c": p}, t, ("a", "b")).item() == pytest.approx(expected, rel=1e-6)
    z = torch.zeros(1, 4, 2, 2, dtype=torch.float16)
    lat = {"a": z + 1, "b": z + 2, "c": z + 100}
    value = latent_mse(lat, z, ("a", "b"))
    assert value.dtype == torch.float32 and value.item() == pytest.approx(1 + 4)


def test_network_logits_state_dict_and_changed_vae(tmp_path):
    vae = _tiny_kl(tmp_path / "a", 0)
    net = GMSNetwork(vae, num_classes=3, in_channels=1, width=16)
    keys = list(net.state_dict())
    assert keys and all(k.startswith("mapping.") or k == "_extra_state" for k in keys), "the VAE is not saved"
    assert {id(p) for p in net.parameters()}.isdisjoint({id(p) for p in vae.parameters()}), "VAE out of the optimiser"
    net.eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (2, 3, 16, 16)
    # class k wins where p_k > 0.5 and is the largest; background where no class passes 0.5
    p = torch.tensor([[0.2, 0.3], [0.9, 0.6], [0.55, 0.7]]).T.reshape(1, 2, 3, 1)
    assert GMSNetwork.probs_to_logits(p).argmax(1).flatten().tolist() == [0, 1, 2]
    net.train()
    out = net(x)
    assert set(out["probs"]) == {"out", "level1", "level2"} and out["probs"]["out"].shape == (2, 2, 16, 16)
    target = torch.randint(0, 3, (2, 1, 16, 16))
    loss = GMSDiceLoss(3)(out, target)
    loss.backward()
    assert net.mapping.stem.weight.grad is not None, "gradients reach the mapping model through the frozen decoder"
    assert onehot_foreground(target, 3).shape == (2, 2, 16, 16)
    # a model trained with VAE a refuses VAE b
    other = GMSNetwork(_tiny_kl(tmp_path / "b", 1), num_classes=3, in_channels=1, width=16)
    with pytest.raises(VAEChangedError, match=VAE_ENV):
        other.load_state_dict(net.state_dict())
    GMSNetwork(load_vae(str(tmp_path / "a")), 3, 1, width=16).load_state_dict(net.state_dict())  # same VAE: fine
    # the same folder, its weights file edited in place after training: refused as well
    w = next((tmp_path / "a").glob("*.safetensors"))
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(VAEChangedError, match=VAE_ENV):
        GMSNetwork(load_vae(str(tmp_path / "a")), 3, 1, width=16).load_state_dict(net.state_dict())


def _explicit_attention(self, x):
    """The attention as first written (explicit hw x hw matrix), for comparison with the fused one."""
    b, c, h, w = x.shape
    n = self.norm(x)
    q, k, v = self.q(n).flatten(2).transpose(1, 2), self.k(n).flatten(2), self.v(n).flatten(2)
    attn = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=-1)
    return x + self.proj(torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w))


def _plain_loss(net, x, target, num_classes):
    """GMS's training loss the plain way: the encoder called for the masks and then for the images (posterior
    draw as before), all four heads, one decoder call per head, explicit attention."""
    onehot = onehot_foreground(target, num_classes)
    b, k, h, w = onehot.shape
    with torch.no_grad():
        zm = net.vae.encode((onehot.reshape(b * k, 1, h, w).to(x.dtype) * 2 - 1).expand(-1, 3, -1, -1))
        zm = zm.reshape(b, -1, *zm.shape[2:])
        sample = net.vae.is_kl and bool(torch.rand(()) < net.posterior_p)
        zi = net.vae.encode(net.to_vae_range(x), sample=sample)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SpatialSelfAttention, "forward", _explicit_attention)
        heads = net.mapping(zi)
    return sum(soft_dice_loss(net.decode_masks(heads[lv]), onehot) + F.mse_loss(heads[lv], zm) for lv in USED_LEVELS)


def _fast_loss(net, x, target, num_classes):
    """What nnUNetTrainerGMS's train step computes: the network given the masks (one encoder call), then the loss."""
    out = net(x, onehot_foreground(target, num_classes))
    state = StepState(data=x, target=target, output=out)
    return GMSDiceLoss(num_classes)(out, target) + LatentMSETerm()(state)["latent_mse"].value


def _tiny_taesd_like(folder):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=4).save_pretrained(str(folder))
    return load_vae(str(folder))


@pytest.mark.parametrize("vae_kind", ["tiny", "kl_mean", "kl_sampled"])
def test_fast_training_path_gives_the_same_loss_and_gradients(vae_kind, tmp_path):
    """One batched encoder call (images + masks), the heads decoded in one call, only the used heads, fused
    attention: the loss and every gradient of the mapping model equal those of the plain formulation (AutoencoderTiny;
    AutoencoderKL with the posterior mean and with a posterior sample). In float64, so that the comparison is tight:
    in float32, rounding noise of the other summation order flips a few ReLU / clamp kinks of the decoder, and
    single gradient entries then differ by up to ~1e-4 of the gradient's scale."""
    if vae_kind == "tiny":
        vae, size, num_classes, in_ch, p = _tiny_taesd_like(tmp_path / "tiny"), 32, 2, 3, 0.5
    else:
        vae, size, num_classes, in_ch, p = _tiny_kl(tmp_path / "kl", 0), 16, 3, 1, float(vae_kind == "kl_sampled")
    torch.manual_seed(1)
    net = GMSNetwork(vae, num_classes, in_ch, "zscore", width=16, posterior_p=p)
    net.train().double()  # the VAE too
    x = torch.randn(2, in_ch, size, size, dtype=torch.float64)
    target = torch.randint(0, num_classes, (2, 1, size, size))
    results = []
    for fn in (_plain_loss, _fast_loss):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(2)  # the same posterior draw (kl_sampled) for both
        loss = fn(net, x, target, num_classes)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in net.named_parameters()}))
    (l_plain, g_plain), (l_fast, g_fast) = results
    assert l_fast.dtype == torch.float64
    torch.testing.assert_close(l_fast, l_plain, rtol=1e-10, atol=1e-12)
    assert {n for n, g in g_plain.items() if g is None} == {n for n, g in g_fast.items() if g is None}
    # tolerances relative to the scale of the whole gradient (some true gradients are 0, e.g. of a convolution's bias
    # followed by a per-channel GroupNorm, and come out as rounding noise both ways)
    names = [n for n, g in g_plain.items() if g is not None]
    flat_plain, flat_fast = (torch.cat([g[n].flatten() for n in names]) for g in (g_plain, g_fast))
    scale = float(flat_plain.abs().max())
    for n in names:
        torch.testing.assert_close(g_fast[n], g_plain[n], rtol=1e-7, atol=1e-9 * scale, msg=lambda m: f"{n}: {m}")
    assert float((flat_fast - flat_plain).norm()) <= 1e-9 * float(flat_plain.norm())
    assert g_fast["mapping.stem.weight"].abs().sum() > 0
    # evaluation mode (nnU-Net's validation and prediction): the same logits as from all four heads
    net.eval()
    with torch.no_grad():
        logits = net(x)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(SpatialSelfAttention, "forward", _explicit_attention)
            plain = net.probs_to_logits(net.decode_masks(net.mapping(net.encode_images(x))["out"]))
    torch.testing.assert_close(logits, plain, rtol=1e-9, atol=1e-9)


def test_plan_gms_upsample_preprocesses_a_finer_grid(dataset2d, nnunet_env):
    """plan-gms --upsample 2 --name gms_2d_x2: half nnU-Net's 2d spacing, twice its patch (a multiple of 8), its own
    data preprocessed by nnU-Net at twice the size; gms_2d (used by the other tests) is left alone."""
    import blosc2

    pre = Path(nnunet_env["nnUNet_preprocessed"]) / dataset2d["name"]
    run_cli("nnunet-ext", ["plan-gms", "-d", dataset2d["id"], "--upsample", 2, "--name", "gms_2d_x2"], nnunet_env)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]
    base, up = plans["2d"], plans["gms_2d_x2"]
    assert up["spacing"] == [s / 2 for s in base["spacing"]] and up["batch_size"] == 8
    assert all(u % 8 == 0 and u >= 2 * b for u, b in zip(up["patch_size"], base["patch_size"])), up
    assert up["data_identifier"] == "nnUNetPlans_gms_2d_x2"
    case = sorted((pre / "nnUNetPlans_2d").glob("*.b2nd"))[0].name
    small = blosc2.open(str(pre / "nnUNetPlans_2d" / case), mode="r").shape
    big = blosc2.open(str(pre / "nnUNetPlans_gms_2d_x2" / case), mode="r").shape
    assert big[:2] == small[:2] and all(abs(b - 2 * s) <= 1 for b, s in zip(big[2:], small[2:])), (small, big)


@pytest.fixture(scope="module")
def gms_env(dataset2d, nnunet_env):
    if not TAESD.is_dir():
        pytest.skip(f"TAESD weights not found at {TAESD} (../shared is absent)")
    run_cli("nnunet-ext", ["plan-gms", "-d", dataset2d["id"]], nnunet_env)
    plans = json.loads((Path(nnunet_env["nnUNet_preprocessed"]) / dataset2d["name"] / "nnUNetPlans.json").read_text())
    gms = plans["configurations"]["gms_2d"]
    assert gms["inherits_from"] == "2d" and gms["batch_size"] == 8, gms  # GMS's batch, not nnU-Net's 2d plan
    assert all(s % 8 == 0 for s in gms["patch_size"]), gms
    return dict(nnunet_env, **{VAE_ENV: str(TAESD)})


def test_gms_trains_and_predicts_above_chance(gms_env, dataset2d, nnunet_dirs, tmp_path):
    run_cli("nnUNetv2_train", [dataset2d["id"], "gms_2d", 0, "-tr", "nnUNetTrainerGMS_tiny", "-device", "cpu"], gms_env)
    fold = Path(nnunet_dirs["results"]) / dataset2d["name"] / "nnUNetTrainerGMS_tiny__nnUNetPlans__gms_2d" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert all(k.startswith("mapping.") or k == "_extra_state" for k in ckpt["network_weights"])
    assert ckpt["network_weights"]["_extra_state"]["vae_folder"] == str(TAESD)
    assert all(np.isfinite(ckpt["logging"]["latent_mse"]))
    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", dataset2d["raw"] / "imagesTs", "-o", out, "-d", dataset2d["id"], "-c", "gms_2d",
                                 "-f", 0, "-tr", "nnUNetTrainerGMS_tiny", "-device", "cpu", "--disable_tta",
                                 "-npp", 1, "-nps", 1], gms_env)
    dice, chance = foreground_dice_2d(out, dataset2d["raw"] / "labelsTs")
    assert np.mean(dice) > 3 * np.mean(chance), (dice, chance)


def test_missing_vae_gives_a_clear_error(gms_env, dataset2d):
    env = {k: v for k, v in gms_env.items() if k != VAE_ENV}
    proc = run_cli("nnUNetv2_train", [dataset2d["id"], "gms_2d", 0, "-tr", "nnUNetTrainerGMS_tiny", "-device", "cpu"],
                   env, check=False)
    assert proc.returncode != 0 and VAE_ENV in proc.stdout + proc.stderr
