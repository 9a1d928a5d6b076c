"""``nnunet-ext benchmark``: N trainers x S seeds on one dataset, configuration and split, same budget.

For every (seed, trainer), seeds outer so that each seed's comparison is complete before the next:

1. **train** ``nnUNetv2_train D CONFIG FOLD -tr <Trainer>__bench -p PLANS -device DEV`` with
   ``nnUNet_results=OUT/runs/seed<s>/`` (seeds never overwrite each other; raw and preprocessed data stay
   the user's) and ``nnUNet_ext_seed=<s>``. ``<Trainer>__bench`` is a generated variant in ``OUT/trainers/``
   (see :mod:`nnunet_ext.benchmark.variant`): the budget (``num_epochs = ceil(iterations /
   iterations_per_epoch)``) and the seeding of :class:`nnunet_ext.core.seeding.SeedMixin`.
2. **predict** the held-out test cases (the fold's validation cases) with ``nnUNetv2_predict ...
   --disable_tta`` (``--tta``: with nnU-Net's mirroring) into ``OUT/runs/seed<s>/pred/<Trainer>/``.
3. **evaluate** them with :func:`nnunet_ext.evaluation.evaluate_folders` (Dice, NSD, HD95 per case and class)
   into ``OUT/runs/seed<s>/eval/<Trainer>/``.
4. **time**: median epoch time (nnU-Net's logged ``epoch_start_timestamps`` / ``epoch_end_timestamps`` in
   ``checkpoint_final.pth``) / iterations per epoch.

Resuming: a run whose ``checkpoint_final.pth`` exists is not retrained; one with only
``checkpoint_latest.pth`` is continued with ``--c`` (checkpoints are written every epoch); predictions and
evaluations that completed are kept. ``--records DIR`` also keeps each finished run's results (a few kB, no
models) in DIR, which can be committed: a run recorded there is restored instead of re-run, also into a new
``OUT`` on another machine (see :mod:`nnunet_ext.benchmark.records`). ``OUT/protocol.json`` records the
protocol; resuming with another dataset, configuration, plans, split, budget or TTA setting is refused (use
another ``-o``). Trainers and seeds may be added.

The split: ``-f F`` uses fold F of ``$nnUNet_preprocessed/DatasetXXX/splits_final.json`` (if the file does not
exist yet it is written first with nnU-Net's own default 5-fold split, exactly what ``nnUNetv2_train`` would
write). ``--train-list`` / ``--test-list`` (cases of imagesTr, one per line) add that split as a new fold
at the end of ``splits_final.json`` (existing folds are never changed; a copy of the original file is kept
as ``splits_final.json.orig``); an identical fold that is already there is reused. The fold index is printed
and recorded in ``protocol.json`` and ``benchmark.json``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_ext.atomic_io import write_json_atomic
from nnunet_ext.benchmark.variant import VARIANT_SUFFIX, find_trainer_class, write_variant
from nnunet_ext.errors import UserError
from nnunet_ext.paths import (console_script, ext_trainer_env, link_or_copy, nnunet_folder, require_output_folder,
                              resolve_dataset_name)

DEFAULT_ITERATIONS_PER_EPOCH = 250  # nnU-Net's
NNUNET_VAL_RATIO = 50 / 250  # nnU-Net's validation iterations per training iteration

#: protocol keys that must not change when a benchmark folder is resumed
FIXED_KEYS = ("dataset_name", "configuration", "plans", "fold", "train_cases", "test_cases", "iterations",
              "iterations_per_epoch", "val_iterations", "num_epochs", "tta", "tolerance")


class BenchmarkError(UserError):
    """A user error: bad arguments, missing data, a protocol that does not match the output folder."""


class RunFailed(Exception):
    """An nnU-Net subprocess failed (its log is named in the message)."""


@dataclass
class BenchmarkConfig:
    dataset: str = ""
    configuration: str = ""
    trainers: List[str] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [0])
    iterations: int = 0
    iterations_per_epoch: Optional[int] = None
    val_iterations: Optional[int] = None
    plans: str = "nnUNetPlans"
    fold: Optional[int] = None
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    output: str = "nnunet_ext_benchmark"
    device: Optional[str] = None
    tta: bool = False
    num_processes: Optional[int] = None
    data_workers: Optional[int] = None
    tolerance: float = 1.0
    records: Optional[str] = None
    quiet: bool = False

    @classmethod
    def keys(cls) -> List[str]:
        return [f.name for f in fields(cls)]

    def validate(self) -> None:
        if not str(self.dataset).strip():
            raise BenchmarkError("no dataset: give -d DATASET (id or DatasetXXX_Name)")
        if not self.configuration:
            raise BenchmarkError("no configuration: give -c CONFIG (e.g. 2d or 3d_fullres)")
        if not self.trainers:
            raise BenchmarkError("no trainers: give -tr T1,T2 (the first one is the reference)")
        if len(set(self.trainers)) != len(self.trainers):
            raise BenchmarkError(f"a trainer is listed twice: {','.join(self.trainers)}")
        for t in self.trainers:
            if t.endswith(VARIANT_SUFFIX):
                raise BenchmarkError(f"{t}: give the trainer itself; the benchmark makes the {VARIANT_SUFFIX} variants")
        if not self.seeds:
            raise BenchmarkError("no seeds: give --seeds 0,1,2")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise BenchmarkError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise BenchmarkError("give the training budget: --iterations N (N >= 1, the same for every trainer)")
        if self.iterations_per_epoch is not None and self.iterations_per_epoch < 1:
            raise BenchmarkError("--iterations-per-epoch must be >= 1")
        if self.val_iterations is not None and self.val_iterations < 1:
            raise BenchmarkError("--val-iterations must be >= 1 (nnU-Net validates every epoch)")
        if (self.train_list is None) != (self.test_list is None):
            raise BenchmarkError("--train-list and --test-list go together")
        if self.train_list is not None and self.fold is not None:
            raise BenchmarkError("give either -f FOLD or --train-list/--test-list, not both")
        if self.device not in (None, "cpu", "cuda", "mps"):
            raise BenchmarkError(f"-device must be cpu, cuda or mps, got {self.device!r}")
        if self.tolerance <= 0:
            raise BenchmarkError("--tolerance must be > 0 (mm)")
        require_output_folder(self.output, "output folder -o", BenchmarkError)
        if self.records:
            require_output_folder(self.records, "--records", BenchmarkError)

    @property
    def ipe(self) -> int:
        return self.iterations_per_epoch or min(DEFAULT_ITERATIONS_PER_EPOCH, self.iterations)

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.iterations / self.ipe)

    @property
    def vpe(self) -> int:
        return self.val_iterations or max(1, round(self.ipe * NNUNET_VAL_RATIO))


def load_config_file(path: str) -> dict:
    """The settings of a JSON config file, keys as ``BenchmarkConfig``'s fields (``-`` or ``_``).

    Relative paths in it (``train_list``, ``test_list``, ``output``) are relative to the file's folder.
    """
    p = Path(path)
    if not p.is_file():
        raise BenchmarkError(f"config file not found: {path}")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{path}: expected a JSON object with the benchmark's settings")
    out = {}
    aliases = {"d": "dataset", "c": "configuration", "tr": "trainers", "p": "plans", "f": "fold", "o": "output",
               "config": "configuration"}
    for k, v in raw.items():
        if k.startswith("_") or k == "comment":
            continue
        key = aliases.get(k, k.replace("-", "_"))
        if key not in BenchmarkConfig.keys():
            raise BenchmarkError(f"{path}: unknown setting {k!r}; known: {', '.join(BenchmarkConfig.keys())}")
        out[key] = v
    for key in ("train_list", "test_list", "output", "records"):
        if isinstance(out.get(key), str) and not os.path.isabs(out[key]):
            out[key] = str((p.parent / out[key]).resolve())
    for key in ("trainers", "seeds"):
        if isinstance(out.get(key), str):
            out[key] = [s.strip() for s in out[key].split(",") if s.strip()]
    if "seeds" in out:
        try:
            out["seeds"] = [int(s) for s in out["seeds"]]
        except (TypeError, ValueError):
            raise BenchmarkError(f"{path}: seeds must be integers, got {raw.get('seeds')!r}") from None
    for key in ("iterations", "iterations_per_epoch", "val_iterations", "fold", "num_processes", "data_workers"):
        if out.get(key) is not None and not isinstance(out[key], int):
            raise BenchmarkError(f"{path}: {key} must be an integer, got {out[key]!r}")
    if "dataset" in out:
        out["dataset"] = str(out["dataset"])
    return out


# --------------------------------------------------------------------------------------------------
# nnU-Net folders, dataset, split
# --------------------------------------------------------------------------------------------------
def resolve_dataset(dataset: str) -> str:
    """``DatasetXXX_Name`` for an id or a name (``nnunet_ext.paths.resolve_dataset_name``); $nnUNet_preprocessed
    must be set."""
    return resolve_dataset_name(dataset, BenchmarkError, require=("nnUNet_preprocessed",))


def read_case_list(path: str, file_ending: str) -> List[str]:
    """Case ids from a file: one per line (``#`` comments), or a JSON list; file endings are stripped."""
    p = Path(path)
    if not p.is_file():
        raise BenchmarkError(f"case list not found: {path}")
    text = p.read_text()
    if text.lstrip().startswith("["):
        try:
            items = [str(x) for x in json.loads(text)]
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{path}: not a valid JSON list ({e})") from None
    else:
        items = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    cases = []
    for it in items:
        if not it:
            continue
        name = os.path.basename(it)
        if name.endswith(file_ending):
            name = name[: -len(file_ending)]
        cases.append(name)
    if not cases:
        raise BenchmarkError(f"{path} lists no cases")
    dup = sorted({c for c in cases if cases.count(c) > 1})
    if dup:
        raise BenchmarkError(f"{path} lists cases twice: {', '.join(dup[:5])}")
    return cases


def default_splits(identifiers: List[str]) -> List[dict]:
    """nnU-Net's own default split (what ``nnUNetv2_train`` writes when there is no splits_final.json)."""
    import numpy as np
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    return generate_crossval_split(list(np.sort(identifiers)), seed=12345, n_splits=5)


def resolve_split(cfg: BenchmarkConfig, pre_dir: Path, identifiers: List[str], file_ending: str):
    """``(fold, train_cases, test_cases, note)``; may write splits_final.json (see the module doc)."""
    splits_file = pre_dir / "splits_final.json"
    if splits_file.is_file():
        try:
            splits = json.loads(splits_file.read_text())
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{splits_file} is not valid JSON ({e})") from None
        note = "existing splits_final.json"
    else:
        splits = [{"train": list(map(str, s["train"])), "val": list(map(str, s["val"]))}
                  for s in default_splits(identifiers)]
        write_json_atomic(splits_file, splits)
        note = "splits_final.json written with nnU-Net's default 5-fold split"
    if cfg.train_list is None:
        fold = 0 if cfg.fold is None else cfg.fold
        if not 0 <= fold < len(splits):
            raise BenchmarkError(f"fold {fold} is not in {splits_file} ({len(splits)} folds); give a fold 0.."
                                 f"{len(splits) - 1} or --train-list/--test-list")
        train, test = list(splits[fold]["train"]), list(splits[fold]["val"])
    else:
        train = read_case_list(cfg.train_list, file_ending)
        test = read_case_list(cfg.test_list, file_ending)
        known = set(identifiers)
        unknown = [c for c in train + test if c not in known]
        if unknown:
            raise BenchmarkError(f"{len(unknown)} listed case(s) are not preprocessed cases of the dataset (imagesTr), "
                                 f"e.g. {', '.join(unknown[:5])}")
        both = sorted(set(train) & set(test))
        if both:
            raise BenchmarkError(f"{len(both)} case(s) are in both --train-list and --test-list, "
                                 f"e.g. {', '.join(both[:5])}")
        fold = next((i for i, s in enumerate(splits)
                     if sorted(s["train"]) == sorted(train) and sorted(s["val"]) == sorted(test)), None)
        if fold is None:
            orig = splits_file.with_name("splits_final.json.orig")
            if not orig.exists():
                shutil.copy2(splits_file, orig)
            splits.append({"train": train, "val": test})
            fold = len(splits) - 1
            write_json_atomic(splits_file, splits)
            note = f"train/test lists appended to splits_final.json as fold {fold} (original kept as {orig.name})"
        else:
            note = f"train/test lists found in splits_final.json as fold {fold}"
    if not train or not test:
        raise BenchmarkError(f"fold {fold} has {len(train)} training and {len(test)} test cases; both must be > 0")
    return fold, train, test, note


def prepare_test_data(out: Path, raw_dir: Path, dataset_json: dict, test_cases: List[str]):
    """``OUT/test_data/{images,labels}``: links to the test cases' raw images (``CASE_XXXX``) and labels."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    fe = dataset_json["file_ending"]
    files = get_filenames_of_train_images_and_targets(str(raw_dir), dict(dataset_json))
    missing = [c for c in test_cases if c not in files]
    if missing:
        raise BenchmarkError(f"{len(missing)} test case(s) have no raw image in {raw_dir}: {', '.join(missing[:5])}")
    img_dir, lab_dir = out / "test_data" / "images", out / "test_data" / "labels"
    for d in (img_dir, lab_dir):
        d.mkdir(parents=True, exist_ok=True)
    want_img, want_lab = set(), set()
    for c in test_cases:
        for i, src in enumerate(files[c]["images"]):
            name = f"{c}_{i:04d}{fe}"
            link_or_copy(os.path.abspath(src), img_dir / name, symlink=True, replace=True)
            want_img.add(name)
        lab = files[c]["label"]
        if not os.path.isfile(lab):
            raise BenchmarkError(f"test case {c} has no label file ({lab})")
        link_or_copy(os.path.abspath(lab), lab_dir / f"{c}{fe}", symlink=True, replace=True)
        want_lab.add(f"{c}{fe}")
    for d, want in ((img_dir, want_img), (lab_dir, want_lab)):
        for f in d.iterdir():
            if f.name not in want:
                f.unlink()
    return img_dir, lab_dir


# --------------------------------------------------------------------------------------------------
# subprocesses
# --------------------------------------------------------------------------------------------------
#: nnU-Net's log lines (after its timestamp): "Epoch 3", "Epoch time: 12.3 s"
_EPOCH_RE = re.compile(r"(?:^|: )Epoch (\d+)\s*$")
_EPOCH_TIME_RE = re.compile(r"Epoch time: ([0-9.]+) s")


def _fmt_elapsed(seconds: float) -> str:
    return str(_dt.timedelta(seconds=int(seconds)))


class Runner:
    """Runs the nnU-Net subprocesses of one benchmark and prints progress."""

    def __init__(self, cfg: BenchmarkConfig, out: Path, n_runs: int):
        self.cfg, self.out, self.n_runs = cfg, out, n_runs
        self.t0 = time.time()
        self.run_no = 0

    def say(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(f"[{self.run_no}/{self.n_runs} | {_fmt_elapsed(time.time() - self.t0)}] {msg}", flush=True)

    def call(self, cmd: List[str], env: dict, log: Path, epochs: Optional[int] = None) -> float:
        """Run ``cmd``, appending its output to ``log``; echo nnU-Net's epoch lines. Returns wall seconds."""
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(log, "a") as fh:
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1)
            epoch = None
            try:
                for line in proc.stdout:
                    fh.write(line)
                    if epochs:
                        m = _EPOCH_RE.search(line)
                        if m:
                            epoch = int(m.group(1))
                        m = _EPOCH_TIME_RE.search(line)
                        if m and epoch is not None:
                            self.say(f"    epoch {epoch + 1}/{epochs}: {m.group(1)} s")
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        if rc != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise RunFailed(f"{os.path.basename(cmd[0])} failed (exit code {rc}); last lines of {log}:\n{tail}")
        return time.time() - t0


def _device(cfg: BenchmarkConfig) -> str:
    if cfg.device:
        return cfg.device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def read_epoch_times(checkpoint: Path) -> Dict[str, object]:
    """Epoch durations from nnU-Net's logging in a checkpoint."""
    import numpy as np
    import torch
    ck = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    log = ck.get("logging", {})
    starts, ends = log.get("epoch_start_timestamps", []), log.get("epoch_end_timestamps", [])
    n = min(len(starts), len(ends))
    times = [float(e - s) for s, e in zip(starts[:n], ends[:n])]
    return {"epoch_times": times, "median_epoch_time": float(np.median(times)) if times else math.nan,
            "epochs_logged": n, "trainer_name": ck.get("trainer_name")}


# --------------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------------
def _check_protocol(out: Path, protocol: dict, fix: str = "use another -o, or delete it") -> None:
    """Refuse a folder (``-o`` or ``--records``) that holds another protocol; write or extend its protocol.json."""
    path = out / "protocol.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in FIXED_KEYS if old.get(k) != protocol.get(k)]
        if diff:
            what = ", ".join(f"{k} ({_short(old.get(k))} -> {_short(protocol.get(k))})" for k in diff)
            raise BenchmarkError(f"{out} holds a benchmark with another protocol: {what}; {fix}")
        protocol = {**protocol, "trainers": list(dict.fromkeys(old.get("trainers", []) + protocol["trainers"])),
                    "seeds": list(dict.fromkeys(old.get("seeds", []) + protocol["seeds"])),
                    "created": old.get("created", protocol["created"])}
    write_json_atomic(path, protocol)


def _short(v) -> str:
    if isinstance(v, list) and len(v) > 4:
        return f"[{len(v)} items]"
    return json.dumps(v)


def _locate_dataset(cfg: BenchmarkConfig):
    """``(name, preprocessed folder, raw folder, dataset.json, preprocessed identifiers)``, each checked with the
    command that makes it when missing."""
    name = resolve_dataset(cfg.dataset)
    pre_dir = nnunet_folder("nnUNet_preprocessed", BenchmarkError) / name
    raw_dir = nnunet_folder("nnUNet_raw", BenchmarkError) / name
    plans_file = pre_dir / f"{cfg.plans}.json"
    if not plans_file.is_file():
        raise BenchmarkError(f"plans {cfg.plans} not found ({plans_file}); plan and preprocess first "
                             f"(nnUNetv2_plan_and_preprocess, or nnunet-ext plan-small)")
    plans = json.loads(plans_file.read_text())
    if cfg.configuration not in plans.get("configurations", {}):
        raise BenchmarkError(f"configuration {cfg.configuration} is not in {plans_file.name} "
                             f"(has: {', '.join(plans.get('configurations', {}))})")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    conf = PlansManager(plans).get_configuration(cfg.configuration)
    data_dir = pre_dir / conf.data_identifier
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        raise BenchmarkError(f"{cfg.configuration} of {cfg.plans} is not preprocessed ({data_dir} missing); run "
                             f"nnUNetv2_preprocess -d {name} -plans_name {cfg.plans} -c {cfg.configuration}")
    if not (raw_dir / "dataset.json").is_file():
        raise BenchmarkError(f"raw dataset not found: {raw_dir}/dataset.json (the test cases are predicted from the "
                             f"raw images)")
    dataset_json = json.loads((raw_dir / "dataset.json").read_text())
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    identifiers = sorted(infer_dataset_class(str(data_dir)).get_identifiers(str(data_dir)))
    return name, pre_dir, raw_dir, dataset_json, identifiers


def _trainer_classes(cfg: BenchmarkConfig) -> dict:
    """The trainers, resolved the way nnU-Net resolves them (its own, then $nnUNet_extTrainer + ours)."""
    saved = os.environ.get("nnUNet_extTrainer")
    os.environ["nnUNet_extTrainer"] = ext_trainer_env()["nnUNet_extTrainer"]
    try:
        classes = {t: find_trainer_class(t) for t in cfg.trainers}
    finally:
        if saved is None:
            os.environ.pop("nnUNet_extTrainer", None)
        else:
            os.environ["nnUNet_extTrainer"] = saved
    unknown = [t for t, c in classes.items() if c is None]
    if unknown:
        raise BenchmarkError(f"trainer(s) not found: {', '.join(unknown)} (nnU-Net's trainers, nnunet_ext's, and the "
                             f"folders on $nnUNet_extTrainer were searched)")
    return classes


def _open_records(cfg: BenchmarkConfig, protocol: dict):
    """The ``--records`` folder (None without one), checked to hold this protocol's runs only."""
    if not cfg.records:
        return None
    from nnunet_ext.benchmark.records import RunRecords
    records = RunRecords(cfg.records)
    records.dir.mkdir(parents=True, exist_ok=True)
    _check_protocol(records.dir, protocol, fix="give another --records folder, or delete it")
    return records


def _data_workers(cfg: BenchmarkConfig, device: str):
    """nnU-Net's data-augmentation workers: ``--data-workers``, else 0 on CPU when ``nnUNet_n_proc_DA`` is not
    set (in-process loading: deterministic batches, and no worse than workers on a few CPU cores), else None
    (nnU-Net's choice)."""
    workers = cfg.data_workers
    if workers is None and "nnUNet_n_proc_DA" not in os.environ and device == "cpu":
        workers = 0
    return workers


@dataclass
class _Bench:
    """What every (seed, trainer) run of one benchmark shares."""
    cfg: BenchmarkConfig
    name: str
    fold: int
    device: str
    nproc: int
    variants: Dict[str, str]
    base_env: dict
    img_dir: Path
    lab_dir: Path
    raw_dir: Path
    file_ending: str
    runner: "Runner"
    n_test: int
    records: object = None


def _train_run(b: _Bench, s: int, t: str, seed_dir: Path, fold_dir: Path, env: dict) -> Optional[Path]:
    """Train (or continue) trainer ``t`` with seed ``s`` unless its final checkpoint exists; returns the final
    checkpoint, or None when the run was restored from ``--records`` (nothing more to do)."""
    cfg, runner = b.cfg, b.runner
    logs = seed_dir / "logs"
    state_path = seed_dir / "state" / f"{t}.json"
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"train_wall_s": 0.0, "attempts": []}
    final = fold_dir / "checkpoint_final.pth"
    if b.records is not None and not final.is_file() and b.records.has(s, t):
        b.records.restore(s, t, seed_dir)
        runner.say(f"seed {s} {t}: finished earlier, restored from {b.records.run_dir(s, t)} (not re-run)")
        return None
    if final.is_file():
        runner.say(f"seed {s} {t}: trained (kept)")
    else:
        cmd = [console_script("nnUNetv2_train"), b.name, cfg.configuration, str(b.fold), "-tr", b.variants[t], "-p",
               cfg.plans, "-device", b.device]
        resume = (fold_dir / "checkpoint_latest.pth").is_file()
        if resume:
            cmd.append("--c")
        runner.say(f"seed {s} {t}: {'continuing' if resume else 'training'} ({cfg.num_epochs} epochs x "
                   f"{cfg.ipe} iterations), log {logs / (t + '_train.log')}")
        state["attempts"].append({"resume": resume, "start": _dt.datetime.now().isoformat(timespec="seconds")})
        write_json_atomic(state_path, state)
        wall = runner.call(cmd, env, logs / f"{t}_train.log", epochs=cfg.num_epochs)
        state["train_wall_s"] += wall
        state["attempts"][-1]["wall_s"] = wall
        write_json_atomic(state_path, state)
        if not final.is_file():
            raise RunFailed(f"nnUNetv2_train ended without {final}; see {logs / (t + '_train.log')}")
    _write_timing(b, seed_dir / "timing" / f"{t}.json", final, state)
    return final


def _write_timing(b: _Bench, timing_path: Path, final: Path, state: dict) -> None:
    """``timing/<trainer>.json``: the epoch times of the final checkpoint, per iteration, and the wall time."""
    if timing_path.is_file():
        return
    tm = read_epoch_times(final)
    tm.update(s_per_iteration=tm["median_epoch_time"] / b.cfg.ipe, iterations_per_epoch=b.cfg.ipe,
              device=b.device, train_wall_s=state.get("train_wall_s"))
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(timing_path, tm)


def _predict_run(b: _Bench, s: int, t: str, pred_dir: Path, env: dict, logs: Path) -> None:
    """``nnUNetv2_predict`` of the test images into ``pred_dir`` unless its ``.complete`` marker exists."""
    cfg, nproc = b.cfg, b.nproc
    marker = pred_dir / ".complete"
    if marker.is_file():
        b.runner.say(f"seed {s} {t}: predicted (kept)")
        return
    if pred_dir.exists():
        shutil.rmtree(pred_dir)
    cmd = [console_script("nnUNetv2_predict"), "-i", str(b.img_dir), "-o", str(pred_dir), "-d", b.name, "-c",
           cfg.configuration, "-f", str(b.fold), "-tr", b.variants[t], "-p", cfg.plans, "-device", b.device,
           # -np 1: nnU-Net's sequential prediction in one process (no worker start-up: quicker for few cases)
           "-npp", str(nproc if nproc > 1 else 0), "-nps", str(nproc if nproc > 1 else 0),
           "--disable_progress_bar"]
    if not cfg.tta:
        cmd.append("--disable_tta")
    b.runner.say(f"seed {s} {t}: predicting {b.n_test} test cases")
    wall = b.runner.call(cmd, env, logs / f"{t}_predict.log")
    write_json_atomic(marker, {"command": cmd, "wall_s": wall}, indent=None)


def _evaluate_run(b: _Bench, s: int, t: str, pred_dir: Path, eval_dir: Path) -> None:
    """``evaluate_folders`` of the predictions against the test labels, kept as ``benchmark_rows.json``."""
    from nnunet_ext.benchmark.report import collect_rows
    from nnunet_ext.evaluation import EvaluationError, evaluate_folders

    rows_path = eval_dir / "benchmark_rows.json"
    if rows_path.is_file():
        b.runner.say(f"seed {s} {t}: evaluated (kept)")
        return
    b.runner.say(f"seed {s} {t}: evaluating")
    try:
        res = evaluate_folders(str(b.lab_dir), str(pred_dir), labels=None, tolerance=b.cfg.tolerance,
                               num_processes=b.nproc, out_dir=str(eval_dir), file_ending=b.file_ending,
                               dataset_json=str(b.raw_dir / "dataset.json"), progress=False)
    except EvaluationError as e:
        raise RunFailed(f"evaluation of {pred_dir} failed: {e}") from None
    eval_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(rows_path, collect_rows(res, t, s))


def _one_run(b: _Bench, out: Path, s: int, t: str) -> None:
    """Seed ``s``, trainer ``t``: train, time, predict, evaluate (each step kept once done), then record."""
    b.runner.run_no += 1
    seed_dir = out / "runs" / f"seed{s}"
    env = dict(b.base_env, nnUNet_results=str(seed_dir), nnUNet_ext_seed=str(s))
    fold_dir = seed_dir / b.name / f"{b.variants[t]}__{b.cfg.plans}__{b.cfg.configuration}" / f"fold_{b.fold}"
    if _train_run(b, s, t, seed_dir, fold_dir, env) is None:
        return
    pred_dir = seed_dir / "pred" / t
    _predict_run(b, s, t, pred_dir, env, seed_dir / "logs")
    _evaluate_run(b, s, t, pred_dir, seed_dir / "eval" / t)
    if b.records is not None:
        b.records.save(s, t, seed_dir)


def run_benchmark(cfg: BenchmarkConfig, command: Optional[str] = None) -> dict:
    """Run (or continue) the benchmark; writes the reports and returns benchmark.json's content."""
    cfg.validate()
    out = Path(cfg.output).resolve()
    name, pre_dir, raw_dir, dataset_json, identifiers = _locate_dataset(cfg)
    fe = dataset_json["file_ending"]
    classes = _trainer_classes(cfg)
    fold, train_cases, test_cases, split_note = resolve_split(cfg, pre_dir, identifiers, fe)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    protocol = {"dataset_name": name, "configuration": cfg.configuration, "plans": cfg.plans, "fold": fold,
                "train_cases": sorted(train_cases), "test_cases": sorted(test_cases),
                "iterations": cfg.iterations, "iterations_per_epoch": cfg.ipe, "val_iterations": cfg.vpe,
                "num_epochs": cfg.num_epochs, "tta": bool(cfg.tta), "tolerance": float(cfg.tolerance),
                "trainers": list(cfg.trainers), "seeds": list(cfg.seeds),
                "created": _dt.datetime.now().isoformat(timespec="seconds")}
    _check_protocol(out, protocol)
    records = _open_records(cfg, protocol)

    schedule = {"num_epochs": cfg.num_epochs, "num_iterations_per_epoch": cfg.ipe,
                "num_val_iterations_per_epoch": cfg.vpe, "save_every": 1}
    tdir = out / "trainers"
    variants = {t: write_variant(tdir, classes[t], schedule) for t in cfg.trainers}
    img_dir, lab_dir = prepare_test_data(out, raw_dir, dataset_json, test_cases)
    nproc = cfg.num_processes or int(os.environ.get("nnUNet_def_n_proc", "2"))
    workers = _data_workers(cfg, device)
    base_env = ext_trainer_env([tdir])
    base_env["PYTHONUNBUFFERED"] = "1"
    if workers is not None:
        base_env["nnUNet_n_proc_DA"] = str(workers)
    if not cfg.quiet:
        shown_workers = workers if workers is not None else os.environ.get("nnUNet_n_proc_DA", "nnU-Net default")
        print(f"nnunet-ext benchmark: {name} {cfg.configuration} ({cfg.plans}), fold {fold}: "
              f"{len(train_cases)} train / {len(test_cases)} test cases ({split_note})")
        print(f"  {len(cfg.trainers)} trainer(s) x {len(cfg.seeds)} seed(s); budget {cfg.num_epochs} epochs x "
              f"{cfg.ipe} = {cfg.num_epochs * cfg.ipe} iterations (asked: {cfg.iterations}), {cfg.vpe} validation "
              f"iterations per epoch; device {device}; data workers {shown_workers}; output {out}")

    runs = [(s, t) for s in cfg.seeds for t in cfg.trainers]
    bench = _Bench(cfg, name, fold, device, nproc, variants, base_env, img_dir, lab_dir, raw_dir, fe,
                   Runner(cfg, out, len(runs)), len(test_cases), records)
    for s, t in runs:
        _one_run(bench, out, s, t)

    from nnunet_ext.benchmark.report import build_report
    return build_report(out, cfg, protocol={**json.loads((out / "protocol.json").read_text()),
                                            "trainers": list(cfg.trainers), "seeds": list(cfg.seeds)},
                        device=device, command=command, split_note=split_note)
