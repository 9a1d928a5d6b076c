"""STEGO in nnU-Net: the network (backbone out of the state dict, label mapping, any stride), kNN table and pair
loading, and end to end with a tiny saved ViT on a synthetic texture dataset (plan, stego-knn, nnUNetv2_train
-tr nnUNetTrainerSTEGO_tiny, nnUNetv2_predict, stego-evaluate: accuracy after matching above chance) and on an
images-only dataset converted from STEGO's layout (placeholder labels never used: no evaluation against them)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TEST_TRAINERS, run_cli

from nnunet_ext.stego.backbone import BACKBONE_ENV, build_backbone
from nnunet_ext.stego.data import KNNPairDataset, image_id, partner_lists
from nnunet_ext.stego.knn import top_neighbours
from nnunet_ext.stego.network import BackboneChangedError, STEGONetwork

import sys
sys.path.insert(0, str(TEST_TRAINERS))
from stego_trainers import TINY_VIT  # noqa: E402

DS_TEX, DS_IMG = 511, 512


def _save_vit(path: Path, seed: int = 0) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    m = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, dynamic_img_size=True, **TINY_VIT)
    save_file(m.state_dict(), str(path))
    return path


def _network(weights: Path, n_clusters=3, checksum="a"):
    bb = build_backbone("dino_vits8", str(weights), **TINY_VIT)
    return STEGONetwork(bb, n_clusters, 1, dim=8, backbone_name="dino_vits8", backbone_checksum=checksum)


def test_network_outputs_state_dict_mapping_and_changed_backbone(tmp_path):
    net = _network(_save_vit(tmp_path / "vit.safetensors"))
    keys = set(net.state_dict())
    assert keys and all(k.split(".")[0] in ("head", "probe", "cluster_of_label", "_extra_state") for k in keys), keys
    net.train()
    out = net(torch.randn(2, 1, 40, 24))
    assert out["feats"].shape == (2, 32, 5, 3) and out["codes"].shape == (2, 8, 5, 3)
    out["cluster_loss"].backward()
    assert net.probe.centroids.grad is not None and net.head.linear.weight.grad is None, "probe loss: detached codes"
    net.eval()
    x = torch.randn(2, 1, 30, 21)  # not a multiple of the stride: resized inside, logits at the input size
    with torch.no_grad():
        cl = net.cluster_scores(net.codes(x), x.shape[-2:])
        net.set_mapping({0: 2, 1: 0, 2: 1})  # cluster -> label
        mapped = net(x)
    assert mapped.shape == (2, 3, 30, 21)
    assert torch.equal(mapped[:, 2], cl[:, 0]) and torch.equal(mapped[:, 0], cl[:, 1])
    other = _network(tmp_path / "vit.safetensors", checksum="b")
    with pytest.raises(BackboneChangedError, match=BACKBONE_ENV):
        other.load_state_dict(net.state_dict())
    same = _network(tmp_path / "vit.safetensors")
    same.load_state_dict(net.state_dict())
    assert same.cluster_of_label.tolist() == [1, 2, 0], "the mapping is saved with the model"


def test_neighbours_skip_slices_of_the_same_volume_and_partners_stay_in_training():
    d = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.9, 0.3], [0.0, 1.0]])
    groups = torch.tensor([0, 0, 1, 2])
    assert top_neighbours(d, 4, groups=groups)[0].tolist()[:2] == [0, 2], "slice 1 of the same volume is ranked last"
    table = {"cases": np.array(["a", "b", "c"]), "case_index": np.array([0, 0, 1, 2]),
             "slice": np.array([0, 1, 0, 0]), "neighbours": top_neighbours(d, 4, groups=groups).numpy()}
    partners = partner_lists(table, ["a", "b"], ranks=7)
    assert set(partners) == {image_id("a", 0), image_id("a", 1), image_id("b", 0)}
    assert all(image_id("c", 0) not in v for v in partners.values()), "no validation image as a partner"


@pytest.fixture(scope="module")
def stego_env(nnunet_dirs, nnunet_env, tmp_path_factory):
    from nnunet_ext.core.synthetic import generate_texture_dataset_2d

    weights = _save_vit(tmp_path_factory.mktemp("vit") / "tiny_vit.safetensors")
    env = dict(nnunet_env, **{BACKBONE_ENV: str(weights)})
    folder = generate_texture_dataset_2d(str(nnunet_dirs["raw"]), DS_TEX, num_train=12, num_test=4, seed=3)
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS_TEX, "-c", "2d", "-npfp", 1, "-np", 1], env)
    run_cli("nnunet-ext", ["stego-knn", "-d", DS_TEX, "-c", "2d", "-tr", "nnUNetTrainerSTEGO_tiny", "--no-progress"],
            env)
    return env, Path(folder)


def test_knn_table_and_pair_dataset(stego_env, nnunet_dirs):
    from nnunet_ext.stego.knn_table import load_knn_table

    env, raw = stego_env
    base = Path(nnunet_dirs["preprocessed"]) / raw.name
    folder = base / "nnUNetPlans_2d_stego_knn" / "dino_vits8"
    meta = json.loads((folder / "knn.json").read_text())
    assert meta["images"] == 12 and meta["k"] == 11 and meta["backbone"] == "dino_vits8"
    table = load_knn_table(folder, "fix")
    assert (table["neighbours"][:, 0] == np.arange(12)).all(), "rank 0 is the image itself"
    cases = [str(c) for c in table["cases"]]
    ds = KNNPairDataset(str(base / "nnUNetPlans_2d"), cases[:8], table=table)
    data, seg, _, _ = ds.load_case(ds.identifiers[0])
    assert data.shape[0] == 2 and data.shape[1] == 1 and seg.shape[1:] == data.shape[1:], "image + partner channels"
    # the second run resumes: every case is described already, the table is rewritten identically
    proc = run_cli("nnunet-ext", ["stego-knn", "-d", DS_TEX, "-c", "2d", "-tr", "nnUNetTrainerSTEGO_tiny",
                                  "--no-progress"], env)
    assert "12 of 12 cases already described" in proc.stdout


def test_stego_trains_predicts_and_clusters_above_chance(stego_env, nnunet_dirs, tmp_path):
    env, raw = stego_env
    run_cli("nnUNetv2_train", [DS_TEX, "2d", 0, "-tr", "nnUNetTrainerSTEGO_tiny", "-device", "cpu"], env)
    fold = Path(nnunet_dirs["results"]) / raw.name / "nnUNetTrainerSTEGO_tiny__nnUNetPlans__2d" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    w = ckpt["network_weights"]
    assert "cluster_of_label" in w and not any(k.startswith("_backbone") or "blocks" in k for k in w)
    log = ckpt["logging"]
    for name in ("stego_self", "stego_knn", "stego_rand", "stego_cluster", "stego_accuracy", "stego_miou"):
        assert len(log[name]) == 3 and np.all(np.isfinite(log[name])), name
    assert (fold / "stego_examples.png").is_file() and (fold / "validation" / "stego_metrics.json").is_file()

    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", raw / "imagesTs", "-o", out, "-d", DS_TEX, "-c", "2d", "-f", 0,
                                 "-tr", "nnUNetTrainerSTEGO_tiny", "-device", "cpu", "-npp", 1, "-nps", 1], env)
    res_file = tmp_path / "stego.json"
    run_cli("nnunet-ext", ["stego-evaluate", "-gt", raw / "labelsTs", "-pred", out, "-o", res_file], env)
    res = json.loads(res_file.read_text())
    fg = np.mean([np.asarray(__import__("PIL.Image").Image.open(p)).mean() for p in (raw / "labelsTs").glob("*.png")])
    chance = max(fg, 1 - fg)  # accuracy of the best constant labelling
    assert res["cases"] == 4 and res["accuracy"] > chance + 0.05, (res["accuracy"], chance)


def test_missing_knn_table_and_backbone_give_clear_errors(stego_env, nnunet_dirs):
    env, raw = stego_env
    proc = run_cli("nnUNetv2_train", [DS_TEX, "2d", 1, "-tr", "nnUNetTrainerSTEGO_tinyTimm", "-device", "cpu"], env,
                   check=False)
    assert proc.returncode != 0 and "nnunet-ext stego-knn" in proc.stdout + proc.stderr
    no_bb = {k: v for k, v in env.items() if k != BACKBONE_ENV}
    proc = run_cli("nnunet-ext", ["stego-knn", "-d", DS_TEX, "-c", "2d", "-tr", "nnUNetTrainerSTEGO_tiny"], no_bb,
                   check=False)
    assert proc.returncode == 2 and BACKBONE_ENV in proc.stderr


def test_images_only_dataset_end_to_end(stego_env, nnunet_dirs, tmp_path):
    from PIL import Image

    from nnunet_ext.core.synthetic import make_texture_2d

    env, _ = stego_env
    src = tmp_path / "stego_layout"
    rng = np.random.default_rng(5)
    for split, n in (("train", 10), ("val", 2)):
        (src / "imgs" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(make_texture_2d(rng)[0]).save(src / "imgs" / split / f"{split}{i:02d}.png")
    run_cli("nnunet-ext", ["convert", "stego", "--source", src, "--id", DS_IMG, "--clusters", 2], env)
    raw = next(Path(nnunet_dirs["raw"]).glob(f"Dataset{DS_IMG}_*"))
    run_cli("nnUNetv2_plan_and_preprocess", ["-d", DS_IMG, "-c", "2d", "-npfp", 1, "-np", 1], env)
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    dj = json.loads((Path(nnunet_dirs["preprocessed"]) / raw.name / "dataset.json").read_text())
    lm = LabelManager(dj["labels"], None)
    assert lm.num_segmentation_heads == 2 and lm.has_ignore_label, "placeholders = nnU-Net's ignore label, 2 clusters"
    run_cli("nnunet-ext", ["stego-knn", "-d", DS_IMG, "-c", "2d", "-tr", "nnUNetTrainerSTEGO_tinyShort",
                           "--no-progress"], env)
    run_cli("nnUNetv2_train", [DS_IMG, "2d", 0, "-tr", "nnUNetTrainerSTEGO_tinyShort", "-device", "cpu"], env)
    fold = Path(nnunet_dirs["results"]) / raw.name / "nnUNetTrainerSTEGO_tinyShort__nnUNetPlans__2d" / "fold_0"
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["network_weights"]["cluster_of_label"].tolist() == [0, 1], "no mapping from placeholder labels"
    assert "stego_accuracy" not in ckpt["logging"] and not (fold / "validation" / "summary.json").exists()
    out = tmp_path / "pred"
    run_cli("nnUNetv2_predict", ["-i", raw / "imagesTs", "-o", out, "-d", DS_IMG, "-c", "2d", "-f", 0,
                                 "-tr", "nnUNetTrainerSTEGO_tinyShort", "-device", "cpu", "--disable_tta",
                                 "-npp", 1, "-nps", 1], env)
    for img in sorted((raw / "imagesTs").glob("*.png")):
        pred = np.asarray(Image.open(out / img.name.replace("_0000", "")))
        assert pred.shape == np.asarray(Image.open(img)).shape[:2] and set(np.unique(pred)) <= {0, 1}
    for verb in (["stego-evaluate", "-gt", raw / "labelsTr", "-pred", out],
                 ["evaluate", "-gt", raw / "labelsTr", "-pred", out, "-d", DS_IMG]):
        proc = run_cli("nnunet-ext", verb, env, check=False)
        assert proc.returncode == 2 and "placeholder" in proc.stderr, proc.stderr
