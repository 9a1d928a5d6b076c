"""The two-network and extra-loader trainers under DDP: nnU-Net's own DDP path on CPU, gloo, 2 processes.

``nnUNetv2_train ... -num_gpus 2`` starts one process per GPU, each of which initialises a process group (NCCL),
builds the trainer (nnU-Net sees the group: ``is_ddp``, its share of the batch, ``cuda:<rank>``) and calls
``run_training``; ``initialize`` wraps the network in ``DistributedDataParallel``. Here each process does the same
with gloo on the CPU. Two things of nnU-Net's path need CUDA and are replaced, nothing else: the device nnU-Net
forces to ``cuda:<rank>`` under DDP is set back to the CPU (no grad scaler), and ``DDP(network, device_ids=[rank])``
is called without ``device_ids`` (a CPU module takes none). CPS's pair under DDP is tested in tests/test_cps.py.

What differs per trainer, and is checked after two short epochs (both ranks' weights and buffers identical, the
batch split by nnU-Net, rank 0's checkpoint with finite curves):

* S2S2: every rank loads its cases' semantic-stack copies (extra channels through nnU-Net's loader) and its taps;
* GMS: the frozen VAE is outside DDP's parameters (no gradient, never all-reduced) and every rank loads it
  (expected to fail until the mapping model's unused head is frozen: see the test's mark);
* STEGO: kNN partners as extra channels, the cluster mapping set from the all-reduced confusion (a buffer);
* FLARE22: CPS's pair + UIF (scores gathered from both ranks, the same selection everywhere) + FD on each network
  + S2S2 on the labelled part, each rank with its own disjoint shard of the unlabelled cases.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from conftest import TEST_TRAINERS, run_cli

DS_FLARE_DDP = 533
SCHEDULE = {"num_epochs": 2, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1, "save_every": 1}
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}  # tests/ext_trainers/stego_trainers.py's
WORLD = 2


def _trainer_class(name: str):
    """The DDP test variant ``name`` (built in the worker, after nnU-Net's folders are in the environment)."""
    import torch

    from nnunet_ext.core.schedule import NoFinalValidationMixin, ScheduleMixin

    class CPUDDP(NoFinalValidationMixin, ScheduleMixin):
        schedule = SCHEDULE

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.device = torch.device("cpu")  # nnU-Net sets cuda:<rank> under DDP
            self.grad_scaler = None

    if name == "s2s2":
        from nnunet_ext.s2s2.trainer import nnUNetTrainerS2S2
        return type("nnUNetTrainerS2S2_ddp", (CPUDDP, nnUNetTrainerS2S2), {"s2s2_generator": "gin"})
    if name == "gms":
        from nnunet_ext.gms.trainer import nnUNetTrainerGMS
        return type("nnUNetTrainerGMS_ddp", (CPUDDP, nnUNetTrainerGMS), {"gms_warmup_epochs": 0})
    if name == "stego":
        from nnunet_ext.stego.trainer import nnUNetTrainerSTEGO
        return type("nnUNetTrainerSTEGO_ddp", (CPUDDP, nnUNetTrainerSTEGO), {"stego_backbone_kwargs": TINY_VIT})
    if name == "flare22":
        from nnunet_ext.flare22.trainer import nnUNetTrainerFLARE22
        return type("nnUNetTrainerFLARE22_ddp", (CPUDDP, nnUNetTrainerFLARE22),
                    {"unlabeled_batch_size": 1, "uif_warmup": 0.5, "uif_keep": 0.5, "uif_patches_per_case": 1,
                     "s2s2_generator": "gin"})
    raise ValueError(name)


def _ddp_worker(rank: int, world: int, init_file: str, job: dict, result_file: str):
    import numpy as np
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        import nnunetv2.run.run_training as run_training
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
        from torch.nn.parallel import DistributedDataParallel

        from nnunet_ext.core.network import unwrap_network

        def cpu_ddp(module, device_ids=None, **kwargs):
            return DistributedDataParallel(module, **kwargs)

        nnunet_trainer_module.DDP = cpu_ddp  # nnU-Net's initialize: DDP(network, device_ids=[rank])
        cls = _trainer_class(job["trainer"])
        run_training.recursive_find_trainer_class_by_name = lambda name: cls  # the variant is not in a folder
        trainer = run_training.get_trainer_from_args(job["dataset"], job["config"], 0, cls.__name__,
                                                     job.get("plans", "nnUNetPlans"), device=torch.device("cpu"))
        trainer.run_training()  # what nnU-Net's run_ddp does in each process (no --c, no pretrained weights)

        net = unwrap_network(trainer.network)
        state = {k: v for k, v in net.state_dict().items() if torch.is_tensor(v)}
        flat = torch.cat([v.detach().float().flatten() for v in state.values()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        info = {"rank": rank, "batch_size": trainer.batch_size,
                "global_batch": trainer.configuration_manager.batch_size, "ddp": type(trainer.network).__name__,
                "n_ddp_params": sum(p.numel() for p in trainer.network.parameters())}
        if hasattr(net, "mapping"):
            info["n_mapping"] = sum(p.numel() for p in net.mapping.parameters())
        if hasattr(trainer, "unlabeled_identifiers"):
            everything = trainer.all_unlabeled_identifiers()
            info["all_unlabeled"] = sorted(everything)
            info["my_unlabeled"] = sorted(trainer._shard(everything))
            info["uif_selection"] = getattr(trainer, "uif_selection", None)
        infos = [None] * world
        dist.all_gather_object(infos, info)
        if rank == 0:
            fold = Path(trainer.output_folder)
            ck = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
            curves = {k: [float(x) for x in v] for k, v in ck["logging"].items()
                      if k not in ("epoch_start_timestamps", "epoch_end_timestamps", "lrs", "dice_per_class_or_region")
                      and len(v) and np.isscalar(v[0])}
            Path(result_file).write_text(json.dumps({
                "same_state": all(torch.allclose(gathered[0], g) for g in gathered[1:]), "infos": infos,
                "epoch": ck["current_epoch"], "curves": curves,
                "network_weights": sorted(ck["network_weights"])}))
    finally:
        dist.destroy_process_group()


def run_ddp(job: dict, env: dict, timeout: float = 300) -> dict:
    """``_ddp_worker`` in 2 spawned processes with ``env`` as their environment; its rank-0 result."""
    import torch.multiprocessing as mp

    saved = dict(os.environ)
    os.environ.update({k: str(v) for k, v in env.items()}, nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1",
                      PYTHONWARNINGS="ignore")
    try:
        with tempfile.TemporaryDirectory() as d:
            result = os.path.join(d, "result.json")
            ctx = mp.spawn(_ddp_worker, args=(WORLD, os.path.join(d, "pg"), job, result), nprocs=WORLD, join=False)
            end = time.monotonic() + timeout
            while not ctx.join(timeout=5):
                if time.monotonic() > end:
                    for p in ctx.processes:
                        p.kill()
                    raise AssertionError(f"DDP run of {job} still running after {timeout} s")
            return json.loads(Path(result).read_text())
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _common_checks(r: dict) -> None:
    assert r["same_state"], "DDP left the ranks with different weights or buffers"
    infos = r["infos"]
    assert [i["rank"] for i in infos] == [0, 1] and all(i["ddp"] == "DistributedDataParallel" for i in infos)
    assert sum(i["batch_size"] for i in infos) == infos[0]["global_batch"], "nnU-Net splits the batch over ranks"
    assert r["epoch"] == SCHEDULE["num_epochs"]
    for k, v in r["curves"].items():
        assert len(v) == SCHEDULE["num_epochs"] and all(abs(x) < float("inf") for x in v), (k, v)


# --------------------------------------------------------------------------------------------- the 2D trainers
@pytest.fixture(scope="module")
def d2(dataset2d, nnunet_env, tmp_path_factory):
    """The conftest 2D dataset with a GIN stack (-k 2, as test_s2s2.py), gms_2d, a tiny VAE and a tiny ViT."""
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    run_cli("nnunet-ext", ["s2s2-generate", "-d", dataset2d["id"], "-c", "2d", "-k", 2, "--generator", "gin", "-q"],
            nnunet_env)
    run_cli("nnunet-ext", ["plan-gms", "-d", dataset2d["id"], "-np", 1], nnunet_env)
    tmp = tmp_path_factory.mktemp("ddp_models")
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=4).save_pretrained(str(tmp / "vae"))
    import timm
    vit = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, dynamic_img_size=True, **TINY_VIT)
    save_file(vit.state_dict(), str(tmp / "vit.safetensors"))
    env = dict(nnunet_env, nnUNet_ext_vae=str(tmp / "vae"), nnUNet_ext_backbone=str(tmp / "vit.safetensors"))
    run_cli("nnunet-ext", ["stego-knn", "-d", dataset2d["id"], "-c", "2d", "-tr", "nnUNetTrainerSTEGO_tiny",
                           "--no-progress"], env)
    return dict(dataset2d, env=env)


def test_s2s2_under_ddp(d2):
    r = run_ddp({"trainer": "s2s2", "dataset": d2["name"], "config": "2d"}, d2["env"])
    _common_checks(r)
    assert {"seg_copy", "consist_enc", "consist_dec"} <= set(r["curves"])


def test_gms_under_ddp(d2):
    r = run_ddp({"trainer": "gms", "dataset": d2["name"], "config": "gms_2d"}, d2["env"])
    _common_checks(r)
    assert "latent_mse" in r["curves"]
    assert all(k.startswith("mapping.") or k == "_extra_state" for k in r["network_weights"]), \
        "the frozen VAE is neither trained nor saved"
    assert r["infos"][0]["n_ddp_params"] == r["infos"][0]["n_mapping"] > 0, "DDP sees only the mapping model"


def test_stego_under_ddp(d2, nnunet_dirs):
    """STEGO pairs every image with another image of its rank's batch: 2 per rank (plans with a batch of 4; the
    conftest dataset's 2 would leave 1 per rank, which STEGO refuses with a clear error)."""
    assert (TEST_TRAINERS / "stego_trainers.py").is_file()  # nnUNetTrainerSTEGO_tiny made the kNN table
    pre = Path(nnunet_dirs["preprocessed"]) / d2["name"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["configurations"]["2d"]["batch_size"] = 4
    plans["plans_name"] = "nnUNetPlans_ddpBatch4"
    (pre / "nnUNetPlans_ddpBatch4.json").write_text(json.dumps(plans, indent=1))
    r = run_ddp({"trainer": "stego", "dataset": d2["name"], "config": "2d", "plans": "nnUNetPlans_ddpBatch4"},
                d2["env"])
    _common_checks(r)
    assert {"stego_self", "stego_knn", "stego_rand", "stego_cluster", "stego_accuracy"} <= set(r["curves"])
    assert [i["batch_size"] for i in r["infos"]] == [2, 2]
    assert "cluster_of_label" in r["network_weights"]


# ---------------------------------------------------------------------------------------------------- FLARE22
@pytest.fixture(scope="module")
def flare_ddp_dataset(nnunet_dirs, nnunet_env):
    """6 labelled and 4 unlabelled synthetic 3D cases, planned, preprocessed (unlabelled too), a GIN stack."""
    from nnunet_ext.core.synthetic import generate_dataset_3d

    folder = Path(generate_dataset_3d(str(nnunet_dirs["raw"]), DS_FLARE_DDP, name="FlareDDP", num_train=6,
                                      num_unlabeled=4, seed=5))
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS_FLARE_DDP, "-c", "3d_fullres", "-npfp", 1, "-np", 1], nnunet_env)
    run_cli("nnunet-ext", ["preprocess-unlabeled", "-d", DS_FLARE_DDP, "-c", "3d_fullres", "-np", 1, "-q"],
            nnunet_env)
    run_cli("nnunet-ext", ["s2s2-generate", "-d", DS_FLARE_DDP, "-c", "3d_fullres", "-k", 1, "--generator", "gin",
                           "-q"], nnunet_env)
    return {"name": folder.name, "env": nnunet_env}


def test_flare22_under_ddp(flare_ddp_dataset):
    r = run_ddp({"trainer": "flare22", "dataset": flare_ddp_dataset["name"], "config": "3d_fullres"},
                flare_ddp_dataset["env"])
    _common_checks(r)
    assert {"seg_b", "cps_a", "cps_b", "intra_fd", "inter_fd", "seg_copy", "pseudo_dice_a"} <= set(r["curves"])
    a, b = (i["my_unlabeled"] for i in r["infos"])
    everything = r["infos"][0]["all_unlabeled"]
    assert len(everything) == 4 and not set(a) & set(b) and sorted(a + b) == everything, "disjoint unlabelled shards"
    sel = [i["uif_selection"] for i in r["infos"]]
    assert sel[0] is not None and sel[0] == sel[1] and len(sel[0]) == 2, "UIF: scores of both ranks, one selection"
    assert any(k.startswith("net_a.") for k in r["network_weights"]) and \
        any(k.startswith("net_b.") for k in r["network_weights"])
