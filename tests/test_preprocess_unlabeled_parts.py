"""preprocess-unlabeled --num-parts/--part: two parts started at once give exactly one run's folder (the same
preprocessed cases, the same skipped.json with both parts' skipped cases), and each part's summary is right."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np

from conftest import _bin, run_cli
from test_pseudo_label_parts import DS_PL, planned_unlabelled_dataset

from nnunet_ext.core.sharding import shard


def _contents(folder: Path) -> dict:
    import blosc2

    out = {}
    for f in sorted(folder.iterdir()):
        if f.suffix == ".b2nd":
            out[f.name] = blosc2.open(str(f), mode="r")[:]
        elif f.suffix == ".pkl":
            with open(f, "rb") as fh:
                out[f.name] = pickle.load(fh)
        elif f.suffix == ".json":
            out[f.name] = json.loads(f.read_text())
    return out


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_two_parts_at_once_give_one_runs_folder(nnunet_dirs, nnunet_env, tmp_path):
    data = planned_unlabelled_dataset(nnunet_dirs, nnunet_env)
    out = data["pre"] / "nnUNetPlans_3d_fullres_unlabeled"
    shutil.rmtree(out, ignore_errors=True)
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (data["raw"] / "imagesUnlabeled").glob("*_0000.nii.gz"))
    args = ["preprocess-unlabeled", "-d", DS_PL, "-c", "3d_fullres", "-np", 1, "-q", "--num-parts", 2]
    procs = [subprocess.Popen([_bin("nnunet-ext"), *map(str, args + ["--part", i])], env=nnunet_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    broken_part = 0 if "broken" in shard(cases, 0, 2) else 1  # the part that has the corrupt image
    for i, (stdout, stderr) in enumerate(results):
        n = len(shard(cases, i, 2))
        has_broken = i == broken_part
        assert f"part {i} of 2: {n} unlabelled case(s) (of {len(cases)}), 0 already preprocessed" in stdout
        assert f"{n - has_broken} of its {n} case(s) ready, {int(has_broken)} skipped" in stdout, stdout
        assert ("skipped broken" in stderr) == has_broken and "scan.nii.gz" in stderr
    parts = _contents(out)
    assert set(parts["skipped.json"]) == {"broken", "scan.nii.gz"}, "a part's skipped cases were lost"
    shutil.rmtree(out)
    one = run_cli("nnunet-ext", args[:-2], nnunet_env)
    assert f"{len(cases) - 1} unlabelled case(s) ready, 2 skipped" in one.stdout
    single = _contents(out)
    assert sorted(single) == sorted(parts) and _same(single, parts)
    # a part re-run does only what it has not done (the corrupt image is tried again)
    again = run_cli("nnunet-ext", args + ["--part", broken_part], nnunet_env)
    n = len(shard(cases, broken_part, 2))
    assert f"{n - 1} already preprocessed, 1 to do" in again.stdout
    assert set(json.loads((out / "skipped.json").read_text())) == {"broken", "scan.nii.gz"}
