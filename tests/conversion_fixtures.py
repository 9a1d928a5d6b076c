"""Builders of tiny source datasets in the exact published layouts, for the conversion tests."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
NO_SHARED = "../shared/data not available: real-data test skipped"

DIRECTION_FLIP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def tree_checksums(root) -> Dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), to prove a source is untouched."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def write_nifti(path, arr, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path), True)


def rng(seed=0):
    return np.random.default_rng(seed)


def blob_label(shape, values=(1,), seed=0) -> np.ndarray:
    """A label array in which every value of ``values`` occurs (one stripe per value along the last axis)."""
    lab = np.zeros(shape, np.uint8)
    seg = max(2, shape[-1] // (len(values) + 1))
    for i, v in enumerate(values):
        lab[..., i * seg + 1: i * seg + seg] = v
    if seed % 2 and len(shape) > 1 and shape[-2] > 2:
        lab[..., :1, :] = 0  # vary the cases a little
    return lab


# ---------------------------------------------------------------- MSD
def make_msd_flat(root, n=3, with_json=False) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        shape = (5 + i, 8, 7)
        img = rng(i).integers(0, 255, shape).astype(np.uint8)
        lab = blob_label(shape, (1, 2), seed=i)
        geo = dict(spacing=(1.0, 1.5, 2.0), origin=(-1.0, 2.0, 3.0 + i), direction=DIRECTION_FLIP)
        write_nifti(root / "images" / f"hippocampus_{i:03d}.nii.gz", img, **geo)
        write_nifti(root / "labels" / f"hippocampus_{i:03d}.nii.gz", lab, **geo)
    if with_json:
        (root / "dataset.json").write_text(json.dumps({
            "name": "Hippocampus", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    return root


def make_msd_task(root, name="Task04_Hippocampus", n_train=3, n_test=1, channels=1) -> Path:
    """An original MSD task folder (4D NIfTI when ``channels`` > 1)."""
    task = Path(root) / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    for i in range(n_train + n_test):
        shape = (4, 6, 5)
        arr = rng(i).normal(size=((channels,) if channels > 1 else ()) + shape).astype(np.float32)
        sub = "imagesTr" if i < n_train else "imagesTs"
        img = sitk.GetImageFromArray(arr, isVector=False)
        img.SetSpacing((1.0, 1.0, 2.0) + ((1.0,) if channels > 1 else ()))
        sitk.WriteImage(img, str(task / sub / f"case_{i:03d}.nii.gz"))
        if i < n_train:
            write_nifti(task / "labelsTr" / f"case_{i:03d}.nii.gz", blob_label(shape, (1, 2), i),
                        spacing=(1.0, 1.0, 2.0))
    (task / "._case_000.nii.gz").write_bytes(b"")  # macOS resource fork files, found in real MSD tars
    (task / "dataset.json").write_text(json.dumps({
        "name": name.split("_")[1], "modality": {str(c): f"MR{c}" for c in range(channels)},
        "labels": {"0": "background", "1": "a", "2": "b"}, "numTraining": n_train, "numTest": n_test,
        "training": [], "test": []}))
    return task


# ---------------------------------------------------------------- 2D natural images
def _png(path, arr):
    Image.fromarray(arr).save(str(path))


def natural_pair(seed, size=(24, 32), rgb=True):
    """(image uint8, mask 0/255 uint8) with a non-empty foreground box."""
    r = rng(seed)
    h, w = size
    img = r.integers(0, 255, (h, w, 3) if rgb else (h, w)).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[2 + seed % 3: h // 2 + 3, 4: w // 2 + seed % 5] = 255
    return img, mask


def make_gms(root, name="busi", names=None, split=None, pkl_style="name_list", with_ext=False, rgb=False) -> Path:
    """A GMS dataset folder: images/, masks/ (same names, 0/255 PNG) and <name>_train_test_names.pkl."""
    ds = Path(root) / name
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    names = names or ["benign_1", "benign_2", "malignant_1", "normal_1", "benign_3", "normal_2"]
    split = split or {"train": names[:4], "test": names[4:]}
    for i, n in enumerate(names):
        img, mask = natural_pair(i, rgb=rgb)
        if n.startswith("normal"):
            mask[:] = 0
        _png(ds / "images" / f"{n}.png", img)
        _png(ds / "masks" / f"{n}.png", mask)
    conv = (lambda v: [x + ".png" for x in v]) if with_ext else list
    if pkl_style == "name_list":  # the GMS release
        data = {k: {"name_list": conv(v)} for k, v in split.items()}
    else:
        data = {k: conv(v) for k, v in split.items()}
    prefix = "kvasir" if name == "kvasir-instrument" else name
    with open(ds / f"{prefix}_train_test_names.pkl", "wb") as f:
        pickle.dump(data, f)
    return ds


def make_kvasir(root, n=4) -> Path:
    """Kvasir-SEG: images/*.jpg and masks/*.jpg (lossy JPEG masks)."""
    ds = Path(root) / "Kvasir-SEG"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    for i in range(n):
        img, mask = natural_pair(i)
        Image.fromarray(img).save(ds / "images" / f"cju{i:04d}.jpg", quality=80)
        Image.fromarray(np.stack([mask] * 3, -1)).save(ds / "masks" / f"cju{i:04d}.jpg", quality=60)
    (ds / "kavsir_bboxes.json").write_text("{}")
    return ds


def make_cvc(root, n=3, ext=".tif", sub="CVC-ClinicDB") -> Path:
    """CVC-ClinicDB: <sub>/Original/<n>.tif and <sub>/'Ground Truth'/<n>.tif."""
    ds = Path(root) / sub
    (ds / "Original").mkdir(parents=True)
    (ds / "Ground Truth").mkdir()
    for i in range(1, n + 1):
        img, mask = natural_pair(i)
        Image.fromarray(img).save(ds / "Original" / f"{i}{ext}")
        Image.fromarray(mask).save(ds / "Ground Truth" / f"{i}{ext}")
    return ds


# ---------------------------------------------------------------- 3D volumes in h5/npz
def _h5(path, image, label):
    import h5py
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)


def volume_pair(shape, values, seed):
    img = rng(seed).normal(size=shape).astype(np.float32)
    return img, blob_label(shape, values, seed)


def make_synapse(root, train=(("case0005", 4), ("case0006", 3)), test=(("case0001", 3), ("case0002", 2))) -> Path:
    """TransUNet's Synapse: train_npz/<case>_slice<NNN>.npz and test_vol_h5/<case>.npy.h5."""
    ds = Path(root) / "Synapse"
    (ds / "train_npz").mkdir(parents=True)
    for j, (case, n) in enumerate(train):
        img, lab = volume_pair((n, 16, 16), (1, 3, 5, 8), j)
        for z in range(n):
            np.savez(ds / "train_npz" / f"{case}_slice{z:03d}.npz", image=img[z], label=lab[z].astype(np.float32))
    for j, (case, n) in enumerate(test):
        img, lab = volume_pair((n, 16, 16), (2, 4, 6, 7), 10 + j)
        _h5(ds / "test_vol_h5" / f"{case}.npy.h5", img, lab.astype(np.float32))
    return ds


def make_la(root, train=("AAA", "BBB"), test=("CCC",), extra_listed=()) -> Path:
    """LA 2018 (UA-MT): <ID>/mri_norm2.h5 with (x, y, z) arrays, train.list and test.list."""
    ds = Path(root) / "LA"
    for j, case in enumerate(tuple(train) + tuple(test)):
        img, lab = volume_pair((12, 10, 6), (1,), j)  # (x, y, z)
        _h5(ds / case / "mri_norm2.h5", img, lab)
    (ds / "train.list").write_text("\n".join(tuple(train) + tuple(extra_listed)) + "\n")
    (ds / "test.list").write_text("\n".join(test) + "\n")
    return ds


def make_acdc_h5(root, volumes_dir="data") -> Path:
    """SSL4MIS ACDC: train/val/test.list, volumes in data/, slices in data/slices/ (patient003 only as slices)."""
    ds = Path(root) / "ACDC"
    lists = {"train": ["patient001_frame01", "patient001_frame12", "patient003_frame01"],
             "val": ["patient002_frame01"], "test": ["patient101_frame01"]}
    slices_dir = "ACDC_training_slices" if volumes_dir == "ACDC_training_volumes" else "data/slices"
    for j, name in enumerate(sum(lists.values(), [])):
        img, lab = volume_pair((3, 12, 10), (1, 2, 3), j)
        if name.startswith("patient003"):
            for z in range(3):
                _h5(ds / slices_dir / f"{name}_slice_{z}.h5", img[z], lab[z])
        else:
            _h5(ds / volumes_dir / f"{name}.h5", img, lab)
    for k, v in lists.items():
        (ds / f"{k}.list").write_text("\n".join(v) + "\n")
    return ds


def make_acdc_nifti(root) -> Path:
    """ACDC NIfTI release: training/patientXXX and testing/patientXXX with _gt files."""
    ds = Path(root) / "ACDC"
    spec = {"training": {"patient001": (1, 12), "patient002": (1, 9)},
            "testing": {"patient101": (1, 14), "patient102": (1,)}}
    k = 0
    for part, patients in spec.items():
        for p, frames in patients.items():
            d = ds / part / p
            d.mkdir(parents=True)
            (d / "Info.cfg").write_text("ED: 1\nES: 12\n")
            for fr in frames:
                k += 1
                img, lab = volume_pair((4, 12, 10), (1, 2, 3), k)
                geo = dict(spacing=(1.4, 1.4, 10.0), origin=(0.0, -5.0, 2.0 * k), direction=DIRECTION_FLIP)
                write_nifti(d / f"{p}_frame{fr:02d}.nii.gz", img, **geo)
                if p != "patient102":  # a test patient without ground truth (original 2017 release)
                    write_nifti(d / f"{p}_frame{fr:02d}_gt.nii.gz", lab, **geo)
            write_nifti(d / f"{p}_4d.nii.gz", np.zeros((2, 4, 12, 10), np.float32))
    return ds


# ---------------------------------------------------------------- layout variants as they circulate
def write_list(path, names, trailing_blank=False, suffix="", crlf=False):
    """A split list file: one name per line (+ ``suffix``), optionally a trailing blank line and CRLF line ends."""
    lines = [n + suffix for n in names] + ([""] if trailing_blank else [])
    nl = "\r\n" if crlf else "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes((nl.join(lines) + nl).encode())


def truncate(path, keep=0.5):
    """Cut a file to ``keep`` of its size (a truncated download)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])


def make_la_uamt(root, train=("AAA", "BBB"), test=("CCC",), case_folder="2018LA_Seg_Training Set",
                 list_suffix="", trailing_blank=True) -> Path:
    """LA 2018 as UA-MT's code reads it: ``data/<case_folder>/<ID>/mri_norm2.h5`` with ``data/train.list``
    and ``data/test.list`` one level above the case folder (beside it). Returns ``data``."""
    data = Path(root) / "data"
    for j, case in enumerate(tuple(train) + tuple(test)):
        img, lab = volume_pair((12, 10, 6), (1,), j)  # (x, y, z)
        _h5(data / case_folder / case / "mri_norm2.h5", img, lab)
    write_list(data / "train.list", train, trailing_blank, list_suffix)
    write_list(data / "test.list", test, trailing_blank, list_suffix)
    return data


#: SSL4MIS ACDC variant fixture: patients 1-2 train, 3 val, 4 test, frames 01 and 12 each
ACDC_SSL = {"train": ["patient001", "patient002"], "val": ["patient003"], "test": ["patient004"]}
ACDC_FRAMES = ("01", "12")


def acdc_ssl_volume(name: str):
    """The (image, label) volume (slices, H, W) of one ACDC frame in :func:`make_acdc_h5_circulating`."""
    seed = int(name[7:10]) * 10 + int(name[-2:])
    return volume_pair((3, 12, 10), (1, 2, 3), seed)


def make_acdc_h5_circulating(root, slices_dir="data", start=1, list_suffix="", trailing_blank=True,
                             all_slices=False) -> Path:
    """ACDC h5 as SSL4MIS copies circulate: train/val/test.list (volume names), volumes
    ``data/<patient>_frameYY.h5`` for the validation and test patients only, the training patients
    only as slices ``<slices_dir>/<case>_slice_<k>.h5`` with k from ``start`` (``slices_dir`` 'data':
    beside the volumes). ``all_slices``: slices of every frame (as in the full SSL4MIS copy)."""
    ds = Path(root) / "ACDC"
    lists = {}
    for part, patients in ACDC_SSL.items():
        lists[part] = [f"{p}_frame{f}" for p in patients for f in ACDC_FRAMES]
        for name in lists[part]:
            img, lab = acdc_ssl_volume(name)
            if part != "train":
                _h5(ds / "data" / f"{name}.h5", img, lab)
            if part == "train" or all_slices:
                for z in range(img.shape[0]):
                    _h5(ds / slices_dir / f"{name}_slice_{z + start}.h5", img[z], lab[z])
        write_list(ds / f"{part}.list", lists[part], trailing_blank, list_suffix)
    return ds


# ---------------------------------------------------------------- FLARE22 (abdominal CT, 13 organs)
FLARE22_SHAPE = (8, 16, 16)  # (z, y, x)


def flare22_volume(seed, label=False) -> np.ndarray:
    """A tiny CT-like int16 volume, or a label volume in which every organ value 1..13 occurs."""
    if label:
        lab = np.broadcast_to(np.arange(FLARE22_SHAPE[2]) % 14, FLARE22_SHAPE).astype(np.uint8)
        return np.roll(lab, seed, axis=1).copy()
    return rng(seed).integers(-1000, 1500, FLARE22_SHAPE).astype(np.int16)


def _flare22_nifti(path, seed, label=False):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, flare22_volume(seed, label), spacing=(0.78125, 0.75, 2.5), origin=(-120.0, 90.5, -300.0 + seed),
                direction=DIRECTION_FLIP)


FLARE22_UNLABELED = (("FLARE22_UnlabeledCase1-1000", ("Case_00001", "Case_00002")),
                     ("FLARE22_UnlabeledCase1001-2000", ("FLARE22_Tr_0051", "FLARE22_Tr_0052")))


def make_flare22(root, n_labelled=3, unlabeled=FLARE22_UNLABELED, n_validation=2,
                 labelled_dir="Training/FLARE22_LabeledCase50", pair=("images", "labels"),
                 validation_dir="Validation") -> Path:
    """The FLARE22 release: ``<labelled_dir>/{images,labels}/FLARE22_Tr_XXXX[_0000].nii.gz``, unlabelled
    images ``Training/<part>/<name>_0000.nii.gz`` (``unlabeled``: (folder, names) per part; both naming
    styles by default) and ``<validation_dir>/FLARE22_Ts_XXXX_0000.nii.gz``. Returns the release folder."""
    ds = Path(root) / "FLARE22"
    ds.mkdir(parents=True)
    (ds / "README.txt").write_text("FLARE22 release (fake)")
    lab = ds / labelled_dir
    for i in range(1, n_labelled + 1):
        _flare22_nifti(lab / pair[0] / f"FLARE22_Tr_{i:04d}_0000.nii.gz", i)
        _flare22_nifti(lab / pair[1] / f"FLARE22_Tr_{i:04d}.nii.gz", i, label=True)
    if n_labelled:
        (lab / pair[0] / ".DS_Store").write_bytes(b"\0")  # debris of copies made on macOS
    for k, (folder, names) in enumerate(unlabeled):
        for j, name in enumerate(names):
            _flare22_nifti(ds / "Training" / folder / f"{name}_0000.nii.gz", 100 + 10 * k + j)
    for i in range(1, n_validation + 1):
        _flare22_nifti(ds / validation_dir / f"FLARE22_Ts_{i:04d}_0000.nii.gz", 200 + i)
    return ds
