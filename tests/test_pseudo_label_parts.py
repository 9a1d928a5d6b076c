"""pseudo-label at scale: parts (--num-parts/--part) run at the same time give exactly one run's dataset, a killed run
resumes without redoing finished cases, parts with other settings and --merge with unfinished parts are refused in
one line with nothing written, an unreadable unlabelled image is named and skipped.

The model: nnU-Net's network for the planned synthetic dataset with seeded random weights, saved as a checkpoint
(what these tests check does not depend on how good the pseudo-labels are; training would cost a minute).
``nnUNetTrainer_plSlow`` (written to a temporary trainer folder) is the same network sleeping before each forward
pass, so that a run can be killed while it predicts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import _bin, run_cli

from nnunet_ext.core.sharding import shard

DS_PL = 541
NAME = "Dataset541_PLParts"
UNLABELLED = [f"plparts_unlabeled{i:03d}" for i in range(7)] + ["broken"]
SLOW_TRAINER = '''import os
import time

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_plSlow(nnUNetTrainer):
    """nnU-Net's network, sleeping $nnUNet_ext_test_forward_delay seconds before each forward pass (test only)."""

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        net = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                       num_output_channels, enable_deep_supervision)
        delay = float(os.environ.get("nnUNet_ext_test_forward_delay", "0"))
        net.register_forward_pre_hook(lambda module, inputs: time.sleep(delay))
        return net
'''


def planned_unlabelled_dataset(nnunet_dirs, nnunet_env) -> dict:
    """Dataset541: 4 labelled cases (planned and preprocessed by nnU-Net, 3d_fullres), 7 unlabelled ones, a corrupt
    image and a misnamed file in imagesUnlabeled. Made once per session (also used by
    test_preprocess_unlabeled_parts.py)."""
    from nnunet_ext.core.synthetic import generate_dataset_3d

    raw = Path(nnunet_dirs["raw"]) / NAME
    pre = Path(nnunet_dirs["preprocessed"]) / NAME
    if not (pre / "nnUNetPlans.json").is_file():
        generate_dataset_3d(str(nnunet_dirs["raw"]), DS_PL, name="PLParts", num_train=4, num_unlabeled=7, seed=5)
        (raw / "imagesUnlabeled" / "broken_0000.nii.gz").write_bytes(b"not a nifti file")
        (raw / "imagesUnlabeled" / "scan.nii.gz").write_bytes(b"no channel suffix")
        run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS_PL, "-c", "3d_fullres", "-npfp", 1, "-np", 1], nnunet_env)
    return {"raw": raw, "pre": pre}


def _save_model(pre: Path, results: Path, trainer: str) -> Path:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(str(pre / "nnUNetPlans.json"))
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3,
                                                   enable_deep_supervision=False)
    folder = results / NAME / f"{trainer}__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    shutil.copy(pre / "nnUNetPlans.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")
    torch.save({"network_weights": net.state_dict(), "trainer_name": trainer,
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


@pytest.fixture(scope="module")
def pl_model(nnunet_dirs, nnunet_env, tmp_path_factory):
    from nnunet_ext.paths import ext_trainer_env

    data = planned_unlabelled_dataset(nnunet_dirs, nnunet_env)
    results = Path(nnunet_dirs["results"])
    trainers = tmp_path_factory.mktemp("pl_trainers")
    (trainers / "pl_slow_trainers.py").write_text(SLOW_TRAINER)
    return {**data, "model": _save_model(data["pre"], results, "nnUNetTrainer"),
            "slow": _save_model(data["pre"], results, "nnUNetTrainer_plSlow"),
            "env": ext_trainer_env([trainers], base=nnunet_env)}


def _args(target, *extra):
    return ["pseudo-label", "-d", DS_PL, "-c", "3d_fullres", "--target-id", target, "--disable-tta", "-device", "cpu",
            "--keep", "0.5", "-q", *extra]


def _popen(args, env, out: Path, extra_env=None):
    """``nnunet-ext ARGS`` started in its own session (stdout, stderr to ``out``.{out,err})."""
    env = dict(env, **(extra_env or {}))
    return subprocess.Popen([_bin("nnunet-ext"), *map(str, args)], env=env, start_new_session=True,
                            stdout=open(f"{out}.out", "w"), stderr=open(f"{out}.err", "w"))


def _errors(proc) -> list:
    """stderr lines other than the misnamed file's notice (printed by every run)."""
    return [line for line in proc.stderr.strip().splitlines() if "skipped scan.nii.gz" not in line]


def _dataset_contents(folder: Path) -> dict:
    """{relative path: label array, or the JSON (pseudo_labels.json without its timing), or the bytes}."""
    out = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(f.relative_to(folder))
        if rel.startswith("labelsTr/"):
            out[rel] = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        elif f.suffix == ".json":
            out[rel] = json.loads(f.read_text())
            out[rel].pop("timing", None)
        else:
            out[rel] = f.read_bytes()
    return out


def test_two_parts_at_once_give_one_runs_dataset(pl_model, nnunet_dirs, tmp_path):
    env, raw = pl_model["env"], Path(nnunet_dirs["raw"])
    cache = pl_model["model"] / "pseudo_labels" / "fold0_checkpoint_final_noTTA"
    # one run, everything in this process
    one = run_cli("nnunet-ext", _args(542, "-npp", 0, "-nps", 0), env)
    assert "8 to predict" in one.stdout and "kept 4 of 7" in one.stdout
    assert "skipped broken: unreadable" in one.stderr  # named, recorded, never used
    record = json.loads((raw / "Dataset542_PLPartsPL" / "pseudo_labels.json").read_text())
    assert record["cases"]["broken"]["skipped"].startswith("unreadable") and not record["cases"]["broken"]["kept"]
    assert not list((raw / "Dataset542_PLPartsPL" / "imagesTr").glob("broken*"))
    assert record["timing"]["parts"]["part_0"]["predicted"] == 7
    single = _dataset_contents(raw / "Dataset542_PLPartsPL")
    scores_single = json.loads((cache / "scores.json").read_text())
    shutil.move(raw / "Dataset542_PLPartsPL", tmp_path / "single")
    shutil.move(cache, tmp_path / "single_cache")
    # the same job as two parts started at once, each with its preprocessing and export processes
    procs = [_popen(_args(542, "--num-parts", 2, "--part", i, "-npp", 1, "-nps", 1), env, tmp_path / f"part{i}")
             for i in (0, 1)]
    for i, p in enumerate(procs):
        assert p.wait(300) == 0, (tmp_path / f"part{i}.err").read_text()[-3000:]
    outs = [(tmp_path / f"part{i}.out").read_text() for i in (0, 1)]
    assert all("4 to predict" in o for o in outs), outs
    assert sum("wrote" in o for o in outs) == 1, outs  # written once, by the last part to finish
    parts = _dataset_contents(raw / "Dataset542_PLPartsPL")
    assert sorted(parts) == sorted(single)
    for rel, value in single.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(parts[rel], value), rel
        elif rel == "pseudo_labels.json":
            a, b = value.pop("cases"), parts[rel].pop("cases")
            assert value == parts[rel]
            assert a.keys() == b.keys() and all(a[c].keys() == b[c].keys() for c in a)
            for c in a:
                assert {k: v for k, v in a[c].items() if k != "uncertainty"} == \
                    {k: v for k, v in b[c].items() if k != "uncertainty"}
                if "uncertainty" in a[c]:
                    assert b[c]["uncertainty"] == pytest.approx(a[c]["uncertainty"], rel=1e-6, abs=1e-9)
        else:
            assert parts[rel] == value, rel
    timing = json.loads((raw / "Dataset542_PLPartsPL" / "pseudo_labels.json").read_text())["timing"]
    assert timing["num_parts"] == 2 and sorted(timing["parts"]) == ["part_0", "part_1"]
    assert sorted(json.loads((cache / "scores.json").read_text())) == sorted(scores_single) == sorted(UNLABELLED)
    assert not [p.name for p in raw.iterdir() if p.name.startswith(".")], "job folder and staging removed"


def test_killed_run_resumes_without_redoing_finished_cases(pl_model, nnunet_dirs, tmp_path):
    env, raw = pl_model["env"], Path(nnunet_dirs["raw"])
    args = _args(543, "-tr", "nnUNetTrainer_plSlow", "-npp", 1, "-nps", 1)
    records = pl_model["slow"] / "pseudo_labels" / "fold0_checkpoint_final_noTTA" / "records"
    proc = _popen(args, env, tmp_path / "killed", {"nnUNet_ext_test_forward_delay": "1.5"})
    predicted = lambda: [p for p in records.glob("*.json") if "file" in json.loads(p.read_text())]  # noqa: E731
    deadline = time.monotonic() + 240
    while len(predicted()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + (tmp_path / "killed.err").read_text()
    os.killpg(proc.pid, signal.SIGKILL)  # as kill -9 would: no clean-up of any kind
    proc.wait()
    time.sleep(1)
    done = {p.name: p.stat().st_mtime_ns for p in predicted()}
    labels = {p.name: p.stat().st_mtime_ns for p in records.parent.glob("*.nii.gz")}
    assert 2 <= len(done) < 7 and not (raw / "Dataset543_PLPartsPL").exists()
    resumed = run_cli("nnunet-ext", args[:-4] + ["-npp", 0, "-nps", 0], env)  # -npp/-nps may differ
    assert f"{len(done)} already predicted, {8 - len(done)} to predict" in resumed.stdout, resumed.stdout
    assert {p.name: p.stat().st_mtime_ns for p in records.glob("*.json") if p.name in done} == done, "redone"
    assert {n: (records.parent / n).stat().st_mtime_ns for n in labels} == labels
    record = json.loads((raw / "Dataset543_PLPartsPL" / "pseudo_labels.json").read_text())
    assert sorted(record["cases"]) == sorted(UNLABELLED) and record["predicted"] == 7


def test_parts_with_other_settings_and_early_merge_are_refused(pl_model, nnunet_dirs):
    env, raw = pl_model["env"], Path(nnunet_dirs["raw"])
    fold = pl_model["model"] / "fold_0"
    shutil.copy(fold / "checkpoint_final.pth", fold / "checkpoint_b.pth")  # a cache of its own
    cache = pl_model["model"] / "pseudo_labels" / "fold0_checkpoint_b_noTTA"
    base = _args(544, "-chk", "checkpoint_b.pth", "-npp", 0, "-nps", 0, "--num-parts", 2)
    first = run_cli("nnunet-ext", base + ["--part", 0], env)
    assert "waiting for part(s) 1" in first.stdout, first.stdout
    part1 = shard(UNLABELLED, 1, 2)
    # --merge before part 1 ran: one line naming the part and its cases, nothing written
    merge = run_cli("nnunet-ext", base + ["--merge"], env, check=False)
    errors = _errors(merge)
    assert merge.returncode == 2 and len(errors) == 1, merge.stderr
    assert "part(s) 1 of 2 not finished" in errors[0] and all(c in errors[0] for c in part1), errors[0]
    # part 1 with another --keep, or with mirroring: refused before it predicts anything
    with_tta = [a for a in base if a != "--disable-tta"]
    for args, diff in ((base + ["--part", 1, "--keep", "0.8"], "keep: 0.5, here: 0.8"),
                       (with_tta + ["--part", 1], "tta: false, here: true")):
        bad = run_cli("nnunet-ext", args, env, check=False)
        errors = _errors(bad)
        assert bad.returncode == 2 and len(errors) == 1 and "other settings" in errors[0], bad.stderr
        assert diff in errors[0], errors[0]
    assert not [c for c in part1 if (cache / "records" / f"{c}.json").exists()], "a refused part wrote records"
    assert not (pl_model["model"] / "pseudo_labels" / "fold0_checkpoint_b").exists(), "a refused part made a cache"
    assert not list(raw.glob("Dataset544*"))
    # the right part 1 finishes the job and writes the dataset; --merge then has nothing to do
    last = run_cli("nnunet-ext", base + ["--part", 1], env)
    assert "kept" in last.stdout and (raw / "Dataset544_PLPartsPL" / "pseudo_labels.json").is_file()
    assert not (raw / ".pseudo-label_Dataset544").exists()
    again = run_cli("nnunet-ext", base + ["--merge"], env)
    assert "written by this job already" in again.stdout


@pytest.mark.parametrize("args, message", [
    (["--num-parts", "2"], "needs --part I (0..1)"),
    (["--num-parts", "2", "--part", "2"], "--part 2: not in 0..1"),
    (["--num-parts", "0"], "--num-parts 0: at least 1"),
    (["--num-parts", "2", "--part", "0", "--merge"], "--merge predicts nothing"),
    (["-npp", "-1"], "-npp -1"),
])
def test_bad_part_options_are_one_line(args, message, capsys):
    from nnunet_ext.cli import main

    rc = main(["pseudo-label", "-d", "987", "-c", "3d_fullres", "--target-id", "988", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_next_round_from_a_pseudo_labelled_dataset_starts_from_the_labelled_cases(pl_model, nnunet_dirs):
    """Round 2 of the documented loop (``-d`` = round 1's dataset): its labelsTr holds round 1's kept pseudo-labels,
    which are not labels: the new dataset has the 4 labelled cases + this round's kept ones (no name clash, no
    round-1 pseudo-label carried over as a label, no image of a dropped case)."""
    env, raw, results = pl_model["env"], Path(nnunet_dirs["raw"]), Path(nnunet_dirs["results"])
    run_cli("nnunet-ext", _args(545, "-npp", 0, "-nps", 0), env)
    round1 = raw / "Dataset545_PLPartsPL"
    kept1 = sorted(c for c, r in json.loads((round1 / "pseudo_labels.json").read_text())["cases"].items()
                   if r["kept"])
    assert len(kept1) == 4
    model = results / round1.name / pl_model["model"].name  # "round 1's model" (the same weights here)
    shutil.copytree(pl_model["model"], model, ignore=shutil.ignore_patterns("pseudo_labels"))
    run_cli("nnunet-ext", ["pseudo-label", "-d", 545, "-c", "3d_fullres", "--target-id", 546, "--disable-tta",
                           "-device", "cpu", "--keep", "0.5", "-q", "-npp", 0, "-nps", 0, "--previous", 545,
                           "--min-stability", 0.0], env)
    round2 = raw / "Dataset546_PLPartsPLPL"
    record = json.loads((round2 / "pseudo_labels.json").read_text())
    kept2 = sorted(c for c, r in record["cases"].items() if r["kept"])
    labelled = sorted(p.name[:-len(".nii.gz")] for p in (raw / NAME / "labelsTr").glob("*.nii.gz"))
    assert record["labelled"] == len(labelled) == 4 and kept2 and set(kept2) <= set(UNLABELLED)
    assert all(r.get("stability") is not None for r in record["cases"].values() if "uncertainty" in r)
    assert sorted(p.name[:-len(".nii.gz")] for p in (round2 / "labelsTr").glob("*.nii.gz")) == sorted(labelled + kept2)
    images = sorted(p.name[:-len("_0000.nii.gz")] for p in (round2 / "imagesTr").glob("*.nii.gz"))
    assert images == sorted(labelled + kept2)
    for c in set(kept1) & set(kept2):  # this round's pseudo-label, not round 1's file
        cache = model / "pseudo_labels" / "fold0_checkpoint_final_noTTA"
        assert (round2 / "labelsTr" / f"{c}.nii.gz").read_bytes() == (cache / f"{c}.nii.gz").read_bytes()
