"""S2S2 with the training-free stack: cosine consistency by hand, paired augmentation, the stack store and
generator, and end to end with nnU-Net's CLIs on the synthetic 2D dataset (s2s2-generate in two parts,
nnUNetv2_train -tr nnUNetTrainerS2S2 / nnUNetTrainerS2S2FD, nnUNetv2_predict); a missing stack's error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import foreground_dice_2d, run_cli

from nnunet_ext.s2s2.gin import GINGenerator
from nnunet_ext.s2s2.losses import cosine_consistency
from nnunet_ext.s2s2.stack import open_stack_case, shard, write_stack_case, write_stack_info


def test_cosine_consistency_by_hand_over_channels():
    f = torch.randn(2, 5, 4, 4)
    assert cosine_consistency(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_consistency(f, -f).item() == pytest.approx(2.0, abs=1e-6)
    assert cosine_consistency(f, 3 * f).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    # 2 positions, 2 channels: orthogonal at the first, identical at the second -> mean(1, 0) = 0.5
    a = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])  # (b=1, C=2, n=2)
    b = torch.tensor([[[0.0, 1.0], [1.0, 2.0]]])
    assert cosine_consistency(a, b).item() == pytest.approx(0.5, abs=1e-6)
    # not the cosine of whole flattened maps (which would be 5 / sqrt(6 * 6) = 0.83 -> 0.17)
    a.requires_grad_(), b.requires_grad_()
    cosine_consistency(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0, "no detach: gradients reach both passes"


def test_paired_channels_get_one_spatial_transform():
    """nnU-Net's training transforms on (real, copy) as channels: the copy stays aligned with the real image and
    the labels (one spatial draw for the pair), while the intensities are augmented independently."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    np.random.seed(0)
    patch = (48, 48)
    tr = nnUNetTrainer.get_training_transforms(patch, (-np.pi, np.pi), None, (0, 1), False, foreground_labels=[1])
    for i in range(5):
        img = ndimage.gaussian_filter(rng.standard_normal((64, 64)), 4).astype(np.float32)
        img /= img.std()
        seg = (img > 0.5).astype(np.int16)
        copy = -2.0 * img + 0.3  # a strong appearance change, same geometry
        out = tr(image=torch.from_numpy(np.stack([img, copy])), segmentation=torch.from_numpy(seg[None]))
        x, s = out["image"].numpy(), out["segmentation"].numpy()[0]
        corr = np.corrcoef(x[0].ravel(), x[1].ravel())[0, 1]
        assert corr < -0.8, f"sample {i}: real and copy not aligned after augmentation (corr {corr:.2f})"
        if (s == 1).any() and (s == 0).any():
            assert x[0][s == 1].mean() > x[0][s == 0].mean() and x[1][s == 1].mean() < x[1][s == 0].mean()


def test_intensity_augmentation_is_drawn_separately_for_real_and_copy():
    """nnUNetTrainerS2S2's transforms: each random intensity transform fires on the real half and on the copy
    independently (nnU-Net's own RandomTransform would fire for both or neither), the mask of use_mask_for_norm
    covers the copy's channels, and an unlabelled C-channel image gets each transform once."""
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    from nnunet_ext.s2s2.data import PerHalfTransform
    from nnunet_ext.s2s2.trainer import nnUNetTrainerS2S2

    torch.manual_seed(0)
    double = RandomTransform(MultiplicativeBrightnessTransform((2.0, 2.0), synchronize_channels=False,
                                                               p_per_channel=1), apply_probability=0.5)
    fired_plain = [double(image=torch.ones(2, 4, 4))["image"][:, 0, 0].tolist() for _ in range(200)]
    assert all(a == b for a, b in fired_plain), "nnU-Net's RandomTransform: both channels or neither"
    per_half = PerHalfTransform(double, channels=1)
    fired = np.array([per_half(image=torch.ones(2, 4, 4))["image"][:, 0, 0].tolist() for _ in range(400)]) == 2
    assert 0.2 < fired[:, 0].mean() < 0.8 and 0.2 < fired[:, 1].mean() < 0.8
    assert 0.35 < (fired[:, 0] != fired[:, 1]).mean() < 0.65, "real and copy fire independently (p = 0.5 each)"
    assert per_half(image=torch.ones(1, 4, 4))["image"].shape == (1, 4, 4)

    tr = nnUNetTrainerS2S2.get_training_transforms((32, 32), (-np.pi, np.pi), None, (0, 1), False,
                                                   use_mask_for_norm=[True, False], foreground_labels=[1])
    wrapped = [t for t in tr.transforms if isinstance(t, PerHalfTransform)]
    assert len(wrapped) == 7, "noise, blur, brightness, contrast, low resolution, two gammas"
    assert not any(isinstance(t, RandomTransform) for t in tr.transforms), "none left drawn once for the pair"
    mask = [t for t in tr.transforms if isinstance(t, MaskImageTransform)]
    assert len(mask) == 1 and mask[0].apply_to_channels == [0, 2], "the copy's channel 0 is masked like the real's"
    img = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((40, 40)), 3).astype(np.float32)
    seg = (img > 0.2).astype(np.int16)
    out = tr(image=torch.from_numpy(np.stack([img, img, -img, -img])), segmentation=torch.from_numpy(seg[None]))
    assert out["image"].shape == (4, 32, 32) and out["segmentation"].shape == (1, 32, 32)


def test_gin_is_deterministic_keeps_shape_and_statistics():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((3, 2, 32, 40)).astype(np.float32)
    gen = GINGenerator(seed=7)
    c0, c0b, c1 = gen.copy(data, "case_a", 0), gen.copy(data, "case_a", 0), gen.copy(data, "case_a", 1)
    assert c0.shape == data.shape and c0.dtype == np.float32
    assert np.array_equal(c0, c0b), "copy k of case c depends only on (seed, c, k)"
    assert not np.allclose(c0, c1) and not np.allclose(c0, data)
    np.testing.assert_allclose(c0.mean(axis=(1, 2, 3)), data.mean(axis=(1, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(c0.std(axis=(1, 2, 3)), data.std(axis=(1, 2, 3)), rtol=1e-3)


def test_stack_store_is_atomic_and_parts_cover_every_case_once(tmp_path):
    cases = [f"case{i:02d}" for i in range(11)]
    parts = [shard(cases, p, 3) for p in range(3)]
    assert sorted(sum(parts, [])) == sorted(cases) and sum(len(p) for p in parts) == len(cases)
    with pytest.raises(ValueError):
        shard(cases, 3, 3)
    copies = np.random.default_rng(0).standard_normal((4, 2, 1, 16, 16)).astype(np.float32)
    write_stack_case(tmp_path, "case00", copies, (16, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case00.b2nd"], "no temporary file left behind"
    stack = open_stack_case(tmp_path, "case00")
    assert stack.shape == copies.shape and np.array_equal(stack[2], copies[2])


def _write_info_many_times(folder: str, n: int) -> None:
    for i in range(n):
        write_stack_info(folder, {"k": 2, "i": i})


def test_stack_info_written_by_parts_at_once_does_not_collide(tmp_path):
    """Parts started together (several GPUs / nodes) write stack.json at the same moment: each through its own
    temporary file, so no part fails and the file is always complete."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_info_many_times, args=(str(tmp_path), 300)) for _ in range(3)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(60)
    assert [pr.exitcode for pr in procs] == [0, 0, 0]
    assert json.loads((tmp_path / "stack.json").read_text())["k"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"], "no temporary file left behind"


# ------------------------------------------------------------------------------------------ end to end
def _fold(nnunet_dirs, ds, trainer):
    return Path(nnunet_dirs["results"]) / ds["name"] / f"{trainer}__nnUNetPlans__2d" / "fold_0"


@pytest.fixture(scope="module")
def gin_stack(dataset2d, nnunet_env, nnunet_dirs):
    """The GIN stack (K=2) of the synthetic 2D dataset, generated in two parts (from scratch: another module of the
    session, e.g. the DDP tests, may have generated the same stack already)."""
    shutil.rmtree(Path(nnunet_dirs["preprocessed"]) / dataset2d["name"] / "nnUNetPlans_2d_s2s2_gin", ignore_errors=True)
    outs = [run_cli("nnunet-ext", ["s2s2-generate", "-d", dataset2d["id"], "-c", "2d", "-k", 2, "--part", p,
                                   "--num-parts", 2, "-q"], nnunet_env) for p in (0, 1)]
    folder = Path(nnunet_dirs["preprocessed"]) / dataset2d["name"] / "nnUNetPlans_2d_s2s2_gin"
    return {"folder": folder, "outs": outs}


def test_generate_writes_every_case_once_resumes_and_previews(gin_stack, dataset2d, nnunet_env, nnunet_dirs):
    folder = gin_stack["folder"]
    pre = Path(nnunet_dirs["preprocessed"]) / dataset2d["name"] / "nnUNetPlans_2d"
    cases = sorted(p.name[:-5] for p in pre.glob("*.b2nd") if not p.name.endswith("_seg.b2nd"))
    assert sorted(p.name[:-5] for p in folder.glob("*.b2nd")) == cases
    info = json.loads((folder / "stack.json").read_text())
    assert info["k"] == 2 and info["generator"] == "gin"
    import blosc2
    real = blosc2.open(str(pre / f"{cases[0]}.b2nd"), mode="r")[:]
    stack = open_stack_case(folder, cases[0])
    assert stack.shape == (2, *real.shape), "K copies of the preprocessed case's exact shape"
    assert (folder / "preview.png").is_file()
    assert "img/s" in gin_stack["outs"][0].stdout
    again = run_cli("nnunet-ext", ["s2s2-generate", "-d", dataset2d["id"], "-c", "2d", "-k", 2, "-q"], nnunet_env)
    assert f"{len(cases)} done before, 0 to generate" in again.stdout
    other_k = run_cli("nnunet-ext", ["s2s2-generate", "-d", dataset2d["id"], "-c", "2d", "-k", 3, "-q"], nnunet_env,
                      check=False)
    assert other_k.returncode == 2 and "other settings" in other_k.stderr


def test_s2s2_trains_logs_terms_and_predicts(gin_stack, dataset2d, nnunet_env, nnunet_dirs, tmp_path):
    run_cli("nnUNetv2_train", [dataset2d["id"], "2d", 0, "-tr", "nnUNetTrainerS2S2_tiny", "-device", "cpu"],
            nnunet_env)
    fold = _fold(nnunet_dirs, dataset2d, "nnUNetTrainerS2S2_tiny")
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for k in ("seg_copy", "consist_enc", "consist_dec", "train_losses"):
        assert len(ckpt["logging"][k]) == 3 and all(np.isfinite(ckpt["logging"][k])), k
    assert 0 <= ckpt["logging"]["consist_enc"][-1] <= 2
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in ckpt["network_weights"])
    w = ckpt["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"]
    assert w.shape[1] == 3, "the checkpoint holds the plain network (3 input channels, not the paired 6)"
    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", dataset2d["raw"] / "imagesTs", "-o", out, "-d", dataset2d["id"], "-c", "2d",
                                 "-f", 0, "-tr", "nnUNetTrainerS2S2_tiny", "-device", "cpu", "--disable_tta",
                                 "-npp", 1, "-nps", 1], nnunet_env)
    dice, chance = foreground_dice_2d(out, dataset2d["raw"] / "labelsTs")
    assert np.mean(dice) > 2 * np.mean(chance), (dice, chance)


def test_s2s2_composes_with_fd(gin_stack, dataset2d, nnunet_env, nnunet_dirs):
    run_cli("nnUNetv2_train", [dataset2d["id"], "2d", 0, "-tr", "nnUNetTrainerS2S2FD_micro", "-device", "cpu"],
            nnunet_env)
    ckpt = torch.load(_fold(nnunet_dirs, dataset2d, "nnUNetTrainerS2S2FD_micro") / "checkpoint_final.pth",
                      map_location="cpu", weights_only=False)
    for k in ("seg_copy", "consist_enc", "consist_dec", "intra_fd", "inter_fd"):
        assert np.isfinite(ckpt["logging"][k][0]), k


def test_missing_stack_gives_the_generate_command(dataset3d, nnunet_env):
    proc = run_cli("nnUNetv2_train", [dataset3d["id"], "3d_fullres", 0, "-tr", "nnUNetTrainerS2S2_tiny",
                                      "-device", "cpu"], nnunet_env, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "needs a semantic stack" in text and f"nnunet-ext s2s2-generate -d {dataset3d['id']} -c 3d_fullres" in text
