"""Medical Segmentation Decathlon (MSD) tasks.

Two converters:

``msd``
    The original MSD ``TaskXX_Name`` folder (``imagesTr``, ``labelsTr``, ``imagesTs``, ``dataset.json``,
    4D NIfTI for multi-modal tasks). Delegates to nnU-Net's own ``convert_msd_dataset``
    (``nnUNetv2_convert_MSD_dataset``) and adds only the shared guarantees: a target id/name of your
    choice, overwrite protection, atomic write and the integrity check. MSD publishes no test labels:
    ``--test-fraction F`` / ``--test-cases N`` (``--test-seed S``) hold out labelled training cases as the
    test set, chosen as for ``msd_flat`` below; they move from imagesTr/labelsTr to imagesTs/labelsTs,
    and MSD's own unlabelled test images then go to ``imagesUnlabeled`` (so that imagesTs and labelsTs hold
    the same cases, for ``nnUNetv2_predict -i imagesTs`` and ``nnunet-ext evaluate -gt labelsTs``).
    Without these options the layout is nnU-Net's: imagesTs holds MSD's unlabelled test images.

``msd_flat``
    A flat copy of an MSD task with ``images/<case>.nii.gz`` and ``labels/<case>.nii.gz`` (same file
    names; optional MSD ``dataset.json`` next to them), such as ``shared/data/msd_hippocampus``.
    Images are split into channels with nnU-Net's ``split_4d_nifti`` (3D images are copied as
    ``<case>_0000.nii.gz``), labels are copied byte for byte, so spacing, origin and direction are
    kept exactly. Channel and label names come from the options, else from the MSD ``dataset.json``,
    else the Hippocampus defaults (channel ``MRI``; labels background, Anterior, Posterior).
    MSD publishes no labelled test set, so by default every case goes to imagesTr and no split is
    written. ``test_fraction`` / ``test_cases`` (``--test-fraction F`` / ``--test-cases N``) hold out
    a labelled test set instead: those cases go to imagesTs/labelsTs only (not to imagesTr), for
    ``nnUNetv2_predict -i imagesTs`` and ``nnUNetv2_evaluate_folder``. The choice is deterministic:
    the N cases whose ``sha256("<seed>:<case id>")`` is smallest (``test_seed``, default 0), so it
    does not depend on the Python or numpy version, and a case keeps its side when others are added.
    'images' / 'labels' may be spelt in any case.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, common_kwargs
from .errors import CaseDataError, ConversionArgumentError, SourceLayoutError, one_line, reading
from .layout import describe_folder, child_dir, find_nested, list_files, require_dir, require_source, visible_dirs
from .target import atomic_folder

HIPPOCAMPUS_CHANNELS = {"0": "MRI"}
HIPPOCAMPUS_LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}
_NAME = "msd_flat"


def _load_json(converter: str, path: str) -> dict:
    with reading(path):
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    try:
        dj = json.loads(text)
    except ValueError as e:
        raise SourceLayoutError(converter, "an MSD dataset.json (a JSON object)", f"invalid JSON ({e})", path) from e
    if not isinstance(dj, dict):
        raise SourceLayoutError(converter, "an MSD dataset.json (a JSON object)", f"a JSON {type(dj).__name__}", path)
    return dj


def _read_msd_json(source: str) -> dict:
    path = os.path.join(source, "dataset.json")
    if not os.path.isfile(path):
        return {}
    dj = _load_json(_NAME, path)
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
    with reading(image):
        dim = sitk.ReadImage(image).GetDimension()
    if dim == 3:
        shutil.copyfile(image, os.path.join(images_dir, case.case_id + "_0000.nii.gz"))
    elif dim == 4:
        split_4d_nifti(image, images_dir)  # writes <case>_0000.nii.gz, _0001... (one file per channel)
    else:
        raise CaseDataError(image, f"a {dim}D image (expected 3D, or 4D for several channels)",
                            fix="check that the file is an MSD image")
    with reading(label):
        values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(label)))
    shutil.copyfile(label, os.path.join(labels_dir, case.case_id + ".nii.gz"))
    return [int(v) for v in values]


def pick_test_cases(case_ids: Sequence[str], fraction: Optional[float] = None, count: Optional[int] = None,
                    seed: int = 0) -> List[str]:
    """The held-out test cases: ``count`` cases, or ``round(fraction * len(case_ids))`` (at least 1 for a
    fraction > 0), those with the smallest ``sha256("<seed>:<case id>")``; sorted. At least one case
    stays for training."""
    if fraction is not None and count is not None:
        raise ConversionArgumentError("pass either --test-fraction or --test-cases, not both")
    n_all = len(case_ids)
    if fraction is not None:
        if not 0 <= fraction < 1:
            raise ConversionArgumentError(f"--test-fraction must be in [0, 1), got {fraction}")
        count = 0 if fraction == 0 else max(1, int(round(fraction * n_all)))
    count = count or 0
    if count < 0 or (count and count >= n_all):
        raise ConversionArgumentError(f"cannot hold out {count} of {n_all} cases as the test set: at least one "
                                      "case must stay for training (lower --test-cases / --test-fraction)")
    key = lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest()  # noqa: E731
    return sorted(sorted(case_ids, key=key)[:count])


def _flat_folders(source: str):
    """(images folder, labels folder) of a flat copy; a missing one is an error that says what was found."""
    images_dir = child_dir(source, "images")
    labels_dir = child_dir(source, "labels")
    expected_img = "a folder 'images' with one <case>.nii.gz per case"
    if images_dir is None:
        hint = ""
        if child_dir(source, "imagesTr") and child_dir(source, "labelsTr"):
            hint = " (this is an original MSD task folder: convert it with 'nnunet-ext convert msd')"
        else:
            deeper = find_nested(source, lambda d: bool(child_dir(d, "images") and child_dir(d, "labels")), 2)
            if deeper:
                hint = f" (a flat copy is in {deeper[0]}: pass that folder as --source)"
        raise SourceLayoutError(_NAME, expected_img, f"no folder 'images'; the folder contains "
                                f"{describe_folder(source)}{hint}", source)
    return images_dir, labels_dir or os.path.join(source, "labels")


def convert_msd_flat(source: str, dataset_id: int, name: str = "Hippocampus", raw_root: Optional[str] = None,
                     overwrite: bool = False, num_processes: int = 2,
                     channel_names: Optional[Sequence[str]] = None, label_names: Optional[Sequence[str]] = None,
                     max_cases: Optional[int] = None, verify: bool = True, skip_bad: bool = False,
                     test_fraction: Optional[float] = None, test_cases: Optional[int] = None,
                     test_seed: int = 0) -> str:
    """Convert a flat MSD copy (``images/*.nii.gz`` + ``labels/*.nii.gz``) to ``DatasetXXX_<name>``.

    ``channel_names``: one name per image channel (e.g. ``["MRI"]``); ``label_names``: names for label
    values 0, 1, 2, ... in order. Both default to the MSD ``dataset.json`` in ``source`` if present,
    else to the Hippocampus values. ``max_cases`` converts only the first N cases (sorted by name).
    ``test_fraction`` / ``test_cases`` (with ``test_seed``) hold out a test set in imagesTs/labelsTs
    (see the module docstring; default none). ``skip_bad``: skip cases whose files cannot be read.
    Returns the written dataset folder.
    """
    source = require_source(_NAME, source)
    images_dir, labels_dir = _flat_folders(source)
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
    ids = [f[:-7] for f in images]
    held_out = set(pick_test_cases(ids, test_fraction, test_cases, test_seed))

    meta = _read_msd_json(source)
    channels = ({str(i): n for i, n in enumerate(channel_names)} if channel_names
                else meta.get("channel_names", dict(HIPPOCAMPUS_CHANNELS)))
    labels_map = ({n: i for i, n in enumerate(label_names)} if label_names
                  else meta.get("labels", dict(HIPPOCAMPUS_LABELS)))
    if sorted(labels_map.values()) != list(range(len(labels_map))):
        raise ConversionArgumentError(f"{_NAME}: label values must be consecutive 0..K, got {labels_map} "
                                      "(fix --label-names or the labels of dataset.json)")

    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])
    cases = [Case(c, (os.path.join(images_dir, f), os.path.join(labels_dir, f)), c not in held_out, c in held_out)
             for c, f in zip(ids, images)]
    extra: Dict[str, object] = {}
    summary = []
    if held_out:
        how = (f"--test-fraction {test_fraction}" if test_fraction is not None else f"--test-cases {test_cases}")
        desc = (f"{len(ids) - len(held_out)} training cases (imagesTr), {len(held_out)} held-out test cases "
                f"(imagesTs/labelsTs; {how}, --test-seed {test_seed})")
        extra["split"] = desc
        extra["test_selection"] = {"fraction": test_fraction, "cases": test_cases, "seed": test_seed,
                                   "rule": "smallest sha256('<seed>:<case id>')"}
        summary.append(f"held out {len(held_out)} of {len(ids)} cases as the test set in imagesTs/labelsTs "
                       f"(not in imagesTr; {how}, --test-seed {test_seed})")
    description = meta.get("description", f"MSD task converted from a flat copy of {source}")
    info = DatasetInfo(channel_names=channels, labels=labels_map, file_ending=".nii.gz", name=name,
                       description=description + (f"; {extra['split']}" if held_out else ""),
                       reference=meta.get("reference", "Medical Segmentation Decathlon, http://medicaldecathlon.com"),
                       licence=meta.get("licence", meta.get("license", "CC-BY-SA 4.0 (MSD)")), extra=extra)
    return build_dataset(_NAME, target, cases, _write_flat_case, info, None, num_processes, overwrite, verify,
                         skip_bad=skip_bad, summary=summary)


def convert_msd(source: str, dataset_id: Optional[int] = None, name: Optional[str] = None,
                raw_root: Optional[str] = None, overwrite: bool = False, num_processes: int = 2,
                verify: bool = True, test_fraction: Optional[float] = None, test_cases: Optional[int] = None,
                test_seed: int = 0) -> str:
    """Convert an original MSD ``TaskXX_Name`` folder with nnU-Net's ``convert_msd_dataset``.

    ``dataset_id`` defaults to the task number, ``name`` to the task name. The nnU-Net function
    writes into ``$nnUNet_raw`` and checks ids itself; here it is pointed at a temporary folder next
    to the target (this converter has already checked the target id in ``raw_root``), and the result
    is validated and moved into place. ``test_fraction`` / ``test_cases`` / ``test_seed``: a held-out
    labelled test set (see the module docstring; default none). Returns the written dataset folder.
    """
    import nnunetv2.dataset_conversion.convert_MSD_dataset as msd_mod

    source = require_source("msd", source)
    base = os.path.basename(source)
    expected = "an MSD task folder named TaskXX_Name with imagesTr/, labelsTr/, imagesTs/ and dataset.json"
    parts = base.split("_")
    if len(parts) != 2 or not parts[0].startswith("Task") or not parts[0][4:].isdigit():
        tasks = [d for d in visible_dirs(source) if d.startswith("Task") and "_" in d]
        hint = ""
        if len(tasks) == 1:
            hint = f" (the task folder is {os.path.join(source, tasks[0])}: pass it as --source)"
        elif tasks:
            hint = f" (it holds the task folders {tasks[:4]}: pass one of them as --source)"
        elif child_dir(source, "imagesTr"):
            hint = (" (nnU-Net's MSD converter takes the task number and name from the folder name: use a folder "
                    "named like Task04_Hippocampus, e.g. a symbolic link)")
        raise SourceLayoutError("msd", expected, f"a folder named {base!r}{hint}", source)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        require_dir("msd", os.path.join(source, sub), expected)
    if not os.path.isfile(os.path.join(source, "dataset.json")):
        raise SourceLayoutError("msd", expected, "no dataset.json", source)
    dj = _load_json("msd", os.path.join(source, "dataset.json"))
    absent = [k for k in ("labels", "modality", "training", "test") if k not in dj]
    if absent:
        raise SourceLayoutError("msd", "an MSD dataset.json with the keys labels, modality, training and test",
                                f"no {absent}", os.path.join(source, "dataset.json"))
    if test_fraction is not None or test_cases is not None:  # bad values fail before any work
        pick_test_cases(_msd_label_ids(source), test_fraction, test_cases, test_seed)
    task_id = int(parts[0][4:])
    dataset_id = task_id if dataset_id is None else dataset_id
    name = name or parts[1]
    target = prepare_target(dataset_id, name, raw_root, overwrite, [source])

    with atomic_folder(target, overwrite) as tmp:
        saved = msd_mod.nnUNet_raw, msd_mod.find_candidate_datasets
        msd_mod.nnUNet_raw, msd_mod.find_candidate_datasets = tmp, (lambda *_a, **_k: [])
        try:
            msd_mod.convert_msd_dataset(source, overwrite_target_id=dataset_id, num_processes=num_processes)
        except Exception as e:  # a file nnU-Net cannot read or split (its messages name the file)
            raise SourceLayoutError("msd", "image and label files that nnU-Net's convert_msd_dataset can read",
                                    f"an error: {one_line(e)}; replace the file it names with an intact copy",
                                    source) from e
        finally:
            msd_mod.nnUNet_raw, msd_mod.find_candidate_datasets = saved
        produced = os.path.join(tmp, f"Dataset{dataset_id:03d}_{parts[1]}")
        for entry in os.listdir(produced):
            os.rename(os.path.join(produced, entry), os.path.join(tmp, entry))
        os.rmdir(produced)
        summary = _hold_out_msd(tmp, test_fraction, test_cases, test_seed)
        from .verify import count_cases, format_counts, verify_output
        counts = verify_output(tmp, num_processes) if verify else count_cases(tmp)
    print(f"msd: {counts['imagesTr']} training cases converted ({format_counts(counts)})"
          + ("" if verify else " [integrity check skipped]") + (f"; {summary}" if summary else ""))
    return target


def _msd_label_ids(source: str) -> List[str]:
    """Case ids of an MSD task's labelsTr, as nnU-Net's converter reads them (no '.' / '_' files)."""
    return sorted(f[:-7] for f in os.listdir(os.path.join(source, "labelsTr"))
                  if f.endswith(".nii.gz") and not f.startswith((".", "_")))


def _hold_out_msd(folder: str, fraction: Optional[float], count: Optional[int], seed: int) -> str:
    """Move the held-out cases of a converted MSD task from imagesTr/labelsTr to imagesTs/labelsTs, MSD's
    unlabelled test images to imagesUnlabeled, and record the split in dataset.json; returns the summary
    ('' when nothing is held out)."""
    from nnunet_ext.unlabeled.raw import UNLABELED_DIR

    ids = sorted(f[:-7] for f in os.listdir(os.path.join(folder, "labelsTr")) if f.endswith(".nii.gz"))
    held_out = pick_test_cases(ids, fraction, count, seed)
    if not held_out:
        return ""
    images_ts, labels_ts = os.path.join(folder, "imagesTs"), os.path.join(folder, "labelsTs")
    if os.path.isdir(images_ts) and os.listdir(images_ts):
        os.rename(images_ts, os.path.join(folder, UNLABELED_DIR))
    os.makedirs(images_ts, exist_ok=True)
    os.makedirs(labels_ts)
    held = set(held_out)
    for f in os.listdir(os.path.join(folder, "imagesTr")):  # <case>_XXXX.nii.gz
        if f.endswith(".nii.gz") and f[:-12] in held:
            os.rename(os.path.join(folder, "imagesTr", f), os.path.join(images_ts, f))
    for case in held_out:
        os.rename(os.path.join(folder, "labelsTr", case + ".nii.gz"), os.path.join(labels_ts, case + ".nii.gz"))
    how = f"--test-fraction {fraction}" if fraction is not None else f"--test-cases {count}"
    split = (f"{len(ids) - len(held_out)} training cases (imagesTr), {len(held_out)} held-out test cases "
             f"(imagesTs/labelsTs; {how}, --test-seed {seed}); MSD's unlabelled test images in {UNLABELED_DIR}")
    path = os.path.join(folder, "dataset.json")
    with open(path) as f:
        dj = json.load(f)
    dj["numTraining"] = len(ids) - len(held_out)
    dj["description"] = (str(dj.get("description", "")) + "; " if dj.get("description") else "") + split
    dj["split"] = split
    dj["test_selection"] = {"fraction": fraction, "cases": count, "seed": seed,
                            "rule": "smallest sha256('<seed>:<case id>')"}
    with open(path, "w") as f:
        json.dump(dj, f, indent=4)
    return (f"held out {len(held_out)} of {len(ids)} cases as the test set in imagesTs/labelsTs "
            f"(not in imagesTr; {how}, --test-seed {seed}); MSD's unlabelled test images in {UNLABELED_DIR}")


def _add_test_args(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument("--test-fraction", type=float, default=None, metavar="F",
                   help="hold out this fraction of the cases (0 <= F < 1) as a labelled test set in imagesTs/labelsTs "
                        "(not in imagesTr); default 0: every case in imagesTr (MSD publishes no test labels)")
    g.add_argument("--test-cases", type=int, default=None, metavar="N",
                   help="hold out N cases as the test set instead of a fraction")
    p.add_argument("--test-seed", type=int, default=0, metavar="S",
                   help="seed of the deterministic test-case choice (default 0)")


def _add_flat_args(p):
    p.add_argument("--channel-names", nargs="+", default=None, metavar="NAME",
                   help="one name per image channel (default: from the MSD dataset.json, else MRI)")
    p.add_argument("--label-names", nargs="+", default=None, metavar="NAME",
                   help="names of label values 0,1,2,... "
                        "(default: from dataset.json, else background Anterior Posterior)")
    p.add_argument("--max-cases", type=int, default=None, metavar="N", help="convert only the first N cases")
    _add_test_args(p)


def _run_flat(args) -> str:
    return convert_msd_flat(args.source, args.id, args.name or "Hippocampus", channel_names=args.channel_names,
                            label_names=args.label_names, max_cases=args.max_cases, test_fraction=args.test_fraction,
                            test_cases=args.test_cases, test_seed=args.test_seed, **common_kwargs(args))


def _run_msd(args) -> str:
    return convert_msd(args.source, args.id, args.name, test_fraction=args.test_fraction, test_cases=args.test_cases,
                       test_seed=args.test_seed, **common_kwargs(args))


MSD_FLAT = Converter("msd_flat", "flat MSD copy (images/*.nii.gz + labels/*.nii.gz), e.g. Hippocampus",
                     _add_flat_args, _run_flat)
MSD = Converter("msd", "original MSD TaskXX_Name folder (delegates to nnU-Net's convert_msd_dataset)",
                _add_test_args, _run_msd, with_skip_bad=False)
