"""Expected failures of `nnunet-ext convert NAME` and of the dataset_conversion/ scripts: one line
`nnunet-ext convert NAME: error: ...` on stderr, a non-zero exit, a traceback only with --debug;
--skip-bad for corrupt files; a misspelt --source; msd_flat --test-fraction / --test-cases."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_ext.cli import main
from nnunet_ext.conversion import (CONVERTERS, ConversionArgumentError, CorruptFileError, SourceNotFoundError,
                                   convert_la2018, convert_msd_flat)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conversion_fixtures, any import mode
from conversion_fixtures import REPO, make_kvasir, make_la, make_msd_flat, truncate  # noqa: E402

VERBS = sorted(CONVERTERS)
BIN = Path(sys.executable).parent


def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err, verb):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"nnunet-ext convert {verb}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def test_every_verb_is_tested():
    assert VERBS == ["acdc", "acdc_h5", "cvc_clinicdb", "flare22", "gms", "kvasir_seg", "la2018", "msd", "msd_flat",
                     "stego", "synapse"]


@pytest.mark.parametrize("verb", VERBS)
def test_misspelt_source_one_line(tmp_path, capsys, verb):
    (tmp_path / "msd_hippocampus").mkdir()
    bad = tmp_path / "msd_hipocampus"
    rc, out, err = _run(["convert", verb, "--source", str(bad), "--id", "9", "--output", str(tmp_path / "raw")],
                        capsys)
    line = _one_error_line(err, verb)
    assert rc == 2
    assert f"the source folder {bad} does not exist (check the --source path)" in line
    assert f"did you mean {tmp_path / 'msd_hippocampus'}?" in line
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("verb", VERBS)
def test_bad_layout_one_line(tmp_path, capsys, verb):
    """An existing folder that holds nothing of the layout: one line that names the folder."""
    src = tmp_path / "empty"
    src.mkdir()
    (src / "readme.txt").write_text("nothing here")
    rc, out, err = _run(["convert", verb, "--source", str(src), "--id", "9", "--output", str(tmp_path / "raw")],
                        capsys)
    line = _one_error_line(err, verb)
    assert rc == 2 and str(src) in line and "expected" in line
    assert not (tmp_path / "raw").exists()


def test_bad_arguments_and_existing_target_one_line(tmp_path, capsys):
    src = make_msd_flat(tmp_path / "flat", n=3)
    common = ["convert", "msd_flat", "--source", str(src), "--output", str(tmp_path / "raw"), "--skip-verify",
              "--num-processes", "1"]
    rc, _, err = _run(common + ["--id", "0"], capsys)
    assert rc == 2 and "dataset id must be an integer between 1 and 999" in _one_error_line(err, "msd_flat")
    rc, _, err = _run(common + ["--id", "4", "--test-fraction", "1.5"], capsys)
    assert rc == 2 and "--test-fraction must be in [0, 1)" in _one_error_line(err, "msd_flat")
    rc, _, err = _run(common + ["--id", "4", "--test-cases", "3"], capsys)
    assert rc == 2 and "at least one case must stay for training" in _one_error_line(err, "msd_flat")
    assert _run(common + ["--id", "4"], capsys)[0] == 0
    rc, _, err = _run(common + ["--id", "4"], capsys)
    assert rc == 2 and "pass --overwrite" in _one_error_line(err, "msd_flat")
    out_file = tmp_path / "file"
    out_file.write_text("")
    rc, _, err = _run(["convert", "msd_flat", "--source", str(src), "--id", "5", "--output", str(out_file)], capsys)
    assert rc == 2 and "is a file; pass a folder as --output" in _one_error_line(err, "msd_flat")


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    argv = ["convert", "la2018", "--source", str(tmp_path / "nope"), "--id", "9", "--output", str(tmp_path)]
    monkeypatch.delenv("NNUNET_EXT_DEBUG", raising=False)
    monkeypatch.delenv("nnUNet_ext_debug", raising=False)
    with pytest.raises(SourceNotFoundError):
        main(["--debug", *argv])
    monkeypatch.setenv("nnUNet_ext_debug", "1")
    with pytest.raises(SourceNotFoundError):
        main(argv)


def test_wrote_is_printed_once_and_last(tmp_path, capsys):
    src = make_msd_flat(tmp_path / "flat", n=2)
    rc, out, _ = _run(["convert", "msd_flat", "--source", str(src), "--id", "4", "--output", str(tmp_path / "raw"),
                       "--skip-verify", "--num-processes", "1"], capsys)
    lines = out.strip().splitlines()
    assert rc == 0 and [ln for ln in lines if "wrote" in ln] == [f"wrote {tmp_path / 'raw' / 'Dataset004_Hippocampus'}"]
    assert lines[-1].startswith("wrote ") and lines[-2].startswith("msd_flat: 2 cases converted (imagesTr=2")


# ---------------------------------------------------------------- corrupt files, --skip-bad
def test_truncated_jpeg_names_the_file_and_skip_bad(tmp_path, capsys):
    src = make_kvasir(tmp_path / "src", n=4)
    truncate(src / "images" / "cju0002.jpg", 0.4)
    raw = tmp_path / "raw"
    argv = ["convert", "kvasir_seg", "--source", str(src), "--id", "201", "--output", str(raw), "--num-processes", "1"]
    rc, out, err = _run(argv, capsys)
    line = _one_error_line(err, "kvasir_seg")
    assert rc == 2
    assert f"cannot read a corrupt or truncated file in {src / 'images' / 'cju0002.jpg'} (case 'cju0002')" in line
    assert "pass --skip-bad" in line
    assert not raw.exists() or os.listdir(raw) == []  # nothing written

    rc, out, err = _run(argv + ["--skip-bad"], capsys)
    assert rc == 0, err
    ds = raw / "Dataset201_KvasirSEG"
    assert sorted(os.listdir(ds / "labelsTr")) == ["cju0000.png", "cju0001.png", "cju0003.png"]
    assert sorted(os.listdir(ds / "imagesTr")) == ["cju0000_0000.png", "cju0001_0000.png", "cju0003_0000.png"]
    skipped = json.load(open(ds / "dataset.json"))["skipped_cases"]
    assert [(s["case"], s["file"]) for s in skipped] == [("cju0002", str(src / "images" / "cju0002.jpg"))]
    assert "truncated" in skipped[0]["reason"].lower()
    assert "skipped 1 case (--skip-bad" in out and f"cju0002: {src / 'images' / 'cju0002.jpg'}: " in out
    assert json.load(open(ds / "dataset.json"))["numTraining"] == 3


def test_corrupt_h5_in_a_worker_process_and_skip_bad_split(tmp_path, capsys):
    """A corrupt file read in a worker process reaches the caller as CorruptFileError; with skip_bad the
    case leaves the split too."""
    train = tuple(f"T{i}" for i in range(6))
    src = make_la(tmp_path / "src", train=train, test=("X1", "X2"))
    truncate(src / "T3" / "mri_norm2.h5", 0.3)
    with pytest.raises(CorruptFileError, match=r"T3/mri_norm2\.h5 \(case 'T3'\)") as e:
        convert_la2018(str(src), 406, raw_root=str(tmp_path / "raw"), num_processes=2, verify=False)
    assert e.value.case == "T3" and e.value.path == str(src / "T3" / "mri_norm2.h5")
    assert not (tmp_path / "raw").exists() or os.listdir(tmp_path / "raw") == []
    out = convert_la2018(str(src), 406, raw_root=str(tmp_path / "raw"), num_processes=2, verify=False, skip_bad=True)
    split = json.load(open(os.path.join(out, "splits_final.json")))
    assert split == [{"train": ["T0", "T1", "T2", "T4", "T5"], "val": ["X1", "X2"]}]
    assert [s["case"] for s in json.load(open(os.path.join(out, "dataset.json")))["skipped_cases"]] == ["T3"]


def test_corrupt_nifti_label_skip_bad_with_verification(tmp_path, capsys):
    src = make_msd_flat(tmp_path / "flat", n=3)
    truncate(src / "labels" / "hippocampus_001.nii.gz", 0.5)
    with pytest.raises(CorruptFileError, match="hippocampus_001.nii.gz"):
        convert_msd_flat(str(src), 17, raw_root=str(tmp_path / "raw"), num_processes=1)
    out = convert_msd_flat(str(src), 17, raw_root=str(tmp_path / "raw"), num_processes=1, skip_bad=True)
    assert sorted(os.listdir(os.path.join(out, "labelsTr"))) == ["hippocampus_000.nii.gz", "hippocampus_002.nii.gz"]
    assert sorted(os.listdir(os.path.join(out, "imagesTr"))) == ["hippocampus_000_0000.nii.gz",
                                                                 "hippocampus_002_0000.nii.gz"]


def test_unexpected_label_value_is_a_one_line_error(tmp_path, capsys):
    src = make_msd_flat(tmp_path / "flat", n=2)
    rc, _, err = _run(["convert", "msd_flat", "--source", str(src), "--id", "6", "--output", str(tmp_path / "raw"),
                       "--num-processes", "1", "--label-names", "bg", "fg"], capsys)
    line = _one_error_line(err, "msd_flat")
    assert rc == 2 and "label values [2] that dataset.json does not define" in line and "--label-names" in line


# ---------------------------------------------------------------- msd_flat test set
def test_msd_flat_test_fraction(tmp_path, capsys):
    src = make_msd_flat(tmp_path / "flat", n=5)
    out = convert_msd_flat(str(src), 18, raw_root=str(tmp_path / "raw"), num_processes=1, test_fraction=0.4)
    tr = sorted(f[:-7] for f in os.listdir(os.path.join(out, "labelsTr")))
    ts = sorted(f[:-7] for f in os.listdir(os.path.join(out, "labelsTs")))
    assert len(ts) == 2 and len(tr) == 3 and not set(tr) & set(ts)
    assert sorted(f[:-12] for f in os.listdir(os.path.join(out, "imagesTs"))) == ts
    assert sorted(f[:-12] for f in os.listdir(os.path.join(out, "imagesTr"))) == tr
    dj = json.load(open(os.path.join(out, "dataset.json")))
    assert dj["numTraining"] == 3 and dj["numTest"] == 2 and dj["test_selection"]["seed"] == 0
    assert not os.path.exists(os.path.join(out, "splits_final.json"))
    assert "held out 2 of 5 cases as the test set in imagesTs/labelsTs" in capsys.readouterr().out
    # deterministic: the same choice again (CLI, --test-cases 2 = 0.4 * 5), another with another seed
    rc = main(["convert", "msd_flat", "--source", str(src), "--id", "19", "--output", str(tmp_path / "raw"),
               "--num-processes", "1", "--skip-verify", "--test-cases", "2"])
    assert rc == 0 and sorted(os.listdir(tmp_path / "raw" / "Dataset019_Hippocampus" / "labelsTs")) == \
        [c + ".nii.gz" for c in ts]
    from nnunet_ext.conversion.msd import pick_test_cases
    ids = [f"hippocampus_{i:03d}" for i in range(260)]
    a = pick_test_cases(ids, 0.2, seed=0)
    assert len(a) == 52 and a == pick_test_cases(ids, 0.2, seed=0) and a != pick_test_cases(ids, 0.2, seed=1)
    assert pick_test_cases(ids[:3], 0.1) and pick_test_cases(ids, 0.0) == [] and pick_test_cases(ids) == []
    with pytest.raises(ConversionArgumentError, match="either --test-fraction or --test-cases"):
        pick_test_cases(ids, 0.2, 5)


# ---------------------------------------------------------------- the standalone scripts
@pytest.mark.parametrize("verb", VERBS)
def test_scripts_give_the_same_one_line(tmp_path, capsys, monkeypatch, verb):
    bad = tmp_path / "nope"
    args = ["--source", str(bad), "--id", "9", "--output", str(tmp_path / "raw")]
    rc, _, expected = _run(["convert", verb, *args], capsys)
    script = REPO / "dataset_conversion" / f"convert_{verb}.py"
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    assert e.value.code == rc == 2
    assert capsys.readouterr().err == expected
    monkeypatch.setattr(sys, "argv", [str(script), *args, "--debug"])  # --debug anywhere
    with pytest.raises(SourceNotFoundError):
        runpy.run_path(str(script), run_name="__main__")


def test_script_and_console_command_as_processes(tmp_path):
    args = ["--source", str(tmp_path / "nope"), "--id", "9", "--output", str(tmp_path / "raw")]
    env = {k: v for k, v in os.environ.items() if k not in ("NNUNET_EXT_DEBUG", "nnUNet_ext_debug")}
    script = subprocess.run([sys.executable, str(REPO / "dataset_conversion" / "convert_msd_flat.py"), *args],
                            capture_output=True, text=True, env=env, timeout=300)
    tool = subprocess.run([str(BIN / "nnunet-ext"), "convert", "msd_flat", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert script.returncode == tool.returncode == 2
    assert script.stderr == tool.stderr and len(tool.stderr.strip().splitlines()) == 1
    assert tool.stderr.startswith("nnunet-ext convert msd_flat: error: the source folder")
