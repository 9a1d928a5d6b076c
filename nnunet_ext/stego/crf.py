r"""Dense CRF refinement of cluster / class probabilities (STEGO's post-processing), in torch.

STEGO (Hamilton et al., ICLR 2022) refines its cluster probabilities with the fully connected CRF of
Krähenbühl & Koltun (NIPS 2011): Gaussian edge potentials, mean-field inference, Potts compatibility, the
image as guide. ``dense_crf`` re-implements that in torch (CPU or CUDA, float32, no autograd).

Model
-----
Pixels :math:`i = 1..N` at positions :math:`p_i` (pixels) with colours :math:`I_i` (0..255), labels
:math:`l = 1..K`, class probabilities :math:`P_i(l)`.

* unary: :math:`U_i(l) = -\log P_i(l)` (P clamped to ``>= 1e-8``, so a label with probability 0 keeps
  :math:`U = 18.4`, more than the pairwise terms can overcome with the default weights);
* kernels (:math:`k(i, i) = 1`):

  - smoothness (Gaussian): :math:`k_1(i, j) = \exp(-|p_i - p_j|^2 / 2\theta_\gamma^2)`;
  - appearance (bilateral):
    :math:`k_2(i, j) = \exp(-|p_i - p_j|^2 / 2\theta_\alpha^2 - |I_i - I_j|^2 / 2\theta_\beta^2)`;

* Potts compatibility :math:`\mu(l, l') = [l \ne l']`.

Mean field, ``iterations`` times, starting from :math:`Q = \mathrm{softmax}(-U)`:

.. math::

    m^{(k)}_i(l) = d^{(k)\,-1/2}_i \sum_{j \ne i} k_k(i, j)\, d^{(k)\,-1/2}_j\, Q_j(l), \qquad
    d^{(k)}_i = \sum_{j \ne i} k_k(i, j)

    Q_i(l) \leftarrow \mathrm{softmax}_l\Big(-U_i(l) - \sum_{l'} \mu(l, l') \sum_k w_k\, m^{(k)}_i(l')\Big)

The self term :math:`j = i` is excluded. The kernels are **symmetrically normalised** (:math:`D^{-1/2} K D^{-1/2}`),
as in the implementation STEGO ran (pydensecrf, whose ``addPairwiseGaussian`` / ``addPairwiseBilateral`` default to
``NORMALIZE_SYMMETRIC``): the weights 3 and 4 are calibrated for normalised kernels (a message is then a weighted
*average* of Q, at most :math:`w_k`); with the raw sums of the paper (``normalize="none"``) the bilateral message of a
67-pixel kernel is thousands of times the unary and erases everything smaller than the kernel.

Defaults (STEGO's CRF settings): 10 iterations; Gaussian kernel weight :math:`w_1 = 3`, :math:`\theta_\gamma = 1`
pixel; bilateral kernel weight :math:`w_2 = 4`, :math:`\theta_\alpha = 67` pixels, :math:`\theta_\beta = 3` on 0..255
RGB values.

Computation (exact vs approximate)
----------------------------------
* Gaussian kernel: exact, a separable Gaussian convolution (truncated at 4 std, i.e. at weights below
  :math:`e^{-8} = 3\cdot10^{-4}`; zero padding: pixels outside the image do not exist), minus the self term.
* Bilateral kernel, :math:`N = HW \le` ``max_pixels``: exact, the full :math:`N \times N` kernel in blocks
  (never stored whole): :math:`O(N^2)` per iteration.
* Bilateral kernel, :math:`N >` ``max_pixels`` (**approximation**): image and :math:`d^{-1/2}Q` are pooled on a grid
  of :math:`s \times s` cells, the smallest integer :math:`s` with at most ``max_pixels`` cells (cell features: mean
  position in pixels, mean colour, i.e. the position std is in effect :math:`\theta_\alpha / s` cells); the sum over
  :math:`j` is taken over cells (each cell's summed values at its mean features, the self cell included) and
  upsampled bilinearly to the pixels, then the pixel's own term is subtracted (messages clamped at 0). Edges are
  therefore resolved at the cell size :math:`s` in the bilateral term (the Gaussian term stays exact).
  Default ``max_pixels`` = 8192: a 256 x 256 image (:math:`s = 3`, 86 x 86 cells) takes about 2.3 s with one
  CPU thread, 10 iterations, 2 classes (0.8 s with ``max_pixels=4096``; the exact cost grows as ``max_pixels``
  squared); raise it on a GPU for exactness on larger images. The exact path is computed in square blocks of the
  kernel matrix, each block used twice (K is symmetric), exponents clamped at -60 (no subnormal floats).

``image_to_guide`` turns any image (MRI, z-scored, CT, ...) into the 0..255 guide the colour std refers to.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

#: bilateral kernel computed exactly up to this many pixels, on a pooled grid above (see module docstring)
DEFAULT_MAX_PIXELS = 8192
#: STEGO's CRF parameters
STEGO_CRF = dict(iterations=10, gauss_weight=3.0, gauss_std=1.0, bilateral_weight=4.0, bilateral_xy_std=67.0,
                 bilateral_rgb_std=3.0)
_EPS_PROB = 1e-8
_BLOCK_CPU, _BLOCK_GPU = 256, 4096  # kernel block sizes (measured: 256 x 256 blocks stay in cache on a CPU)


def image_to_guide(image, low: float = 0.5, high: float = 99.5) -> torch.Tensor:
    """Any-range image ``(C, *spatial)`` -> float32 guide on 0..255 for ``dense_crf``.

    Per channel, over the whole image (all slices of a volume, so the slices of one volume share the mapping), the
    ``low`` / ``high`` percentiles (0.5 / 99.5) are mapped to 0 / 255 and values outside are clipped. A constant
    channel maps to 0; NaNs map to 0. One channel is replicated to three (an RGB grey image, as a grey image converted
    to RGB for pydensecrf). Returns a torch tensor (on the input's device for a tensor, on the CPU for an array).
    """
    t = torch.as_tensor(image)
    device = t.device
    a = t.detach().to("cpu", torch.float32).numpy() if isinstance(image, torch.Tensor) else \
        np.asarray(image, dtype=np.float32)
    if a.ndim < 2:
        raise ValueError(f"image must be (C, *spatial), got shape {a.shape}")
    out = np.zeros_like(a, dtype=np.float32)
    for c in range(a.shape[0]):
        ch = a[c]
        finite = ch[np.isfinite(ch)]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, [low, high])
        if hi > lo:
            out[c] = np.clip((np.nan_to_num(ch, nan=lo) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return torch.from_numpy(out).to(device)


def _gaussian_operator(shape: Tuple[int, int], std: float, device) -> Callable[[torch.Tensor], torch.Tensor]:
    """X (C, H, W) -> sum_{j != i} k(i, j) X_j, k a Gaussian of ``std`` pixels (separable, truncated at 4 std)."""
    r = max(1, int(math.ceil(4.0 * std)))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    g = torch.exp(-x * x / (2.0 * std * std))
    gh, gw = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def apply(X: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(X.unsqueeze(1), gh, padding=(0, r))
        y = F.conv2d(y, gw, padding=(r, 0)).squeeze(1)
        return y - X

    return apply


def _kernel_sum(feat: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Exact ``K @ X`` for ``K_ij = exp(-|f_i - f_j|^2 / 2)`` (self included). feat (N, D), X (N, C).

    K is never stored whole: square blocks, each computed once and used for both (a, b) and (b, a) (K is symmetric).
    """
    n = feat.shape[0]
    feat = feat - feat.mean(0, keepdim=True)  # smaller magnitudes: less cancellation in |f_i|^2 + |f_j|^2 - 2 f_i.f_j
    half_sq = 0.5 * (feat * feat).sum(1, keepdim=True)
    ones = torch.ones_like(half_sq)
    # one matmul gives the exponent: [f_i, -|f_i|^2/2, 1] . [f_j, 1, -|f_j|^2/2] = -|f_i - f_j|^2 / 2
    left = torch.cat([feat, -half_sq, ones], 1)
    right_t = torch.cat([feat, ones, -half_sq], 1).t().contiguous()
    out = torch.zeros(n, X.shape[1], dtype=X.dtype, device=X.device)
    block = _BLOCK_CPU if X.device.type == "cpu" else _BLOCK_GPU
    for a in range(0, n, block):
        for b in range(a, n, block):
            e = left[a:a + block] @ right_t[:, b:b + block]
            e.clamp_(min=-60.0, max=0.0).exp_()  # >= exp(-60): no subnormal floats (slow on CPUs), error < 1e-26
            out[a:a + block] += e @ X[b:b + block]
            if b != a:
                out[b:b + block] += e.t() @ X[a:a + block]
    return out


def _bilateral_operator(guide: torch.Tensor, xy_std: float, rgb_std: float,
                        max_pixels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """X (C, H, W) -> sum_{j != i} k(i, j) X_j, bilateral kernel; exact or on a pooled grid (module docstring)."""
    c, h, w = guide.shape
    device = guide.device
    s = 1
    while math.ceil(h / s) * math.ceil(w / s) > max(1, max_pixels):
        s += 1
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    fine = torch.cat([torch.stack([yy, xx]) / xy_std, guide / rgb_std])  # (2 + C, H, W)

    if s == 1:
        feat = fine.reshape(fine.shape[0], -1).t().contiguous()

        def apply(X: torch.Tensor) -> torch.Tensor:
            kx = _kernel_sum(feat, X.reshape(X.shape[0], -1).t().contiguous())
            return kx.t().reshape(X.shape) - X

        return apply

    def sum_pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t.unsqueeze(0), s, stride=s, ceil_mode=True, divisor_override=1).squeeze(0)

    count = sum_pool(torch.ones(1, h, w, device=device))
    hc, wc = count.shape[1:]
    feat = (sum_pool(fine) / count).reshape(fine.shape[0], -1).t().contiguous()

    def apply(X: torch.Tensor) -> torch.Tensor:
        coarse = _kernel_sum(feat, sum_pool(X).reshape(X.shape[0], -1).t().contiguous())
        coarse = coarse.t().reshape(X.shape[0], hc, wc)
        up = F.interpolate(coarse.unsqueeze(0), size=(hc * s, wc * s), mode="bilinear",
                           align_corners=False).squeeze(0)[:, :h, :w]
        return (up - X).clamp_(min=0.0)

    return apply


@torch.no_grad()
def dense_crf(image, probs, iterations: int = 10, gauss_weight: float = 3.0, gauss_std: float = 1.0,
              bilateral_weight: float = 4.0, bilateral_xy_std: float = 67.0, bilateral_rgb_std: float = 3.0,
              max_pixels: int = DEFAULT_MAX_PIXELS, normalize: str = "symmetric") -> torch.Tensor:
    """Refine ``probs`` (K, H, W), summing to 1 over K, with a dense CRF guided by ``image`` (model: module docstring).

    ``image``: (3, H, W) on 0..255 (RGB), or (1, H, W) (replicated to 3; any other channel count is used as is);
    see ``image_to_guide`` for non-RGB images. Tensors or arrays; the result is a float32 tensor (K, H, W) on
    ``probs``' device. ``iterations=0`` returns softmax(log P), i.e. the input probabilities.
    ``normalize``: ``"symmetric"`` (default, as pydensecrf) or ``"none"`` (raw kernel sums).
    ``max_pixels``: bilateral kernel exact up to this many pixels, on a pooled grid above.
    """
    if normalize not in ("symmetric", "none"):
        raise ValueError(f"normalize must be 'symmetric' or 'none', got {normalize!r}")
    p = torch.as_tensor(probs)
    device = p.device
    p = p.to(torch.float32)
    if p.ndim != 3:
        raise ValueError(f"probs must be (K, H, W), got shape {tuple(p.shape)}")
    g = torch.as_tensor(image).to(device=device, dtype=torch.float32)
    if g.ndim == 2:
        g = g.unsqueeze(0)
    if g.ndim != 3 or g.shape[1:] != p.shape[1:]:
        raise ValueError(f"image must be (C, H, W) with the H, W of probs {tuple(p.shape[1:])}, got {tuple(g.shape)}")
    if g.shape[0] == 1:
        g = g.expand(3, -1, -1)

    unary = -torch.log(p.clamp(min=_EPS_PROB))
    q = torch.softmax(-unary, 0)
    if iterations <= 0:
        return q

    h, w = p.shape[1:]
    kernels = []
    if gauss_weight:
        kernels.append((float(gauss_weight), _gaussian_operator((h, w), float(gauss_std), device)))
    if bilateral_weight:
        kernels.append((float(bilateral_weight), _bilateral_operator(g, float(bilateral_xy_std),
                                                                     float(bilateral_rgb_std), int(max_pixels))))
    norms: list = []
    for _, op in kernels:
        if normalize == "symmetric":
            deg = op(torch.ones(1, h, w, device=device))
            norms.append(deg.clamp(min=1e-12).rsqrt())
        else:
            norms.append(None)

    for _ in range(int(iterations)):
        message = torch.zeros_like(q)
        for (weight, op), n in zip(kernels, norms):
            message += weight * (op(q) if n is None else n * op(n * q))
        pairwise = message.sum(0, keepdim=True) - message  # Potts: sum_{l' != l} message(l')
        q = torch.softmax(-unary - pairwise, 0)
    return q


def refine_volume(guide: torch.Tensor, probs: torch.Tensor, device: Optional[str] = None, **crf_kwargs) -> torch.Tensor:
    """``dense_crf`` on each 2D slice along the first spatial axis: guide (C, S, H, W), probs (K, S, H, W)."""
    device = device or probs.device
    out = torch.empty(probs.shape, dtype=torch.float32)
    for z in range(probs.shape[1]):
        out[:, z] = dense_crf(guide[:, z].to(device), probs[:, z].to(device), **crf_kwargs).cpu()
    return out
