"""nnunet_ext.atomic_io: the target holds the old content or the whole new one; no temporary file stays behind."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

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


def test_folders_are_swapped_in_whole(tmp_path):
    from nnunet_ext.atomic_io import replace_folder_atomic

    def write(text):
        return lambda tmp: Path(tmp, "w.bin").write_text(text)

    target = tmp_path / "model"
    replace_folder_atomic(target, write("1"))
    assert (target / "w.bin").read_text() == "1"

    def fail(tmp):
        Path(tmp, "w.bin").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        replace_folder_atomic(target, fail)
    assert (target / "w.bin").read_text() == "1"
    replace_folder_atomic(target, write("2"))
    assert (target / "w.bin").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no temporary or old folder stays behind"


def test_blosc2_and_pickle_files_are_nnunets_and_whole(tmp_path):
    import pickle

    import blosc2
    import numpy as np

    from nnunet_ext.atomic_io import write_blosc2_atomic, write_pickle_atomic

    stack = np.random.default_rng(0).standard_normal((3, 2, 1, 16, 16))
    write_blosc2_atomic(tmp_path / "case.b2nd", stack, (16, 16), leading_axes=1)
    arr = blosc2.open(str(tmp_path / "case.b2nd"), mode="r")
    assert arr.chunks[0] == 1 and np.array_equal(arr[:], stack.astype(np.float32))
    write_pickle_atomic(tmp_path / "case.pkl", {"spacing": [1, 2]})
    assert pickle.load(open(tmp_path / "case.pkl", "rb")) == {"spacing": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.b2nd", "case.pkl"]


def test_link_or_copy_places_without_copying_and_keeps_the_source_mode(tmp_path):
    from nnunet_ext.paths import link_or_copy

    src = tmp_path / "a.nii.gz"
    src.write_text("image")
    src.chmod(0o640)
    link_or_copy(src, tmp_path / "hard.nii.gz")
    assert os.path.samefile(src, tmp_path / "hard.nii.gz") and stat.S_IMODE(os.stat(src).st_mode) == 0o640
    (tmp_path / "other").write_text("other")
    link_or_copy(tmp_path / "other", tmp_path / "hard.nii.gz")  # an existing file is kept ...
    assert (tmp_path / "hard.nii.gz").read_text() == "image"
    link_or_copy(str(tmp_path / "other"), tmp_path / "sym", symlink=True)
    link_or_copy(str(src), tmp_path / "sym", symlink=True, replace=True)  # ... unless it is to be replaced
    assert os.readlink(tmp_path / "sym") == str(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "hard.nii.gz", "other", "sym"]
