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


def choose(records: dict, keep: float, max_uncertainty: Optional[float]) -> List[str]:
    """The kept cases: non-empty, at most ``max_uncertainty``, and the ``keep`` most certain of the predicted."""
    from nnunet_ext.cps.uncertainty import keep_count

    predicted = {c: r for c, r in records.items() if "uncertainty" in r}
    eligible = {c: r["uncertainty"] for c, r in predicted.items() if r["foreground_voxels"] > 0
                and (max_uncertainty is None or r["uncertainty"] <= max_uncertainty)}
    ranked = sorted(eligible, key=lambda c: (eligible[c], c))
    return sorted(ranked[:keep_count(keep, len(predicted))]) if predicted else []


def run_pseudo_label(s: PseudoLabelSettings) -> Path:
    from nnunet_ext.paths import (dataset_folder_name, link_or_copy, nnunet_folder, parse_dataset_name,
                                  resolve_dataset_name)
    from nnunet_ext.unlabeled.raw import UNLABELED_DIR, unlabeled_cases

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
            shutil.rmtree(raw_root / d)

    folds_tag = "_".join(str(f) for f in s.folds)
    cache = model_folder / "pseudo_labels" / \
        f"fold{folds_tag}_{Path(s.checkpoint).stem}{'' if s.use_mirroring else '_noTTA'}"
    records = predict_unlabeled(s, model_folder, cases, cache)
    kept = choose(records, s.keep, s.max_uncertainty)

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
              "keep": s.keep, "max_uncertainty": s.max_uncertainty, "labelled": len(labelled),
              "predicted": sum(1 for r in records.values() if "uncertainty" in r), "kept": len(kept)}
    new_json = dict(dataset_json, numTraining=len(labelled) + len(kept), pseudo_labels=record)
    write_json_atomic(staging / "dataset.json", new_json)
    write_json_atomic(staging / "pseudo_labels.json",
                {**record, "cases": {c: {**r, "kept": c in kept} for c, r in sorted(records.items())}})
    move_folder_atomic(staging, target)
    print(f"pseudo-label: kept {len(kept)} of {record['predicted']} pseudo-label(s); wrote {target} "
          f"({len(labelled)} labelled + {len(kept)} pseudo-labelled training cases)")
    print(f"next: nnUNetv2_plan_and_preprocess -d {int(s.target_id)} -c {s.configuration} && "
          f"nnUNetv2_train {int(s.target_id)} {s.configuration} 0")
    return target
