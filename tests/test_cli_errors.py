"""Every nnunet-ext verb: an expected failure is one line 'nnunet-ext <verb>: error: ...' on stderr, exit 2."""
import pytest

from nnunet_ext.cli import main


@pytest.fixture
def empty_nnunet(tmp_path, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / k).mkdir()
        monkeypatch.setenv(k, str(tmp_path / k))
    monkeypatch.delenv("NNUNET_EXT_DEBUG", raising=False)
    monkeypatch.delenv("nnUNet_ext_debug", raising=False)
    return tmp_path


CASES = {
    "evaluate": lambda t: ["evaluate", "-gt", str(t / "missing_gt"), "-pred", str(t / "missing_pred")],
    "robustness": lambda t: ["robustness", "-d", "987", "-c", "2d", "-f", "0"],
    "benchmark": lambda t: ["benchmark", "-d", "987", "-c", "2d", "-tr", "nnUNetTrainer", "--iterations", "2",
                            "-o", str(t / "bench")],
    "plan-small": lambda t: ["plan-small", "-d", "987"],
    "convert msd_flat": lambda t: ["convert", "msd_flat", "--source", str(t / "no_such_folder"), "--id", "987"],
    "evaluate (bad argument)": lambda t: ["evaluate", "-gt", str(t)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_expected_failure_is_one_line(name, empty_nnunet, capsys):
    rc = main(CASES[name](empty_nnunet)) if "bad argument" not in name else None
    if rc is None:
        with pytest.raises(SystemExit) as e:
            main(CASES[name](empty_nnunet))
        rc = e.value.code
    err = capsys.readouterr().err.strip().splitlines()
    verb = name.split(" (")[0]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"nnunet-ext {verb}: error: "), err


def test_debug_shows_the_traceback(empty_nnunet):
    from nnunet_ext.errors import UserError
    with pytest.raises(UserError):
        main(["--debug", "robustness", "-d", "987", "-c", "2d", "-f", "0"])


@pytest.fixture
def a_file(empty_nnunet):
    f = empty_nnunet / "a_file"
    f.write_text("not a folder")
    (empty_nnunet / "gt").mkdir()
    (empty_nnunet / "pred").mkdir()
    return f


#: verbs whose output path is a file: refused in one line before any heavy work (models, training, data)
OUTPUT_IS_A_FILE = {
    "predict-c2f": lambda t, f: ["predict-c2f", "-i", str(t / "gt"), "-o", str(f), "-d", "987"],
    "evaluate": lambda t, f: ["evaluate", "-gt", str(t / "gt"), "-pred", str(t / "pred"), "-o", str(f)],
    "robustness": lambda t, f: ["robustness", "-d", "987", "-c", "2d", "-f", "0", "-tr", "nnUNetTrainer",
                                "-o", str(f)],
    "benchmark": lambda t, f: ["benchmark", "-d", "987", "-c", "2d", "-tr", "nnUNetTrainer", "--iterations", "2",
                               "-o", str(f)],
    "demo": lambda t, f: ["demo", "--workdir", str(f)],
    "s2s2-tune": lambda t, f: ["s2s2-tune", "-d", "987", "-c", "2d", "-o", str(f / "below_a_file")],
}


@pytest.mark.parametrize("verb", list(OUTPUT_IS_A_FILE))
def test_an_output_path_that_is_a_file_is_one_line(verb, empty_nnunet, a_file, capsys):
    rc = main(OUTPUT_IS_A_FILE[verb](empty_nnunet, a_file))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"nnunet-ext {verb}: error: ") and str(a_file) in err[0], err
    assert "is a file" in err[0], err


def test_predict_c2f_checks_its_input_folder_before_loading_models(empty_nnunet, capsys):
    rc = main(["predict-c2f", "-i", str(empty_nnunet / "no_images"), "-o", str(empty_nnunet / "out"), "-d", "987"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no_images does not exist" in err[0], err
    assert not (empty_nnunet / "out").exists()


def test_path_checks(tmp_path):
    import os

    from nnunet_ext.errors import UserError
    from nnunet_ext.paths import require_input_folder, require_output_file, require_output_folder

    (tmp_path / "f").write_text("x")
    assert require_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists(), "a check creates nothing"
    assert require_output_file(tmp_path / "new" / "x.csv") == tmp_path / "new" / "x.csv"
    with pytest.raises(UserError, match="is a file, not a folder"):
        require_output_folder(tmp_path / "f", "-o")
    with pytest.raises(UserError, match="cannot be created: .* is a file"):
        require_output_folder(tmp_path / "f" / "sub", "-o")
    with pytest.raises(UserError, match="is a folder, not a file"):
        require_output_file(tmp_path, "--csv")
    with pytest.raises(UserError, match="does not exist"):
        require_input_folder(tmp_path / "missing", "-i")
    with pytest.raises(UserError, match="is a file, not a folder"):
        require_input_folder(tmp_path / "f", "-i")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(UserError, match="no permission to write"):
                require_output_folder(locked / "out", "-o")
        finally:
            locked.chmod(0o700)
