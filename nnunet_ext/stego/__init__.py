"""STEGO: unsupervised segmentation by distilling feature correspondences (ICLR 2022; docs/methods/stego.md).

* ``losses``: the correlation loss (11x11 sampled points, spatial centring, zero clamp on the code correlation,
  self / kNN / random pairings with their lambda and b) and the cluster probe's loss;
* ``head``: the segmentation head (linear + non-linear 1x1 branches, dim 70; three independent Dropout2d draws);
* ``probe``: the cosine minibatch k-means cluster probe (its centroids as a module);
* ``knn``: nearest neighbours of pooled, normalised backbone features; ``knn_table``: the table of ``stego-knn``;
* ``metrics``: confusion matrix, Hungarian matching (scipy), unsupervised accuracy, mIoU and Dice;
  ``evaluate``: the metrics of a prediction folder (``stego-evaluate``);
* ``backbone``: the frozen-backbone registry (DINO ViT-S/8, ViT-B/8, DINOv2 ViT-S/14 and any timm model from a local
  weights file; the TAESD encoder);
* ``network``: what nnU-Net trains and predicts with (backbone -> head -> probe, per-cluster logits);
* ``data``: images with their kNN partners through nnU-Net's loader; ``term``: the losses as a loss term;
* ``trainer``: ``nnUNetTrainerSTEGO``; ``figure``: ``stego_examples.png``;
* ``crf``: dense CRF refinement; ``refine``: the CRF over an nnU-Net prediction folder (``stego-crf``);
* ``cli``: the verbs ``nnunet-ext stego-knn``, ``stego-evaluate`` and ``stego-crf``.

The images-only converter is ``nnunet_ext.conversion.stego``.
"""
