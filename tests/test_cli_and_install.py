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
