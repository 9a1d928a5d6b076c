"""LA 2018 h5 layout converter."""
import json
import os
import sys

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.conversion import SourceLayoutError, TargetExistsError, convert_la2018
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import NO_SHARED, SHARED, make_la, tree_checksums  # noqa: E402


def test_la2018(tmp_path):
    src = make_la(tmp_path / "src")
    before = tree_checksums(src)
    out = convert_la2018(str(src), 401, raw_root=str(tmp_path / "raw"), num_processes=1)
    assert os.path.basename(out) == "Dataset401_LA2018"
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == ["AAA.nii.gz", "BBB.nii.gz", "CCC.nii.gz"]
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == ["CCC_0000.nii.gz"]
    assert json.load(open(os.path.join(out, "splits_final.json"))) == [{"train": ["AAA", "BBB"], "val": ["CCC"]}]
    img = sitk.ReadImage(os.path.join(out, "imagesTr", "AAA_0000.nii.gz"))
    assert img.GetSize() == (12, 10, 6) and img.GetSpacing() == (0.625, 0.625, 0.625)  # (x, y, z) kept
    with h5py.File(src / "AAA" / "mri_norm2.h5") as f:
        assert np.array_equal(sitk.GetArrayFromImage(img), f["image"][()].transpose(2, 1, 0))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "AAA.nii.gz")))
    assert set(np.unique(lab)) == {0, 1}
    assert json.load(open(os.path.join(out, "dataset.json")))["labels"] == {"background": 0, "left atrium": 1}
    assert tree_checksums(src) == before
    with pytest.raises(TargetExistsError):
        convert_la2018(str(src), 401, raw_root=str(tmp_path / "raw"))


def test_la2018_missing_and_options(tmp_path):
    src = make_la(tmp_path / "src", extra_listed=("ZZZ",))
    with pytest.raises(SourceLayoutError, match=r"1 listed IDs without folder, e\.g\. \['ZZZ'\].*train\.list"):
        convert_la2018(str(src), 402, raw_root=str(tmp_path / "raw"))
    out = convert_la2018(str(src), 402, raw_root=str(tmp_path / "raw"), allow_missing=True, holdout_test=True,
                         verify=False, spacing=(1, 1, 2))
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == ["AAA.nii.gz", "BBB.nii.gz"]
    assert not os.path.exists(os.path.join(out, "splits_final.json"))
    os.remove(src / "train.list")  # without train.list: every non-test case trains
    out = convert_la2018(str(src), 402, raw_root=str(tmp_path / "raw"), overwrite=True, verify=False)
    assert json.load(open(os.path.join(out, "splits_final.json"))) == [{"train": ["AAA", "BBB"], "val": ["CCC"]}]
    os.remove(src / "BBB" / "mri_norm2.h5")
    with pytest.raises(SourceLayoutError, match="no mri_norm2.h5 in 1 folders"):
        convert_la2018(str(src), 403, raw_root=str(tmp_path / "raw"))


@pytest.mark.skipif(not SHARED.exists(), reason=NO_SHARED)
def test_la2018_real(tmp_path):
    src = SHARED / "la2018_h5"
    # the shared copy holds the 20 test cases only; train.list names 80 absent cases
    with pytest.raises(SourceLayoutError, match="80 listed IDs without folder"):
        convert_la2018(str(src), 404, raw_root=str(tmp_path))
    out = convert_la2018(str(src), 404, raw_root=str(tmp_path), allow_missing=True, num_processes=2)
    assert len(os.listdir(os.path.join(out, "imagesTs"))) == 20 and len(os.listdir(os.path.join(out, "labelsTs"))) == 20
    assert os.listdir(os.path.join(out, "imagesTr")) == []
    name = sorted(os.listdir(os.path.join(out, "imagesTs")))[0]
    img = sitk.ReadImage(os.path.join(out, "imagesTs", name))
    with h5py.File(src / name[:-12] / "mri_norm2.h5") as f:
        assert img.GetSize() == f["image"].shape and img.GetSpacing() == (0.625, 0.625, 0.625)
