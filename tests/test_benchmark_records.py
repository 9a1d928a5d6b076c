"""Benchmark scripts name their records by date; a second run the same day must not replace the first."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_fd import new_record_stem, write_record  # noqa: E402


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
