"""S2S2 semantic stacking (AAAI 2025; METHODS.md section 1) inside nnU-Net.

* ``gin``: the training-free stack generator (global intensity non-linear maps of the real image).
* ``stack``: the semantic stack on disk (K generated copies per preprocessed training case, blosc2).
* ``generate``: ``nnunet-ext s2s2-generate`` (resumable, sharded, progress, preview PNG).
* ``data``: paired loading: each case with one random copy of its stack as extra channels, so nnU-Net's
  spatial augmentation is drawn once for the pair.
* ``term`` / ``trainer``: ``nnUNetTrainerS2S2`` (seg loss on both + cosine consistency of the deepest
  encoder feature and the last decoder feature) and ``nnUNetTrainerS2S2FD``.
"""
