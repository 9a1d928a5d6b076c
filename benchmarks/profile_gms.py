"""Where a GMS training step spends its time (issue #10: "measure where the time goes"), part by part.

For each shape (dataset-like: patch, input channels, foreground classes) builds ``GMSNetwork`` on the frozen VAE
(default: TAESD from ``../shared/weights/taesd``) and times, on random inputs, the parts of one training step as
``nnUNetTrainerGMS`` runs it:

* ``encode``: images and class masks through the VAE encoder (one call, no gradient);
* ``mapping fwd``: the latent mapping model, the three heads the loss uses;
* ``decoder fwd``: the three heads' mask latents through the VAE decoder (one call, with gradient);
* ``backward``: latent MSE + soft Dice, backward through decoder and mapping model;
* ``mapping bwd`` (separately): backward of the latent MSE alone (the mapping model only); the decoder's share of
  the backward is ``backward - mapping bwd``;
* ``optimizer``: AdamW step.

Medians over ``--repeats`` after one warm-up, in this process. Writes
``benchmarks/results/gms_profile_<date>.{md,json}`` with the exact command, date and machine.

    python benchmarks/profile_gms.py --repeats 5
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import time
from pathlib import Path

from common import REPO, machine, new_record_stem, write_record


PARTS = ("encode", "mapping fwd", "decoder fwd", "backward", "optimizer")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vae", default=str(REPO.parent / "shared" / "weights" / "taesd"), help="VAE folder")
    p.add_argument("--shapes", default="hippocampus:56x40:1:2,kvasir:256x256:3:1",
                   help="name:HxW:input channels:foreground classes, comma-separated")
    p.add_argument("--batch-size", type=int, default=8, help="GMS's batch size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("-device", dest="device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    return p.parse_args(argv)


def _sync(dev):
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize()


def profile_shape(vae, shape: str, args) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from nnunet_ext.gms.network import USED_LEVELS, GMSNetwork

    name, hw, c_in, n_fg = shape.split(":")
    h, w = (int(v) for v in hw.split("x"))
    c_in, n_fg, b = int(c_in), int(n_fg), args.batch_size
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = GMSNetwork(vae, n_fg + 1, c_in).to(dev).train()
    opt = torch.optim.AdamW(net.mapping.parameters(), lr=2e-3, weight_decay=0.01)
    x = torch.randn(b, c_in, h, w, device=dev)
    onehot = (torch.rand(b, n_fg, h, w, device=dev) > 0.7).float()
    times = {k: [] for k in PARTS + ("mapping bwd", "total")}

    def clock(key, fn):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times[key].append(time.perf_counter() - t0)
        return out

    for rep in range(args.repeats + 1):
        n0 = {k: len(v) for k, v in times.items()}
        t_all = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        z_img, z_mask = clock("encode", lambda: net.encode_images_and_masks(x, onehot))
        heads = clock("mapping fwd", lambda: net.mapping(z_img, levels=USED_LEVELS))
        latents = [heads[lv] for lv in USED_LEVELS]
        probs = clock("decoder fwd", lambda: net.decode_masks(torch.cat(latents, 0)).split(b, 0))

        def loss_backward():
            mse = sum(F.mse_loss(z, z_mask) for z in latents)
            dice = sum(1 - (2 * (p * onehot).sum() + 1) / (p.sum() + onehot.sum() + 1) for p in probs)
            (mse + dice).backward()
        clock("backward", loss_backward)
        clock("optimizer", opt.step)
        times["total"].append(time.perf_counter() - t_all)
        # the mapping model's own backward (latent MSE only), timed apart from the step
        opt.zero_grad(set_to_none=True)
        heads = net.mapping(z_img, levels=USED_LEVELS)
        clock("mapping bwd", lambda: sum(F.mse_loss(heads[lv], z_mask) for lv in USED_LEVELS).backward())
        if rep == 0:  # warm-up
            for k, v in times.items():
                del v[n0[k]:]
    med = {k: float(np.median(v)) for k, v in times.items()}
    parts = {k: med[k] for k in PARTS}
    parts["backward: decoder (backward - mapping bwd)"] = max(med["backward"] - med["mapping bwd"], 0.0)
    parts["backward: mapping model"] = min(med["mapping bwd"], med["backward"])
    total = sum(med[k] for k in PARTS)
    vae_s = med["encode"] + med["decoder fwd"] + parts["backward: decoder (backward - mapping bwd)"]
    return {"name": name, "patch": [h, w], "input_channels": c_in, "foreground_classes": n_fg, "batch_size": b,
            "median_seconds": med, "sum_of_parts": total, "vae_share": vae_s / total,
            "shares": {k: v / total for k, v in parts.items()}, "all_times": times}


def markdown(res: dict) -> str:
    lines = ["# Where a GMS training step spends its time", "",
             f"Command: `{res['command']}`  ", f"Date: {res['date']}  ", f"Machine: {res['machine']}  ",
             f"VAE: `{res['vae']}`", "",
             "Medians over the repeats after one warm-up; random inputs of the given shape; the parts of one "
             "`nnUNetTrainerGMS` step (see the script's docstring). Shares are of the sum of the parts.", ""]
    for r in res["shapes"]:
        m, s = r["median_seconds"], r["shares"]
        lines += [f"## {r['name']}: patch {r['patch'][0]} x {r['patch'][1]}, {r['input_channels']} channel(s), "
                  f"{r['foreground_classes']} foreground class(es), batch {r['batch_size']}", "",
                  "| part | s | share |", "|---|---|---|"]
        for k in ("encode", "mapping fwd", "decoder fwd"):
            lines.append(f"| {k} | {m[k]:.3f} | {100 * s[k]:.0f}% |")
        for k in ("backward: decoder (backward - mapping bwd)", "backward: mapping model"):
            lines.append(f"| {k} | {s[k] * r['sum_of_parts']:.3f} | {100 * s[k]:.0f}% |")
        lines.append(f"| optimizer | {m['optimizer']:.3f} | {100 * s['optimizer']:.0f}% |")
        lines += [f"| **step (sum of parts)** | **{r['sum_of_parts']:.3f}** | |", "",
                  f"The frozen VAE (encoder, decoder forward and backward) is {100 * r['vae_share']:.0f}% of the step.",
                  ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from nnunet_ext.core.vae import load_vae

    vae = load_vae(args.vae, device=torch.device(args.device))
    res = {"command": "python " + " ".join([os.path.relpath(__file__, REPO)] + [shlex.quote(a) for a in
                                                                                 (argv or sys.argv[1:])]),
           "date": _dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "vae": str(Path(args.vae).resolve()), "shapes": []}
    for shape in args.shapes.split(","):
        r = profile_shape(vae, shape, args)
        res["shapes"].append(r)
        print(f"{r['name']}: step {r['sum_of_parts']:.3f} s, VAE {100 * r['vae_share']:.0f}%: " +
              ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["shares"].items() if k != "backward"), flush=True)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = new_record_stem(out / f"gms_profile_{res['date'][:10]}")
    md = markdown(res)
    write_record(stem, res, md + "\n")
    print(md)
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
