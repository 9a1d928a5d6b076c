"""``nnunet-ext stego-knn``: the nearest neighbours of every training image or slice, beside the preprocessed data.

For a 2D configuration of a dataset, every image of nnU-Net's preprocessed data (``<data_identifier>/*.b2nd``;
for 3D data every slice along the first axis, the axis nnU-Net's 2d configuration samples) is resized to the
configuration's patch size (rounded up to the backbone stride), put through the frozen backbone, and described by
its spatially average-pooled, L2-normalised features (STEGO). Cosine top-30 neighbours are stored; the trainer
draws the kNN partner of an image from ranks 1..7 (docs/methods/stego.md). Slices of the same volume are ranked
after every slice of the other volumes (they are near-duplicates; ``same_case=True`` turns this off).

Layout, under ``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_stego_knn/<backbone>/``:

* ``descriptors/<case>.npy``: (slices, C) descriptors, written atomically per case, so an interrupted run resumes
  where it stopped;
* ``knn.npz``: ``cases`` (names), ``case_index`` and ``slice`` of every image, ``neighbours`` (N, 30) image
  indices (rank 0 = the image itself), ``descriptors`` (N, C);
* ``knn.json``: backbone, its weights checksum, image size, k and the date.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from nnunet_ext.atomic_io import replace_atomic, write_json_atomic
from nnunet_ext.errors import UserError
from nnunet_ext.stego.backbone import backbone_tag, build_backbone, weights_checksum
from nnunet_ext.stego.knn import pooled_descriptor, top_neighbours

K_NEIGHBOURS = 30


class KNNTableError(UserError):
    """The kNN table is missing, stale or cannot be made."""


def knn_folder(preprocessed_base, data_identifier: str, backbone: str) -> Path:
    return Path(preprocessed_base) / f"{data_identifier}_stego_knn" / backbone_tag(backbone)


def knn_command(dataset_name: str, configuration: str, plans: str, trainer: str) -> str:
    p = f" -p {plans}" if plans != "nnUNetPlans" else ""
    return f"nnunet-ext stego-knn -d {dataset_name} -c {configuration}{p} -tr {trainer}"


def slice_descriptors(backbone, volume: np.ndarray, size, batch_size: int, device) -> np.ndarray:
    """(Z, C) descriptors of the slices of a preprocessed case (channels, Z, Y, X), each resized to ``size``."""
    out = []
    for s in range(0, volume.shape[1], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(volume[:, s:s + batch_size], dtype=np.float32)).transpose(0, 1)
        x = F.interpolate(x.to(device), size=tuple(size), mode="bilinear", align_corners=False)
        out.append(pooled_descriptor(backbone.features(x)).cpu().numpy())
    return np.concatenate(out)


def compute_knn_table(dataset, configuration: str, plans: str = "nnUNetPlans", trainer: str = "nnUNetTrainerSTEGO",
                      batch_size: int = 32, k: int = K_NEIGHBOURS, same_case: bool = False,
                      device: str = "cpu", progress: bool = True) -> Path:
    """Compute (or finish) the kNN table of ``dataset``'s ``configuration`` for the backbone of ``trainer``."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from tqdm import tqdm

    from nnunet_ext.core.intensity import intensity_mode
    from nnunet_ext.paths import PreprocessedConfiguration

    prep = PreprocessedConfiguration(dataset, configuration, plans, KNNTableError)
    name, base, cm, data_dir, cases = prep.name, prep.folder, prep.configuration_manager, prep.data_dir, prep.cases
    if len(cm.patch_size) != 2:
        raise KNNTableError(f"STEGO is a 2D method: use a 2D configuration (e.g. -c 2d), not {configuration!r}")
    try:
        tr_class = recursive_find_trainer_class_by_name(trainer)
    except RuntimeError:
        raise KNNTableError(f"trainer {trainer} not found: set nnUNet_extTrainer=\"$(nnunet-ext trainers-path)\"") \
            from None
    bb_name = getattr(tr_class, "stego_backbone", None)
    if bb_name is None:
        raise KNNTableError(f"{trainer} is not a STEGO trainer (it has no stego_backbone)")
    bb_kwargs = dict(getattr(tr_class, "stego_backbone_kwargs", {}) or {})
    unit = intensity_mode(cm.normalization_schemes) == "unit"
    backbone = build_backbone(bb_name, unit_range=unit, **bb_kwargs).to(device)
    size = [int(math.ceil(p / backbone.stride)) * backbone.stride for p in cm.patch_size]

    out = knn_folder(base, cm.data_identifier, bb_name)
    (out / "descriptors").mkdir(parents=True, exist_ok=True)
    ds = infer_dataset_class(str(data_dir))(str(data_dir), cases)
    todo = [c for c in cases if not (out / "descriptors" / f"{c}.npy").is_file()]
    if len(todo) < len(cases):
        print(f"stego-knn: {len(cases) - len(todo)} of {len(cases)} cases already described, continuing")
    for case in tqdm(todo, desc="stego-knn: backbone descriptors", unit="case", disable=not progress):
        volume = np.asarray(ds.load_case(case)[0][:])
        arr = slice_descriptors(backbone, volume, size, batch_size, device).astype(np.float32)
        replace_atomic(out / "descriptors" / f"{case}.npy", lambda t: np.save(t, arr), suffix=".npy")

    per_case = [np.load(out / "descriptors" / f"{c}.npy") for c in cases]
    case_index = np.concatenate([np.full(len(d), i, dtype=np.int32) for i, d in enumerate(per_case)])
    slices = np.concatenate([np.arange(len(d), dtype=np.int32) for d in per_case])
    desc = torch.from_numpy(np.concatenate(per_case))
    neighbours = top_neighbours(desc, k + 1, groups=None if same_case else torch.from_numpy(case_index))
    replace_atomic(out / "knn.npz", lambda t: np.savez(t, cases=np.array(cases), case_index=case_index, slice=slices,
                                                       neighbours=neighbours.numpy().astype(np.int32),
                                                       descriptors=desc.numpy()), suffix=".npz")
    meta = {"dataset": name, "configuration": configuration, "plans": plans, "trainer": trainer,
            "backbone": bb_name, "backbone_kwargs": bb_kwargs, "backbone_checksum": weights_checksum(),
            "image_size": size, "k": int(neighbours.shape[1]) - 1, "images": int(len(slices)),
            "same_case": same_case, "date": _dt.datetime.now().isoformat(timespec="seconds")}
    write_json_atomic(out / "knn.json", meta)
    print(f"stego-knn: {len(slices)} images of {len(cases)} cases, top {meta['k']} neighbours -> {out}")
    return out


def load_knn_table(folder: Path, fix: str, checksum: Optional[str] = None) -> dict:
    """The table in ``folder`` as numpy arrays; a missing or stale table names the command that makes it."""
    if not (folder / "knn.npz").is_file():
        raise KNNTableError(f"no kNN table in {folder}: make it with {fix}")
    meta = json.loads((folder / "knn.json").read_text()) if (folder / "knn.json").is_file() else {}
    if checksum and meta.get("backbone_checksum") not in (None, checksum):
        raise KNNTableError(f"the kNN table in {folder} was made with other backbone weights: remake it with {fix} "
                            f"after deleting {folder}")
    with np.load(folder / "knn.npz") as z:
        table = {key: z[key] for key in z.files}
    table["meta"] = meta
    return table
