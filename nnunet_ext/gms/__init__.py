"""GMS: generative medical segmentation in a frozen VAE's latent space (AAAI 2025; METHODS.md section 2).

* ``mapping``: the latent mapping model (no down-sampling; residual + spatial self-attention blocks; deep
  supervision heads).
* ``network``: ``GMSNetwork`` = frozen VAE encoder -> mapping model -> frozen VAE decoder -> per-class logits,
  the network nnU-Net builds, validates and predicts with.
* ``term``: the latent MSE term (nnU-Net's Dice on the decoded masks is the segmentation loss).
* ``plan``: ``nnunet-ext plan-gms`` (the ``gms_2d`` configuration).
* ``trainer``: ``nnUNetTrainerGMS``.
"""
