"""STEGO: unsupervised segmentation by distilling feature correspondences (ICLR 2022; METHODS.md section 3).

* ``loss``: the correlation loss (11x11 sampled points, spatial centring, zero clamp on the code correlation,
  self / kNN / random pairings with their lambda and b);
* ``head``: the segmentation head (linear + non-linear 1x1 branches, Dropout2d on the features, dim 70);
* ``probe``: the cosine minibatch k-means cluster probe;
* ``knn``: nearest neighbours of pooled, normalised backbone features; ``knn_table``: ``nnunet-ext stego-knn``;
* ``metrics``: confusion matrix, Hungarian matching (scipy), unsupervised accuracy, mIoU and Dice;
  ``evaluate``: ``nnunet-ext stego-evaluate``;
* ``backbone``: the frozen-backbone registry (DINO ViT-S/8, ViT-B/8, DINOv2 ViT-S/14 and any timm model from a local
  weights file; the TAESD encoder);
* ``network``: what nnU-Net trains and predicts with (backbone -> head -> probe, per-cluster logits);
* ``data``: images with their kNN partners through nnU-Net's loader; ``term``: the losses as a loss term;
* ``trainer``: ``nnUNetTrainerSTEGO``; ``figure``: ``stego_examples.png``;
* ``crf``: dense CRF refinement; ``crf_cli``: ``nnunet-ext stego-crf``.

The images-only converter is ``nnunet_ext.conversion.stego``.
"""
