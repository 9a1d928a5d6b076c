"""``nnunet-ext s2s2-generate``: the semantic stack, K generated copies of every preprocessed training case.

Works on what nnU-Net preprocessed (``$nnUNet_preprocessed/DatasetXXX/<data_identifier>/``), so the copies
have exactly the shape, spacing and normalisation of the cases the trainer loads. Resumable (finished cases
are skipped), sharded (``--part i --num-parts n`` like ``nnUNetv2_predict``), progress bar in images (2D
slices) per second, and a preview PNG (mask, real image, copies) of a few cases.

Generators (``make_generator``): ``gin`` (training-free, ``nnunet_ext.s2s2.gin``), ``diffusion`` (the
mask-conditioned diffusion model tuned by ``nnunet-ext s2s2-tune``, ``nnunet_ext.s2s2.diffusion``; the model of
fold ``-f``, copies of every case) and ``controlnet`` (the paper's: a ControlNet on a local Stable Diffusion, tuned
by ``s2s2-tune --generator controlnet --init SD_FOLDER``). A generator has ``settings()`` and
``copy(data, case, k)``; one with ``needs_seg = True`` gets the case's segmentation as well (``copy(data, case, k,
seg=seg)``), and one with ``copies(data, case, ks, seg)`` makes all K copies of a case in one call (batched).
"""
from __future__ import annotations

import datetime as _dt
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from nnunet_ext.atomic_io import save_figure_atomic
from nnunet_ext.errors import UserError
from nnunet_ext.s2s2.stack import shard, stack_folder, write_stack_case, write_stack_info

GENERATORS = ("gin", "diffusion", "controlnet")


class S2S2Error(UserError):
    """A semantic-stack problem the user can fix (missing preprocessing, missing stack, bad arguments)."""


def make_generator(name: str, seed: int = 0, prep=None, configuration: str = None, plans: str = "nnUNetPlans",
                   fold="0", options: Optional[dict] = None):
    """The stack generator ``name``. ``diffusion`` loads the model that ``s2s2-tune`` tuned for (``prep``'s
    dataset, ``configuration``, ``plans``, ``fold``); ``options``: its ``steps`` (DDIM), ``eta``, ``guidance``,
    ``batch_size``, ``device``, or ``model`` (a tuned model folder, instead of the one under $nnUNet_results)."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if name == "gin":
        from nnunet_ext.s2s2.gin import GINGenerator
        return GINGenerator(seed=seed)
    if name in ("diffusion", "controlnet"):
        from nnunet_ext.s2s2.diffusion import SPEC_FILE, DiffusionGenerator, read_spec, tune_command, tuned_folder

        fold = "all" if str(fold) == "all" else int(fold)
        model = options.pop("model", None)
        folder = Path(model) if model else tuned_folder(prep.name, name, plans, configuration, fold)
        if not (folder / SPEC_FILE).is_file():
            raise S2S2Error(f"no tuned {name} generator in {folder}: tune it first with "
                            f"{tune_command(prep.name, configuration, plans, fold, name)}"
                            + (" --init STABLE_DIFFUSION_FOLDER" if name == "controlnet" else ""))
        kind = read_spec(folder).kind
        if (kind == "controlnet") != (name == "controlnet"):
            raise S2S2Error(f"{folder} holds a {'controlnet' if kind == 'controlnet' else 'diffusion'} generator, "
                            f"not a {name} one")
        return DiffusionGenerator(folder, seed=seed, **options)
    raise S2S2Error(f"unknown generator {name!r}; available: {', '.join(GENERATORS)}")


def generate_stack(dataset, configuration: str, k: int = 16, generator: str = "gin", plans: str = "nnUNetPlans",
                   part: int = 0, num_parts: int = 1, seed: int = 0, progress: bool = True,
                   preview_cases: int = 4, fold="0", options: Optional[dict] = None) -> Path:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from tqdm import tqdm

    from nnunet_ext.paths import PreprocessedConfiguration

    if k < 1:
        raise S2S2Error(f"-k must be at least 1, got {k}")
    prep = PreprocessedConfiguration(dataset, configuration, plans, S2S2Error)
    name, pre, cm, data_dir, cases = prep.name, prep.folder, prep.configuration_manager, prep.data_dir, prep.cases
    gen = make_generator(generator, seed, prep=prep, configuration=configuration, plans=plans, fold=fold,
                         options=options)
    out = stack_folder(pre, cm.data_identifier, generator)
    out.mkdir(parents=True, exist_ok=True)
    info = {"generator": generator, "settings": gen.settings(), "k": k, "configuration": configuration,
            "plans": plans, "data_identifier": cm.data_identifier}
    info_file = out / "stack.json"
    if info_file.is_file():
        old = load_json(str(info_file))
        if {kk: old.get(kk) for kk in ("generator", "settings", "k")} != \
                {kk: info[kk] for kk in ("generator", "settings", "k")}:
            raise S2S2Error(f"{out} holds a stack made with other settings (k={old.get('k')}, {old.get('settings')}); "
                            f"remove it to make a new one")
    else:  # written once (by whichever part starts first), kept by resumed runs and the other parts
        write_stack_info(out, {**info, "date": _dt.datetime.now().isoformat(timespec="seconds")})
    mine = shard(cases, part, num_parts)
    todo = [c for c in mine if not (out / f"{c}.b2nd").is_file()]
    print(f"s2s2-generate {name} {configuration}: {len(cases)} case(s), part {part}/{num_parts}: {len(mine)}, "
          f"{len(mine) - len(todo)} done before, {len(todo)} to generate (K={k}, generator {generator}) -> {out}")
    ds = nnUNetDatasetBlosc2(str(data_dir), identifiers=list(todo)) if todo else None
    t0, n_images = time.time(), 0
    with tqdm(total=len(todo), desc="s2s2-generate", unit="case", disable=not progress, file=sys.stderr) as bar:
        for case in todo:
            data_b2, seg_b2, _, _ = ds.load_case(case)
            data = np.asarray(data_b2[:], dtype=np.float32)
            if getattr(gen, "needs_seg", False):
                seg = np.asarray(seg_b2[:])
                copies = gen.copies(data, case, list(range(k)), seg) if hasattr(gen, "copies") else \
                    np.stack([gen.copy(data, case, i, seg=seg) for i in range(k)])
            else:
                copies = np.stack([gen.copy(data, case, i) for i in range(k)])
            write_stack_case(out, case, copies, cm.patch_size)
            n_images += k * data.shape[1]
            bar.update()
            bar.set_postfix_str(f"{n_images / max(time.time() - t0, 1e-9):.1f} img/s")
    if todo:
        print(f"s2s2-generate: {n_images} images (2D slices) in {time.time() - t0:.1f} s "
              f"({n_images / max(time.time() - t0, 1e-9):.1f} img/s)")
    if preview_cases and part == 0:  # one preview per stack: part 0's first cases (= the first cases of all)
        write_preview(out, data_dir, sorted(mine)[:preview_cases])
    return out


def write_preview(out: Path, data_dir: Path, cases: List[str], max_copies: int = 4) -> Optional[Path]:
    """``preview.png``: per case a row of mask, real image and the first copies (middle slice, channel 0)."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from nnunet_ext.s2s2.stack import open_stack_case

    cases = [c for c in cases if (out / f"{c}.b2nd").is_file()]
    if not cases:
        return None
    ds = nnUNetDatasetBlosc2(str(data_dir), identifiers=list(cases))
    ncol = 2 + min(max_copies, open_stack_case(out, cases[0]).shape[0])
    fig, axes = plt.subplots(len(cases), ncol, figsize=(2 * ncol, 2 * len(cases)), dpi=80, squeeze=False)
    for r, case in enumerate(cases):
        data, seg, _, _ = ds.load_case(case)
        stack = open_stack_case(out, case)
        z = data.shape[1] // 2
        real = np.asarray(data[0, z])
        panels = [np.asarray(seg[0, z]), real] + [np.asarray(stack[i, 0, z])
                                                  for i in range(min(max_copies, stack.shape[0]))]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(panels):
                ax.imshow(panels[c], cmap="viridis" if c == 0 else "gray")
                if r == 0:
                    ax.set_title(["mask", "real"][c] if c < 2 else f"copy {c - 1}", fontsize=8)
    fig.tight_layout()
    path = out / "preview.png"
    save_figure_atomic(fig, path)
    plt.close(fig)
    return path
