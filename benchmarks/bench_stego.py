"""Benchmark: STEGO vs. k-means on the same frozen backbone features (issue #11), with and without dense CRF.

Datasets (converted and planned in WORKDIR; nnU-Net's default plans, and a configuration ``2d_stego`` that inherits
nnU-Net's ``2d`` with batch ``--batch-size`` (8) and the patch capped at ``--max-patch`` (96) pixels per axis):

* ``kvasir``: Kvasir-SEG 256 x 256 (``../shared/data/kvasir_seg_256``), 2 clusters (polyp / background);
* ``hippocampus``: MSD Hippocampus (``../shared/data/msd_hippocampus``) slices, 3 clusters.

Backbone: the TAESD encoder (``../shared/weights/taesd``; stride 8, 4 channels), for both methods. Per dataset and
seed:

1. ``nnunet-ext stego-knn`` (once), then ``nnUNetv2_train D 2d_stego 0 -tr nnUNetTrainerSTEGO_taesd__bench`` (the
   benchmark's budget, seed from ``$nnUNet_ext_seed``; labels are not used for training);
2. **k-means baseline**: cosine k-means (``scipy.cluster.vq.kmeans2`` on L2-normalised features, k-means++ start,
   the seed) on backbone features of pixels sampled from the training images (fold 0's training cases);
3. both are evaluated on fold 0's validation cases, in nnU-Net's preprocessed space (every slice): codes /
   features upsampled to the slice size, nearest centroid, one confusion matrix over all pixels, Hungarian
   matching, pixel accuracy and mIoU (``nnunet_ext.stego.metrics``); "+CRF": dense CRF (``nnunet_ext.stego.crf``)
   on softmax(2 x cosine similarity) of each method, on the first ``--crf-cases`` validation cases (the same
   cases for both methods, reported as its own row set).

Reported per dataset: mean +- sd over seeds, the difference STEGO - k-means in mIoU points with a 95% bootstrap
interval (validation cases resampled, seeds averaged), and STEGO's training time. Goal: STEGO at least 10 mIoU
points above k-means. Resumable: trained seeds are kept; evaluations are cached per seed.

    python benchmarks/bench_stego.py --workdir /work/bench/stego --iterations 200 --seeds 0,1,2
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

import numpy as np

from common import REPO, SHARED, SOURCES, converted_and_planned_2d, machine, run, write_record
from common import setup_env as setup_nnunet_folders
from nnunet_ext.atomic_io import write_json_atomic
from nnunet_ext.paths import console_script

DATASETS = {  # name: (id, converter, source, clusters)
    "kvasir": (121, *SOURCES["kvasir"][:2], 2),
    "hippocampus": (122, *SOURCES["hippocampus"][:2], 3),
}
PLANS = "nnUNetPlans"
CONFIG = "2d_stego"  # nnU-Net's 2d with the benchmark's batch size (STEGO's random pairs need a batch of images)
TRAINER = "nnUNetTrainerSTEGO_taesd"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", default=str(REPO / "benchmarks" / "workdir" / "stego"))
    p.add_argument("--datasets", default="kvasir,hippocampus")
    p.add_argument("--taesd", default=str(SHARED / "weights" / "taesd"))
    p.add_argument("--iterations", type=int, default=200, help="STEGO training iterations per run")
    p.add_argument("--iterations-per-epoch", type=int, default=50)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=8, help="batch size of the 2d_stego configuration")
    p.add_argument("--max-patch", type=int, default=96, help="patch edge cap of the 2d_stego configuration")
    p.add_argument("--kmeans-pixels", type=int, default=20000, help="training pixels sampled for k-means")
    p.add_argument("--crf-cases", type=int, default=20, help="validation cases refined with the CRF")
    p.add_argument("-device", dest="device", default="cpu")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--previous", action="append", default=[], metavar="JSON",
                   help="an earlier record of this benchmark (its .json) to show beside this run (repeatable)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- preparation
def prepare(name: str, args) -> dict:
    ds_id, converter, source, k = DATASETS[name]
    if not source.is_dir():
        sys.exit(f"{name}: source {source} not found (../shared/data)")
    ds_name, pre, plans_file = converted_and_planned_2d(ds_id, converter, source, PLANS)
    plans = json.loads(plans_file.read_text())
    base = plans["configurations"]["2d"]
    patch = [min(p, args.max_patch) for p in base["patch_size"]]
    want = {"inherits_from": "2d", "batch_size": args.batch_size, "patch_size": patch}
    if plans["configurations"].get(CONFIG) != want:  # nnU-Net's own mechanism: a configuration inheriting 2d
        plans["configurations"][CONFIG] = want
        write_json_atomic(plans_file, plans, indent=4)
    ident = base.get("data_identifier", f"{PLANS}_2d")
    from nnunet_ext.stego.knn_table import knn_folder
    if not (knn_folder(pre, ident, "taesd") / "knn.npz").is_file():
        run([console_script("nnunet-ext"), "stego-knn", "-d", ds_id, "-c", CONFIG, "-p", PLANS, "-tr", TRAINER,
             "-device", args.device, "--no-progress"])
    return {"id": ds_id, "name": ds_name, "k": k, "pre": pre, "data_dir": pre / ident}


def fold0(pre: Path):
    splits = json.loads((pre / "splits_final.json").read_text())
    return splits[0]["train"], splits[0]["val"]


def train(info: dict, seed: int, args, workdir: Path) -> Path:
    from nnunet_ext.benchmark.variant import find_trainer_class, write_variant
    from nnunet_ext.paths import ext_trainer_env

    its = args.iterations_per_epoch
    schedule = {"num_epochs": max(1, args.iterations // its), "num_iterations_per_epoch": its,
                "num_val_iterations_per_epoch": 10, "save_every": 1}
    variant = write_variant(workdir / "trainers", find_trainer_class(TRAINER), schedule)
    results = workdir / "results" / f"seed{seed}"
    fold = results / info["name"] / f"{variant}__{PLANS}__{CONFIG}" / "fold_0"
    if (fold / "checkpoint_final.pth").is_file():
        return fold
    env = ext_trainer_env([workdir / "trainers"])
    env.update(nnUNet_results=str(results), nnUNet_ext_seed=str(seed), nnUNet_ext_backbone=args.taesd)
    cmd = [console_script("nnUNetv2_train"), info["id"], CONFIG, 0, "-p", PLANS, "-tr", variant, "-device", args.device]
    if (fold / "checkpoint_latest.pth").is_file():
        cmd.append("--c")
    run(cmd, env=env)
    return fold


# --------------------------------------------------------------------------------------------- evaluation
def _slices(ds, case):
    data, seg, _, _ = ds.load_case(case)
    return np.asarray(data[:], dtype=np.float32), np.asarray(seg[0])


def _crf(probs, img):
    import torch

    from nnunet_ext.stego.crf import dense_crf, image_to_guide
    return dense_crf(image_to_guide(torch.from_numpy(img)), probs, iterations=10)


def evaluate_seed(info: dict, seed: int, fold: Path, args) -> dict:
    """Per validation case confusion matrices of STEGO and k-means (with and without CRF) for one seed."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from scipy.cluster.vq import kmeans2

    from nnunet_ext.stego.metrics import confusion

    torch.set_grad_enabled(False)
    cache = fold / "bench_eval.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    os.environ["nnUNet_ext_backbone"] = args.taesd
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(device=torch.device(args.device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(fold.parent), (0,), "checkpoint_final.pth")
    net = predictor.network.eval()
    k = info["k"]
    data_dir = info["data_dir"]
    train_keys, val_keys = fold0(info["pre"])
    ds = infer_dataset_class(str(data_dir))(str(data_dir), train_keys + val_keys)

    # k-means on backbone features of training pixels (the same frozen backbone as STEGO's)
    rng = np.random.default_rng(seed)
    feats, per_case = [], max(1, args.kmeans_pixels // len(train_keys))
    for case in train_keys:
        img, _ = _slices(ds, case)
        z = rng.integers(img.shape[1])
        f = net.features(torch.from_numpy(img[:, z][None]))[0]
        f = torch.nn.functional.normalize(f.flatten(1).T, dim=1).numpy()
        feats.append(f[rng.choice(len(f), min(per_case, len(f)), replace=False)])
    centroids, _ = kmeans2(np.concatenate(feats).astype(np.float64), k, minit="++", seed=seed)
    cent = torch.nn.functional.normalize(torch.from_numpy(centroids).float(), dim=1)

    out = {m: [] for m in ("kmeans", "stego", "kmeans_crf", "stego_crf")}
    for ci, case in enumerate(val_keys):
        img, seg = _slices(ds, case)
        conf = {m: np.zeros((k, k), dtype=np.int64) for m in out}
        for z in range(img.shape[1]):
            x = torch.from_numpy(img[:, z][None])
            size = x.shape[-2:]
            feats = net.features(x)  # the same backbone features for both methods
            f = torch.nn.functional.interpolate(feats, size=size, mode="bilinear", align_corners=False)
            km = 2.0 * torch.einsum("bchw,kc->bkhw", torch.nn.functional.normalize(f, dim=1), cent)[0]
            st = net.cluster_scores(net.codes(x, feats), size)[0]
            for m, s in (("kmeans", km), ("stego", st)):
                conf[m] += confusion(s.argmax(0).numpy(), seg[z], k, k)
                if ci < args.crf_cases:
                    conf[m + "_crf"] += confusion(_crf(torch.softmax(s, 0), img[:, z]).argmax(0).numpy(), seg[z], k, k)
        for m in out:
            if ci < args.crf_cases or not m.endswith("_crf"):
                out[m].append(conf[m].tolist())
    write_json_atomic(cache, out, indent=None)
    return out


def constant_confusion(conf) -> list:
    """The confusion matrix (clusters x classes) of a labelling that puts every pixel of the case in cluster 0:
    matched over the whole evaluation set, it is the best constant labelling (the most frequent class)."""
    conf = np.asarray(conf)
    out = np.zeros_like(conf)
    out[0] = conf.sum(axis=0)
    return out.tolist()


def scores(confs) -> dict:
    from nnunet_ext.stego.metrics import matched_scores
    s = matched_scores(np.sum(np.asarray(confs), axis=0))
    return {"accuracy": s["accuracy"], "miou": s["miou"]}


def bootstrap_miou_difference(per_seed: list, a: str, b: str, n: int = 2000, seed: int = 0):
    """mIoU(a) - mIoU(b), seeds averaged, with a 95% interval from resampling the validation cases."""
    rng = np.random.default_rng(seed)
    n_cases = len(per_seed[0][a])
    arr = {m: [np.asarray(s[m]) for s in per_seed] for m in (a, b)}

    def diff(idx):
        return float(np.mean([scores(arr[a][i][idx])["miou"] - scores(arr[b][i][idx])["miou"]
                              for i in range(len(per_seed))]))

    point = diff(np.arange(n_cases))
    boots = [diff(rng.integers(0, n_cases, n_cases)) for _ in range(n)]
    return point, [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def training_time(fold: Path) -> dict:
    import torch
    ck = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    log = ck["logging"]
    ep = [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
    return {"wall_s": float(sum(ep)), "epochs": len(ep)}


def main(argv=None):
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    setup_nnunet_folders(workdir)
    os.environ["nnUNet_ext_backbone"] = args.taesd
    from nnunet_ext.paths import ext_trainer_env
    # nnU-Net's predictor (evaluation, in this process) must find the benchmark's trainer variants too
    os.environ["nnUNet_extTrainer"] = ext_trainer_env([workdir / "trainers"])["nnUNet_extTrainer"]
    seeds = [int(s) for s in args.seeds.split(",")]
    command = "python benchmarks/bench_stego.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report = {"command": command, "date": _dt.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(), "iterations": args.iterations, "seeds": seeds, "datasets": {}}
    for name in args.datasets.split(","):
        info = prepare(name, args)
        per_seed, times = [], []
        for seed in seeds:
            t0 = time.time()
            fold = train(info, seed, args, workdir)
            times.append(training_time(fold)["wall_s"])
            ev = evaluate_seed(info, seed, fold, args)
            ev["constant"] = [constant_confusion(c) for c in ev["stego"]]
            per_seed.append(ev)
            print(f"{name} seed {seed}: done ({time.time() - t0:.0f} s)", flush=True)
        rows = {m: [scores(s[m]) for s in per_seed] for m in per_seed[0]}
        summary = {m: {k: [float(np.mean([r[k] for r in v])), float(np.std([r[k] for r in v]))]
                       for k in ("accuracy", "miou")} for m, v in rows.items()}
        diff, ci = bootstrap_miou_difference(per_seed, "stego", "kmeans")
        diff_crf, ci_crf = bootstrap_miou_difference(per_seed, "stego_crf", "kmeans_crf")
        diff_const, ci_const = bootstrap_miou_difference(per_seed, "stego", "constant")
        report["datasets"][name] = {"dataset": info["name"], "clusters": info["k"], "summary": summary,
                                    "per_seed": rows, "miou_diff": [diff, ci], "miou_diff_crf": [diff_crf, ci_crf],
                                    "miou_diff_constant": [diff_const, ci_const],
                                    "train_wall_s": times, "val_cases": len(per_seed[0]["stego"]),
                                    "crf_cases": len(per_seed[0]["stego_crf"])}
    report["previous"] = {}
    for f in args.previous:
        prev = json.loads(Path(f).read_text())
        for ds in prev.get("datasets", {}):
            report["previous"][ds] = {"date": prev["date"], "command": prev["command"],
                                      "datasets": {ds: prev["datasets"][ds]}}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"stego_{'_'.join(report['datasets'])}_{_dt.date.today().isoformat()}"
    write_record(stem, report, markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    lines = ["# STEGO vs k-means on the same frozen backbone (TAESD encoder)", "",
             f"Command: `{r['command']}`  ", f"Date: {r['date']}  ", f"Machine: {r['machine']}", "",
             f"Budget: {r['iterations']} STEGO training iterations per run, seeds {r['seeds']}; fold 0 of nnU-Net's "
             f"split (training cases for training and k-means, validation cases for evaluation, every slice, "
             f"nnU-Net's preprocessed space); Hungarian matching over all pixels of the evaluation set.", "",
             "| dataset | method | pixel accuracy | mIoU | cases |", "|---|---|---|---|---|"]
    names = {"constant": "best constant labelling", "kmeans": "k-means", "stego": "STEGO",
             "kmeans_crf": "k-means + CRF", "stego_crf": "STEGO + CRF"}
    for ds, d in r["datasets"].items():
        for m in [m for m in names if m in d["summary"]]:
            s = d["summary"][m]
            n = d["crf_cases"] if m.endswith("crf") else d["val_cases"]
            lines.append(f"| {ds} ({d['clusters']} clusters) | {names[m]} | {s['accuracy'][0]:.3f} ± "
                         f"{s['accuracy'][1]:.3f} | {s['miou'][0]:.3f} ± {s['miou'][1]:.3f} | {n} |")
    lines += ["", "| dataset | mIoU STEGO - k-means [95% CI] | with CRF [95% CI] | mIoU STEGO - best constant "
                  "[95% CI] | goal (>= +10 points over k-means) | STEGO training (s, per seed) |",
              "|---|---|---|---|---|---|"]

    def pts(v, ci):
        return f"{100 * v:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"

    for ds, d in r["datasets"].items():
        (v, ci), (vc, cic) = d["miou_diff"], d["miou_diff_crf"]
        met = "met" if ci[0] >= 0.10 else ("not shown" if v >= 0.10 else "not met")
        const = pts(*d["miou_diff_constant"]) if "miou_diff_constant" in d else "-"
        lines.append(f"| {ds} | {pts(v, ci)} | {pts(vc, cic)} | {const} | {met} | "
                     f"{', '.join(f'{t:.0f}' for t in d['train_wall_s'])} |")
    lines += ["", "mean ± sd over seeds; the interval resamples the validation cases (2000 resamples) with the seeds "
                  "averaged. CRF rows: the first cases of the validation set only (see `cases`). Best constant "
                  "labelling: every pixel given the evaluation set's most frequent class (no model)."]
    for ds, prev in r.get("previous", {}).items():
        d = r["datasets"].get(ds)
        if not d or ds not in prev.get("datasets", {}):
            continue
        p = prev["datasets"][ds]
        lines += ["", f"### {ds}: this run beside the previous record ({prev['date'][:10]}, `{prev['command']}`)", "",
                  "| run | k-means mIoU | STEGO mIoU | STEGO - k-means [95% CI] |", "|---|---|---|---|"]
        for label, x in (("previous", p), ("this run", d)):
            km, st = x["summary"]["kmeans"]["miou"][0], x["summary"]["stego"]["miou"][0]
            lines.append(f"| {label} | {km:.3f} | {st:.3f} | {pts(*x['miou_diff'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
