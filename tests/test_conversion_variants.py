"""The layouts the datasets really circulate in: UA-MT's LA layout (lists above the case folder), SSL4MIS
ACDC copies (training patients only as slices, slices beside the volumes or in slices/, numbered from 0
or 1), nested release folders, upper/lower case folder names, list files with blank lines and suffixes."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_ext.conversion import (CaseDataError, SourceLayoutError, convert_acdc, convert_acdc_h5,
                                   convert_cvc_clinicdb, convert_gms, convert_kvasir_seg, convert_la2018,
                                   convert_msd, convert_msd_flat, convert_synapse)
from nnunet_ext.errors import UserError
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import (ACDC_FRAMES, ACDC_SSL, _h5, acdc_ssl_volume, make_acdc_h5_circulating,  # noqa: E402
                                 make_acdc_nifti, make_cvc, make_gms, make_kvasir, make_la, make_la_uamt,
                                 make_msd_flat, make_msd_task, make_synapse, tree_checksums, write_list)


def _ids(folder, suffix=".nii.gz"):
    return sorted(f[: -len(suffix)] for f in os.listdir(folder)) if os.path.isdir(folder) else []


def _split(out):
    return json.load(open(os.path.join(out, "splits_final.json")))


# ---------------------------------------------------------------- LA 2018
def test_la_uamt_parent_layout(tmp_path, capsys):
    """--source on the parent of '2018LA_Seg_Training Set': the case folder is found, the lists beside it read."""
    data = make_la_uamt(tmp_path / "src", list_suffix="", trailing_blank=True)
    before = tree_checksums(data)
    out = convert_la2018(str(data), 401, raw_root=str(tmp_path / "raw"), num_processes=1)
    assert _ids(os.path.join(out, "labelsTr")) == ["AAA", "BBB", "CCC"]
    assert _ids(os.path.join(out, "labelsTs")) == ["CCC"]
    assert _split(out) == [{"train": ["AAA", "BBB"], "val": ["CCC"]}]
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["split_lists"] == [str(data / "train.list"), str(data / "test.list")]
    printed = capsys.readouterr().out
    assert f"case folders in {data / '2018LA_Seg_Training Set'}" in printed
    assert f"split from {data / 'train.list'} (2 cases) and {data / 'test.list'} (1 case)" in printed
    assert tree_checksums(data) == before


@pytest.mark.parametrize("entries", ["ids", "h5_suffix", "paths"])
def test_la_case_folder_reads_lists_above(tmp_path, capsys, entries):
    """--source on the case folder keeps the published split from the lists one level above;
    list entries may be IDs, '<ID>.h5' or paths to '<ID>/mri_norm2.h5' (CRLF, trailing blank line)."""
    data = make_la_uamt(tmp_path / "src")
    cases = data / "2018LA_Seg_Training Set"
    if entries == "h5_suffix":
        write_list(data / "train.list", ["AAA", "BBB"], trailing_blank=True, suffix=".h5", crlf=True)
    else:
        os.rename(data / "test.list", data / "Test.LIST")  # upper/lower case of the list names does not matter
    if entries == "paths":
        write_list(data / "train.list", ["../data/2018LA_Seg_Training Set/AAA/mri_norm2.h5",
                                         "../data/2018LA_Seg_Training Set/BBB/mri_norm2.h5"], trailing_blank=True)
    out = convert_la2018(str(cases), 402, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert _split(out) == [{"train": ["AAA", "BBB"], "val": ["CCC"]}]
    assert _ids(os.path.join(out, "imagesTs"), "_0000.nii.gz") == ["CCC"]
    assert f"split from {data / 'train.list'}" in capsys.readouterr().out


def test_la_nested_release_and_lists_beside_cases(tmp_path, capsys):
    # lists beside the cases (the shared copy's layout), the whole thing nested two levels down
    src = make_la(tmp_path / "release" / "LA2018")
    out = convert_la2018(str(tmp_path / "release"), 403, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert _split(out) == [{"train": ["AAA", "BBB"], "val": ["CCC"]}]
    assert f"split from {src / 'train.list'}" in capsys.readouterr().out
    # no lists anywhere: every case trains, the summary says where it looked
    os.remove(src / "train.list")
    os.remove(src / "test.list")
    out = convert_la2018(str(src), 404, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert _ids(os.path.join(out, "labelsTr")) == ["AAA", "BBB", "CCC"]
    assert not os.path.exists(os.path.join(out, "splits_final.json"))
    assert "no train.list / test.list in" in capsys.readouterr().out


def test_la_two_case_folders_is_an_error(tmp_path):
    make_la(tmp_path / "src" / "a")
    make_la(tmp_path / "src" / "b")
    with pytest.raises(SourceLayoutError, match=r"2 folders with case folders.*pass the one to convert"):
        convert_la2018(str(tmp_path / "src"), 405, raw_root=str(tmp_path / "raw"))


# ---------------------------------------------------------------- ACDC h5
def _check_acdc_circulating(out):
    train = [f"{p}_frame{f}" for p in ACDC_SSL["train"] for f in ACDC_FRAMES]
    val = [f"{p}_frame{f}" for p in ACDC_SSL["val"] for f in ACDC_FRAMES]
    test = [f"{p}_frame{f}" for p in ACDC_SSL["test"] for f in ACDC_FRAMES]
    assert _ids(os.path.join(out, "labelsTr")) == sorted(train + val)
    assert _ids(os.path.join(out, "imagesTs"), "_0000.nii.gz") == test and _ids(os.path.join(out, "labelsTs")) == test
    assert _split(out) == [{"train": train, "val": val}]
    for name in (train[0], train[-1], val[0]):  # rebuilt from slices, in slice order; and a volume
        img, lab = acdc_ssl_volume(name)
        got = sitk.ReadImage(os.path.join(out, "imagesTr", name + "_0000.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(got), img) and got.GetSpacing() == (1.5625, 1.5625, 10.0)
        got_lab = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "labelsTr", name + ".nii.gz")))
        assert np.array_equal(got_lab, lab)


@pytest.mark.parametrize("slices_dir,start", [("data", 1), ("data", 0), ("data/slices", 1), ("data/slices", 0)])
def test_acdc_h5_circulating_copies(tmp_path, capsys, slices_dir, start):
    """Volumes for the val/test patients only, training patients only as slices (beside the volumes or in
    data/slices/, numbered from 0 or 1): every patient x frame is converted with the published lists."""
    src = make_acdc_h5_circulating(tmp_path / "src", slices_dir=slices_dir, start=start)
    before = tree_checksums(src)
    out = convert_acdc_h5(str(src), 502, raw_root=str(tmp_path / "raw"), num_processes=1,
                          verify=(slices_dir, start) == ("data", 1))
    _check_acdc_circulating(out)
    printed = capsys.readouterr().out
    assert "train.list (4 volumes), val.list (2 volumes), test.list (2 volumes)" in printed
    assert f"4 volumes rebuilt from slices (numbered from {start}) in {slices_dir}/" in printed
    assert tree_checksums(src) == before


@pytest.mark.parametrize("where", ["data_folder", "parent", "h5_suffix_lists"])
def test_acdc_h5_source_and_list_variants(tmp_path, where):
    src = make_acdc_h5_circulating(tmp_path / "rel" / "src", start=1,
                                   list_suffix=".h5" if where == "h5_suffix_lists" else "")
    if where == "h5_suffix_lists":  # and CRLF, and slice names instead of volume names for training
        names = [f"{p}_frame{f}_slice_1.h5" for p in ACDC_SSL["train"] for f in ACDC_FRAMES]
        write_list(src / "train.list", names, trailing_blank=True, crlf=True)
    source = {"data_folder": src / "data", "parent": tmp_path / "rel", "h5_suffix_lists": src}[where]
    out = convert_acdc_h5(str(source), 503, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    _check_acdc_circulating(out)


def test_acdc_h5_train_slices_list_and_all_slices(tmp_path):
    """A copy with slices for every frame and only train_slices.list for training (no train.list):
    volumes are preferred where they exist, the rest is rebuilt."""
    src = make_acdc_h5_circulating(tmp_path / "src", slices_dir="data/slices", start=0, all_slices=True)
    names = [f"{p}_frame{f}_slice_{k}" for p in ACDC_SSL["train"] for f in ACDC_FRAMES for k in range(3)]
    os.remove(src / "train.list")
    write_list(src / "train_slices.list", names)
    out = convert_acdc_h5(str(src), 504, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    _check_acdc_circulating(out)
    assert json.load(open(os.path.join(out, "dataset.json")))["split_lists"][0].endswith("train_slices.list")


def test_acdc_h5_slice_gaps_and_2d_volumes(tmp_path):
    src = make_acdc_h5_circulating(tmp_path / "a", start=1)
    os.remove(src / "data" / "patient001_frame12_slice_2.h5")
    with pytest.raises(SourceLayoutError, match=r"slices 1..n of case 'patient001_frame12'.*missing \[2\]"):
        convert_acdc_h5(str(src), 505, raw_root=str(tmp_path / "raw"))
    src = make_acdc_h5_circulating(tmp_path / "b", start=0)  # one case numbered from 1 in a copy numbered from 0
    os.rename(src / "data" / "patient001_frame12_slice_0.h5", src / "data" / "patient001_frame12_slice_3.h5")
    with pytest.raises(SourceLayoutError, match=r"missing \[0\].*slice 0 is missing"):
        convert_acdc_h5(str(src), 505, raw_root=str(tmp_path / "raw"))
    src = make_acdc_h5_circulating(tmp_path / "c", start=0)  # a slice under a volume's name
    img, lab = acdc_ssl_volume("patient003_frame01")
    _h5(src / "data" / "patient003_frame01.h5", img[0], lab[0])
    with pytest.raises(CaseDataError, match=r"expected a 3D image array, got shape \(12, 10\).*_slice_") as e:
        convert_acdc_h5(str(src), 505, raw_root=str(tmp_path / "raw"), num_processes=1)
    assert isinstance(e.value, UserError) and "patient003_frame01.h5" in str(e.value)
    assert not (tmp_path / "raw").exists() or os.listdir(tmp_path / "raw") == []


# ---------------------------------------------------------------- ACDC NIfTI
def test_acdc_nifti_nested_capitalised_release(tmp_path, capsys):
    src = make_acdc_nifti(tmp_path / "dl" / "ACDC_release")
    db = src / "database"
    db.mkdir()
    os.rename(src / "training", db / "Training")
    os.rename(src / "testing", db / "Testing")
    out = convert_acdc(str(tmp_path / "dl"), 506, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert _split(out) == [{"train": ["patient001_frame01", "patient001_frame12", "patient002_frame01",
                                      "patient002_frame09"], "val": ["patient101_frame01", "patient101_frame14"]}]
    assert f"release folder {db}" in capsys.readouterr().out


# ---------------------------------------------------------------- GMS
def test_gms_nested_and_capitalised(tmp_path):
    ds = make_gms(tmp_path / "Dataset", "busi")
    os.rename(ds / "images", ds / "Images")
    os.rename(ds / "masks", ds / "Masks")
    for f in os.listdir(ds / "Masks"):  # BUSI-style mask names
        os.rename(ds / "Masks" / f, ds / "Masks" / f.replace(".png", "_mask.png"))
    out = convert_gms(str(tmp_path / "Dataset"), 104, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert os.path.basename(out) == "Dataset104_BUSI"
    assert _ids(os.path.join(out, "labelsTr"), ".png") == ["benign_1", "benign_2", "benign_3", "malignant_1"]
    make_gms(tmp_path / "Dataset", "glas")
    with pytest.raises(SourceLayoutError, match=r"2 dataset folders \['busi', 'glas'\].*Dataset/busi"):
        convert_gms(str(tmp_path / "Dataset"), 105, raw_root=str(tmp_path / "raw"))


# ---------------------------------------------------------------- polyps
def test_cvc_release_png_and_tif_and_lowercase(tmp_path):
    rel = tmp_path / "CVC-ClinicDB"
    make_cvc(rel, n=2, ext=".png", sub="PNG")
    make_cvc(rel, n=2, ext=".tif", sub="TIF")
    out = convert_cvc_clinicdb(str(rel), 206, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert _ids(os.path.join(out, "labelsTs"), ".png") == ["1", "2"]  # PNG/ used, the same images as TIF/
    low = make_cvc(tmp_path / "low", n=2, ext=".tif", sub="cvc")
    os.rename(low / "Original", low / "original")
    os.rename(low / "Ground Truth", low / "ground_truth")
    out = convert_cvc_clinicdb(str(low), 207, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert _ids(os.path.join(out, "labelsTs"), ".png") == ["1", "2"]


def test_kvasir_extraction_folder_mixed_extensions_and_pranet(tmp_path):
    ds = make_kvasir(tmp_path / "kvasir-seg", n=2)  # the zip's folder: kvasir-seg/Kvasir-SEG/...
    Image.open(ds / "masks" / "cju0001.jpg").save(ds / "masks" / "cju0001.png")
    os.remove(ds / "masks" / "cju0001.jpg")
    out = convert_kvasir_seg(str(tmp_path / "kvasir-seg"), 208, raw_root=str(tmp_path / "raw"), num_processes=1,
                             verify=False)
    assert _ids(os.path.join(out, "labelsTr"), ".png") == ["cju0000", "cju0001"]
    os.rename(ds / "images", ds / "image")  # PraNet's TrainDataset: image/ + mask/
    os.rename(ds / "masks", ds / "mask")
    out = convert_kvasir_seg(str(ds), 209, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert _ids(os.path.join(out, "labelsTr"), ".png") == ["cju0000", "cju0001"]
    with pytest.raises(SourceLayoutError, match=r"such folders are deeper, in \['kvasir-seg/Kvasir-SEG'\]"):
        convert_kvasir_seg(str(tmp_path), 210, raw_root=str(tmp_path / "raw"))


# ---------------------------------------------------------------- Synapse
def test_synapse_nested_and_slices_from_one(tmp_path):
    ds = make_synapse(tmp_path / "project" / "data")
    for f in sorted(os.listdir(ds / "train_npz"), reverse=True):  # renumber slice000.. -> slice001..
        k = int(f.split("slice")[1][:3])
        os.rename(ds / "train_npz" / f, ds / "train_npz" / f.replace(f"slice{k:03d}", f"slice{k + 1:03d}"))
    out = convert_synapse(str(tmp_path / "project"), 303, raw_root=str(tmp_path / "raw"), num_processes=1,
                          verify=False)
    assert _split(out) == [{"train": ["case0005", "case0006"], "val": ["case0001", "case0002"]}]
    assert sitk.ReadImage(os.path.join(out, "imagesTr", "case0005_0000.nii.gz")).GetSize() == (16, 16, 4)


# ---------------------------------------------------------------- MSD
def test_msd_flat_capitalised_folders_and_task_folder_hint(tmp_path):
    src = make_msd_flat(tmp_path / "flat", n=2)
    os.rename(src / "images", src / "Images")
    os.rename(src / "labels", src / "Labels")
    out = convert_msd_flat(str(src), 14, raw_root=str(tmp_path / "raw"), num_processes=1, verify=False)
    assert _ids(os.path.join(out, "labelsTr")) == ["hippocampus_000", "hippocampus_001"]
    task = make_msd_task(tmp_path / "msd")
    with pytest.raises(SourceLayoutError, match="original MSD task folder: convert it with 'nnunet-ext convert msd'"):
        convert_msd_flat(str(task), 15, raw_root=str(tmp_path / "raw"))


def test_msd_task_parent_and_bad_json(tmp_path):
    task = make_msd_task(tmp_path / "msd")
    with pytest.raises(SourceLayoutError, match=r"the task folder is .*Task04_Hippocampus: pass it as --source"):
        convert_msd(str(tmp_path / "msd"), 16, raw_root=str(tmp_path / "raw"))
    dj = json.load(open(task / "dataset.json"))
    del dj["modality"]
    (task / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(SourceLayoutError, match=r"keys labels, modality, training and test.*no \['modality'\]"):
        convert_msd(str(task), 16, raw_root=str(tmp_path / "raw"))
    (task / "dataset.json").write_text("{not json")
    with pytest.raises(SourceLayoutError, match="invalid JSON"):
        convert_msd(str(task), 16, raw_root=str(tmp_path / "raw"))


def test_errors_pickle_with_type_and_message():
    from nnunet_ext.conversion import errors as E
    samples = [E.SourceLayoutError("c", "x", "y", "/p"), E.SourceNotFoundError("c", "/nope", "; hint"),
               E.TargetExistsError("t exists"), E.ConversionArgumentError("bad"), E.SplitNotFoundError("no split"),
               E.IntegrityCheckError("failed"), E.CorruptFileError("/f.jpg", "OSError: truncated", "case1"),
               E.CaseDataError("/l.h5", "label values [9]", None, "fix it")]
    for e in samples:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and isinstance(back, UserError)
    assert isinstance(samples[2], FileExistsError) and isinstance(samples[6], ValueError)
    assert "--skip-bad" in str(samples[6]) and "/f.jpg" in str(samples[6]) and "fix it" in str(samples[7])
