"""``nnUNetTrainerSTEGO``: STEGO inside nnU-Net (docs/methods/stego.md), for datasets with or without labels.

    nnUNetv2_plan_and_preprocess -d D -c 2d
    nnunet-ext stego-knn -d D -c 2d [-tr nnUNetTrainerSTEGO_taesd]
    nnUNetv2_train D 2d 0 -tr nnUNetTrainerSTEGO_taesd            # $nnUNet_ext_backbone: local weights
    nnUNetv2_predict -i IMAGES -o OUT -d D -c 2d -f 0 -tr nnUNetTrainerSTEGO_taesd

* **Network** (``network.py``): frozen backbone -> STEGO head -> cluster probe; nnU-Net sees per-cluster logits, so
  validation, sliding windows and ``nnUNetv2_predict`` work unchanged. Clusters: one per label of dataset.json
  (an images-only dataset converted by ``nnunet-ext convert stego --clusters K`` lists K placeholder labels).
* **Training** (``data.py``, ``term.py``): each 2D patch comes with the same crop of its kNN partner (``stego-knn``);
  loss = lambda_self L_self + lambda_knn L_knn + lambda_rand L_rand (correlation losses) + the cluster probe's
  loss (on the images' codes, not the partners'); ``train_losses`` logs this total, each part is logged on its own.
  Labels are never used in training: foreground oversampling is off, the segmentation targets are ignored.
  The random pairing pairs each image with another image of the batch: training needs a batch of at least 2
  patches (per GPU) and stops with an error otherwise (or set ``stego_negatives = 0`` to drop L_rand).
* **Optimiser**: Adam, lr 5e-4 for the head and 5e-3 for the cluster probe, constant (STEGO); nnU-Net's epochs and
  iterations.
* **Validation** (labels only used here): every epoch the clusters of the validation patches are matched to the
  labels by the Hungarian algorithm on one confusion matrix; ``stego_accuracy`` and ``stego_miou`` are logged,
  nnU-Net's pseudo Dice uses the matched labels, and the mapping is stored in the network, so checkpoints predict
  in label space. With placeholder labels (images only) nothing is matched: predictions stay in cluster space,
  the pseudo Dice is NaN and nnU-Net's final validation against labels is skipped.
* **After training**: ``stego_examples.png`` (image, clusters, matched labels, ground truth) for a few validation
  cases; with real labels nnU-Net's validation predictions are also scored with STEGO's metrics
  (``validation/stego_metrics.json``).
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from torch import distributed as dist

from nnunet_ext.core.labels import class_argmax, placeholder_labels
from nnunet_ext.core.loss_terms import LossTerm
from nnunet_ext.core.network import unwrap_network
from nnunet_ext.core.trainer import nnUNetTrainerExt
from nnunet_ext.errors import UserError
from nnunet_ext.stego.losses import CorrelationWeights, correlation_total
from nnunet_ext.stego.metrics import confusion, hungarian, matched_scores
from nnunet_ext.stego.term import STEGOTerm


class ConstantLR:
    """nnU-Net calls ``lr_scheduler.step(epoch)``; STEGO keeps its learning rates constant."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self, *args, **kwargs):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class nnUNetTrainerSTEGO(nnUNetTrainerExt):
    """STEGO: frozen backbone (DINO ViT-S/8 from $nnUNet_ext_backbone), head dim 70, correlation + cluster losses."""

    #: registry name of the frozen backbone (``nnunet_ext.stego.backbone``) and timm keyword arguments
    stego_backbone: str = "dino_vits8"
    stego_backbone_kwargs: dict = {}
    stego_dim: int = 70
    stego_weights: CorrelationWeights = CorrelationWeights()
    stego_lr: float = 5e-4
    stego_probe_lr: float = 5e-3
    stego_points: int = 11
    #: random draws of the negative pairing (0: no random pairing, L_rand = 0; allows a batch of 1)
    stego_negatives: int = 5
    #: the kNN partner is drawn from neighbour ranks 1..stego_knn_ranks
    stego_knn_ranks: int = 7
    #: validation cases drawn in stego_examples.png
    stego_examples: int = 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = 0.0  # labels never steer training
        self.placeholder_labels = placeholder_labels(dataset_json)

    # ---- network ------------------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True):
        from nnunet_ext.core.intensity import intensity_mode
        from nnunet_ext.stego.backbone import build_backbone, weights_checksum
        from nnunet_ext.stego.network import STEGONetwork

        if len(configuration_manager.patch_size) != 2:
            raise UserError("STEGO is a 2D method: train a 2D configuration (e.g. 2d)")
        unit = intensity_mode(configuration_manager.normalization_schemes) == "unit"
        backbone = build_backbone(cls.stego_backbone, unit_range=unit, **cls.stego_backbone_kwargs)
        return STEGONetwork(backbone, num_output_channels, num_input_channels, dim=cls.stego_dim,
                            backbone_name=cls.stego_backbone, backbone_checksum=weights_checksum())

    def initialize(self):
        lm = self.label_manager
        if not self.was_initialized and (lm.has_regions or (lm.has_ignore_label and not self.placeholder_labels)):
            raise UserError(f"{type(self).__name__} supports class labels without regions or an ignore label")
        super().initialize()

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # one output; the training-mode output is the network's dict

    def configure_optimizers(self):
        net = unwrap_network(self.network)
        optimizer = torch.optim.Adam([{"params": net.head.parameters(), "lr": self.stego_lr},
                                      {"params": net.probe.parameters(), "lr": self.stego_probe_lr}])
        return optimizer, ConstantLR(optimizer)

    # ---- data ---------------------------------------------------------------------------------------------
    def _knn_command(self) -> str:
        from nnunet_ext.stego.knn_table import knn_command
        return knn_command(self.plans_manager.dataset_name, self.configuration_name, self.plans_manager.plans_name,
                           type(self).__name__)

    def get_tr_and_val_datasets(self):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        from nnunet_ext.stego.backbone import weights_checksum
        from nnunet_ext.stego.data import KNNPairDataset, UniformCropDataset
        from nnunet_ext.stego.knn_table import knn_folder, load_knn_table

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        tr_keys, val_keys = self.do_split()
        folder = knn_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier,
                            self.stego_backbone)
        table = load_knn_table(folder, self._knn_command(), weights_checksum())
        # placeholder labels are nnU-Net's ignore label everywhere: crop uniformly instead of on annotated pixels
        key = tuple([-1] + self.label_manager.all_labels) if self.label_manager.has_ignore_label else None
        try:
            dataset_tr = KNNPairDataset(self.preprocessed_dataset_folder, tr_keys, table=table,
                                        ranks=self.stego_knn_ranks, annotated_key=key)
        except ValueError as e:
            raise UserError(f"{e}: remake it with {self._knn_command()} after deleting {folder}") from None
        self.print_to_log_file(f"STEGO: {len(dataset_tr.identifiers)} training images, kNN table {folder}")
        dataset_val = UniformCropDataset(self.preprocessed_dataset_folder, val_keys,
                                         self.folder_with_segs_from_previous_stage, annotated_key=key)
        return dataset_tr, dataset_val

    # ---- training -----------------------------------------------------------------------------------------
    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        if self.stego_negatives > 0 and self.batch_size < 2:
            raise UserError(f"{type(self).__name__}: STEGO's random pairing needs a batch of at least 2 images (per "
                            f"GPU), this run has {self.batch_size}: raise the batch size in the plans, or train a "
                            f"subclass with stego_negatives = 0 (no random pairing)")
        super().on_train_start()

    def build_loss_terms(self) -> List[LossTerm]:
        return super().build_loss_terms() + [STEGOTerm(self.stego_weights, self.stego_points, self.stego_negatives)]

    def segmentation_loss(self, output, target) -> torch.Tensor:
        return output["feats"].new_zeros(())  # unsupervised: no segmentation loss

    def training_forward(self, data, target):
        """The batch's images come first, their kNN partners after them: the cluster probe sees the images only."""
        return self.network(data, n_images=data.shape[0] // 2)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        c = self.num_input_channels
        out = self.step_with_terms(torch.cat((data[:, :c], data[:, c:])), None)
        # train_losses: STEGO's total loss (there is no segmentation loss to show)
        out["loss"] = (correlation_total(self.stego_weights, out["stego_self"], out["stego_knn"], out["stego_rand"])
                       + out["stego_cluster"])
        return out

    # ---- validation ---------------------------------------------------------------------------------------
    def validation_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        net = unwrap_network(self.network)
        with torch.no_grad():
            code = net.codes(data)
            scores = net.cluster_scores(code, data.shape[-2:])
            loss = net.probe.loss(code)
        k = net.n_clusters
        conf = confusion(class_argmax(scores, 1).cpu().numpy(), target[:, 0].cpu().numpy(), k, k)
        return {"loss": loss.cpu().numpy(), "confusion": conf}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        local = np.sum([o.pop("confusion") for o in val_outputs], axis=0)
        total = local.copy()
        if self.is_ddp:
            t = torch.from_numpy(total).to(self.device)
            dist.all_reduce(t)
            total = t.cpu().numpy()
        k = local.shape[0]
        if self.placeholder_labels:
            tp = fp = fn = np.full(k - 1, np.nan)
        else:
            mapping = hungarian(total)
            unwrap_network(self.network).set_mapping(mapping)
            scores = matched_scores(total)
            self.log_extra("stego_accuracy", scores["accuracy"])
            self.log_extra("stego_miou", scores["miou"])
            matched = np.zeros((k, k), dtype=np.int64)  # this rank's (matched prediction x truth)
            for cl, c in mapping.items():
                matched[c] += local[cl]
            tp = np.diag(matched)
            fp, fn = matched.sum(1) - tp, matched.sum(0) - tp
            tp, fp, fn = tp[1:], fp[1:], fn[1:]
        loss = float(np.mean([o["loss"] for o in val_outputs]))
        super().on_validation_epoch_end([{"loss": loss, "tp_hard": tp, "fp_hard": fp, "fn_hard": fn}])

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.placeholder_labels:
            self.print_to_log_file("STEGO: the labels of this dataset are placeholders (images only): nnU-Net's "
                                   "validation against labels is skipped; predict with nnUNetv2_predict (cluster "
                                   "space)")
            return
        super().perform_actual_validation(save_probabilities)
        if self.local_rank == 0:
            from nnunet_ext.stego.evaluate import evaluate_clusters

            folder = f"{self.output_folder}/validation"
            res = evaluate_clusters(f"{self.preprocessed_dataset_folder_base}/gt_segmentations", folder,
                                    dataset_json=self.dataset_json, out_file=f"{folder}/stego_metrics.json",
                                    only_predicted=True)
            self.print_to_log_file(f"STEGO metrics of the validation predictions: accuracy {res['accuracy']:.4f}, "
                                   f"mIoU {res['miou']:.4f}")

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            try:
                from nnunet_ext.stego.figure import write_examples
                write_examples(self, f"{self.output_folder}/stego_examples.png", self.stego_examples)
            except Exception as e:  # a figure never fails a finished training
                self.print_to_log_file(f"STEGO: stego_examples.png not written: {type(e).__name__}: {e}")
