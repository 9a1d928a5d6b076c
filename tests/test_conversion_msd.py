"""MSD converters: the flat images/ + labels/ copy (msd_flat) and nnU-Net's own TaskXX converter (msd)."""
import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.conversion import CONVERTERS, SourceLayoutError, TargetExistsError, convert_msd, convert_msd_flat
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import (DIRECTION_FLIP, NO_SHARED, SHARED, make_msd_flat, make_msd_task,  # noqa: E402
                                 tree_checksums)


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """One verified msd_flat conversion shared by the tests below."""
    src = make_msd_flat(tmp_path_factory.mktemp("src") / "msd_hippocampus", n=3)
    before = tree_checksums(src)
    raw = tmp_path_factory.mktemp("raw")
    out = convert_msd_flat(str(src), 4, raw_root=str(raw), num_processes=1)
    return src, before, raw, out


def test_msd_flat_layout_and_json(flat):
    src, before, raw, out = flat
    assert out == os.path.join(str(raw), "Dataset004_Hippocampus")
    assert sorted(os.listdir(os.path.join(out, "imagesTr"))) == [f"hippocampus_{i:03d}_0000.nii.gz" for i in range(3)]
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == [f"hippocampus_{i:03d}.nii.gz" for i in range(3)]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["channel_names"] == {"0": "MRI"}
    assert dj["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert dj["file_ending"] == ".nii.gz" and dj["numTraining"] == 3
    assert not os.path.exists(os.path.join(out, "splits_final.json"))
    assert [d for d in os.listdir(raw) if d.startswith(".")] == []  # no temporary folder left


def test_msd_flat_geometry_and_labels_kept(flat):
    src, _, _, out = flat
    for i in range(3):
        a = sitk.ReadImage(str(src / "images" / f"hippocampus_{i:03d}.nii.gz"))
        b = sitk.ReadImage(os.path.join(out, "imagesTr", f"hippocampus_{i:03d}_0000.nii.gz"))
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
        assert np.allclose(b.GetDirection(), DIRECTION_FLIP)
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", f"hippocampus_{i:03d}.nii.gz")))
        assert set(np.unique(lab)) <= {0, 1, 2}


def test_msd_flat_source_untouched_and_overwrite(flat, capsys):
    src, before, raw, out = flat
    assert tree_checksums(src) == before
    with pytest.raises(TargetExistsError):
        convert_msd_flat(str(src), 4, raw_root=str(raw))
    with pytest.raises(TargetExistsError):  # same id, different name
        convert_msd_flat(str(src), 4, name="Other", raw_root=str(raw))
    marker = os.path.join(out, "marker.txt")
    open(marker, "w").close()
    convert_msd_flat(str(src), 4, raw_root=str(raw), overwrite=True, num_processes=1, verify=False,
                     label_names=["bg", "A", "P"], max_cases=2)
    assert not os.path.exists(marker)
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["labels"] == {"bg": 0, "A": 1, "P": 2} and dj["numTraining"] == 2
    assert tree_checksums(src) == before


def test_msd_flat_malformed(tmp_path):
    src = make_msd_flat(tmp_path / "src", n=2)
    os.remove(src / "labels" / "hippocampus_001.nii.gz")
    with pytest.raises(SourceLayoutError, match="no label for image 'hippocampus_001.nii.gz'"):
        convert_msd_flat(str(src), 5, raw_root=str(tmp_path / "raw"))
    with pytest.raises(SourceLayoutError, match="expected a folder 'images'"):
        convert_msd_flat(str(tmp_path), 5, raw_root=str(tmp_path / "raw"))
    assert not (tmp_path / "raw" / "Dataset005_Hippocampus").exists()


def test_msd_flat_unexpected_label_value_aborts_cleanly(tmp_path):
    src = make_msd_flat(tmp_path / "src", n=2)
    with pytest.raises(ValueError, match="label values"):
        convert_msd_flat(str(src), 6, raw_root=str(tmp_path / "raw"), label_names=["bg", "fg"], verify=False)
    assert os.listdir(tmp_path / "raw") == []


def test_msd_flat_reads_msd_json_and_cli(tmp_path):
    import argparse
    src = make_msd_flat(tmp_path / "src", n=2, with_json=True)
    conv = CONVERTERS["msd_flat"]
    parser = argparse.ArgumentParser()
    conv.add_arguments(parser)
    args = parser.parse_args(["--source", str(src), "--id", "7", "--output", str(tmp_path / "raw"),
                              "--num-processes", "1", "--skip-verify"])
    out = conv.run(args)
    assert os.path.basename(out) == "Dataset007_Hippocampus"
    labels = json.load(open(os.path.join(out, "dataset.json")))["labels"]
    assert labels == {"background": 0, "Anterior": 1, "Posterior": 2}


def test_msd_task_delegates_to_nnunet(tmp_path):
    task = make_msd_task(tmp_path / "src", channels=2)
    before = tree_checksums(task)
    out = convert_msd(str(task), 12, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert os.path.basename(out) == "Dataset012_Hippocampus"
    files = sorted(os.listdir(os.path.join(out, "imagesTr")))
    assert files == [f"case_{i:03d}_{c:04d}.nii.gz" for i in range(3) for c in range(2)]
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == ["case_003_0000.nii.gz", "case_003_0001.nii.gz"]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["channel_names"] == {"0": "MR0", "1": "MR1"} and dj["labels"]["b"] == 2
    assert tree_checksums(task) == before
    with pytest.raises(TargetExistsError):
        convert_msd(str(task), 12, raw_root=str(tmp_path / "raw"))
    with pytest.raises(SourceLayoutError, match="TaskXX_Name"):
        convert_msd(str(tmp_path / "src"), 13, raw_root=str(tmp_path / "raw"))


@pytest.mark.skipif(not SHARED.exists(), reason=NO_SHARED)
def test_msd_flat_real_hippocampus(tmp_path):
    src = SHARED / "msd_hippocampus"
    out = convert_msd_flat(str(src), 4, raw_root=str(tmp_path), num_processes=2)
    assert len(os.listdir(os.path.join(out, "imagesTr"))) == 260
    assert len(os.listdir(os.path.join(out, "labelsTr"))) == 260
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", "hippocampus_001.nii.gz")))
    assert set(np.unique(lab)) == {0, 1, 2}


def test_msd_task_test_split(tmp_path, capsys):
    """convert msd --test-fraction: the held-out labelled cases in imagesTs/labelsTs (not in imagesTr), MSD's
    unlabelled test images in imagesUnlabeled, the same choice as msd_flat's, numTraining updated."""
    import argparse
    from nnunet_ext.conversion.msd import pick_test_cases
    task = make_msd_task(tmp_path / "src", n_train=5, n_test=1)
    before = tree_checksums(task)
    conv = CONVERTERS["msd"]
    parser = argparse.ArgumentParser()
    conv.add_arguments(parser)
    args = parser.parse_args(["--source", str(task), "--id", "14", "--output", str(tmp_path / "raw"),
                              "--num-processes", "1", "--test-fraction", "0.4", "--test-seed", "3"])
    out = conv.run(args)
    ids = [f"case_{i:03d}" for i in range(5)]
    held = pick_test_cases(ids, 0.4, seed=3)
    assert len(held) == 2
    assert sorted(os.listdir(os.path.join(out, "labelsTs"))) == [c + ".nii.gz" for c in held]
    assert sorted(os.listdir(os.path.join(out, "imagesTs"))) == [c + "_0000.nii.gz" for c in held]
    train = [c for c in ids if c not in held]
    assert sorted(os.listdir(os.path.join(out, "imagesTr"))) == [c + "_0000.nii.gz" for c in train]
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == [c + ".nii.gz" for c in train]
    assert os.listdir(os.path.join(out, "imagesUnlabeled")) == ["case_005_0000.nii.gz"]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["numTraining"] == 3 and dj["test_selection"]["seed"] == 3
    assert "held out 2 of 5 cases" in capsys.readouterr().out
    assert tree_checksums(task) == before
    # --test-cases, the other seed: another choice, same rule
    out2 = convert_msd(str(task), 15, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False,
                       test_cases=1)
    assert os.listdir(os.path.join(out2, "labelsTs")) == [pick_test_cases(ids, count=1)[0] + ".nii.gz"]


def test_msd_task_test_split_errors(tmp_path):
    from nnunet_ext.conversion import ConversionArgumentError
    task = make_msd_task(tmp_path / "src", n_train=3, n_test=1)
    for kwargs in ({"test_cases": 3}, {"test_fraction": 1.0}, {"test_fraction": 0.5, "test_cases": 1}):
        with pytest.raises(ConversionArgumentError):
            convert_msd(str(task), 16, raw_root=str(tmp_path / "raw"), num_processes=1, **kwargs)
    assert not (tmp_path / "raw" / "Dataset016_Hippocampus").exists()
