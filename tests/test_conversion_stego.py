"""STEGO layout converter (imgs/{train,val}, optional labels/{train,val}), images-only datasets with
placeholder labels, and the helpers that keep a placeholder from being taken for a real label."""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.conversion import CONVERTERS, CaseDataError, ConversionArgumentError, SourceLayoutError, convert_stego
from nnunet_ext.conversion.stego import PlaceholderLabelsError, check_real_labels, n_clusters, placeholder_labels
from nnunet_ext.errors import UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conftest, conversion_fixtures, any import mode
from conversion_fixtures import natural_pair, tree_checksums  # noqa: E402


def make_stego(root, n_train=4, n_val=2, labels=True, rgb=True, size=(24, 32), values=None) -> Path:
    """ROOT/imgs/{train,val}/*.jpg|png and (``labels``) ROOT/labels/{train,val}/*.png with 0/255 masks
    (or with the stored values ``values``: one stripe per value)."""
    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val)):
        if not n:
            continue
        (root / "imgs" / split).mkdir(parents=True)
        if labels:
            (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            seed = i + (100 if split == "val" else 0)
            img, mask = natural_pair(seed, size=size, rgb=rgb)
            stem = f"{split}_{i:03d}"
            if rgb and i % 2 == 0:
                Image.fromarray(img).save(root / "imgs" / split / f"{stem}.jpg", quality=90)
            else:
                Image.fromarray(img).save(root / "imgs" / split / f"{stem}.png")
            if labels:
                if values is not None:
                    mask = np.zeros(size, np.uint8)
                    for j, v in enumerate(values):
                        mask[:, j * size[1] // len(values):] = v
                Image.fromarray(mask).save(root / "labels" / split / f"{stem}.png")
    return root


def _convert(argv):
    """``nnunet-ext convert stego ARGV`` through the converter's own parser (the options the CLI has)."""
    parser = argparse.ArgumentParser()
    CONVERTERS["stego"].add_arguments(parser)
    return CONVERTERS["stego"].run(parser.parse_args([str(a) for a in argv]))


def _dj(out):
    with open(os.path.join(out, "dataset.json")) as f:
        return json.load(f)


def _png(path):
    return np.asarray(Image.open(path))


def test_labelled_train_val(tmp_path):
    src = make_stego(tmp_path / "cocostuff")
    before = tree_checksums(src)
    out = convert_stego(str(src), 301, raw_root=str(tmp_path / "raw"), num_processes=1)  # verify=True
    assert os.path.basename(out) == "Dataset301_cocostuff"
    assert sorted(os.listdir(os.path.join(out, "imagesTr"))) == [f"train_{i:03d}_0000.png" for i in range(4)]
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == ["val_000_0000.png", "val_001_0000.png"]
    assert sorted(os.listdir(os.path.join(out, "labelsTs"))) == ["val_000.png", "val_001.png"]
    dj = _dj(out)
    assert dj["labels"] == {"background": 0, "class_1": 1} and dj["numTraining"] == 4 and dj["numTest"] == 2
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dj["nnunet_ext"]["placeholder_labels"] is False and dj["nnunet_ext"]["n_clusters"] == 2
    assert dj["nnunet_ext"]["label_values"] == {"0": 0, "255": 1}
    for split, sub in (("train", "labelsTr"), ("val", "labelsTs")):
        lab = _png(os.path.join(out, sub, f"{split}_001.png"))
        mask = _png(src / "labels" / split / f"{split}_001.png")
        assert lab.dtype == np.uint8 and np.array_equal(lab, (mask == 255).astype(np.uint8))
    assert _png(os.path.join(out, "imagesTr", "train_000_0000.png")).shape == (24, 32, 3)
    assert not placeholder_labels(dj) and n_clusters(dj) == 2
    check_real_labels(dj, "test")  # real labels: no error
    assert tree_checksums(src) == before


def test_multi_value_labels_class_names_and_clusters_options(tmp_path):
    src = make_stego(tmp_path / "potsdam", n_train=3, n_val=0, values=(0, 3, 7, 200))
    before = tree_checksums(src)
    common = ["--source", src, "--output", tmp_path / "raw", "--num-processes", "1"]
    with pytest.raises(ConversionArgumentError, match=r"--clusters 3 does not match the labels .* hold 4 values "
                       r"\[0, 3, 7, 200\]"):
        _convert(common + ["--id", "302", "--clusters", "3"])
    out = _convert(common + ["--id", "302", "--clusters", "4", "--class-names", "sky,tree,car", "--skip-verify"])
    assert out == str(tmp_path / "raw" / "Dataset302_potsdam")
    dj = _dj(out)
    assert dj["labels"] == {"background": 0, "sky": 1, "tree": 2, "car": 3}
    assert dj["nnunet_ext"]["label_values"] == {"0": 0, "3": 1, "7": 2, "200": 3}
    assert not os.path.exists(os.path.join(out, "imagesTs"))
    lab = _png(os.path.join(out, "labelsTr", "train_000.png"))
    assert set(np.unique(lab)) == {0, 1, 2, 3} and lab[0, 0] == 0 and lab[0, -1] == 3
    with pytest.raises(ConversionArgumentError, match="--class-names gives 2 names but the labels hold 4 values"):
        _convert(common + ["--id", "303", "--class-names", "a,b"])
    assert tree_checksums(src) == before


def test_images_only_placeholders(tmp_path):
    src = make_stego(tmp_path / "imgs_only", n_train=5, n_val=2, labels=False)
    before = tree_checksums(src)
    common = ["--source", src, "--output", tmp_path / "raw", "--num-processes", "1", "--id", "304"]
    with pytest.raises(ConversionArgumentError, match="images-only dataset pass --clusters K") as e:
        _convert(common)
    assert "\n" not in str(e.value) and isinstance(e.value, UserError)
    assert not (tmp_path / "raw").exists()
    with pytest.raises(ConversionArgumentError, match="--clusters must be at least 2"):
        _convert(common + ["--clusters", "1"])
    out = _convert(common + ["--clusters", "5"])
    assert out == str(tmp_path / "raw" / "Dataset304_imgs_only")
    dj = _dj(out)
    assert dj["labels"] == {"background": 0, "cluster_1": 1, "cluster_2": 2, "cluster_3": 3, "cluster_4": 4,
                            "ignore": 5}
    assert dj["nnunet_ext"]["placeholder_labels"] is True and dj["nnunet_ext"]["n_clusters"] == 5
    assert dj["nnunet_ext"]["placeholder_value"] == 5 and "placeholders" in dj["description"]
    assert dj["numTraining"] == 5 and dj["numTest"] == 2
    labs = sorted(os.listdir(os.path.join(out, "labelsTr")))
    assert labs == [f"train_{i:03d}.png" for i in range(5)]
    for f in labs:
        lab = _png(os.path.join(out, "labelsTr", f))
        assert lab.dtype == np.uint8 and lab.shape == (24, 32) and np.all(lab == 5)
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == ["val_000_0000.png", "val_001_0000.png"]
    assert not os.path.exists(os.path.join(out, "labelsTs"))
    assert placeholder_labels(dj) and n_clusters(dj) == 5
    with pytest.raises(PlaceholderLabelsError, match="^nnunet-ext evaluate: the labels of Dataset304_imgs_only are "
                       "placeholders .*nothing to evaluate against$") as e:
        check_real_labels(dj, "nnunet-ext evaluate")
    assert isinstance(e.value, UserError)
    assert tree_checksums(src) == before


def test_greyscale(tmp_path):
    src = make_stego(tmp_path / "grey", n_train=3, n_val=1, rgb=False)
    out = convert_stego(str(src), 305, "Grey", raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    out = Path(out)
    assert _dj(out)["channel_names"] == {"0": "grey"}
    img = _png(out / "imagesTr" / "train_000_0000.png")
    assert img.ndim == 2 and np.array_equal(img, _png(src / "imgs" / "train" / "train_000.png"))


def test_bad_sources(tmp_path):
    raw = str(tmp_path / "raw")
    src = make_stego(tmp_path / "size", n_train=3, n_val=0)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(src / "labels" / "train" / "train_001.png")
    lab, img = src / "labels" / "train" / "train_001.png", src / "imgs" / "train" / "train_001.png"
    with pytest.raises(CaseDataError, match=f"{lab}.*10x10 pixels but its image {img} is 32x24"):
        convert_stego(str(src), 306, raw_root=raw, num_processes=1)
    assert not os.path.exists(raw) or os.listdir(raw) == []

    src = make_stego(tmp_path / "mixed", n_train=3, n_val=0)
    os.remove(src / "labels" / "train" / "train_002.png")
    with pytest.raises(SourceLayoutError, match=r"1 of 3 images without label: \['train_002.jpg'\]"):
        convert_stego(str(src), 307, raw_root=raw)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(src / "labels" / "train" / "extra.png")
    with pytest.raises(SourceLayoutError, match=r"labels without image: \['extra.png'\]"):
        convert_stego(str(src), 307, raw_root=raw)

    src = make_stego(tmp_path / "onevalue", n_train=2, n_val=0, values=(0,))
    with pytest.raises(SourceLayoutError, match="at least two different values"):
        convert_stego(str(src), 308, raw_root=raw)
    src = make_stego(tmp_path / "noimgs", n_train=2, n_val=0, labels=False)
    with pytest.raises(ConversionArgumentError, match="--class-names needs labels"):
        convert_stego(str(src), 309, raw_root=raw, clusters=3, class_names="a,b,c")
    with pytest.raises(SourceLayoutError, match="expected a STEGO dataset folder.*no imgs/ folder"):
        convert_stego(str(src / "imgs"), 309, raw_root=raw, clusters=3)
    assert not os.path.exists(raw) or os.listdir(raw) == []


def test_helpers_on_plain_dicts():
    assert "stego" in CONVERTERS
    plain = {"labels": {"background": 0, "a": 1, "b": 2, "ignore": 3}}
    assert not placeholder_labels(plain) and n_clusters(plain) == 3
    assert not placeholder_labels({"nnunet_ext": {"placeholder_labels": "yes"}})  # only a true boolean counts
    assert not placeholder_labels({"nnunet_ext": None}) and not placeholder_labels({})
    ph = {"name": "X", "labels": {"background": 0, "cluster_1": 1, "ignore": 2},
          "nnunet_ext": {"placeholder_labels": True, "n_clusters": 2}}
    assert placeholder_labels(ph) and n_clusters(ph) == 2
    assert n_clusters({"labels": {"background": 0}, "nnunet_ext": {"n_clusters": 7}}) == 7
    check_real_labels(plain, "x")
    with pytest.raises(UserError, match="^train: the labels of X are placeholders"):
        check_real_labels(ph, "train")
