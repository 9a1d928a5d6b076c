"""Shared conversion machinery: target checks, atomic write, splits, CLI registry, validation failure."""
import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.conversion import (CONVERTERS, Case, DatasetInfo, SplitPlan, TargetExistsError, build_dataset,
                                   install_split, prepare_target)
from nnunet_ext.conversion.target import atomic_folder, dataset_folder_name, resolve_raw_root

COMMON = {"--source", "--id", "--name", "--output", "--overwrite", "--num-processes"}


def test_registry_interface():
    assert set(CONVERTERS) == {"gms", "kvasir_seg", "cvc_clinicdb", "synapse", "acdc", "acdc_h5", "la2018", "msd",
                               "msd_flat", "flare22", "stego"}
    root = argparse.ArgumentParser()
    sub = root.add_subparsers(dest="cmd")
    for name, conv in CONVERTERS.items():
        assert conv.name == name and isinstance(conv.help, str) and "\n" not in conv.help
        p = sub.add_parser(name, help=conv.help)
        conv.add_arguments(p)
        opts = {s for a in p._actions for s in a.option_strings}
        assert COMMON <= opts, name
        assert ("--install-split" in opts) == conv.with_split
        with pytest.raises(SystemExit):  # --source and --id are required
            root.parse_args([name])
    args = root.parse_args(["la2018", "--source", "x", "--id", "5"])
    assert args.id == 5 and args.output is None and args.num_processes == 2 and not args.overwrite


def test_raw_root_and_names(monkeypatch, tmp_path):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ValueError, match="--output DIR.*nnUNet_raw"):
        resolve_raw_root(None)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert resolve_raw_root(None) == str(tmp_path)
    assert dataset_folder_name(7, "Foo-bar_1") == "Dataset007_Foo-bar_1"
    for bad_id, bad_name in ((0, "A"), (1000, "A"), (1, "has space"), (1, "")):
        with pytest.raises(ValueError):
            dataset_folder_name(bad_id, bad_name)
    (tmp_path / "Dataset007_Other").mkdir()
    with pytest.raises(TargetExistsError, match="already used by"):
        prepare_target(7, "Foo", None, overwrite=True)
    with pytest.raises(ValueError, match="overlaps the source"):
        prepare_target(8, "Foo", str(tmp_path / "src"), False, sources=[str(tmp_path / "src")])


def test_atomic_folder(tmp_path):
    target = tmp_path / "Dataset001_A"
    with pytest.raises(RuntimeError):
        with atomic_folder(str(target), False) as tmp:
            open(os.path.join(tmp, "half.txt"), "w").close()
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with atomic_folder(str(target), False) as tmp:
        open(os.path.join(tmp, "v1.txt"), "w").close()
    with pytest.raises(RuntimeError):  # failure while overwriting keeps the old dataset
        with atomic_folder(str(target), True) as tmp:
            raise RuntimeError("boom")
    assert os.listdir(target) == ["v1.txt"]
    with atomic_folder(str(target), True) as tmp:
        open(os.path.join(tmp, "v2.txt"), "w").close()
    assert os.listdir(target) == ["v2.txt"] and os.listdir(tmp_path) == ["Dataset001_A"]


def test_split_plan():
    p = SplitPlan(["a", "b"], test=["c"])
    assert p.test_as_val and p.training_cases() == ["a", "b", "c"] and p.fold0() == {"train": ["a", "b"], "val": ["c"]}
    p = SplitPlan(["a", "b"], test=["c"], holdout_test=True)
    assert p.training_cases() == ["a", "b"] and p.fold0() is None
    p = SplitPlan(["b", "a"], ["v"], ["t"])
    assert p.training_cases() == ["b", "a", "v"] and p.fold0() == {"train": ["a", "b"], "val": ["v"]}
    assert SplitPlan([], test=["t"]).training_cases() == [] and SplitPlan([], test=["t"]).fold0() is None
    with pytest.raises(ValueError, match="both the train and the test list"):
        SplitPlan(["a"], test=["a"])


def test_install_split(tmp_path, monkeypatch):
    raw = tmp_path / "Dataset009_X"
    raw.mkdir()
    (raw / "splits_final.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]}]))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    dst = install_split(str(raw))
    assert dst == str(tmp_path / "pre" / "Dataset009_X" / "splits_final.json")
    assert json.load(open(dst)) == [{"train": ["a"], "val": ["b"]}]
    monkeypatch.delenv("nnUNet_preprocessed")
    with pytest.raises(ValueError, match="nnUNet_preprocessed"):
        install_split(str(raw))


def _bad_writer(case, images_dir, labels_dir):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(images_dir, case.case_id + "_0000.png"))
    Image.fromarray(np.ones((6, 6), np.uint8)).save(os.path.join(labels_dir, case.case_id + ".png"))
    return [0, 1]


def test_failed_integrity_check_leaves_nothing(tmp_path):
    target = prepare_target(11, "Bad", str(tmp_path), False)
    info = DatasetInfo({"0": "grey"}, {"background": 0, "fg": 1}, ".png")
    with pytest.raises(RuntimeError, match="integrity check failed"):
        build_dataset("test", target, [Case("a", None), Case("b", None)], _bad_writer, info, num_processes=1)
    assert os.listdir(tmp_path) == []


def test_errors_survive_worker_processes(tmp_path):
    import pickle
    from nnunet_ext.conversion import SourceLayoutError
    from nnunet_ext.conversion.parallel import run_parallel
    e = pickle.loads(pickle.dumps(SourceLayoutError("x", "an a", "a b", "/p")))
    assert str(e) == "Unexpected source layout for x: expected an a; found a b (at /p)" and e.path == "/p"
    assert run_parallel(abs, [-3, -2, -1, 0, 1, 2, 3, 4], num_processes=2, min_items_per_process=2) == \
        [3, 2, 1, 0, 1, 2, 3, 4]


def _nifti_writer(case, images_dir, labels_dir):
    """Writes a tiny volume; the label only where the case has one (labels_dir is None otherwise)."""
    import SimpleITK as sitk
    if case.source == "bad":
        from nnunet_ext.conversion import CorruptFileError
        raise CorruptFileError("/src/" + case.case_id, "truncated")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)),
                    os.path.join(images_dir, case.case_id + "_0000.nii.gz"))
    if labels_dir is None:
        return []
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 3, 4), np.uint8)),
                    os.path.join(labels_dir, case.case_id + ".nii.gz"))
    return [0, 1]


def test_unlabeled_cases(tmp_path, capsys):
    """Case.unlabeled: imagesUnlabeled (images only, named like imagesTr), or imagesTs without labelsTs for test
    cases; numUnlabeled in dataset.json; a skipped unlabelled case is removed; never a training case."""
    from nnunet_ext.conversion.verify import verify_output
    from nnunet_ext.unlabeled.raw import unlabeled_cases
    info = DatasetInfo({"0": "CT"}, {"background": 0, "fg": 1}, ".nii.gz")
    cases = [Case("a", None), Case("u1", None, train=False, unlabeled=True), Case("u2", "bad", train=False,
             unlabeled=True), Case("u3", None, train=False, unlabeled=True), Case("v1", None, False, True, True)]
    out = build_dataset("test", prepare_target(12, "U", str(tmp_path), False), cases, _nifti_writer, info,
                        num_processes=1, verify=False, skip_bad=True)
    assert sorted(os.listdir(out)) == ["dataset.json", "imagesTr", "imagesTs", "imagesUnlabeled", "labelsTr"]
    assert sorted(os.listdir(os.path.join(out, "imagesUnlabeled"))) == ["u1_0000.nii.gz", "u3_0000.nii.gz"]
    assert os.listdir(os.path.join(out, "imagesTs")) == ["v1_0000.nii.gz"]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["numTraining"] == 1 and dj["numTest"] == 1 and dj["numUnlabeled"] == 2
    assert dj["skipped_cases"] == [{"case": "u2", "file": "/src/u2", "reason": "truncated"}]
    assert "imagesUnlabeled=2" in capsys.readouterr().out
    assert sorted(unlabeled_cases(out, dj)[0]) == ["u1", "u3"]
    os.remove(os.path.join(out, "imagesTr", "a_0000.nii.gz"))  # verify_output without nnU-Net's (spawning) check
    os.remove(os.path.join(out, "labelsTr", "a.nii.gz"))
    assert verify_output(out)["imagesUnlabeled"] == 2
    open(os.path.join(out, "imagesUnlabeled", "u4.nii.gz"), "w").close()  # not named like imagesTr
    with pytest.raises(RuntimeError, match=r"imagesUnlabeled: u4\.nii\.gz does not follow nnU-Net's naming"):
        verify_output(out)
    for bad in ([Case("x", None, train=True, unlabeled=True)],
                [Case("a", None), Case("t1", None, False, True), Case("t2", None, False, True, True)]):
        with pytest.raises(ValueError, match="without label"):
            build_dataset("test", prepare_target(13, "U", str(tmp_path), False), bad, _nifti_writer, info,
                          num_processes=1, verify=False)
