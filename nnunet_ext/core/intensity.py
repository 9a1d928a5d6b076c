"""What range nnU-Net left the intensities in, for models pretrained on natural images (VAEs, backbones).

nnU-Net's ``RGBTo0_1Normalization`` and ``RescaleTo01Normalization`` give [0, 1] ("unit"); every other scheme
(z-score, CT) gives roughly zero mean and unit variance ("zscore"). A model then maps "unit" data by ``2x - 1`` or
uses it as it is, and "zscore" data by three standard deviations to its range.
"""
from __future__ import annotations

UNIT_RANGE_SCHEMES = ("RGBTo0_1Normalization", "RescaleTo01Normalization")


def intensity_mode(normalization_schemes) -> str:
    """``"unit"`` if every channel's scheme leaves [0, 1], else ``"zscore"``."""
    return "unit" if all(s in UNIT_RANGE_SCHEMES for s in normalization_schemes) else "zscore"
