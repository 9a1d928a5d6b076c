"""Cross pseudo supervision (CPS) with unlabelled images, uncertainty image filtering (UIF), CPS with CutMix, and
the pseudo-label route (docs/methods/cps.md).

* ``network``: ``CPSNetworkPair``, the two planned networks as one module (what nnU-Net checkpoints and
  predicts with).
* ``losses``: the cross pseudo supervision cross-entropy.
* ``term``: the loss terms that nnU-Net's trainer machinery logs (``seg_b``, ``cps_a``, ``cps_b``), with and without
  CutMix.
* ``cutmix``: CutMix box masks (2D and 3D), mixing of images, logits and labels, the mask at each deep-supervision
  scale, the pair's mixed pseudo-labels.
* ``uncertainty``: pseudo-label uncertainty scores, selection of the most certain cases, histogram.
* ``trainer``: ``nnUNetTrainerCPS``, ``nnUNetTrainerCPS_UIF``, ``nnUNetTrainerCPS_cutmix`` and
  ``nnUNetTrainerCPS_cutmix_UIF``.
* ``pseudo_label``: the pseudo-label route (predict, filter, write a pseudo-labelled raw dataset).
* ``cli``: its verb, ``nnunet-ext pseudo-label``.

The unlabelled images themselves (layout, preprocessing, loading) are :mod:`nnunet_ext.unlabeled`'s, which
imports nothing of this package.
"""
