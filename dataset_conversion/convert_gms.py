"""Convert: GMS layout (images/, masks/, *_train_test_names.pkl): BUS, BUSI, GlaS, HAM10000, Kvasir-Instrument.

Usage: python dataset_conversion/convert_gms.py --source DIR --id N [options]  (--help lists them)
Same as: nnunet-ext convert gms --source DIR --id N [options]. See the README (section Datasets).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nnunet_ext.conversion import CONVERTERS  # noqa: E402

if __name__ == "__main__":
    CONVERTERS["gms"].main()
