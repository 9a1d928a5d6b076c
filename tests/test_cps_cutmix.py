"""CPS with CutMix (nnunet_ext.cps.cutmix, nnUNetTrainerCPS_cutmix): box masks in 2D and 3D (inside the patch, volume
fraction in range, reproducible from a generator), the mixed pseudo-label equals the mix of the unmixed predictions
(fixed networks, every deep-supervision scale), no gradient through the pseudo-labels, no CPS term on the labelled
patches, deep-supervision scales mixed like nnU-Net downsamples labels, the step under DDP (gloo, 2 processes), and
end to end with nnU-Net's CLIs on the synthetic 3D dataset with unlabelled images (3d_fullres, and 2d with UIF)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from conftest import run_cli

from nnunet_ext.core.loss_terms import StepState
from nnunet_ext.cps.cutmix import (box_masks, boxes_to_mask, draw_boxes, mask_at, mix, mixed_pseudo_labels,
                                   pair_pseudo_labels, split_halves)
from nnunet_ext.cps.losses import pseudo_label_losses
from nnunet_ext.cps.network import CPSNetworkPair
from nnunet_ext.cps.term import CUTMIX_LABELS, CPSCutMixTerm

DS_CUTMIX = 563
SHAPES = [(64, 64), (40, 56), (16, 32, 32), (48, 40, 56)]


# ------------------------------------------------------------------------------------------------------ box masks
def _rounding_bounds(shape, area):
    """The volume fractions a box can have when each side ``f_d * S_d`` (``f_d >= area[0]``) is rounded to voxels."""
    lo = area[0] * np.prod([1 - 0.5 / (area[0] * s) for s in shape])
    hi = area[1] * np.prod([1 + 0.5 / (area[0] * s) for s in shape])
    return lo, hi


@pytest.mark.parametrize("shape", SHAPES)
def test_boxes_inside_the_patch_and_volume_fraction_in_range(shape):
    n = 400
    boxes = draw_boxes(n, shape, (0.25, 0.5), generator=torch.Generator().manual_seed(1))
    assert boxes.shape == (n, 1, len(shape), 2)
    starts, stops = boxes[:, 0, :, 0], boxes[:, 0, :, 1]
    size = torch.tensor(shape)
    assert (starts >= 0).all() and (stops <= size).all() and (stops > starts).all(), "a box leaves the patch"
    mask = boxes_to_mask(boxes, shape)
    assert mask.shape == (n, 1, *shape) and mask.dtype == torch.bool
    share = mask.flatten(1).float().mean(1).numpy()
    sides = (stops - starts).double()
    # the mask is exactly the box: as many voxels as the box, all of them within its bounds
    assert np.array_equal(mask.flatten(1).sum(1).numpy(), sides.prod(1).long().numpy())
    lo, hi = _rounding_bounds(shape, (0.25, 0.5))
    assert share.min() >= lo and share.max() <= hi, (share.min(), share.max(), lo, hi)
    # uniform over [0.25, 0.5]: the whole range is used, mean near 0.375
    assert share.min() < 0.28 and share.max() > 0.47 and abs(share.mean() - 0.375) < 0.02
    # random aspect ratio: along every axis some boxes are thin and some span most of the patch
    frac = (sides / size).numpy()
    assert (frac.min(0) < 0.45).all() and (frac.max(0) > 0.85).all(), frac.min(0)
    # placed anywhere: boxes touch both ends of every axis over the draws
    assert ((starts == 0).any(0)).all() and ((stops == size).any(0)).all()


@pytest.mark.parametrize("shape", [(64, 64), (16, 32, 32)])
def test_several_boxes_are_exclusive_ored_each_of_a_share_of_the_area(shape):
    boxes = draw_boxes(200, shape, (0.25, 0.5), boxes=3, generator=torch.Generator().manual_seed(2))
    assert boxes.shape == (200, 3, len(shape), 2)
    assert (boxes[..., 0] >= 0).all() and (boxes[..., 1] <= torch.tensor(shape)).all()
    mask = boxes_to_mask(boxes, shape)
    single = [boxes_to_mask(boxes[:, i:i + 1], shape) for i in range(3)]
    assert torch.equal(mask, single[0] ^ single[1] ^ single[2])
    volumes = (boxes[..., 1] - boxes[..., 0]).prod(-1).double() / float(np.prod(shape))  # (n, 3)
    lo, hi = _rounding_bounds(shape, (0.25 / 3, 0.5 / 3))
    assert volumes.min() >= lo and volumes.max() <= hi


def test_boxes_are_reproducible_from_the_generator_and_leave_global_generators_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = box_masks(4, (16, 32, 32), generator=torch.Generator().manual_seed(7))
    b = box_masks(4, (16, 32, 32), generator=torch.Generator().manual_seed(7))
    c = box_masks(4, (16, 32, 32), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(before, torch.get_rng_state()), "drawing boxes must not touch torch's global generator"


def test_trainer_seeds_its_box_generator_from_the_run_seed_per_epoch():
    from types import SimpleNamespace

    from nnunet_ext.core.seeding import derive_seed
    from nnunet_ext.cps.trainer import nnUNetTrainerCPS_cutmix

    seed_of = nnUNetTrainerCPS_cutmix.cutmix_seed
    run = SimpleNamespace(ext_seed=3, current_epoch=5, is_ddp=False)
    assert seed_of(run) == derive_seed(3, "cutmix", 5, 0) == seed_of(SimpleNamespace(**vars(run)))
    assert seed_of(SimpleNamespace(ext_seed=3, current_epoch=6, is_ddp=False)) != seed_of(run)
    assert seed_of(SimpleNamespace(ext_seed=4, current_epoch=5, is_ddp=False)) != seed_of(run)
    unseeded = SimpleNamespace(current_epoch=0, is_ddp=False)  # no SeedMixin: follows torch's global generator
    torch.manual_seed(11)
    first = seed_of(unseeded)
    torch.manual_seed(11)
    assert seed_of(unseeded) == first


def test_bad_settings_and_shapes_give_clear_errors():
    with pytest.raises(ValueError, match="volume fraction"):
        draw_boxes(1, (8, 8), (0.5, 0.25))
    with pytest.raises(ValueError, match="at least 1"):
        draw_boxes(1, (8, 8), boxes=0)
    with pytest.raises(ValueError, match="does not fit"):
        mix(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8), torch.ones(2, 1, 4, 8, dtype=torch.bool))
    with pytest.raises(KeyError, match=CUTMIX_LABELS):
        CPSCutMixTerm(lambda o, t: o.sum())(StepState(data=None, target=torch.zeros(1, 1, 4, 4),
                                                      output=(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))))


def test_mix_is_the_paper_formula():
    g = torch.Generator().manual_seed(3)
    u0, u1 = torch.randn(3, 2, 16, 24, generator=g), torch.randn(3, 2, 16, 24, generator=g)
    m = box_masks(3, (16, 24), generator=g)
    assert torch.equal(mix(u0, u1, m), u0 * (1 - m.float()) + u1 * m.float())
    labels0, labels1 = torch.randint(0, 3, (3, 16, 24), generator=g), torch.randint(0, 3, (3, 16, 24), generator=g)
    assert torch.equal(mix(labels0, labels1, m), torch.where(m[:, 0], labels1, labels0))


# --------------------------------------------------------------------------------------------- pseudo-labels
def _tiny_unet(seed: int, dims: int = 2, ds: bool = True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dims == 2 else (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    torch.manual_seed(seed)
    return PlainConvUNet(1, 3, (8, 16, 32), conv, 3, (1, 2, 2), 2, 3, (2, 2), True, norm, {"affine": True}, None,
                         None, torch.nn.LeakyReLU, {"inplace": True}, deep_supervision=ds)


@pytest.mark.parametrize("dims,shape", [(2, (32, 24)), (3, (8, 16, 16))])
def test_mixed_pseudo_label_equals_the_mix_of_the_unmixed_predictions(dims, shape):
    """Fixed networks (float64, training mode): the pair's pseudo-label of the mixed image, at every deep-supervision
    scale, is the argmax of each network's prediction on U0 and on U1, mixed with the mask at that scale."""
    pair = CPSNetworkPair(_tiny_unet(0, dims), _tiny_unet(1, dims)).double().train()
    g = torch.Generator().manual_seed(4)
    u0, u1 = torch.randn(2, 1, *shape, generator=g).double(), torch.randn(2, 1, *shape, generator=g).double()
    mask = box_masks(2, shape, generator=g)
    labels_a, labels_b = pair_pseudo_labels(pair, u0, u1, mask)
    with torch.no_grad():
        for net, labels in ((pair.net_a, labels_a), (pair.net_b, labels_b)):
            p0, p1 = net(u0), net(u1)  # each image on its own
            assert len(labels) == len(p0) == 2
            for k, (a0, a1, lab) in enumerate(zip(p0, p1, labels)):
                m = mask if k == 0 else F.interpolate(mask.float(), a0.shape[2:], mode="nearest-exact") > 0.5
                expected = torch.where(m[:, 0], a1.argmax(1), a0.argmax(1))
                assert lab.shape == expected.shape and torch.equal(lab, expected), f"scale {k}"
                assert 0 < m.float().mean() < 1
            # not the prediction of the mixed image (the box's context differs): the labels are really mixed
            on_mixed = net(mix(u0, u1, mask))[0].argmax(1)
            assert not torch.equal(on_mixed, labels[0])
    # mixing logits then argmax = mixing the argmaxes (a binary mask picks whole voxels)
    out0, out1 = torch.randn(2, 3, *shape, generator=g), torch.randn(2, 3, *shape, generator=g)
    assert torch.equal(mixed_pseudo_labels(out0, out1, mask), mix(out0.argmax(1), out1.argmax(1), mask))


def test_no_gradient_through_the_pseudo_labels():
    pair = CPSNetworkPair(_tiny_unet(0), _tiny_unet(1)).train()
    g = torch.Generator().manual_seed(5)
    u0, u1 = torch.randn(2, 1, 32, 32, generator=g), torch.randn(2, 1, 32, 32, generator=g)
    mask = box_masks(2, (32, 32), generator=g)
    labels_a, labels_b = pair_pseudo_labels(pair, u0, u1, mask)
    assert all(not t.requires_grad and t.grad_fn is None and t.dtype == torch.long for t in labels_a + labels_b)
    x_l = torch.randn(1, 1, 32, 32, generator=g)
    target = [torch.randint(0, 3, (1, 1, 32, 32), generator=g), torch.randint(0, 3, (1, 1, 16, 16), generator=g)]
    out = pair(torch.cat((x_l, mix(u0, u1, mask))))
    terms = CPSCutMixTerm(lambda o, t: F.cross_entropy(o[0], t[0][:, 0].long()), 1.0, [2 / 3, 1 / 3])(
        StepState(data=None, target=target, output=out, extras={CUTMIX_LABELS: (labels_a, labels_b)}))
    terms["cps_a"].value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pair.net_a.parameters())
    assert all(p.grad is None for p in pair.net_b.parameters()), "cps_a (from B's pseudo-label) must not train B"


def test_labelled_patches_get_no_cps_term_and_each_network_learns_from_the_other():
    g = torch.Generator().manual_seed(6)
    n, m = 2, 3  # labelled, mixed
    out_a = [torch.randn(n + m, 3, 8, 8, generator=g).requires_grad_(), torch.randn(n + m, 3, 4, 4, generator=g)
             .requires_grad_()]
    out_b = [torch.randn(n + m, 3, 8, 8, generator=g).requires_grad_(), torch.randn(n + m, 3, 4, 4, generator=g)
             .requires_grad_()]
    labels_a = [torch.randint(0, 3, (m, 8, 8), generator=g), torch.randint(0, 3, (m, 4, 4), generator=g)]
    labels_b = [torch.randint(0, 3, (m, 8, 8), generator=g), torch.randint(0, 3, (m, 4, 4), generator=g)]
    target = [torch.randint(0, 3, (n, 1, 8, 8), generator=g), torch.randint(0, 3, (n, 1, 4, 4), generator=g)]
    seen = {}

    def seg_loss(output, tgt):
        seen["n"] = output[0].shape[0]
        return F.cross_entropy(output[0], tgt[0][:, 0].long())

    w = [0.6, 0.4]
    terms = CPSCutMixTerm(seg_loss, 1.5, w)(StepState(data=None, target=target, output=(out_a, out_b),
                                                      extras={CUTMIX_LABELS: (labels_a, labels_b)}))
    assert seen["n"] == n and terms["cps_a"].weight == terms["cps_b"].weight == 1.5 and terms["seg_b"].weight == 1
    by_hand_a = sum(wk * F.cross_entropy(o[n:], lab) for wk, o, lab in zip(w, out_a, labels_b))
    by_hand_b = sum(wk * F.cross_entropy(o[n:], lab) for wk, o, lab in zip(w, out_b, labels_a))
    assert terms["cps_a"].value.item() == pytest.approx(by_hand_a.item(), rel=1e-6)
    assert terms["cps_b"].value.item() == pytest.approx(by_hand_b.item(), rel=1e-6)
    (terms["cps_a"].value + terms["cps_b"].value).backward()
    for out in (out_a, out_b):
        for o in out:
            assert o.grad[:n].abs().sum() == 0, "a CPS term reached a labelled patch"
            assert o.grad[n:].abs().sum() > 0
    assert pseudo_label_losses(out_a[0][n:], out_b[0][n:], labels_b[0], labels_a[0])[0].item() == \
        pytest.approx(F.cross_entropy(out_a[0][n:], labels_b[0]).item())


@pytest.mark.parametrize("shape,scales", [((32, 48), [[1, 1], [0.5, 0.5], [0.25, 0.25]]),
                                          ((16, 32, 24), [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]])])
def test_deep_supervision_scales_are_mixed_like_nnunet_downsamples_labels(shape, scales):
    """Mixing each scale with the mask at that scale gives exactly what nnU-Net's deep-supervision target
    downsampling (batchgeneratorsv2's DownsampleSegForDSTransform) makes of the full-resolution mixed labels."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    down = DownsampleSegForDSTransform(ds_scales=scales)
    g = torch.Generator().manual_seed(7)
    b = 3
    full0, full1 = torch.randn(b, 4, *shape, generator=g), torch.randn(b, 4, *shape, generator=g)
    mask = box_masks(b, shape, generator=g)

    def scales_of(t):  # per sample: nnU-Net's transform works on (C, *spatial)
        per = [down(segmentation=t[i])["segmentation"] for i in range(t.shape[0])]
        return [torch.stack([p[k] for p in per]) for k in range(len(scales))]

    out0, out1 = scales_of(full0), scales_of(full1)
    mixed = mixed_pseudo_labels(out0, out1, mask)
    expected = scales_of(mixed_pseudo_labels(full0, full1, mask)[:, None])
    for k in range(len(scales)):
        assert mixed[k].shape == out0[k].shape[:1] + out0[k].shape[2:]
        assert torch.equal(mixed[k], expected[k][:, 0]), f"scale {k}"
        m = mask_at(mask, out0[k].shape[2:])
        assert m.dtype == torch.bool and m.shape[2:] == out0[k].shape[2:]
        assert abs(m.float().mean() - mask.float().mean()) < 0.1
    assert mask_at(mask, shape) is mask
    halves = split_halves([torch.arange(4).view(4, 1), torch.arange(4).view(4, 1) * 10])
    assert [h.flatten().tolist() for h in halves[0]] == [[0, 1], [0, 10]]


# ------------------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, init_file: str, result_file: str):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = DDP(CPSNetworkPair(_tiny_unet(rank), _tiny_unet(10 + rank)).train())  # rank 0's weights broadcast
        g = torch.Generator().manual_seed(100 + rank)  # every rank its own batch and boxes
        for _ in range(2):  # two steps: DDP's reducer must be ready again after the no-grad pass
            u = torch.randn(4, 1, 16, 16, generator=g)
            u0, u1 = u.chunk(2)
            mask = box_masks(2, (16, 16), generator=g)
            labels = pair_pseudo_labels(net, u0, u1, mask)  # through DDP, without gradient
            x = torch.cat((torch.randn(1, 1, 16, 16, generator=g), mix(u0, u1, mask)))
            target = [torch.randint(0, 3, (1, 1, 16, 16), generator=g), torch.randint(0, 3, (1, 1, 8, 8), generator=g)]
            net.zero_grad()
            terms = CPSCutMixTerm(lambda o, t: F.cross_entropy(o[0], t[0][:, 0].long()), 1.0, [2 / 3, 1 / 3])(
                StepState(data=x, target=target, output=net(x), extras={CUTMIX_LABELS: labels}))
            sum(t.weight * t.value for t in terms.values()).backward()
        flat = torch.cat([p.grad.flatten() for p in net.module.parameters() if p.grad is not None])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        if rank == 0:
            json.dump({"same_grads": all(torch.allclose(gathered[0], t, atol=1e-6) for t in gathered[1:]),
                       "n_grads": int(flat.numel()), "n_params": sum(p.numel() for p in net.module.parameters())},
                      open(result_file, "w"))
    finally:
        dist.destroy_process_group()


def test_cutmix_step_under_ddp_gloo_two_processes():
    """The pseudo-label pass through the DDP-wrapped pair (no gradient), then the step: both networks' gradients
    all-reduced (identical on both ranks), every parameter trained."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        result = os.path.join(d, "result.json")
        mp.spawn(_ddp_worker, args=(2, os.path.join(d, "pg"), result), nprocs=2, join=True)
        r = json.load(open(result))
    assert r["same_grads"] and r["n_grads"] == r["n_params"]


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def cutmix_dataset(nnunet_dirs, nnunet_env):
    """The CPS tests' synthetic 3D dataset (8 labelled, 2 test, 6 unlabelled cases), planned and preprocessed by
    nnU-Net for 3d_fullres and 2d, then preprocess-unlabeled for both."""
    from nnunet_ext.core.synthetic import generate_dataset_3d

    folder = Path(generate_dataset_3d(str(nnunet_dirs["raw"]), DS_CUTMIX, name="CPSCutMix", num_train=8, num_test=2,
                                      num_unlabeled=6, seed=3))
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS_CUTMIX, "-c", "3d_fullres", "2d", "-npfp", 1, "-np", 1],
            nnunet_env)
    for config in ("3d_fullres", "2d"):
        run_cli("nnunet-ext", ["preprocess-unlabeled", "-d", DS_CUTMIX, "-c", config, "-np", 1, "-q"], nnunet_env)
    return {"raw": folder, "name": folder.name}


def _cutmix_ddp_trainer(name: str):
    """nnUNetTrainerCPS_cutmix as tests/test_ddp_trainers.py runs its trainers (CPU, gloo, 2 short epochs)."""
    from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin
    from nnunet_ext.cps.trainer import nnUNetTrainerCPS_cutmix
    from test_ddp_trainers import SCHEDULE

    class CPUDDP(NoFinalValidationMixin, ScheduleMixin):
        schedule = SCHEDULE

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.device = torch.device("cpu")  # nnU-Net sets cuda:<rank> under DDP
            self.grad_scaler = None

    return type("nnUNetTrainerCPS_cutmix_ddp", (CPUDDP, nnUNetTrainerCPS_cutmix), {"unlabeled_batch_size": 1})


def _cutmix_trainer_ddp_worker(rank: int, world: int, init_file: str, job: dict, result_file: str):
    import test_ddp_trainers as ddp

    ddp._trainer_class = _cutmix_ddp_trainer  # the worker of test_ddp_trainers builds this trainer
    ddp._ddp_worker(rank, world, init_file, job, result_file)


def test_cps_cutmix_trainer_under_ddp(cutmix_dataset, nnunet_env, monkeypatch):
    """nnU-Net's own DDP path (tests/test_ddp_trainers.py's runner): the pseudo-label pass through the DDP-wrapped
    pair, both ranks' weights identical after 2 epochs, disjoint unlabelled shards, the CutMix curves logged."""
    import test_ddp_trainers as ddp

    monkeypatch.setattr(ddp, "_ddp_worker", _cutmix_trainer_ddp_worker)
    r = ddp.run_ddp({"trainer": "cps_cutmix", "dataset": cutmix_dataset["name"], "config": "3d_fullres"}, nnunet_env)
    ddp._common_checks(r)
    assert {"seg_b", "cps_a", "cps_b", "cutmix_share", "pseudo_dice_a"} <= set(r["curves"])
    a, b = (i["my_unlabeled"] for i in r["infos"])
    assert len(r["infos"][0]["all_unlabeled"]) == 6 and not set(a) & set(b) and len(a + b) == 6


def _train(trainer: str, config: str, dataset: dict, env: dict, results: Path) -> Path:
    run_cli("nnUNetv2_train", [DS_CUTMIX, config, 0, "-tr", trainer, "-device", "cpu"], env)
    return results / dataset["name"] / f"{trainer}__nnUNetPlans__{config}" / "fold_0"


def _check_curves(log: dict, epochs: int) -> None:
    for k in ("seg_b", "cps_a", "cps_b", "cutmix_share", "pseudo_dice_a", "pseudo_dice_b", "train_losses"):
        assert len(log[k]) == epochs and all(np.isfinite(log[k])), k
    # 3 boxes (default), each of volume fraction in [0.25, 0.5] / 3, exclusive-or'ed: at most ~0.5 per patch (sides
    # rounded to voxels); overlaps are rare enough that an epoch's mean stays well above 0.1
    assert all(0.1 < s < 0.56 for s in log["cutmix_share"]), log["cutmix_share"]


def _dice(pred, ref, label):
    p, r = pred == label, ref == label
    denom = p.sum() + r.sum()
    return 2.0 * np.logical_and(p, r).sum() / denom if denom else 1.0


def test_cps_cutmix_train_and_predict_3d(cutmix_dataset, nnunet_env, nnunet_dirs, tmp_path):
    trainer = "nnUNetTrainerCPS_cutmix_tiny"
    fold = _train(trainer, "3d_fullres", cutmix_dataset, nnunet_env, Path(nnunet_dirs["results"]))
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3
    _check_curves(final["logging"], 3)
    assert len(final["optimizer_state"]["param_groups"]) == 2
    log = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
    assert "2 unlabelled patch(es) per iteration" in log, "U0 and U1: twice the mixed batch"
    assert "CPS CutMix: U0 and U1 of 1 patch(es) each, 3 box(es) per mask, volume fraction from [0.25, 0.5]" in log
    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", cutmix_dataset["raw"] / "imagesTs", "-o", out, "-d", DS_CUTMIX, "-c",
                                 "3d_fullres", "-f", 0, "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", 1,
                                 "-nps", 1], nnunet_env)
    dice, chance = [], []
    for ref_path in sorted((cutmix_dataset["raw"] / "labelsTs").glob("*.nii.gz")):
        pred_img, ref_img = sitk.ReadImage(str(out / ref_path.name)), sitk.ReadImage(str(ref_path))
        assert pred_img.GetSize() == ref_img.GetSize() and np.allclose(pred_img.GetSpacing(), ref_img.GetSpacing())
        pred, ref = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(ref_img)
        assert set(np.unique(pred)) <= {0, 1, 2}
        dice.append(np.mean([_dice(pred, ref, c) for c in (1, 2)]))
        chance.append(np.mean([(ref == c).mean() for c in (1, 2)]))
    # 18 CPU iterations: far above chance (a random labelling with the class frequencies)
    assert np.mean(dice) > 5 * np.mean(chance), (dice, chance)


def test_cps_cutmix_uif_trains_in_2d(cutmix_dataset, nnunet_env, nnunet_dirs):
    """2d configuration, CutMix on the UIF selection: scored at epoch 1, half of the 6 unlabelled cases kept."""
    fold = _train("nnUNetTrainerCPS_cutmix_UIF_tiny", "2d", cutmix_dataset, nnunet_env, Path(nnunet_dirs["results"]))
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    _check_curves(final["logging"], 2)
    assert len(final["nnunet_ext"]["uif_selection"]) == 3 and final["nnunet_ext"]["uif_scored_epoch"] == 1
    log = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
    assert "UIF: scored 6 unlabelled case(s) at epoch 1; keeping 3" in log
    assert "CPS CutMix: U0 and U1 of 1 patch(es) each" in log
