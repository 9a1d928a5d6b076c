"""``nnUNetTrainerS2S2``: nnU-Net trained with semantic stacking (S2S2, docs/methods/s2s2.md).

Each training sample is paired with one random copy from its semantic stack (``nnunet-ext s2s2-generate``),
carried through nnU-Net's loader as extra channels (one spatial augmentation for the pair, independent intensity
augmentation: ``get_training_transforms``, ``nnunet_ext.s2s2.data``). Loss = Dice+CE(real)
+ ``s2s2_copy_weight`` * Dice+CE(copy) + ``s2s2_alpha_enc`` * (1 - cos) of the deepest encoder feature
+ ``s2s2_alpha_dec`` * (1 - cos) of the last decoder feature (``nnunet_ext.s2s2.term``), defaults 1.0 / 1.0 / 1.0:
the paper's TransUNet weights (``s2s2_enc_stages`` = k puts the encoder term on the k deepest encoder stages).

Relative weighting: TransUNet's total is 0.5 (CE + CE_copy) + 0.5 (Dice + Dice_copy) + enc + dec, i.e. each
image's segmentation loss at weight 0.5; nnU-Net's Dice + CE has weights 1 and 1, so with the same 1.0 / 1.0 the
segmentation part weighs twice as much here and the consistency terms count **half** as much relative to it as
in the paper. ``nnUNetTrainerS2S2_paperWeights`` (consistency 2.0 / 2.0) restores the paper's ratio.
Validation and prediction are stock nnU-Net's (real images only); the checkpoint holds the plain network.

The stack used: ``s2s2_generator`` (class attribute), or the only stack present for the configuration.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from nnunet_ext.core.loss_terms import LossTerm
from nnunet_ext.core.trainer import nnUNetTrainerExt
from nnunet_ext.paths import dataset_id
from nnunet_ext.s2s2.generate import S2S2Error
from nnunet_ext.s2s2.stack import available_stacks, stack_folder
from nnunet_ext.s2s2.term import S2S2Term, half


class nnUNetTrainerS2S2(nnUNetTrainerExt):
    """S2S2 semantic stacking: real + generated copy, seg loss on both, cosine consistency (enc 1.0, dec 1.0).

    The paper's TransUNet weights on nnU-Net's Dice + CE (weights 1 and 1): the consistency counts half as much
    relative to the segmentation loss as in the paper (whose segmentation losses are halved); see
    ``nnUNetTrainerS2S2_paperWeights``.
    """

    s2s2_alpha_enc: float = 1.0
    s2s2_alpha_dec: float = 1.0
    s2s2_copy_weight: float = 1.0
    #: how many of the deepest encoder stage outputs get the encoder consistency, each at ``s2s2_alpha_enc``
    #: (1: the bottleneck only; 2: the bottleneck and the stage above it)
    s2s2_enc_stages: int = 1
    #: which stack (``gin``, ...); None: the only one made for this configuration
    s2s2_generator: Optional[str] = None

    def build_loss_terms(self) -> List[LossTerm]:
        # cooperative: a class combined with another method (nnUNetTrainerS2S2FD) gets both methods' terms
        return super().build_loss_terms() + [S2S2Term(self.loss, self.s2s2_copy_weight, self.s2s2_alpha_enc,
                                                      self.s2s2_alpha_dec, self.s2s2_enc_stages)]

    def _generate_command(self) -> str:
        ds_id = dataset_id(self.plans_manager.dataset_name)
        plans = f" -p {self.plans_manager.plans_name}" if self.plans_manager.plans_name != "nnUNetPlans" else ""
        return (f"nnunet-ext s2s2-generate -d {ds_id} -c {self.configuration_name}{plans} "
                f"--generator {self.s2s2_generator or 'gin'}")

    def stack_folder(self):
        base, ident = self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier
        made = available_stacks(base, ident)
        gen = self.s2s2_generator
        if gen is None:
            if len(made) > 1:
                raise S2S2Error(f"{type(self).__name__}: several semantic stacks exist for {ident} "
                                f"({', '.join(made)}); choose one with a trainer variant that sets s2s2_generator")
            gen = made[0] if made else None
        if gen is None or gen not in made:
            raise S2S2Error(f"{type(self).__name__} needs a semantic stack and found none"
                            + (f" for generator {gen!r}" if gen else "") + f" in {base}; make it with: "
                            f"{self._generate_command()}")
        return stack_folder(base, ident, gen)

    def get_tr_and_val_datasets(self):
        from nnunet_ext.s2s2.data import StackedDataset

        tr_keys, val_keys = self.do_split()
        folder = self.stack_folder()
        missing = [k for k in tr_keys if not (folder / f"{k}.b2nd").is_file()]
        if missing:
            raise S2S2Error(f"the semantic stack in {folder} lacks {len(missing)} training case(s) (e.g. "
                            f"{', '.join(missing[:3])}): finish it with {self._generate_command()}")
        self.print_to_log_file(f"S2S2: semantic stack {folder}")
        dataset_tr = StackedDataset(self.preprocessed_dataset_folder, tr_keys,
                                    folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage,
                                    stack_folder=str(folder))
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        return dataset_tr, dataset_val

    @classmethod
    def get_training_transforms(cls, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False, foreground_labels=None,
                                regions=None, ignore_label=None):
        """nnU-Net's transforms, intensity augmentation drawn separately for the real image and its copy
        (``nnunet_ext.s2s2.data.paired_training_transforms``; C = the dataset's channels)."""
        from nnunet_ext.s2s2.data import paired_training_transforms

        base = super().get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                               do_dummy_2d_data_aug, use_mask_for_norm, is_cascaded,
                                               foreground_labels, regions, ignore_label)
        return paired_training_transforms(base, len(use_mask_for_norm))

    def train_step(self, batch: dict) -> dict:
        data, target = self.batch_to_device(batch)
        c = self.num_input_channels
        pair = torch.cat((data[:, :c], data[:, c:]))
        target = [torch.cat((t, t)) for t in target] if isinstance(target, list) else torch.cat((target, target))
        return self.step_with_terms(pair, target)

    def segmentation_loss(self, output, target) -> torch.Tensor:
        return self.loss(half(output, 0), half(target, 0))  # the real half: nnU-Net's train_losses
