"""What a tuned S2S2 diffusion generator knows about its data (``DiffusionSpec``, saved as ``s2s2_diffusion.json``),
where its folder is, and its error type."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from nnunet_ext.errors import UserError
from nnunet_ext.paths import DATASET_NAME_RE, dataset_id, nnunet_folder

SPEC_FILE = "s2s2_diffusion.json"
GENERATOR_PREFIX = "s2s2_generator"


class DiffusionModelError(UserError):
    """A missing or unusable tuned generator."""


# ------------------------------------------------------------------------------------------------ where
def tuned_folder(dataset_name: str, generator: str, plans: str, configuration: str, fold) -> Path:
    """``$nnUNet_results/DatasetXXX_Name/s2s2_generator__<generator>__<plans>__<configuration>/fold_<fold>/``
    (named like nnU-Net's trainer folders)."""
    return (nnunet_folder("nnUNet_results", DiffusionModelError) / dataset_name
            / f"{GENERATOR_PREFIX}__{generator}__{plans}__{configuration}" / f"fold_{fold}")


def tune_command(dataset_name: str, configuration: str, plans: str, fold, generator: str = "diffusion") -> str:
    ds = dataset_id(dataset_name) if DATASET_NAME_RE.fullmatch(dataset_name) else dataset_name
    plans = f" -p {plans}" if plans != "nnUNetPlans" else ""
    gen = f" --generator {generator}" if generator != "diffusion" else ""
    return f"nnunet-ext s2s2-tune -d {ds} -c {configuration} -f {fold}{plans}{gen}"


@dataclass
class DiffusionSpec:
    """What the model knows about the data (saved as ``s2s2_diffusion.json`` with the training settings)."""
    labels: List[int]
    channels: int
    mean: List[float]
    std: List[float]
    image_size: int = 64
    cond_drop: float = 0.1
    info: dict = field(default_factory=dict)  # training settings and provenance (dataset, fold, steps, ...)
    kind: str = "unet"  # "unet" (MaskDiffusion) or "controlnet" (ControlNetDiffusion)
    fit: str = "pad"  # slice -> model size: "pad" (to a multiple of the stride) or "resize" (to image_size)
    sd_folder: Optional[str] = None  # controlnet: the Stable Diffusion pipeline folder it was tuned on
    prompt: Optional[str] = None  # controlnet: template with {modality} and {classes}
    modality: Optional[str] = None
    class_names: Optional[dict] = None  # controlnet: label value (str) -> name

    @property
    def num_labels(self) -> int:
        return len(self.labels)
