"""``nnunet-ext preprocess-unlabeled``: unlabelled images through the dataset's own nnU-Net preprocessing.

Every case of ``$nnUNet_raw/DatasetXXX/imagesUnlabeled`` goes through the preprocessor class of the plans'
configuration (nnU-Net's ``DefaultPreprocessor`` unless the plans name another): the same transpose, crop to
the non-zero region, normalisation (with the dataset's intensity statistics) and resampling as the training
cases. Results go to ``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/``.

* Streaming: one case per task, results written by the worker, nothing kept in memory but the case at hand.
* Resumable: a case whose ``.pkl`` exists is done (files are written atomically, the ``.pkl`` last).
* Configurations cropped to a region of interest (e.g. ``3d_fine`` of ``nnunet-ext plan-c2f``: the fine model only
  sees regions of interest): their unlabelled cases are cropped the same way, by the preprocessor the method hands
  in (:mod:`nnunet_ext.unlabeled.roi`), to a mask per case (``--roi-masks DIR``: ``DIR/CASE<file_ending>``, e.g.
  the coarse model's predictions of ``imagesUnlabeled``). A case without a mask file is skipped and named.
* Bad input is named and skipped, never used: a file that does not follow the naming, a case with missing or
  extra channels, an unreadable file, a channel count or geometry the reader rejects. The list goes to
  ``skipped.json`` in the output folder and to the terminal.
* Parts (``--num-parts N --part I``, as ``nnUNetv2_predict -num_parts/-part_id``): each process preprocesses its
  share (:func:`nnunet_ext.core.sharding.shard`) into the same folder, at the same time or not; a skipped case is
  recorded in a file of its own (``.skipped/CASE.json``) and ``skipped.json`` is rewritten from all of them under a
  lock, so it lists every part's skipped cases. A re-run of a part does only what it has not done.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_ext.atomic_io import write_json_atomic
from nnunet_ext.errors import UserError
from nnunet_ext.unlabeled.data import save_unlabeled_case, unlabeled_folder
from nnunet_ext.unlabeled.raw import UNLABELED_DIR, unlabeled_cases
from nnunet_ext.unlabeled.roi import ROICrop, roi_crop_for


class UnlabeledDataError(UserError):
    """An unlabelled-data setup problem (missing folder, missing plans, nothing preprocessed)."""


def _load_plans(preprocessed_dir: Path, plans: str, configuration: str):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_file = preprocessed_dir / f"{plans}.json"
    if not plans_file.is_file():
        raise UnlabeledDataError(f"{plans_file} not found: plan the dataset with nnU-Net first "
                                 f"(nnUNetv2_plan_and_preprocess -d ID), then run preprocess-unlabeled")
    pm = PlansManager(load_json(str(plans_file)))
    if configuration not in pm.available_configurations:
        raise UnlabeledDataError(f"configuration {configuration!r} is not in {plans_file} (it has: "
                                 f"{', '.join(pm.available_configurations)})")
    return pm, pm.get_configuration(configuration)


_WORKER: dict = {}


def _init_worker(plans: dict, configuration: str, dataset_json: dict, out: str, roi_masks: Optional[str] = None,
                 roi_preprocessor: Optional[type] = None) -> None:
    """A worker's state: the plans, and the preprocessor (``roi_preprocessor``: a configuration cropped to a
    region of interest, with ``roi_masks``; else the plans' own class)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    preprocessor = (roi_preprocessor or cm.preprocessor_class)(verbose=False)
    _WORKER.update(pm=pm, cm=cm, dataset_json=dataset_json, out=out, preprocessor=preprocessor,
                   roi_masks=roi_masks if roi_preprocessor is not None else None)


def _preprocess_one(task: Tuple[str, List[str]]) -> Tuple[str, Optional[str]]:
    """Preprocess and write one case; ``(case, None)`` or ``(case, reason it was skipped)``."""
    case, files = task
    w = _WORKER
    n_channels = len(w["dataset_json"]["channel_names"])
    mask = None
    if w.get("roi_masks"):
        mask = os.path.join(w["roi_masks"], case + w["dataset_json"]["file_ending"])
        if not os.path.isfile(mask):
            return case, f"no ROI mask {mask} (the fine configuration crops every case to its mask's bounding box)"
    try:
        data, _, properties = w["preprocessor"].run_case(files, mask, w["pm"], w["cm"], w["dataset_json"])
    except Exception as e:  # any reader / geometry failure: the case is reported and skipped
        msg = str(e).strip().splitlines()
        return case, f"unreadable or inconsistent ({type(e).__name__}: {msg[0] if msg else ''}); files: " + \
            ", ".join(os.path.basename(f) for f in files)
    if data.shape[0] != n_channels:
        return case, (f"has {data.shape[0]} image channel(s) after reading, dataset.json names {n_channels}; files: "
                      + ", ".join(os.path.basename(f) for f in files))
    save_unlabeled_case(data, properties, w["out"], case, w["cm"].patch_size)
    return case, None


SKIPPED_DIR = ".skipped"


def preprocess_unlabeled(dataset, configurations: List[str], plans: str = "nnUNetPlans",
                         num_processes: int = 4, progress: bool = True, roi_masks: Optional[str] = None,
                         roi_crops: Sequence[ROICrop] = (), num_parts: int = 1, part: int = 0) -> Dict[str, dict]:
    """Preprocess ``imagesUnlabeled`` for each configuration; returns ``{configuration: summary}``.

    ``roi_crops``: the crops of methods whose configurations are cropped to a region of interest
    (:mod:`nnunet_ext.unlabeled.roi`; ``nnunet-ext preprocess-unlabeled`` passes the registered ones, e.g.
    coarse-to-fine's ``3d_fine``). ``roi_masks``: folder of one mask per case, required by (and only used for) such
    a configuration. ``num_parts``, ``part``: this process does only its share of the cases
    (:func:`nnunet_ext.core.sharding.shard`); parts may run at the same time, into the same folder.

    Skipped cases: each part writes one small file per skipped case (``.skipped/CASE.json``, removed when the case
    is done later) and then, under an exclusive lock file, ``skipped.json`` = the misnamed files + every part's
    skipped cases: the last part to write it has everyone's, so concurrent parts lose none."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from tqdm import tqdm

    from nnunet_ext.core.sharding import check_part, shard
    from nnunet_ext.paths import nnunet_folder, resolve_dataset_name

    try:
        check_part(part, num_parts)
    except ValueError as e:
        raise UnlabeledDataError(str(e)) from None
    name = resolve_dataset_name(dataset, UnlabeledDataError)
    raw_dir = nnunet_folder("nnUNet_raw", UnlabeledDataError) / name
    pre_dir = nnunet_folder("nnUNet_preprocessed", UnlabeledDataError) / name
    if not (raw_dir / UNLABELED_DIR).is_dir():
        raise UnlabeledDataError(f"{raw_dir / UNLABELED_DIR} does not exist: put the unlabelled images there, named "
                                 f"like imagesTr (CASE_0000<file_ending>, one file per channel)")
    dataset_json = load_json(str(pre_dir / "dataset.json")) if (pre_dir / "dataset.json").is_file() \
        else load_json(str(raw_dir / "dataset.json"))
    cases, problems = unlabeled_cases(raw_dir, dataset_json)
    if not cases and not problems:
        raise UnlabeledDataError(f"{raw_dir / UNLABELED_DIR} has no images ending in {dataset_json['file_ending']}")
    mine = shard(cases, part, num_parts)
    tag = f" part {part} of {num_parts}" if num_parts > 1 else ""
    summaries = {}
    for configuration in configurations:
        pm, cm = _load_plans(pre_dir, plans, configuration)
        crop = roi_crop_for(cm.configuration, roi_crops)
        if crop is not None and not roi_masks:
            raise UnlabeledDataError(
                crop.masks_hint(str(dataset), configuration, cm.configuration, str(raw_dir / UNLABELED_DIR)))
        if roi_masks and not os.path.isdir(roi_masks):
            raise UnlabeledDataError(f"--roi-masks {roi_masks} is not a folder")
        out = unlabeled_folder(pre_dir, cm.data_identifier)
        (out / SKIPPED_DIR).mkdir(parents=True, exist_ok=True)
        todo = [(c, cases[c]) for c in mine if not (out / f"{c}.pkl").is_file()]
        done_before = len(mine) - len(todo)
        print(f"{name} {configuration}{tag}: {len(mine)} unlabelled case(s)"
              f"{f' (of {len(cases)})' if num_parts > 1 else ''}, {done_before} already preprocessed, "
              f"{len(todo)} to do -> {out}")
        init = (pm.plans, configuration, dataset_json, str(out), roi_masks,
                None if crop is None else crop.preprocessor())
        bar = tqdm(total=len(todo), desc=f"preprocess-unlabeled {configuration}{tag}", unit="case",
                   disable=not progress, file=sys.stderr)
        try:
            if num_processes <= 1 or len(todo) <= 1:
                _init_worker(*init)
                results = map(_preprocess_one, todo)
                for case, problem in results:
                    _record(out, case, problem, bar)
            else:
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(min(num_processes, len(todo)), initializer=_init_worker, initargs=init) as pool:
                    for case, problem in pool.imap_unordered(_preprocess_one, todo):
                        _record(out, case, problem, bar)
        finally:
            bar.close()
            skipped = _write_skipped(out, cases, problems)
        mine_skipped = {c: skipped[c] for c in mine if c in skipped}
        for case, why in sorted({**problems, **mine_skipped}.items()):
            print(f"  skipped {case}: {why}", file=sys.stderr)
        n_ok = sum(1 for c in cases if (out / f"{c}.pkl").is_file())
        if num_parts > 1:
            n_mine = sum(1 for c in mine if (out / f"{c}.pkl").is_file())
            print(f"{name} {configuration}{tag}: {n_mine} of its {len(mine)} case(s) ready, {len(mine_skipped)} "
                  f"skipped; all parts: {n_ok} of {len(cases)} unlabelled case(s) ready, {len(skipped)} skipped"
                  + (f" (listed in {out / 'skipped.json'})" if skipped else ""))
        else:
            print(f"{name} {configuration}: {n_ok} unlabelled case(s) ready, {len(skipped)} skipped"
                  + (f" (listed in {out / 'skipped.json'})" if skipped else ""))
        summaries[configuration] = {"folder": str(out), "ready": n_ok, "skipped": skipped}
    return summaries


def _record(out: Path, case: str, problem: Optional[str], bar) -> None:
    """A finished case: why it was skipped in ``.skipped/CASE.json``, or that file removed (done now)."""
    marker = out / SKIPPED_DIR / f"{case}.json"
    if problem is not None:
        write_json_atomic(marker, {"case": case, "skipped": problem})
        bar.write(f"skipped {case}: {problem}", file=sys.stderr)
    elif marker.exists():
        marker.unlink(missing_ok=True)
    bar.update()


def _write_skipped(out: Path, cases: Dict[str, List[str]], problems: Dict[str, str]) -> Dict[str, str]:
    """``skipped.json`` (and its dict): the misnamed files and every case not done whose ``.skipped`` file says why,
    written under ``.skipped.lock`` so that the parts' writes do not interleave."""
    import json

    from nnunet_ext.core.parts import ExclusiveLock

    with ExclusiveLock(out / ".skipped.lock").wait(600, UnlabeledDataError):
        skipped = dict(problems)
        for c in cases:
            marker = out / SKIPPED_DIR / f"{c}.json"
            if marker.is_file() and not (out / f"{c}.pkl").is_file():
                skipped[c] = json.loads(marker.read_text())["skipped"]
        skipped = dict(sorted(skipped.items()))
        write_json_atomic(out / "skipped.json", skipped)
    return skipped
