"""Medical Segmentation Decathlon (MSD) tasks.

Two converters:

``msd``
    The original MSD ``TaskXX_Name`` folder (``imagesTr``, ``labelsTr``, ``imagesTs``, ``dataset.json``,
    4D NIfTI for multi-modal tasks). Delegates to nnU-Net's own ``convert_msd_dataset``
    (``nnUNetv2_convert_MSD_dataset``) and adds only the shared guarantees: a target id/name of your
    choice, overwrite protection, atomic write and the integrity check.

``msd_flat``
    A flat copy of an MSD task with ``images/<case>.nii.gz`` and ``labels/<case>.nii.gz`` (same file
    names; optional MSD ``dataset.json`` next to them), such as ``shared/data/msd_hippocampus``.
    Images are split into channels with nnU-Net's ``split_4d_nifti`` (3D images are copied as
    ``<case>_0000.nii.gz``), labels are copied byte for byte, so spacing, origin and direction are
    kept exactly. Channel and label names come from the options, else from the MSD ``dataset.json``,
    else the Hippocampus defaults (channel ``MRI``; labels background, Anterior, Posterior).
    MSD publishes no labelled test set, so every case goes to imagesTr and no split is written.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import SourceLayoutError
from .layout import list_files, require_dir
from .target import atomic_folder

HIPPOCAMPUS_CHANNELS = {"0": "MRI"}
HIPPOCAMPUS_LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}
_NAME = "msd_flat"


def _read_msd_json(source: str) -> dict:
    path = os.path.join(source, "dataset.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        dj = json.load(f)
    out = {}
    channels = dj.get("modality", dj.get("channel_names"))
    if isinstance(channels, dict):
        out["channel_names"] = {str(k): str(v) for k, v in channels.items()}
    labels = dj.get("labels")
    if isinstance(labels, dict) and labels:
        if all(str(k).isdigit() for k in labels):  # MSD style {"0": "background", ...}
            out["labels"] = {str(v): int(k) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}
        else:  # nnU-Net v2 style {"background": 0, ...}
            out["labels"] = {str(k): int(v) for k, v in labels.items()}
    for key in ("name", "description", "reference", "licence", "license", "release", "tensorImageSize"):
        if key in dj:
            out[key] = dj[key]
    return out


def _write_flat_case(case: Case, images_dir: str, labels_dir: str) -> List[int]:
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti
    image, label = case.source
    split_4d_nifti(image, images_dir)  # writes <case>_0000.nii.gz (and _0001... for 4D images)
    shutil.copyfile(label, os.path.join(labels_dir, case.case_id + ".nii.gz"))
    return [int(v) for v in np.unique(sitk.GetArrayFromImage(sitk.ReadImage(label)))]


def convert_msd_flat(source: str, dataset_id: int, name: str = "Hippocampus", raw_root: Optional[str] = None,
                     overwrite: bool = False, num_processes: int = 2,
                     channel_names: Optional[Sequence[str]] = None, label_names: Optional[Sequence[str]] = None,
                     max_cases: Optional[int] = None, verify: bool = True) -> str:
    """Convert a flat MSD copy (``images/*.nii.gz`` + ``labels/*.nii.gz``) to ``DatasetXXX_<name>``.

    ``channel_names``: one name per image channel (e.g. ``["MRI"]``); ``label_names``: names for label
    values 0, 1, 2, ... in order. Both default to the MSD ``dataset.json`` in ``source`` if present,
    else to the Hippocampus values. ``max_cases`` converts only the first N cases (sorted by name).
    Returns the written dataset folder.
    """
    images_dir = os.path.join(source, "images")
    labels_dir = os.path.join(source, "labels")
    expected_img = "a folder 'images' with one <case>.nii.gz per case"
    expected_lab = "a folder 'labels' with <case>.nii.gz files named like the images"
    images = list_files(_NAME, images_dir, [".nii.gz"], expected_img)
    labels = set(list_files(_NAME, labels_dir, [".nii.gz"], expected_lab))
    missing = [f for f in images if f not in labels]
    if missing:
        raise SourceLayoutError(_NAME, expected_lab, f"no label for image {missing[0]!r} "
                                f"({len(missing)} images without label)", os.path.join(images_dir, missing[0]))
    orphans = sorted(labels - set(images))
    if orphans:
        raise SourceLayoutError(_NAME, expected_img, f"no image for label {orphans[0]!r} "
                                f"({len(orphans)} labels without image)", os.path.join(labels_dir, orphans[0]))
    if max_cases is not None:
        images = images[:max_cases]

    meta = _read_msd_json(source)
    channels = ({str(i): n for i, n in enumerate(channel_names)} if channel_names
                else meta.get("channel_names", dict(HIPPOCAMPUS_CHANNELS)))
    labels_map = ({n: i for i, n in enumerate(label_names)} if label_names
                  else meta.get("labels", dict(HIPPOCAMPUS_LABELS)))
    if sorted(labels_map.values()) != list(range(len(labels_map))):
        raise ValueError(f"{_NAME}: label values must be consecutive 0..K, got {labels_map}")

    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])
    cases = [Case(f[:-7], (os.path.join(images_dir, f), os.path.join(labels_dir, f))) for f in images]
    info = DatasetInfo(channel_names=channels, labels=labels_map, file_ending=".nii.gz", name=name,
                       description=meta.get("description", f"MSD task converted from a flat copy of {source}"),
                       reference=meta.get("reference", "Medical Segmentation Decathlon, http://medicaldecathlon.com"),
                       licence=meta.get("licence", meta.get("license", "CC-BY-SA 4.0 (MSD)")))
    return build_dataset(_NAME, target, cases, _write_flat_case, info, None, num_processes, overwrite, verify)


def convert_msd(source: str, dataset_id: Optional[int] = None, name: Optional[str] = None,
                raw_root: Optional[str] = None, overwrite: bool = False, num_processes: int = 2,
                verify: bool = True) -> str:
    """Convert an original MSD ``TaskXX_Name`` folder with nnU-Net's ``convert_msd_dataset``.

    ``dataset_id`` defaults to the task number, ``name`` to the task name. The nnU-Net function
    writes into ``$nnUNet_raw`` and checks ids itself; here it is pointed at a temporary folder next
    to the target (this converter has already checked the target id in ``raw_root``), and the result
    is validated and moved into place. Returns the written dataset folder.
    """
    import nnunetv2.dataset_conversion.convert_MSD_dataset as msd_mod

    source = os.path.abspath(source.rstrip("/\\"))
    base = os.path.basename(source)
    expected = "an MSD task folder named TaskXX_Name with imagesTr/, labelsTr/, imagesTs/ and dataset.json"
    parts = base.split("_")
    if len(parts) != 2 or not parts[0].startswith("Task") or not parts[0][4:].isdigit():
        raise SourceLayoutError("msd", expected, f"a folder named {base!r}", source)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        require_dir("msd", os.path.join(source, sub), expected)
    if not os.path.isfile(os.path.join(source, "dataset.json")):
        raise SourceLayoutError("msd", expected, "no dataset.json", source)
    task_id = int(parts[0][4:])
    dataset_id = task_id if dataset_id is None else dataset_id
    name = name or parts[1]
    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])

    with atomic_folder(target, overwrite) as tmp:
        saved = msd_mod.nnUNet_raw, msd_mod.find_candidate_datasets
        msd_mod.nnUNet_raw, msd_mod.find_candidate_datasets = tmp, (lambda *_a, **_k: [])
        try:
            msd_mod.convert_msd_dataset(source, overwrite_target_id=dataset_id, num_processes=num_processes)
        finally:
            msd_mod.nnUNet_raw, msd_mod.find_candidate_datasets = saved
        produced = os.path.join(tmp, f"Dataset{dataset_id:03d}_{parts[1]}")
        for entry in os.listdir(produced):
            os.rename(os.path.join(produced, entry), os.path.join(tmp, entry))
        os.rmdir(produced)
        from .verify import count_cases, verify_output
        counts = verify_output(tmp, num_processes) if verify else count_cases(tmp)
    print(f"msd: wrote {target} ({', '.join(f'{k}={v}' for k, v in counts.items())})")
    return target


def _add_flat_args(p):
    p.add_argument("--channel-names", nargs="+", default=None, metavar="NAME",
                   help="one name per image channel (default: from the MSD dataset.json, else MRI)")
    p.add_argument("--label-names", nargs="+", default=None, metavar="NAME",
                   help="names of label values 0,1,2,... "
                        "(default: from dataset.json, else background Anterior Posterior)")
    p.add_argument("--max-cases", type=int, default=None, metavar="N", help="convert only the first N cases")


def _run_flat(args) -> str:
    return convert_msd_flat(args.source, args.id, args.name or "Hippocampus", channel_names=args.channel_names,
                            label_names=args.label_names, max_cases=args.max_cases, **common_kwargs(args))


def _run_msd(args) -> str:
    return convert_msd(args.source, args.id, args.name, **common_kwargs(args))


MSD_FLAT = Converter("msd_flat", "flat MSD copy (images/*.nii.gz + labels/*.nii.gz), e.g. Hippocampus",
                     _add_flat_args, _run_flat)
MSD = Converter("msd", "original MSD TaskXX_Name folder (delegates to nnU-Net's convert_msd_dataset)",
                None, _run_msd)
