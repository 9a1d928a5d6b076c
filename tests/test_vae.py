"""The frozen-VAE loader (nnunet_ext.core.vae): a tiny AutoencoderKL saved and loaded through the real code,
TAESD's real weights from ../shared (skipped without them), errors that name nnUNet_ext_vae, the checksum."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED

from nnunet_ext.core.vae import VAE_ENV, VAENotFoundError, checksum, load_vae

TAESD = SHARED / "weights" / "taesd"


def _tiny_kl(folder):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    m = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                      latent_channels=4, norm_num_groups=8, scaling_factor=0.18215)
    m.save_pretrained(str(folder))
    return m


def test_tiny_autoencoderkl_round_trip_frozen(tmp_path, monkeypatch):
    ref = _tiny_kl(tmp_path / "vae")
    monkeypatch.setenv(VAE_ENV, str(tmp_path / "vae"))
    vae = load_vae()
    assert vae.is_kl and vae.scaling_factor == pytest.approx(0.18215) and vae.downsampling == 2
    assert not any(p.requires_grad for p in vae.parameters())
    vae.train()
    assert not vae.model.training, "the VAE stays in eval mode"
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, 8, 8)
    with torch.no_grad():
        mean = ref.encode(x).latent_dist.mean
    torch.testing.assert_close(z, mean * 0.18215)  # the posterior mean, scaled
    assert vae.decode(z).shape == x.shape
    # a Stable Diffusion pipeline folder: its vae/ sub-folder
    assert load_vae(str(tmp_path)).is_kl


def test_tiny_autoencodertiny_saved_and_loaded(tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=4).save_pretrained(str(tmp_path / "tiny"))
    vae = load_vae(str(tmp_path / "tiny"))
    assert not vae.is_kl and vae.kind == "diffusers"
    z = vae.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert z.shape == (1, 4, 4, 4) and vae.decode(z).shape == (1, 3, 32, 32)


def test_errors_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(VAE_ENV, raising=False)
    with pytest.raises(VAENotFoundError, match=VAE_ENV):
        load_vae()
    monkeypatch.setenv(VAE_ENV, str(tmp_path / "missing"))
    with pytest.raises(VAENotFoundError, match=f"{VAE_ENV}.*not a folder"):
        load_vae()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(VAE_ENV, str(tmp_path / "empty"))
    with pytest.raises(VAENotFoundError, match="holds no VAE"):
        load_vae()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"_class_name": "AutoencoderKL", "latent_channels": 4}')
    monkeypatch.setenv(VAE_ENV, str(bad))
    with pytest.raises(VAENotFoundError, match="cannot load the VAE"):
        load_vae()


def test_checksum_changes_with_the_weights(tmp_path):
    _tiny_kl(tmp_path / "vae")
    c1 = checksum(tmp_path / "vae")
    assert c1 == checksum(tmp_path / "vae")
    w = next((tmp_path / "vae").glob("*.safetensors"))
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    assert checksum(tmp_path / "vae") != c1


def test_checksum_of_a_pipeline_folder_covers_its_vae_only(tmp_path):
    """A Stable Diffusion pipeline folder: load_vae uses vae/, and only vae/'s files name the VAE (other weights in
    the folder neither count as a change nor get hashed)."""
    sd = tmp_path / "sd"
    _tiny_kl(sd / "vae")
    (sd / "unet").mkdir()
    (sd / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"0" * 1000)
    (sd / "model_index.json").write_text("{}")
    assert load_vae(str(sd)).is_kl
    c1 = checksum(sd)
    (sd / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"1" * 1000)
    (sd / "extra.safetensors").write_bytes(b"x")
    assert checksum(sd) == c1
    w = next((sd / "vae").glob("*.safetensors"))
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    assert checksum(sd) != c1


KVASIR_IMAGES = SHARED / "data" / "kvasir_seg_256" / "images"


@pytest.mark.skipif(not (TAESD.is_dir() and KVASIR_IMAGES.is_dir()),
                    reason=f"TAESD weights ({TAESD}) or Kvasir-SEG images ({KVASIR_IMAGES}) not found (../shared)")
def test_real_taesd_round_trip_on_a_real_image():
    from PIL import Image

    vae = load_vae(str(TAESD))
    path = sorted(KVASIR_IMAGES.glob("*.jpg"))[0]
    img = np.asarray(Image.open(path).convert("RGB").resize((256, 256)), dtype=np.float32) / 127.5 - 1
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    with torch.no_grad():
        rec = vae.decode(vae.encode(x))
    assert rec.shape == x.shape

    def psnr(r):
        return 10 * np.log10(4.0 / float(((r.clamp(-1, 1) - x) ** 2).mean()))

    pooled = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 8), scale_factor=8, mode="bilinear")
    assert psnr(rec) > 20, f"TAESD should reconstruct the endoscopy image {path.name} (PSNR {psnr(rec):.1f} dB)"
    assert psnr(rec) > psnr(pooled), "the latent (1/8 size) should keep more than an 8x average-pooled image"


@pytest.mark.skipif(not TAESD.is_dir(), reason=f"TAESD weights not found at {TAESD} (../shared is absent)")
def test_real_taesd_weights_load_strictly_and_reconstruct():
    vae = load_vae(str(TAESD))
    assert vae.kind == "taesd" and vae.latent_channels == 4 and vae.downsampling == 8
    yy, xx = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    img = np.stack([np.tanh(3 * (0.5 - np.hypot(yy, xx))), yy * 0.8, xx * 0.8]).astype(np.float32)
    x = torch.from_numpy(img)[None]
    with torch.no_grad():
        z = vae.encode(x)
        rec = vae.decode(z)
    assert z.shape == (1, 4, 8, 8)
    psnr = 10 * np.log10(4.0 / float(((rec.clamp(-1, 1) - x) ** 2).mean()))
    assert psnr > 20, f"real TAESD weights should reconstruct a smooth image (PSNR {psnr:.1f} dB)"
