"""The networks of the S2S2 diffusion generator and what feeds them: the ``UNet2DModel`` (built, or loaded for
``--init``), the one-hot condition of ``MaskDiffusion`` and the colour condition of ``ControlNetDiffusion``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from nnunet_ext.s2s2.diffusion.spec import DiffusionModelError

#: label colours of the ControlNet condition (RGB in [0, 1]): no label (-1) black, background dark grey, then
#: matplotlib's tab10 / tab20 colours, by the label's index in ``spec.labels``
PALETTE = [(0.25, 0.25, 0.25), (0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
           (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
           (0.68, 0.78, 0.91), (1.0, 0.73, 0.47), (0.6, 0.87, 0.54), (1.0, 0.6, 0.59), (0.77, 0.69, 0.84),
           (0.77, 0.61, 0.58), (0.97, 0.71, 0.82), (0.86, 0.86, 0.55), (0.62, 0.85, 0.9), (1.0, 1.0, 1.0)]


def one_hot(seg: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """``(B, H, W)`` integer label map -> ``(B, L, H, W)`` float one-hot; a value not in ``labels`` (-1: outside
    nnU-Net's nonzero mask, padding) is all zeros."""
    lab = torch.as_tensor(list(labels), device=seg.device, dtype=seg.dtype).view(1, -1, 1, 1)
    return (seg.unsqueeze(1) == lab).float()


def build_unet(channels: int, num_labels: int, image_size: int, block_channels: Sequence[int] = (64, 128, 256),
               layers_per_block: int = 2, mid_attention: bool = True):
    """A ``UNet2DModel``: input C + L channels (noisy image + one-hot labels), output C (the noise)."""
    from diffusers import UNet2DModel

    block_channels = tuple(int(c) for c in block_channels)
    groups = max(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in block_channels))
    n = len(block_channels)
    return UNet2DModel(sample_size=image_size, in_channels=channels + num_labels, out_channels=channels,
                       block_out_channels=block_channels, layers_per_block=layers_per_block,
                       down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                       norm_num_groups=groups, add_attention=mid_attention,
                       attention_head_dim=min(8, block_channels[-1]))


def size_multiple(unet) -> int:
    return 2 ** (len(unet.config.block_out_channels) - 1)



def unet_size(unet) -> int:
    return sum(p.numel() for p in unet.parameters())


def describe(unet) -> str:
    cfg = unet.config
    return (f"UNet2DModel {unet_size(unet) / 1e6:.2f} M parameters, channels {list(cfg.block_out_channels)}, "
            f"{cfg.layers_per_block} layer(s) per block, mid attention {'on' if cfg.add_attention else 'off'}")



def autocast(device: torch.device):
    """Mixed precision on CUDA (bf16 where supported, else fp16); float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.autocast(device.type, enabled=False)



def palette_image(seg: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """``(B, H, W)`` label map -> ``(B, 3, H, W)`` colour image in [0, 1] (``PALETTE``; -1 and unknown: black;
    labels beyond the palette's 20 colours reuse it cyclically)."""
    out = torch.zeros((seg.shape[0], 3, *seg.shape[1:]), device=seg.device)
    for i, v in enumerate(labels):
        col = torch.tensor(PALETTE[i % len(PALETTE)], device=seg.device).view(1, 3, 1, 1)
        out = torch.where((seg == v).unsqueeze(1), col, out)
    return out



def load_init_unet(path, channels: int, num_labels: int):
    """``--init PATH``: a ``UNet2DModel`` saved with ``save_pretrained`` (``PATH`` itself, or ``PATH/unet``, e.g. a
    tuned S2S2 generator of another dataset); it must take C + L input channels and give C."""
    from diffusers import UNet2DModel

    path = Path(path)
    for cand in (path, path / "unet"):
        cfg = cand / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "UNet2DModel":
            unet = UNet2DModel.from_pretrained(str(cand), low_cpu_mem_usage=False)
            want = (channels + num_labels, channels)
            got = (unet.config.in_channels, unet.config.out_channels)
            if got != want:
                raise DiffusionModelError(f"--init {path}: the UNet2DModel takes {got[0]} and gives {got[1]} channels; "
                                          f"this dataset needs {want[0]} (image {channels} + labels {num_labels}) "
                                          f"and {want[1]}")
            return unet
    if (path / "model_index.json").is_file():
        raise DiffusionModelError(f"--init {path} is a diffusers pipeline folder (Stable Diffusion?): tune a "
                                  f"ControlNet on it with --generator controlnet --init {path}")
    raise DiffusionModelError(f"--init {path}: no diffusers UNet2DModel there (config.json with _class_name "
                              f"UNet2DModel, in the folder or its unet/ sub-folder)")
