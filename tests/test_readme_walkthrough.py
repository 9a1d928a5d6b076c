"""The README's "Use, in order" commands, run as written on a tiny synthetic Hippocampus-like dataset.

The commands are read from README.md itself: the ```bash blocks of the section "## Use, in order" (convert,
plan and preprocess, train stock / FD / FD --c, predict, evaluate) and of its sub-section "### Training on
a CPU" (plan-small, the *_smallBudget trainers, predict). Backslash-continued lines are joined, comments
dropped, and each command runs through ``bash -c`` (so ``$nnUNet_raw`` expands) in a temporary checkout-like
folder ``<tmp>/main`` whose sibling ``<tmp>/shared/data/msd_hippocampus`` is a synthetic flat MSD copy (so
the README's ``--source ../shared/data/msd_hippocampus`` is used as written), with nnU-Net's folders in
the temporary directory, one worker process, no torch.compile and 2 threads. So the README cannot drift
from the code: a renamed verb, option, trainer or output path fails here.

The command text is changed only by ``SUBSTITUTIONS`` (below, each with its reason), and each must match
the README, so a README edit that makes one stale fails too instead of silently walking something else.
The results are checked, not only the exit codes: the held-out split, the trained folds, --c resuming the
finished run, one prediction per imagesTs case with the image's geometry, and a Dice above chance (the
criterion of test_fd_end_to_end.py) in evaluate's per_case.csv.

Runtime, measured on 2 cores shared with other test runs (load average 5-7): about 5 min, 3.4 min for
"Use, in order" and 1.6 min for "Training on a CPU" (deselect it with -k 'not training_on_a_cpu'). Most of
it is process start-up: 11 nnU-Net / nnunet-ext commands and their spawned workers import torch and nnU-Net
(~7 s of CPU each); the training itself is 3 x 10 iterations for the scored 3d FD run, 1 x 3 for the others.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import REPO

README = REPO / "README.md"
SECTION = "## Use, in order"
CPU_SUBSECTION = "### Training on a CPU"
DATASET = "Dataset004_Hippocampus"
SOURCE = "shared/data/msd_hippocampus"  # under the temp root, = ../shared/data/msd_hippocampus from <tmp>/main
NUM_CASES = 15  # --test-fraction 0.2 holds out 3: 12 training, 3 test cases (as test_fd_end_to_end.py)
# short-schedule test trainers without final validation (tests/ext_trainers/readme_walk_trainers.py)
STOCK, FD, FD_MICRO = "nnUNetTrainer_readmeWalk", "nnUNetTrainerFD_readmeWalk", "nnUNetTrainerFD_readmeWalkMicro"

#: Every change made to the README's command text: regex -> replacement, applied in this order to every
#: command; each must match at least once (test_readme_walk_is_found_and_every_substitution_matches).
SUBSTITUTIONS = {
    # 1. The walk trains 3d_fullres only (the CPU part plans its own 2d with plan-small): no 2d preprocessing.
    r"^(nnUNetv2_plan_and_preprocess\b.*-c 3d_fullres) 2d\b": r"\1",
    # 2. Short schedules: nnU-Net's 1000 x 250 iterations and the CPU budget's 30 x 50 become 3 x 10 for the
    #    3d_fullres FD run (its prediction is scored) and 1 x 3 for the others, without the final validation.
    #    nnU-Net looks a trainer up by class name and finds its own nnUNetTrainer first, so a short schedule
    #    cannot be slipped in under the README's names. The --c line resumes the same FD run.
    r"^(nnUNetv2_train\b(?!.*\s-tr\s).*)$": rf"\1 -tr {STOCK}",  # the implicit stock trainer
    r"-tr nnUNetTrainerFD(?=\s|$)": f"-tr {FD}",  # train, --c and predict
    r"-tr nnUNetTrainer_smallBudget\b": f"-tr {STOCK}",
    r"-tr nnUNetTrainerFD_smallBudget\b": f"-tr {FD_MICRO}",  # train and predict
    # 3. The README's own CPU note ("CPU: add -device cpu"), where a command does not say it already.
    r"^((?:nnUNetv2_train|nnUNetv2_predict)\b(?!.*\s-device\s).*)$": r"\1 -device cpu",
    # 4. One worker process (as conftest's fixtures): nnU-Net's defaults start 8 fingerprint, 4 preprocessing,
    #    3 + 3 prediction processes, evaluate min(CPU count, 8); each spawned worker costs seconds on 2 cores.
    r"^(nnUNetv2_plan_and_preprocess\b.*)$": r"\1 -npfp 1 -np 1",
    r"^(nnUNetv2_predict\b.*)$": r"\1 -npp 1 -nps 1",
    r"^(nnunet-ext evaluate\b.*)$": r"\1 -np 1",
}


# ------------------------------------------------------------------------------------------- README
def readme_blocks(text: str) -> dict:
    """{heading: [commands]} of the bash blocks of SECTION (heading SECTION) and of its ### sub-sections."""
    lines = text.splitlines()
    assert SECTION in lines, f"README.md has no line {SECTION!r}"
    blocks, heading, block = {}, SECTION, None
    for line in lines[lines.index(SECTION) + 1:]:
        if block is None and line.startswith("## "):
            break
        if block is None and line.startswith("### "):
            heading = line.strip()
        elif block is None and line.strip() == "```bash":
            block = []
        elif block is not None and line.strip() == "```":
            blocks.setdefault(heading, []).extend(shell_commands(block))
            block = None
        elif block is not None:
            block.append(line)
    return blocks


def shell_commands(lines) -> list:
    """Commands of a code block: backslash-continued lines joined, comments (whole-line and trailing) dropped."""
    joined, cur = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        joined.append(cur + line)
        cur = ""
    out = []
    for cmd in joined:
        cmd = re.sub(r"(^|\s)#.*$", "", cmd)  # '#' at the start of a word starts a bash comment
        cmd = " ".join(cmd.split())
        if cmd:
            out.append(cmd)
    return out


def substitute(cmds, counts: dict | None = None) -> list:
    out = []
    for cmd in cmds:
        for pattern, repl in SUBSTITUTIONS.items():
            cmd, n = re.subn(pattern, repl, cmd)
            if counts is not None:
                counts[pattern] = counts.get(pattern, 0) + n
        out.append(cmd)
    return out


@pytest.fixture(scope="module")
def readme():
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    assert list(blocks) == [SECTION, CPU_SUBSECTION], f"bash blocks found under: {list(blocks)}"
    return blocks


def test_readme_walk_is_found_and_every_substitution_matches(readme):
    counts = {}
    use, cpu = substitute(readme[SECTION], counts), substitute(readme[CPU_SUBSECTION], counts)
    stale = [p for p, n in counts.items() if n == 0]
    assert not stale, f"SUBSTITUTIONS that no longer match README.md (update them): {stale}"
    assert [" ".join(c.split()[:2]) for c in use] == [
        "nnunet-ext convert", "nnUNetv2_plan_and_preprocess -d", "nnUNetv2_train 4", "nnUNetv2_train 4",
        "nnUNetv2_train 4", "nnUNetv2_predict -i", "nnunet-ext evaluate"], use
    assert use[0] == ("nnunet-ext convert msd_flat --source ../shared/data/msd_hippocampus --id 4 "
                      "--test-fraction 0.2")  # run unchanged (the test writes that folder)
    assert "--verify_dataset_integrity" in use[1]
    assert use[2].endswith(f"-tr {STOCK} -device cpu") and use[3].endswith(f"-tr {FD} -device cpu")
    assert use[4].endswith(f"-tr {FD} --c -device cpu") and f"-tr {FD} " in use[5]
    assert [" ".join(c.split()[:2]) for c in cpu] == ["nnunet-ext plan-small", "nnUNetv2_train 4", "nnUNetv2_train 4",
                                                      "nnUNetv2_predict -i"], cpu
    assert f"-tr {STOCK} " in cpu[1] and f"-tr {FD_MICRO} " in cpu[2] and f"-tr {FD_MICRO} " in cpu[3]
    assert "-p nnUNetPlans_small" in cpu[3] and cpu[3].count("-device cpu") == 1  # continuation line joined


def test_shell_commands_joins_continuations_and_drops_comments():
    block = ["# a comment", "cmd1 -a $X   # trailing", "cmd2 -i a \\", "    -o b#c \\", "  -d 4", "", "cmd3 --c #"]
    assert shell_commands(block) == ["cmd1 -a $X", "cmd2 -i a -o b#c -d 4", "cmd3 --c"]


# ------------------------------------------------------------------------------------------- running
def write_msd_flat_source(folder: Path) -> None:
    """A flat MSD copy (images/ + labels/ hippocampus_XXX.nii.gz) of tiny phantoms (synthetic.TEST_SPEC)."""
    from nnunet_ext.core.synthetic import TEST_SPEC, generate_dataset_3d

    gen = Path(generate_dataset_3d(str(folder.parent / "generated"), 998, num_train=NUM_CASES, spec=TEST_SPEC, seed=1))
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i, label in enumerate(sorted((gen / "labelsTr").glob("*.nii.gz"))):
        case = f"hippocampus_{2 * i + 1:03d}.nii.gz"  # MSD's numbering has gaps
        os.replace(gen / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz"), folder / "images" / case)
        os.replace(label, folder / "labels" / case)


class Walk:
    """Runs README commands with ``bash -c`` in ``<root>/main``; keeps a timed transcript."""

    def __init__(self, root: Path, env: dict):
        self.cwd, self.env, self.log = root / "main", env, []
        self.cwd.mkdir()
        self.raw, self.pre, self.res = (Path(env[k]) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))

    def run(self, cmd: str) -> None:
        t0 = time.time()
        proc = subprocess.run(["bash", "-c", cmd], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=900)
        self.log.append(f"[{time.time() - t0:5.1f} s, exit {proc.returncode}] {cmd}")
        if proc.returncode != 0:
            raise AssertionError("README command failed:\n  " + "\n  ".join(self.log) +
                                 f"\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")

    def fold(self, trainer: str, plans: str, config: str) -> Path:
        return self.res / DATASET / f"{trainer}__{plans}__{config}" / "fold_0"


@pytest.fixture(scope="module")
def walk(nnunet_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("readme_walk")
    write_msd_flat_source(root / SOURCE)
    # conftest's environment (our trainers and the test trainers on nnUNet_extTrainer, 1 worker, no compile,
    # 2 threads) with this walk's own nnU-Net folders, and this interpreter's console scripts first on PATH
    env = dict(nnunet_env, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(root / var)
        os.makedirs(env[var])
    return Walk(root, env)


@pytest.fixture(scope="module")
def use_in_order(readme, walk):
    """Runs the commands of "Use, in order"; returns the training logs of the FD run before its --c."""
    convert, plan, train_stock, train_fd, resume, predict, evaluate = substitute(readme[SECTION])
    for cmd in (convert, plan, train_stock, train_fd):
        walk.run(cmd)
    logs_before_resume = sorted(walk.fold(FD, "nnUNetPlans", "3d_fullres").glob("training_log_*.txt"))
    for cmd in (resume, predict, evaluate):
        walk.run(cmd)
    return logs_before_resume


def _epochs(training_log: Path) -> list:
    """The epochs a training log reports starting (nnU-Net writes '<time>: Epoch N ')."""
    return re.findall(r"^[^\n]*: Epoch (\d+)\s*$", training_log.read_text(), re.M)


def _check_predictions(pred_dir: Path, images_ts: Path) -> list:
    """One prediction per imagesTs case, with the image's size, spacing, origin and direction; returns the cases."""
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in images_ts.glob("*_0000.nii.gz"))
    assert cases
    assert sorted(p.name[:-len(".nii.gz")] for p in pred_dir.glob("*.nii.gz")) == cases
    for case in cases:
        pred = sitk.ReadImage(str(pred_dir / f"{case}.nii.gz"))
        img = sitk.ReadImage(str(images_ts / f"{case}_0000.nii.gz"))
        assert pred.GetSize() == img.GetSize()
        assert np.allclose(pred.GetSpacing(), img.GetSpacing())
        assert np.allclose(pred.GetOrigin(), img.GetOrigin())
        assert np.allclose(pred.GetDirection(), img.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2}
    return cases


def _assert_dice_above_chance(rows, labels_dir: Path, context) -> None:
    """test_fd_end_to_end.py's criterion on per_case.csv rows: chance = the Dice of a random labelling with
    the true class frequency; the mean foreground Dice far above it, every class above it."""
    dice, chance = {1: [], 2: []}, {1: [], 2: []}
    for r in rows:
        c = int(r["class"])
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_dir / f"{r['case']}.nii.gz")))
        dice[c].append(float(r["dice"]))
        chance[c].append((ref == c).mean())
    fg_dice = np.mean([np.mean(v) for v in dice.values()])
    fg_chance = np.mean([np.mean(v) for v in chance.values()])
    assert fg_dice > 5 * fg_chance, (dice, chance, context)
    for c in (1, 2):
        assert np.mean(dice[c]) > 2 * np.mean(chance[c]), (c, dice, chance, context)


def test_use_in_order(use_in_order, walk):
    ds = walk.raw / DATASET
    # convert: 20% held out in imagesTs/labelsTs, not in imagesTr
    test_cases = sorted(p.name for p in (ds / "labelsTs").glob("*.nii.gz"))
    assert len(test_cases) == round(0.2 * NUM_CASES)
    assert len(list((ds / "imagesTr").glob("*.nii.gz"))) == NUM_CASES - len(test_cases)
    assert not set(test_cases) & {p.name for p in (ds / "labelsTr").glob("*.nii.gz")}
    # plan and preprocess (the integrity check passed: the command would have failed)
    assert "3d_fullres" in json.loads((walk.pre / DATASET / "nnUNetPlans.json").read_text())["configurations"]
    # train stock and FD, resume FD with --c
    assert (walk.fold(STOCK, "nnUNetPlans", "3d_fullres") / "checkpoint_final.pth").is_file()
    fd = walk.fold(FD, "nnUNetPlans", "3d_fullres")
    first = use_in_order
    assert len(first) == 1 and _epochs(first[0]) == ["0", "1", "2"]
    resumed = [p for p in fd.glob("training_log_*.txt") if p not in first]
    assert len(resumed) == 1, "--c started no new training log"
    # --c on the finished run: checkpoint_final loaded, no epoch trained again, the run ends normally
    assert _epochs(resumed[0]) == [] and "Training done." in resumed[0].read_text()
    ckpt = torch.load(fd / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 3 and ckpt["trainer_name"] == FD
    # predict: every imagesTs case, geometry kept
    cases = _check_predictions(walk.cwd / "preds", ds / "imagesTs")
    # evaluate: per_case.csv, every case and class, Dice above chance
    with open(walk.cwd / "preds_eval" / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["case"], r["class"]) for r in rows) == [(c, k) for c in cases for k in ("1", "2")]
    _assert_dice_above_chance(rows, ds / "labelsTs", walk.log)
    print("\n".join(walk.log))


def test_training_on_a_cpu(readme, use_in_order, walk):
    """The CPU route on the dataset of "Use, in order" (its fingerprint is reused). One epoch of 3 iterations
    cannot segment: the prediction is checked for completeness and geometry, not for its Dice."""
    plan_small, train_stock, train_fd, predict = substitute(readme[CPU_SUBSECTION])
    n_before = len(walk.log)
    walk.run(plan_small)
    plans = json.loads((walk.pre / DATASET / "nnUNetPlans_small.json").read_text())
    default = json.loads((walk.pre / DATASET / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["batch_size"] <= default["configurations"]["2d"]["batch_size"]
    assert any((walk.pre / DATASET / plans["configurations"]["2d"]["data_identifier"]).iterdir())
    walk.run(train_stock)
    assert (walk.fold(STOCK, "nnUNetPlans_small", "2d") / "checkpoint_final.pth").is_file()
    walk.run(train_fd)
    assert (walk.fold(FD_MICRO, "nnUNetPlans_small", "2d") / "checkpoint_final.pth").is_file()
    walk.run(predict)
    _check_predictions(walk.cwd / "preds_small", walk.raw / DATASET / "imagesTs")
    print("\n".join(walk.log[n_before:]))
