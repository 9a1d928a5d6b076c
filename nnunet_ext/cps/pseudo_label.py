"""``nnunet-ext pseudo-label``: the pseudo-label route (nnU-Net's maintainers' advice, and the FLARE22 winner's).

1. Predict every case of ``imagesUnlabeled`` with a trained model (nnU-Net's ``nnUNetPredictor``: its
   preprocessing, sliding window, optional mirroring, export to the input's geometry), the model loaded once.
   The class probabilities stay in memory for the uncertainty and are never written.
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

Resumable: predictions are cached per case in ``<model folder>/pseudo_labels/`` (written atomically, with a
json of the scores); a re-run predicts only what is missing. The source dataset is never modified.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

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


def pseudo_label_uncertainty(seg: np.ndarray, probabilities: np.ndarray) -> Dict[str, float]:
    """``{"uncertainty", "foreground_voxels"}`` of one prediction (labels ``seg``, probabilities (C, ...))."""
    import torch
    from scipy import ndimage

    from nnunet_ext.cps.uncertainty import normalised_entropy

    ent = normalised_entropy(torch.from_numpy(np.asarray(probabilities, dtype=np.float32))[None])[0].numpy()
    fg = np.asarray(seg) > 0
    n_fg = int(fg.sum())
    region = ndimage.binary_dilation(fg) if n_fg else np.ones_like(fg)
    return {"uncertainty": float(ent[region].mean()), "foreground_voxels": n_fg}


def _device(name: Optional[str]):
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise PseudoLabelError("-device cuda: no CUDA device is available (use -device cpu)")
    return torch.device(name, 0) if name == "cuda" else torch.device(name)


def predict_unlabeled(s: PseudoLabelSettings, model_folder: Path, cases: Dict[str, List[str]], cache: Path) -> dict:
    """Predict the cases missing from ``cache``; returns ``{case: record}`` for all cases (skipped ones included)."""
    import contextlib
    import io

    from tqdm import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    scores_file = cache / "scores.json"
    records = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
    with open(model_folder / "dataset.json") as f:
        fe = json.load(f)["file_ending"]
    todo = [c for c in sorted(cases) if c not in records or
            (records[c].get("file") and not (cache / records[c]["file"]).is_file())]
    print(f"pseudo-label: {len(cases)} unlabelled case(s), {len(cases) - len(todo)} already predicted, "
          f"{len(todo)} to predict -> {cache}")
    if not todo:
        return records
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = _device(s.device)
    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=s.use_mirroring,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(
            str(model_folder), use_folds=tuple(f if f == "all" else int(f) for f in s.folds),
            checkpoint_name=s.checkpoint)
    rw = predictor.plans_manager.image_reader_writer_class()
    for case in tqdm(todo, desc="pseudo-label", unit="case", disable=not s.progress, file=sys.stderr):
        try:
            image, props = rw.read_images(cases[case])
        except Exception as e:  # unreadable: named, recorded, never used
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            records[case] = {"skipped": f"unreadable ({type(e).__name__}: {first})"}
            print(f"pseudo-label: skipped {case}: {records[case]['skipped']}", file=sys.stderr)
            write_json_atomic(scores_file, records)
            continue
        seg, probs = predictor.predict_single_npy_array(image, props, None, None, True)
        replace_atomic(cache / f"{case}{fe}", lambda tmp: rw.write_seg(seg, tmp, props), suffix=fe)
        records[case] = {"file": f"{case}{fe}", **pseudo_label_uncertainty(seg, probs)}
        write_json_atomic(scores_file, records)
    return records


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


def run_pseudo_label(s: PseudoLabelSettings) -> Path:
    from nnunet_ext.paths import (dataset_folder_name, link_or_copy, nnunet_folder, parse_dataset_name,
                                  resolve_dataset_name)
    from nnunet_ext.unlabeled.raw import UNLABELED_DIR, unlabeled_cases

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
    target_name = dataset_folder_name(s.target_id, s.target_name or parse_dataset_name(name)[1] + "PL")
    existing = [d.name for d in raw_root.glob(dataset_folder_name(s.target_id, "*"))]
    target = raw_root / target_name
    if existing:
        if not s.overwrite:
            raise PseudoLabelError(f"{raw_root / existing[0]} exists: choose another --target-id, or --overwrite "
                                   f"(replaces a dataset this command wrote)")
        for d in existing:
            if not (raw_root / d / "pseudo_labels.json").is_file():
                raise PseudoLabelError(f"{raw_root / d} was not written by pseudo-label (no pseudo_labels.json): "
                                       f"not replacing it; choose another --target-id")
    previous = previous_round(s.previous, name, dataset_json, cases, raw_root) if s.previous else None

    folds_tag = "_".join(str(f) for f in s.folds)
    cache = model_folder / "pseudo_labels" / \
        f"fold{folds_tag}_{Path(s.checkpoint).stem}{'' if s.use_mirroring else '_noTTA'}"
    records = predict_unlabeled(s, model_folder, cases, cache)
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

    labelled = sorted(p.name[:-len(fe)] for p in (src / "labelsTr").glob(f"*{fe}"))
    clash = sorted(set(labelled) & set(kept))
    if clash:
        raise PseudoLabelError(f"unlabelled case names also used for labelled cases: {', '.join(clash[:5])}; rename "
                               f"the files in {src / UNLABELED_DIR}")
    staging = raw_root / f".{target_name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr"):
        (staging / sub).mkdir(parents=True)
    for f in sorted((src / "imagesTr").glob(f"*{fe}")):
        link_or_copy(f, staging / "imagesTr" / f.name)
    for f in sorted((src / "labelsTr").glob(f"*{fe}")):
        link_or_copy(f, staging / "labelsTr" / f.name)
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
                {**record, "cases": {c: {**r, "kept": c in kept} for c, r in sorted(records.items())}})
    move_folder_atomic(staging, target)  # an existing target is replaced only now, once the new one is whole
    for d in existing:
        if d != target_name:
            shutil.rmtree(raw_root / d)
    print(f"pseudo-label: kept {len(kept)} of {record['predicted']} pseudo-label(s); wrote {target} "
          f"({len(labelled)} labelled + {len(kept)} pseudo-labelled training cases)")
    print(f"next: nnUNetv2_plan_and_preprocess -d {int(s.target_id)} -c {s.configuration} && "
          f"nnUNetv2_train {int(s.target_id)} {s.configuration} 0")
    return target
