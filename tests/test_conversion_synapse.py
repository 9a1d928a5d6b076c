"""Synapse (TransUNet distribution) converter."""
import json
import os
import sys

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.conversion import SourceLayoutError, TargetExistsError, convert_synapse
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import make_synapse, tree_checksums  # noqa: E402


def test_synapse(tmp_path):
    src = make_synapse(tmp_path / "src")
    before = tree_checksums(src)
    out = convert_synapse(str(src), 301, raw_root=str(tmp_path / "raw"), num_processes=1, spacing=(0.8, 0.8, 2.5))
    assert os.path.basename(out) == "Dataset301_Synapse"
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == [f"case000{i}.nii.gz" for i in (1, 2, 5, 6)]
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == ["case0001_0000.nii.gz", "case0002_0000.nii.gz"]
    assert json.load(open(os.path.join(out, "splits_final.json"))) == [
        {"train": ["case0005", "case0006"], "val": ["case0001", "case0002"]}]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["labels"]["aorta"] == 1 and dj["labels"]["stomach"] == 8 and len(dj["labels"]) == 9
    assert "spacing" in dj["spacing_note"]
    # training volume rebuilt from slices in slice order
    vol = sitk.ReadImage(os.path.join(out, "imagesTr", "case0005_0000.nii.gz"))
    assert vol.GetSize() == (16, 16, 4) and np.allclose(vol.GetSpacing(), (0.8, 0.8, 2.5))
    arr = sitk.GetArrayFromImage(vol)
    for z in range(4):
        assert np.array_equal(arr[z], np.load(src / "train_npz" / f"case0005_slice{z:03d}.npz")["image"])
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTs", "case0001.nii.gz")))
    with h5py.File(src / "test_vol_h5" / "case0001.npy.h5") as f:
        assert np.array_equal(lab, f["label"][()].astype(np.uint8))
    assert set(np.unique(lab)) == {0, 2, 4, 6, 7}
    assert tree_checksums(src) == before
    with pytest.raises(TargetExistsError):
        convert_synapse(str(src), 301, raw_root=str(tmp_path / "raw"))


def test_synapse_malformed(tmp_path):
    src = make_synapse(tmp_path / "src")
    os.remove(src / "train_npz" / "case0005_slice002.npz")
    with pytest.raises(SourceLayoutError, match=r"slices 0..n-1 of case 'case0005'.*missing \[2\]"):
        convert_synapse(str(src), 302, raw_root=str(tmp_path / "raw"))
    src2 = make_synapse(tmp_path / "src2", train=(("case0005", 2),), test=(("case0001", 2),))
    np.savez(src2 / "train_npz" / "case0005_slice001.npz", img=np.zeros((16, 16)))
    with pytest.raises(Exception, match=r"arrays \['image', 'label'\].*found arrays \['img'\]"):
        convert_synapse(str(src2), 302, raw_root=str(tmp_path / "raw"), verify=False)
    src3 = make_synapse(tmp_path / "src3", train=(("case0005", 2),), test=(("case0001", 2),))
    with h5py.File(src3 / "test_vol_h5" / "case0001.npy.h5", "r+") as f:
        f["label"][0, 0, 0] = 13
    with pytest.raises(Exception, match=r"unexpected label values \[13\]"):
        convert_synapse(str(src3), 302, raw_root=str(tmp_path / "raw"), verify=False)
    with pytest.raises(SourceLayoutError, match="train_npz"):
        convert_synapse(str(tmp_path), 302, raw_root=str(tmp_path / "raw"))
    assert [d for d in os.listdir(tmp_path / "raw")] == []
