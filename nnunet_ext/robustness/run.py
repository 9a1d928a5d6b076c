"""``nnunet-ext robustness``: trained nnU-Net models on clean and corrupted copies of a test set.

For every trainer (each model loaded once, through nnU-Net's own ``nnUNetPredictor``) and every test case:
read the raw image with nnU-Net's reader (the one in the model's plans), corrupt it
(:mod:`nnunet_ext.robustness.corruptions`, seeded by the case id), predict with nnU-Net's inference
(preprocessing, sliding window, mirroring unless ``--disable-tta``, export to the original geometry) and
write the segmentation with the reader/writer's ``write_seg``. Then every prediction folder is compared
with the labels by :func:`nnunet_ext.evaluation.evaluate_folders`.

Layout of the output folder (default ``$nnUNet_results/DatasetXXX/robustness_<CONFIG>_fold<F>/``)::

    labels/                                   links to (or copies of) the test cases' label files
    predictions/<trainer>/clean_s0/CASE.ext   severity 0 (the identity for every corruption): predicted once
    predictions/<trainer>/<corruption>_s<k>/CASE.ext
    evaluation/<trainer>/<folder>.json        evaluate_folders' result for that folder
    robustness.csv                            long form: trainer, corruption, severity, class, name, dice, nsd,
                                              hd95 (means over cases), n_cases; class "mean" = evaluate_folders'
                                              overall foreground mean; severity-0 rows repeat clean_s0
    robustness_per_case.csv                   trainer, corruption, severity, case, class, dice, nsd, hd95: every
                                              case (clean once, as corruption "clean", severity 0)
    robustness.md                             mean foreground Dice, trainer x corruption x severity
    robustness.png                            one panel per corruption: mean foreground Dice vs severity
    run.json                                  what the results were computed with (test set, settings, models)

Resuming: a (trainer, corruption, severity) folder whose predictions all exist and whose evaluation json
exists is skipped; a missing prediction is computed and the folder re-evaluated. Files are written to a
temporary name and renamed. ``run.json`` guards against mixing runs: another test set, configuration,
plans, fold, step size or TTA setting in the same folder is an error; a retrained model (another checkpoint
file or modification time) or a changed corruption table drops the affected results, with a note.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
import re
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_ext.atomic_io import replace_atomic, save_figure_atomic, write_json_atomic, write_text_atomic
from nnunet_ext.errors import UserError
from nnunet_ext.paths import link_or_copy, nnunet_folder, require_output_folder, resolve_dataset_name
from nnunet_ext.robustness.corruptions import CORRUPTIONS, NUM_SEVERITIES, available_corruptions, corrupt

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_latest.pth")
CLEAN = "clean"
NATURAL_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
#: below this many test cases each folder is evaluated in this process (unless -np is given)
EVAL_POOL_MIN_CASES = 16


class RobustnessError(UserError):
    """A user error (missing model, images, labels; unknown corruption; conflicting output folder)."""


@dataclass
class Case:
    id: str
    images: List[str]
    label: str


@dataclass
class Model:
    trainer: str
    folder: Path  # $nnUNet_results/DatasetXXX/TRAINER__PLANS__CONFIG
    checkpoint: str  # file name in fold_F
    fold: str = "0"

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / f"fold_{self.fold}" / self.checkpoint


@dataclass
class Settings:
    dataset: str
    configuration: str
    trainers: List[str]
    fold: str
    plans: str = "nnUNetPlans"
    images: Optional[str] = None
    labels: Optional[str] = None
    out: Optional[str] = None
    corruptions: Optional[List[str]] = None
    severities: Sequence[int] = tuple(range(NUM_SEVERITIES + 1))
    device: Optional[str] = None
    step_size: float = 0.5
    disable_tta: bool = False
    tolerance: float = 1.0
    num_processes: Optional[int] = None
    progress: bool = True


def find_model(dataset_name: str, trainer: str, plans: str, configuration: str, fold: str) -> Model:
    """The trained model folder and its checkpoint (final, else best, else latest, with a printed note)."""
    folder = nnunet_folder("nnUNet_results", RobustnessError) / dataset_name / f"{trainer}__{plans}__{configuration}"
    fold_dir = folder / f"fold_{fold}"
    for i, name in enumerate(CHECKPOINTS):
        if (fold_dir / name).is_file():
            if i:
                print(f"note: {fold_dir} has no {CHECKPOINTS[0]}; using {name}", file=sys.stderr)
            for f in ("plans.json", "dataset.json"):
                if not (folder / f).is_file():
                    raise RobustnessError(f"{folder / f} is missing: is {folder} a complete nnU-Net model folder?")
            return Model(trainer=trainer, folder=folder, checkpoint=name, fold=str(fold))
    ds_id = re.match(r"Dataset(\d+)_", dataset_name)
    cmd = f"nnUNetv2_train {int(ds_id.group(1)) if ds_id else dataset_name} {configuration} {fold} -tr {trainer}"
    if plans != "nnUNetPlans":
        cmd += f" -p {plans}"
    raise RobustnessError(f"no trained model in {fold_dir} (none of {', '.join(CHECKPOINTS)}); train it with: {cmd}")


def _group_channels(folder: Path, file_ending: str) -> Dict[str, List[str]]:
    """case id -> its channel files (CASE_0000.ext, CASE_0001.ext, ...) in ``folder``."""
    pat = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    cases: Dict[str, Dict[int, str]] = {}
    for f in sorted(os.listdir(folder)):
        m = pat.match(f)
        if m:
            cases.setdefault(m.group(1), {})[int(m.group(2))] = str(folder / f)
    return {c: [ch[k] for k in sorted(ch)] for c, ch in cases.items()}


def default_test_set(dataset_name: str, fold: str, dataset_json: dict) -> List[Case]:
    """The fold's validation cases (splits_final.json), images from imagesTr and labels from labelsTr of $nnUNet_raw."""
    if fold == "all":
        raise RobustnessError("fold 'all' has no validation cases: give a test set with -i IMAGES -gt LABELS")
    splits_file = nnunet_folder("nnUNet_preprocessed", RobustnessError) / dataset_name / "splits_final.json"
    if not splits_file.is_file():
        raise RobustnessError(f"{splits_file} is missing (nnUNetv2_train writes it); "
                              f"or give a test set with -i and -gt")
    splits = json.loads(splits_file.read_text())
    if not 0 <= int(fold) < len(splits):
        raise RobustnessError(f"{splits_file} has {len(splits)} folds, no fold {fold}")
    val = list(splits[int(fold)]["val"])
    raw = nnunet_folder("nnUNet_raw", RobustnessError) / dataset_name
    raw_json = raw / "dataset.json"
    if raw_json.is_file():
        dataset_json = json.loads(raw_json.read_text())
    fe = dataset_json["file_ending"]
    if "dataset" in dataset_json:  # explicit file lists in dataset.json
        entries = dataset_json["dataset"]

        def _abs(p):
            p = os.path.expandvars(p)
            return p if os.path.isabs(p) else str(raw / p)
        cases = [Case(c, [_abs(p) for p in entries[c]["images"]], _abs(entries[c]["label"]))
                 for c in val if c in entries]
    else:
        images_dir = raw / "imagesTr"
        if not images_dir.is_dir():
            raise RobustnessError(f"{images_dir} is missing: the validation cases' raw images are needed")
        grouped = _group_channels(images_dir, fe)
        cases = [Case(c, grouped.get(c, []), str(raw / "labelsTr" / (c + fe))) for c in val]
    _check_cases(cases, fe)
    return cases


def folder_test_set(images: str, labels: str, dataset_json: dict) -> List[Case]:
    """Cases of an image folder (CASE_0000.ext, ...) with labels CASE.ext in ``labels``."""
    fe = dataset_json["file_ending"]
    images, labels = Path(images).resolve(), Path(labels).resolve()
    for p, what in ((images, "image"), (labels, "label")):
        if not p.is_dir():
            raise RobustnessError(f"{what} folder {p} does not exist")
    grouped = _group_channels(images, fe)
    if not grouped:
        raise RobustnessError(f"no images named CASE_0000{fe} in {images}")
    cases = [Case(c, files, str(labels / (c + fe))) for c, files in grouped.items()]
    _check_cases(cases, fe)
    return cases


def _check_cases(cases: List[Case], fe: str) -> None:
    """Every case has its image file(s) (the same number for all; an RGB PNG is one file) and its label."""
    if not cases:
        raise RobustnessError("the test set is empty")
    n = len(cases[0].images)
    for c in cases:
        missing = [p for p in c.images if not os.path.isfile(p)]
        if not c.images or missing:
            first = missing[0] if missing else c.id + "_0000" + fe
            raise RobustnessError(f"case {c.id}: image file {first} is missing")
        if len(c.images) != n:
            raise RobustnessError(f"case {c.id} has {len(c.images)} image files ({c.id}_XXXX{fe}), "
                                  f"case {cases[0].id} has {n}")
        if not os.path.isfile(c.label):
            raise RobustnessError(f"case {c.id}: label file {c.label} is missing")


def case_seed(case_id: str) -> int:
    """The corruption seed of a case (the same for every trainer, so all models see identical inputs)."""
    return zlib.crc32(case_id.encode())


def is_8bit_natural(image: np.ndarray, file_ending: str) -> bool:
    """Integer-valued intensities in 0..255 read from a photograph format: corrupted as 8-bit (rounded, clipped)."""
    return file_ending.lower() in NATURAL_ENDINGS and image.min() >= 0 and image.max() <= 255 \
        and bool(np.all(image == np.round(image)))


def corrupt_raw(image: np.ndarray, spacing, name: str, severity: int, seed: int, file_ending: str) -> np.ndarray:
    """Corrupt an image as nnU-Net's reader returns it, ``(c, z, y, x)`` float32; ``z == 1`` is treated as 2D."""
    is_2d = image.shape[1] == 1
    x, sp = (image[:, 0], tuple(spacing)[1:]) if is_2d else (image, tuple(spacing))
    if is_8bit_natural(x, file_ending):
        x = x.astype(np.uint8)
    out = corrupt(x, name, severity, sp, seed).astype(np.float32)
    return out[:, None] if is_2d else out


def _to_json(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _foreground_labels(dataset_json: dict) -> Optional[Dict[int, str]]:
    """{value: name} of the foreground labels; None (let evaluate_folders decide) for region-based datasets."""
    out = {}
    for name, v in dataset_json["labels"].items():
        if name == "ignore":
            continue
        if isinstance(v, (list, tuple)):
            return None
        if int(v) != 0:
            out[int(v)] = name
    return out


def _resolve_device(device: Optional[str]):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RobustnessError("-device cuda: no CUDA device is available (use -device cpu)")
        return torch.device("cuda", 0)
    if device == "mps":
        return torch.device("mps")
    if device != "cpu":
        raise RobustnessError(f"-device must be cpu, cuda or mps, got {device!r}")
    n = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp and omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    torch.set_num_threads(max(1, n))
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------- the run
def plan_run(s: Settings):
    """Check everything a run needs before any work: models, test set, corruptions. Returns a dict."""
    if s.out:
        require_output_folder(s.out, "output folder -o", RobustnessError)
    for c in s.corruptions or ():
        if c not in CORRUPTIONS:
            raise RobustnessError(f"unknown corruption {c!r}; known: {', '.join(CORRUPTIONS)}")
    dataset_name = resolve_dataset_name(s.dataset, RobustnessError)
    fold = str(s.fold)
    if fold != "all" and not fold.isdigit():
        raise RobustnessError(f"-f must be a fold number or 'all', got {fold!r}")
    if not s.trainers:
        raise RobustnessError("no trainer given (-tr)")
    models = [find_model(dataset_name, t, s.plans, s.configuration, fold) for t in s.trainers]
    dataset_json = json.loads((models[0].folder / "dataset.json").read_text())
    plans = json.loads((models[0].folder / "plans.json").read_text())
    if s.configuration not in plans.get("configurations", {}):
        raise RobustnessError(f"configuration {s.configuration!r} is not in {models[0].folder / 'plans.json'}")
    if (s.images is None) != (s.labels is None):
        raise RobustnessError("-i IMAGES and -gt LABELS go together (a test set needs both)")
    if s.images is not None:
        cases = folder_test_set(s.images, s.labels, dataset_json)
    else:
        cases = default_test_set(dataset_name, fold, dataset_json)

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    rw_class = PlansManager(plans).image_reader_writer_class  # a property (a method in older nnU-Net versions)
    if not isinstance(rw_class, type):
        rw_class = rw_class()
    image, props = rw_class().read_images(cases[0].images)
    num_channels, is_2d = image.shape[0], image.shape[1] == 1
    available = available_corruptions(num_channels, is_2d)
    kind = f"{'2D' if is_2d else '3D'} images with {num_channels} channel(s)"
    if s.corruptions is None:
        corruptions = available
    else:
        corruptions = list(dict.fromkeys(s.corruptions))
        for c in corruptions:
            if c not in CORRUPTIONS:
                raise RobustnessError(f"unknown corruption {c!r}; known: {', '.join(CORRUPTIONS)}")
            if c not in available:
                raise RobustnessError(f"corruption {c!r} does not apply to this dataset's {kind}; "
                                      f"available: {', '.join(available)}")
    severities = sorted(set(int(k) for k in s.severities))
    if not severities or any(not 0 <= k <= NUM_SEVERITIES for k in severities):
        raise RobustnessError(f"severities must be integers 0..{NUM_SEVERITIES}, got {list(s.severities)}")
    if not corruptions and severities != [0]:
        raise RobustnessError(f"no corruption applies to this dataset's {kind}")
    if s.out:
        out = Path(s.out)
    else:
        out = nnunet_folder("nnUNet_results", RobustnessError) / dataset_name / \
            f"robustness_{s.configuration}_fold{fold}"
    return dict(dataset_name=dataset_name, fold=fold, models=models, dataset_json=dataset_json, plans=plans,
                cases=cases, rw_class=rw_class, corruptions=corruptions, severities=severities, out=out,
                kind=kind, dataset_json_path=str(models[0].folder / "dataset.json"))


def _folders(corruptions: List[str], severities: List[int]) -> List[str]:
    """Prediction folder names: ``clean_s0`` once (severity 0 is the identity), then ``<corruption>_s<k>``."""
    out = [f"{CLEAN}_s0"] if 0 in severities else []
    return out + [f"{c}_s{k}" for c in corruptions for k in severities if k > 0]


def _check_manifest(s: Settings, p: dict) -> None:
    """Refuse to mix runs in one output folder; drop results made stale by a new model or corruption table."""
    out: Path = p["out"]
    path = out / "run.json"
    fixed = {"dataset": p["dataset_name"], "configuration": s.configuration, "plans": s.plans, "fold": p["fold"],
             "step_size": float(s.step_size), "tta": not s.disable_tta,
             "cases": {c.id: {"images": c.images, "label": c.label} for c in p["cases"]}}
    models = {m.trainer: {"checkpoint": m.checkpoint, "mtime": os.path.getmtime(m.checkpoint_path)}
              for m in p["models"]}
    table = {c: repr(CORRUPTIONS[c]) for c in CORRUPTIONS}
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None:
        for k, v in fixed.items():
            if old.get(k) != json.loads(json.dumps(v)):
                what = {"cases": "test set", "tta": "test-time augmentation setting",
                        "step_size": "step size"}.get(k, k)
                raise RobustnessError(f"{out} holds results computed with another {what}; "
                                      f"use another output folder (-o) or delete it")
        for t, m in models.items():
            if t in old.get("models", {}) and old["models"][t] != m:
                print(f"note: the model of {t} changed since the last run ({m['checkpoint']}): recomputing its "
                      f"results", file=sys.stderr)
                for sub in ("predictions", "evaluation"):
                    shutil.rmtree(out / sub / t, ignore_errors=True)
        for c, v in old.get("corruption_table", {}).items():
            if table.get(c) != v:
                print(f"note: the parameters of {c} changed since the last run: recomputing it", file=sys.stderr)
                for sub, suffix in (("predictions", ""), ("evaluation", ".json")):
                    for d in (out / sub).glob(f"*/{c}_s*{suffix}"):
                        shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink()
        models = {**old.get("models", {}), **models}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**fixed, "models": models, "corruption_table": table}, indent=1)


def _predict_trainer(s: Settings, p: dict, model: Model, device, todo: Dict[str, List[Case]]) -> None:
    """Predict the missing (folder, case) pairs of one model, loading it once; every case's image is read once."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from tqdm import tqdm

    out: Path = p["out"]
    fe = p["dataset_json"]["file_ending"]
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's chatter (trainer search, device notes)
        predictor = nnUNetPredictor(tile_step_size=s.step_size, use_gaussian=True, use_mirroring=not s.disable_tta,
                                    perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(
            str(model.folder), use_folds=(model.fold if model.fold == "all" else int(model.fold),),
            checkpoint_name=model.checkpoint)
    rw = p["rw_class"]()
    per_case: Dict[str, List[str]] = {}
    for folder, cases in todo.items():
        for c in cases:
            per_case.setdefault(c.id, []).append(folder)
    total = sum(len(v) for v in per_case.values())
    with tqdm(total=total, desc=f"{model.trainer}", unit="pred", file=sys.stderr, disable=not s.progress) as bar:
        for case in p["cases"]:
            if case.id not in per_case:
                continue
            image, props = rw.read_images(case.images)
            spacing = props["spacing"]
            for folder in per_case[case.id]:
                name, sev = folder.rsplit("_s", 1)
                sev = int(sev)
                bar.set_postfix_str(f"{case.id} {folder}")
                x = image if sev == 0 else corrupt_raw(image, spacing, name, sev, case_seed(case.id), fe)
                seg = predictor.predict_single_npy_array(np.ascontiguousarray(x, dtype=np.float32),
                                                         copy.deepcopy(props), None, None, False)
                target = out / "predictions" / model.trainer / folder / (case.id + fe)
                replace_atomic(target, lambda tmp: rw.write_seg(seg, tmp, props), suffix=fe)
                bar.update()


def _evaluate(s: Settings, p: dict, pred_dir: Path, json_path: Path) -> dict:
    from nnunet_ext.evaluation import evaluate_folders

    n = s.num_processes
    if n is None:  # a worker pool per folder costs seconds of start-up: worth it only for larger test sets
        n = 1 if len(p["cases"]) < EVAL_POOL_MIN_CASES else None
    res = evaluate_folders(str(p["out"] / "labels"), str(pred_dir), labels=p["labels"], tolerance=s.tolerance,
                           num_processes=n, out_dir=None, file_ending=p["dataset_json"]["file_ending"],
                           dataset_json=p["dataset_json_path"], progress=False)
    res = json.loads(json.dumps(res, default=_to_json))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(json_path, res, indent=1)
    return res


def run_robustness(s: Settings) -> dict:
    """The whole run; returns ``{"out", "csv", "md", "png", "rows", "computed", "skipped"}``."""
    p = plan_run(s)
    out: Path = p["out"]
    _check_manifest(s, p)
    p["labels"] = _foreground_labels(p["dataset_json"])
    fe = p["dataset_json"]["file_ending"]
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for c in p["cases"]:
        link_or_copy(c.label, out / "labels" / (c.id + fe))
    folders = _folders(p["corruptions"], p["severities"])
    print(f"robustness: {p['dataset_name']} {s.configuration} fold {p['fold']}, {len(p['cases'])} test case(s) "
          f"({p['kind']}), trainers {', '.join(s.trainers)}, corruptions {', '.join(p['corruptions']) or '-'}, "
          f"severities {', '.join(map(str, p['severities']))} -> {out}", file=sys.stderr)
    device = None
    computed, skipped = [], []
    results: Dict[tuple, dict] = {}
    for model in p["models"]:
        todo: Dict[str, List[Case]] = {}
        for folder in folders:
            pred_dir = out / "predictions" / model.trainer / folder
            json_path = out / "evaluation" / model.trainer / f"{folder}.json"
            missing = [c for c in p["cases"] if not (pred_dir / (c.id + fe)).is_file()]
            if missing:
                pred_dir.mkdir(parents=True, exist_ok=True)
                if json_path.exists():
                    json_path.unlink()  # stale: the folder gets new predictions
                todo[folder] = missing
        if todo:
            device = device or _resolve_device(s.device)
            _predict_trainer(s, p, model, device, todo)
        for folder in folders:
            pred_dir = out / "predictions" / model.trainer / folder
            json_path = out / "evaluation" / model.trainer / f"{folder}.json"
            if json_path.is_file() and folder not in todo:
                results[(model.trainer, folder)] = json.loads(json_path.read_text())
                skipped.append((model.trainer, folder))
            else:
                results[(model.trainer, folder)] = _evaluate(s, p, pred_dir, json_path)
                computed.append((model.trainer, folder))
    rows = result_rows(results, s.trainers, p["corruptions"], p["severities"], len(p["cases"]))
    paths = write_reports(out, rows, s.trainers, p["corruptions"], p["severities"],
                          title=f"{p['dataset_name']} {s.configuration} fold {p['fold']}")
    paths["per_case_csv"] = write_per_case(out, results, s.trainers, p["corruptions"], p["severities"])
    print(f"robustness: {len(computed)} folder(s) computed, {len(skipped)} already done; wrote {paths['csv']}, "
          f"{paths['md']}, {paths['png']}", file=sys.stderr)
    return {"out": out, **paths, "rows": rows, "computed": computed, "skipped": skipped}


# --------------------------------------------------------------------------------------------- reports
CSV_COLUMNS = ("trainer", "corruption", "severity", "class", "name", "dice", "nsd", "hd95", "n_cases")


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def result_rows(results: Dict[tuple, dict], trainers, corruptions, severities, n_cases) -> List[dict]:
    """Long-form rows from the evaluation results; severity 0 of every corruption is ``clean_s0``."""
    rows = []
    for t in trainers:
        for c in (corruptions or [CLEAN]):
            for k in severities:
                res = results.get((t, f"{CLEAN}_s0" if k == 0 else f"{c}_s{k}"))
                if res is None:
                    continue
                cases_per_class: Dict[str, set] = {}
                for r in res.get("per_case", []):
                    cases_per_class.setdefault(str(r.get("class")), set()).add(r.get("case"))
                all_cases = set().union(*cases_per_class.values()) if cases_per_class else set()
                for label, m in res.get("per_class", {}).items():
                    n = m.get("n", len(cases_per_class.get(str(label), ())) or n_cases)
                    rows.append({"trainer": t, "corruption": c, "severity": k, "class": str(label),
                                 "name": m.get("name", str(label)), "dice": _num(m.get("dice")),
                                 "nsd": _num(m.get("nsd")), "hd95": _num(m.get("hd95")), "n_cases": int(n)})
                ov = res.get("overall", {})
                rows.append({"trainer": t, "corruption": c, "severity": k, "class": "mean",
                             "name": "foreground mean", "dice": _num(ov.get("dice")), "nsd": _num(ov.get("nsd")),
                             "hd95": _num(ov.get("hd95")), "n_cases": len(all_cases) or n_cases})
    return rows


PER_CASE_COLUMNS = ("trainer", "corruption", "severity", "case", "class", "dice", "nsd", "hd95")


def write_per_case(out: Path, results: Dict[tuple, dict], trainers, corruptions, severities) -> Path:
    """``robustness_per_case.csv``: one row per trainer, corruption, severity, case and class (for paired
    statistics across trainers and seeds). The clean images appear once, as corruption ``clean``, severity 0."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PER_CASE_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for t in trainers:
        folders = [(CLEAN, 0)] + [(c, k) for c in (corruptions or []) for k in severities if k > 0]
        for c, k in folders:
            for r in results.get((t, f"{c}_s{k}"), {}).get("per_case", []):
                w.writerow({"trainer": t, "corruption": c, "severity": k, "case": r.get("case"),
                            "class": r.get("class"),
                            **{m: f"{_num(r.get(m)):.5g}" for m in ("dice", "nsd", "hd95")}})
    path = out / "robustness_per_case.csv"
    write_text_atomic(path, buf.getvalue())
    return path


def write_reports(out: Path, rows: List[dict], trainers, corruptions, severities, title: str = "") -> dict:
    """robustness.csv, robustness.md and robustness.png in ``out`` (each written atomically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in CSV_COLUMNS})
    csv_path = out / "robustness.csv"
    write_text_atomic(csv_path, buf.getvalue())

    mean = {(r["trainer"], r["corruption"], r["severity"]): r["dice"] for r in rows if r["class"] == "mean"}
    corrs = list(corruptions) or [CLEAN]
    lines = [f"# Robustness: {title}".rstrip(), "",
             "Mean foreground Dice over the test cases, per trainer, corruption and severity "
             "(severity 0 = clean images; parameters: `nnunet_ext/robustness/corruptions.py`).", "",
             "| trainer | corruption | " + " | ".join(f"s{k}" for k in severities) + " |",
             "|---|---|" + "---:|" * len(severities)]
    for t in trainers:
        for c in corrs:
            cells = [mean.get((t, c, k), float("nan")) for k in severities]
            lines.append(f"| {t} | {c} | " + " | ".join("n/a" if np.isnan(v) else f"{v:.4f}" for v in cells) + " |")
    md_path = out / "robustness.md"
    write_text_atomic(md_path, "\n".join(lines) + "\n")

    png_path = out / "robustness.png"
    _plot(png_path, mean, trainers, corrs, severities, title)
    return {"csv": csv_path, "md": md_path, "png": png_path}


def _plot(path: Path, mean: dict, trainers, corruptions, severities, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(corruptions)
    ncols = min(4, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False, sharey=True)
    for i, c in enumerate(corruptions):
        ax = axes[i // ncols][i % ncols]
        for t in trainers:
            ax.plot(severities, [mean.get((t, c, k), float("nan")) for k in severities], marker="o", label=t)
        ax.set_title(c, fontsize=10)
        ax.set_xticks(list(severities))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel("mean foreground Dice")
        if i // ncols == nrows - 1:
            ax.set_xlabel("severity")
    for j in range(n, nrows * ncols):
        axes[j // ncols][j % ncols].axis("off")
    axes[0][0].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
