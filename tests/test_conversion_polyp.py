"""Kvasir-SEG and CVC-ClinicDB converters (polyp domain-generalisation protocol)."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.conversion import SourceLayoutError, TargetExistsError, convert_cvc_clinicdb, convert_kvasir_seg
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import NO_SHARED, SHARED, make_cvc, make_kvasir, tree_checksums  # noqa: E402


def test_kvasir_train_role(tmp_path):
    src = make_kvasir(tmp_path / "src", n=4)
    before = tree_checksums(src)
    out = convert_kvasir_seg(str(src), 201, raw_root=str(tmp_path / "raw"), num_processes=1)
    assert os.path.basename(out) == "Dataset201_KvasirSEG"
    assert sorted(os.listdir(os.path.join(out, "imagesTr"))) == [f"cju{i:04d}_0000.png" for i in range(4)]
    assert not os.path.exists(os.path.join(out, "imagesTs"))
    assert not os.path.exists(os.path.join(out, "splits_final.json"))
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"} and dj["labels"] == {"background": 0, "polyp": 1}
    img = np.asarray(Image.open(os.path.join(out, "imagesTr", "cju0000_0000.png")))
    assert img.shape == (24, 32, 3)
    lab = np.asarray(Image.open(os.path.join(out, "labelsTr", "cju0000.png")))
    jpeg = np.asarray(Image.open(src / "masks" / "cju0000.jpg").convert("L"))
    assert set(np.unique(lab)) == {0, 1} and np.array_equal(lab, (jpeg > 127).astype(np.uint8))
    assert tree_checksums(src) == before
    with pytest.raises(TargetExistsError):
        convert_kvasir_seg(str(src), 201, raw_root=str(tmp_path / "raw"))


def test_cvc_test_role_tif(tmp_path):
    src = make_cvc(tmp_path / "src", n=3, ext=".tif")
    before = tree_checksums(src)
    out = convert_cvc_clinicdb(str(src), 202, raw_root=str(tmp_path / "raw"), num_processes=1)
    assert os.path.basename(out) == "Dataset202_CVCClinicDB"
    assert os.listdir(os.path.join(out, "imagesTr")) == []
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == ["1_0000.png", "2_0000.png", "3_0000.png"]
    assert sorted(os.listdir(os.path.join(out, "labelsTs"))) == ["1.png", "2.png", "3.png"]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["numTraining"] == 0 and dj["numTest"] == 3
    assert tree_checksums(src) == before


def test_cvc_png_subfolder_train_role(tmp_path):
    src = make_cvc(tmp_path / "release", n=2, ext=".png", sub="PNG")
    out = convert_cvc_clinicdb(str(src.parent), 203, raw_root=str(tmp_path / "raw"), role="train",
                               num_processes=1, verify=False)
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == ["1.png", "2.png"]


def test_polyp_malformed(tmp_path):
    src = make_kvasir(tmp_path / "src", n=2)
    os.remove(src / "masks" / "cju0001.jpg")
    with pytest.raises(SourceLayoutError, match="no mask for 'cju0001.jpg'"):
        convert_kvasir_seg(str(src), 204, raw_root=str(tmp_path / "raw"))
    with pytest.raises(SourceLayoutError, match="images/ \\+ masks/.*Original/ \\+ Ground Truth/"):
        convert_cvc_clinicdb(str(tmp_path), 204, raw_root=str(tmp_path / "raw"))
    assert os.listdir(tmp_path / "raw") == [] if (tmp_path / "raw").exists() else True


@pytest.mark.skipif(not SHARED.exists(), reason=NO_SHARED)
def test_kvasir_real(tmp_path):
    src = SHARED / "kvasir_seg_256"
    out = convert_kvasir_seg(str(src), 205, raw_root=str(tmp_path), max_cases=150, num_processes=2)
    names = sorted(os.listdir(os.path.join(out, "labelsTr")))
    assert len(names) == 150 and len(os.listdir(os.path.join(out, "imagesTr"))) == 150
    lab = np.asarray(Image.open(os.path.join(out, "labelsTr", names[0])))
    img = np.asarray(Image.open(os.path.join(out, "imagesTr", names[0][:-4] + "_0000.png")))
    assert img.shape == (256, 256, 3) and lab.shape == (256, 256) and set(np.unique(lab)) == {0, 1}
