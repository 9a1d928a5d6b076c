"""Unlabelled images in nnU-Net's pipeline (nnU-Net itself has no notion of them).

Layout, the nnU-Net way::

    $nnUNet_raw/DatasetXXX_Name/imagesUnlabeled/CASE_0000.nii.gz   # same channel naming and file ending as imagesTr
    $nnUNet_preprocessed/DatasetXXX_Name/<data_identifier>_unlabeled/CASE.b2nd + CASE.pkl
                                          # written by `nnunet-ext preprocess-unlabeled -d D -c CONFIG`

* ``raw``: finding the unlabelled cases of a raw dataset and checking their channels.
* ``preprocess``: ``nnunet-ext preprocess-unlabeled`` (the dataset's own plans and nnU-Net's preprocessor).
* ``roi``: where a method that crops its configurations to a region of interest hands in its crop (FLARE22's
  coarse-to-fine ``3d_fine`` does), so that this package imports no method.
* ``data``: the preprocessed cases as an nnU-Net dataset without segmentations, and a loader that uses
  nnU-Net's patch sampling and training augmentation (used by the CPS trainers).
* ``cli``: the ``preprocess-unlabeled`` verb.

The methods build on this package (CPS trains on the cases, its ``pseudo-label`` verb predicts them); it imports
none of them.
"""
