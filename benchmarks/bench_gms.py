"""Benchmark: GMS (nnUNetTrainerGMS, frozen TAESD) vs. stock nnU-Net 2d, same budget, split and seeds (issue #10).

Goal (GMS's claim): Dice within 2 points of stock with at most 1/10 of its trainable parameters.

Datasets (converted, planned and preprocessed in WORKDIR; nnU-Net's default plans):

* ``kvasir`` (default): Kvasir-SEG 256 x 256 (``../shared/data/kvasir_seg_256``, ``nnunet-ext convert kvasir_seg``),
  polyp vs background;
* ``hippocampus``: MSD Hippocampus (``../shared/data/msd_hippocampus``, ``nnunet-ext convert msd_flat``), 2 foreground
  classes (GMS's multi-class variant: one mask latent per class), trained on 2D slices (nnU-Net's 2d configuration)
  and evaluated per volume.

Steps (each resumable: re-running the same command continues where it stopped):

1. convert, ``nnUNetv2_plan_and_preprocess -c 2d``, ``nnunet-ext plan-gms``; then the configuration ``gms_2d_bench``
   that **both** trainers train: ``gms_2d`` (nnU-Net's 2d, patch rounded up to a multiple of 8: the same patch as
   2d for both datasets) with the batch size ``--batch-size`` (default 8, GMS's; 0 = nnU-Net's plan).
2. the split: fold 0 of nnU-Net's default 5-fold split (``WORKDIR/split/{train,test}.txt``; ``--max-test-cases``
   keeps the first N test cases).
3. ``nnunet-ext benchmark -tr nnUNetTrainer,nnUNetTrainerGMS_bw<W> --seeds ... --iterations N`` into
   ``WORKDIR/benchmark``: same budget in iterations and seeds (``$nnUNet_ext_seed``, ``SeedMixin``;
   ``ScheduleMixin`` budget), prediction of the test cases (``nnUNetv2_predict --disable_tta``), evaluation with
   ``nnunet-ext evaluate``'s ``evaluate_folders``, Dice mean ± sd over seeds and the paired per-case Dice
   difference with a 95% bootstrap CI (``nnunet_ext.benchmark.stats.bootstrap_ci``). ``nnUNetTrainerGMS_bw<W>`` is
   nnUNetTrainerGMS with its warm-up scaled to the budget (GMS: 5 of 1000 epochs, so W = round(epochs / 200)).
4. in this process, on the same machine and in the same run: trainable parameters of each network; time per
   training iteration (``train_step`` of freshly built trainers on batches drawn beforehand, interleaved, rotating
   who goes first, medians after warm-up); inference time per test image (``predict_logits_from_preprocessed_data`` of the seed-0
   models on the same preprocessed test cases, interleaved, no mirroring; Hippocampus: per volume).
5. ``benchmarks/results/gms_<dataset>_<date>.{md,json}`` with the exact command, date and machine.

Across sessions: every finished run's results and both timings are kept in ``--records`` (default
``benchmarks/results/records/gms_<dataset>/``, a few kB, no models); commit it as runs finish, and a later
session with an empty workdir restores them instead of re-running.

    python benchmarks/bench_gms.py --dataset kvasir --iterations 1000 --seeds 0,1,2
    python benchmarks/bench_gms.py --dataset kvasir --size 128 --iterations 1000 --seeds 0,1,2   # CPU-sized
    python benchmarks/bench_gms.py --dataset hippocampus --iterations 1000 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

from nnunet_ext.atomic_io import write_json_atomic
from common import REPO, SHARED, converted_and_planned_2d, machine, run, write_record
from common import setup_env as setup_nnunet_folders
from nnunet_ext.paths import console_script

DATASETS = {  # name: (id, converter, source, raw file ending of the labels)
    "kvasir": (131, "kvasir_seg", SHARED / "data" / "kvasir_seg_256", ".png"),
    "hippocampus": (132, "msd_flat", SHARED / "data" / "msd_hippocampus", ".nii.gz"),
}
PLANS = "nnUNetPlans"
CONFIG = "gms_2d_bench"
STOCK, GMS = "nnUNetTrainer", "nnUNetTrainerGMS"
GOAL = "Dice within 2 points of stock with at most 1/10 of its trainable parameters"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="kvasir")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="kvasir only: resample the images to PX x PX before conversion (a reduced size that fits a "
                        "CPU; GMS's paper trains at 224 px); default: the source's 256 px")
    p.add_argument("--workdir", default=None, help="default: benchmarks/workdir/gms_<dataset>")
    p.add_argument("--vae", default=str(SHARED / "weights" / "taesd"), help="VAE folder ($nnUNet_ext_vae)")
    p.add_argument("--iterations", type=int, default=1000, help="training iterations per run (the budget)")
    p.add_argument("--iterations-per-epoch", type=int, default=100)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of both trainers (0: nnU-Net's plan)")
    p.add_argument("--max-test-cases", type=int, default=None, help="only the first N test cases of the split")
    p.add_argument("--timing-iterations", type=int, default=10, help="timed train steps per trainer (after warm-up)")
    p.add_argument("--timing-warmup", type=int, default=2)
    p.add_argument("--timing-images", type=int, default=20, help="test cases timed for inference")
    p.add_argument("-device", dest="device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--records", default=None,
                   help="finished runs' results and the timings (a few kB, no models), committed as they come; a "
                        "later session restores them instead of re-running (default: benchmarks/results/records/"
                        "gms_<dataset>; '' = off)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- preparation
def resampled_source(source: Path, size: int, workdir: Path) -> Path:
    """A copy of a Kvasir-SEG folder (``images/*.jpg``, ``masks/*.jpg``) at ``size`` x ``size`` pixels in
    ``WORKDIR/source_<size>``: images resampled with PIL's area-averaging filter (box) and written as lossless PNG;
    masks binarised at > 127 first, box-resampled and thresholded at one half, written as 0/255 PNG. The source is
    only read. Skipped when the copy is complete."""
    from PIL import Image
    from tqdm import tqdm

    from nnunet_ext.atomic_io import replace_atomic

    out = workdir / f"source_{size}"
    names = sorted(p.name for p in (source / "images").glob("*.jpg"))
    todo = [n for n in names if not (out / "masks" / (Path(n).stem + ".png")).is_file()]
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for n in tqdm(todo, desc=f"resampling {source.name} to {size} px", unit="image"):
        img = Image.open(source / "images" / n).convert("RGB").resize((size, size), Image.BOX)
        mask = Image.open(source / "masks" / n).convert("L").point(lambda v: 255 if v > 127 else 0)
        mask = mask.resize((size, size), Image.BOX).point(lambda v: 255 if v >= 128 else 0)
        stem = Path(n).stem
        replace_atomic(out / "images" / f"{stem}.png", lambda t: img.save(t, format="PNG"), ".png")
        # the mask last: its presence marks the pair as done
        replace_atomic(out / "masks" / f"{stem}.png", lambda t: mask.save(t, format="PNG"), ".png")
    return out


def prepare(args, workdir: Path) -> dict:
    """Convert, plan, plan-gms and the benchmark configuration (each step skipped when done)."""
    ds_id, converter, source, _ = DATASETS[args.dataset]
    if not source.is_dir():
        sys.exit(f"{args.dataset}: source {source} not found (../shared/data)")
    if args.size:
        if args.dataset != "kvasir":
            sys.exit("--size applies to --dataset kvasir only")
        source = resampled_source(source, args.size, workdir)
    if not Path(args.vae).is_dir():
        sys.exit(f"VAE folder {args.vae} not found: pass --vae (e.g. TAESD's two safetensors files)")
    name, pre, plans_file = converted_and_planned_2d(ds_id, converter, source, PLANS)
    plans = json.loads(plans_file.read_text())
    if "gms_2d" not in plans["configurations"]:
        run([console_script("nnunet-ext"), "plan-gms", "-d", ds_id])
        plans = json.loads(plans_file.read_text())
    want = {"inherits_from": "2d", "patch_size": plans["configurations"]["gms_2d"]["patch_size"]}
    if args.batch_size > 0:
        want["batch_size"] = args.batch_size
    if plans["configurations"].get(CONFIG) != want:  # nnU-Net's own mechanism: a configuration inheriting 2d
        plans["configurations"][CONFIG] = want
        write_json_atomic(plans_file, plans)
    base = plans["configurations"]["2d"]
    return {"id": ds_id, "name": name, "pre": pre, "raw": Path(os.environ["nnUNet_raw"]) / name,
            "patch_size": want["patch_size"], "batch_size": want.get("batch_size", base["batch_size"]),
            "plan_2d": {"patch_size": base["patch_size"], "batch_size": base["batch_size"]}}


def write_split(info: dict, args, workdir: Path) -> tuple:
    """Fold 0 of nnU-Net's default split of the labelled cases (test cases cut to --max-test-cases)."""
    from nnunet_ext.benchmark.protocol import default_splits

    fe = DATASETS[args.dataset][3]
    ids = sorted(p.name[: -len(fe)] for p in (info["raw"] / "labelsTr").glob(f"*{fe}"))
    fold0 = default_splits(ids)[0]
    test = fold0["val"][: args.max_test_cases] if args.max_test_cases else fold0["val"]
    d = workdir / "split"
    d.mkdir(exist_ok=True)
    train_f, test_f = d / "train.txt", d / "test.txt"
    for f, cases in ((train_f, fold0["train"]), (test_f, test)):
        text = "\n".join(cases) + "\n"
        if not f.is_file() or f.read_text() != text:
            f.write_text(text)
    print(f"split: {len(fold0['train'])} training / {len(test)} test cases (fold 0 of nnU-Net's default split)")
    return train_f, test_f


def gms_trainer(workdir: Path, num_epochs: int) -> tuple:
    """``nnUNetTrainerGMS_bw<W>``: nnUNetTrainerGMS with GMS's warm-up share (5 of 1000 epochs) of this budget."""
    warmup = int(round(num_epochs * 5 / 1000))
    name = f"{GMS}_bw{warmup}"
    folder = workdir / "gms_trainers"
    folder.mkdir(exist_ok=True)
    src = (f'"""Generated by benchmarks/bench_gms.py."""\nfrom nnunet_ext.gms.trainer import {GMS}\n\n\n'
           f"class {name}({GMS}):\n    \"\"\"GMS's warm-up share of a {num_epochs}-epoch budget.\"\"\"\n"
           f"    gms_warmup_epochs = {warmup}\n")
    path = folder / "bench_gms_base.py"
    if not path.is_file() or path.read_text() != src:
        path.write_text(src)
    return name, folder, warmup


# --------------------------------------------------------------------------------------------- timing
def _n_trainable(net) -> int:
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def time_training(info: dict, fold: int, args, cache: Path) -> dict:
    """Trainable parameters and s / train_step of both trainers (batches of the same configuration drawn from each
    trainer's own loader beforehand), interleaved."""
    if cache.is_file():
        return json.loads(cache.read_text())
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ext.core.seeding import seed_everything
    from nnunet_ext.core.network import unwrap_network

    os.environ["nnUNet_n_proc_DA"] = "0"  # batches drawn in this process
    device = torch.device(args.device)
    trainers = {}
    for name in (STOCK, GMS):
        seed_everything(0)
        t = get_trainer_from_args(str(info["id"]), CONFIG, fold, name, PLANS, device=device)
        t.initialize()
        t.network.train()
        trainers[name] = t
    net = unwrap_network(trainers[GMS].network)
    params = {n: _n_trainable(t.network) for n, t in trainers.items()}
    vae_params = int(sum(p.numel() for p in net.vae.parameters()))
    n = args.timing_warmup + args.timing_iterations
    batches = {}
    for name, t in trainers.items():  # each trainer's own loader (stock's targets carry deep supervision)
        dl, _ = t.get_dataloaders()
        batches[name] = [next(dl) for _ in range(n)]
        if hasattr(dl, "_finish"):
            dl._finish()
    times = {k: [] for k in trainers}
    names = list(trainers)
    for i in range(n):
        order = names if i % 2 == 0 else names[::-1]  # rotate who goes first
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainers[name].train_step(batches[name][i])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.timing_warmup:
                times[name].append(time.perf_counter() - t0)
        print(f"  timing train_step {i + 1}/{n}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v),
              flush=True)
    ratios = np.asarray(times[GMS]) / np.asarray(times[STOCK])
    out = {"trainable_parameters": params, "gms_frozen_vae_parameters": vae_params,
           "batch_size": trainers[STOCK].configuration_manager.batch_size,
           "patch_size": list(trainers[STOCK].configuration_manager.patch_size),
           "s_per_iteration": {k: float(np.median(v)) for k, v in times.items()}, "all_times": times,
           "ratio_gms_vs_stock": {"median_per_iteration": float(np.median(ratios)),
                                  "quartiles": [float(q) for q in np.percentile(ratios, [25, 75])]},
           "iterations": args.timing_iterations, "warmup": args.timing_warmup}
    write_json_atomic(cache, out)
    return out


def time_inference(info: dict, models: dict, fold: int, test_cases: list, args, cache: Path) -> dict:
    """s per test image of each trained model (sliding window on the preprocessed case, no mirroring), interleaved."""
    if cache.is_file():
        return json.loads(cache.read_text())
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    device = torch.device(args.device)
    predictors = {}
    for name, folder in models.items():
        pr = nnUNetPredictor(use_mirroring=False, device=device, allow_tqdm=False, verbose=False)
        pr.initialize_from_trained_model_folder(str(folder), (fold,), "checkpoint_final.pth")
        predictors[name] = pr
    cases = test_cases[: args.timing_images]
    data_dir = info["pre"] / json.loads((info["pre"] / f"{PLANS}.json").read_text())["configurations"]["2d"].get(
        "data_identifier", f"{PLANS}_2d")
    ds = infer_dataset_class(str(data_dir))(str(data_dir), cases)
    times = {k: [] for k in predictors}
    names = list(predictors)
    with torch.no_grad():
        for i, c in enumerate([cases[0]] + cases):  # the first case once more, untimed (warm-up)
            data = torch.from_numpy(np.asarray(ds.load_case(c)[0][:], dtype=np.float32))
            for name in (names if i % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                predictors[name].predict_logits_from_preprocessed_data(data)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i > 0:
                    times[name].append(time.perf_counter() - t0)
    out = {"s_per_image": {k: float(np.median(v)) for k, v in times.items()}, "all_times": times, "cases": cases}
    write_json_atomic(cache, out)
    return out


# --------------------------------------------------------------------------------------------- report
def paper_scale(r: dict, p: dict) -> str:
    """The run's image size and budget beside GMS's paper (224 px, 1000 epochs, batch 8)."""
    n_train = len(p["train_cases"])
    iters = p["num_epochs"] * p["iterations_per_epoch"]
    epochs = iters * r["batch_size"] / max(1, n_train)
    size = f"{r['size']} px (the 256 px source resampled)" if r.get("size") else f"patch {r['patch_size']}"
    return (f"Scale against GMS's paper: images {size} vs the paper's 224 px; budget {iters} iterations of batch "
            f"{r['batch_size']} = {epochs:.1f} passes over the {n_train} training images vs the paper's 1000 epochs "
            f"(batch 8). The figures below are for this reduced budget, not the paper's.")


def markdown(r: dict) -> str:
    b, tr, inf = r["benchmark"], r["timing_train"], r["timing_inference"]
    summ, ref, gms = b["summary"], r["trainers"]["stock"], r["trainers"]["gms"]
    p = b["protocol"]
    d_all = summ["trainers"][gms]["paired_vs_reference"]["all"]["dice"]
    dice = {t: summ["trainers"][t]["overall"]["dice"] for t in (ref, gms)}
    params = tr["trainable_parameters"]
    v = r["verdict"]

    def pm(e):
        return f"{e['mean']:.3f} ± {e['sd']:.3f}" if e.get("n_seeds", 0) > 1 else f"{e['mean']:.3f}"

    lines = [f"# GMS vs stock nnU-Net 2d on {r['dataset']} ({b['protocol']['dataset_name']})", "",
             f"Command: `{r['command']}`  ", f"Date: {r['date']}  ", f"Machine: {r['machine']}", "",
             f"**Goal: {GOAL}.** Result: **{v['text']}**", "",
             f"Protocol: both trainers on configuration `{p['configuration']}` (nnU-Net's 2d, patch "
             f"{r['patch_size']}, batch {r['batch_size']}; nnU-Net's own 2d plan: batch {r['plan_2d']['batch_size']}), "
             f"fold {p['fold']} ({len(p['train_cases'])} training / {len(p['test_cases'])} test cases), "
             f"{p['num_epochs']} epochs x {p['iterations_per_epoch']} iterations per run, seeds {r['seeds']}, no "
             f"test-time mirroring. GMS: `{gms}` (frozen VAE `{r['vae']}`, warm-up {r['gms_warmup_epochs']} epochs); "
             f"stock: `{ref}` (nnU-Net's SGD, poly schedule).", "", paper_scale(r, p), "",
             "| trainer | trainable parameters | Dice (mean of classes, mean ± sd over seeds) | ΔDice vs stock "
             "[95% CI] | s / training iteration | inference s / image |", "|---|---|---|---|---|---|"]
    for t, key in ((ref, STOCK), (gms, GMS)):
        delta = (f"{d_all['mean']:+.3f} [{d_all['ci_low']:+.3f}, {d_all['ci_high']:+.3f}]" if t == gms else "-")
        lines.append(f"| {t} | {params[key]:,} | {pm(dice[t])} | {delta} | {tr['s_per_iteration'][key]:.3f} | "
                     f"{inf['s_per_image'][key]:.3f} |")
    lines += ["", f"GMS / stock: trainable parameters {params[GMS] / params[STOCK]:.4f} (the frozen VAE adds "
              f"{tr['gms_frozen_vae_parameters']:,} parameters that are not trained), time per training iteration "
              f"{tr['ratio_gms_vs_stock']['median_per_iteration']:.2f} x (median of per-iteration ratios, quartiles "
              f"{tr['ratio_gms_vs_stock']['quartiles'][0]:.2f}-{tr['ratio_gms_vs_stock']['quartiles'][1]:.2f}), "
              f"inference {inf['s_per_image'][GMS] / inf['s_per_image'][STOCK]:.2f} x.", "",
              f"Timing (this run, this machine): `train_step` of freshly built trainers, "
              f"{tr['iterations']} batches each (after {tr['warmup']} warm-up), interleaved, rotating who goes first, "
              f"medians; inference: `predict_logits_from_preprocessed_data` of the seed-{r['seeds'][0]} models on "
              f"{len(inf['cases'])} preprocessed test cases"
              f"{' (whole volumes, slice by slice)' if r['dataset'] == 'hippocampus' else ''}, interleaved, medians. "
              f"ΔDice: GMS - stock per test case and seed, averaged over seeds, mean over cases, 95% bootstrap "
              f"interval (cases resampled). The goal counts as met when the mean ΔDice >= -0.02 and the parameter "
              f"ratio <= 0.1.", "", "## nnunet-ext benchmark report", "",
              r["benchmark_markdown"].split("\n", 1)[1].replace("\n## ", "\n### ").strip(), ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    label = f"{args.dataset}{args.size or ''}"  # e.g. kvasir128: its own workdir, records and result files
    workdir = Path(args.workdir or REPO / "benchmarks" / "workdir" / f"gms_{label}").resolve()
    setup_nnunet_folders(workdir)
    os.environ["nnUNet_ext_vae"] = str(Path(args.vae).resolve())
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    info = prepare(args, workdir)
    train_f, test_f = write_split(info, args, workdir)
    num_epochs = -(-args.iterations // args.iterations_per_epoch)
    gms, gms_dir, warmup = gms_trainer(workdir, num_epochs)
    from nnunet_ext.paths import ext_trainer_env
    # the benchmark's subprocesses and this process's trainers / predictors find the GMS variant
    os.environ["nnUNet_extTrainer"] = ext_trainer_env([gms_dir])["nnUNet_extTrainer"]

    out = workdir / "benchmark"
    if args.records is None:
        args.records = str(REPO / "benchmarks" / "results" / "records" / f"gms_{label}")
    records = Path(args.records).resolve() if args.records else workdir
    bench_cmd = [console_script("nnunet-ext"), "benchmark", "-d", info["id"], "-c", CONFIG, "-p", PLANS, "-tr", f"{STOCK},{gms}",
                 "--seeds", ",".join(map(str, seeds)), "--iterations", args.iterations,
                 "--iterations-per-epoch", min(args.iterations_per_epoch, args.iterations),
                 "--train-list", train_f, "--test-list", test_f, "-o", out, "-device", args.device]
    if args.records:
        bench_cmd += ["--records", records]
    run(bench_cmd)
    bench = json.loads((out / "benchmark.json").read_text())
    fold = bench["protocol"]["fold"]

    print("timing: train_step of both trainers, interleaved", flush=True)
    records.mkdir(parents=True, exist_ok=True)
    tr = time_training(info, fold, args, records / f"timing_train_{args.device}_b{info['batch_size']}.json")
    inf_cache = records / f"timing_inference_{args.device}.json"
    models = None
    for s in seeds:  # the first seed whose models are here (runs restored from the records have none)
        sd = out / "runs" / f"seed{s}" / info["name"]
        cand = {STOCK: sd / f"{STOCK}__bench__{PLANS}__{CONFIG}", GMS: sd / f"{gms}__bench__{PLANS}__{CONFIG}"}
        if all((m / f"fold_{fold}" / "checkpoint_final.pth").is_file() for m in cand.values()):
            models = cand
            break
    if models is None and not inf_cache.is_file():
        sys.exit(f"no trained models in {out}/runs (all runs restored from {records}) and no recorded inference "
                 f"timing ({inf_cache}): re-run with another --records folder to train again")
    print("timing: inference per test image, interleaved", flush=True)
    os.environ["nnUNet_extTrainer"] = ext_trainer_env([out / "trainers", gms_dir])["nnUNet_extTrainer"]
    inf = time_inference(info, models, fold, bench["protocol"]["test_cases"], args, inf_cache)

    summ = bench["summary"]["trainers"]
    d_all = summ[gms]["paired_vs_reference"]["all"]["dice"]
    ratio = tr["trainable_parameters"][GMS] / tr["trainable_parameters"][STOCK]
    dice_ok, params_ok = d_all["mean"] >= -0.02, ratio <= 0.1
    verdict = {"dice_within_2_points": dice_ok, "params_at_most_one_tenth": params_ok, "met": dice_ok and params_ok,
               "text": (f"{'met' if dice_ok and params_ok else 'not met'} (ΔDice {100 * d_all['mean']:+.1f} points, "
                        f"95% CI [{100 * d_all['ci_low']:+.1f}, {100 * d_all['ci_high']:+.1f}]; parameters "
                        f"{ratio:.3f} x stock)")}
    date = _dt.datetime.now().isoformat(timespec="seconds")
    command = "python " + " ".join([os.path.relpath(__file__, REPO)] +
                                   [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
    result = {"command": command, "date": date, "machine": machine(), "dataset": args.dataset, "size": args.size,
              "workdir": str(workdir),
              "goal": GOAL, "verdict": verdict, "vae": str(Path(args.vae).resolve()), "seeds": seeds,
              "batch_size": info["batch_size"], "patch_size": info["patch_size"], "plan_2d": info["plan_2d"],
              "gms_warmup_epochs": warmup, "trainers": {"stock": STOCK, "gms": gms},
              "benchmark_command": "nnunet-ext " + " ".join(shlex.quote(str(c)) for c in bench_cmd[1:]),
              "timing_train": tr, "timing_inference": inf, "benchmark": bench,
              "benchmark_markdown": (out / "benchmark.md").read_text()}
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = res_dir / f"gms_{label}_{date[:10]}"
    md = markdown(result)
    write_record(stem, result, md)
    print(md)
    print(f"wrote {stem}.md / .json")


if __name__ == "__main__":
    main()
