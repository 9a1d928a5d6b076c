"""ACDC converters: NIfTI release and SSL4MIS h5 layout."""
import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.conversion import SourceLayoutError, TargetExistsError, convert_acdc, convert_acdc_h5
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import DIRECTION_FLIP, make_acdc_h5, make_acdc_nifti, tree_checksums  # noqa: E402


def test_acdc_nifti(tmp_path):
    src = make_acdc_nifti(tmp_path / "src")
    before = tree_checksums(src)
    out = convert_acdc(str(src), 501, raw_root=str(tmp_path / "raw"), num_processes=1)
    assert os.path.basename(out) == "Dataset501_ACDC"
    train = ["patient001_frame01", "patient001_frame12", "patient002_frame01", "patient002_frame09"]
    test = ["patient101_frame01", "patient101_frame14"]  # patient102 has no ground truth -> skipped
    assert sorted(f[:-7] for f in os.listdir(os.path.join(out, "labelsTr"))) == sorted(train + test)
    assert sorted(f[:-7] for f in os.listdir(os.path.join(out, "labelsTs"))) == test
    assert json.load(open(os.path.join(out, "splits_final.json"))) == [{"train": train, "val": test}]
    a = sitk.ReadImage(str(src / "training" / "patient001" / "patient001_frame12.nii.gz"))
    b = sitk.ReadImage(os.path.join(out, "imagesTr", "patient001_frame12_0000.nii.gz"))
    assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
    assert np.allclose(b.GetDirection(), DIRECTION_FLIP)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "patient001_frame12.nii.gz")))
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    assert json.load(open(os.path.join(out, "dataset.json")))["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert tree_checksums(src) == before
    with pytest.raises(TargetExistsError):
        convert_acdc(str(src), 501, raw_root=str(tmp_path / "raw"))


def test_acdc_nifti_malformed(tmp_path):
    src = make_acdc_nifti(tmp_path / "src")
    os.remove(src / "training" / "patient002" / "patient002_frame09_gt.nii.gz")
    with pytest.raises(SourceLayoutError, match=r"no ground truth for \['patient002_frame09'\]"):
        convert_acdc(str(src), 502, raw_root=str(tmp_path / "raw"))
    with pytest.raises(SourceLayoutError, match="no patientXXX folder"):
        convert_acdc(str(src / "training" / "patient001"), 502, raw_root=str(tmp_path / "raw"))


@pytest.mark.parametrize("volumes_dir", ["data", "ACDC_training_volumes"])
def test_acdc_h5(tmp_path, volumes_dir):
    src = make_acdc_h5(tmp_path / "src", volumes_dir)
    before = tree_checksums(src)
    out = convert_acdc_h5(str(src), 503, raw_root=str(tmp_path / "raw"), num_processes=1,
                          verify=volumes_dir == "data")
    tr = sorted(f[:-7] for f in os.listdir(os.path.join(out, "labelsTr")))
    assert tr == ["patient001_frame01", "patient001_frame12", "patient002_frame01", "patient003_frame01"]
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == ["patient101_frame01_0000.nii.gz"]
    assert json.load(open(os.path.join(out, "splits_final.json"))) == [
        {"train": ["patient001_frame01", "patient001_frame12", "patient003_frame01"], "val": ["patient002_frame01"]}]
    rebuilt = sitk.ReadImage(os.path.join(out, "imagesTr", "patient003_frame01_0000.nii.gz"))  # from slices
    assert rebuilt.GetSize() == (10, 12, 3) and rebuilt.GetSpacing() == (1.5625, 1.5625, 10.0)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "patient003_frame01.nii.gz")))
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    assert tree_checksums(src) == before


def test_acdc_h5_malformed(tmp_path):
    src = make_acdc_h5(tmp_path / "src")
    with open(src / "val.list", "a") as f:
        f.write("patient099_frame01\n")
    with pytest.raises(SourceLayoutError, match=r"names without data, e\.g\. \['patient099_frame01'\].*val\.list"):
        convert_acdc_h5(str(src), 504, raw_root=str(tmp_path / "raw"))
    for k in ("train", "val", "test"):
        os.remove(src / f"{k}.list")
    with pytest.raises(SourceLayoutError, match="train.list / val.list / test.list"):
        convert_acdc_h5(str(src), 504, raw_root=str(tmp_path / "raw"))


def test_acdc_h5_patient_ids_and_txt_lists(tmp_path):
    src = make_acdc_h5(tmp_path / "src", "ACDC_training_volumes")
    for k in ("train", "val", "test"):
        os.remove(src / f"{k}.list")
    (src / "train.txt").write_text("patient001\npatient003\n")  # patient ids stand for all their frames
    (src / "test.txt").write_text("patient101\n")
    out = convert_acdc_h5(str(src), 505, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert json.load(open(os.path.join(out, "splits_final.json"))) == [
        {"train": ["patient001_frame01", "patient001_frame12", "patient003_frame01"], "val": ["patient101_frame01"]}]
