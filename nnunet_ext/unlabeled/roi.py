"""Configurations whose cases are cropped to a region of interest: the method that plans one hands its crop in.

nnU-Net preprocesses a configuration with the class its plans name, which must live in nnU-Net's package. A method
whose configuration crops each case to a region of interest before nnU-Net's steps (coarse-to-fine's ``3d_fine``,
:mod:`nnunet_ext.flare22`) preprocesses with a class of its own. ``preprocess-unlabeled`` must crop the unlabelled
cases of such a configuration the same way, to one mask per case (``--roi-masks DIR``). This package imports no
method: the method describes its crop as an :class:`ROICrop` and registers it here (``nnunet_ext.flare22.cli`` does,
when ``nnunet-ext`` builds its verbs); :func:`nnunet_ext.unlabeled.preprocess.preprocess_unlabeled` takes the crops
as an argument. Light imports only: this module is read when ``nnunet-ext`` starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence


@dataclass(frozen=True)
class ROICrop:
    """A method's crop of its configurations' cases to a region of interest.

    ``applies(configuration)``: whether a configuration of the plans (its dict, ``plans["configurations"][C]``)
    is cropped. ``preprocessor()``: the preprocessor class (nnU-Net's ``DefaultPreprocessor`` interface; its
    ``run_case`` gets the case's mask file as the segmentation to crop to), imported only when it is needed.
    ``masks_hint(dataset, configuration_name, configuration, images_folder)``: one sentence that says what this
    configuration is and how to make one mask per case (shown when ``--roi-masks`` is missing).
    """

    applies: Callable[[dict], bool]
    preprocessor: Callable[[], type]
    masks_hint: Callable[[str, str, dict, str], str]


_REGISTERED: List[ROICrop] = []


def register_roi_crop(crop: ROICrop) -> None:
    """Hand a method's crop to ``preprocess-unlabeled`` (once; registering the same crop again changes nothing)."""
    if crop not in _REGISTERED:
        _REGISTERED.append(crop)


def registered_roi_crops() -> List[ROICrop]:
    """The crops registered so far, in order."""
    return list(_REGISTERED)


def roi_crop_for(configuration: dict, crops: Sequence[ROICrop]) -> Optional[ROICrop]:
    """The first of ``crops`` that applies to ``configuration`` (a configuration dict of the plans), or None."""
    return next((c for c in crops if c.applies(configuration)), None)
