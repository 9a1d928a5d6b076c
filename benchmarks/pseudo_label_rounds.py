"""Iterative pseudo-labelling for N rounds with nnU-Net's own commands, resumable across sessions (issue 27).

What the FLARE22 winner did (docs/methods/cps.md, "Iterative pseudo-labels"): round 0 trains stock nnU-Net on the
labelled cases; round r (1..N) pseudo-labels the unlabelled images with round r-1's model and trains again on the
labelled + kept pseudo-labelled cases; from round 2 on, a case is kept only if its pseudo-label is stable (Dice
between this round's and round r-1's pseudo-label >= ``--min-stability``). Every round trains the network of the
*source* dataset's plans.

Steps (each one real command line, run as a subprocess; its output goes to WORK/logs/):

* round 0, **train**: ``nnUNetv2_train SOURCE C FOLD -tr T -p P`` (or ``--round0-model``: a trained model of the
  source with plans P, e.g. a ``nnunet-ext benchmark`` run of the same seed and budget, is used as it is);
* round r, **pseudo_label**: ``nnunet-ext pseudo-label -d SOURCE -c C -tr T -p P_prev -f F_prev --target-id ID_r
  --keep K [--max-uncertainty U] [--previous ID_(r-1) --min-stability S (r >= 2)]``: writes DatasetID_r = the
  source's labelled cases + the kept pseudo-labelled ones. ``pseudo-label`` finds the model it predicts with under
  ``$nnUNet_results/SOURCE/T__P__C``; round r-1's model was trained on DatasetID_(r-1), so the driver runs
  pseudo-label with ``nnUNet_results`` = WORK/view/round<r>, where that path is a link to round r-1's model folder
  (the new dataset's labelled cases are then exactly the source's);
* round r, **plans**: the source's plans moved to DatasetID_r: its preprocessed folder gets the raw
  ``dataset.json`` and the source's ``dataset_fingerprint.json`` (the fingerprint the plans were made from; nnU-Net's
  training copies it next to the model), then ``nnUNetv2_move_plans_between_datasets -s SOURCE -t ID_r -sp P -tp R``
  and ``nnUNetv2_preprocess -d ID_r -plans_name R -c C``; the moved plans are checked to give the network of the
  source's plans (:func:`network_differences`: everything equal but the dataset and plans names);
* round r, **train**: ``nnUNetv2_train ID_r C FOLD -tr T -p R`` (``--c`` where an earlier session left a
  ``checkpoint_latest.pth``); the model's ``plans.json`` is checked against the source's plans again;
* every round, **evaluate** (with ``--test-list``): ``nnUNetv2_predict`` of the test cases and nnunet_ext's
  evaluation (Dice, NSD, HD95 per case and class, as ``nnunet-ext benchmark`` does);
* every round, **record**: ``RECORDS/round<r>.json`` (a few kB: kept / predicted counts, stability and uncertainty
  statistics, wall times, the evaluation's means) and ``RECORDS/round<r>_rows.json.gz`` (per-case evaluation).

The split: with ``--train-list``/``--test-list`` (cases of the source's imagesTr) every round trains on a fold
appended to its dataset's splits_final.json (as ``nnunet-ext benchmark`` does): round 0 on the listed cases,
round r on those + round r's kept pseudo-labelled cases, validation = the test cases. Without lists: ``-f FOLD`` of
each round's dataset (default ``all``: the source's labelled cases, + the kept ones in round r).

Budget: ``--iterations N`` trains the variant ``<T>__bench`` that ``nnunet-ext benchmark`` trains (its budget, the
seed ``--seed``, no final validation; in WORK/trainers/), so that a round trains exactly like a benchmark run of the
same trainer, seed and budget. Without it the trainer ``-tr`` is trained as it is.

Resuming: a state file per step (WORK/state/round<r>_<step>.json, written atomically once the step is done); a
re-run (the same command, later or in another session) skips every step whose state and outputs are there and
resumes at the first unfinished one; a step that is redone makes every later step of the chain be redone too
(their inputs changed). With ``--records DIR`` a round recorded there is not evaluated again, and when every asked
round is recorded nothing is run (a later session with an empty WORK reports from the records; rounds before a
missing one are trained again, since their models are needed). Settings that change the results (trainer, budget,
seed, plans, split, --keep, --min-stability, ...) may not change between re-runs of one WORK or RECORDS; --rounds
may grow.

    python benchmarks/pseudo_label_rounds.py -d 4 -c 3d_fullres --rounds 3 --target-ids 204 --min-stability 0.9 \\
        --workdir pl_rounds
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import math
import os
import shutil
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_ext.atomic_io import replace_atomic, write_json_atomic  # noqa: E402
from nnunet_ext.errors import UserError  # noqa: E402
from nnunet_ext.paths import console_script, dataset_folder_name, ext_trainer_env, link_or_copy  # noqa: E402

STEPS_ROUND0 = ("train", "evaluate", "record")
STEPS = ("pseudo_label", "plans", "train", "evaluate", "record")
#: steps whose redoing makes every later step be redone (the others only read the chain)
CHAIN = ("pseudo_label", "plans", "train")
#: plans keys that nnUNetv2_move_plans_between_datasets changes (per configuration: data_identifier)
MOVED_KEYS = ("dataset_name", "plans_name")
#: settings that change the results: a WORK or RECORDS folder holds rounds of one value of each
FIXED = ("source", "configuration", "plans", "round_plans", "trainer", "iterations", "iterations_per_epoch",
         "val_iterations", "seed", "fold", "train_cases", "test_cases", "keep", "max_uncertainty", "min_stability",
         "pseudo_label_tta", "tta")


class DriverError(UserError):
    """A run that cannot start or go on: bad arguments, missing data, a folder of other settings (one line)."""


class RunFailed(Exception):
    """A subprocess failed; its log's last lines are in the message."""


@dataclass
class RoundsConfig:
    dataset: str
    configuration: str
    target_ids: List[int]
    workdir: str
    rounds: int = 3
    plans: str = "nnUNetPlans"
    round_plans: Optional[str] = None
    trainer: str = "nnUNetTrainer"
    fold: str = "all"
    iterations: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    val_iterations: Optional[int] = None
    seed: Optional[int] = None
    keep: str = "0.95"
    max_uncertainty: Optional[float] = None
    min_stability: Optional[float] = None
    pseudo_label_tta: bool = True
    tta: bool = False
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    round0_model: Optional[str] = None
    target_name_prefix: Optional[str] = None
    records: Optional[str] = None
    device: Optional[str] = None
    num_processes: int = 2
    quiet: bool = False
    extra_trainer_dirs: List[str] = field(default_factory=list)


def parse_target_ids(text: str, rounds: int) -> List[int]:
    """``"A"``: A, A+1, ..., one per round; ``"A,B,C"``: one id per round (at least ``rounds``)."""
    try:
        ids = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise DriverError(f"--target-ids {text}: dataset ids (integers), e.g. 201 or 201,202,203") from None
    if len(ids) == 1:
        ids = [ids[0] + i for i in range(rounds)]
    if len(ids) < rounds:
        raise DriverError(f"--target-ids {text} gives {len(ids)} id(s) for {rounds} rounds: give one start id (A: A, "
                          f"A+1, ...) or one id per round")
    if len(set(ids)) != len(ids) or any(not 1 <= i <= 999 for i in ids):
        raise DriverError(f"--target-ids {text}: distinct dataset ids 1..999")
    return ids


def parse_args(argv=None) -> RoundsConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, help="source dataset (id or name) with imagesUnlabeled")
    p.add_argument("-c", dest="configuration", required=True, help="nnU-Net configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="the source's plans identifier (every round's)")
    p.add_argument("--round-plans", dest="round_plans", default=None,
                   help="identifier of the source's plans in the round datasets (default: <plans>_from<source id>)")
    p.add_argument("-tr", dest="trainer", default="nnUNetTrainer", help="trainer of every round")
    p.add_argument("-f", dest="fold", default="all",
                   help="fold of every round's dataset (default all); not with --train-list/--test-list")
    p.add_argument("--rounds", type=int, default=3, help="pseudo-label rounds after round 0 (default 3)")
    p.add_argument("--target-ids", dest="target_ids", required=True,
                   help="dataset ids of the rounds' datasets: a start id A (A, A+1, ...) or one per round")
    p.add_argument("--target-name-prefix", dest="target_name_prefix", default=None,
                   help="round r's dataset is Dataset<id>_<prefix><r> (default: <source name>PL)")
    p.add_argument("--iterations", type=int, default=None,
                   help="budget per round: train the nnunet-ext benchmark variant <trainer>__bench with this many "
                        "iterations (default: the trainer as it is)")
    p.add_argument("--iterations-per-epoch", dest="iterations_per_epoch", type=int, default=None)
    p.add_argument("--val-iterations", dest="val_iterations", type=int, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed of the budget variant (nnunet-ext benchmark's)")
    p.add_argument("--keep", default="0.95", help="pseudo-label --keep (a fraction or a count)")
    p.add_argument("--max-uncertainty", dest="max_uncertainty", type=float, default=None)
    p.add_argument("--min-stability", dest="min_stability", type=float, default=None,
                   help="from round 2 on: keep a case only if its pseudo-label's Dice with round r-1's is at least "
                        "this (e.g. 0.9)")
    p.add_argument("--disable-tta", dest="pseudo_label_tta", action="store_false",
                   help="pseudo-label without test-time mirroring")
    p.add_argument("--tta", action="store_true", help="predict the test cases with mirroring (default off)")
    p.add_argument("--train-list", dest="train_list", default=None, help="round 0's training cases (one a line)")
    p.add_argument("--test-list", dest="test_list", default=None,
                   help="held-out cases of the source's imagesTr: every round is evaluated on them")
    p.add_argument("--round0-model", dest="round0_model", default=None, metavar="FOLD_FOLDER",
                   help="use this trained model of the source as round 0 (.../<trainer>__<plans>__<c>/fold_<f>)")
    p.add_argument("--workdir", required=True, help="state, logs, models and predictions of the rounds")
    p.add_argument("--records", default=None,
                   help="keep each finished round's results here (a few kB; commit them): a later session "
                        "restores them instead of evaluating again")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda", "mps"], default=None)
    p.add_argument("-np", dest="num_processes", type=int, default=2,
                   help="processes for preprocessing and prediction")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.rounds < 1:
        raise DriverError("--rounds must be >= 1")
    return RoundsConfig(**{**vars(a), "target_ids": parse_target_ids(a.target_ids, a.rounds)})


# ------------------------------------------------------------------------------------------------ plans
def _plans_for_comparison(plans: dict, configuration: str) -> dict:
    """The plans without the names a move changes, with ``configuration`` resolved as nnU-Net resolves it."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads(json.dumps(plans))
    conf = dict(PlansManager(plans).get_configuration(configuration).configuration)
    conf.pop("data_identifier", None)
    top = {k: v for k, v in plans.items() if k not in MOVED_KEYS and k != "configurations"}
    return {**top, "configuration": conf}


def network_differences(source_plans: dict, target_plans: dict, configuration: str) -> List[str]:
    """The keys in which two plans differ for ``configuration``, beyond the dataset name, the plans name and the
    data identifier (what ``nnUNetv2_move_plans_between_datasets`` changes): [] when both give the same network
    (architecture and its arguments, patch and batch size, spacing, normalisation and intensity properties,
    resampling, reader)."""
    if configuration not in source_plans.get("configurations", {}):
        return [f"configurations.{configuration} (not in the source's plans)"]
    if configuration not in target_plans.get("configurations", {}):
        return [f"configurations.{configuration} (not in the target's plans)"]
    a = _plans_for_comparison(source_plans, configuration)
    b = _plans_for_comparison(target_plans, configuration)
    diffs = [k for k in sorted(set(a) | set(b)) if k != "configuration" and a.get(k) != b.get(k)]
    ca, cb = a["configuration"], b["configuration"]
    diffs += [f"configurations.{configuration}.{k}" for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
    return diffs


def _check_same_network(source_plans_file: Path, target_plans_file: Path, configuration: str, source_json: dict,
                        target_json: dict, what: str) -> None:
    diffs = network_differences(json.loads(source_plans_file.read_text()), json.loads(target_plans_file.read_text()),
                                configuration)
    diffs += [f"dataset.json {k}" for k in ("labels", "channel_names", "file_ending")
              if source_json.get(k) != target_json.get(k)]
    if diffs:
        raise DriverError(f"{what} ({target_plans_file}) would not train the source's network: "
                          f"{', '.join(diffs[:6])} differ from {source_plans_file}")


# ------------------------------------------------------------------------------------------------ helpers
def _elapsed(seconds: float) -> str:
    return str(_dt.timedelta(seconds=int(seconds)))


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _dataset_dir(root: Path, ds_id: int) -> Optional[Path]:
    found = sorted(root.glob(dataset_folder_name(ds_id, "*")))
    return found[0] if found else None


def _trainer_parts(folder: Path):
    """``(trainer, plans, configuration)`` of a model folder ``<trainer>__<plans>__<configuration>``."""
    parts = folder.name.rsplit("__", 2)
    if len(parts) != 3:
        raise DriverError(f"{folder}: not an nnU-Net model folder (<trainer>__<plans>__<configuration>/fold_<f>)")
    return parts


def _stats(values) -> Optional[dict]:
    import numpy as np

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return None
    q = np.percentile(v, [0, 25, 50, 75, 100])
    return {"n": int(v.size), "mean": float(v.mean()), "min": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "max": float(q[4])}


def evaluation_summary(rows: List[dict]) -> dict:
    """Mean Dice per class and of the classes (mean over test cases), from per-case rows."""
    import numpy as np

    per_class: Dict[str, List[float]] = {}
    for r in rows:
        if r.get("dice") is not None:
            per_class.setdefault(r.get("name") or r["class"], []).append(r["dice"])
    means = {c: float(np.mean(v)) for c, v in per_class.items()}
    return {"test_cases": len({r["case"] for r in rows}), "dice_per_class": means,
            "dice_mean_of_classes": float(np.mean(list(means.values()))) if means else None}


def default_call(say: Callable[[str], None]):
    """Run a command with its output appended to ``log``; echo nnU-Net's epoch lines; returns wall seconds
    (the runner of ``nnunet-ext benchmark``)."""
    from nnunet_ext.benchmark.protocol import RunFailed as BenchRunFailed
    from nnunet_ext.benchmark.protocol import Runner

    class _Runner(Runner):
        def say(self, msg):
            say(msg.strip())

    runner = _Runner(types.SimpleNamespace(quiet=False), Path("."), 1)

    def call(cmd, env, log, epochs=None):
        try:
            return runner.call([str(c) for c in cmd], env, Path(log), epochs=epochs)
        except BenchRunFailed as e:
            raise RunFailed(str(e)) from None
    return call


# ------------------------------------------------------------------------------------------------ the rounds
class Rounds:
    """The rounds of one source dataset, configuration and settings in WORK (see the module doc)."""

    def __init__(self, cfg: RoundsConfig, call: Optional[Callable] = None):
        from nnunet_ext.paths import nnunet_folder, resolve_dataset_name

        self.cfg = cfg
        self.t0 = time.time()
        self.work = Path(cfg.workdir).resolve()
        self.raw = nnunet_folder("nnUNet_raw", DriverError)
        self.pre = nnunet_folder("nnUNet_preprocessed", DriverError)
        self.source = resolve_dataset_name(cfg.dataset, DriverError)
        self.source_id = int(self.source[7:10])
        self.src_raw, self.src_pre = self.raw / self.source, self.pre / self.source
        self.round_plans = cfg.round_plans or f"{cfg.plans}_from{self.source_id}"
        self.records = Path(cfg.records).resolve() if cfg.records else None
        self.call = call or default_call(self.say)
        self.ran: List[str] = []  # the steps this invocation ran (not kept)
        self._check_inputs()

    # -------------------------------------------------------------------------------- set-up and checks
    def say(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(f"[pl-rounds {_elapsed(time.time() - self.t0)}] {msg}", flush=True)

    def _check_inputs(self) -> None:
        from nnunet_ext.unlabeled.raw import UNLABELED_DIR, unlabeled_cases

        cfg = self.cfg
        if cfg.rounds > len(cfg.target_ids):
            raise DriverError(f"{cfg.rounds} rounds need {cfg.rounds} --target-ids, got {len(cfg.target_ids)}")
        if self.source_id in cfg.target_ids[:cfg.rounds]:
            raise DriverError(f"--target-ids {cfg.target_ids}: {self.source_id} is the source dataset")
        if not (self.src_raw / "dataset.json").is_file():
            raise DriverError(f"{self.src_raw / 'dataset.json'} not found: the source's raw dataset is needed")
        self.source_json = json.loads((self.src_raw / "dataset.json").read_text())
        self.fe = self.source_json["file_ending"]
        if not unlabeled_cases(self.src_raw, self.source_json)[0]:
            raise DriverError(f"no unlabelled images in {self.src_raw / UNLABELED_DIR}: put them there, named like "
                              f"imagesTr (CASE_0000{self.fe})")
        self.src_plans_file = self.src_pre / f"{cfg.plans}.json"
        if not self.src_plans_file.is_file():
            raise DriverError(f"plans {cfg.plans} of {self.source} not found ({self.src_plans_file}): run "
                              f"nnUNetv2_plan_and_preprocess -d {self.source_id} -c {cfg.configuration} (or nnunet-ext "
                              f"plan-small -d {self.source_id} -c {cfg.configuration} -overwrite_plans_name "
                              f"{cfg.plans})")
        self.src_plans = json.loads(self.src_plans_file.read_text())
        if cfg.configuration not in self.src_plans.get("configurations", {}):
            raise DriverError(f"configuration {cfg.configuration} is not in {self.src_plans_file.name} (has: "
                              f"{', '.join(self.src_plans.get('configurations', {}))})")
        if not (self.src_pre / "dataset_fingerprint.json").is_file():
            raise DriverError(f"{self.src_pre / 'dataset_fingerprint.json'} not found: run "
                              f"nnUNetv2_extract_fingerprint -d {self.source_id}")
        if self.source_identifiers() == []:
            raise DriverError(f"{cfg.configuration} of {cfg.plans} is not preprocessed for {self.source}: run "
                              f"nnUNetv2_preprocess -d {self.source_id} -plans_name {cfg.plans} -c {cfg.configuration}")
        if (cfg.train_list is None) != (cfg.test_list is None):
            raise DriverError("--train-list and --test-list go together")
        if cfg.train_list is not None and cfg.fold != "all":
            raise DriverError("give either -f FOLD or --train-list/--test-list, not both")
        if cfg.fold != "all" and not str(cfg.fold).isdigit():
            raise DriverError(f"-f {cfg.fold}: a fold number or all")
        if cfg.min_stability is not None and not 0 <= cfg.min_stability <= 1:
            raise DriverError(f"--min-stability {cfg.min_stability}: a Dice, in 0..1")
        if cfg.min_stability is not None and cfg.rounds < 2:
            self.say("note: --min-stability applies from round 2 on (round 1 has no previous round)")
        if cfg.seed is not None and cfg.iterations is None:
            raise DriverError("--seed seeds the budget variant: give --iterations too")
        for r, ds_id in enumerate(cfg.target_ids[:cfg.rounds], start=1):
            d = _dataset_dir(self.raw, ds_id)
            if d is not None and not (d / "pseudo_labels.json").is_file():
                raise DriverError(f"{d} exists and was not written by pseudo-label (round {r}'s target): choose other "
                                  f"--target-ids")
        self.train_cases, self.test_cases = self._split_cases()
        self.trainer = self._trainer()
        if cfg.round0_model:
            fold = Path(cfg.round0_model).resolve()
            if not (fold / "checkpoint_final.pth").is_file():
                raise DriverError(f"--round0-model {cfg.round0_model}: no checkpoint_final.pth in it (give the "
                                  f"fold folder of a trained model: .../<trainer>__<plans>__<configuration>/fold_<f>)")
            _, plans, conf = _trainer_parts(fold.parent)
            if conf != cfg.configuration:
                raise DriverError(f"--round0-model {cfg.round0_model}: a {conf} model, not {cfg.configuration}")
            _check_same_network(self.src_plans_file, fold.parent / "plans.json", cfg.configuration, self.source_json,
                                _read_json(fold.parent / "dataset.json") or {}, "--round0-model's plans")

    def source_identifiers(self) -> List[str]:
        return self.identifiers(self.source, self.cfg.plans)

    def identifiers(self, name: str, plans: str) -> List[str]:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_file = self.pre / name / f"{plans}.json"
        if not plans_file.is_file():
            return []
        conf = PlansManager(str(plans_file)).get_configuration(self.cfg.configuration)
        data = self.pre / name / conf.data_identifier
        if not data.is_dir() or not any(data.iterdir()):
            return []
        return sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))

    def _split_cases(self):
        from nnunet_ext.benchmark.protocol import BenchmarkError, read_case_list

        labelled = sorted(p.name[:-len(self.fe)] for p in (self.src_raw / "labelsTr").glob(f"*{self.fe}"))
        if self.cfg.train_list is None:
            return labelled, []
        try:
            train = read_case_list(self.cfg.train_list, self.fe)
            test = read_case_list(self.cfg.test_list, self.fe)
        except BenchmarkError as e:
            raise DriverError(str(e)) from None
        unknown = [c for c in train + test if c not in set(labelled)]
        if unknown:
            raise DriverError(f"{len(unknown)} listed case(s) are not labelled cases of {self.source} (labelsTr), e.g. "
                              f"{', '.join(unknown[:5])}")
        both = sorted(set(train) & set(test))
        if both:
            raise DriverError(f"{len(both)} case(s) are in both --train-list and --test-list, e.g. "
                              f"{', '.join(both[:5])}")
        return sorted(train), sorted(test)

    def _trainer(self) -> str:
        """The trainer every round trains: the budget variant (written to WORK/trainers) or -tr itself."""
        from nnunet_ext.benchmark.protocol import BenchmarkConfig
        from nnunet_ext.benchmark.variant import find_trainer_class, write_variant

        cfg = self.cfg
        saved = os.environ.get("nnUNet_extTrainer")
        os.environ["nnUNet_extTrainer"] = self.env()["nnUNet_extTrainer"]
        try:
            cls = find_trainer_class(cfg.trainer)
        finally:
            if saved is None:
                os.environ.pop("nnUNet_extTrainer", None)
            else:
                os.environ["nnUNet_extTrainer"] = saved
        if cls is None:
            raise DriverError(f"trainer {cfg.trainer} not found (nnU-Net's trainers, nnunet_ext's and the folders on "
                              f"$nnUNet_extTrainer were searched)")
        if cfg.iterations is None:
            return cfg.trainer
        if cfg.iterations < 1:
            raise DriverError("--iterations must be >= 1")
        b = BenchmarkConfig(iterations=cfg.iterations, iterations_per_epoch=cfg.iterations_per_epoch,
                            val_iterations=cfg.val_iterations)
        self.schedule = {"num_epochs": b.num_epochs, "num_iterations_per_epoch": b.ipe,
                         "num_val_iterations_per_epoch": b.vpe, "save_every": 1}
        (self.work / "trainers").mkdir(parents=True, exist_ok=True)
        return write_variant(self.work / "trainers", cls, self.schedule)

    def env(self, results: Optional[Path] = None) -> dict:
        env = ext_trainer_env([self.work / "trainers", *self.cfg.extra_trainer_dirs])
        env["PYTHONUNBUFFERED"] = "1"
        if results is not None:
            env["nnUNet_results"] = str(results)
        if self.cfg.seed is not None:
            env["nnUNet_ext_seed"] = str(self.cfg.seed)
        if "nnUNet_n_proc_DA" not in os.environ and self.device() == "cpu":
            env["nnUNet_n_proc_DA"] = "0"  # as nnunet-ext benchmark: in-process loading, deterministic batches
        return env

    def device(self) -> str:
        if self.cfg.device is None:
            import torch
            self.cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
        return self.cfg.device

    def settings(self) -> dict:
        cfg = self.cfg
        s = {"source": self.source, "configuration": cfg.configuration, "plans": cfg.plans,
             "round_plans": self.round_plans, "trainer": cfg.trainer, "iterations": cfg.iterations,
             "iterations_per_epoch": getattr(self, "schedule", {}).get("num_iterations_per_epoch"),
             "val_iterations": getattr(self, "schedule", {}).get("num_val_iterations_per_epoch"), "seed": cfg.seed,
             "fold": "lists" if cfg.train_list else str(cfg.fold), "train_cases": self.train_cases,
             "test_cases": self.test_cases, "keep": str(cfg.keep), "max_uncertainty": cfg.max_uncertainty,
             "min_stability": cfg.min_stability, "pseudo_label_tta": cfg.pseudo_label_tta, "tta": cfg.tta}
        return s

    def _check_settings(self, folder: Path, fix: str) -> None:
        """Refuse a WORK / RECORDS folder of other settings; write settings.json (target ids: the longest list)."""
        path = folder / "settings.json"
        new = {**self.settings(), "target_ids": self.cfg.target_ids[:self.cfg.rounds]}
        old = _read_json(path)
        if old is not None:
            diff = [k for k in FIXED if old.get(k) != new.get(k)]
            n = min(len(old.get("target_ids", [])), len(new["target_ids"]))
            if folder == self.work and old.get("target_ids", [])[:n] != new["target_ids"][:n]:
                diff.append("target_ids")
            if diff:
                def short(v):
                    return f"[{len(v)} items]" if isinstance(v, list) and len(v) > 4 else json.dumps(v)
                raise DriverError(f"{folder} holds rounds of other settings: "
                                  + ", ".join(f"{k} ({short(old.get(k))} -> {short(new.get(k))})" for k in diff)
                                  + f"; {fix}")
            if len(old.get("target_ids", [])) > len(new["target_ids"]):
                new["target_ids"] = old["target_ids"]
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, new)

    # -------------------------------------------------------------------------------- state
    def state_file(self, r: int, step: str) -> Path:
        return self.work / "state" / f"round{r}_{step}.json"

    def state(self, r: int, step: str) -> Optional[dict]:
        return _read_json(self.state_file(r, step))

    def done(self, r: int, step: str, st: dict) -> None:
        self.state_file(r, step).parent.mkdir(parents=True, exist_ok=True)
        now = _dt.datetime.now().isoformat(timespec="seconds")
        write_json_atomic(self.state_file(r, step), {**st, "finished": now})

    def target(self, r: int):
        """(id, folder name) of round r's dataset (r >= 1)."""
        prefix = self.cfg.target_name_prefix or self.source.split("_", 1)[1] + "PL"
        ds_id = self.cfg.target_ids[r - 1]
        return ds_id, dataset_folder_name(ds_id, f"{prefix}{r}")

    def record_file(self, r: int) -> Optional[Path]:
        return self.records / f"round{r}.json" if self.records is not None else None

    def _outputs_ok(self, r: int, step: str, st: dict) -> bool:
        if step == "train":
            return (Path(st["model"]) / "checkpoint_final.pth").is_file()
        if step == "pseudo_label":
            return (self.raw / st["dataset"] / "pseudo_labels.json").is_file()
        if step == "plans":
            return bool(self.identifiers(st["dataset"], self.round_plans))
        if step == "evaluate":
            return bool(st.get("skipped")) or Path(st["rows"]).is_file()
        if step == "record":
            return self.records is None or self.record_file(r).is_file()
        return True

    # -------------------------------------------------------------------------------- run
    def run(self) -> dict:
        cfg = self.cfg
        self._check_settings(self.work, "use another --workdir, or delete it")
        if self.records is not None:
            self._check_settings(self.records, "give another --records folder, or delete it")
            if all(self.record_file(r).is_file() for r in range(cfg.rounds + 1)):
                self.say(f"all {cfg.rounds + 1} rounds (0..{cfg.rounds}) are recorded in {self.records}: nothing to "
                         f"run")
                return self.summary()
        self.say(f"{self.source} {cfg.configuration} ({cfg.plans}; rounds train with {self.round_plans}), trainer "
                 f"{self.trainer}, {cfg.rounds} round(s) after round 0; work folder {self.work}")
        redo = False  # a chain step was (re)done: every later step is done again (its inputs changed)
        for r in range(cfg.rounds + 1):
            for step in (STEPS_ROUND0 if r == 0 else STEPS):
                st = self.state(r, step)
                if st is not None and not (redo and step != "record") and self._outputs_ok(r, step, st):
                    self.say(f"round {r}/{cfg.rounds} {step}: done (kept)")
                    continue
                if step in CHAIN and (st is not None or self._later_state_exists(r, step)):
                    redo = True  # this step is redone: what was built on it is stale
                t = time.time()
                result = getattr(self, f"_step_{step}")(r, resume=not redo)
                result["wall_s"] = time.time() - t
                self.done(r, step, result)
                self.ran.append(f"round{r}_{step}")
                if step in CHAIN:
                    redo = True
        self.say(f"all {cfg.rounds} round(s) done")
        return self.summary()

    def _later_state_exists(self, r: int, step: str) -> bool:
        """Whether a later step has a state (it was built on what this step is about to redo)."""
        steps = STEPS_ROUND0 if r == 0 else STEPS
        later = [(r, s) for s in steps[steps.index(step) + 1:]] + \
            [(q, s) for q in range(r + 1, self.cfg.rounds + 1) for s in STEPS]
        return any(self.state_file(q, s).is_file() for q, s in later)

    def model(self, r: int) -> dict:
        return self.state(r, "train")

    # ---- round 0 / round r: train
    def _split_file(self, r: int, cases: List[str]) -> Path:
        path = self.work / "split" / f"round{r}_train.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomic(path, lambda tmp: Path(tmp).write_text("\n".join(cases) + "\n"))
        return path

    def _fold(self, r: int, name: str, plans: str, cases: List[str]) -> str:
        """The fold round r trains: appended to its dataset's splits_final.json (lists), or -f."""
        if not self.test_cases:
            return str(self.cfg.fold)
        from nnunet_ext.benchmark.protocol import BenchmarkError, resolve_split

        test = self.work / "split" / "test.txt"
        test.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(test, self.test_cases)
        ns = types.SimpleNamespace(train_list=str(self._split_file(r, cases)), test_list=str(test), fold=None)
        try:
            fold, *_ = resolve_split(ns, self.pre / name, self.identifiers(name, plans), self.fe)
        except BenchmarkError as e:
            raise DriverError(str(e)) from None
        return str(fold)

    def _step_train(self, r: int, resume: bool) -> dict:
        cfg = self.cfg
        if r == 0 and cfg.round0_model:
            fold_dir = Path(cfg.round0_model).resolve()
            trainer, plans, _ = _trainer_parts(fold_dir.parent)
            self.say(f"round 0/{cfg.rounds} train: the given model {fold_dir}")
            return {"model": str(fold_dir), "trainer": trainer, "plans": plans, "fold": fold_dir.name[5:],
                    "dataset": self.source, "results": str(fold_dir.parent.parent.parent), "given": True}
        if r == 0:
            name, plans, cases = self.source, cfg.plans, self.train_cases
        else:
            pl = self.state(r, "pseudo_label")
            name, plans, cases = pl["dataset"], self.round_plans, sorted(self.train_cases + pl["kept"])
        fold = self._fold(r, name, plans, cases)
        results = self.work / "results" / f"round{r}"
        fold_dir = results / name / f"{self.trainer}__{plans}__{cfg.configuration}" / f"fold_{fold}"
        cmd = [console_script("nnUNetv2_train"), name, cfg.configuration, fold, "-tr", self.trainer, "-p", plans,
               "-device", self.device()]
        final, latest = fold_dir / "checkpoint_final.pth", fold_dir / "checkpoint_latest.pth"
        wall = 0.0
        if resume and final.is_file():  # trained before the step's state was written
            self.say(f"round {r}/{cfg.rounds} train: {final} is there (kept)")
        else:
            if resume and latest.is_file():
                cmd.append("--c")
            elif final.is_file() or latest.is_file():  # trained on inputs that were redone since: start again
                shutil.rmtree(fold_dir)
            epochs = getattr(self, "schedule", {}).get("num_epochs")
            how = "continuing (--c)" if "--c" in cmd else "training"
            self.say(f"round {r}/{cfg.rounds} train: {how} {self.trainer} on {name} ({len(cases)} case(s), fold "
                     f"{fold}" + (f", {epochs} epochs" if epochs else "")
                     + f"), log {self.work / 'logs' / f'round{r}_train.log'}")
            wall = self.call(cmd, self.env(results), self.work / "logs" / f"round{r}_train.log", epochs)
        if not (fold_dir / "checkpoint_final.pth").is_file():
            raise RunFailed(f"nnUNetv2_train ended without {fold_dir / 'checkpoint_final.pth'}; see "
                            f"{self.work / 'logs' / f'round{r}_train.log'}")
        _check_same_network(self.src_plans_file, fold_dir.parent / "plans.json", cfg.configuration, self.source_json,
                            _read_json(fold_dir.parent / "dataset.json") or {}, f"round {r}'s model")
        self.say(f"round {r}/{cfg.rounds} train: done in {_elapsed(wall)}")
        return {"model": str(fold_dir), "trainer": self.trainer, "plans": plans, "fold": fold, "dataset": name,
                "results": str(results), "train_cases": len(cases), "train_wall_s": wall}

    # ---- round r: pseudo-label
    def _step_pseudo_label(self, r: int, resume: bool) -> dict:
        cfg = self.cfg
        prev = self.model(r - 1)
        ds_id, name = self.target(r)
        view = self.work / "view" / f"round{r}"
        link = view / self.source / f"{prev['trainer']}__{prev['plans']}__{cfg.configuration}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(str(Path(prev["model"]).parent), link, symlink=True, replace=True)
        cmd = [console_script("nnunet-ext"), "pseudo-label", "-d", self.source, "-c", cfg.configuration, "-tr",
               prev["trainer"], "-p", prev["plans"], "-f", prev["fold"], "--target-id", ds_id, "--target-name",
               name.split("_", 1)[1], "--keep", cfg.keep, "-device", self.device(), "-q"]
        n = cfg.num_processes if cfg.num_processes > 1 else 0  # -np 1: everything in the one process
        cmd += ["-npp", n, "-nps", n]
        if cfg.max_uncertainty is not None:
            cmd += ["--max-uncertainty", cfg.max_uncertainty]
        if r >= 2:
            cmd += ["--previous", self.raw / self.state(r - 1, "pseudo_label")["dataset"]]
            if cfg.min_stability is not None:
                cmd += ["--min-stability", cfg.min_stability]
        if not cfg.pseudo_label_tta:
            cmd.append("--disable-tta")
        if _dataset_dir(self.raw, ds_id) is not None:
            cmd.append("--overwrite")  # an unfinished step's (or a redone round's) dataset: written again
        self.say(f"round {r}/{cfg.rounds} pseudo_label: round {r - 1}'s model predicts the unlabelled images of "
                 f"{self.source} -> {name}")
        self.call(cmd, self.env(view), self.work / "logs" / f"round{r}_pseudo_label.log")
        record = json.loads((self.raw / name / "pseudo_labels.json").read_text())
        kept = sorted(c for c, v in record["cases"].items() if v.get("kept"))
        self.say(f"round {r}/{cfg.rounds} pseudo_label: kept {len(kept)} of {record['predicted']}")
        return {"dataset": name, "id": ds_id, "kept": kept, "predicted": record["predicted"],
                "previous": record.get("previous")}

    # ---- round r: the source's plans, preprocessing
    def _step_plans(self, r: int, resume: bool) -> dict:
        cfg = self.cfg
        pl = self.state(r, "pseudo_label")
        name, ds_id = pl["dataset"], pl["id"]
        pre = self.pre / name
        pre.mkdir(parents=True, exist_ok=True)
        for src in (self.raw / name / "dataset.json", self.src_pre / "dataset_fingerprint.json"):
            data = src.read_bytes()
            replace_atomic(pre / src.name, lambda tmp, data=data: Path(tmp).write_bytes(data))
        np_ = str(max(1, cfg.num_processes))
        log = self.work / "logs" / f"round{r}_plans.log"
        self.say(f"round {r}/{cfg.rounds} plans: {cfg.plans} of {self.source} -> {self.round_plans} of {name}; "
                 f"preprocessing {cfg.configuration}")
        self.call([console_script("nnUNetv2_move_plans_between_datasets"), "-s", self.source, "-t", ds_id, "-sp",
                   cfg.plans, "-tp", self.round_plans], self.env(), log)
        _check_same_network(self.src_plans_file, pre / f"{self.round_plans}.json", cfg.configuration, self.source_json,
                            json.loads((pre / "dataset.json").read_text()), f"the plans moved to {name}")
        self.call([console_script("nnUNetv2_preprocess"), "-d", ds_id, "-plans_name", self.round_plans, "-c",
                   cfg.configuration, "-np", np_], self.env(), log)
        n = len(self.identifiers(name, self.round_plans))
        if not n:
            raise RunFailed(f"nnUNetv2_preprocess wrote no cases for {name}; see {log}")
        return {"dataset": name, "plans": self.round_plans, "preprocessed_cases": n, "same_network_as": str(
            self.src_plans_file)}

    # ---- every round: evaluation on the test cases, the record
    def _rows_record(self, r: int) -> Optional[Path]:
        return self.records / f"round{r}_rows.json.gz" if self.records is not None else None

    def _step_evaluate(self, r: int, resume: bool) -> dict:
        cfg = self.cfg
        if not self.test_cases:
            return {"rows": None, "skipped": "no --test-list"}
        rec = self._rows_record(r)
        if rec is not None and rec.is_file() and self.record_file(r).is_file():
            self.say(f"round {r}/{cfg.rounds} evaluate: recorded in {rec} (kept)")
            return {"rows": str(rec), "from_records": True}
        from nnunet_ext.benchmark.protocol import prepare_test_data
        from nnunet_ext.benchmark.report import collect_rows
        from nnunet_ext.evaluation import EvaluationError, evaluate_folders

        img_dir, lab_dir = prepare_test_data(self.work, self.src_raw, self.source_json, self.test_cases)
        m = self.model(r)
        out = self.work / "eval" / f"round{r}"
        pred = out / "pred"
        shutil.rmtree(pred, ignore_errors=True)
        n = cfg.num_processes
        cmd = [console_script("nnUNetv2_predict"), "-i", img_dir, "-o", pred, "-d", m["dataset"], "-c",
               cfg.configuration, "-f", m["fold"], "-tr", m["trainer"], "-p", m["plans"], "-device", self.device(),
               "-npp", n if n > 1 else 0, "-nps", n if n > 1 else 0, "--disable_progress_bar"]
        if not cfg.tta:
            cmd.append("--disable_tta")
        self.say(f"round {r}/{cfg.rounds} evaluate: predicting {len(self.test_cases)} test case(s)")
        self.call(cmd, self.env(Path(m["results"])), self.work / "logs" / f"round{r}_evaluate.log")
        try:
            res = evaluate_folders(str(lab_dir), str(pred), labels=None, tolerance=1.0, num_processes=n,
                                   out_dir=str(out / "metrics"), file_ending=self.fe,
                                   dataset_json=str(self.src_raw / "dataset.json"), progress=False)
        except EvaluationError as e:
            raise RunFailed(f"evaluation of {pred} failed: {e}") from None
        rows = collect_rows(res, f"round{r}", cfg.seed or 0)
        write_json_atomic(out / "rows.json", rows)
        s = evaluation_summary(rows)
        self.say(f"round {r}/{cfg.rounds} evaluate: mean Dice {s['dice_mean_of_classes']:.4f} "
                 f"({', '.join(f'{k} {v:.4f}' for k, v in s['dice_per_class'].items())})")
        return {"rows": str(out / "rows.json")}

    def rows(self, r: int) -> Optional[List[dict]]:
        """Round r's per-case evaluation rows (from WORK, else from the records), or None."""
        st = self.state(r, "evaluate")
        if st is not None and not st.get("skipped") and Path(st["rows"]).is_file() and not st.get("from_records"):
            return json.loads(Path(st["rows"]).read_text())
        rec = self._rows_record(r)
        if rec is not None and rec.is_file():
            return json.loads(gzip.decompress(rec.read_bytes()))
        return None

    def _step_record(self, r: int, resume: bool) -> dict:
        rec = self.round_record(r)
        if self.records is not None:
            if self.record_file(r).is_file() and self._rows_record(r).is_file():
                return {"record": str(self.record_file(r)), "kept_earlier": True}
            rows = self.rows(r)
            if rows is not None:
                data = gzip.compress(json.dumps(rows, separators=(",", ":")).encode(), mtime=0)
                replace_atomic(self._rows_record(r), lambda tmp: Path(tmp).write_bytes(data))
            write_json_atomic(self.record_file(r), rec)  # last: marks the round recorded
            self.say(f"round {r}/{self.cfg.rounds} record: {self.record_file(r)}")
        return {"record": str(self.record_file(r)) if self.records is not None else None}

    def round_record(self, r: int) -> dict:
        """What a round is remembered by: counts, stability and uncertainty statistics, wall times, evaluation."""
        cfg = self.cfg
        steps = STEPS_ROUND0 if r == 0 else STEPS
        walls = {s: (self.state(r, s) or {}).get("wall_s") for s in steps if s != "record"}
        m = self.model(r) or {}
        rec = {"round": r, "source": self.source, "dataset": m.get("dataset"), "settings": self.settings(),
               "date": _dt.datetime.now().isoformat(timespec="seconds"),
               "train": {k: m.get(k) for k in ("trainer", "plans", "fold", "train_cases", "train_wall_s", "given")},
               "wall_s": walls}
        rec["settings"].pop("train_cases")
        rec["settings"].pop("test_cases")
        if r >= 1:
            pl = json.loads((self.raw / self.state(r, "pseudo_label")["dataset"] / "pseudo_labels.json").read_text())
            cases = pl["cases"]
            predicted = {c: v for c, v in cases.items() if "uncertainty" in v}
            kept = [c for c, v in cases.items() if v.get("kept")]
            stab = [v.get("stability") for v in predicted.values()]
            info = {"labelled": pl["labelled"], "predicted": len(predicted), "kept": len(kept),
                    "skipped": sorted(c for c, v in cases.items() if "uncertainty" not in v),
                    "empty": sum(1 for v in predicted.values() if v.get("foreground_voxels", 0) == 0),
                    "keep": pl.get("keep"), "max_uncertainty": pl.get("max_uncertainty"),
                    "previous": pl.get("previous"), "min_stability": pl.get("min_stability"),
                    "uncertainty_predicted": _stats(v["uncertainty"] for v in predicted.values()),
                    "uncertainty_kept": _stats(cases[c]["uncertainty"] for c in kept)}
            if r >= 2:
                info["stability"] = _stats(stab)
                info["stability_missing"] = sorted(c for c, v in predicted.items() if v.get("stability") is None)
                if cfg.min_stability is not None:
                    info["below_min_stability"] = sum(1 for s in stab if s is not None and s < cfg.min_stability)
            rec["pseudo_labels"] = info
        rows = self.rows(r)
        if rows is not None:
            rec["evaluation"] = {**evaluation_summary(rows), "rows": f"round{r}_rows.json.gz"}
        return rec

    def summary(self) -> dict:
        """Per round: its record (from RECORDS where there, else from WORK) and its per-case rows."""
        out = {"source": self.source, "rounds": {}}
        for r in range(self.cfg.rounds + 1):
            f = self.record_file(r)
            rec = _read_json(f) if f is not None and f.is_file() else None
            if rec is None and self.state(r, "record") is not None:
                rec = self.round_record(r)
            if rec is not None:
                out["rounds"][r] = {"record": rec, "rows": self.rows(r)}
        return out


def run_rounds(cfg: RoundsConfig, call: Optional[Callable] = None) -> dict:
    """Run (or continue) the rounds; returns :meth:`Rounds.summary` (per round: record and per-case rows)."""
    return Rounds(cfg, call).run()


def summary_markdown(summary: dict) -> str:
    """One line per round: dataset, kept / predicted, stability, Dice on the test cases, training wall time."""
    lines = ["| round | dataset | kept / predicted | stability median [q25, q75] (below min) | mean Dice (test) | "
             "training wall time |", "|---|---|---|---|---|---|"]
    for r, v in sorted(summary["rounds"].items(), key=lambda kv: int(kv[0])):
        rec = v["record"]
        pl = rec.get("pseudo_labels") or {}
        st = pl.get("stability")
        stab = (f"{st['median']:.3f} [{st['q25']:.3f}, {st['q75']:.3f}]"
                + (f" ({pl['below_min_stability']})" if "below_min_stability" in pl else "")) if st else "-"
        kept = f"{pl['kept']} / {pl['predicted']}" if pl else "-"
        ev = (rec.get("evaluation") or {}).get("dice_mean_of_classes")
        wall = (rec.get("train") or {}).get("train_wall_s")
        lines.append(f"| {r} | {rec.get('dataset')} | {kept} | {stab} | {'-' if ev is None else f'{ev:.4f}'} | "
                     f"{_elapsed(wall) if wall else '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        cfg = parse_args(argv)
        summary = run_rounds(cfg)
    except UserError as e:
        print(f"pseudo_label_rounds: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"pseudo_label_rounds: {e}", file=sys.stderr)
        print("finished steps are kept: re-run the same command to continue", file=sys.stderr)
        return 1
    if not cfg.quiet:
        print(summary_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
