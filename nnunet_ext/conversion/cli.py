"""The ``Converter`` object behind ``nnunet-ext convert NAME`` and the ``dataset_conversion/`` scripts.

Every converter gets the same common options from :func:`add_common_arguments`:
``--source DIR`` (required), ``--id N`` (required), ``--name NAME``, ``--output DIR`` (raw root,
default ``$nnUNet_raw``), ``--overwrite``, ``--num-processes N``, ``--skip-verify``, ``--skip-bad``
(all converters but ``msd``, which is nnU-Net's own) and, for converters that write a published
split, ``--install-split`` / ``--preprocessed DIR``.

``nnunet-ext convert NAME`` (:mod:`nnunet_ext.cli`) registers every converter of
``nnunet_ext.conversion.CONVERTERS``; the ``dataset_conversion/convert_NAME.py`` scripts run that same entry point
(``nnunet_ext.cli.main(["convert", NAME, ...])``), with the same one-line errors and exit status. This module
imports nothing above the conversion package.
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional

from .splits import install_split


def add_common_arguments(parser: argparse.ArgumentParser, with_split: bool = False, with_skip_bad: bool = True) -> None:
    """Add the options shared by all converters to ``parser``."""
    g = parser.add_argument_group("common conversion options")
    g.add_argument("--source", required=True, metavar="DIR", help="source dataset folder (never modified)")
    g.add_argument("--id", required=True, type=int, metavar="N", help="nnU-Net dataset id (1-999)")
    g.add_argument("--name", default=None, metavar="NAME",
                   help="dataset name (folder DatasetXXX_NAME); default: the converter's name for this dataset")
    g.add_argument("--output", default=None, metavar="DIR",
                   help="nnU-Net raw root to write into (default: $nnUNet_raw)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing DatasetXXX_NAME folder (it is only replaced once the new one is complete)")
    g.add_argument("--num-processes", type=int, default=2, metavar="N",
                   help="worker processes for conversion and the integrity check (default: 2)")
    g.add_argument("--skip-verify", action="store_true",
                   help="skip nnU-Net's dataset integrity check (not recommended)")
    if with_skip_bad:
        g.add_argument("--skip-bad", action="store_true",
                       help="skip cases whose files cannot be read (truncated, corrupt) or whose data do not fit, "
                            "convert the others and list the skipped ones in the summary and in dataset.json "
                            "('skipped_cases'); without it such a case stops the conversion and nothing is written")
    if with_split:
        g.add_argument("--install-split", action="store_true",
                       help="also copy splits_final.json to $nnUNet_preprocessed/DatasetXXX_NAME/ so that "
                            "nnU-Net uses the published split for fold 0")
        g.add_argument("--preprocessed", default=None, metavar="DIR",
                       help="nnU-Net preprocessed root for --install-split (default: $nnUNet_preprocessed)")


class Converter:
    """A named converter: ``add_arguments(parser)`` then ``run(args) -> dataset folder``.

    ``add_specific(parser)`` adds the converter's own options; ``convert(args)`` performs the
    conversion from the parsed namespace and returns the written dataset folder.
    """

    def __init__(self, name: str, help: str, add_specific: Optional[Callable[[argparse.ArgumentParser], None]],
                 convert: Callable[[argparse.Namespace], str], with_split: bool = False, with_skip_bad: bool = True):
        self.name = name
        self.help = help
        self.with_split = with_split
        self.with_skip_bad = with_skip_bad
        self._add_specific = add_specific
        self._convert = convert

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the common and the converter-specific options to ``parser``."""
        add_common_arguments(parser, with_split=self.with_split, with_skip_bad=self.with_skip_bad)
        if self._add_specific is not None:
            self._add_specific(parser)

    def run(self, args: argparse.Namespace) -> str:
        """Convert as described by ``args``; optionally install the split. Returns the dataset folder."""
        folder = self._convert(args)
        if self.with_split and getattr(args, "install_split", False):
            import os
            from .splits import SPLIT_FILE
            if os.path.isfile(os.path.join(folder, SPLIT_FILE)):
                print(f"{self.name}: installed split at {install_split(folder, args.preprocessed)}")
            else:
                print(f"{self.name}: no split was written for this dataset; nothing to install")
        return folder

    def __repr__(self) -> str:
        return f"Converter({self.name!r})"


def common_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments every ``convert_*`` function accepts, taken from ``args`` (``skip_bad``
    only where the converter has ``--skip-bad``)."""
    kw = dict(raw_root=args.output, overwrite=args.overwrite, num_processes=args.num_processes,
              verify=not args.skip_verify)
    if hasattr(args, "skip_bad"):
        kw["skip_bad"] = args.skip_bad
    return kw
