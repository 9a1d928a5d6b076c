"""The pseudo-label driver (benchmarks/pseudo_label_rounds.py): round 0 + 2 pseudo-label rounds end to end on a tiny
synthetic dataset through the real command lines (the datasets written, the source's plans in every round, the
stability recorded in round 2, the records), a re-run that skips every finished step, a half-trained round continued
with ``nnUNetv2_train --c``, and the checks that refuse other settings. The stability filter itself:
tests/test_pseudo_label_rounds.py."""
from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli

sys.path.insert(0, str(REPO / "benchmarks"))
import pseudo_label_rounds as plr  # noqa: E402

DS_SRC, DS_R1, DS_R2 = 571, 572, 573
CONF = "2d"


@pytest.fixture(scope="module")
def source(nnunet_dirs, nnunet_env):
    """6 labelled cases (4 for training, 2 held out) and 4 unlabelled ones, planned and preprocessed (2d)."""
    from nnunet_ext.core.synthetic import generate_dataset_3d

    folder = Path(generate_dataset_3d(str(nnunet_dirs["raw"]), DS_SRC, name="PLRounds", num_train=6,
                                      num_unlabeled=4, seed=5))
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS_SRC, "-c", CONF, "-npfp", 1, "-np", 1], nnunet_env)
    cases = sorted(p.name[:-len(".nii.gz")] for p in (folder / "labelsTr").glob("*.nii.gz"))
    return {"raw": folder, "name": folder.name, "train": cases[:4], "test": cases[4:],
            "pre": Path(nnunet_dirs["preprocessed"]) / folder.name}


class Calls:
    """The driver's subprocesses, through the tests' fork server (the real console scripts, started quicker)."""

    def __init__(self):
        self.made = []

    def __call__(self, cmd, env, log, epochs=None):
        name, args = Path(str(cmd[0])).name, [str(c) for c in cmd[1:]]
        self.made.append((name, args))
        t0 = time.time()
        proc = run_cli(name, args, env, check=False)
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"$ {name} {' '.join(args)}\n{proc.stdout}\n{proc.stderr}\n")
        if proc.returncode != 0:
            raise plr.RunFailed(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return time.time() - t0


def _config(source, tmp, **kw):
    lists = tmp / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "train.txt").write_text("\n".join(source["train"]) + "\n")
    (lists / "test.txt").write_text("\n".join(source["test"]) + "\n")
    settings = dict(dataset=str(DS_SRC), configuration=CONF, target_ids=[DS_R1, DS_R2], workdir=str(tmp / "work"),
                    rounds=2, iterations=20, iterations_per_epoch=10, seed=0, keep="1.0", min_stability=0.5,
                    pseudo_label_tta=False, train_list=str(lists / "train.txt"), test_list=str(lists / "test.txt"),
                    records=str(tmp / "records"), device="cpu", num_processes=1, quiet=True)
    settings.update(kw)
    return plr.RoundsConfig(**settings)


@pytest.fixture(scope="module")
def driven(source, nnunet_env, nnunet_dirs, tmp_path_factory):
    """The driver run once: round 0, then 2 pseudo-label rounds, each evaluated on the 2 held-out cases."""
    tmp = tmp_path_factory.mktemp("pl_driver")
    mp = pytest.MonkeyPatch()
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_def_n_proc",
              "nnUNet_compile", "OMP_NUM_THREADS"):
        mp.setenv(k, nnunet_env[k])
    cfg = _config(source, tmp)
    calls = Calls()
    rounds = plr.Rounds(cfg, calls)
    summary = rounds.run()
    yield {"tmp": tmp, "cfg": cfg, "calls": calls, "rounds": rounds, "summary": summary, "mp": mp,
           "raw": Path(nnunet_dirs["raw"]), "pre": Path(nnunet_dirs["preprocessed"])}
    mp.undo()


def test_rounds_write_the_datasets_from_the_source(driven, source):
    raw, work = driven["raw"], Path(driven["cfg"].workdir)
    names = [c[0] for c in driven["calls"].made]
    assert names == ["nnUNetv2_train", "nnUNetv2_predict"] + ["nnunet-ext", "nnUNetv2_move_plans_between_datasets",
                                                              "nnUNetv2_preprocess", "nnUNetv2_train",
                                                              "nnUNetv2_predict"] * 2
    src_json = json.loads((source["raw"] / "dataset.json").read_text())
    previous = None
    for r, ds_id in ((1, DS_R1), (2, DS_R2)):
        folder = raw / f"Dataset{ds_id}_PLRoundsPL{r}"
        record = json.loads((folder / "pseudo_labels.json").read_text())
        kept = sorted(c for c, v in record["cases"].items() if v["kept"])
        assert record["source"] == source["name"] and record["labelled"] == 6 and record["predicted"] == 4
        assert record["previous"] == previous
        labels = sorted(p.name[:-len(".nii.gz")] for p in (folder / "labelsTr").glob("*.nii.gz"))
        assert labels == sorted(source["train"] + source["test"] + kept), "the source's labelled cases + the kept"
        ds = json.loads((folder / "dataset.json").read_text())
        assert ds["labels"] == src_json["labels"] and ds["numTraining"] == 6 + len(kept)
        # the round trained on round 0's cases + its kept pseudo-labels, held-out cases for validation
        train_state = json.loads((work / "state" / f"round{r}_train.json").read_text())
        fold = json.loads((driven["pre"] / folder.name / "splits_final.json").read_text())[int(train_state["fold"])]
        assert sorted(fold["train"]) == sorted(source["train"] + kept) and sorted(fold["val"]) == source["test"]
        assert train_state["dataset"] == folder.name and (Path(train_state["model"]) / "checkpoint_final.pth").is_file()
        previous = str(folder)
    pl_calls = [args for name, args in driven["calls"].made if name == "nnunet-ext"]
    assert "--previous" not in pl_calls[0] and "--min-stability" not in pl_calls[0]
    assert pl_calls[1][pl_calls[1].index("--min-stability") + 1] == "0.5"
    assert all(a[a.index("-d") + 1] == source["name"] for a in pl_calls), "pseudo-label reads the source dataset"


def test_every_round_trains_the_source_plans(driven, source):
    src = json.loads((source["pre"] / "nnUNetPlans.json").read_text())
    for r, ds_id in ((1, DS_R1), (2, DS_R2)):
        name = f"Dataset{ds_id}_PLRoundsPL{r}"
        moved = json.loads((driven["pre"] / name / "nnUNetPlans_from571.json").read_text())
        assert plr.network_differences(src, moved, CONF) == []
        assert moved["dataset_name"] == name and moved["plans_name"] == "nnUNetPlans_from571"
        same = {k: v for k, v in moved.items() if k not in ("dataset_name", "plans_name", "configurations")}
        assert same == {k: v for k, v in src.items() if k not in ("dataset_name", "plans_name", "configurations")}
        model = Path(json.loads((Path(driven["cfg"].workdir) / "state" / f"round{r}_train.json").read_text())["model"])
        trained = json.loads((model.parent / "plans.json").read_text())
        assert plr.network_differences(src, trained, CONF) == []
        assert trained["configurations"][CONF]["patch_size"] == src["configurations"][CONF]["patch_size"]
    # the check sees a different network
    other = json.loads(json.dumps(src))
    other["configurations"][CONF]["patch_size"] = [p // 2 for p in other["configurations"][CONF]["patch_size"]]
    other["configurations"][CONF]["batch_size"] += 1
    assert plr.network_differences(src, other, CONF) == [f"configurations.{CONF}.batch_size",
                                                          f"configurations.{CONF}.patch_size"]


def test_stability_is_recorded_in_round_2(driven, source):
    records = Path(driven["cfg"].records)
    r1 = json.loads((records / "round1.json").read_text())
    r2 = json.loads((records / "round2.json").read_text())
    assert "stability" not in r1["pseudo_labels"] and r1["pseudo_labels"]["predicted"] == 4
    pl = r2["pseudo_labels"]
    assert pl["stability"]["n"] == pl["predicted"] == 4 and pl["stability_missing"] == []
    assert 0 <= pl["stability"]["min"] <= pl["stability"]["max"] <= 1
    assert pl["min_stability"] == 0.5 and pl["below_min_stability"] <= pl["predicted"] - pl["kept"]
    cases = json.loads((driven["raw"] / f"Dataset{DS_R2}_PLRoundsPL2" / "pseudo_labels.json").read_text())["cases"]
    assert all(v["stability"] is not None and (not v["kept"] or v["stability"] >= 0.5) for v in cases.values())
    for r in (0, 1, 2):
        rec = json.loads((records / f"round{r}.json").read_text())
        rows = json.loads(gzip.decompress((records / f"round{r}_rows.json.gz").read_bytes()))
        assert rec["evaluation"]["test_cases"] == 2 and {x["case"] for x in rows} == set(source["test"])
        assert len(rows) == 4 and all(0 <= x["dice"] <= 1 for x in rows)  # 2 cases x 2 classes
        assert (records / f"round{r}.json").stat().st_size < 8000
    assert sorted(driven["summary"]["rounds"]) == [0, 1, 2]
    assert "| 2 | Dataset573_PLRoundsPL2 |" in plr.summary_markdown(driven["summary"])


def test_rerun_skips_finished_steps_and_continues_a_half_trained_round(driven, source, capsys):
    cfg, work = driven["cfg"], Path(driven["cfg"].workdir)
    again = Calls()
    plr.Rounds(plr.RoundsConfig(**{**cfg.__dict__, "quiet": False}), again).run()
    assert again.made == [] and "all 3 rounds (0..2) are recorded" in capsys.readouterr().out
    # without the records: every step's state and outputs are in the work folder
    plr.Rounds(plr.RoundsConfig(**{**cfg.__dict__, "quiet": False, "records": None}), again).run()
    assert again.made == [], "a finished run runs nothing again"
    assert capsys.readouterr().out.count("done (kept)") == 3 + 2 * 5
    # round 2 stopped after its last epoch (a session ended before nnU-Net wrote checkpoint_final.pth)
    model = Path(json.loads((work / "state" / "round2_train.json").read_text())["model"])
    (model / "checkpoint_final.pth").rename(model / "checkpoint_latest.pth")
    for step in ("train", "evaluate", "record"):
        (work / "state" / f"round2_{step}.json").unlink()
    (Path(cfg.records) / "round2.json").unlink()
    resumed = Calls()
    plr.Rounds(cfg, resumed).run()
    assert [name for name, _ in resumed.made] == ["nnUNetv2_train", "nnUNetv2_predict"]
    assert resumed.made[0][1][-1] == "--c"
    assert (model / "checkpoint_final.pth").is_file() and (Path(cfg.records) / "round2.json").is_file()


def test_other_settings_and_bad_arguments_are_refused(driven, source):
    cfg = driven["cfg"]
    with pytest.raises(plr.DriverError, match=r"holds rounds of other settings: keep \(\"1.0\" -> \"0.5\"\); use "
                                              r"another --workdir") as e:
        plr.Rounds(plr.RoundsConfig(**{**cfg.__dict__, "keep": "0.5"}), Calls()).run()
    assert "\n" not in str(e.value)
    with pytest.raises(plr.DriverError, match=f"{DS_SRC} is the source dataset"):
        plr.Rounds(plr.RoundsConfig(**{**cfg.__dict__, "target_ids": [DS_SRC, 574]}), Calls())
    with pytest.raises(plr.DriverError, match="gives 2 id.s. for 3 rounds"):
        plr.parse_target_ids("580,581", 3)
    assert plr.parse_target_ids("580", 3) == [580, 581, 582]
    (driven["raw"] / "Dataset591_NotMine").mkdir()
    with pytest.raises(plr.DriverError, match="Dataset591_NotMine exists and was not written by pseudo-label"):
        plr.Rounds(plr.RoundsConfig(**{**cfg.__dict__, "target_ids": [DS_R1, 591]}), Calls())
    with pytest.raises(plr.DriverError, match="plans nnUNetPlans_nope of Dataset571_PLRounds not found.*nnUNetv2_plan"):
        plr.Rounds(plr.RoundsConfig(**{**cfg.__dict__, "plans": "nnUNetPlans_nope"}), Calls())
