"""Small synthetic datasets in nnU-Net raw format.

Used by the test harness (fast, tiny) and by ``nnunet-ext demo`` (a hippocampus-like phantom).
Every dataset is multi-label (background + two adjacent structures) and written exactly as
nnU-Net expects: ``DatasetXXX_Name/{imagesTr,labelsTr}`` with ``_0000`` channel suffixes and a
``dataset.json``. 3D data is anisotropic by default so that nnU-Net's planner has something to
plan (it chooses a different spacing and network for 3d_fullres than for 2d).

The 3D phantom is a curved tube (the "hippocampus") whose front part is label 1 (anterior) and
back part label 2 (posterior), embedded in smooth textured tissue with a dark CSF-like cleft,
a multiplicative bias field and Rician-like noise. Shapes, curvature, position and contrast vary
per case, so a network has to learn shape and context rather than a fixed intensity threshold.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_ext.paths import dataset_folder_name

LABELS = {"background": 0, "anterior": 1, "posterior": 2}


@dataclass(frozen=True)
class PhantomSpec:
    """Geometry of a 3D phantom volume, in voxels (z, y, x) and mm spacing (z, y, x)."""

    shape: Tuple[int, int, int] = (36, 50, 36)
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: tube radius range (mm) at the head and at the tail
    head_radius: Tuple[float, float] = (5.0, 7.0)
    tail_radius: Tuple[float, float] = (2.5, 3.5)
    #: intensity step of the structure over the surrounding tissue (tissue mean 0.55)
    contrast: Tuple[float, float] = (0.12, 0.22)
    #: intensity step of the posterior part relative to the anterior part's (1.0 = same intensity)
    posterior_ratio: float = 0.6


#: small, anisotropic and easy: for tests that must learn something in a few dozen CPU iterations
TEST_SPEC = PhantomSpec(shape=(16, 32, 32), spacing=(2.5, 1.0, 1.0), head_radius=(7.0, 9.0), tail_radius=(5.5, 6.5),
                        contrast=(0.45, 0.6), posterior_ratio=1.8)
#: the field of view of MSD Hippocampus (~36 x 50 x 35 mm) at 1.5 mm, realistic contrast: for the demo
DEMO_SPEC = PhantomSpec(shape=(24, 32, 24), spacing=(1.5, 1.5, 1.5))


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (np.abs(n).max() + 1e-8)


def make_phantom_3d(rng: np.random.Generator, spec: PhantomSpec = PhantomSpec()):
    """One hippocampus-like 3D case. Returns ``(image float32, label uint8)``, both (z, y, x).

    The structure is a tube along y whose centre line bends in z and x; its radius (in mm) tapers
    from head to tail. Voxels of the tube with y below a random split point are 'anterior' (1),
    the rest 'posterior' (2). Distances are computed in mm so anisotropic spacing gives the same
    anatomy sampled more coarsely.
    """
    shape = np.array(spec.shape)
    sp = np.array(spec.spacing, dtype=np.float32)
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) * d for s, d in zip(shape, sp)], indexing="ij")
    ext = shape * sp
    # normalised position along the tube axis, 0 (front) .. 1 (back)
    y0, y1 = ext[1] * rng.uniform(0.12, 0.22), ext[1] * rng.uniform(0.78, 0.88)
    t = np.clip((yy - y0) / (y1 - y0), 0, 1)
    inside_y = (yy >= y0) & (yy <= y1)
    bend_z, bend_x = rng.uniform(-0.18, 0.18) * ext[0], rng.uniform(-0.2, 0.2) * ext[2]
    cz = ext[0] * rng.uniform(0.42, 0.58) + bend_z * np.sin(np.pi * t)
    cx = ext[2] * rng.uniform(0.40, 0.60) + bend_x * (t - 0.5) ** 2 * 4
    r_head, r_tail = rng.uniform(*spec.head_radius), rng.uniform(*spec.tail_radius)
    radius = r_head + (r_tail - r_head) * t
    dist = np.sqrt(((zz - cz) * rng.uniform(0.9, 1.1)) ** 2 + (xx - cx) ** 2)
    # irregular surface
    dist = dist + 1.2 * _smooth_noise(rng, tuple(shape), 2.0)
    tube = (dist <= radius) & inside_y
    split = rng.uniform(0.38, 0.55)
    label = np.zeros(tuple(shape), dtype=np.uint8)
    label[tube & (t < split)] = 1
    label[tube & (t >= split)] = 2

    # tissue: textured white/grey matter, a dark cleft (CSF) hugging the structure's upper side
    img = 0.55 + 0.12 * _smooth_noise(rng, tuple(shape), 3.0) + 0.05 * _smooth_noise(rng, tuple(shape), 1.0)
    cleft = (dist > radius) & (dist <= radius + 1.5) & inside_y & (zz > cz)
    img[cleft] = 0.15
    contrast = rng.uniform(*spec.contrast)
    img[label == 1] = 0.55 + contrast + 0.04 * rng.standard_normal()
    img[label == 2] = 0.55 + contrast * spec.posterior_ratio + 0.04 * rng.standard_normal()
    img = ndimage.gaussian_filter(img, 0.6 / sp)  # partial volume
    bias = 1.0 + 0.25 * _smooth_noise(rng, tuple(shape), 8.0)
    img = img * bias
    noise_sd = rng.uniform(0.03, 0.06)
    img = np.sqrt((img + noise_sd * rng.standard_normal(img.shape)) ** 2
                  + (noise_sd * rng.standard_normal(img.shape)) ** 2)
    scale = rng.uniform(200, 1200)  # MRI has no absolute unit: per-case arbitrary scale
    return (img * scale).astype(np.float32), label


def make_phantom_2d(rng: np.random.Generator, shape=(64, 64), rgb: bool = True):
    """One 2D natural-image-like case: a textured blob (label 1) with a rim-attached smaller blob
    (label 2) on a coloured textured background. Returns ``(image uint8 (y, x, 3) or (y, x), label uint8)``."""
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.12, 0.22) * h, rng.uniform(0.12, 0.22) * w
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.3 * _smooth_noise(rng, shape, 3.0)
    label = np.zeros(shape, np.uint8)
    label[d <= 1] = 1
    ang = rng.uniform(0, 2 * np.pi)
    sy, sx = cy + np.sin(ang) * ry, cx + np.cos(ang) * rx
    rs = rng.uniform(0.4, 0.6) * min(ry, rx)
    label[((yy - sy) ** 2 + (xx - sx) ** 2) <= rs ** 2] = 2
    base = rng.uniform(0.3, 0.5, size=3)
    colours = {1: rng.uniform(0.6, 0.8, size=3), 2: rng.uniform(0.1, 0.25, size=3)}
    img = np.empty(shape + (3,), np.float32)
    for c in range(3):
        ch = base[c] + 0.12 * _smooth_noise(rng, shape, 4.0)
        for k, col in colours.items():
            ch = np.where(label == k, col[c] + 0.05 * _smooth_noise(rng, shape, 2.0), ch)
        img[..., c] = ndimage.gaussian_filter(ch, 0.7) + 0.03 * rng.standard_normal(shape)
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    if not rgb:
        img = img.mean(-1).astype(np.uint8)
    return img, label


def write_dataset_json(folder: str, channel_names: dict, labels: dict, num_training: int, file_ending: str,
                       **extra) -> None:
    """Write nnU-Net v2's ``dataset.json``."""
    d = {"channel_names": {str(k): v for k, v in channel_names.items()}, "labels": labels,
         "numTraining": num_training, "file_ending": file_ending}
    d.update(extra)
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(d, f, indent=2)


def _write_cases(folder: str, name: str, counts, write_case) -> None:
    """Call ``write_case(split, case_id)`` for every case; ``counts`` = {"Tr": n_train, "Ts": n_test, ...}.
    The split ``"Unlabeled"`` (``imagesUnlabeled``) has no labels folder."""
    for split, n in counts.items():
        if n == 0:
            continue
        os.makedirs(os.path.join(folder, f"images{split}"), exist_ok=True)
        if split != "Unlabeled":
            os.makedirs(os.path.join(folder, f"labels{split}"), exist_ok=True)
        for i in range(n):
            write_case(split, f"{name.lower()}_{split.lower()}{i:03d}")


def _nifti_cases(raw_root: str, dataset_id: int, name: str, counts: dict, seed: int, make_case, spacing,
                 origin_range: float) -> str:
    """Write ``make_case(rng) -> (image, label)`` (z, y, x) cases as NIfTI with ``spacing`` (z, y, x) and a random
    origin in +-``origin_range`` mm; returns the dataset folder (``dataset.json`` is the caller's)."""
    import SimpleITK as sitk

    folder = os.path.join(raw_root, dataset_folder_name(dataset_id, name))
    rng = np.random.default_rng(seed)

    def write_case(split, case):
        img, seg = make_case(rng)
        origin = tuple(float(v) for v in rng.uniform(-origin_range, origin_range, 3))
        files = [(img, f"images{split}/{case}_0000.nii.gz")]
        if split != "Unlabeled":
            files.append((seg, f"labels{split}/{case}.nii.gz"))
        for arr, path in files:
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(tuple(float(v) for v in spacing[::-1]))  # sitk is (x, y, z)
            im.SetOrigin(origin)
            sitk.WriteImage(im, os.path.join(folder, path))

    _write_cases(folder, name, counts, write_case)
    return folder


def generate_dataset_3d(raw_root: str, dataset_id: int, name: str = "Phantom3D", num_train: int = 10,
                        num_test: int = 0, spec: PhantomSpec = None, seed: int = 0, num_unlabeled: int = 0) -> str:
    """Write a synthetic 3D MRI-like dataset (NIfTI, anisotropic spacing, 2 foreground labels).

    Test cases (if any) go to ``imagesTs``/``labelsTs``, unlabelled cases (if any) to ``imagesUnlabeled``
    (images only). ``spec`` defaults to ``TEST_SPEC``. Returns the dataset folder.
    """
    spec = spec or TEST_SPEC
    folder = _nifti_cases(raw_root, dataset_id, name, {"Tr": num_train, "Ts": num_test, "Unlabeled": num_unlabeled},
                          seed, lambda rng: make_phantom_3d(rng, spec), spec.spacing, 50.0)
    write_dataset_json(folder, {0: "MRI"}, dict(LABELS), num_train, ".nii.gz",
                       name=name, description="nnunet_ext synthetic hippocampus-like phantom (no real patient data)",
                       licence="CC0 (generated)")
    return folder


def _png_dataset(raw_root: str, dataset_id: int, name: str, num_train: int, num_test: int, seed: int, make_case,
                 channel_names: dict, labels: dict, description: str) -> str:
    """Write ``make_case(rng) -> (image uint8, label uint8)`` cases as PNG (nnU-Net's natural-image reader)."""
    from PIL import Image

    folder = os.path.join(raw_root, dataset_folder_name(dataset_id, name))
    rng = np.random.default_rng(seed)

    def write_case(split, case):
        img, seg = make_case(rng)
        Image.fromarray(img).save(os.path.join(folder, f"images{split}/{case}_0000.png"))
        Image.fromarray(seg).save(os.path.join(folder, f"labels{split}/{case}.png"))

    _write_cases(folder, name, {"Tr": num_train, "Ts": num_test}, write_case)
    write_dataset_json(folder, channel_names, labels, num_train, ".png", name=name, description=description,
                       licence="CC0 (generated)")
    return folder


def generate_dataset_2d(raw_root: str, dataset_id: int, name: str = "Phantom2D", num_train: int = 10,
                        num_test: int = 0, shape: Sequence[int] = (64, 64), seed: int = 0) -> str:
    """Write a synthetic 2D RGB dataset as PNG (nnU-Net's natural-image reader: RGB = 3 channels)."""
    return _png_dataset(raw_root, dataset_id, name, num_train, num_test, seed,
                        lambda rng: make_phantom_2d(rng, tuple(shape)), {0: "R", 1: "G", 2: "B"},
                        {"background": 0, "blob": 1, "satellite": 2}, "nnunet_ext synthetic 2D RGB phantom")


def make_texture_2d(rng: np.random.Generator, shape=(48, 48)):
    """One 2D grey image where each class has its own texture (for unsupervised segmentation): background = smooth
    mid-grey with fine noise, label 1 = a blob of high-contrast stripes (period 4 px, random orientation).
    Returns ``(image uint8 (y, x), label uint8)``."""
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.28, 0.38) * h, rng.uniform(0.28, 0.38) * w
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.3 * _smooth_noise(rng, shape, 3.0)
    label = (d <= 1).astype(np.uint8)
    ang = rng.uniform(0, np.pi)
    stripes = 0.5 + 0.45 * np.sign(np.sin(2 * np.pi * (np.cos(ang) * xx + np.sin(ang) * yy) / 4.0))
    background = 0.35 + 0.08 * _smooth_noise(rng, shape, 4.0)
    img = np.where(label == 1, stripes, background) + 0.03 * rng.standard_normal(shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), label


def generate_texture_dataset_2d(raw_root: str, dataset_id: int, name: str = "Texture2D", num_train: int = 12,
                                num_test: int = 0, shape: Sequence[int] = (48, 48), seed: int = 0) -> str:
    """Write a synthetic 2D grey PNG dataset with one texture per class (``make_texture_2d``), for STEGO."""
    return _png_dataset(raw_root, dataset_id, name, num_train, num_test, seed,
                        lambda rng: make_texture_2d(rng, tuple(shape)), {0: "grey"}, {"background": 0, "stripes": 1},
                        "nnunet_ext synthetic 2D texture phantom")


#: organs of the synthetic abdomen: label -> (name, HU, semi-axes in mm (z, y, x), centre offset in the organ block)
ABDOMEN_ORGANS = {1: ("liver", 140.0, (14.0, 20.0, 18.0), (0.0, -0.15, -0.2)),
                  2: ("kidney", 260.0, (9.0, 9.0, 8.0), (0.1, 0.3, 0.35)),
                  3: ("spleen", 60.0, (9.0, 10.0, 10.0), (-0.2, 0.3, -0.3))}


def make_abdomen_3d(rng: np.random.Generator, shape=(24, 64, 64), spacing=(3.0, 2.0, 2.0)):
    """One CT-like abdomen (HU) with a large background: air around an elliptic body (fat -100 HU, muscle 40 HU)
    and three organs (``ABDOMEN_ORGANS``) packed in a block that covers a small part of the field of view, at a
    random place inside the body. Returns ``(image float32, label uint8)``, both (z, y, x)."""
    shape, sp = np.array(shape), np.array(spacing, dtype=np.float32)
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) * d for s, d in zip(shape, sp)], indexing="ij")
    ext = shape * sp
    body = ((yy - ext[1] / 2) / (0.45 * ext[1])) ** 2 + ((xx - ext[2] / 2) / (0.47 * ext[2])) ** 2 <= 1
    img = np.full(tuple(shape), -1000.0, np.float32)
    img[body] = -100.0
    muscle = body & ((((yy - ext[1] / 2) / (0.38 * ext[1])) ** 2 + ((xx - ext[2] / 2) / (0.40 * ext[2])) ** 2) <= 1)
    img[muscle] = 40.0
    # the organ block: about 45 x 50 x 50 mm, centred at a random place of the inner body
    block = np.array([45.0, 50.0, 50.0])
    centre = np.array([rng.uniform(0.35, 0.65) * ext[0], rng.uniform(0.4, 0.6) * ext[1],
                       rng.uniform(0.4, 0.6) * ext[2]])
    label = np.zeros(tuple(shape), np.uint8)
    for value, (_, hu, axes, offset) in ABDOMEN_ORGANS.items():
        c = centre + np.array(offset) * block + rng.uniform(-2, 2, 3)
        a = np.array(axes) * rng.uniform(0.85, 1.15, 3)
        d = ((zz - c[0]) / a[0]) ** 2 + ((yy - c[1]) / a[1]) ** 2 + ((xx - c[2]) / a[2]) ** 2
        d = d + 0.25 * _smooth_noise(rng, tuple(shape), 2.0)
        organ = (d <= 1) & muscle
        label[organ] = value
        img[organ] = hu + rng.uniform(-10, 10)
    img = ndimage.gaussian_filter(img, 0.7 / sp) + 15.0 * rng.standard_normal(img.shape).astype(np.float32)
    return img.astype(np.float32), label


def generate_abdomen_dataset_3d(raw_root: str, dataset_id: int, name: str = "Abdomen3D", num_train: int = 10,
                                num_test: int = 0, shape: Sequence[int] = (24, 64, 64),
                                spacing: Sequence[float] = (3.0, 2.0, 2.0), seed: int = 0,
                                num_unlabeled: int = 0) -> str:
    """Write a synthetic multi-organ CT dataset (``make_abdomen_3d``; NIfTI, channel "CT", 3 organs): the organs
    fill a small part of each volume, as in abdominal CT, so coarse-to-fine inference has something to save."""
    folder = _nifti_cases(raw_root, dataset_id, name, {"Tr": num_train, "Ts": num_test, "Unlabeled": num_unlabeled},
                          seed, lambda rng: make_abdomen_3d(rng, tuple(shape), tuple(spacing)), spacing, 200.0)
    labels = {"background": 0, **{n: v for v, (n, *_) in ABDOMEN_ORGANS.items()}}
    write_dataset_json(folder, {0: "CT"}, labels, num_train, ".nii.gz", name=name,
                       description="nnunet_ext synthetic abdomen CT (no real patient data)", licence="CC0 (generated)")
    return folder
