"""FLARE22 coarse-to-fine pipeline (issue #12), built on nnU-Net's planner, preprocessor and predictor.

* ``plan``: ``nnunet-ext plan-c2f`` adds the ``3d_coarse`` and ``3d_fine`` configurations to a dataset's plans,
  and describes how ``3d_fine`` crops its cases (``FINE_ROI_CROP``, handed to :mod:`nnunet_ext.unlabeled.roi`);
* ``preprocess``: ``ROICropPreprocessor`` (``3d_fine``: cases cropped to their labels' bounding box + margin);
* ``roi``: the region of interest (largest components, bounding box, margin in mm, clipping, fallback);
* ``predict``: ``nnunet-ext predict-c2f`` (challenge inference: coarse -> ROI -> fine, one pass of I/O);
* ``trainer``: ``nnUNetTrainerFLARE22`` = CPS + UIF + FD (+ S2S2 where a stack exists), composed.

The converter is ``nnunet_ext.conversion.flare22``; the container entry point is ``submission/predict.sh``.
"""
