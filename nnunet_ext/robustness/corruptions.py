"""Image corruptions for robustness tests: what a scanner or a camera could hand to a trained model.

Every corruption acts on a *raw* image, as nnU-Net's image reader returns it (before nnU-Net's
cropping, resampling and normalisation), of shape ``(c, z, y, x)`` (3D) or ``(c, y, x)`` (2D), with the
voxel spacing in the same axis order (mm for medical images; 1 for photographs).

Severity ``0`` is the identity (the array is returned unchanged, as a copy); severities ``1`` to ``5``
use the five parameter values of :data:`CORRUPTIONS`:

| name | parameter (one value per severity) | unit | severities 1 .. 5 |
|---|---|---|---|
| ``gaussian_noise`` | sigma of additive Gaussian noise | fraction of the channel's foreground std | 0.1, 0.2, 0.3, 0.5, 0.8 |
| ``gaussian_blur`` | sigma of a Gaussian kernel, isotropic in mm | multiples of the finest voxel spacing | 0.5, 1, 1.5, 2, 3 |
| ``contrast`` | factor on the deviations from the foreground mean | dimensionless (1 = unchanged) | 0.8, 0.65, 0.5, 0.35, 0.2 |
| ``gamma`` | exponent on the intensity mapped to [0, 1] by the robust range | dimensionless (1 = unchanged) | 1.2, 1.4, 1.7, 2.0, 2.5 |
| ``bias_field`` | peak absolute log gain of a smooth multiplicative field (order-3 polynomial, torchio ``BiasField``) | natural log (0.3: gain between 0.74 and 1.35) | 0.1, 0.2, 0.3, 0.45, 0.6 |
| ``resolution`` | target voxel size (down- then up-sampling) | multiples of the finest voxel spacing | 1.5, 2, 3, 4, 6 |
| ``motion`` | (max rotation, max translation) of each of 3 rigid movements during the acquisition (torchio ``Motion``) | (degrees, mm) | (1, 1), (2, 2), (3, 3), (5, 5), (8, 8) |
| ``ghosting`` | k-space attenuation of every 4th phase-encoding plane (torchio ``Ghosting``) | fraction (0: no ghosts, 1: planes removed) | 0.2, 0.35, 0.5, 0.7, 0.9 |
| ``jpeg`` | JPEG quality (PIL) | PIL quality, 1 .. 95 (lower = stronger) | 60, 40, 25, 15, 8 |

Definitions (``x`` one channel, ``s`` the severity's parameter value; see :func:`intensity_stats` for
``lo``, ``hi``, ``mean`` and ``std``, which make the intensity corruptions mean the same on CT (HU), MRI
(arbitrary units) and photographs (0..255)):

- ``gaussian_noise``: ``x + s * std * n`` with ``n`` standard normal, independent per voxel and channel.
- ``gaussian_blur``: Gaussian filter with a sigma of ``s * min(spacing)`` mm in every axis (``s * min(spacing) /
  spacing[axis]`` voxels), so the blur is isotropic in physical space on anisotropic volumes.
- ``contrast``: ``mean + s * (x - mean)``. nnU-Net z-scores MRI-like channels per image, which undoes a global
  linear contrast change: expect flat curves there; CT (fixed window) and RGB (/255) do see it.
- ``gamma``: with ``t = (x - lo) / (hi - lo)`` and ``tc = clip(t, 0, 1)``:
  ``x + (hi - lo) * (tc ** s - tc)`` (darkens mid-tones; values outside the robust range are shifted, not clipped).
- ``bias_field``: ``x * exp(b)`` with ``b`` an order-3 polynomial in the normalised coordinates (torchio's
  ``BiasField``), random coefficients scaled so that ``max |b| = s``. 3D single-channel images only (MRI).
- ``resolution``: every axis whose spacing is finer than ``s * min(spacing)`` is resampled to that voxel size
  (Gaussian anti-aliasing with sigma ``(f - 1) / 2`` voxels, ``f`` the axis' down-sampling factor, then linear
  interpolation onto the coarse grid) and back to the original grid with linear interpolation. Axes already
  coarser (e.g. the slice axis of an anisotropic volume) are left alone.
- ``motion``: torchio's ``Motion``: 3 rigid movements at 1/4, 1/2 and 3/4 of the acquisition; their rotations
  (about the three axes) and translations (mm) are random with each component uniform in ``[-1, 1]`` times the
  severity's maximum; the k-space of the moved images is stitched along the last axis. 3D single-channel only.
- ``ghosting``: torchio's ``Ghosting``: every 4th plane of k-space along the phase-encoding axis (``y``, the
  second spatial axis of ``(z, y, x)``) is multiplied by ``1 - s``; the central plane is kept. 3D single-channel only.
- ``jpeg``: encode with PIL at JPEG quality ``s`` and decode. 2D RGB (3-channel) images only; intensities outside
  0..255 are min-max mapped to 0..255 for the codec and back.

Determinism: the random numbers are drawn from ``numpy.random.default_rng([seed, crc32(name)])``: the same
``(seed, name)`` gives the same draws at every severity, so severity ``k + 1`` is the same perturbation as
``k``, only stronger (noise: the same noise field, scaled). The pipeline uses a seed derived from the case id,
so a corruption is a function of (case, corruption, severity).

If the input is an integer array (e.g. an 8-bit photograph) the result is rounded and clipped to the range
of that integer type, as a camera would deliver it; ``value_range`` clips float results to a given range.

Which corruptions apply (:func:`available_corruptions`): the generic five (noise, blur, contrast, gamma,
resolution) everywhere; the MRI ones (``bias_field``, ``motion``, ``ghosting``) only to 3D single-channel images;
``jpeg`` only to 2D images with 3 channels (RGB).
"""
from __future__ import annotations

import io
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: name -> parameter value for severities 1..5 (severity 0 is the identity). Units: module docstring.
CORRUPTIONS: Dict[str, list] = {
    "gaussian_noise": [0.1, 0.2, 0.3, 0.5, 0.8],
    "gaussian_blur": [0.5, 1.0, 1.5, 2.0, 3.0],
    "contrast": [0.8, 0.65, 0.5, 0.35, 0.2],
    "gamma": [1.2, 1.4, 1.7, 2.0, 2.5],
    "bias_field": [0.1, 0.2, 0.3, 0.45, 0.6],
    "resolution": [1.5, 2.0, 3.0, 4.0, 6.0],
    "motion": [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0), (5.0, 5.0), (8.0, 8.0)],
    "ghosting": [0.2, 0.35, 0.5, 0.7, 0.9],
    "jpeg": [60, 40, 25, 15, 8],
}

#: one line per corruption: what the parameter is, for reports and ``--help``
DESCRIPTIONS: Dict[str, str] = {
    "gaussian_noise": "additive Gaussian noise, sigma as a fraction of the foreground std",
    "gaussian_blur": "Gaussian blur, sigma in multiples of the finest voxel spacing (isotropic in mm)",
    "contrast": "contrast reduction: deviations from the foreground mean multiplied by the factor",
    "gamma": "gamma exponent on the robust-range-normalised intensity",
    "bias_field": "smooth multiplicative bias field (torchio BiasField, order 3), peak |log gain|",
    "resolution": "down- then up-sampling to a voxel size of factor x the finest spacing",
    "motion": "MRI rigid motion during acquisition (torchio Motion), (max degrees, max mm) of 3 movements",
    "ghosting": "MRI ghosting (torchio Ghosting, 4 ghosts along y), k-space attenuation",
    "jpeg": "JPEG compression (PIL), quality",
}

NUM_SEVERITIES = 5
#: corruptions for every image
GENERIC = ("gaussian_noise", "gaussian_blur", "contrast", "gamma", "resolution")
#: MRI acquisition artefacts: 3D single-channel images only
MRI_ONLY = ("bias_field", "motion", "ghosting")
#: photographs: 2D images with 3 channels only
RGB_ONLY = ("jpeg",)

BIAS_FIELD_ORDER = 3
MOTION_NUM_MOVEMENTS = 3
GHOSTING_NUM_GHOSTS = 4
GHOSTING_AXIS = 1  # spatial axis of (z, y, x): y, taken as the phase-encoding direction


def available_corruptions(num_channels: int, is_2d: bool) -> List[str]:
    """Names of the corruptions that apply to images with ``num_channels`` channels, 2D or 3D, in table order."""
    out = []
    for name in CORRUPTIONS:
        if name in MRI_ONLY and (is_2d or num_channels != 1):
            continue
        if name in RGB_ONLY and not (is_2d and num_channels == 3):
            continue
        out.append(name)
    return out


def parameter(name: str, severity: int):
    """The table's parameter value for ``name`` at ``severity`` (1..5); ``None`` for severity 0."""
    _check(name, severity)
    return None if severity == 0 else CORRUPTIONS[name][severity - 1]


def _check(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if int(severity) != severity or not 0 <= severity <= NUM_SEVERITIES:
        raise ValueError(f"severity must be an integer 0..{NUM_SEVERITIES}, got {severity!r}")


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def intensity_stats(channel: np.ndarray) -> Tuple[float, float, float, float]:
    """``(lo, hi, mean, std)`` of one channel: the image's own intensity scale.

    ``lo``, ``hi`` = 0.5th and 99.5th percentiles (the robust range). The *foreground* is the voxels above
    ``lo + 0.1 * (hi - lo)`` (excludes air in CT, the empty background in MRI; in photographs nearly everything);
    if it holds fewer than 1 % of the voxels, all voxels are used. ``mean``, ``std`` are the foreground's
    mean and standard deviation (``std`` falls back to ``hi - lo``, then 1, on constant images).
    """
    x = np.asarray(channel, dtype=np.float64).ravel()
    lo, hi = (float(v) for v in np.percentile(x, [0.5, 99.5]))
    fg = x[x > lo + 0.1 * (hi - lo)] if hi > lo else x
    if fg.size < max(1, 0.01 * x.size):
        fg = x
    mean, std = float(fg.mean()), float(fg.std())
    if not std > 0:
        std = hi - lo if hi > lo else 1.0
    return lo, hi, mean, std


def corrupt(image: np.ndarray, name: str, severity: int, spacing: Optional[Sequence[float]] = None, seed: int = 0,
            value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Corrupt ``image`` (``(c, z, y, x)`` or ``(c, y, x)``) with corruption ``name`` at ``severity`` (0..5).

    ``spacing``: voxel size per spatial axis, same order as the array (default 1). ``seed``: the random
    draws depend only on ``(seed, name)`` (see the module docstring). ``value_range``: clip the result to it.
    Returns a new array of the input's shape and dtype (integer inputs are rounded and clipped to their type).
    Raises ``ValueError`` for an unknown name, a severity outside 0..5 or a corruption that does not apply to
    this kind of image (:func:`available_corruptions`).
    """
    _check(name, severity)
    image = np.asarray(image)
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (c, y, x) or (c, z, y, x), got shape {image.shape}")
    is_2d = image.ndim == 3
    if name not in available_corruptions(image.shape[0], is_2d):
        avail = ", ".join(available_corruptions(image.shape[0], is_2d))
        raise ValueError(f"corruption {name!r} does not apply to {'2D' if is_2d else '3D'} images with "
                         f"{image.shape[0]} channel(s); available: {avail}")
    spacing = np.ones(image.ndim - 1) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (image.ndim - 1,):
        raise ValueError(f"spacing {tuple(spacing)} does not match the image's {image.ndim - 1} spatial axes")
    if severity == 0:
        return image.copy()
    p = CORRUPTIONS[name][severity - 1]
    rng = _rng(seed, name)
    x = image.astype(np.float32)
    out = _FUNCS[name](x, p, spacing, rng)
    if value_range is not None:
        out = np.clip(out, value_range[0], value_range[1])
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(image.dtype, copy=False)


# ---------------------------------------------------------------------------------------------- definitions
def _noise(x, s, spacing, rng):
    n = rng.standard_normal(x.shape, dtype=np.float32)
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        out[c] = x[c] + s * intensity_stats(x[c])[3] * n[c]
    return out


def _blur(x, s, spacing, rng):
    from scipy import ndimage

    sigma = s * spacing.min() / spacing
    return np.stack([ndimage.gaussian_filter(ch, sigma, mode="nearest") for ch in x])


def _contrast(x, s, spacing, rng):
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        mean = intensity_stats(x[c])[2]
        out[c] = mean + s * (x[c] - mean)
    return out


def _gamma(x, s, spacing, rng):
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        lo, hi = intensity_stats(x[c])[:2]
        if not hi > lo:
            out[c] = x[c]
            continue
        tc = np.clip((x[c] - lo) / (hi - lo), 0, 1)
        out[c] = x[c] + (hi - lo) * (tc ** s - tc)
    return out


def _resolution(x, s, spacing, rng):
    from scipy import ndimage

    target = s * spacing.min()
    factors = np.maximum(target / spacing, 1.0)  # down-sampling factor per axis (1 = axis untouched)
    shape = np.array(x.shape[1:])
    small = np.maximum(np.round(shape / factors), 1).astype(int)
    factors = shape / small  # the factors actually realised on the integer grid
    out = []
    for ch in x:
        sm = ndimage.gaussian_filter(ch, np.maximum(factors - 1, 0) / 2, mode="nearest")
        lowres = ndimage.zoom(sm, small / shape, order=1, mode="nearest", grid_mode=True)
        back = ndimage.zoom(lowres, shape / np.array(lowres.shape), order=1, mode="nearest", grid_mode=True)
        out.append(_fit(back, tuple(shape)))
    return np.stack(out).astype(np.float32)


def _fit(a: np.ndarray, shape) -> np.ndarray:
    """Crop or edge-pad ``a`` to ``shape`` (guards against off-by-one rounding in ``ndimage.zoom``)."""
    a = a[tuple(slice(0, n) for n in shape)]
    pad = [(0, n - m) for n, m in zip(shape, a.shape)]
    return np.pad(a, pad, mode="edge") if any(p[1] for p in pad) else a


def _tio_image(x, spacing):
    import torch
    import torchio as tio

    affine = np.diag([*map(float, spacing), 1.0])
    return tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), affine=affine)


def _bias_field(x, s, spacing, rng):
    import torchio as tio

    n_coef = sum(1 for i in range(BIAS_FIELD_ORDER + 1) for j in range(BIAS_FIELD_ORDER + 1 - i)
                 for _ in range(BIAS_FIELD_ORDER + 1 - i - j))
    coef = rng.uniform(-1, 1, n_coef)
    log_field = np.log(tio.BiasField.generate_bias_field(x, BIAS_FIELD_ORDER, coef.tolist()))
    peak = float(np.abs(log_field).max())
    if peak > 0:
        coef = coef * (s / peak)  # the field's log is linear in the coefficients: max |log gain| = s
    out = tio.BiasField(coef.tolist(), BIAS_FIELD_ORDER)(_tio_image(x, spacing))
    return out.data.numpy().astype(np.float32)


def _motion(x, s, spacing, rng):
    import torchio as tio

    max_deg, max_mm = s
    n = MOTION_NUM_MOVEMENTS
    degrees = rng.uniform(-1, 1, (n, 3)) * max_deg
    translation = rng.uniform(-1, 1, (n, 3)) * max_mm
    times = np.linspace(0, 1, n + 2)[1:-1]
    t = tio.Motion(degrees=degrees, translation=translation, times=times, image_interpolation="linear")
    return t(_tio_image(x, spacing)).data.numpy().astype(np.float32)


def _ghosting(x, s, spacing, rng):
    import torchio as tio

    t = tio.Ghosting(num_ghosts=GHOSTING_NUM_GHOSTS, axis=GHOSTING_AXIS, intensity=float(s), restore=None)
    return t(_tio_image(x, spacing)).data.numpy().astype(np.float32)


def _jpeg(x, quality, spacing, rng):
    from PIL import Image

    lo, hi = float(x.min()), float(x.max())
    in_8bit = lo >= 0 and hi <= 255
    scale = (lambda a: a) if in_8bit else (lambda a: (a - lo) / max(hi - lo, 1e-12) * 255)
    unscale = (lambda a: a) if in_8bit else (lambda a: a / 255 * (hi - lo) + lo)
    rgb = np.clip(np.rint(scale(x)), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    return unscale(dec).astype(np.float32)


_FUNCS = {
    "gaussian_noise": _noise,
    "gaussian_blur": _blur,
    "contrast": _contrast,
    "gamma": _gamma,
    "bias_field": _bias_field,
    "resolution": _resolution,
    "motion": _motion,
    "ghosting": _ghosting,
    "jpeg": _jpeg,
}
assert set(_FUNCS) == set(CORRUPTIONS)
