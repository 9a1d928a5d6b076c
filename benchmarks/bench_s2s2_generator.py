"""Benchmark: throughput of S2S2's diffusion stack generator (issue #9): tuning steps per second and sampled
images per second at 64x64 and 256x256, for the default generator (``s2s2-tune`` defaults: channels 64,128,256,
2 ResNet blocks per level, mid attention) and a tiny one (8,16 channels, 1 block), beside the training-free GIN
generator on the same image sizes. Synthetic 1-channel images with a 3-label mask (the timing does not depend on
the content); the model code is the one ``s2s2-tune`` / ``s2s2-generate`` run (``nnunet_ext.s2s2.diffusion``).

Tuning: ``MaskDiffusion.training_loss`` + AdamW step on a batch of ``--batch-size`` crops (the EMA update and data
loading of ``s2s2-tune`` left out). Sampling: ``MaskDiffusion.sample`` with ``--ddim-steps`` DDIM steps on a
batch of ``--batch-size`` masks. Each figure is the median of ``--repeats`` timed repeats after one warm-up.

Writes ``benchmarks/results/s2s2_generator_throughput_<date>.{md,json}`` with the command, date and machine.

    python benchmarks/bench_s2s2_generator.py --device cpu
"""
from __future__ import annotations

import argparse
import datetime as _dt
import time
from pathlib import Path

import numpy as np
import torch

from common import REPO, command_line, machine, new_record_stem, write_record

MODELS = {"default": {"block_channels": (64, 128, 256), "layers_per_block": 2},
          "tiny": {"block_channels": (8, 16), "layers_per_block": 1}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="64,256", help="image sizes (square), comma-separated")
    p.add_argument("--models", default="tiny,default", help=f"of {', '.join(MODELS)}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ddim-steps", type=int, default=25, help="DDIM steps per sample (s2s2-generate's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    return p.parse_args(argv)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(model_name: str, size: int, args) -> dict:
    from nnunet_ext.s2s2.diffusion import DiffusionSpec, MaskDiffusion, build_unet, train_scheduler

    dev = torch.device(args.device)
    torch.manual_seed(0)
    unet = build_unet(1, 3, size, MODELS[model_name]["block_channels"], MODELS[model_name]["layers_per_block"],
                      mid_attention=True).to(dev)
    spec = DiffusionSpec(labels=[0, 1, 2], channels=1, mean=[0.0], std=[1.0], image_size=size)
    model = MaskDiffusion(unet, train_scheduler(), spec)
    b = args.batch_size
    x0 = torch.randn(b, 1, size, size, device=dev)
    seg = torch.zeros(b, size, size, dtype=torch.long)
    seg[:, size // 4: size // 2, size // 4: size // 2] = 1
    seg[:, size // 2: 3 * size // 4, size // 2: 3 * size // 4] = 2
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step():
        unet.train()
        opt.zero_grad(set_to_none=True)
        model.training_loss(x0, seg.to(dev), gen).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def sample():
        unet.eval()
        model.sample(seg, [torch.Generator().manual_seed(i) for i in range(b)], steps=args.ddim_steps)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t_step, t_sample = _median_time(step, args.repeats), _median_time(sample, args.repeats)
    return {"model": model_name, "size": size, "parameters": sum(p.numel() for p in unet.parameters()),
            "batch_size": b, "tune_steps_per_s": 1 / t_step, "tune_images_per_s": b / t_step,
            "sample_images_per_s": b / t_sample}


def gin(size: int, n: int = 64) -> float:
    from nnunet_ext.s2s2.gin import GINGenerator

    g = GINGenerator()
    data = np.random.default_rng(0).standard_normal((1, n, size, size)).astype(np.float32)
    g.copy(data[:, :2], "warmup", 0)
    t0 = time.perf_counter()
    g.copy(data, "case", 0)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for name in args.models.split(","):
        for size in sizes:
            r = measure(name, size, args)
            print(f"{name} {size}x{size}: {r['tune_steps_per_s']:.3f} steps/s, {r['sample_images_per_s']:.3f} img/s",
                  flush=True)
            rows.append(r)
    gin_rates = {size: gin(size) for size in sizes}
    date = _dt.datetime.now().isoformat(timespec="seconds")
    command = command_line(__file__, argv)
    lines = [f"| generator | parameters | image | tune: steps/s (batch {args.batch_size}) | tune: images/s | "
             f"sample: images/s ({args.ddim_steps} DDIM steps) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| diffusion ({r['model']}) | {r['parameters'] / 1e6:.2f} M | {r['size']}x{r['size']} | "
                     f"{r['tune_steps_per_s']:.3f} | {r['tune_images_per_s']:.2f} | {r['sample_images_per_s']:.3f} |")
    for size, rate in gin_rates.items():
        lines.append(f"| gin (training-free) | 0 | {size}x{size} | - | - | {rate:.0f} |")
    md = "\n".join(lines)
    print(md)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    stem = new_record_stem(res / f"s2s2_generator_throughput_{date[:10]}")
    info = {"command": command, "date": date, "machine": machine(), "device": args.device,
            "threads": torch.get_num_threads(), "diffusion": rows, "gin_images_per_s": gin_rates}
    write_record(
        stem, info,
        f"# S2S2 stack generators: throughput\n\nCommand: `{command}`  \nDate: {date}  \nMachine: {machine()}, "
        f"device {args.device}, {torch.get_num_threads()} threads\n\n{md}\n\nMedian of {args.repeats} repeats after "
        "one warm-up; tuning without the EMA update and data loading of s2s2-tune.\n")
    print(f"wrote {stem}.md/.json")


if __name__ == "__main__":
    main()
