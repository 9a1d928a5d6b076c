"""STEGO: unsupervised segmentation by distilling feature correspondences (ICLR 2022; METHODS.md section 3).

Built so far (the parts with exact published definitions, each tested on hand-made inputs):

* ``loss``: the correlation loss (11x11 sampled points, spatial centring, zero clamp on the code correlation,
  self / kNN / random pairings with their lambda and b);
* ``head``: the segmentation head (linear + non-linear 1x1 branches, Dropout2d on the features, dim 70);
* ``probe``: the cosine minibatch k-means cluster probe;
* ``knn``: nearest neighbours of pooled, normalised backbone features;
* ``metrics``: confusion matrix, Hungarian matching (scipy), unsupervised accuracy, mIoU and Dice;
* ``backbone``: the frozen-backbone registry (DINO ViT-S/8, ViT-B/8, DINOv2 ViT-S/14 and any timm model from a local
  weights file; the TAESD encoder).

Not built yet: ``nnunet-ext stego-knn``, ``nnUNetTrainerSTEGO``, the images-only
converter, CRF refinement and the benchmark (issue #11).
"""
