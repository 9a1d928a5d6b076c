"""Cross pseudo supervision (CPS) with unlabelled images, uncertainty image filtering (UIF), and the
pseudo-label route (METHODS.md section 5).

* ``network``: ``CPSNetworkPair``, the two planned networks as one module (what nnU-Net checkpoints and
  predicts with).
* ``losses``: the cross pseudo supervision cross-entropy.
* ``term``: the loss term that nnU-Net's trainer machinery logs (``seg_b``, ``cps_a``, ``cps_b``).
* ``uncertainty``: pseudo-label uncertainty scores, selection of the most certain cases, histogram.
* ``trainer``: ``nnUNetTrainerCPS`` and ``nnUNetTrainerCPS_UIF``.
* ``pseudo_label``: ``nnunet-ext pseudo-label`` (predict, filter, write a pseudo-labelled raw dataset).
"""
