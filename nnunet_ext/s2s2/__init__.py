"""S2S2 semantic stacking (AAAI 2025; docs/methods/s2s2.md) inside nnU-Net.

* ``losses``: the maths: ``cosine_consistency`` (1 - cosine over channels at every position, averaged).
* ``gin``: the training-free stack generator (global intensity non-linear maps of the real image);
  ``diffusion``: the mask-conditioned diffusion generator, tuned by ``tune`` (``nnunet-ext s2s2-tune``); a package
  laid out as diffusers (``spec``, ``models``, ``schedulers``, ``pipelines``, ``io``, and ``generator``, the
  stack generator).
* ``stack``: the semantic stack on disk (K generated copies per preprocessed training case, blosc2).
* ``generate``: ``nnunet-ext s2s2-generate`` (resumable, sharded, progress, preview PNG).
* ``data``: paired loading: each case with one random copy of its stack as extra channels, so nnU-Net's
  spatial augmentation is drawn once for the pair.
* ``term`` / ``trainer``: ``S2S2Term`` (the copy's seg loss and the consistency terms) and ``nnUNetTrainerS2S2``
  (seg loss on both + cosine consistency of the deepest encoder feature and the last decoder feature);
  ``nnUNetTrainerS2S2FD`` (``trainers/ext_s2s2_trainers.py``) adds FD.
* ``cli``: the verbs ``s2s2-generate`` and ``s2s2-tune``.
"""
