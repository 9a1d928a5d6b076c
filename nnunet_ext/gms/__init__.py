"""GMS: generative medical segmentation in a frozen VAE's latent space (AAAI 2025; docs/methods/gms.md).

* ``losses``: the maths (latent MSE and soft Dice of the decoded masks, summed over the three heads the loss uses).
* ``mapping``: the latent mapping model (no down-sampling; residual + spatial self-attention blocks; deep
  supervision heads).
* ``network``: ``GMSNetwork`` = frozen VAE encoder -> mapping model -> frozen VAE decoder -> per-class logits,
  the network nnU-Net builds, validates and predicts with.
* ``term``: the losses as the trainer uses them: ``GMSDiceLoss`` (nnU-Net's segmentation loss) and the
  ``latent_mse`` loss term.
* ``plan``: the ``gms_2d`` configuration; ``cli``: ``nnunet-ext plan-gms``.
* ``trainer``: ``nnUNetTrainerGMS``.
"""
