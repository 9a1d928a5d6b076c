"""Benchmark: would S2S2's generator be better in a VAE's latent space? The quality ceiling of the latent route.

Issue #9 leaves open tuning the mask-conditioned diffusion model in the latent space of a local VAE (TAESD) "where
that is faster at equal quality". A latent generator can at best produce what the VAE's decoder reconstructs, so
this script measures that ceiling on real data: the VAE round trip (encode, decode) of real images, as PSNR against
the image, at the data's own size and after up-sampling by ``--upsample`` factors (bilinear, back down after
decoding), beside the size of the latent grid the generator would work on (vs. the pixel grid of the default
pixel-space generator).

* MSD Hippocampus (``../shared/data/msd_hippocampus``): the middle axial slice of each of ``--cases`` volumes, 0.5-99.5
  percentiles to [-1, 1], the grey image replicated to RGB, the decoded RGB averaged back to grey;
* Kvasir-SEG (``../shared/data/kvasir_seg_256``): ``--cases`` RGB images at 256 x 256.

Writes ``benchmarks/results/s2s2_latent_ceiling_<date>.{md,json}`` with the exact command, date and machine.

    python benchmarks/bench_s2s2_latent.py --cases 20
"""
from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

from common import REPO, SHARED, command_line, machine, new_record_stem, write_record



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vae", default=str(SHARED / "weights" / "taesd"), help="VAE folder (nnUNet_ext_vae)")
    p.add_argument("--cases", type=int, default=20, help="images per dataset")
    p.add_argument("--upsample", default="1,2,4", help="up-sampling factors before encoding")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    return p.parse_args(argv)


def hippocampus_slices(n: int):
    import numpy as np
    import SimpleITK as sitk

    for f in sorted((SHARED / "data" / "msd_hippocampus" / "images").glob("*.nii.gz"))[:n]:
        v = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.float32)
        sl = v[v.shape[0] // 2]
        lo, hi = np.percentile(sl, [0.5, 99.5])
        yield f.name, (np.clip((sl - lo) / (hi - lo + 1e-6), 0, 1) * 2 - 1).astype(np.float32)[None]


def kvasir_images(n: int):
    import numpy as np
    from PIL import Image

    for f in sorted((SHARED / "data" / "kvasir_seg_256" / "images").glob("*.jpg"))[:n]:
        img = np.asarray(Image.open(f).convert("RGB").resize((256, 256)), dtype=np.float32) / 127.5 - 1
        yield f.name, img.transpose(2, 0, 1).copy()


def round_trip_psnr(vae, img, up: int):
    """(PSNR in dB of the VAE round trip of ``img`` (C, H, W) in [-1, 1] at ``up`` x its size, latent grid size)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(img)[None]
    c, h, w = img.shape
    size = (int(np.ceil(h * up / 8) * 8), int(np.ceil(w * up / 8) * 8))
    xu = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != (h, w) else x
    with torch.no_grad():
        z = vae.encode(xu.expand(-1, 3, -1, -1) if c == 1 else xu)
        rec = vae.decode(z).clamp(-1, 1)
    rec = rec.mean(1, keepdim=True) if c == 1 else rec
    rec = F.interpolate(rec, size=(h, w), mode="bilinear", align_corners=False) if size != (h, w) else rec
    return 10 * np.log10(4.0 / float(((rec - x) ** 2).mean())), tuple(z.shape[-2:])


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from nnunet_ext.benchmark.stats import bootstrap_ci
    from nnunet_ext.core.vae import load_vae

    vae = load_vae(args.vae)
    ups = [int(u) for u in args.upsample.split(",")]
    rows = []
    for ds, images in (("hippocampus", hippocampus_slices), ("kvasir", kvasir_images)):
        per = {u: [] for u in ups}
        sizes, grids = [], {u: [] for u in ups}
        for _, img in images(args.cases):
            sizes.append(img.shape[1] * img.shape[2])
            for u in ups:
                p, g = round_trip_psnr(vae, img, u)
                per[u].append(p)
                grids[u].append(g[0] * g[1])
        if not sizes:
            continue
        for u in ups:
            _, lo, hi = bootstrap_ci(per[u])
            rows.append({"dataset": ds, "upsample": u, "images": len(per[u]), "psnr_mean": float(np.mean(per[u])),
                         "psnr_ci95": [float(lo), float(hi)], "psnr_min": float(np.min(per[u])),
                         "latent_positions_per_pixel": float(np.mean(grids[u]) / np.mean(sizes))})
    date = _dt.datetime.now().isoformat(timespec="seconds")
    command = command_line(__file__, argv)
    res = {"command": command, "date": date, "machine": machine(), "vae": str(Path(args.vae).resolve()), "rows": rows}
    lines = ["# S2S2 generator in a VAE's latent space: the VAE's round-trip ceiling", "",
             f"Command: `{command}`  ", f"Date: {date}  ", f"Machine: {res['machine']}  ", f"VAE: `{res['vae']}`", "",
             "PSNR (dB, images in [-1, 1]) of encode + decode against the real image; a latent generator cannot be "
             "more faithful than this. Latent positions per image pixel: the grid a latent generator works on, "
             "relative to the pixel grid of the default (pixel-space) generator. 95% CI: bootstrap over images.", "",
             "| dataset | up-sampled | images | PSNR mean [95% CI] | PSNR min | latent positions / pixel |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['upsample']}x | {r['images']} | {r['psnr_mean']:.1f} "
                     f"[{r['psnr_ci95'][0]:.1f}, {r['psnr_ci95'][1]:.1f}] | {r['psnr_min']:.1f} | "
                     f"{r['latent_positions_per_pixel']:.3f} |")
    md = "\n".join(lines) + "\n"
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = new_record_stem(out / f"s2s2_latent_ceiling_{date[:10]}")
    write_record(stem, res, md)
    print(md)
    print(f"wrote {stem}.json/.md")


if __name__ == "__main__":
    main()
