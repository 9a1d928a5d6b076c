"""Benchmark scripts name their records by date; a second run the same day must not replace the first."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from common import command_line, new_record_stem, write_case_lists, write_record  # noqa: E402


def test_second_run_of_the_day_gets_its_own_record(tmp_path):
    stem = tmp_path / "fd_hippocampus_speed_2026-12-03"
    assert new_record_stem(stem) == stem
    stem.with_suffix(".md").write_text("first run")
    second = new_record_stem(stem)
    assert second.name == "fd_hippocampus_speed_2026-12-03_run2"
    second.with_suffix(".json").write_text("{}")
    assert new_record_stem(stem).name == "fd_hippocampus_speed_2026-12-03_run3"
    assert stem.with_suffix(".md").read_text() == "first run"


def test_write_record_writes_both_files_and_no_temporary(tmp_path):
    stem = tmp_path / "fd_hippocampus_speed_2026-12-03"
    write_record(stem, {"date": "2026-12-03", "path": tmp_path}, "# record\n", indent=1, default=str)
    assert stem.with_suffix(".json").read_text() == json.dumps({"date": "2026-12-03", "path": tmp_path},
                                                                indent=1, default=str)
    assert stem.with_suffix(".md").read_text() == "# record\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [stem.name + ".json", stem.name + ".md"]


def test_the_scripts_share_one_module_and_the_old_names_still_import():
    import bench_fd
    import bench_hippocampus_fd_quality as hippo
    import common

    from nnunet_ext.paths import console_script

    # bench_gms.py and gpu_check.py still import these from the old scripts
    assert bench_fd.machine is common.machine and bench_fd.write_record is common.write_record
    assert bench_fd.new_record_stem is common.new_record_stem
    assert hippo._bin is console_script and hippo.run is common.run and hippo.setup_env is common.setup_env
    assert hippo.converted_and_planned_2d is common.converted_and_planned_2d
    assert "cores" in common.machine("cpu") and common.machine("cpu").endswith("device cpu")


def test_case_lists_are_rewritten_only_when_they_change(tmp_path):
    lists = write_case_lists(tmp_path / "split", {"train": ["a", "b"], "test": ["c"]})
    assert lists["train"].read_text() == "a\nb\n" and lists["test"].read_text() == "c\n"
    mtime = lists["train"].stat().st_mtime_ns
    write_case_lists(tmp_path / "split", {"train": ["a", "b"]})
    assert lists["train"].stat().st_mtime_ns == mtime
    assert command_line("/x/benchmarks/bench_fd.py", ["--workdir", "a b"]).endswith("bench_fd.py --workdir 'a b'")
