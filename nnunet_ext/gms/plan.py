"""``nnunet-ext plan-gms``: add the ``gms_2d`` configuration to a dataset's nnU-Net plans.

``gms_2d`` inherits nnU-Net's ``2d`` configuration (same spacing, normalisation and preprocessed data, so nothing
is preprocessed twice) with the patch size rounded up to a multiple of 8 (the VAE's down-sampling factor) and
GMS's batch size, 8 (``batch_size``; nnU-Net's 2d plan fills a GPU with many small slices, e.g. 366 for
Hippocampus, which through a VAE encoder and decoder would cost far more than GMS's training; 0 keeps nnU-Net's).

``upsample`` F > 1 (``--upsample``) is for small images, whose latent grid (1/8 of the image per axis) is too coarse:
``gms_2d`` then has nnU-Net's 2d spacing divided by F and the patch size times F (rounded up to a multiple of 8), with
its own preprocessed data (``<plans>_gms_2d``, written by ``nnUNetv2_preprocess``); nnU-Net's export resamples the
predictions back to the images' geometry. GMS itself resizes every image to 224 x 224. Measured: TAESD reconstructs
Hippocampus slices (about 36 x 50) at 18.9 dB PSNR at their size, 24.0 dB at 2x and 28.7 dB at 4x
(``benchmarks/bench_s2s2_latent.py``); the cost of a step grows about with F^2. The
intensity mapping to the VAE's [-1, 1] and the 1 -> 3 channel replication happen in the network
(``nnunet_ext.gms.network``), so the plans stay ordinary nnU-Net plans. Run after nnU-Net's planning of ``2d``;
if the 2d data is not preprocessed yet, nnU-Net's ``nnUNetv2_preprocess`` is run for ``gms_2d``.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from nnunet_ext.atomic_io import write_json_atomic
from nnunet_ext.errors import UserError

GMS_CONFIG = "gms_2d"
GMS_BATCH_SIZE = 8  # GMS's (docs/methods/gms.md)


def plan_gms(dataset, plans: str = "nnUNetPlans", source: str = "2d", name: str = GMS_CONFIG,
             num_processes: int = 2, batch_size: int = GMS_BATCH_SIZE, upsample: float = 1) -> dict:
    from nnunet_ext.paths import nnunet_folder, resolve_dataset_name

    ds = resolve_dataset_name(dataset)
    pre = nnunet_folder("nnUNet_preprocessed") / ds
    plans_file = pre / f"{plans}.json"
    if not plans_file.is_file():
        raise UserError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset} -c {source} first")
    p = json.loads(plans_file.read_text())
    if source not in p["configurations"]:
        raise UserError(f"{plans_file} has no {source!r} configuration: run nnUNetv2_plan_and_preprocess -d {dataset} "
                        f"-c {source} first")
    src = p["configurations"][source]
    if upsample < 1:
        raise UserError(f"--upsample must be at least 1 (1 = nnU-Net's {source} spacing), got {upsample}")
    patch = [int(math.ceil(s * upsample / 8) * 8) for s in src["patch_size"]]
    if batch_size < 0:
        raise UserError(f"--batch-size must be 0 (nnU-Net's {source} plan: {src['batch_size']}) or positive, "
                        f"got {batch_size}")
    cfg = {"inherits_from": source, "patch_size": patch, **({"batch_size": int(batch_size)} if batch_size else {})}
    if upsample > 1:  # finer spacing: its own preprocessed data
        cfg.update(spacing=[float(s) / upsample for s in src["spacing"]], data_identifier=f"{plans}_{name}",
                   median_image_size_in_voxels=[float(v) * upsample for v in src["median_image_size_in_voxels"]])
    p["configurations"][name] = cfg
    write_json_atomic(plans_file, p, indent=4)
    data_dir = pre / cfg.get("data_identifier", src.get("data_identifier", f"{plans}_{source}"))
    if not data_dir.is_dir() or not any(data_dir.glob("*.b2nd")):
        exe = Path(sys.executable).parent / "nnUNetv2_preprocess"
        subprocess.run([str(exe if exe.exists() else "nnUNetv2_preprocess"), "-d", str(dataset), "-plans_name", plans,
                        "-c", name, "-np", str(num_processes)], check=True)
    print(f"plan-gms: {ds} {plans}: configuration {name} (inherits {source}, patch size {patch}, batch size "
          f"{batch_size or src['batch_size']}" + (f", spacing {cfg['spacing']} ({upsample}x finer)" if upsample > 1
                                                 else "") + f", data in {data_dir.name})")
    print(f"next: export nnUNet_ext_vae=/path/to/vae && nnUNetv2_train {dataset} {name} 0 -tr nnUNetTrainerGMS")
    return p["configurations"][name]
