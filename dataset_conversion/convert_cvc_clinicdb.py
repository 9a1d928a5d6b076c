"""Convert: CVC-ClinicDB polyps (Original/ + Ground Truth/, .tif or .png).

Usage: python dataset_conversion/convert_cvc_clinicdb.py --source DIR --id N [options]  (--help lists them)
Same as: nnunet-ext convert cvc_clinicdb --source DIR --id N [options]. See the README (section Datasets).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nnunet_ext.conversion import CONVERTERS  # noqa: E402

if __name__ == "__main__":
    CONVERTERS["cvc_clinicdb"].main()
