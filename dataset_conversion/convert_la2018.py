"""Convert: LA 2018 left atrium MRI in the UA-MT h5 layout (<ID>/mri_norm2.h5, *.list).

Usage: python dataset_conversion/convert_la2018.py --source DIR --id N [options]  (--help lists them)
Same as: nnunet-ext convert la2018 --source DIR --id N [options]. See the README (section Datasets).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nnunet_ext.conversion import CONVERTERS  # noqa: E402

if __name__ == "__main__":
    CONVERTERS["la2018"].main()
