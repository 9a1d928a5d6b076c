"""``nnunet-ext benchmark`` end to end on the synthetic 2D dataset: 2 trainers x 2 seeds, killed and resumed.

The budget is minimal (2 epochs of 1 iteration, 1 validation iteration): what is tested is the protocol, and
most of the time goes to starting nnU-Net's processes (5 trainings, 4 predictions). The second trainer is
nnUNetTrainerFD with a test hook that kills the benchmark (tests/ext_trainers/bench_trainers.py): the benchmark
reaches it through nnUNet_extTrainer, as it reaches any trainer of a user's folder.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import run_cli

FD = "nnUNetTrainerFD_killable"  # tests/ext_trainers/bench_trainers.py
TRAINERS = ("nnUNetTrainer", FD)


def _fold_dir(out: Path, seed: int, trainer: str, dataset_name: str) -> Path:
    return out / "runs" / f"seed{seed}" / dataset_name / f"{trainer}__bench__nnUNetPlans__2d" / "fold_0"


def test_benchmark_kill_resume_report(dataset2d, nnunet_env, tmp_path):
    out, records = tmp_path / "bench", tmp_path / "records"
    args = ["benchmark", "-d", dataset2d["id"], "-c", "2d", "-tr", ",".join(TRAINERS), "--seeds", "0,1",
            "--iterations", 2, "--iterations-per-epoch", 1, "--val-iterations", 1, "-f", 0, "-o", out,
            "-device", "cpu", "-np", 1, "--records", records]
    name = dataset2d["name"]

    # 1. killed (SIGKILL from inside run 2 = seed 0, FD, after its epoch 0 and checkpoint)
    env = dict(nnunet_env, nnUNet_ext_bench_kill_after_epoch="0")
    proc = run_cli("nnunet-ext", args, env, check=False)
    assert proc.returncode == -9, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = _fold_dir(out, 0, "nnUNetTrainer", name) / "checkpoint_final.pth"
    assert first.is_file()
    assert (out / "runs" / "seed0" / "pred" / "nnUNetTrainer" / ".complete").is_file()
    killed = _fold_dir(out, 0, FD, name)
    assert (killed / "checkpoint_latest.pth").is_file() and not (killed / "checkpoint_final.pth").exists()
    assert not (out / "benchmark.json").exists()
    mtime = first.stat().st_mtime_ns

    # 2. the same command again: finished runs are kept, the killed one continues with --c
    proc = run_cli("nnunet-ext", args, nnunet_env)
    assert first.stat().st_mtime_ns == mtime, "a finished run was retrained"
    assert "seed 0 nnUNetTrainer: trained (kept)" in proc.stdout
    state = json.loads((out / "runs" / "seed0" / "state" / f"{FD}.json").read_text())
    assert [a["resume"] for a in state["attempts"]] == [False, True]
    assert "--c" in (out / "runs" / "seed0" / "logs" / f"{FD}_train.log").read_text()
    for s in (0, 1):
        for t in TRAINERS:
            assert (_fold_dir(out, s, t, name) / "checkpoint_final.pth").is_file()
    # the generated variants: budget and seeding
    src = (out / "trainers" / f"bench_{FD}.py").read_text()
    assert "SeedMixin" in src and "'num_epochs': 2" in src and "'num_iterations_per_epoch': 1" in src
    log = next((_fold_dir(out, 1, FD, name)).glob("training_log_*.txt")).read_text()
    assert "SeedMixin: seed 1" in log

    # 3. the report
    res = json.loads((out / "benchmark.json").read_text())
    assert res["trainers"] == list(TRAINERS) and res["seeds"] == [0, 1]
    assert res["protocol"]["fold"] == 0 and res["protocol"]["num_epochs"] == 2
    summ = res["summary"]["trainers"]
    for t in TRAINERS:
        for e in summ[t]["per_class"].values():
            assert e["dice"]["n_seeds"] == 2 and set(e["dice"]["per_seed"]) == {"0", "1"}
    diff = summ[FD]["paired_vs_reference"]["all"]["dice"]
    assert diff["n_cases"] == len(res["protocol"]["test_cases"]) > 0
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    tm = res["timing"]
    assert tm["nnUNetTrainer"]["ratio_vs_reference"] == pytest.approx(1.0)
    assert tm[FD]["ratio_vs_reference"] > 0 and set(tm[FD]["ratio_per_seed"]) == {"0", "1"}
    md = (out / "benchmark.md").read_text()
    assert "Paired per-case difference vs nnUNetTrainer" in md and "ratio vs nnUNetTrainer" in md
    assert md.strip() in proc.stdout
    with open(out / "per_case.csv") as fh:
        rows = list(csv.DictReader(fh))
    n_classes = len(summ["nnUNetTrainer"]["per_class"])
    assert len(rows) == 2 * 2 * len(res["protocol"]["test_cases"]) * n_classes
    assert {(r["trainer"], r["seed"]) for r in rows} == {(t, str(s)) for t in TRAINERS for s in (0, 1)}
    assert (out / "boxplot.png").stat().st_size > 1000

    # 4. another budget in the same folder is refused: one line, exit code 2
    bad = list(args)
    bad[bad.index("--iterations") + 1] = 4
    proc = run_cli("nnunet-ext", bad, nnunet_env, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "another protocol" in err[0] and "iterations" in err[0]

    # 5. the records alone (a later session: OUT and its models are gone) give the same report, nothing re-run
    for s in (0, 1):
        for t in TRAINERS:
            assert {p.name for p in (records / f"seed{s}" / t).iterdir()} == \
                {"benchmark_rows.json", "timing.json", "state.json"}
    assert sum(p.stat().st_size for p in records.rglob("*") if p.is_file()) < 200_000
    out2 = tmp_path / "bench_new_session"
    args2 = list(args)
    args2[args2.index(out)] = out2
    proc = run_cli("nnunet-ext", args2, nnunet_env)
    assert proc.stdout.count("restored from") == 4 and not (out2 / "runs" / "seed0" / name).exists()
    res2 = json.loads((out2 / "benchmark.json").read_text())
    assert res2["summary"] == res["summary"] and res2["timing"] == res["timing"]
    # records of another protocol are refused
    bad2 = list(args2)
    bad2[bad2.index("--iterations") + 1] = 4
    bad2[bad2.index(out2)] = tmp_path / "bench_other"
    proc = run_cli("nnunet-ext", bad2, nnunet_env, check=False)
    assert proc.returncode == 2 and "records" in proc.stderr and "iterations" in proc.stderr


def test_benchmark_user_errors_exit_2(dataset2d, nnunet_env, tmp_path, monkeypatch, capsys):
    from nnunet_ext.cli import main

    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, nnunet_env[k])
    base = ["benchmark", "-d", str(dataset2d["id"]), "-c", "2d", "-o", str(tmp_path / "o")]
    cases = [
        (base + ["-tr", "nnUNetTrainer"], "--iterations"),
        (base + ["-tr", "nnUNetTrainer_doesNotExist", "--iterations", "2"], "not found"),
        (base + ["-tr", "nnUNetTrainer", "--iterations", "2", "-f", "42"], "fold 42"),
        (base + ["-tr", "nnUNetTrainer", "--iterations", "2", "-p", "nnUNetPlans_missing"], "plans"),
        (base + ["-tr", "nnUNetTrainer,nnUNetTrainer", "--iterations", "2"], "twice"),
        (["benchmark", "-d", "999", "-c", "2d", "-tr", "nnUNetTrainer", "--iterations", "2"], "999"),
        (["benchmark", "--config", str(tmp_path / "missing.json")], "config file"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        rc = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, (args, err)
        assert len(err) == 1 and err[0].startswith("nnunet-ext benchmark: error:") and needle in err[0], err
    # a config file, overridden by the command line
    cfg = tmp_path / "bench.json"
    cfg.write_text(json.dumps({"dataset": dataset2d["id"], "configuration": "2d", "trainers": ["nnUNetTrainer"],
                               "iterations": 2, "fold": 42, "output": "o"}))
    assert main(["benchmark", "--config", str(cfg)]) == 2
    assert "fold 42" in capsys.readouterr().err
    cfg.write_text(json.dumps({"dataset": 1, "bogus": 1}))
    assert main(["benchmark", "--config", str(cfg)]) == 2
    assert "unknown setting 'bogus'" in capsys.readouterr().err


def test_train_test_lists_append_a_fold(dataset2d, nnunet_env, tmp_path, monkeypatch):
    from nnunet_ext.benchmark.protocol import BenchmarkConfig, BenchmarkError, resolve_split

    pre = Path(nnunet_env["nnUNet_preprocessed"]) / dataset2d["name"]
    monkeypatch.setenv("nnUNet_preprocessed", nnunet_env["nnUNet_preprocessed"])
    ids = sorted(p.name[:-5] for p in (pre / "nnUNetPlans_2d").glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    work = tmp_path / "pre"
    work.mkdir()
    # a copy of the preprocessed folder's split only (no splits yet: nnU-Net's default 5 folds are written first)
    tr, te = tmp_path / "train.txt", tmp_path / "test.txt"
    tr.write_text("\n".join(ids[:6]) + "\n")
    te.write_text("# held out\n" + "\n".join(i + ".png" for i in ids[6:8]) + "\n")
    cfg = BenchmarkConfig(dataset="x", configuration="2d", trainers=["nnUNetTrainer"], iterations=1,
                          train_list=str(tr), test_list=str(te))
    fold, train, test, note = resolve_split(cfg, work, ids, ".png")
    splits = json.loads((work / "splits_final.json").read_text())
    assert fold == 5 and len(splits) == 6 and splits[5] == {"train": ids[:6], "val": ids[6:8]}
    assert test == ids[6:8] and (work / "splits_final.json.orig").is_file()
    assert len(json.loads((work / "splits_final.json.orig").read_text())) == 5
    # the same lists again: the fold is reused, nothing appended
    assert resolve_split(cfg, work, ids, ".png")[0] == 5
    assert len(json.loads((work / "splits_final.json").read_text())) == 6
    te.write_text(ids[0] + "\n")
    with pytest.raises(BenchmarkError, match="both"):
        resolve_split(cfg, work, ids, ".png")


def test_variant_of_a_settings_only_trainer_without_the_variable(monkeypatch, tmp_path):
    """A trainer of nnunet_ext's trainers/ whose body holds settings only (no function knows its file) gets its
    variant also when $nnUNet_extTrainer is not set in the calling process (nnU-Net drops the module again)."""
    import importlib.util

    from nnunet_ext.benchmark.variant import find_trainer_class, write_variant
    from nnunet_ext.paths import ext_trainer_env

    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_env()["nnUNet_extTrainer"])
    cls = find_trainer_class("nnUNetTrainerS2S2_gin")
    assert cls is not None
    monkeypatch.delenv("nnUNet_extTrainer")
    name = write_variant(tmp_path, cls, {"num_epochs": 2, "num_iterations_per_epoch": 1,
                                         "num_val_iterations_per_epoch": 1, "save_every": 1})
    spec = importlib.util.spec_from_file_location("bench_variant_test", tmp_path / "bench_nnUNetTrainerS2S2_gin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    variant = getattr(mod, name)
    assert variant.s2s2_generator == "gin" and any(c.__name__ == "nnUNetTrainerS2S2_gin" for c in variant.__mro__)


def test_the_demo_and_the_benchmark_share_one_variant_generator(tmp_path):
    """A trainer of nnunet_ext's trainers/ (a plain module nnU-Net imports from its folder): the demo's short
    variant and the benchmark's variant both come from nnunet_ext.core.schedule.variant_source and load."""
    import importlib.util
    import os
    from unittest import mock

    from nnunet_ext.benchmark.variant import write_variant
    from nnunet_ext.core.schedule import ScheduleMixin
    from nnunet_ext.demo.run import _demo_variant
    from nnunet_ext.paths import ext_trainer_env, find_trainer_class

    env = ext_trainer_env()
    schedule = {"num_epochs": 2, "num_iterations_per_epoch": 3}
    name, src = _demo_variant("nnUNetTrainerFD_lambda0010", schedule, env)
    assert name == "nnUNetTrainerFD_lambda0010_demo" and "Generated by nnunet-ext demo" in src
    (tmp_path / "demo_variant.py").write_text(src)
    spec = importlib.util.spec_from_file_location("demo_variant_test", tmp_path / "demo_variant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    demo = getattr(mod, name)
    assert issubclass(demo, ScheduleMixin) and demo.schedule == schedule and demo.fd_lambda == 0.010
    with mock.patch.dict(os.environ, {"nnUNet_extTrainer": env["nnUNet_extTrainer"]}):
        cls = find_trainer_class("nnUNetTrainerFD_lambda0010")
    bench = write_variant(tmp_path / "bench", cls, schedule)
    text = (tmp_path / "bench" / "bench_nnUNetTrainerFD_lambda0010.py").read_text()
    assert bench == "nnUNetTrainerFD_lambda0010__bench" and "Generated by nnunet-ext benchmark" in text
    assert "class nnUNetTrainerFD_lambda0010__bench(BenchMixin, ScheduleMixin, SeedMixin, _Base)" in text
