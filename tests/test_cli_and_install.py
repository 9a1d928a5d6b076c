"""The nnunet-ext command and the packaging: trainers folder found after a non-editable install."""
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from conftest import REPO, run_cli


def test_help_lists_subcommands(nnunet_env):
    out = run_cli("nnunet-ext", ["--help"], nnunet_env).stdout
    for sub in ("trainers-path", "trainers", "demo", "convert"):
        assert sub in out
    assert 'export nnUNet_extTrainer="$(nnunet-ext trainers-path)"' in out
    demo = run_cli("nnunet-ext", ["demo", "--help"], nnunet_env).stdout
    assert "--long" in demo and "--trainers" in demo


def test_trainers_path_holds_the_trainer_modules(nnunet_env):
    path = Path(run_cli("nnunet-ext", ["trainers-path"], nnunet_env).stdout.strip())
    assert (path / "ext_fd_trainers.py").is_file()
    listing = run_cli("nnunet-ext", ["trainers"], nnunet_env).stdout
    assert "nnUNetTrainerFD " in listing and "nnUNetTrainerFD_intraOnly" in listing
    assert "includes nnunet_ext's trainers" in listing


def test_trainers_fails_without_the_variable_and_describes_each_trainer_whole(monkeypatch, capsys):
    from nnunet_ext.cli import main

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    assert main(["trainers"]) == 2
    out, err = capsys.readouterr()
    assert "nnUNetTrainerFD_intraOnly" in out
    flare22 = next(line for line in out.splitlines() if line.startswith("nnUNetTrainerFLARE22 "))
    assert flare22.rstrip().endswith("."), flare22  # the whole first paragraph, not its first line
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnunet-ext trainers: error: nnUNet_extTrainer is not set"), err
    assert 'export nnUNet_extTrainer="$(nnunet-ext trainers-path)"' in err[0]


def test_trainers_name_says_whether_nnunet_finds_it(monkeypatch, capsys):
    from nnunet_ext.cli import main
    from nnunet_ext.paths import ext_trainer_env

    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_env()["nnUNet_extTrainer"])
    assert main(["trainers", "nnUNetTrainerFD_lambda0010"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nnUNetTrainerFD_lambda0010: nnU-Net finds it (") and "ext_fd_trainers.py" in out
    assert main(["trainers", "nnUNetTrainerCPS_lamda1p5"]) == 2  # misspelt
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nnU-Net will not find nnUNetTrainerCPS_lamda1p5" in err[0], err
    assert "closest names: nnUNetTrainerCPS_lambda1p5" in err[0], err
    monkeypatch.delenv("nnUNet_extTrainer")
    assert main(["trainers", "nnUNetTrainerFD"]) == 2  # ours, but nnU-Net is not told where they are
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "will not find nnUNetTrainerFD" in err[0], err
    assert 'export nnUNet_extTrainer="$(nnunet-ext trainers-path)"' in err[0]


def test_convert_subcommand_dispatches_to_converter(nnunet_env, tmp_path):
    import SimpleITK as sitk

    from nnunet_ext.core.synthetic import TEST_SPEC, make_phantom_3d

    src = tmp_path / "flat"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img, seg = make_phantom_3d(rng, TEST_SPEC)
        for arr, sub in ((img, "images"), (seg, "labels")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.0, 1.0, 2.5))
            sitk.WriteImage(im, str(src / sub / f"hippocampus_{i:03d}.nii.gz"))
    out = tmp_path / "raw"
    run_cli("nnunet-ext", ["convert", "msd_flat", "--source", src, "--id", 77, "--output", out,
                           "--num-processes", 1], nnunet_env)
    ds = out / "Dataset077_Hippocampus"
    assert len(list((ds / "imagesTr").glob("*_0000.nii.gz"))) == 3
    assert sitk.ReadImage(str(ds / "imagesTr" / "hippocampus_000_0000.nii.gz")).GetSpacing() == (1.0, 1.0, 2.5)
    again = run_cli("nnunet-ext", ["convert", "msd_flat", "--source", src, "--id", 77, "--output", out],
                    nnunet_env, check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr + again.stdout


def test_wheel_installs_trainers_folder(tmp_path):
    """A non-editable install ships trainers/ as package nnunet_ext_trainers, and trainers-path finds it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "wheel"), str(REPO)], check=True, capture_output=True)
    whl = next((tmp_path / "wheel").glob("nnunet_ext-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    assert "nnunet_ext_trainers/ext_fd_trainers.py" in names
    assert "nnunet_ext/fd/trainer.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    code = "from nnunet_ext.paths import trainers_path; print(trainers_path())"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    assert Path(out.stdout.strip()) == (site / "nnunet_ext_trainers").resolve()


def test_imports_point_one_way():
    """The lower packages import no method and no command-line module; no private name crosses a package."""
    import ast

    pkg = REPO / "nnunet_ext"
    methods = ("cps", "fd", "s2s2", "gms", "stego", "flare22")
    lower = {"core": methods, "unlabeled": methods, "conversion": methods, "evaluation": methods,
             "paths.py": methods + ("core", "unlabeled", "conversion", "evaluation"),
             "atomic_io.py": ("",), "errors.py": ("",)}
    problems = []
    for f in sorted(pkg.rglob("*.py")):
        rel = f.relative_to(pkg)
        own = rel.parts[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                continue
            parts = node.module.split(".")
            if parts[0] != "nnunet_ext" or len(parts) < 2:
                continue
            target = parts[1] + (".py" if len(parts) == 2 and (pkg / f"{parts[1]}.py").is_file() else "")
            if target == "cli.py":
                problems.append(f"{rel} imports nnunet_ext.cli (the top)")
            forbidden = lower.get(own, ())
            if own in ("atomic_io.py", "errors.py") or target.removesuffix(".py") in forbidden:
                problems.append(f"{rel} imports {node.module}")
            if target != own:
                problems += [f"{rel} imports the private {a.name} of {node.module}" for a in node.names
                             if a.name.startswith("_") and a.name != "__version__"]
    assert not problems, problems
