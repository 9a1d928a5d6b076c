"""nnunet_ext.atomic_io: the target holds the old content or the whole new one; no temporary file stays behind."""
from __future__ import annotations

import json
import os
import stat

import pytest

from nnunet_ext.atomic_io import replace_atomic, save_figure_atomic, write_json_atomic, write_text_atomic


def test_text_and_json_are_written_whole_with_the_umask_mode(tmp_path):
    write_text_atomic(tmp_path / "a.md", "x\r\ny\n")
    assert (tmp_path / "a.md").read_bytes() == b"x\r\ny\n"  # as given, no newline translation
    write_json_atomic(tmp_path / "a.json", {"b": [1, 2]}, indent=4, sort_keys=True)
    assert json.loads((tmp_path / "a.json").read_text()) == {"b": [1, 2]}
    assert (tmp_path / "a.json").read_text().startswith('{\n    "b"')
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.md"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_atomic(target, fail)
    with pytest.raises(TypeError):
        write_json_atomic(target, {"not serialisable": object()})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_writers_that_pick_the_format_from_the_name_get_the_suffix(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig = plt.figure()
    save_figure_atomic(fig, tmp_path / "plot.png", dpi=20)
    plt.close(fig)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    arr = np.arange(6)
    replace_atomic(tmp_path / "d.npy", lambda t: np.save(t, arr), suffix=".npy")  # np.save appends .npy otherwise
    assert (np.load(tmp_path / "d.npy") == arr).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "plot.png"]
