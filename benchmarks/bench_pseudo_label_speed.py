"""Benchmark: cases per second of ``nnunet-ext pseudo-label`` (streamed: background preprocessing and export
processes, the network in the main process) against the way it predicted before (issue #27): one
``nnUNetPredictor.predict_single_npy_array`` call per case in a loop (read, preprocess, predict, resample, write,
score, one after the other, all in one process), kept only in this script as the baseline.

Both get the same machine, model, cases, device and mirroring, and the same work per case: the pseudo-label in the
image's geometry (written to disk) and its uncertainty (mean normalised entropy over the dilated foreground, from the
class probabilities, which are never written). Each is run as a user would run it, one process from start to exit:

* ``wall``: cases / (wall time of the process), model loading and process start-up included;
* ``loop``: cases / (time from the first case read to the last pseudo-label written), what the process reports
  (for pseudo-label this includes starting its background processes: a few seconds that only many cases hide).

The two outputs are compared (identical label maps, largest difference of the uncertainty), so a faster route that
computed something else would show. Runs alternate (baseline, new, baseline, ... ``--repeats`` times each).

Model and cases (``--dataset`` not given: synthetic, all made in ``--workdir``, each step skipped when done):
``nnunet_ext.core.synthetic.generate_dataset_3d`` with ``--train`` labelled and ``--cases`` unlabelled volumes of
``--shape`` voxels at ``--spacing`` mm, planned by nnU-Net (``3d_fullres``), and a model trained by
``nnUNetTrainer_plSpeedBench`` (stock nnU-Net, ``--iterations`` iterations, 1 epoch, written into
``WORKDIR/trainers``): the speed does not depend on how good the model is. With ``--dataset D`` (and ``-c``, ``-tr``,
``-p``, ``-f``): that trained model in ``$nnUNet_results`` and the unlabelled images of ``$nnUNet_raw``'s dataset
(``imagesUnlabeled``, the first ``--cases``). Nothing of a user's folders is written: both routes read the images
and the checkpoint through links in ``WORKDIR/bench`` and write there.

    python benchmarks/bench_pseudo_label_speed.py                       # synthetic, CPU, under 10 min on 2 cores
    python benchmarks/bench_pseudo_label_speed.py -device cuda --cases 200
    python benchmarks/bench_pseudo_label_speed.py --dataset 22 -c 3d_fullres -tr nnUNetTrainer -f 0 --cases 100 \\
        -device cuda

Result: ``benchmarks/results/pseudo_label_speed_<data>_<date>.{md,json}`` (the exact command, date, machine).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, command_line, machine, new_record_stem, run, write_record
from common import setup_env as setup_nnunet_folders
from nnunet_ext.paths import console_script, dataset_folder_name, ext_trainer_env

SYNTHETIC_ID = 621
TARGET_ID = 622
TRAINER = "nnUNetTrainer_plSpeedBench"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "workdir" / "pseudo_label_speed"))
    p.add_argument("--dataset", default=None, help="an existing dataset with a trained model (default: synthetic)")
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-tr", dest="trainer", default=None, help=f"trainer of --dataset's model (synthetic: {TRAINER})")
    p.add_argument("-p", dest="plans", default="nnUNetPlans")
    p.add_argument("-f", dest="fold", default="0")
    p.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth")
    p.add_argument("--cases", type=int, default=16, help="unlabelled cases predicted by each route")
    p.add_argument("--train", type=int, default=5, help="synthetic labelled cases (planning and training)")
    p.add_argument("--shape", type=int, nargs=3, default=[24, 48, 48], help="synthetic volume size (z y x)")
    p.add_argument("--spacing", type=float, nargs=3, default=[2.0, 1.0, 1.0], help="synthetic spacing (z y x) mm")
    p.add_argument("--iterations", type=int, default=5, help="training iterations of the synthetic model")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--disable-tta", dest="disable_tta", action="store_true", help="both routes without mirroring")
    p.add_argument("-npp", type=int, default=3, help="pseudo-label's preprocessing processes")
    p.add_argument("-nps", type=int, default=3, help="pseudo-label's export processes")
    p.add_argument("--repeats", type=int, default=1, help="runs of each route (alternating)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--baseline-worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ the baseline
def baseline_worker(spec_file: str) -> None:
    """The way pseudo-label predicted before streaming: the model loaded once, then per case (in this process, one
    after the other) ``read_images``, ``predict_single_npy_array`` (nnU-Net's preprocessing, sliding window,
    resampling to the input's geometry, with probabilities), ``write_seg``, the uncertainty from the probabilities
    (torch, the whole volume at once). Writes ``{"loop_s", "cases": {case: {"uncertainty", "file"}}}``."""
    import contextlib
    import io

    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from scipy import ndimage

    from nnunet_ext.cps.uncertainty import normalised_entropy

    spec = json.loads(Path(spec_file).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(spec["device"], 0) if spec["device"] == "cuda" else torch.device("cpu")
    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=spec["tta"],
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(spec["model"], use_folds=(spec["fold"],),
                                                       checkpoint_name=spec["checkpoint"])
    rw = predictor.plans_manager.image_reader_writer_class()
    fe = predictor.dataset_json["file_ending"]
    results = {}
    start = time.perf_counter()
    for case, files in sorted(spec["cases"].items()):
        image, props = rw.read_images(files)
        seg, probs = predictor.predict_single_npy_array(image, props, None, None, True)
        rw.write_seg(seg, str(out / f"{case}{fe}"), props)
        ent = normalised_entropy(torch.from_numpy(np.asarray(probs, dtype=np.float32))[None])[0].numpy()
        fg = seg > 0
        region = ndimage.binary_dilation(fg) if fg.any() else np.ones_like(fg)
        results[case] = {"uncertainty": float(ent[region].mean()), "file": f"{case}{fe}"}
    loop = time.perf_counter() - start
    Path(spec["result"]).write_text(json.dumps({"loop_s": loop, "cases": results}))


# ---------------------------------------------------------------------------------------------- the data
def synthetic_model(args, workdir: Path) -> tuple:
    """(dataset name, model folder, trainer-path environment) of the synthetic dataset's model (made if missing)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin, variant_source, write_variant_module
    from nnunet_ext.core.synthetic import PhantomSpec, generate_dataset_3d

    setup_nnunet_folders(workdir)
    raw = Path(os.environ["nnUNet_raw"])
    found = sorted(raw.glob(dataset_folder_name(SYNTHETIC_ID, "*")))
    if not found:
        spec = PhantomSpec(shape=tuple(args.shape), spacing=tuple(args.spacing))
        generate_dataset_3d(str(raw), SYNTHETIC_ID, name="PLSpeed", num_train=args.train, num_unlabeled=args.cases,
                            spec=spec, seed=0)
        found = sorted(raw.glob(dataset_folder_name(SYNTHETIC_ID, "*")))
    name = found[0].name
    have = len(list((found[0] / "imagesUnlabeled").glob("*_0000.nii.gz")))
    if have < args.cases:
        sys.exit(f"{found[0]} has {have} unlabelled cases, fewer than --cases {args.cases}: give another --workdir "
                 f"(the synthetic data is made once per work folder)")
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    if not list((pre / f"{args.plans}_{args.configuration}").glob("*.pkl")):
        run([console_script("nnUNetv2_plan_and_preprocess"), "-d", SYNTHETIC_ID, "-c", args.configuration,
             "-np", 2, "-npfp", 2])
    tdir = workdir / "trainers"
    src = variant_source(nnUNetTrainer, TRAINER, {"num_epochs": 1, "num_iterations_per_epoch": args.iterations,
                                                  "num_val_iterations_per_epoch": 1},
                         mixins=(NoFinalValidationMixin, ScheduleMixin),
                         generated_by="benchmarks/bench_pseudo_label_speed.py",
                         doc="Stock nnU-Net, a few iterations: a model to time prediction with.")
    write_variant_module(tdir / "pl_speed_bench_trainers.py", src)
    env = ext_trainer_env([tdir])
    model = Path(os.environ["nnUNet_results"]) / name / f"{TRAINER}__{args.plans}__{args.configuration}"
    if not (model / f"fold_{args.fold}" / args.checkpoint).is_file():
        run([console_script("nnUNetv2_train"), SYNTHETIC_ID, args.configuration, args.fold, "-tr", TRAINER,
             "-p", args.plans, "-device", args.device], env)
    return name, model, env


def existing_model(args) -> tuple:
    from nnunet_ext.paths import nnunet_folder, resolve_dataset_name

    name = resolve_dataset_name(args.dataset)
    trainer = args.trainer or "nnUNetTrainer"
    model = nnunet_folder("nnUNet_results") / name / f"{trainer}__{args.plans}__{args.configuration}"
    if not (model / f"fold_{args.fold}" / args.checkpoint).is_file():
        sys.exit(f"{model / f'fold_{args.fold}' / args.checkpoint} not found")
    return name, model, ext_trainer_env()


def bench_folders(args, workdir: Path, name: str, model: Path) -> tuple:
    """``WORKDIR/bench/{raw,results,preprocessed}``: the source dataset (its dataset.json, the first ``--cases``
    unlabelled cases linked) and the model (plans, dataset.json, the fold's checkpoint linked), so that both routes
    read the user's files and write only here. Returns (bench root, {case: files}, bench model folder)."""
    from nnunet_ext.unlabeled.raw import unlabeled_cases

    src = Path(os.environ["nnUNet_raw"]) / name
    dataset_json = json.loads((src / "dataset.json").read_text())
    cases, _ = unlabeled_cases(src, dataset_json)
    chosen = dict(sorted(cases.items())[:args.cases])
    if not chosen:
        sys.exit(f"no unlabelled images in {src / 'imagesUnlabeled'}")
    bench = workdir / "bench"
    shutil.rmtree(bench, ignore_errors=True)
    braw = bench / "raw" / name
    (braw / "imagesUnlabeled").mkdir(parents=True)
    (bench / "preprocessed").mkdir()
    shutil.copy(src / "dataset.json", braw / "dataset.json")
    linked = {}
    for case, files in chosen.items():
        linked[case] = []
        for f in files:
            dst = braw / "imagesUnlabeled" / Path(f).name
            os.symlink(os.path.abspath(f), dst)
            linked[case].append(str(dst))
    bmodel = bench / "results" / name / model.name
    (bmodel / f"fold_{args.fold}").mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        shutil.copy(model / f, bmodel / f)
    os.symlink(model / f"fold_{args.fold}" / args.checkpoint, bmodel / f"fold_{args.fold}" / args.checkpoint)
    return bench, linked, bmodel


# --------------------------------------------------------------------------------------------- the runs
def timed(cmd, env) -> tuple:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return wall, proc.stdout


def run_baseline(args, bench: Path, cases: dict, bmodel: Path, env: dict, i: int) -> dict:
    out = bench / f"baseline_{i}"
    spec = {"model": str(bmodel), "fold": int(args.fold) if args.fold != "all" else "all",
            "checkpoint": args.checkpoint, "device": args.device, "tta": not args.disable_tta, "cases": cases,
            "out": str(out), "result": str(bench / f"baseline_{i}.json")}
    spec_file = bench / f"baseline_{i}_spec.json"
    spec_file.write_text(json.dumps(spec))
    wall, _ = timed([sys.executable, os.path.abspath(__file__), "--baseline-worker", spec_file], env)
    result = json.loads((bench / f"baseline_{i}.json").read_text())
    n = len(cases)
    return {"wall_s": wall, "loop_s": result["loop_s"], "cases_per_s_wall": n / wall,
            "cases_per_s_loop": n / result["loop_s"], "out": str(out), "cases": result["cases"]}


def run_new(args, bench: Path, name: str, bmodel: Path, env: dict) -> dict:
    from nnunet_ext.cps.pseudo_label import cache_folder

    cache = cache_folder(bmodel, [args.fold], args.checkpoint, not args.disable_tta)
    shutil.rmtree(cache, ignore_errors=True)  # predict every case again
    trainer, plans, _ = bmodel.name.split("__")
    cmd = [console_script("nnunet-ext"), "pseudo-label", "-d", name, "-c", args.configuration, "-tr", trainer,
           "-p", plans, "-f", args.fold, "-chk", args.checkpoint, "--target-id", TARGET_ID, "--overwrite",
           "-device", args.device, "-npp", args.npp, "-nps", args.nps, "-q"] + \
        (["--disable-tta"] if args.disable_tta else [])
    wall, stdout = timed(cmd, env)
    m = re.search(r"predicted (\d+) case\(s\) in ([0-9.]+) s", stdout)
    if not m:
        sys.exit("pseudo-label did not report its prediction time")
    n, loop = int(m.group(1)), float(m.group(2))
    records = {p.stem: json.loads(p.read_text()) for p in (cache / "records").glob("*.json")}
    return {"wall_s": wall, "loop_s": loop, "cases_per_s_wall": n / wall, "cases_per_s_loop": n / loop,
            "out": str(cache), "cases": records}


def compare(baseline: dict, new: dict) -> dict:
    """How many label maps are identical, and the largest uncertainty difference."""
    import numpy as np
    import SimpleITK as sitk

    same, diff = 0, 0.0
    for case, r in baseline["cases"].items():
        other = new["cases"].get(case, {})
        if "file" not in other:
            continue
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(baseline["out"]) / r["file"])))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(new["out"]) / other["file"])))
        same += int(a.shape == b.shape and np.array_equal(a, b))
        diff = max(diff, abs(r["uncertainty"] - other["uncertainty"]))
    return {"identical_label_maps": same, "cases": len(baseline["cases"]), "max_uncertainty_difference": diff}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.baseline_worker:
        baseline_worker(args.baseline_worker)
        return
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.dataset is None:
        name, model, env = synthetic_model(args, workdir)
        data = "synthetic"
    else:
        name, model, env = existing_model(args)
        data = name
    bench, cases, bmodel = bench_folders(args, workdir, name, model)
    env = dict(env, nnUNet_raw=str(bench / "raw"), nnUNet_preprocessed=str(bench / "preprocessed"),
               nnUNet_results=str(bench / "results"))
    runs = {"baseline": [], "new": []}
    for i in range(args.repeats):
        runs["baseline"].append(run_baseline(args, bench, cases, bmodel, env, i))
        runs["new"].append(run_new(args, bench, name, bmodel, env))
    check = compare(runs["baseline"][-1], runs["new"][-1])

    import numpy as np

    summary = {k: {m: float(np.median([r[m] for r in v])) for m in ("cases_per_s_wall", "cases_per_s_loop",
                                                                     "wall_s", "loop_s")} for k, v in runs.items()}
    speedup = {m: summary["new"][m] / summary["baseline"][m] for m in ("cases_per_s_wall", "cases_per_s_loop")}
    date = _dt.date.today().isoformat()
    command = command_line(__file__, argv)
    record = {"benchmark": "pseudo-label speed (issue #27)", "date": date, "command": command,
              "machine": machine(args.device), "data": data, "dataset": name, "model": str(model),
              "configuration": args.configuration, "fold": args.fold, "checkpoint": args.checkpoint,
              "tta": not args.disable_tta, "cases": len(cases), "npp": args.npp, "nps": args.nps,
              "synthetic": None if args.dataset else {"shape": args.shape, "spacing": args.spacing,
                                                      "train": args.train, "iterations": args.iterations},
              "environment": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "nnUNet_def_n_proc")},
              "runs": {k: [{m: r[m] for m in ("wall_s", "loop_s", "cases_per_s_wall", "cases_per_s_loop")}
                           for r in v] for k, v in runs.items()},
              "median": summary, "speedup": speedup, "check": check}
    md = (f"# pseudo-label speed: streamed vs one predict_single_npy_array call per case ({date})\n\n"
          f"`{command}`\n\nMachine: {record['machine']}. Data: {data} ({name}), {len(cases)} unlabelled cases, "
          f"{args.configuration} fold {args.fold}, mirroring {'on' if record['tta'] else 'off'}, "
          f"-npp {args.npp} -nps {args.nps}; {args.repeats} run(s) of each, alternating (medians).\n\n"
          "| route | cases/s (process, start to exit) | cases/s (prediction loop) | wall s | loop s |\n"
          "|---|---|---|---|---|\n"
          + "".join(f"| {label} | {summary[k]['cases_per_s_wall']:.3f} | {summary[k]['cases_per_s_loop']:.3f} | "
                    f"{summary[k]['wall_s']:.1f} | {summary[k]['loop_s']:.1f} |\n"
                    for k, label in (("baseline", "before: predict_single_npy_array loop"),
                                     ("new", "nnunet-ext pseudo-label (streamed)")))
          + f"\nSpeed-up: {speedup['cases_per_s_wall']:.2f}x (process), {speedup['cases_per_s_loop']:.2f}x (loop). "
          f"Same output: {check['identical_label_maps']} of {check['cases']} label maps identical, largest "
          f"uncertainty difference {check['max_uncertainty_difference']:.2e}.\n")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = new_record_stem(results / f"pseudo_label_speed_{data}_{date}")
    write_record(stem, record, md)
    print(md)
    print(f"record: {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
