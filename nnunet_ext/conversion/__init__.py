"""Dataset converters: published dataset layouts -> nnU-Net v2 raw datasets.

``CONVERTERS`` maps a converter name to a :class:`~nnunet_ext.conversion.cli.Converter` (used by
``nnunet-ext convert NAME --source DIR --id N`` and the ``dataset_conversion/`` scripts); each
converter is also a plain function (``convert_msd_flat``, ``convert_kvasir_seg``, ...).

All converters share the guarantees of :mod:`nnunet_ext.conversion.build`: the source is never
modified; an existing dataset is only replaced with ``overwrite``; output is written to a temporary
folder next to the target and renamed at the end; the result is validated with nnU-Net's
``verify_dataset_integrity`` and the case count per split is reported. Every expected failure is a
:class:`nnunet_ext.errors.UserError` (see :mod:`nnunet_ext.conversion.errors`), printed by
``nnunet-ext`` as one line; ``skip_bad`` / ``--skip-bad`` skips cases with unreadable files. A published split
is written to ``splits_final.json`` in the raw dataset folder; :func:`install_split` copies it to
``$nnUNet_preprocessed/DatasetXXX_Name/`` where nnU-Net uses it for fold 0.
"""
from typing import Dict

from .acdc import ACDC, ACDC_H5, convert_acdc, convert_acdc_h5
from .build import Case, DatasetInfo, build_dataset, prepare_target
from .cli import Converter, add_common_arguments
from .errors import (BadCaseError, CaseDataError, ConversionArgumentError, ConversionError, CorruptFileError,
                     IntegrityCheckError, SourceLayoutError, SourceNotFoundError, SplitNotFoundError,
                     TargetExistsError)
from .flare22 import FLARE22, convert_flare22
from .gms import GMS, convert_gms
from .la2018 import LA2018, convert_la2018
from .msd import MSD, MSD_FLAT, convert_msd, convert_msd_flat
from .polyp import CVC_CLINICDB, KVASIR_SEG, convert_cvc_clinicdb, convert_kvasir_seg
from .splits import SplitPlan, install_split
from .stego import STEGO, convert_stego
from .synapse import SYNAPSE, convert_synapse

CONVERTERS: Dict[str, Converter] = {
    c.name: c for c in (GMS, KVASIR_SEG, CVC_CLINICDB, SYNAPSE, ACDC, ACDC_H5, LA2018, MSD, MSD_FLAT, FLARE22, STEGO)
}

__all__ = [
    "CONVERTERS", "Converter", "add_common_arguments", "SourceLayoutError", "TargetExistsError", "install_split",
    "ConversionError", "SourceNotFoundError", "ConversionArgumentError", "SplitNotFoundError", "IntegrityCheckError",
    "BadCaseError", "CorruptFileError", "CaseDataError",
    "SplitPlan", "Case", "DatasetInfo", "build_dataset", "prepare_target",
    "convert_gms", "convert_kvasir_seg", "convert_cvc_clinicdb", "convert_synapse", "convert_acdc",
    "convert_acdc_h5", "convert_la2018", "convert_msd", "convert_msd_flat", "convert_flare22", "convert_stego",
]
