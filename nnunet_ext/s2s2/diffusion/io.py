"""The folder of a tuned S2S2 diffusion generator: each diffusers part saved with ``save_pretrained`` and swapped in
atomically, then ``s2s2_diffusion.json`` (the spec, with the weights' checksum) last; reading the spec back; the
parts of a local Stable Diffusion pipeline folder (nothing is downloaded)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from nnunet_ext.atomic_io import replace_folder_atomic, write_json_atomic
from nnunet_ext.s2s2.diffusion.spec import SPEC_FILE, DiffusionModelError, DiffusionSpec


def weights_checksum(unet_folder) -> str:
    """sha256 (16 hex digits) of the weight files in a ``save_pretrained`` folder."""
    h = hashlib.sha256()
    for f in sorted(Path(unet_folder).iterdir()):
        if f.suffix in (".safetensors", ".bin"):
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]



def read_spec(folder) -> DiffusionSpec:
    folder = Path(folder)
    if not (folder / SPEC_FILE).is_file():
        raise DiffusionModelError(f"no tuned S2S2 generator in {folder} ({SPEC_FILE} missing)")
    return DiffusionSpec(**json.loads((folder / SPEC_FILE).read_text()))



def save_parts(folder, parts: dict, spec: DiffusionSpec, info: Optional[dict], weights: str) -> None:
    """``save_pretrained`` of each part into ``folder/<name>/`` (each swapped in atomically), then the spec json
    (with ``info`` and the checksum of ``weights``'s files) atomically, last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, obj in parts.items():
        replace_folder_atomic(folder / name, lambda tmp, obj=obj: obj.save_pretrained(tmp))
    d = asdict(spec)
    d["info"] = {**d.get("info", {}), **(info or {}), "weights_sha256": weights_checksum(folder / weights)}
    write_json_atomic(folder / SPEC_FILE, d)



def load_sd(sd_folder) -> dict:
    """vae, text_encoder, tokenizer, unet, scheduler (as DDPM) of a local Stable Diffusion pipeline folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = Path(sd_folder) if sd_folder else None
    need = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    if folder is None or not (folder / "model_index.json").is_file() or \
            not all((folder / n).is_dir() for n in need):
        raise DiffusionModelError(f"{sd_folder}: not a local Stable Diffusion pipeline folder (model_index.json and "
                                  f"{', '.join(n + '/' for n in need)}; nothing is downloaded)")
    try:
        from transformers import AutoTokenizer, CLIPTextModel
    except ImportError as e:
        raise DiffusionModelError(f"the ControlNet generator needs transformers (pip install transformers): {e}")
    return {"vae": AutoencoderKL.from_pretrained(str(folder / "vae"), low_cpu_mem_usage=False),
            "text_encoder": CLIPTextModel.from_pretrained(str(folder / "text_encoder")),
            "tokenizer": AutoTokenizer.from_pretrained(str(folder / "tokenizer")),
            "unet": UNet2DConditionModel.from_pretrained(str(folder / "unet"), low_cpu_mem_usage=False),
            "scheduler": DDPMScheduler.from_pretrained(str(folder / "scheduler"))}
