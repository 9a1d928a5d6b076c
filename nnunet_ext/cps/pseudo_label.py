"""``nnunet-ext pseudo-label``: the pseudo-label route (nnU-Net's maintainers' advice, and the FLARE22 winner's).

1. Predict every case of ``imagesUnlabeled`` with a trained model, the model loaded once, through nnU-Net's own
   pieces arranged like its file-based predictor (``nnUNetv2_predict``): ``-npp`` background processes read and
   preprocess the next cases (the configuration's preprocessor), this process runs the network (sliding window,
   optional mirroring: ``nnUNetPredictor.predict_logits_from_preprocessed_data``), ``-nps`` background processes
   turn the logits into the segmentation in the input's geometry
   (``convert_predicted_logits_to_segmentation_with_correct_shape``), write it and score it. The class
   probabilities exist only in an export process's memory; they are never written. At most ``2 * npp``
   preprocessed and ``nps + 2`` predicted cases wait at any time, whatever the number of cases.
2. Score each pseudo-label (``nnunet_ext.cps.uncertainty``, "pseudo-label uncertainty"): mean normalised entropy
   over the predicted foreground dilated by one voxel. An empty prediction is never kept.
3. Keep the ``keep`` most certain (a fraction of the predicted cases, or a count), optionally only those at or
   below ``max_uncertainty``.
4. Write ``$nnUNet_raw/DatasetYYY_<Name>PL``: imagesTr/labelsTr = the source's labelled cases + the kept
   pseudo-labelled cases (images hard-linked where possible, else copied), imagesTs/labelsTs and
   imagesUnlabeled carried over (so the route can be iterated on the new dataset), ``dataset.json`` with the new
   ``numTraining`` and a ``pseudo_labels`` record, and ``pseudo_labels.json`` (every case's score and whether
   it was kept). Stock nnU-Net plans and trains on it as on any dataset.

Iterating (the FLARE22 winner's stability filter): with ``previous`` (round r-1's pseudo-labels: the dataset this
command wrote then, or a folder of label files ``CASE<file_ending>``) every predicted case gets a ``stability``:
the Dice between this round's pseudo-label and round r-1's, averaged over the foreground classes that either of the
two contains (1 when both are empty). With ``min_stability`` S a case is kept only if its stability is at least S
(the winner dropped the cases whose pseudo-label changed between rounds; 1924 of 2000 stayed); the uncertainty
filter and this one combine (a kept case passes both). A case missing from the previous round has no stability: it
is named and not kept under ``min_stability``. A previous round of another dataset (other labels, another source
dataset, or none of this round's cases) is refused before anything is predicted.

Cache and resuming: predictions are cached per case in ``<model folder>/pseudo_labels/fold<F>_<checkpoint>[_noTTA]/``:
``CASE<file_ending>`` (the pseudo-label), then ``records/CASE.json`` (its scores, or why it was skipped), each
written atomically, the record last. A case counts as predicted when its record is there (and its label file):
a re-run, or a killed run started again, predicts only the others (an unreadable case is tried again). The cache's
``model.json`` holds the checkpoints' SHA-256: predictions of another checkpoint (the model was trained again) are
never mixed in (remove the folder to predict again). ``scores.json`` (all records, rewritten when a dataset is
written) is what earlier versions kept; its records are still read. The source dataset is never modified.

Parts (``num_parts`` N, ``part`` I, as ``nnUNetv2_predict -num_parts/-part_id``): a part predicts only its share
(:func:`nnunet_ext.core.sharding.shard`: every N-th of the sorted cases from the I-th). The parts of one job share
``$nnUNet_raw/.pseudo-label_DatasetYYY/``: ``settings.json`` (created exclusively by the first part; a part whose
settings differ, such as the model, folds, checkpoint, mirroring, ``keep``, the filters, the previous round or the
unlabelled cases, is refused in one line before it writes anything), ``part_I.json`` (written when part I has
recorded all its cases: its marker and timing) and ``merge.lock``. When every part's marker is there and every case
has a record, the part that sees it first takes the lock (created exclusively) and writes the dataset, once,
atomically (built in a hidden folder, then renamed); the job folder is removed after. ``merge`` predicts nothing:
it writes the dataset once every case has a record (a part killed after its last case needs no re-run), or names
the unfinished parts and their cases. A case's files are written by the one part that owns it;
settings and locks are created exclusively.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_ext.atomic_io import move_folder_atomic, replace_atomic, write_json_atomic
from nnunet_ext.errors import UserError


class PseudoLabelError(UserError):
    """A pseudo-label run that cannot start or finish (missing model, data, or an existing target)."""


@dataclass
class PseudoLabelSettings:
    dataset: str
    configuration: str
    target_id: int
    trainer: str = "nnUNetTrainer"
    folds: List[str] = field(default_factory=lambda: ["0"])
    plans: str = "nnUNetPlans"
    checkpoint: str = "checkpoint_final.pth"
    target_name: Optional[str] = None
    keep: float = 0.95
    max_uncertainty: Optional[float] = None
    use_mirroring: bool = True
    device: Optional[str] = None
    overwrite: bool = False
    progress: bool = True
    previous: Optional[str] = None
    min_stability: Optional[float] = None
    num_parts: int = 1
    part: Optional[int] = None  # None: 0 when num_parts is 1
    merge: bool = False
    num_processes_preprocessing: int = 3  # nnUNetv2_predict's -npp default
    num_processes_export: int = 3  # nnUNetv2_predict's -nps default


def pseudo_label_uncertainty(seg: np.ndarray, probabilities: np.ndarray) -> Dict[str, float]:
    """``{"uncertainty", "foreground_voxels"}`` of one prediction (labels ``seg``, probabilities (C, ...)).

    The mean over the region (the foreground dilated by one voxel, else the whole image) of the normalised entropy
    ``-sum_c p_c log p_c / log C``, computed one slice of the first spatial axis at a time (the entropy map of a
    whole CT is never held) and summed in float64."""
    from scipy import ndimage

    fg = np.asarray(seg) > 0
    n_fg = int(fg.sum())
    region = ndimage.binary_dilation(fg) if n_fg else np.ones_like(fg)
    probs = np.asarray(probabilities)
    n_classes = probs.shape[0]
    total, count = 0.0, 0
    for i in range(probs.shape[1]):
        r = region[i]
        if not r.any():
            continue
        p = np.clip(probs[:, i].astype(np.float32), 1e-12, None)
        ent = -(p * np.log(p)).sum(0) / np.float32(np.log(n_classes))
        total += float(ent[r].sum(dtype=np.float64))
        count += int(r.sum())
    return {"uncertainty": total / max(count, 1), "foreground_voxels": n_fg}


def default_processes(n: Optional[int]) -> int:
    """``n``, or when None nnUNetv2_predict's default for -npp/-nps (3), at most ``$nnUNet_def_n_proc`` where set
    (nnU-Net's own setting for the number of processes)."""
    import os

    if n is not None:
        return n
    limit = os.environ.get("nnUNet_def_n_proc")
    return min(3, int(limit)) if limit and limit.isdigit() else 3


def _device(name: Optional[str]):
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise PseudoLabelError("-device cuda: no CUDA device is available (use -device cpu)")
    return torch.device(name, 0) if name == "cuda" else torch.device(name)


# --------------------------------------------------------------------------------------------------- the cache
RECORDS = "records"


def cache_folder(model_folder, folds, checkpoint: str, use_mirroring: bool) -> Path:
    """Where the predictions of a model (folds, checkpoint, with or without mirroring) are cached."""
    tag = "_".join(str(f) for f in folds) + "_" + Path(checkpoint).stem + ("" if use_mirroring else "_noTTA")
    return Path(model_folder) / "pseudo_labels" / f"fold{tag}"


def read_records(cache: Path, cases) -> Dict[str, dict]:
    """``{case: record}`` of the ``cases`` predicted (or skipped) in ``cache``: ``records/CASE.json``, else the
    case's entry in an earlier version's ``scores.json``; a record whose label file is gone does not count."""
    legacy_file = cache / "scores.json"
    legacy = json.loads(legacy_file.read_text()) if legacy_file.is_file() else {}
    out = {}
    for c in cases:
        path = cache / RECORDS / f"{c}.json"
        r = json.loads(path.read_text()) if path.is_file() else legacy.get(c)
        if r is not None and ("skipped" in r or (r.get("file") and (cache / r["file"]).is_file())):
            out[c] = r
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(model_folder: Path, s: PseudoLabelSettings) -> dict:
    """What makes two predictions of a case the same: the model folder, folds, checkpoint (and its bytes),
    mirroring."""
    return {"model": str(model_folder), "folds": [str(f) for f in s.folds], "checkpoint": s.checkpoint,
            "tta": s.use_mirroring,
            "sha256": {str(f): _sha256(model_folder / f"fold_{f}" / s.checkpoint) for f in s.folds}}


# ------------------------------------------------------------------------------------ prediction, streamed
_PRE: dict = {}
_EXP: dict = {}


def _init_preprocessing(plans: dict, configuration: str, dataset_json: dict) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    _PRE.update(pm=pm, cm=cm, dataset_json=dataset_json, rw=pm.image_reader_writer_class(),
                preprocessor=cm.preprocessor_class(verbose=False))


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _preprocess(case: str, files: List[str]):
    """``(case, data, properties, None)``, or ``(case, None, None, why it is skipped)``: the image read by the
    plans' reader (an unreadable one is skipped), then the configuration's preprocessing (``run_case_npy``, what
    ``run_case`` does after reading)."""
    w = _PRE
    try:
        data, props = w["rw"].read_images(files)
    except Exception as e:  # unreadable: named, recorded, never used
        return case, None, None, f"unreadable ({_first_line(e)})"
    n_channels = len(w["dataset_json"]["channel_names"])
    if data.shape[0] != n_channels:
        return case, None, None, f"has {data.shape[0]} image channel(s) after reading, dataset.json names {n_channels}"
    data, _, props = w["preprocessor"].run_case_npy(data, None, props, w["pm"], w["cm"], w["dataset_json"])
    return case, np.ascontiguousarray(data, dtype=np.float32), props, None


def _init_export(plans: dict, configuration: str, dataset_json: dict, cache: str, torch_threads: int) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    _EXP.update(pm=pm, cm=pm.get_configuration(configuration), lm=pm.get_label_manager(dataset_json),
                rw=pm.image_reader_writer_class(), fe=dataset_json["file_ending"], cache=Path(cache),
                threads=torch_threads)


def _export(case: str, logits: np.ndarray, props: dict) -> Tuple[str, dict]:
    """nnU-Net's conversion of the logits to the segmentation in the input's geometry (and the probabilities,
    kept in memory), the label file written atomically, then its record."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    w = _EXP
    seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, w["pm"], w["cm"], w["lm"], props, return_probabilities=True, num_threads_torch=w["threads"])
    del logits
    fe = w["fe"]
    replace_atomic(w["cache"] / f"{case}{fe}", lambda tmp: w["rw"].write_seg(seg, tmp, props), suffix=fe)
    record = {"file": f"{case}{fe}", **pseudo_label_uncertainty(seg, probs)}
    write_json_atomic(w["cache"] / RECORDS / f"{case}.json", record)
    return case, record


#: what every background process needs, imported once by multiprocessing's fork server (then forked per process)
_PRELOAD = ["nnunet_ext.cps.pseudo_label", "nnunetv2.utilities.plans_handling.plans_handler",
            "nnunetv2.preprocessing.preprocessors.default_preprocessor", "nnunetv2.inference.export_prediction"]


def _process_pool(n: int, initializer, initargs):
    """A pool of ``n`` fresh processes: forked from multiprocessing's fork server (it imports torch and nnU-Net once,
    in a process that has run nothing else, so forking it is safe), or spawned where there is none (Windows)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
    else:
        ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(n, initializer=initializer, initargs=initargs)


def _check_workers(workers, what: str) -> None:
    if not all(p.is_alive() for p in workers):
        raise PseudoLabelError(f"a {what} process died (killed for lack of memory?): run the same command again "
                               f"with fewer of them (it resumes where it stopped)")


class _Preprocessing:
    """The cases of ``todo`` preprocessed (``_preprocess``'s tuples, in order, by iterating): in ``n`` background
    processes, started at once (they import while the model loads), with at most ``2 n`` cases submitted and not yet
    taken; or in this process when ``n`` is 0."""

    def __init__(self, todo: Dict[str, List[str]], n: int, init: tuple):
        self.items, self.n, self.init = list(todo.items()), n, init
        self.pool = None
        if n:
            self.pool = _process_pool(n, _init_preprocessing, init)
            self.workers = list(self.pool._pool)
            self.pending = deque(self.pool.apply_async(_preprocess, item) for item in self.items[:2 * n])

    def __iter__(self):
        if self.pool is None:
            _init_preprocessing(*self.init)
            for case, files in self.items:
                yield _preprocess(case, files)
            return
        nxt = len(self.pending)
        while self.pending:
            result = self.pending.popleft()
            while not result.ready():
                result.wait(0.1)
                _check_workers(self.workers, "preprocessing (-npp)")
            if nxt < len(self.items):
                self.pending.append(self.pool.apply_async(_preprocess, self.items[nxt]))
                nxt += 1
            yield result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()


class _Exports:
    """Exports (``_export``) in ``n`` background processes, at most ``n + 2`` unfinished (the predicting process waits
    beyond that, as nnU-Net's predictor does), or in this process when ``n`` is 0; ``done(case, record)`` is called
    for each finished one, in this process."""

    def __init__(self, n: int, init: tuple, done):
        self.done, self.pending, self.limit = done, [], n + 2
        if n == 0:
            _init_export(*init)
            self.pool = None
        else:
            self.pool = _process_pool(n, _init_export, init)
            self.workers = list(self.pool._pool)

    def submit(self, case: str, logits: np.ndarray, props: dict) -> None:
        if self.pool is None:
            self.done(*_export(case, logits, props))
            return
        self._collect(self.limit - 1)
        self.pending.append(self.pool.apply_async(_export, (case, logits, props)))

    def _collect(self, at_most: int) -> None:
        while True:
            waiting = []
            for r in self.pending:
                if r.ready():
                    self.done(*r.get())  # re-raises an export's error here
                else:
                    waiting.append(r)
            self.pending = waiting
            if len(waiting) <= at_most:
                return
            waiting[0].wait(0.05)
            _check_workers(self.workers, "export (-nps)")

    def finish(self) -> None:
        if self.pool is not None:
            self._collect(0)
            self.pool.close()
            self.pool.join()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()


def predict_cases(s: PseudoLabelSettings, model_folder: Path, todo: Dict[str, List[str]], cache: Path,
                  desc: str = "pseudo-label") -> dict:
    """Predict, write and score the cases ``todo`` (``{case: channel files}``) into ``cache``; returns
    ``{"predicted", "skipped", "seconds"}``. Unreadable cases are named on stderr and recorded as skipped."""
    import contextlib
    import io

    import torch
    from tqdm import tqdm
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.helpers import empty_cache

    (cache / RECORDS).mkdir(parents=True, exist_ok=True)
    device = _device(s.device)
    plans = json.loads((model_folder / "plans.json").read_text())
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    npp, nps = min(s.num_processes_preprocessing, len(todo)), min(s.num_processes_export, len(todo))
    stats = {"predicted": 0, "skipped": 0}
    bar = tqdm(total=len(todo), desc=desc, unit="case", disable=not s.progress, file=sys.stderr, dynamic_ncols=True)

    def done(case, record):
        stats["predicted"] += 1
        bar.update()

    # the background processes first: they start (import nnU-Net) while this process loads the model
    exports = cases = None
    try:
        exports = _Exports(nps, (plans, s.configuration, dataset_json, str(cache),
                                 1 if nps else default_num_processes), done)
        cases = _Preprocessing(todo, npp, (plans, s.configuration, dataset_json))
        with contextlib.redirect_stdout(io.StringIO()):
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=s.use_mirroring,
                                        perform_everything_on_device=device.type == "cuda", device=device,
                                        verbose=False, verbose_preprocessing=False, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(
                str(model_folder), use_folds=tuple(f if f == "all" else int(f) for f in s.folds),
                checkpoint_name=s.checkpoint)
        start = time.perf_counter()
        for case, data, props, problem in cases:
            if problem is not None:
                write_json_atomic(cache / RECORDS / f"{case}.json", {"skipped": problem})
                bar.write(f"pseudo-label: skipped {case}: {problem}", file=sys.stderr)
                stats["skipped"] += 1
                bar.update()
                continue
            logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu().numpy()
            del data
            exports.submit(case, logits, props)
            del logits
        exports.finish()
    finally:
        for stage in (cases, exports):
            if stage is not None:
                stage.close()
        bar.close()
        empty_cache(device)
    stats["seconds"] = time.perf_counter() - start
    return stats


# ------------------------------------------------------------------------------------------ choosing, rounds
def choose(records: dict, keep: float, max_uncertainty: Optional[float],
           min_stability: Optional[float] = None) -> List[str]:
    """The kept cases: non-empty, at most ``max_uncertainty``, among the ``keep`` most certain of the predicted, and
    (with ``min_stability``) a ``stability`` of at least ``min_stability`` (a missing stability, ``None``: not
    kept). The two filters are independent: a case is kept when it passes both."""
    from nnunet_ext.cps.uncertainty import keep_count

    predicted = {c: r for c, r in records.items() if "uncertainty" in r}
    eligible = {c: r["uncertainty"] for c, r in predicted.items() if r["foreground_voxels"] > 0
                and (max_uncertainty is None or r["uncertainty"] <= max_uncertainty)}
    ranked = sorted(eligible, key=lambda c: (eligible[c], c))
    certain = ranked[:keep_count(keep, len(predicted))] if predicted else []
    if min_stability is not None:
        certain = [c for c in certain if records[c].get("stability") is not None
                   and records[c]["stability"] >= min_stability]
    return sorted(certain)


def stability(current: np.ndarray, previous: np.ndarray, labels) -> float:
    """Dice between two label maps, averaged over the foreground ``labels`` present in either (1.0 when neither
    holds any): how much a pseudo-label changed between two rounds (1 = unchanged)."""
    current, previous = np.asarray(current), np.asarray(previous)
    dices = []
    for c in labels:
        a, b = current == c, previous == c
        denom = int(a.sum()) + int(b.sum())
        if denom:
            dices.append(2.0 * int(np.logical_and(a, b).sum()) / denom)
    return float(np.mean(dices)) if dices else 1.0


def _origin(dataset_json: dict, name: str) -> str:
    """The labelled dataset a chain of pseudo-labelled datasets started from (``name`` itself if none)."""
    record = dataset_json.get("pseudo_labels") or {}
    return record.get("origin") or record.get("source") or name


def previous_round(previous: str, name: str, dataset_json: dict, cases, raw_root: Path) -> Dict[str, Path]:
    """``{case: label file}`` of the previous round ``previous`` (a folder, or a dataset id or name in
    ``$nnUNet_raw``), checked to belong to this dataset: ``PseudoLabelError`` (one line) if it is missing, holds
    other labels, descends from another labelled dataset, or holds none of ``cases``.

    A pseudo-labelled dataset written by this command: its pseudo-labels of every case it predicted (the cache it
    names, where still there), else its ``labelsTr`` (the kept ones). Any other folder: ``CASE<file_ending>``
    files in it, or in its ``labelsTr``."""
    from nnunet_ext.paths import resolve_dataset_name

    fe = dataset_json["file_ending"]
    folder = Path(previous)
    if not folder.is_dir():
        if not (str(previous).isdigit() or str(previous).startswith("Dataset")):
            raise PseudoLabelError(f"--previous {previous}: not a folder, nor a dataset id or name")
        folder = raw_root / resolve_dataset_name(previous, PseudoLabelError)
        if not folder.is_dir():
            raise PseudoLabelError(f"--previous {previous}: {folder} not found")
    prev_json = json.loads((folder / "dataset.json").read_text()) if (folder / "dataset.json").is_file() else None
    if prev_json is not None:
        if prev_json.get("labels") != dataset_json.get("labels"):
            raise PseudoLabelError(f"--previous {folder}: its labels {prev_json.get('labels')} are not this "
                                   f"dataset's {dataset_json.get('labels')}: a previous round of another dataset")
        if prev_json.get("pseudo_labels") and _origin(prev_json, folder.name) != _origin(dataset_json, name):
            raise PseudoLabelError(f"--previous {folder}: pseudo-labels of {_origin(prev_json, folder.name)}, not of "
                                   f"{_origin(dataset_json, name)}: a previous round of another dataset")
    files: Dict[str, Path] = {}
    for sub in (folder / "labelsTr", folder):
        if sub.is_dir():
            for f in sub.glob(f"*{fe}"):
                files.setdefault(f.name[:-len(fe)], f)
    cache = Path(((prev_json or {}).get("pseudo_labels") or {}).get("predictions") or folder / "missing")
    if cache.is_dir():
        for f in cache.glob(f"*{fe}"):
            files[f.name[:-len(fe)]] = f
    found = {c: files[c] for c in cases if c in files}
    if not found:
        raise PseudoLabelError(f"--previous {folder}: holds none of the {len(cases)} unlabelled case(s) of {name} "
                               f"(CASE{fe}, in it or in its labelsTr): a previous round of another dataset?")
    return found


def add_stability(records: dict, cache: Path, previous: Dict[str, Path], labels, reader, where: str) -> List[str]:
    """Set ``records[case]["stability"]`` for every predicted case (``None`` where the previous round lacks it);
    returns the cases missing from the previous round."""
    missing = []
    for case, r in sorted(records.items()):
        if "uncertainty" not in r:
            continue
        if case not in previous:
            r["stability"] = None
            missing.append(case)
            continue
        cur = reader.read_seg(str(cache / r["file"]))[0]
        try:
            prev = reader.read_seg(str(previous[case]))[0]
        except Exception as e:
            raise PseudoLabelError(f"--previous {where}: {previous[case]} is unreadable ({type(e).__name__}); fix or "
                                   f"remove it") from e
        if cur.shape != prev.shape:
            raise PseudoLabelError(f"--previous {where}: {previous[case].name} has shape {prev.shape[1:]}, this "
                                   f"round's {case} {cur.shape[1:]}: a previous round of another dataset")
        r["stability"] = stability(cur, prev, labels)
    return missing



# --------------------------------------------------------------------------------------------------- the job
def job_folder(raw_root: Path, target_id: int) -> Path:
    """The folder the parts of the job writing dataset ``target_id`` share (hidden, in ``$nnUNet_raw``)."""
    return Path(raw_root) / f".pseudo-label_Dataset{int(target_id):03d}"


def _check_parts(s: PseudoLabelSettings) -> Optional[int]:
    """This run's part (None for ``merge``), the options checked."""
    from nnunet_ext.core.sharding import check_part

    if s.merge:
        if s.part is not None:
            raise PseudoLabelError("--merge predicts nothing: give it --num-parts N (as the parts had) without --part")
        part = 0
    elif s.part is None:
        if s.num_parts > 1:
            raise PseudoLabelError(f"--num-parts {s.num_parts} needs --part I (0..{s.num_parts - 1}), or --merge to "
                                   f"write the dataset of the finished parts")
        part = 0
    else:
        part = s.part
    try:
        check_part(part, s.num_parts)
    except ValueError as e:
        raise PseudoLabelError(str(e)) from None
    for opt, n in (("-npp", s.num_processes_preprocessing), ("-nps", s.num_processes_export)):
        if n < 0:
            raise PseudoLabelError(f"{opt} {n}: a number of processes, 0 (in this process) or more")
    return None if s.merge else part


def _previous_identity(previous: Optional[str], raw_root: Path) -> Optional[str]:
    from nnunet_ext.paths import resolve_dataset_name

    if previous is None:
        return None
    if Path(previous).is_dir():
        return str(Path(previous).resolve())
    return str(raw_root / resolve_dataset_name(previous, PseudoLabelError))


def _written_by(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` is a dataset this command wrote with exactly these settings."""
    from nnunet_ext.core.parts import differences

    f = folder / "pseudo_labels.json"
    if not f.is_file():
        return False
    there = json.loads(f.read_text()).get("settings")
    return there is not None and not differences(there, settings)


def _names(cases: List[str], at_most: int = 10) -> str:
    return ", ".join(cases[:at_most]) + (f", ... ({len(cases)} in all)" if len(cases) > at_most else "")


def run_pseudo_label(s: PseudoLabelSettings) -> Optional[Path]:
    """Run one part (or the merge) of a pseudo-label job; returns the dataset written, or None when this process did
    not write it (other parts unfinished, or another process writes it)."""
    from nnunet_ext.core.parts import ExclusiveLock, claim_settings, differences, read_settings, remove_folder
    from nnunet_ext.core.sharding import part_of, shard
    from nnunet_ext.paths import dataset_folder_name, nnunet_folder, parse_dataset_name, resolve_dataset_name
    from nnunet_ext.unlabeled.raw import UNLABELED_DIR, unlabeled_cases

    part = _check_parts(s)
    if s.min_stability is not None and s.previous is None:
        raise PseudoLabelError("--min-stability needs --previous (the previous round's pseudo-labels)")
    if s.min_stability is not None and not 0 <= s.min_stability <= 1:
        raise PseudoLabelError(f"--min-stability {s.min_stability}: a Dice, in 0..1")
    name = resolve_dataset_name(s.dataset, PseudoLabelError)
    raw_root = nnunet_folder("nnUNet_raw", PseudoLabelError)
    src = raw_root / name
    if not (src / "dataset.json").is_file():
        raise PseudoLabelError(f"{src / 'dataset.json'} not found: the source raw dataset is needed")
    dataset_json = json.loads((src / "dataset.json").read_text())
    fe = dataset_json["file_ending"]
    cases, problems = unlabeled_cases(src, dataset_json)
    for c, why in problems.items():
        print(f"pseudo-label: skipped {c}: {why}", file=sys.stderr)
    if not cases:
        raise PseudoLabelError(f"no unlabelled images in {src / UNLABELED_DIR} (named like imagesTr: "
                               f"CASE_0000{fe})")
    model_folder = nnunet_folder("nnUNet_results", PseudoLabelError) / name / \
        f"{s.trainer}__{s.plans}__{s.configuration}"
    for f in s.folds:
        if not (model_folder / f"fold_{f}" / s.checkpoint).is_file():
            raise PseudoLabelError(f"{model_folder / f'fold_{f}' / s.checkpoint} not found: train the model first "
                                   f"(nnUNetv2_train {name} {s.configuration} {f} -tr {s.trainer} -p {s.plans}) or "
                                   f"name another checkpoint with -chk")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if PlansManager(str(model_folder / "plans.json")).get_configuration(s.configuration).previous_stage_name:
        raise PseudoLabelError(f"-c {s.configuration} is the second stage of a cascade (it needs the previous "
                               f"stage's predictions): pseudo-label with a single-stage configuration")
    target_name = dataset_folder_name(s.target_id, s.target_name or parse_dataset_name(name)[1] + "PL")
    target = raw_root / target_name
    previous = previous_round(s.previous, name, dataset_json, cases, raw_root) if s.previous else None
    identity = model_identity(model_folder, s)
    settings = {"source": name, **identity, "target": target_name, "keep": s.keep,
                "max_uncertainty": s.max_uncertainty, "previous": _previous_identity(s.previous, raw_root),
                "min_stability": s.min_stability,
                "unlabelled_cases": {"count": len(cases),
                                     "sha1": hashlib.sha1("\n".join(sorted(cases)).encode()).hexdigest()}}
    existing = [d.name for d in raw_root.glob(dataset_folder_name(s.target_id, "*"))]
    if existing:
        if not s.overwrite:
            if _written_by(raw_root / existing[0], settings):
                print(f"pseudo-label: {raw_root / existing[0]} was written by this job already (same settings); "
                      f"nothing to do (--overwrite writes it again)")
                return raw_root / existing[0]
            raise PseudoLabelError(f"{raw_root / existing[0]} exists: choose another --target-id, or --overwrite "
                                   f"(replaces a dataset this command wrote)")
        for d in existing:
            if not (raw_root / d / "pseudo_labels.json").is_file():
                raise PseudoLabelError(f"{raw_root / d} was not written by pseudo-label (no pseudo_labels.json): "
                                       f"not replacing it; choose another --target-id")

    # the job's settings: every part the same, else refused before anything is written
    cache = cache_folder(model_folder, s.folds, s.checkpoint, s.use_mirroring)
    job = job_folder(raw_root, s.target_id)
    job_settings = {**settings, "num_parts": s.num_parts}
    what = f"the pseudo-label job writing {target_name} ({job})"
    remedy = (f"; give every part the same options (only --part, -device, -npp, -nps, -q may differ), or remove "
              f"{job} if that job is abandoned")
    cache_remedy = ": the checkpoint was changed since (trained again?); remove that folder to predict again"
    there = read_settings(cache / "model.json")
    if there is not None and differences(there, identity):
        raise PseudoLabelError(f"the prediction cache {cache} was started with other settings "
                               f"({differences(there, identity)}){cache_remedy}")
    if s.merge:
        there = read_settings(job / "settings.json")
        if there is not None and differences(there, job_settings):
            raise PseudoLabelError(f"{what} was started with other settings ({differences(there, job_settings)})"
                                   f"{remedy}")
    else:
        job.mkdir(parents=True, exist_ok=True)
        created = claim_settings(job / "settings.json", job_settings, PseudoLabelError, what, remedy)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            claim_settings(cache / "model.json", identity, PseudoLabelError, f"the prediction cache {cache}",
                           cache_remedy)
        except BaseException:
            if created:
                remove_folder(job)
            raise

    tag = f" part {part} of {s.num_parts}" if part is not None and s.num_parts > 1 else ""
    if part is not None:  # predict this part's cases that have no record yet (unreadable ones are tried again)
        mine = shard(cases, part, s.num_parts)
        records = read_records(cache, mine)
        todo = {c: cases[c] for c in mine if c not in records or "skipped" in records[c]}
        print(f"pseudo-label{tag}: {len(mine)} unlabelled case(s)"
              f"{f' (of {len(cases)})' if s.num_parts > 1 else ''}, {len(mine) - len(todo)} already predicted, "
              f"{len(todo)} to predict -> {cache}")
        stats = {"predicted": 0, "skipped": 0, "seconds": 0.0}
        if todo:
            stats = predict_cases(s, model_folder, todo, cache, desc=f"pseudo-label{tag}")
            rate = stats["predicted"] / stats["seconds"] if stats["seconds"] > 0 else float("nan")
            print(f"pseudo-label{tag}: predicted {stats['predicted']} case(s) in {stats['seconds']:.1f} s "
                  f"({rate:.3f} case/s)" + (f"; skipped {stats['skipped']} unreadable" if stats["skipped"] else ""))
        try:
            write_json_atomic(job / f"part_{part}.json", {
                "part": part, "cases": len(mine), **stats, "device": str(_device(s.device)) if todo else None,
                "npp": s.num_processes_preprocessing, "nps": s.num_processes_export})
        except FileNotFoundError:  # the job folder is gone: another part has written the dataset
            print(f"pseudo-label{tag}: done; {target} was written by another part")
            return None

    records = read_records(cache, cases)
    missing = sorted(set(cases) - set(records))
    owner = part_of(cases, s.num_parts)
    if s.merge:
        if missing:
            parts = ", ".join(str(p) for p in sorted({owner[c] for c in missing}))
            raise PseudoLabelError(f"--merge: part(s) {parts} of {s.num_parts} not finished, {len(missing)} case(s) "
                                   f"not predicted yet: {_names(missing)}; run those parts (--part I) first")
        job.mkdir(parents=True, exist_ok=True)
    else:  # the last part to finish writes the dataset: every part's marker there, every case predicted
        if not job.is_dir():
            print(f"pseudo-label{tag}: done; {target} was written by another part")
            return None
        unfinished = {i for i in range(s.num_parts) if not (job / f"part_{i}.json").is_file()}
        if missing or unfinished:
            parts = ", ".join(str(p) for p in sorted(unfinished | {owner[c] for c in missing}))
            print(f"pseudo-label{tag}: done; waiting for part(s) {parts}"
                  + (f" ({len(missing)} case(s) not predicted yet)" if missing else "")
                  + f": the last part to finish writes {target}, or the same command with --merge instead of --part")
            return None
    lock = ExclusiveLock(job / "merge.lock")
    try:
        mine_to_write = lock.acquire()
    except FileNotFoundError:  # the job folder is gone: another part has written the dataset
        print(f"pseudo-label{tag}: done; {target} was written by another part")
        return None
    if not mine_to_write:
        holder = lock.owner() or {}
        print(f"pseudo-label{tag}: done; {target} is being written by another process (pid {holder.get('pid')} on "
              f"{holder.get('host')})")
        return None
    try:
        write_json_atomic(cache / "scores.json", {c: records[c] for c in sorted(records)})
        timing = {"num_parts": s.num_parts, "parts": {}}
        for f in sorted(job.glob("part_*.json")):
            timing["parts"][f.stem] = json.loads(f.read_text())
        out = write_dataset(s, name, src, dataset_json, cases, records, cache, model_folder, target_name, previous,
                            settings, timing)
    except BaseException:
        lock.release()
        raise
    remove_folder(job)
    return out


def labelled_cases(src: Path, fe: str) -> List[str]:
    """The cases of ``src/labelsTr`` that carry real labels: all of them, less the pseudo-labelled cases a
    ``pseudo-label`` run put there (its ``pseudo_labels.json``) when ``src`` is a previous round's dataset. A new
    round starts again from the labelled cases, so an earlier round's pseudo-labels are never taken for labels."""
    record = src / "pseudo_labels.json"
    pseudo = set()
    if record.is_file():
        pseudo = {c for c, r in json.loads(record.read_text()).get("cases", {}).items() if r.get("kept")}
    return sorted(c for c in (p.name[:-len(fe)] for p in (src / "labelsTr").glob(f"*{fe}")) if c not in pseudo)


def write_dataset(s: PseudoLabelSettings, name: str, src: Path, dataset_json: dict, cases: Dict[str, List[str]],
                  records: Dict[str, dict], cache: Path, model_folder: Path, target_name: str,
                  previous: Optional[Dict[str, Path]], settings: dict, timing: dict) -> Path:
    """Score the stability (with a previous round), choose the kept cases and write the new raw dataset atomically
    (built in a hidden folder beside it, then renamed over; other folders of the same id removed after)."""
    from nnunet_ext.paths import dataset_folder_name, link_or_copy
    from nnunet_ext.unlabeled.raw import UNLABELED_DIR

    raw_root = src.parent
    fe = dataset_json["file_ending"]
    records = {c: dict(r) for c, r in records.items()}
    if previous is not None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        reader = PlansManager(str(model_folder / "plans.json")).image_reader_writer_class()
        labels = sorted({int(v) for k, v in dataset_json["labels"].items() if k != "background" and
                         not isinstance(v, (list, tuple)) and k != "ignore"})
        missing = add_stability(records, cache, previous, labels, reader, s.previous)
        if missing:
            print(f"pseudo-label: {len(missing)} case(s) missing from the previous round ({s.previous}), no "
                  f"stability{', not kept' if s.min_stability is not None else ''}: {', '.join(missing)}",
                  file=sys.stderr)
    kept = choose(records, s.keep, s.max_uncertainty, s.min_stability)

    labelled = labelled_cases(src, fe)
    clash = sorted(set(labelled) & set(kept))
    if clash:
        raise PseudoLabelError(f"unlabelled case names also used for labelled cases: {', '.join(clash[:5])}; rename "
                               f"the files in {src / UNLABELED_DIR}")
    target = raw_root / target_name
    staging = raw_root / f".{target_name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for sub in ("imagesTr", "labelsTr"):
            (staging / sub).mkdir(parents=True)
        labelled_set = set(labelled)
        for f in sorted((src / "imagesTr").glob(f"*{fe}")):
            if f.name[:-len(fe)].rsplit("_", 1)[0] in labelled_set:
                link_or_copy(f, staging / "imagesTr" / f.name)
        for c in labelled:
            link_or_copy(src / "labelsTr" / f"{c}{fe}", staging / "labelsTr" / f"{c}{fe}")
        for c in kept:
            for img in cases[c]:
                link_or_copy(img, staging / "imagesTr" / Path(img).name)
            link_or_copy(cache / records[c]["file"], staging / "labelsTr" / f"{c}{fe}")
        for sub in ("imagesTs", "labelsTs", UNLABELED_DIR):
            if (src / sub).is_dir():
                (staging / sub).mkdir()
                for f in sorted((src / sub).iterdir()):
                    if f.is_file():
                        link_or_copy(f, staging / sub / f.name)
        record = {"source": name, "model": str(model_folder), "folds": s.folds, "checkpoint": s.checkpoint,
                  "tta": s.use_mirroring,
                  "criterion": "mean normalised entropy over the predicted foreground dilated by one voxel; empty "
                               "predictions never kept (nnunet_ext/cps/uncertainty.py)",
                  "keep": s.keep, "max_uncertainty": s.max_uncertainty, "origin": _origin(dataset_json, name),
                  "predictions": str(cache), "previous": str(s.previous) if s.previous else None,
                  "min_stability": s.min_stability,
                  "stability": "Dice between this round's and the previous round's pseudo-label, mean over the "
                               "foreground classes in either (1 = unchanged)" if s.previous else None,
                  "labelled": len(labelled),
                  "predicted": sum(1 for r in records.values() if "uncertainty" in r), "kept": len(kept)}
        new_json = dict(dataset_json, numTraining=len(labelled) + len(kept), pseudo_labels=record)
        write_json_atomic(staging / "dataset.json", new_json)
        write_json_atomic(staging / "pseudo_labels.json",
                          {**record, "settings": settings, "timing": timing,
                           "cases": {c: {**r, "kept": c in kept} for c, r in sorted(records.items())}})
        existing = [d.name for d in raw_root.glob(dataset_folder_name(s.target_id, "*"))]
        move_folder_atomic(staging, target)  # an existing target is replaced only now, once the new one is whole
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for d in existing:
        if d != target_name:
            shutil.rmtree(raw_root / d)
    print(f"pseudo-label: kept {len(kept)} of {record['predicted']} pseudo-label(s); wrote {target} "
          f"({len(labelled)} labelled + {len(kept)} pseudo-labelled training cases)")
    print(f"next: nnUNetv2_plan_and_preprocess -d {int(s.target_id)} -c {s.configuration} && "
          f"nnUNetv2_train {int(s.target_id)} {s.configuration} 0")
    return target
