"""Convert: flat MSD copy (images/*.nii.gz + labels/*.nii.gz), e.g. Hippocampus.

Usage: python dataset_conversion/convert_msd_flat.py --source DIR --id N [options]  (--help lists them)
Same as: nnunet-ext convert msd_flat --source DIR --id N [options]. See the README (section Datasets).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from nnunet_ext.conversion import CONVERTERS  # noqa: E402

if __name__ == "__main__":
    CONVERTERS["msd_flat"].main()
