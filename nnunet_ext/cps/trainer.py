"""``nnUNetTrainerCPS``, ``nnUNetTrainerCPS_UIF`` and their CutMix forms: semi-supervised nnU-Net with unlabelled
images.

Cross pseudo supervision (Chen et al., CVPR 2021), as in docs/methods/cps.md:

* Two networks with nnU-Net's planned architecture, built twice (so initialised differently), held as one
  ``CPSNetworkPair`` (``nnunet_ext.cps.network``).
* Each network has its own SGD parameter group (nnU-Net's SGD, lr, momentum, weight decay): SGD's state is
  per parameter, so this is exactly two optimisers, each with nnU-Net's poly schedule, in one state dict
  that nnU-Net checkpoints. Gradients are clipped at 12 per network.
* Each iteration: a labelled batch (nnU-Net's loader) and an unlabelled batch of the same size (nnU-Net's
  patch sampling and augmentation on ``imagesUnlabeled``, preprocessed by ``nnunet-ext preprocess-unlabeled``)
  go through both networks in one forward pass. Loss = Dice+CE(A, labels) + Dice+CE(B, labels)
  + lambda * (CE(A, argmax B) + CE(B, argmax A)) on all patches, lambda = ``cps_weight`` (1.0, the FLARE22
  setting; no ramp-up, as published; ``cps_rampup`` > 0 ramps lambda up over that fraction of the epochs).
* Logged per epoch: ``train_losses`` (A's Dice+CE), ``seg_b``, ``cps_a``, ``cps_b`` and, at validation,
  ``pseudo_dice_a`` / ``pseudo_dice_b`` beside nnU-Net's pseudo Dice of the pair's average.
* Prediction (``nnUNetv2_predict -tr nnUNetTrainerCPS``, nnU-Net's validation) uses the mean of both
  networks' logits: the pair is the network nnU-Net builds and loads.
* DDP (``-num_gpus N``): the pair is wrapped as one module (both networks), each rank samples its own shard
  of the unlabelled cases.

UIF (``nnUNetTrainerCPS_UIF``): after ``uif_warmup`` of the epochs every unlabelled case is scored by the
uncertainty of the pair's prediction (``nnunet_ext.cps.uncertainty``) and only the ``uif_keep`` most certain
are used from then on (re-scored every ``uif_rescore_every`` epochs if > 0). The selection is in the
checkpoint (``--c`` continues with it) and in ``fold_X/uif/`` (scores, selection.json, histogram PNG).

CutMix (``nnUNetTrainerCPS_cutmix``, ``nnUNetTrainerCPS_cutmix_UIF``): the CPS paper's CutMix setting, as its public
code runs it (``nnunet_ext.cps.cutmix``). Each iteration draws 2m unlabelled patches (m = ``unlabeled_batch_size``,
default the labelled batch size B), halves ``U0``, ``U1``, and a box mask ``M`` per pair (volume fraction from
``cutmix_area`` = [0.25, 0.5], random aspect ratio, inside the patch). The pair predicts ``U0`` and ``U1`` without
gradient (training mode); each network's logits are mixed with ``M`` and argmaxed: its pseudo-label of the mixed
image ``U0 * (1 - M) + U1 * M``. Then one forward pass of the pair on ``cat(labelled patches, mixed patches)``:
Dice+CE of each network on the labelled patches, and lambda * (CE(A on mixed, B's mixed pseudo-label) + CE(B on
mixed, A's mixed pseudo-label)); the labelled patches get no CPS term (as in the CPS code's CutMix setting). Deep
supervision: every scale is mixed with the mask resampled to it like nnU-Net resamples labels (nearest). The boxes
come from a ``torch.Generator`` seeded from ``nnUNet_ext_seed`` (``SeedMixin``) per (epoch, rank) when a seed is
set. Logged like CPS (``seg_b``, ``cps_a``, ``cps_b``) plus ``cutmix_share`` (mean share of voxels taken from
``U1``). The CutMix + UIF trainer selects the unlabelled cases like ``nnUNetTrainerCPS_UIF`` and mixes the
selected ones.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from torch import autocast
from torch import distributed as dist

from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context

from nnunet_ext.core.labels import class_argmax
from nnunet_ext.core.loss_terms import LossTerm
from nnunet_ext.core.network import unwrap_network
from nnunet_ext.core.seeding import derive_seed
from nnunet_ext.core.trainer import nnUNetTrainerExt
from nnunet_ext.cps.cutmix import box_masks, mask_share, mix, pair_pseudo_labels
from nnunet_ext.cps.losses import sigmoid_rampup
from nnunet_ext.cps.network import CPSNetworkPair
from nnunet_ext.cps.term import CUTMIX_LABELS, CPSCutMixTerm, CPSTerm, labelled_part
from nnunet_ext.errors import UserError
from nnunet_ext.unlabeled.data import UnlabeledDataset, make_unlabeled_augmenter, shard, shut_down, unlabeled_folder
from nnunet_ext.unlabeled.raw import UNLABELED_DIR


class CPSDataError(UserError):
    """The dataset has no (preprocessed) unlabelled images for a CPS trainer."""


class nnUNetTrainerCPS(nnUNetTrainerExt):
    """Cross pseudo supervision: two networks, labelled + unlabelled batches, lambda = 1.0, no ramp-up."""

    #: lambda of the CPS terms (FLARE22 code: 1; original CPS: 1.5 on VOC, 6 on Cityscapes)
    cps_weight: float = 1.0
    #: fraction of the epochs over which lambda ramps up (sigmoid); 0: no ramp-up (as published)
    cps_rampup: float = 0.0
    #: unlabelled patches per iteration (None: the labelled batch size); with CutMix: mixed patches per iteration
    #: (the loader draws twice as many, U0 and U1)
    unlabeled_batch_size: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.dataloader_unlabeled = None

    # ---- the pair --------------------------------------------------------------------------------------
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True) -> CPSNetworkPair:
        args = (plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision)
        return CPSNetworkPair(nnUNetTrainer.build_network_architecture(*args),
                              nnUNetTrainer.build_network_architecture(*args))

    @property
    def pair(self) -> CPSNetworkPair:
        return unwrap_network(self.network)

    def initialize(self):
        if not self.was_initialized and self.label_manager.has_regions:
            raise CPSDataError(f"{type(self).__name__} needs class labels (argmax pseudo-labels); this dataset uses "
                               f"regions, which CPS does not support")
        super().initialize()

    def configure_optimizers(self):
        pair = unwrap_network(self.network)
        optimizer = torch.optim.SGD([{"params": pair.net_a.parameters()}, {"params": pair.net_b.parameters()}],
                                    self.initial_lr, weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def set_deep_supervision_enabled(self, enabled: bool):
        self.pair.set_deep_supervision(enabled)

    def build_loss_terms(self) -> List[LossTerm]:
        ds_weights = getattr(self.loss, "weight_factors", None) if self.enable_deep_supervision else None
        return [CPSTerm(self.loss, self.cps_weight, ds_weights)]

    def segmentation_loss(self, output, target) -> torch.Tensor:
        # network A's Dice+CE on the labelled part of the batch (nnU-Net's train_losses); B's is the term seg_b
        n = (target[0] if isinstance(target, list) else target).shape[0]
        return self.loss(labelled_part(output[0], n), target)

    # ---- unlabelled data -------------------------------------------------------------------------------------
    def unlabeled_folder(self):
        return unlabeled_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier)

    def all_unlabeled_identifiers(self) -> List[str]:
        """Every preprocessed unlabelled case; a clear error (what to run) when there are none."""
        from nnunetv2.paths import nnUNet_raw

        folder = self.unlabeled_folder()
        ids = UnlabeledDataset.get_identifiers(str(folder)) if folder.is_dir() else []
        if ids:
            return ids
        raw = f"{nnUNet_raw}/{self.plans_manager.dataset_name}/{UNLABELED_DIR}"
        ds_id = self.plans_manager.dataset_name[len("Dataset"):len("Dataset") + 3]
        raise CPSDataError(
            f"{type(self).__name__} needs unlabelled images and found none in {folder}. Put them in {raw}/ "
            f"(named like imagesTr: CASE_0000{self.dataset_json['file_ending']}) and run: nnunet-ext "
            f"preprocess-unlabeled -d {int(ds_id)} -c {self.configuration_name}"
            + (f" -p {self.plans_manager.plans_name}" if self.plans_manager.plans_name != "nnUNetPlans" else ""))

    def unlabeled_identifiers(self) -> List[str]:
        """The unlabelled cases this trainer samples from (all of them; UIF narrows this down)."""
        return self.all_unlabeled_identifiers()

    def _shard(self, ids: List[str]) -> List[str]:
        return shard(ids, dist.get_rank(), dist.get_world_size()) if self.is_ddp else ids

    def _unlabeled_batch_size(self) -> int:
        return int(self.unlabeled_batch_size or self.batch_size)

    def make_unlabeled_loader(self, identifiers: List[str]):
        return make_unlabeled_augmenter(self, self.unlabeled_folder(), self._shard(identifiers),
                                        self._unlabeled_batch_size())

    def get_dataloaders(self):
        ids = self.unlabeled_identifiers()  # fails early (before workers start) when there are none
        loaders = super().get_dataloaders()
        self.dataloader_unlabeled = self.make_unlabeled_loader(ids)
        self.print_to_log_file(f"CPS: {len(ids)} unlabelled case(s) from {self.unlabeled_folder()}, "
                               f"{self._unlabeled_batch_size()} unlabelled patch(es) per iteration")
        return loaders

    def on_train_end(self):
        super().on_train_end()
        if self.dataloader_unlabeled is not None:
            shut_down(self.dataloader_unlabeled)

    # ---- training ----------------------------------------------------------------------------------------------
    def current_cps_weight(self) -> float:
        return self.cps_weight * sigmoid_rampup(self.current_epoch, int(round(self.cps_rampup * self.num_epochs)))

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        w = self.current_cps_weight()
        for term in self.loss_terms:
            if isinstance(term, CPSTerm):
                term.weight = w
        if self.cps_rampup > 0:
            self.log_extra("cps_weight", w)

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        unlabeled = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)
        return self.step_with_terms(torch.cat((data, unlabeled)), target)

    # ---- validation: pseudo Dice of each network beside nnU-Net's (of the average) ----------------------------
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self.pair.keep_outputs = True

    def validation_step(self, batch: dict) -> dict:
        target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
        target = target.to(self.device, non_blocking=True).clone()  # nnU-Net edits its target in place
        result = super().validation_step(batch)
        for name, out in zip(("a", "b"), self.pair.last_outputs):
            tp, fp, fn = self._hard_counts(out[0] if isinstance(out, (list, tuple)) else out, target)
            result.update({f"tp_{name}": tp, f"fp_{name}": fp, f"fn_{name}": fn})
        return result

    def _hard_counts(self, output: torch.Tensor, target: torch.Tensor):
        """nnU-Net's hard tp / fp / fn per foreground class of one network's logits."""
        axes = [0] + list(range(2, output.ndim))
        onehot = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
        onehot.scatter_(1, class_argmax(output, 1)[:, None], 1)
        mask = None
        if self.label_manager.has_ignore_label:
            ignore = target == self.label_manager.ignore_label
            mask = (~ignore).float()
            target = torch.where(ignore, torch.zeros_like(target), target)
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=axes, mask=mask)
        return (tp.detach().cpu().numpy()[1:], fp.detach().cpu().numpy()[1:], fn.detach().cpu().numpy()[1:])

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        self.pair.keep_outputs = False
        self.pair.last_outputs = None
        outputs = collate_outputs(val_outputs)
        for name in ("a", "b"):
            counts = [np.sum(outputs[f"{k}_{name}"], 0) for k in ("tp", "fp", "fn")]
            if self.is_ddp:
                for i, c in enumerate(counts):
                    gathered = [None] * dist.get_world_size()
                    dist.all_gather_object(gathered, c)
                    counts[i] = np.sum(np.stack(gathered), 0)
            tp, fp, fn = counts
            with np.errstate(invalid="ignore", divide="ignore"):
                dice = 2 * tp / (2 * tp + fp + fn)
            self.log_extra(f"pseudo_dice_{name}", float(np.nanmean(dice)))


class nnUNetTrainerCPS_UIF(nnUNetTrainerCPS):
    """CPS + uncertainty image filtering: after 20% of the epochs keep the 10% most certain unlabelled cases."""

    #: fraction of the epochs before the first scoring (at least one epoch)
    uif_warmup: float = 0.2
    #: unlabelled cases kept: a fraction (<= 1) of the scored cases or a count (> 1); FLARE22 kept 200 of 2000
    uif_keep: float = 0.1
    #: epochs between re-scorings after the first (0: score once)
    uif_rescore_every: int = 0
    #: patches per case that are scored (tiles of nnU-Net's sliding-window grid, evenly spread)
    uif_patches_per_case: int = 4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.uif_selection: Optional[List[str]] = None
        self.uif_scored_epoch: Optional[int] = None

    def uif_first_epoch(self) -> int:
        return max(1, int(round(self.uif_warmup * self.num_epochs)))

    def uif_due(self, epoch: int) -> bool:
        if epoch < self.uif_first_epoch():
            return False
        if self.uif_scored_epoch is None:
            return True
        return self.uif_rescore_every > 0 and epoch - self.uif_scored_epoch >= self.uif_rescore_every

    def unlabeled_identifiers(self) -> List[str]:
        everything = self.all_unlabeled_identifiers()
        if self.uif_selection is None:
            return everything
        missing = sorted(set(self.uif_selection) - set(everything))
        if missing:
            raise CPSDataError(f"the UIF selection in the checkpoint names unlabelled cases that are not in "
                               f"{self.unlabeled_folder()}: {', '.join(missing[:5])}")
        return list(self.uif_selection)

    def on_train_epoch_start(self):
        if self.uif_due(self.current_epoch):
            self.run_uif()
        super().on_train_epoch_start()
        self.log_extra("unlabeled_cases", len(self.uif_selection) if self.uif_selection is not None
                       else len(self.all_unlabeled_identifiers()))

    def run_uif(self) -> None:
        from tqdm import tqdm

        from nnunet_ext.core.seeding import seeded_augmenters
        from nnunet_ext.cps.uncertainty import score_cases, select_most_certain, write_selection

        epoch = self.current_epoch
        everything = self.all_unlabeled_identifiers()
        mine = self._shard(everything)
        dataset = UnlabeledDataset(str(self.unlabeled_folder()), identifiers=list(mine))
        with tqdm(total=len(mine), desc=f"UIF scoring (epoch {epoch})", unit="case",
                  disable=self.local_rank != 0) as bar:
            scores = score_cases(self.pair, dataset, mine, self.configuration_manager.patch_size,
                                 self.uif_patches_per_case, self.device, bar)
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, scores)
            scores = {k: v for part in gathered for k, v in part.items()}
        selected = select_most_certain({c: s["entropy"] for c, s in scores.items()}, self.uif_keep)
        self.uif_selection, self.uif_scored_epoch = selected, epoch
        if self.local_rank == 0:
            folder = write_selection(self.output_folder, epoch, scores, selected, self.uif_keep)
        threshold = max(scores[c]["entropy"] for c in selected)
        self.print_to_log_file(f"UIF: scored {len(scores)} unlabelled case(s) at epoch {epoch}; keeping "
                               f"{len(selected)} (uncertainty <= {threshold:.4f})"
                               + (f"; scores, selection and histogram in {folder}" if self.local_rank == 0 else ""))
        if self.dataloader_unlabeled is not None:
            shut_down(self.dataloader_unlabeled)
            seed = getattr(self, "ext_seed", None)
            if seed is not None:  # SeedMixin: the new loader is seeded like the first one
                with seeded_augmenters(seed, "uif", epoch, "rank", self.local_rank):
                    self.dataloader_unlabeled = self.make_unlabeled_loader(selected)
            else:
                self.dataloader_unlabeled = self.make_unlabeled_loader(selected)

    def checkpoint_extras(self) -> dict:
        return {"uif_selection": self.uif_selection, "uif_scored_epoch": self.uif_scored_epoch}

    def restore_checkpoint_extras(self, state: dict) -> None:
        self.uif_selection = state.get("uif_selection")
        self.uif_scored_epoch = state.get("uif_scored_epoch")


class nnUNetTrainerCPS_cutmix(nnUNetTrainerCPS):
    """CPS with CutMix on the unlabelled patches (the CPS paper's CutMix setting), lambda = 1.0, no ramp-up."""

    #: range of the box's volume fraction, drawn uniformly (CPS code: (0.25, 0.5))
    cutmix_area: tuple = (0.25, 0.5)
    #: boxes per mask, each of volume fraction area / boxes, exclusive-or'ed (the CPS code's VOC and Cityscapes
    #: CutMix configurations: 3; ``nnUNetTrainerCPS_cutmix_box1``: one box, the mask's share stays in ``cutmix_area``)
    cutmix_boxes: int = 3

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.cutmix_generator = torch.Generator()  # CPU; seeded in get_dataloaders

    def _unlabeled_batch_size(self) -> int:
        return 2 * super()._unlabeled_batch_size()  # U0 and U1

    def build_loss_terms(self) -> List[LossTerm]:
        ds_weights = getattr(self.loss, "weight_factors", None) if self.enable_deep_supervision else None
        return [CPSCutMixTerm(self.loss, self.cps_weight, ds_weights)]

    def cutmix_seed(self) -> int:
        """From ``nnUNet_ext_seed`` (SeedMixin's ``ext_seed``), per epoch and rank; else a draw from torch's global
        generator (reproducible under ``torch.manual_seed``)."""
        seed = getattr(self, "ext_seed", None)
        if seed is not None:
            return derive_seed(seed, "cutmix", int(self.current_epoch), dist.get_rank() if self.is_ddp else 0)
        return int(torch.randint(0, 2 ** 62, (1,)).item())

    def get_dataloaders(self):
        loaders = super().get_dataloaders()
        self.cutmix_generator.manual_seed(self.cutmix_seed())
        lo, hi = self.cutmix_area
        self.print_to_log_file(f"CPS CutMix: U0 and U1 of {self._unlabeled_batch_size() // 2} patch(es) each, "
                               f"{self.cutmix_boxes} box(es) per mask, volume fraction from [{lo}, {hi}]")
        return loaders

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        unlabeled = next(self.dataloader_unlabeled)["data"].to(self.device, non_blocking=True)
        if unlabeled.shape[0] % 2:
            raise RuntimeError(f"CPS CutMix needs an even number of unlabelled patches, got {unlabeled.shape[0]}")
        u0, u1 = unlabeled.chunk(2)
        mask = box_masks(u0.shape[0], u0.shape[2:], self.cutmix_area, self.cutmix_boxes, self.cutmix_generator,
                         self.device)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            labels = pair_pseudo_labels(self.network, u0, u1, mask)
        out = self.step_with_terms(torch.cat((data, mix(u0, u1, mask))), target, extras={CUTMIX_LABELS: labels})
        self.register_aux_losses(["cutmix_share"])
        out["cutmix_share"] = np.array(mask_share(mask))
        return out


class nnUNetTrainerCPS_cutmix_UIF(nnUNetTrainerCPS_cutmix, nnUNetTrainerCPS_UIF):
    """CPS + CutMix + UIF: the unlabelled cases are selected like ``nnUNetTrainerCPS_UIF``'s (after 20% of the
    epochs, the 10% most certain), then mixed with CutMix."""
