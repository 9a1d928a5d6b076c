"""Every nnunet-ext verb: an expected failure is one line 'nnunet-ext <verb>: error: ...' on stderr, exit 2."""
import pytest

from nnunet_ext.cli import main


@pytest.fixture
def empty_nnunet(tmp_path, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / k).mkdir()
        monkeypatch.setenv(k, str(tmp_path / k))
    monkeypatch.delenv("NNUNET_EXT_DEBUG", raising=False)
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
