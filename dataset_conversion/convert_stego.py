"""Convert: STEGO layout (imgs/train, imgs/val, optional labels/train, labels/val; --clusters K without labels).

Usage: python dataset_conversion/convert_stego.py --source DIR --id N [options]  (--help lists them)
Same entry point as: nnunet-ext convert stego --source DIR --id N [options] (same options, same
one-line errors, same exit status; --debug shows the traceback). See the README (section Datasets).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nnunet_ext.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    debug = ["--debug"] if "--debug" in argv else []  # an option of nnunet-ext itself, accepted anywhere here
    sys.exit(main([*debug, "convert", "stego", *[a for a in argv if a != "--debug"]]))
