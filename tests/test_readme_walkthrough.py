"""The README's walk-through, run as written on a tiny synthetic Task04_Hippocampus.

The commands are read from README.md itself: the ```bash blocks of the section "## Environment" (the nnU-Net
folders), of "## Use, in order" (download, unpack, convert the MSD task with a held-out test
split, plan and preprocess, train stock / FD / FD --c, predict, evaluate) and of its sub-section "### Training on a
CPU" (plan-small, the *_smallBudget trainers, predict, evaluate). Backslash-continued lines are joined, comments
dropped, and the commands run one after the other through ``bash -c`` like one shell session: each starts in the
folder and with the environment the previous one left (``cd`` and ``export`` carry over). ``HOME`` is a temporary
folder, so the README's ``$HOME/nnunet_work`` is too; the walk starts in an empty folder standing for the checkout,
and nnU-Net's folders are not set beforehand: the README's own ``export`` must set them, outside the checkout.
The download is the only command that cannot run as written (no network in CI): it is replaced by a copy of a
synthetic ``Task04_Hippocampus.tar`` in the MSD layout (``imagesTr``, ``labelsTr``, unlabelled ``imagesTs``,
MSD's ``dataset.json``, and macOS ``._*`` files, which nnU-Net's own MSD converter also skips). So the README
cannot drift from the code: a renamed verb, option, trainer or output path, or a command sequence that does not
chain, fails here.

The command text is changed only by ``SUBSTITUTIONS`` (below, each with its reason), and each must match the README,
so a README edit that makes one stale fails too instead of silently walking something else. The results are
checked, not only the exit codes: the held-out split, the trained folds, --c resuming the finished run, one
prediction per imagesTs case with the image's geometry, and a Dice above chance (the criterion of
test_fd_end_to_end.py) in evaluate's per_case.csv.

Runtime on 2 cores shared with other work: 5-7 min (deselect the CPU route with -k 'not training_on_a_cpu').
Most of it is process start-up: about 13 nnU-Net / nnunet-ext commands and their spawned workers import torch and
nnU-Net (~7 s of CPU each); the training itself is 3 x 10 iterations for the scored 3d FD run, 1 x 3 for the others.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import REPO

README = REPO / "README.md"
ENV_SECTION = "## Environment"
SECTION = "## Use, in order"
CPU_SUBSECTION = "### Training on a CPU"
DATASET = "Dataset004_Hippocampus"
TASK = "Task04_Hippocampus"
NUM_CASES = 15  # --test-fraction 0.2 holds out 3: 12 training, 3 test cases (as test_fd_end_to_end.py)
NUM_UNLABELLED = 2  # MSD's imagesTs: images without labels (convert moves them to imagesUnlabeled)
# short-schedule test trainers without final validation (tests/ext_trainers/readme_walk_trainers.py)
STOCK, FD, FD_MICRO = "nnUNetTrainer_readmeWalk", "nnUNetTrainerFD_readmeWalk", "nnUNetTrainerFD_readmeWalkMicro"

#: Every change made to the README's command text: regex -> replacement, applied in this order to every
#: command; each must match at least once (test_readme_walk_is_found_and_every_substitution_matches).
SUBSTITUTIONS = {
    # 1. The test's interpreter and trainer folders (conftest: ours and the test trainers on nnUNet_extTrainer)
    #    are set already; env.sh would activate the checkout's ./.venv, which need not be the interpreter under test.
    r"^source scripts/env\.sh$": "true",
    # 2. No network in CI: the download is a copy of the synthetic task archive ($WALK_ARCHIVE, made by the test).
    r"^curl -LO https://\S+/Task04_Hippocampus\.tar$": 'cp "$WALK_ARCHIVE" .',
    # 3. The walk trains 3d_fullres only (the CPU part plans its own 2d with plan-small): no 2d preprocessing.
    r"^(nnUNetv2_plan_and_preprocess\b.*-c 3d_fullres) 2d\b": r"\1",
    # 4. Short schedules: nnU-Net's 1000 x 250 iterations and the CPU budget's 30 x 50 become 3 x 10 for the
    #    3d_fullres FD run (its prediction is scored) and 1 x 3 for the others, without the final validation.
    #    nnU-Net looks a trainer up by class name and finds its own nnUNetTrainer first, so a short schedule
    #    cannot be slipped in under the README's names. The --c line resumes the same FD run.
    r"^(nnUNetv2_train\b(?!.*\s-tr\s).*)$": rf"\1 -tr {STOCK}",  # the implicit stock trainer
    r"-tr nnUNetTrainerFD(?=\s|$)": f"-tr {FD}",  # train, --c and predict
    r"-tr nnUNetTrainer_smallBudget\b": f"-tr {STOCK}",
    r"-tr nnUNetTrainerFD_smallBudget\b": f"-tr {FD_MICRO}",  # train and predict
    # 5. The README's own CPU note ("CPU: add -device cpu"), where a command does not say it already.
    r"^((?:nnUNetv2_train|nnUNetv2_predict)\b(?!.*\s-device\s).*)$": r"\1 -device cpu",
    # 6. One worker process (as conftest's fixtures): nnU-Net's defaults start 8 fingerprint, 4 preprocessing,
    #    3 + 3 prediction processes, evaluate min(CPU count, 8); each spawned worker costs seconds on 2 cores.
    r"^(nnUNetv2_plan_and_preprocess\b.*)$": r"\1 -npfp 1 -np 1",
    r"^(nnUNetv2_predict\b.*)$": r"\1 -npp 1 -nps 1",
    r"^(nnunet-ext evaluate\b.*)$": r"\1 -np 1",
}


# ------------------------------------------------------------------------------------------- README
def section_blocks(text: str, section: str) -> dict:
    """{heading: [commands]} of the bash blocks of ``section`` (a '## ' heading) and of its ### sub-sections."""
    lines = text.splitlines()
    assert section in lines, f"README.md has no line {section!r}"
    blocks, heading, block = {}, section, None
    for line in lines[lines.index(section) + 1:]:
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


def heads(cmds, n: int = 2) -> list:
    return [" ".join(c.split()[:n]) for c in cmds]


@pytest.fixture(scope="module")
def readme():
    text = README.read_text(encoding="utf-8")
    env = section_blocks(text, ENV_SECTION)
    assert list(env) == [ENV_SECTION], f"bash blocks found under: {list(env)}"
    blocks = section_blocks(text, SECTION)
    assert list(blocks) == [SECTION, CPU_SUBSECTION], f"bash blocks found under: {list(blocks)}"
    return {ENV_SECTION: env[ENV_SECTION], **blocks}


def test_readme_walk_is_found_and_every_substitution_matches(readme):
    counts = {}
    env, use, cpu = (substitute(readme[k], counts) for k in (ENV_SECTION, SECTION, CPU_SUBSECTION))
    stale = [p for p, n in counts.items() if n == 0]
    assert not stale, f"SUBSTITUTIONS that no longer match README.md (update them): {stale}"
    assert env[0] == "true" and env[1].startswith("export nnUNet_raw=$HOME/"), env
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert re.search(rf"\b{var}=\$HOME/\S+", env[1]), (var, env[1])  # outside the checkout
    assert heads(use) == [
        "mkdir -p", 'cp "$WALK_ARCHIVE"', "tar xf", "nnunet-ext convert", "nnUNetv2_plan_and_preprocess -d",
        "nnUNetv2_train 4", "nnUNetv2_train 4", "nnUNetv2_train 4", "nnUNetv2_predict -i", "nnunet-ext evaluate"], use
    assert use[0] == "mkdir -p $HOME/nnunet_work && cd $HOME/nnunet_work", use[0]
    convert = use[heads(use).index("nnunet-ext convert")]
    assert convert == "nnunet-ext convert msd --source Task04_Hippocampus --id 4 --test-fraction 0.2", convert
    plan = use[heads(use).index("nnUNetv2_plan_and_preprocess -d")]
    assert "--verify_dataset_integrity" in plan
    train_stock, train_fd, resume, predict, evaluate = use[-5:]
    assert train_stock.endswith(f"-tr {STOCK} -device cpu") and train_fd.endswith(f"-tr {FD} -device cpu")
    assert resume.endswith(f"-tr {FD} --c -device cpu") and f"-tr {FD} " in predict
    assert "-o preds " in predict and "-pred preds " in evaluate  # evaluate scores the folder predicted into
    assert heads(cpu) == ["nnunet-ext plan-small", "nnUNetv2_train 4", "nnUNetv2_train 4", "nnUNetv2_predict -i",
                          "nnunet-ext evaluate"], cpu
    assert f"-tr {STOCK} " in cpu[1] and f"-tr {FD_MICRO} " in cpu[2] and f"-tr {FD_MICRO} " in cpu[3]
    assert "-p nnUNetPlans_small" in cpu[3] and cpu[3].count("-device cpu") == 1  # continuation line joined
    assert "-o preds_small " in cpu[3] and "-pred preds_small " in cpu[4]  # the CPU route scores its own folder


def test_shell_commands_joins_continuations_and_drops_comments():
    block = ["# a comment", "cmd1 -a $X   # trailing", "cmd2 -i a \\", "    -o b#c \\", "  -d 4", "", "cmd3 --c #"]
    assert shell_commands(block) == ["cmd1 -a $X", "cmd2 -i a -o b#c -d 4", "cmd3 --c"]


# ------------------------------------------------------------------------------------------- running
def write_task_archive(work: Path) -> Path:
    """A synthetic ``Task04_Hippocampus.tar`` in the MSD layout: ``imagesTr``/``labelsTr`` (same file names, no
    channel suffix), unlabelled ``imagesTs``, MSD's ``dataset.json``, macOS ``._*`` files; tiny phantoms."""
    from nnunet_ext.core.synthetic import TEST_SPEC, generate_dataset_3d

    gen = Path(generate_dataset_3d(str(work / "generated"), 998, num_train=NUM_CASES, num_unlabeled=NUM_UNLABELLED,
                                   spec=TEST_SPEC, seed=1))
    task = work / TASK
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    training = []
    for i, label in enumerate(sorted((gen / "labelsTr").glob("*.nii.gz"))):
        case = f"hippocampus_{2 * i + 1:03d}.nii.gz"  # MSD's numbering has gaps
        os.replace(gen / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz"), task / "imagesTr" / case)
        os.replace(label, task / "labelsTr" / case)
        training.append({"image": f"./imagesTr/{case}", "label": f"./labelsTr/{case}"})
    test = []
    for i, image in enumerate(sorted((gen / "imagesUnlabeled").glob("*.nii.gz"))):
        case = f"hippocampus_{2 * i + 2:03d}.nii.gz"
        os.replace(image, task / "imagesTs" / case)
        test.append(f"./imagesTs/{case}")
    for sub in ("imagesTr", "labelsTr"):
        (task / sub / "._hippocampus_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (task / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "description": "synthetic stand-in for MSD Task04 (no patient data)",
        "reference": "nnunet_ext tests", "licence": "CC0 (generated)", "release": "1.0", "tensorImageSize": "3D",
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test}, indent=4))
    archive = work / "download" / f"{TASK}.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tar:
        tar.add(task, arcname=TASK)
    shutil.rmtree(task)
    return archive


class Walk:
    """Runs README commands with ``bash -c`` like one shell session (the folder and the environment a command
    leaves are those of the next); keeps a timed transcript."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env, self.log = root, env, []
        self.cwd = root / "checkout"  # where the README's first commands run: the checkout, here empty
        self.cwd.mkdir()
        self.home = Path(env["HOME"])

    def run(self, cmd: str) -> None:
        t0 = time.time()
        state = self.root / "shell_state"
        script = (f"{cmd}\nrc=$?\nif [ $rc -eq 0 ]; then pwd > '{state}.cwd'; env -0 > '{state}.env'; fi\n"
                  "exit $rc\n")
        proc = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=900)
        self.log.append(f"[{time.time() - t0:5.1f} s, exit {proc.returncode}] {cmd}")
        if proc.returncode != 0:
            raise AssertionError("README command failed:\n  " + "\n  ".join(self.log) +
                                 f"\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        self.cwd = Path(Path(f"{state}.cwd").read_text().rstrip("\n"))
        self.env = dict(kv.split("=", 1) for kv in Path(f"{state}.env").read_text().split("\0") if "=" in kv)

    def folder(self, var: str) -> Path:
        return Path(self.env[var])

    def fold(self, trainer: str, plans: str, config: str) -> Path:
        return self.folder("nnUNet_results") / DATASET / f"{trainer}__{plans}__{config}" / "fold_0"


@pytest.fixture(scope="module")
def walk(nnunet_env, tmp_path_factory, readme):
    root = tmp_path_factory.mktemp("readme_walk")
    archive = write_task_archive(root)
    (root / "home").mkdir()
    # conftest's environment (our trainers and the test trainers on nnUNet_extTrainer, 1 worker, no compile,
    # 2 threads) without nnU-Net's folders (the README's export sets them), this interpreter's console scripts
    # first on PATH, HOME in the temporary folder
    env = {k: v for k, v in nnunet_env.items() if k not in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               HOME=str(root / "home"), WALK_ARCHIVE=str(archive))
    w = Walk(root, env)
    for cmd in substitute(readme[ENV_SECTION]):
        w.run(cmd)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        path = w.folder(var)
        assert path.is_relative_to(w.home) and not path.is_relative_to(REPO), (var, path)
    return w


@pytest.fixture(scope="module")
def use_in_order(readme, walk):
    """Runs the commands of "Use, in order"; returns the training logs of the FD run before its --c."""
    logs_before_resume = None
    for cmd in substitute(readme[SECTION]):
        if cmd.endswith(f"-tr {FD} --c -device cpu"):
            logs_before_resume = sorted(walk.fold(FD, "nnUNetPlans", "3d_fullres").glob("training_log_*.txt"))
        walk.run(cmd)
    assert logs_before_resume is not None
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


def _per_case_rows(eval_dir: Path, cases) -> list:
    """evaluate's per_case.csv: one row per case and class, every case of the prediction."""
    with open(eval_dir / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["case"], r["class"]) for r in rows) == [(c, k) for c in cases for k in ("1", "2")]
    return rows


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
    work = walk.home / "nnunet_work"
    assert walk.cwd == work  # the README's cd: predictions and evaluations land outside the checkout
    assert not any((walk.root / "checkout").iterdir()), "the walk wrote into the checkout"
    ds = walk.folder("nnUNet_raw") / DATASET
    # convert: every labelled case of the task once, 20% held out in imagesTs/labelsTs, not in imagesTr;
    # the macOS ._ files are not cases; MSD's unlabelled imagesTs went to imagesUnlabeled
    test_cases = sorted(p.name for p in (ds / "labelsTs").glob("*.nii.gz"))
    train_cases = sorted(p.name for p in (ds / "labelsTr").glob("*.nii.gz"))
    assert len(test_cases) == round(0.2 * NUM_CASES) and len(train_cases) == NUM_CASES - len(test_cases)
    assert not set(test_cases) & set(train_cases)
    assert sorted(test_cases + train_cases) == sorted(p.name for p in (work / TASK / "labelsTr").glob("hipp*"))
    assert len(list((ds / "imagesTr").glob("*_0000.nii.gz"))) == len(train_cases)
    assert len(list((ds / "imagesUnlabeled").glob("*_0000.nii.gz"))) == NUM_UNLABELLED
    assert json.loads((ds / "dataset.json").read_text())["labels"] == {"background": 0, "Anterior": 1,
                                                                       "Posterior": 2}
    # plan and preprocess (the integrity check passed: the command would have failed)
    pre = walk.folder("nnUNet_preprocessed") / DATASET
    assert "3d_fullres" in json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]
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
    # predict: every imagesTs case, geometry kept; evaluate: every case and class, Dice above chance
    cases = _check_predictions(work / "preds", ds / "imagesTs")
    _assert_dice_above_chance(_per_case_rows(work / "preds_eval", cases), ds / "labelsTs", walk.log)
    print("\n".join(walk.log))


def test_training_on_a_cpu(readme, use_in_order, walk):
    """The CPU route on the dataset of "Use, in order" (its fingerprint is reused). One epoch of 3 iterations
    cannot segment: the prediction is checked for completeness and geometry, its evaluation for completeness."""
    plan_small, train_stock, train_fd, predict, evaluate = substitute(readme[CPU_SUBSECTION])
    n_before = len(walk.log)
    pre = walk.folder("nnUNet_preprocessed") / DATASET
    walk.run(plan_small)
    plans = json.loads((pre / "nnUNetPlans_small.json").read_text())
    default = json.loads((pre / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["batch_size"] <= default["configurations"]["2d"]["batch_size"]
    assert any((pre / plans["configurations"]["2d"]["data_identifier"]).iterdir())
    walk.run(train_stock)
    assert (walk.fold(STOCK, "nnUNetPlans_small", "2d") / "checkpoint_final.pth").is_file()
    walk.run(train_fd)
    assert (walk.fold(FD_MICRO, "nnUNetPlans_small", "2d") / "checkpoint_final.pth").is_file()
    walk.run(predict)
    ds = walk.folder("nnUNet_raw") / DATASET
    cases = _check_predictions(walk.cwd / "preds_small", ds / "imagesTs")
    walk.run(evaluate)
    _per_case_rows(walk.cwd / "preds_small_eval", cases)
    print("\n".join(walk.log[n_before:]))
