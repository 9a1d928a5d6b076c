"""``nnUNetTrainerExt``: nnU-Net's trainer with pluggable auxiliary loss terms and feature taps.

A method is a subclass that overrides ``build_loss_terms`` (and, if it needs more, one or two of
nnU-Net's usual hooks). The train step stays nnU-Net's: same autocast (CUDA only), GradScaler,
gradient clipping at 12, optimiser and poly schedule. What changes:

1. After ``initialize`` the trainer asks its loss terms which features they need and registers
   ``FeatureTaps`` for exactly those (none: no hooks at all).
2. ``train_step`` runs the network once, computes nnU-Net's segmentation loss and every term, and
   back-propagates ``seg + sum(weight * term)``.
3. Every term's unweighted value is averaged per epoch (over all DDP ranks), logged under its
   name, printed in the training log and drawn in ``progress.png``. nnU-Net's own ``train_losses``
   stays the segmentation loss, as in stock nnU-Net, so curves compare across trainers. Other
   per-epoch values (e.g. a second network's pseudo Dice) go through ``log_extra``.

Hooks for methods that need more than one loss term (CPS: two networks, an unlabelled batch):

* ``segmentation_loss(output, target)``: nnU-Net's loss on the network output (override when the
  output is not nnU-Net's, e.g. a pair of networks); ``forward_with_terms(..., extras)`` passes
  ``extras`` on to the terms in ``StepState.extras``.
* ``checkpoint_extras()`` / ``restore_checkpoint_extras(state)``: method state that must survive
  ``--c`` (e.g. a selection of unlabelled cases) is stored in nnU-Net's checkpoint under
  ``"nnunet_ext"``.
* ``backward_and_step`` clips the gradient norm at 12 per optimiser parameter group (nnU-Net has
  one group, so this is nnU-Net's clipping; a method with one group per network clips each
  network on its own).

The network built and checkpointed is nnU-Net's own, so ``nnUNetv2_predict`` needs nothing extra.
"""
from __future__ import annotations

import os
import sys
from typing import List

import numpy as np
import torch
from torch import distributed as dist
from torch import autocast

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.helpers import dummy_context

from nnunet_ext.atomic_io import replace_atomic
from nnunet_ext.core.feature_taps import FeatureTaps
from nnunet_ext.core.logging import ExtLocalLogger
from nnunet_ext.core.loss_terms import LossTerm, StepState, total_loss

from nnunetv2.training.logging.nnunet_logger import LocalLogger

#: the keys nnU-Net's own logger keeps (read from nnU-Net, so keys it adds later are never taken for ours)
NNUNET_LOG_KEYS = tuple(LocalLogger().my_fantastic_logging)


class nnUNetTrainerExt(nnUNetTrainer):
    """Base trainer of nnunet_ext. With no loss terms it trains exactly like ``nnUNetTrainer``."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.logger.local_logger = ExtLocalLogger(self.logger.local_logger.verbose)
        self.loss_terms: List[LossTerm] = []
        self.feature_taps: FeatureTaps | None = None
        self.aux_loss_names: List[str] = []

    # ---- what a method overrides -------------------------------------------------------------
    def build_loss_terms(self) -> List[LossTerm]:
        """The auxiliary loss terms of this method (default: none)."""
        return []

    # ---- machinery ------------------------------------------------------------------------------
    def run_training(self):
        """nnU-Net's loop; if it raises, every data augmenter of this trainer (nnU-Net's train/val loaders and
        any a method adds, e.g. CPS's unlabelled loader) is shut down before the error propagates, so a crashed
        run exits instead of waiting on its worker processes at interpreter shutdown."""
        try:
            super().run_training()
        except BaseException:
            self.shut_down_augmenters()
            raise

    def shut_down_augmenters(self) -> None:
        """Stop the worker processes of every augmenter in this trainer's ``dataloader*`` attributes; a failure
        is printed, never raised (the error that stopped training is the one to see)."""
        for name, value in list(vars(self).items()):
            finish = getattr(value, "_finish", None) if name.startswith("dataloader") else None
            if callable(finish):
                try:
                    finish()
                except Exception as e:  # shutting down after an error: report, never mask the error
                    print(f"nnunet_ext: could not shut down {name}: {e!r}", file=sys.stderr)

    def initialize(self):
        if self.was_initialized:
            return super().initialize()  # raises nnU-Net's own error
        super().initialize()
        self.loss_terms = [t.to(self.device) for t in self.build_loss_terms()]
        names = [n for t in self.loss_terms for n in t.required_features(self.network)]
        # hooks go on the plain module; torch.compile traces them at the (lazy) first call
        self.feature_taps = FeatureTaps(self.network, names) if names else None

    def register_aux_losses(self, names: List[str]) -> None:
        """Declare the names of logged auxiliary terms (done on first use, or earlier by a method)."""
        new = [n for n in names if n not in self.aux_loss_names]
        if new:
            self.aux_loss_names.extend(new)
            self.logger.local_logger.register(new, self.current_epoch)

    def log_extra(self, name: str, value: float) -> None:
        """Log one per-epoch value that is not a training-loss term (drawn and printed like the terms)."""
        self.logger.local_logger.register([name], self.current_epoch)
        self.logger.log(name, float(value), self.current_epoch)

    def segmentation_loss(self, output, target) -> torch.Tensor:
        """nnU-Net's segmentation loss (Dice + CE, deep supervision) of ``output``; ``train_losses`` logs it."""
        return self.loss(output, target)

    def training_forward(self, data, target):
        """The network's output in the train step: ``self.network(data)`` (a method whose network also takes the
        target overrides this)."""
        return self.network(data)

    def forward_with_terms(self, data, target, extras: dict | None = None):
        """One forward pass: returns ``(total, seg_loss, {name: WeightedTerm})``."""
        output = self.training_forward(data, target)
        features = self.feature_taps.pop() if self.feature_taps is not None else {}
        seg_loss = self.segmentation_loss(output, target)
        state = StepState(data=data, target=target, output=output, features=features, extras=dict(extras or {}))
        terms = {}
        for term in self.loss_terms:
            terms.update(term(state))
        return total_loss(seg_loss, terms), seg_loss, terms

    def batch_to_device(self, batch: dict):
        """``(data, target)`` of an nnU-Net batch on the trainer's device (target: tensor or list of tensors)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        return data, target

    def train_step(self, batch: dict) -> dict:
        if not self.loss_terms:
            return super().train_step(batch)
        return self.step_with_terms(*self.batch_to_device(batch))

    def step_with_terms(self, data, target, extras: dict | None = None) -> dict:
        """One optimiser step on ``seg + sum(weight * term)``; returns the values to log (nnU-Net's train_step
        contract: ``{"loss": seg_loss, term: value, ...}``)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            loss, seg_loss, terms = self.forward_with_terms(data, target, extras)
        self.backward_and_step(loss)
        self.register_aux_losses(list(terms))
        # nnU-Net's train_losses stays the segmentation loss (comparable with stock and with val_losses);
        # each auxiliary term is logged on its own, unweighted. One device-to-host copy for all of them (one
        # synchronisation per step, as nnU-Net's own train_step has), in float32 (a term may be half precision).
        values = torch.stack([v.detach().float().reshape(()) for v in [seg_loss] + [t.value for t in terms.values()]])
        values = values.cpu().numpy()
        out = {"loss": np.array(values[0])}  # 0-d arrays, as nnU-Net's train_step returns
        for i, k in enumerate(terms, start=1):
            out[k] = np.array(values[i])
        return out

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """nnU-Net's update: GradScaler on CUDA, gradient norm clipped at 12 (per parameter group)."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self._clip_gradients()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self._clip_gradients()
            self.optimizer.step()

    def _clip_gradients(self, max_norm: float = 12) -> None:
        groups = self.optimizer.param_groups
        if len(groups) == 1:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), max_norm)
        else:
            for g in groups:
                torch.nn.utils.clip_grad_norm_(g["params"], max_norm)

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if not self.aux_loss_names:
            return
        outputs = collate_outputs(train_outputs)
        for name in self.aux_loss_names:
            vals = np.asarray(outputs.get(name, [np.nan]), dtype=np.float64)
            if self.is_ddp:
                gathered = [None for _ in range(dist.get_world_size())]
                dist.all_gather_object(gathered, vals)
                vals = np.concatenate([np.ravel(g) for g in gathered])
            self.logger.log(name, float(np.nanmean(vals)), self.current_epoch)

    def on_epoch_end(self):
        local = self.logger.local_logger
        local.pad_to(self.current_epoch)  # one value per epoch for every extra key, NaN where none was logged
        for name in local.extra_keys:
            self.print_to_log_file(name, np.round(self.logger.get_value(name, step=-1), decimals=5))
        super().on_epoch_end()

    # ---- method state in nnU-Net's checkpoint -----------------------------------------------------
    def checkpoint_extras(self) -> dict:
        """Method state to store in the checkpoint (picklable; default: nothing)."""
        return {}

    def restore_checkpoint_extras(self, state: dict) -> None:
        """Restore what ``checkpoint_extras`` returned (called by ``load_checkpoint``)."""

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        extras = self.checkpoint_extras()
        if not extras or self.local_rank != 0 or self.disable_checkpointing or not os.path.isfile(filename):
            return
        # nnU-Net builds its checkpoint dict inside save_checkpoint; ours is added to the file it wrote
        # (read back, extended, replaced atomically), so nnU-Net's own fields stay exactly nnU-Net's
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint["nnunet_ext"] = extras
        replace_atomic(filename, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        # nnU-Net 2.8.1's load_checkpoint only works with a file name (a dict argument is never bound)
        super().load_checkpoint(filename_or_checkpoint)
        # every logged key that is not nnU-Net's own is one of our curves (terms re-register on first use)
        logged = self.logger.local_logger.my_fantastic_logging
        self.logger.local_logger.register([k for k in logged if k not in NNUNET_LOG_KEYS])
        if type(self).restore_checkpoint_extras is not nnUNetTrainerExt.restore_checkpoint_extras:
            checkpoint = filename_or_checkpoint if isinstance(filename_or_checkpoint, dict) else \
                torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
            if checkpoint.get("nnunet_ext"):
                self.restore_checkpoint_extras(checkpoint["nnunet_ext"])
