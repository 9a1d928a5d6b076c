"""GMS: the latent mapping model (shape, parameter count), the network around the frozen VAE (logits, state dict
without the VAE, a changed VAE detected), and end to end with the real TAESD weights on the synthetic 2D dataset
(plan-gms, nnUNetv2_train -tr nnUNetTrainerGMS, nnUNetv2_predict, Dice above chance); a missing VAE's error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, foreground_dice_2d, run_cli

from nnunet_ext.core.vae import VAE_ENV, load_vae
from nnunet_ext.gms.mapping import LatentMappingModel
from nnunet_ext.gms.network import GMSDiceLoss, GMSNetwork, VAEChangedError, onehot_foreground

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


@pytest.fixture(scope="module")
def gms_env(dataset2d, nnunet_env):
    if not TAESD.is_dir():
        pytest.skip(f"TAESD weights not found at {TAESD} (../shared is absent)")
    run_cli("nnunet-ext", ["plan-gms", "-d", dataset2d["id"]], nnunet_env)
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
