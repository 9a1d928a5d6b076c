"""benchmarks/gpu_check.py on CPU with --quick: the script that a GPU loan runs in one call must not rot in between.

It runs exactly as on the device (its own synthetic datasets planned by nnU-Net, every trainer trained, stopped,
continued with --c and predicted, the measure part's paired timings), on tiny settings; the record must list every
smoke item as passed. The prediction Dice of a few CPU iterations is recorded but not required (--quick)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import REPO, THREADS_ENV

SMOKE = {"stock", "fd", "fd_allBlocks", "cps", "cps_uif", "cps_cutmix", "s2s2",
         "s2s2fd", "gms", "stego", "flare22", "c2f",
         "s2s2_tune_generate"}
MEASURE = {"steps_hippocampus", "steps_default_plans", "gms_step", "generator", "c2f_inference"}


def test_quick_cpu_run_passes_every_item(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore", **THREADS_ENV)
    env.pop("nnUNet_extTrainer", None)  # the script sets its own trainers (and nnU-Net's folders)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--results", str(tmp_path / "results"), "--workdir", str(tmp_path / "work")],
                          env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"gpu_check exited {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    records = sorted((tmp_path / "results").glob("gpu_check_*.json"))
    assert len(records) == 1 and records[0].with_suffix(".md").is_file()
    rec = json.loads(records[0].read_text())
    items = rec["items"]
    assert SMOKE <= set(items) and MEASURE <= set(items), sorted(items)
    bad = {k: v.get("error") for k, v in items.items() if v["status"] != "passed"}
    assert not bad, bad
    # every smoke training: finite losses checked by the script, a checkpoint continued with --c, a prediction
    for name in SMOKE - {"c2f", "s2s2_tune_generate"}:
        f = items[name]["figures"]
        assert f["resume_s"] is not None and "dice" in f and 0 <= f["chance"] < 1, (name, f)
    assert items["c2f"]["figures"]["predict_c2f"]["cases"] >= 1
    for cfg in items["steps_hippocampus"]["figures"], items["steps_default_plans"]["figures"]:
        ratios = [r for c in ("2d", "3d_fullres") if c in cfg for r in cfg[c]["ratios"].values()]
        assert ratios and all(r["mean"] > 0 and r["ci95"][0] <= r["mean"] <= r["ci95"][1] for r in ratios)
    assert rec["device"]["device"] == "CPU" and rec["device"]["torch"] and rec["device"]["nnunetv2"]
    for part in ("data", "smoke", "measure", "total"):
        assert f"gpu_check: {part}:" in proc.stdout
    print(f"gpu_check --device cpu --quick: {seconds:.0f} s")


def test_gpu_wheels_prints_the_device_command():
    """benchmarks/gpu_wheels.sh --print: the one line for the device (wheels from .whl, the repository on
    PYTHONPATH, the check writing into the device tool's $OUT), without downloading anything."""
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_wheels.sh"), "--print"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "pip install" in ln)
    for part in ("--no-index --no-deps", "--target /tmp/site .whl/*.whl", "PYTHONPATH=/tmp/site:$PWD",
                 "benchmarks/gpu_check.py", "--results $OUT"):
        assert part in line, (part, line)
    assert ".whl/" in (REPO / ".gitignore").read_text().split(), "the wheels folder is ignored by git"
