"""Convert: FLARE22 abdominal CT release (labelled images/+labels/, unlabelled and validation images).

Usage: python dataset_conversion/convert_flare22.py --source DIR --id N [options]  (--help lists them)
Same entry point as: nnunet-ext convert flare22 --source DIR --id N [options] (same options, same
one-line errors, same exit status; --debug shows the traceback). See the README (section Datasets).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nnunet_ext.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    debug = ["--debug"] if "--debug" in argv else []  # an option of nnunet-ext itself, accepted anywhere here
    sys.exit(main([*debug, "convert", "flare22", *[a for a in argv if a != "--debug"]]))
