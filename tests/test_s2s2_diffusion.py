"""S2S2's diffusion generator: conditioning, sampling (shapes, determinism, statistics), crops, nnU-Net's split;
end to end on the synthetic 2D dataset: nnunet-ext s2s2-tune (tiny model, 4 steps), exact --resume,
s2s2-generate --generator diffusion -k 2, nnUNetv2_train -tr nnUNetTrainerS2S2 on that stack; the clear errors;
the ControlNet path on a tiny randomly initialised Stable Diffusion pipeline written by the test."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import _bin, run_cli

from nnunet_ext.s2s2.diffusion import (ControlNetDiffusion, DiffusionGenerator, DiffusionModelError, DiffusionSpec,
                                       MaskDiffusion, build_unet, load_init_unet, one_hot, palette_image,
                                       train_scheduler)

TINY = ["--batch-size", 2, "--image-size", 32, "--channels", "8,16", "--layers-per-block", 1,
        "--preview-ddim-steps", 2, "-device", "cpu", "-q"]
GEN_DIR = "s2s2_generator__diffusion__nnUNetPlans__2d"


def _tiny_model(folder: Path, labels=(0, 1, 2), channels: int = 3) -> Path:
    torch.manual_seed(0)
    unet = build_unet(channels, len(labels), 16, (8, 16), 1, mid_attention=True)
    spec = DiffusionSpec(labels=list(labels), channels=channels, mean=[0.5] * channels, std=[2.0] * channels,
                         image_size=16, info={"fold": 0, "step": 0})
    MaskDiffusion(unet, train_scheduler(), spec).save(folder)
    return folder


# ------------------------------------------------------------------------------------------------ units
def test_one_hot_conditioning_ignores_unknown_values():
    seg = torch.tensor([[[0, 1], [2, -1]]])
    oh = one_hot(seg, [0, 1, 2])
    assert oh.shape == (1, 3, 2, 2)
    assert oh[0, :, 0, 0].tolist() == [1, 0, 0] and oh[0, :, 1, 0].tolist() == [0, 0, 1]
    assert oh[0, :, 1, 1].tolist() == [0, 0, 0], "-1 (outside nnU-Net's nonzero mask, padding): no label"


def test_generator_shapes_determinism_statistics_and_conditioning(tmp_path):
    folder = _tiny_model(tmp_path / "model")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3, 2, 20, 28)).astype(np.float32) * [[[[1.0]]], [[[2.0]]], [[[0.5]]]]
    seg = np.zeros((1, 2, 20, 28), dtype=np.int16)
    seg[0, :, 5:15, 4:12], seg[0, 1, 10:, 20:], seg[0, 0, :2] = 1, 2, -1
    gen = DiffusionGenerator(folder, seed=3, steps=2, batch_size=3, device="cpu")
    out = gen.copies(data, "case_a", [0, 1], seg)
    assert out.shape == (2, *data.shape) and out.dtype == np.float32, "the slice's own size (not a multiple of 2)"
    assert np.isfinite(out).all()
    again = DiffusionGenerator(folder, seed=3, steps=2, batch_size=1, device="cpu")
    np.testing.assert_allclose(again.copy(data, "case_a", 1, seg=seg), out[1], atol=1e-5,
                               err_msg="copy k of case c depends on (seed, c, k), not on the batch")
    assert not np.allclose(out[0], out[1])
    assert not np.allclose(DiffusionGenerator(folder, seed=4, steps=2, device="cpu").copy(data, "case_a", 0, seg=seg),
                           out[0])
    # each generated slice has the real slice's per-channel mean and std (nnU-Net's normalisation kept)
    np.testing.assert_allclose(out[0].mean(axis=(2, 3)), data.mean(axis=(2, 3)), atol=1e-4)
    np.testing.assert_allclose(out[0].std(axis=(2, 3), ddof=1), data.std(axis=(2, 3), ddof=1), rtol=1e-3)
    # the mask reaches the network: same noise, another mask -> another image
    other = seg.copy()
    other[0, :, 5:15, 4:12] = 2
    assert not np.allclose(gen.copies(data, "case_a", [0], other)[0], out[0])
    # DDIM with eta > 0 draws its step noise from the slice's own generator too
    eta = DiffusionGenerator(folder, seed=3, steps=2, eta=1.0, batch_size=4, device="cpu")
    eta1 = DiffusionGenerator(folder, seed=3, steps=2, eta=1.0, batch_size=1, device="cpu")
    np.testing.assert_allclose(eta.copies(data, "c", [0], seg), eta1.copies(data, "c", [0], seg), atol=1e-5)


def test_sample_standardised_shapes_and_guidance(tmp_path):
    model = MaskDiffusion.load(_tiny_model(tmp_path / "model"))
    seg = torch.zeros((2, 16, 24), dtype=torch.long)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    x = model.sample(seg, gens, steps=3, guidance=3.0)
    assert x.shape == (2, 3, 16, 24) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="multiple"):
        model.sample(torch.zeros((1, 15, 16), dtype=torch.long), gens[:1], steps=1)
    loss = model.training_loss(torch.randn(2, 3, 16, 16), seg[:, :, :16], torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_init_checks_the_channels(tmp_path):
    folder = _tiny_model(tmp_path / "model")
    assert load_init_unet(folder, 3, 3).config.in_channels == 6, "a tuned generator folder (its unet/)"
    with pytest.raises(DiffusionModelError, match="needs 5"):
        load_init_unet(folder, 1, 4)
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    with pytest.raises(DiffusionModelError, match="ControlNet"):
        load_init_unet(tmp_path / "sd", 3, 3)


def test_training_cases_follow_nnunets_split(tmp_path):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from nnunet_ext.s2s2.tune import training_cases

    cases = [f"case_{i:02d}" for i in range(10)]
    prep = SimpleNamespace(cases=cases[::-1], folder=tmp_path)
    assert training_cases(prep, 1) == generate_crossval_split(cases, seed=12345, n_splits=5)[1]["train"]
    assert json.loads((tmp_path / "splits_final.json").read_text())[1]["train"] == training_cases(prep, 1)
    assert training_cases(prep, "all") == cases
    assert len(training_cases(prep, 7)) == 8, "beyond the split file: nnU-Net's seeded 80:20 split"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture
def nnunet_vars(nnunet_env, monkeypatch):
    """nnU-Net's folders in this process (for in-process ``nnunet_ext.cli.main`` calls)."""
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, nnunet_env[k])


@pytest.fixture(scope="module")
def tuned(dataset2d, nnunet_env, nnunet_dirs):
    """A tiny generator tuned for 4 steps (checkpoint every 2) on fold 0 of the synthetic 2D dataset."""
    proc = run_cli("nnunet-ext", ["s2s2-tune", "-d", dataset2d["id"], "-c", "2d", "-f", 0, "--steps", 4,
                                  "--save-every", 2, *TINY], nnunet_env)
    return {"folder": Path(nnunet_dirs["results"]) / dataset2d["name"] / GEN_DIR / "fold_0", "proc": proc}


@pytest.fixture(scope="module")
def diffusion_stack(tuned, dataset2d, nnunet_env, nnunet_dirs):
    proc = run_cli("nnunet-ext", ["s2s2-generate", "-d", dataset2d["id"], "-c", "2d", "-k", 2, "--generator",
                                  "diffusion", "-f", 0, "--ddim-steps", 2, "--batch-size", 4, "-device", "cpu", "-q"],
                   nnunet_env)
    folder = Path(nnunet_dirs["preprocessed"]) / dataset2d["name"] / "nnUNetPlans_2d_s2s2_diffusion"
    yield {"folder": folder, "proc": proc}
    shutil.rmtree(folder)  # trainers that take "the only stack" of the dataset (test_s2s2.py) must still find one


def test_tune_writes_model_checkpoint_and_preview(tuned, dataset2d):
    folder = tuned["folder"]
    for f in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
              "s2s2_diffusion.json", "checkpoint.pt", "preview.png"):
        assert (folder / f).is_file(), f
    spec = json.loads((folder / "s2s2_diffusion.json").read_text())
    assert spec["labels"] == [0, 1, 2] and spec["channels"] == 3
    assert spec["info"]["step"] == 4 and spec["info"]["fold"] == 0 and spec["info"]["training_cases"] == 8
    assert not list(folder.glob(".*")), "no temporary file left behind"
    assert "steps/s" in tuned["proc"].stdout and "checkpoint" in tuned["proc"].stdout


def test_resume_continues_exactly(tuned, dataset2d, nnunet_vars, tmp_path, capsys):
    from nnunet_ext.cli import main

    args = ["s2s2-tune", "-d", str(dataset2d["id"]), "-c", "2d", "-f", "0", "--save-every", "2", "-o",
            str(tmp_path / "gen"), *map(str, TINY)]
    assert main(args + ["--resume", "--steps", "4"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "4"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--steps", "4", "--resume"]) == 0
    full = torch.load(tuned["folder"] / "checkpoint.pt", map_location="cpu", weights_only=False)
    resumed = torch.load(tmp_path / "gen" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert resumed["step"] == full["step"] == 4
    assert resumed["losses"] == full["losses"], "the same batches, noise and updates as the uninterrupted run"
    for k, v in full["trainable"].items():
        assert torch.equal(v, resumed["trainable"][k]), k
    assert (tmp_path / "gen" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tuned["folder"] / "unet" / "diffusion_pytorch_model.safetensors").read_bytes(), "same EMA weights"


def test_tune_from_init_and_resume_keep_the_init_architecture(dataset2d, nnunet_vars, tmp_path):
    """``s2s2-tune --init`` with a UNet2DModel whose widths differ from the CLI's --channels, then --resume: the
    resumed run rebuilds the init model's architecture (stored in checkpoint.pt), not the CLI defaults'."""
    from nnunet_ext.cli import main

    torch.manual_seed(0)
    build_unet(3, 3, 32, (16, 32), 1, mid_attention=False).save_pretrained(str(tmp_path / "init"))
    args = ["s2s2-tune", "-d", str(dataset2d["id"]), "-c", "2d", "-f", "0", "--save-every", "2", "-o",
            str(tmp_path / "gen"), "--init", str(tmp_path / "init"), *map(str, TINY)]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "4", "--resume"]) == 0
    ckpt = torch.load(tmp_path / "gen" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] == 4 and tuple(ckpt["unet_config"]["block_out_channels"]) == (16, 32)
    assert MaskDiffusion.load(tmp_path / "gen").unet.config.block_out_channels[-1] == 32


def test_tune_on_two_processes_with_ddp_resumes_exactly(dataset2d, nnunet_env, tmp_path):
    """``torchrun --nproc_per_node 2 nnunet-ext s2s2-tune`` (CPU processes, gloo): one DDP model, every process's
    random states in the checkpoint, and ``--resume`` under torchrun continues exactly."""
    base = ["--standalone", "--nproc_per_node", 2, _bin("nnunet-ext"), "s2s2-tune", "-d", dataset2d["id"], "-c", "2d",
            "-f", 0, "--save-every", 2, *TINY]
    proc = run_cli("torchrun", base + ["--steps", 4, "-o", tmp_path / "full"], nnunet_env)
    assert "2 processes (DDP, batch 2 each)" in proc.stdout and proc.stdout.count("s2s2-tune: step 4, loss") == 1
    run_cli("torchrun", base + ["--steps", 2, "-o", tmp_path / "part"], nnunet_env)
    run_cli("torchrun", base + ["--steps", 4, "--resume", "-o", tmp_path / "part"], nnunet_env)
    full = torch.load(tmp_path / "full" / "checkpoint.pt", map_location="cpu", weights_only=False)
    resumed = torch.load(tmp_path / "part" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert full["world_size"] == 2 and len(full["ranks"]) == 2
    assert full["ranks"][0]["sampler_rng"] != full["ranks"][1]["sampler_rng"], "each process draws its own crops"
    assert resumed["step"] == full["step"] == 4 and resumed["losses"] == full["losses"]
    for k, v in full["trainable"].items():
        assert torch.equal(v, resumed["trainable"][k]), k
    assert (tmp_path / "part" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tmp_path / "full" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes(), "same EMA weights"
    spec = json.loads((tmp_path / "full" / "s2s2_diffusion.json").read_text())
    assert spec["info"]["processes"] == 2 and spec["info"]["step"] == 4


def test_generate_with_the_tuned_model(diffusion_stack, tuned, dataset2d, nnunet_dirs):
    import blosc2

    from nnunet_ext.s2s2.stack import open_stack_case

    folder = diffusion_stack["folder"]
    pre = Path(nnunet_dirs["preprocessed"]) / dataset2d["name"] / "nnUNetPlans_2d"
    cases = sorted(p.name[:-5] for p in pre.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    assert sorted(p.name[:-5] for p in folder.glob("*.b2nd")) == cases
    info = json.loads((folder / "stack.json").read_text())
    assert info["generator"] == "diffusion" and info["k"] == 2
    assert info["settings"]["fold"] == 0 and info["settings"]["ddim_steps"] == 2
    assert (folder / "preview.png").is_file() and "img/s" in diffusion_stack["proc"].stdout
    real = blosc2.open(str(pre / f"{cases[0]}.b2nd"), mode="r")[:]
    seg = blosc2.open(str(pre / f"{cases[0]}_seg.b2nd"), mode="r")[:]
    stack = open_stack_case(folder, cases[0])[:]
    assert stack.shape == (2, *real.shape) and not np.allclose(stack[0], real)
    np.testing.assert_allclose(stack[1].mean(axis=(2, 3)), real.mean(axis=(2, 3)), atol=1e-3)
    # reproducible: the stored copies are what the generator gives for (seed 0, case, k)
    gen = DiffusionGenerator(tuned["folder"], seed=0, steps=2, batch_size=1, device="cpu")
    np.testing.assert_allclose(gen.copy(real, cases[0], 1, seg=seg), stack[1], atol=1e-4)


def test_3d_fullres_slices_for_the_generator_and_s2s2_training(dataset3d, nnunet_env, nnunet_dirs):
    """3d_fullres: s2s2-tune on the volumes' 2D slices, s2s2-generate (diffusion and GIN) writes copies of each
    preprocessed 3D case's shape, and nnUNetTrainerS2S2 trains on the 3D stack through nnUNetv2_train."""
    import blosc2

    from nnunet_ext.s2s2.stack import open_stack_case

    ds, pre = dataset3d, Path(nnunet_dirs["preprocessed"]) / dataset3d["name"]
    stacks = {g: pre / f"nnUNetPlans_3d_fullres_s2s2_{g}" for g in ("diffusion", "gin")}
    try:
        run_cli("nnunet-ext", ["s2s2-tune", "-d", ds["id"], "-c", "3d_fullres", "-f", 0, "--steps", 2, "--save-every",
                               2, *TINY], nnunet_env)
        run_cli("nnunet-ext", ["s2s2-generate", "-d", ds["id"], "-c", "3d_fullres", "-k", 1, "--generator",
                               "diffusion", "-f", 0, "--ddim-steps", 2, "--batch-size", 32, "-device", "cpu", "-q"],
                nnunet_env)
        run_cli("nnunet-ext", ["s2s2-generate", "-d", ds["id"], "-c", "3d_fullres", "-k", 2, "--generator", "gin",
                               "-q"], nnunet_env)
        for gen, k in (("diffusion", 1), ("gin", 2)):
            case = sorted(stacks[gen].glob("*.b2nd"))[0]
            real = blosc2.open(str(pre / "nnUNetPlans_3d_fullres" / case.name), mode="r")
            stack = open_stack_case(stacks[gen], case.name[:-5])
            assert len(real.shape) == 4 and stack.shape == (k, *real.shape), (gen, stack.shape, real.shape)
            assert np.isfinite(stack[:]).all()
        run_cli("nnUNetv2_train", [ds["id"], "3d_fullres", 0, "-tr", "nnUNetTrainerS2S2Gin_micro", "-device", "cpu"],
                nnunet_env)
        fold = Path(nnunet_dirs["results"]) / ds["name"] / "nnUNetTrainerS2S2Gin_micro__nnUNetPlans__3d_fullres" \
            / "fold_0"
        ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert np.isfinite(ckpt["logging"]["consist_enc"]).all() and np.isfinite(ckpt["logging"]["seg_copy"]).all()
    finally:  # other tests of this dataset train without a stack
        for folder in stacks.values():
            shutil.rmtree(folder, ignore_errors=True)


def test_missing_tuned_model_names_the_tune_command(dataset2d, nnunet_vars, capsys):
    from nnunet_ext.cli import main

    assert main(["s2s2-generate", "-d", str(dataset2d["id"]), "-c", "2d", "--generator", "diffusion",
                 "-f", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no tuned diffusion generator" in err and f"nnunet-ext s2s2-tune -d {dataset2d['id']} -c 2d -f 3" in err


def test_s2s2_trains_on_the_diffusion_stack(diffusion_stack, dataset2d, nnunet_env, nnunet_dirs, tmp_path):
    """nnUNetTrainerS2S2Diffusion_micro (tests/ext_trainers): s2s2_generator = "diffusion", 1 epoch of 3 iterations;
    nnUNetv2_predict with it writes one label map per test image, of the image's size (3 iterations are too few
    for a Dice check: the GIN run in test_s2s2.py checks that)."""
    from PIL import Image

    run_cli("nnUNetv2_train", [dataset2d["id"], "2d", 0, "-tr", "nnUNetTrainerS2S2Diffusion_micro", "-device", "cpu"],
            nnunet_env)
    fold = Path(nnunet_dirs["results"]) / dataset2d["name"] / "nnUNetTrainerS2S2Diffusion_micro__nnUNetPlans__2d" \
        / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for k in ("seg_copy", "consist_enc", "consist_dec"):
        assert np.isfinite(ckpt["logging"][k][0]), k
    logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "nnUNetPlans_2d_s2s2_diffusion" in logs, "trained on the diffusion stack"
    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", dataset2d["raw"] / "imagesTs", "-o", out, "-d", dataset2d["id"], "-c", "2d",
                                 "-f", 0, "-tr", "nnUNetTrainerS2S2Diffusion_micro", "-device", "cpu", "--disable_tta",
                                 "-npp", 1, "-nps", 1], nnunet_env)
    images = sorted((dataset2d["raw"] / "imagesTs").glob("*_0000.png"))
    assert len(images) == 2
    for img in images:
        pred = out / img.name.replace("_0000.png", ".png")
        assert Image.open(pred).size == Image.open(img).size, pred


# ------------------------------------------------------------------------------------------------ ControlNet
def _tiny_stable_diffusion(folder: Path) -> Path:
    """A randomly initialised, tiny Stable Diffusion pipeline folder (the layout of a real one; nothing
    downloaded): CLIP tokenizer with a character vocabulary, 1-layer CLIP text encoder, VAE with SD's factor 8,
    2-level UNet with cross-attention."""
    import string

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ",.-":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    tok_dir = folder.parent / "tokenizer_files"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16,
                        pad_token="<|endoftext|>")
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8,
                                        intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
                                        vocab_size=len(vocab), max_position_embeddings=16))
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=[8, 8, 16, 16], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        norm_num_groups=4, sample_size=64)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(str(folder))
    return folder


def test_palette_condition_and_prompt():
    seg = torch.tensor([[[0, 1], [2, -1]]])
    img = palette_image(seg, [0, 1, 2])
    assert img.shape == (1, 3, 2, 2) and img.min() >= 0 and img.max() <= 1
    assert img[0, :, 1, 1].tolist() == [0, 0, 0], "no label: black"
    assert len({tuple(img[0, :, i // 2, i % 2].tolist()) for i in range(4)}) == 4, "one colour per label"
    spec = DiffusionSpec(labels=[0, 1, 2], channels=1, mean=[0.0], std=[1.0], kind="controlnet", modality="MRI",
                         prompt="a medical {modality} image showing {classes}", class_names={"1": "blob", "2": "moon"})
    cn = ControlNetDiffusion.__new__(ControlNetDiffusion)
    cn.spec = spec
    assert cn.prompts(torch.tensor([[[0, 2], [1, 0]], [[0, 0], [0, 0]]])) == [
        "a medical MRI image showing blob, moon", "a medical MRI image showing background only"]


def test_controlnet_tunes_resumes_and_generates(dataset2d, nnunet_vars, nnunet_dirs, tmp_path, capsys):
    pytest.importorskip("transformers")
    from nnunet_ext.cli import main
    from nnunet_ext.s2s2.stack import open_stack_case

    sd = _tiny_stable_diffusion(tmp_path / "sd")
    out = tmp_path / "cn"
    args = ["s2s2-tune", "-d", str(dataset2d["id"]), "-c", "2d", "--generator", "controlnet", "--init", str(sd),
            "--batch-size", "2", "--image-size", "64", "--save-every", "1", "--preview-ddim-steps", "2",
            "-device", "cpu", "-q", "-o", str(out)]
    assert main(args + ["--steps", "1"]) == 0
    assert main(args + ["--steps", "2", "--resume"]) == 0
    spec = json.loads((out / "s2s2_diffusion.json").read_text())
    assert spec["kind"] == "controlnet" and spec["fit"] == "resize" and spec["info"]["step"] == 2
    assert spec["modality"] == "colour" and spec["class_names"] == {"1": "blob", "2": "satellite"}
    for f in ("controlnet/config.json", "scheduler/scheduler_config.json", "checkpoint.pt", "preview.png"):
        assert (out / f).is_file(), f
    stack_dir = Path(nnunet_dirs["preprocessed"]) / dataset2d["name"] / "nnUNetPlans_2d_s2s2_controlnet"
    try:
        assert main(["s2s2-generate", "-d", str(dataset2d["id"]), "-c", "2d", "--generator", "controlnet",
                     "--model", str(out), "-k", "1", "--ddim-steps", "2", "--batch-size", "4", "-device", "cpu",
                     "-q"]) == 0
        info = json.loads((stack_dir / "stack.json").read_text())
        assert info["generator"] == "controlnet" and info["settings"]["guidance"] == 9.0
        case = sorted(p.name[:-5] for p in stack_dir.glob("*.b2nd"))[0]
        import blosc2
        pre = Path(nnunet_dirs["preprocessed"]) / dataset2d["name"] / "nnUNetPlans_2d"
        real = blosc2.open(str(pre / f"{case}.b2nd"), mode="r")[:]
        seg = blosc2.open(str(pre / f"{case}_seg.b2nd"), mode="r")[:]
        stack = open_stack_case(stack_dir, case)[:]
        assert stack.shape == (1, *real.shape) and np.isfinite(stack).all()
        gen = DiffusionGenerator(out, seed=0, steps=2, batch_size=1, device="cpu")
        np.testing.assert_allclose(gen.copy(real, case, 0, seg=seg), stack[0], atol=1e-4)
    finally:
        shutil.rmtree(stack_dir, ignore_errors=True)
    assert main(["s2s2-generate", "-d", str(dataset2d["id"]), "-c", "2d", "--generator", "diffusion", "--model",
                 str(out), "-q"]) == 2
    assert "not a diffusion one" in capsys.readouterr().err
