"""FLARE22 converter on a small fake release in the exact layout: imagesTr/labelsTr, imagesUnlabeled,
imagesTs (validation, no labels), dataset.json in the challenge's label order; optional parts absent;
errors that name the file; --max-unlabeled."""
import contextlib
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli import main
from nnunet_ext.conversion import CONVERTERS, SourceLayoutError, convert_flare22
from nnunet_ext.unlabeled.raw import unlabeled_cases
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import DIRECTION_FLIP, make_flare22, tree_checksums  # noqa: E402

ORGANS = ["background", "liver", "right kidney", "spleen", "pancreas", "aorta", "inferior vena cava",
          "right adrenal gland", "left adrenal gland", "gallbladder", "esophagus", "stomach", "duodenum", "left kidney"]
UNLABELED = ["Case_00001", "Case_00002", "FLARE22_Tr_0051", "FLARE22_Tr_0052"]  # both naming styles
TRAIN = [f"FLARE22_Tr_{i:04d}" for i in (1, 2, 3)]


def _ls(*parts):
    return sorted(os.listdir(os.path.join(*parts)))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """One verified conversion of the whole fake release (printed summary captured)."""
    src = make_flare22(tmp_path_factory.mktemp("src"))
    before = tree_checksums(src)
    raw = tmp_path_factory.mktemp("raw")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = convert_flare22(str(src), 22, raw_root=str(raw), num_processes=1)
    return src, before, raw, out, buf.getvalue()


def test_flare22_dataset_json(release):
    _, _, raw, out, _ = release
    assert out == os.path.join(str(raw), "Dataset022_FLARE22")
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert list(dj["labels"].items()) == [(n, v) for v, n in enumerate(ORGANS)]  # the challenge's order
    assert dj["channel_names"] == {"0": "CT"} and dj["file_ending"] == ".nii.gz"
    assert dj["numTraining"] == 3 and dj["numTest"] == 2 and dj["numUnlabeled"] == 4
    assert "Ma et al." in dj["reference"] and "FLARE22" in dj["licence"]
    assert [d for d in os.listdir(raw) if d.startswith(".")] == []  # no temporary folder left


def test_flare22_folders_and_names(release):
    _, _, _, out, _ = release
    assert _ls(out) == ["dataset.json", "imagesTr", "imagesTs", "imagesUnlabeled", "labelsTr"]  # no labelsTs, no split
    assert _ls(out, "imagesTr") == [c + "_0000.nii.gz" for c in TRAIN]
    assert _ls(out, "labelsTr") == [c + ".nii.gz" for c in TRAIN]
    assert _ls(out, "imagesUnlabeled") == [c + "_0000.nii.gz" for c in UNLABELED]
    assert _ls(out, "imagesTs") == ["FLARE22_Ts_0001_0000.nii.gz", "FLARE22_Ts_0002_0000.nii.gz"]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    cases, problems = unlabeled_cases(out, dj)  # as preprocess-unlabeled and the CPS trainers read them
    assert sorted(cases) == UNLABELED and problems == {}


def test_flare22_files_unchanged_and_geometry_kept(release):
    src, _, _, out, _ = release
    pairs = [(src / "Training/FLARE22_LabeledCase50/images" / f"{c}_0000.nii.gz", f"imagesTr/{c}_0000.nii.gz")
             for c in TRAIN]
    pairs += [(src / "Training/FLARE22_LabeledCase50/labels" / f"{c}.nii.gz", f"labelsTr/{c}.nii.gz") for c in TRAIN]
    pairs += [(src / "Training/FLARE22_UnlabeledCase1-1000/Case_00002_0000.nii.gz",
               "imagesUnlabeled/Case_00002_0000.nii.gz"),
              (src / "Training/FLARE22_UnlabeledCase1001-2000/FLARE22_Tr_0051_0000.nii.gz",
               "imagesUnlabeled/FLARE22_Tr_0051_0000.nii.gz"),
              (src / "Validation/FLARE22_Ts_0002_0000.nii.gz", "imagesTs/FLARE22_Ts_0002_0000.nii.gz")]
    for a, b in pairs:
        b = os.path.join(out, b)
        assert open(a, "rb").read() == open(b, "rb").read(), b  # byte for byte
        assert os.path.samefile(a, b), b  # hard-linked (same file system)
        ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(b)
        assert ia.GetSpacing() == ib.GetSpacing() == (0.78125, 0.75, 2.5) and ia.GetOrigin() == ib.GetOrigin()
        assert ia.GetDirection() == ib.GetDirection() and np.allclose(ib.GetDirection(), DIRECTION_FLIP)
    lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", TRAIN[0] + ".nii.gz")))
    assert sorted(np.unique(lab)) == list(range(14))


def test_flare22_source_untouched_and_summary(release):
    src, before, _, _, printed = release
    assert tree_checksums(src) == before
    assert "flare22: 9 cases converted (imagesTr=3, imagesTs=2, labelsTs=0, imagesUnlabeled=4)" in printed
    assert ("unlabelled part: 4 of 4 images from Training/FLARE22_UnlabeledCase1-1000, "
            "Training/FLARE22_UnlabeledCase1001-2000 into imagesUnlabeled") in printed
    assert "validation part: 2 images from Validation into imagesTs (no labels)" in printed
    assert "no unlabelled part" not in printed and "no validation part" not in printed


def test_flare22_missing_label_or_image_names_the_file(tmp_path, capsys):
    src = make_flare22(tmp_path / "src", unlabeled=(), n_validation=0)
    lab = src / "Training/FLARE22_LabeledCase50/labels"
    img = src / "Training/FLARE22_LabeledCase50/images"
    os.rename(lab / "FLARE22_Tr_0002.nii.gz", tmp_path / "aside.nii.gz")
    with pytest.raises(SourceLayoutError, match=r"no label FLARE22_Tr_0002\.nii\.gz for image "
                                                r"'FLARE22_Tr_0002_0000\.nii\.gz' \(1 of 3 images without label\)"):
        convert_flare22(str(src), 23, raw_root=str(tmp_path / "raw"))
    rc = main(["convert", "flare22", "--source", str(src), "--id", "23", "--output", str(tmp_path / "raw")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("nnunet-ext convert flare22: error: ")
    assert str(img / "FLARE22_Tr_0002_0000.nii.gz") in err[0]
    os.rename(tmp_path / "aside.nii.gz", lab / "FLARE22_Tr_0002.nii.gz")
    os.remove(img / "FLARE22_Tr_0003_0000.nii.gz")  # a label without image
    with pytest.raises(SourceLayoutError, match=r"no image FLARE22_Tr_0003_0000\.nii\.gz for label "
                                                r"'FLARE22_Tr_0003\.nii\.gz'") as e:
        convert_flare22(str(src), 23, raw_root=str(tmp_path / "raw"))
    assert e.value.path == str(lab / "FLARE22_Tr_0003.nii.gz")
    assert not (tmp_path / "raw").exists()


def test_flare22_labelled_part_missing(tmp_path):
    src = make_flare22(tmp_path / "src", n_labelled=0)  # unlabelled and validation parts only
    with pytest.raises(SourceLayoutError, match=r"expected a labelled part: .*only the unlabelled and/or validation "
                                                r"part is there"):
        convert_flare22(str(src), 24, raw_root=str(tmp_path / "raw"))
    (src / "Training/FLARE22_LabeledCase50/images").mkdir(parents=True)
    with pytest.raises(SourceLayoutError, match=r"Training/FLARE22_LabeledCase50 has an images folder but no labels"):
        convert_flare22(str(src), 24, raw_root=str(tmp_path / "raw"))


def test_flare22_without_unlabelled_and_validation(tmp_path, capsys):
    """images/ + labels/ directly in --source (names in another case), nothing else: converted, and the
    summary says which parts were absent."""
    src = make_flare22(tmp_path / "src", unlabeled=(), n_validation=0, labelled_dir=".", pair=("Images", "LABELS"))
    out = convert_flare22(str(src), 25, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    printed = capsys.readouterr().out
    assert "no unlabelled part found" in printed and "imagesUnlabeled not written" in printed
    assert "no validation part found" in printed and "imagesTs not written" in printed
    assert _ls(out) == ["dataset.json", "imagesTr", "labelsTr"]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["numTraining"] == 3 and dj["numTest"] == 0 and "numUnlabeled" not in dj


def test_flare22_max_unlabeled_copy_quick_check(tmp_path, capsys):
    src = make_flare22(tmp_path / "src")
    raw = tmp_path / "raw"
    common = ["convert", "flare22", "--source", str(src), "--id", "26", "--output", str(raw), "--num-processes", "1",
              "--skip-verify"]
    assert main([*common, "--max-unlabeled", "3", "--copy", "--quick-check"]) == 0
    printed = capsys.readouterr().out
    out = raw / "Dataset026_FLARE22"
    assert _ls(out, "imagesUnlabeled") == [c + "_0000.nii.gz" for c in UNLABELED[:3]]  # the first 3 by name
    assert "unlabelled part: 3 of 4 images" in printed and "(--max-unlabeled 3: the first 3 by name)" in printed
    dj = json.load(open(out / "dataset.json"))
    assert dj["numUnlabeled"] == 3 and "--max-unlabeled 3" in dj["unlabeled_selection"]
    copied = out / "imagesUnlabeled" / "Case_00001_0000.nii.gz"
    assert not os.path.samefile(copied, src / "Training/FLARE22_UnlabeledCase1-1000/Case_00001_0000.nii.gz")
    assert main([*common, "--overwrite", "--max-unlabeled", "0"]) == 0
    assert "unlabelled part: 0 of 4 images" in capsys.readouterr().out and not (out / "imagesUnlabeled").exists()
    assert main([*common, "--overwrite", "--max-unlabeled", "-1"]) == 2
    assert "--max-unlabeled must be 0 or more" in capsys.readouterr().err


def test_flare22_nnunet_style_layout_clash_and_validation_labels(tmp_path, capsys):
    """imagesTr/labelsTr/imagesTs/imagesUnlabeled; an unlabelled name that clashes with a labelled one
    (error, then --unlabeled-prefix); validation labels are left out."""
    src = make_flare22(tmp_path / "src", unlabeled=(("imagesUnlabeled", ("FLARE22_Tr_0001", "Case_00007")),),
                       labelled_dir=".", pair=("imagesTr", "labelsTr"), validation_dir="imagesTs")
    shutil.move(str(src / "Training/imagesUnlabeled"), str(src / "imagesUnlabeled"))
    (src / "Validation/labels").mkdir(parents=True)  # validation ground truth released later: not converted
    shutil.copy(src / "labelsTr/FLARE22_Tr_0001.nii.gz", src / "Validation/labels/FLARE22_Ts_0001.nii.gz")
    with pytest.raises(SourceLayoutError, match=r"case 'FLARE22_Tr_0001' twice: .*imagesTr.* and .*imagesUnlabeled.*"
                                                r"--unlabeled-prefix"):
        convert_flare22(str(src), 27, raw_root=str(tmp_path / "raw"))
    out = convert_flare22(str(src), 27, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False,
                          unlabeled_prefix="U_")
    printed = capsys.readouterr().out
    assert _ls(out, "imagesUnlabeled") == ["U_Case_00007_0000.nii.gz", "U_FLARE22_Tr_0001_0000.nii.gz"]
    assert _ls(out, "imagesTs") == ["FLARE22_Ts_0001_0000.nii.gz", "FLARE22_Ts_0002_0000.nii.gz"]
    assert "not converted: Validation/labels" in printed and not os.path.exists(os.path.join(out, "labelsTs"))


def test_flare22_registered():
    assert CONVERTERS["flare22"].name == "flare22" and not CONVERTERS["flare22"].with_split
