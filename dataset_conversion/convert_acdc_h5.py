"""Convert: ACDC cardiac MRI, SSL4MIS h5 layout (train/val/test.list + data/*.h5).

Usage: python dataset_conversion/convert_acdc_h5.py --source DIR --id N [options]  (--help lists them)
Same as: nnunet-ext convert acdc_h5 --source DIR --id N [options]. See the README (section Datasets).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nnunet_ext.conversion import CONVERTERS  # noqa: E402

if __name__ == "__main__":
    CONVERTERS["acdc_h5"].main()
