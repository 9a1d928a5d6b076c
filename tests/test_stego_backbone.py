"""STEGO backbones: a tiny timm ViT saved by the test and loaded through the registry (patch features as a map,
frozen), TAESD's encoder from ../shared (skipped without it), errors that name nnUNet_ext_backbone."""
from __future__ import annotations

import pytest
import torch

from conftest import SHARED

from nnunet_ext.stego.backbone import BACKBONE_ENV, BackboneError, build_backbone

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def _save_tiny_vit(path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, dynamic_img_size=True, **TINY)
    save_file(m.state_dict(), str(path))


def test_tiny_vit_from_a_local_file_gives_patch_feature_maps(tmp_path, monkeypatch):
    _save_tiny_vit(tmp_path / "vit.safetensors")
    monkeypatch.setenv(BACKBONE_ENV, str(tmp_path / "vit.safetensors"))
    bb = build_backbone("dino_vits8", **TINY)
    assert bb.stride == 8 and bb.channels == 32
    assert not any(p.requires_grad for p in bb.parameters())
    f = bb.features(torch.randn(2, 1, 48, 64))  # any multiple of the stride (dynamic image size)
    assert f.shape == (2, 32, 6, 8)
    with pytest.raises(BackboneError, match="multiple of the backbone stride"):
        bb.features(torch.randn(1, 1, 50, 64))
    # a file with other weights is refused with the setting named
    torch.save({"model": {"foo": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(BackboneError, match=BACKBONE_ENV):
        build_backbone("timm:vit_small_patch8_224", str(tmp_path / "other.pth"), **TINY)


def test_errors_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(BACKBONE_ENV, raising=False)
    with pytest.raises(BackboneError, match=BACKBONE_ENV):
        build_backbone("dino_vits8")
    with pytest.raises(BackboneError, match="does not exist"):
        build_backbone("dino_vits8", str(tmp_path / "missing.pth"))
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("resnet_from_nowhere", str(tmp_path / "w.pth"))


@pytest.mark.skipif(not (SHARED / "weights" / "taesd").is_dir(), reason="TAESD weights not found (../shared absent)")
def test_taesd_encoder_backbone():
    bb = build_backbone("taesd", str(SHARED / "weights" / "taesd"))
    assert bb.stride == 8 and bb.channels == 4
    assert bb.features(torch.randn(1, 1, 64, 32)).shape == (1, 4, 8, 4)
