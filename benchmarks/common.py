"""What the benchmark scripts share: nnU-Net folders, console scripts, resumable steps, the split, the machine,
the allocator setting, and the result records.

The scripts run as ``python benchmarks/<script>.py`` (Python puts ``benchmarks/`` first on ``sys.path``), and import
this module as ``common``. Nothing here is part of the ``nnunet_ext`` package.

* ``setup_env``, ``run``, ``converted_and_planned_2d``: the nnU-Net folders of a work folder, a resumable step
  (one command), a dataset converted and planned for 2d.
* ``fold0_cases``, ``write_case_lists``: fold 0 of nnU-Net's default split, as case lists.
* ``machine``, ``command_line``, ``new_record_stem``, ``write_record``: what a result record says and where it goes.
* ``add_allocator_argument``, ``ensure_allocator``, ``allocator_label``: glibc's malloc for CPU timings.
* ``bootstrap_median_ci``: the median of per-batch ratios with its bootstrap interval.
* ``robustness_of_seed``, ``robustness_over_seeds``: ``nnunet-ext robustness`` on a benchmark's models.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from nnunet_ext.atomic_io import replace_atomic, write_json_atomic, write_text_atomic
from nnunet_ext.paths import console_script, dataset_folder_name

REPO = Path(__file__).resolve().parent.parent
#: the data and weights beside this repository's CI (a user gives --source / the weights' folder instead)
SHARED = REPO.parent / "shared"
#: the published datasets the scripts convert: (converter, source folder, file ending of the labels)
SOURCES = {"kvasir": ("kvasir_seg", SHARED / "data" / "kvasir_seg_256", ".png"),
           "hippocampus": ("msd_flat", SHARED / "data" / "msd_hippocampus", ".nii.gz")}


# ------------------------------------------------------------------------------------------------ nnU-Net
def setup_env(workdir: Path) -> None:
    """``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` = ``workdir/{raw,preprocessed,results}`` (made),
    and 2 processes unless ``nnUNet_def_n_proc`` says otherwise."""
    for k, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        os.environ[k] = str(Path(workdir) / sub)
        (Path(workdir) / sub).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", "2")


def run(cmd, env=None) -> None:
    """Run one step (printed first); a failure ends the script with the command and how to continue."""
    print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    rc = subprocess.call([str(c) for c in cmd], env=env)
    if rc != 0:
        sys.exit(f"failed (exit code {rc}): {' '.join(map(str, cmd))}\nre-run the same command to continue")


def dataset_folder(ds_id: int) -> Optional[Path]:
    """``$nnUNet_raw/DatasetXXX_*`` of this id (the first by name), or None."""
    found = sorted(Path(os.environ["nnUNet_raw"]).glob(dataset_folder_name(ds_id, "*")))
    return found[0] if found else None


def converted_and_planned_2d(ds_id: int, converter: str, source: Path, plans: str = "nnUNetPlans") -> tuple:
    """Convert ``source`` with ``nnunet-ext convert CONVERTER`` to DatasetXXX in $nnUNet_raw and run nnU-Net's
    2d planning and preprocessing, each step skipped when done. Returns (dataset name, preprocessed folder,
    plans file)."""
    if dataset_folder(ds_id) is None:
        run([console_script("nnunet-ext"), "convert", converter, "--source", source, "--id", ds_id])
    name = dataset_folder(ds_id).name
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    plans_file = pre / f"{plans}.json"
    if not plans_file.is_file() or not list((pre / f"{plans}_2d").glob("*.b2nd")):
        run([console_script("nnUNetv2_plan_and_preprocess"), "-d", ds_id, "-c", "2d", "-np", 2])
    return name, pre, plans_file


def fold0_cases(labels_dir: Path, file_ending: str) -> Tuple[list, list]:
    """(training, test) cases of fold 0 of nnU-Net's default 5-fold split (KFold, seed 12345) of the labelled
    cases in ``labels_dir``: what ``nnUNetv2_train`` would write to splits_final.json."""
    from nnunet_ext.benchmark.protocol import default_splits

    ids = sorted(p.name[: -len(file_ending)] for p in Path(labels_dir).glob(f"*{file_ending}"))
    fold0 = default_splits(ids)[0]
    return list(map(str, fold0["train"])), list(map(str, fold0["val"]))


def write_case_lists(folder: Path, lists: Dict[str, Iterable[str]]) -> Dict[str, Path]:
    """``folder/<name>.txt`` for each list, one case a line (a file is rewritten only when its list changed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, cases in lists.items():
        f, text = folder / f"{name}.txt", "\n".join(map(str, cases)) + "\n"
        if not f.is_file() or f.read_text() != text:
            write_text_atomic(f, text)
        paths[name] = f
    return paths


# ------------------------------------------------------------------------------------------------ records
def machine(device: Optional[str] = None) -> str:
    """The machine a figure was measured on (:func:`nnunet_ext.benchmark.report.machine`)."""
    from nnunet_ext.benchmark.report import machine as describe
    return describe(device)


def command_line(script: str, argv=None) -> str:
    """``python benchmarks/<script>.py ARGS`` as run (``argv``: default ``sys.argv[1:]``), quoted for a shell."""
    args = sys.argv[1:] if argv is None else argv
    return "python " + " ".join([os.path.relpath(script, REPO)] + [shlex.quote(str(a)) for a in args])


def new_record_stem(stem: Path) -> Path:
    """``stem``, or ``stem_run2``, ``stem_run3``, ...: the first whose ``.json`` and ``.md`` do not exist yet.

    Results are named by date; a second run on the same day gets its own files instead of replacing the
    first run's record.
    """
    stem, n = Path(stem), 1
    candidate = stem
    while candidate.with_suffix(".json").exists() or candidate.with_suffix(".md").exists():
        n += 1
        candidate = stem.with_name(f"{stem.name}_run{n}")
    return candidate


def write_record(stem: Path, data: dict, markdown: str, indent: int = 2, **json_kwargs) -> None:
    """Write a result record: ``stem.json`` (``json.dumps(data, indent=indent, **json_kwargs)``) and then
    ``stem.md`` (``markdown`` as given), each atomically (:mod:`nnunet_ext.atomic_io`): the .json first, then the .md.
    """
    stem = Path(stem)
    write_json_atomic(stem.with_suffix(".json"), data, indent=indent, **json_kwargs)
    write_text_atomic(stem.with_suffix(".md"), markdown)


# ------------------------------------------------------------------------------------------------ timing
CACHING_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def add_allocator_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allocator", choices=("caching", "default"), default="caching",
                   help="caching: glibc's malloc keeps freed memory for reuse (MALLOC_MMAP_MAX_=0, "
                        "MALLOC_TRIM_THRESHOLD_=64 GiB), as PyTorch's CUDA allocator does on a GPU; default: glibc's "
                        "defaults, where every map larger than 32 MiB is fresh memory the kernel faults in and zeroes "
                        "(on this machine about half of a CPU step's time, and most of its noise)")


def ensure_allocator(args, argv, script: str) -> None:
    """Re-run ``script`` with the caching malloc settings in its environment (glibc reads them at start)."""
    if args.allocator == "caching" and any(os.environ.get(k) != v for k, v in CACHING_MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, os.path.abspath(script)] + list(argv),
                  {**os.environ, **CACHING_MALLOC_ENV})


def allocator_label(args) -> str:
    if args.allocator == "default":
        return "default (glibc)"
    return "caching (" + " ".join(f"{k}={v}" for k, v in CACHING_MALLOC_ENV.items()) + ")"


def bootstrap_median_ci(ratios, n_boot: int, seed: int = 0):
    """Median of ``ratios`` and its 95% percentile-bootstrap interval (resampling the batches)."""
    import numpy as np

    r = np.asarray(ratios, dtype=np.float64)
    rng = np.random.default_rng(seed)
    meds = np.median(r[rng.integers(0, len(r), size=(n_boot, len(r)))], axis=1)
    return float(np.median(r)), [float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))]


# ------------------------------------------------------------------------------------------------ robustness
def robustness_of_seed(args, out: Path, workdir: Path, seed: str, records, dataset) -> dict:
    """``nnunet-ext robustness`` on the seed's models of the benchmark in ``out`` (resumable), its tables kept in
    RECORDS/robustness/seed<s>/. Uses ``args.trainers``, ``args.configuration``, ``args.plans``, ``args.device``
    and ``args.robustness_args``. Recorded tables are used as they are (a later session has no models)."""
    rec = records / "robustness" / f"seed{seed}" if records is not None else None
    rob_out = workdir / "robustness" / f"seed{seed}"
    if rec is not None and (rec / "robustness.md").is_file():
        print(f"robustness of seed {seed}: recorded in {rec} (kept)")
        return {"folder": str(rec), "markdown": (rec / "robustness.md").read_text(),
                "per_case": str(rec / "robustness_per_case.csv.gz")}
    from nnunet_ext.paths import ext_trainer_env
    bench = json.loads((out / "benchmark.json").read_text())
    fold, name = bench["protocol"]["fold"], bench["protocol"]["dataset_name"]
    variants = [t.strip() + "__bench" for t in args.trainers.split(",") if t.strip()]
    seed_dir = out / "runs" / f"seed{seed}"
    missing = [v for v in variants if not (seed_dir / name / f"{v}__{args.plans}__{args.configuration}" /
                                           f"fold_{fold}" / "checkpoint_final.pth").is_file()]
    if missing:
        print(f"robustness of seed {seed}: skipped, no models of {', '.join(missing)} in {seed_dir} (runs restored "
              f"from records) and no recorded tables in {rec}")
        return {"folder": None, "markdown": None}
    env = ext_trainer_env([out / "trainers"])
    env["nnUNet_results"] = str(seed_dir)
    run([console_script("nnunet-ext"), "robustness", "-d", dataset, "-c", args.configuration,
         "-tr", ",".join(variants), "-f", fold, "-p", args.plans, "-o", rob_out, "-device", args.device,
         *shlex.split(args.robustness_args)], env=env)
    md = rob_out / "robustness.md"
    if rec is not None:
        rec.mkdir(parents=True, exist_ok=True)
        # robustness.md last: it marks the record complete; the per-case table compressed (~10x smaller)
        for f, dst in (("robustness.csv", "robustness.csv"), ("robustness.png", "robustness.png"),
                       ("robustness_per_case.csv", "robustness_per_case.csv.gz"), ("robustness.md", "robustness.md")):
            if (rob_out / f).is_file():
                data = (rob_out / f).read_bytes()
                data = gzip.compress(data, mtime=0) if dst.endswith(".gz") else data
                replace_atomic(rec / dst, lambda tmp, data=data: Path(tmp).write_bytes(data))
    return {"folder": str(rob_out), "markdown": md.read_text() if md.is_file() else None,
            "per_case": str(rob_out / "robustness_per_case.csv")}


def robustness_over_seeds(robustness: dict, trainers: list) -> tuple:
    """Per corruption, over all seeds with tables: Dice per trainer and the paired per-case difference against the
    first trainer with a 95% bootstrap CI (:mod:`nnunet_ext.robustness.compare`). Returns (result, markdown)."""
    from nnunet_ext.robustness.compare import compare_under_corruptions, comparison_markdown
    rows, seeds = [], []
    for s, r in robustness.items():
        path = Path(r.get("per_case") or "")
        if not path.is_file():
            continue
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        variants = {t + "__bench": t for t in trainers}
        rows += [dict(q, seed=s, trainer=variants.get(q["trainer"], q["trainer"]))
                 for q in csv.DictReader(io.StringIO(text))]
        seeds.append(s)
    if not rows:
        return None, ""
    cmp = compare_under_corruptions(rows, trainers)
    md = (f"Mean foreground Dice per corruption over seeds {', '.join(seeds)}, severities >= 1 (clean: the unmodified "
          f"test images), cases and classes; difference against {trainers[0]} paired by case, class, seed and "
          f"severity, averaged per case, mean over cases with a 95% bootstrap CI (cases resampled).\n\n"
          + comparison_markdown(cmp))
    return {"seeds": seeds, "per_corruption": cmp}, md
