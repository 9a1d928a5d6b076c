"""GMS layout converter (BUS, BUSI, GlaS, HAM10000, Kvasir-Instrument)."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.conversion import CONVERTERS, SourceLayoutError, TargetExistsError, convert_gms, install_split
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import make_gms, tree_checksums  # noqa: E402


@pytest.fixture(scope="module")
def busi(tmp_path_factory):
    src = make_gms(tmp_path_factory.mktemp("src"), "busi")
    before = tree_checksums(src)
    raw = tmp_path_factory.mktemp("raw")
    return src, before, raw, convert_gms(str(src), 101, raw_root=str(raw), num_processes=1)


def _ids(folder, suffix):
    return sorted(f[: -len(suffix)] for f in os.listdir(folder))


def test_busi_split_and_counts(busi):
    src, _, raw, out = busi
    assert os.path.basename(out) == "Dataset101_BUSI"
    # normal_* excluded (as in GMS); test cases are fold-0 validation cases and are also in imagesTs
    assert _ids(os.path.join(out, "labelsTr"), ".png") == ["benign_1", "benign_2", "benign_3", "malignant_1"]
    assert _ids(os.path.join(out, "imagesTs"), "_0000.png") == ["benign_3"]
    assert _ids(os.path.join(out, "labelsTs"), ".png") == ["benign_3"]
    split = json.load(open(os.path.join(out, "splits_final.json")))
    assert split == [{"train": ["benign_1", "benign_2", "malignant_1"], "val": ["benign_3"]}]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["numTraining"] == 4 and dj["numTest"] == 1 and dj["file_ending"] == ".png"
    assert dj["channel_names"] == {"0": "grey"} and dj["labels"] == {"background": 0, "lesion": 1}


def test_busi_images_and_masks(busi):
    src, _, _, out = busi
    img = np.asarray(Image.open(os.path.join(out, "imagesTr", "benign_1_0000.png")))
    assert img.ndim == 2 and np.array_equal(img, np.asarray(Image.open(src / "images" / "benign_1.png")))
    lab = np.asarray(Image.open(os.path.join(out, "labelsTr", "benign_1.png")))
    src_mask = np.asarray(Image.open(src / "masks" / "benign_1.png"))
    assert set(np.unique(lab)) == {0, 1} and np.array_equal(lab, (src_mask > 127).astype(np.uint8))


def test_busi_source_untouched_overwrite_and_install(busi, tmp_path):
    src, before, raw, out = busi
    assert tree_checksums(src) == before
    with pytest.raises(TargetExistsError, match="--overwrite"):
        convert_gms(str(src), 101, raw_root=str(raw))
    out2 = convert_gms(str(src), 101, raw_root=str(raw), overwrite=True, include_normal=True, holdout_test=True,
                       num_processes=1, verify=False)
    assert out2 == out
    assert _ids(os.path.join(out, "labelsTr"), ".png") == ["benign_1", "benign_2", "malignant_1", "normal_1"]
    assert _ids(os.path.join(out, "imagesTs"), "_0000.png") == ["benign_3", "normal_2"]
    assert not os.path.exists(os.path.join(out, "splits_final.json"))
    assert tree_checksums(src) == before
    with pytest.raises(FileNotFoundError, match="no splits_final.json"):
        install_split(out, str(tmp_path / "pre"))


def test_install_split_via_cli(tmp_path):
    import argparse
    src = make_gms(tmp_path / "src", "glas", names=["train_1", "train_2", "testA_1"],
                   split={"train": ["train_1", "train_2"], "test": ["testA_1"]}, pkl_style="list", with_ext=True,
                   rgb=True)
    parser = argparse.ArgumentParser()
    CONVERTERS["gms"].add_arguments(parser)
    args = parser.parse_args(["--source", str(src), "--id", "102", "--output", str(tmp_path / "raw"), "--skip-verify",
                              "--num-processes", "1", "--install-split", "--preprocessed", str(tmp_path / "pre")])
    out = CONVERTERS["gms"].run(args)
    assert os.path.basename(out) == "Dataset102_GlaS"
    installed = tmp_path / "pre" / "Dataset102_GlaS" / "splits_final.json"
    assert json.load(open(installed)) == [{"train": ["train_1", "train_2"], "val": ["testA_1"]}]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["labels"]["gland"] == 1
    assert np.asarray(Image.open(os.path.join(out, "imagesTr", "train_1_0000.png"))).shape[-1] == 3


def test_gms_malformed(tmp_path):
    src = make_gms(tmp_path / "a", "bus", names=["000001", "000002"], split={"train": ["000001"], "test": ["000009"]})
    with pytest.raises(SourceLayoutError, match=r"names without image, e\.g\. \['000009'\].*bus_train_test_names\.pkl"):
        convert_gms(str(src), 103, raw_root=str(tmp_path / "raw"))
    with open(src / "bus_train_test_names.pkl", "wb") as f:
        pickle.dump({"training": []}, f)
    with pytest.raises(SourceLayoutError, match="keys 'train' and 'test'.*found keys \\['training'\\]"):
        convert_gms(str(src), 103, raw_root=str(tmp_path / "raw"))
    os.remove(src / "bus_train_test_names.pkl")
    with pytest.raises(SourceLayoutError, match="0 \\*_train_test_names.pkl files"):
        convert_gms(str(src), 103, raw_root=str(tmp_path / "raw"))
    src2 = make_gms(tmp_path / "b", "bus", names=["000001", "000002"], split={"train": ["000001"], "test": ["000002"]})
    os.remove(src2 / "masks" / "000002.png")
    with pytest.raises(SourceLayoutError, match="no mask for '000002.png'"):
        convert_gms(str(src2), 103, raw_root=str(tmp_path / "raw"))
    assert not (tmp_path / "raw").exists() or os.listdir(tmp_path / "raw") == []
