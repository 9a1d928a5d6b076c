"""``nnUNetTrainerFLARE22``: CPS + UIF, internal feature distillation and (where a stack exists) S2S2, composed.

The FLARE22 method (docs/methods/flare22.md) is semi-supervised: cross pseudo supervision of two networks on
labelled and unlabelled images, with uncertainty image filtering of the unlabelled cases. This trainer adds the
project's two single-network regularisers to it. Nothing is re-implemented: the class is
``nnUNetTrainerS2S2, nnUNetTrainerFD, nnUNetTrainerCPS_UIF`` combined, and each part keeps its own code.

* CPS + UIF (``nnunet_ext.cps``): the network is a ``CPSNetworkPair``; one optimiser parameter group per
  network; network A's Dice+CE on the labelled patches is ``train_losses``; ``CPSTerm`` adds B's (``seg_b``) and
  both CPS directions (``cps_a``, ``cps_b``) on every patch; UIF keeps the most certain unlabelled cases after the
  warm-up (its selection in the checkpoint); validation and ``nnUNetv2_predict`` use the mean of both networks.
* FD (``nnunet_ext.fd``): ``FeatureDistillationTerm`` on **each** network, on that network's features of the whole
  batch (labelled, their S2S2 copies, unlabelled): the features are tapped as ``net_a.<tap>`` / ``net_b.<tap>``.
* S2S2 (``nnunet_ext.s2s2``), when a semantic stack exists for the configuration (``nnunet-ext s2s2-generate``):
  each labelled patch comes with its generated copy; ``S2S2Term`` (the copy's Dice+CE, cosine consistency of the
  deepest encoder and the last decoder feature between real and copy) on each network, on the labelled part of
  the batch. Without a stack (or with ``use_s2s2 = False``) the trainer trains CPS + UIF + FD and says so in one
  line of the training log.

One step: ``batch = cat(labelled real (n), labelled copies (n, with S2S2), unlabelled (m))``, one forward pass of
the pair, ``loss = seg_a + seg_b + cps_weight * (cps_a + cps_b) + each network's FD and S2S2 terms``. A
single-network term on the pair (``PerNetworkTerm``) is logged as the mean of its two networks' values and enters
the total with twice its own weight: every network gets exactly the gradient the single-network trainer would
give it (the networks share no parameter), and the logged curves (``intra_fd``, ``inter_fd``, ``seg_copy``,
``consist_enc``, ``consist_dec``) compare with those trainers'.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from nnunet_ext.core.loss_terms import LossTerm, StepState, WeightedTerm
from nnunet_ext.core.network import unwrap_network
from nnunet_ext.cps.term import CPSTerm, labelled_part, num_labelled
from nnunet_ext.cps.trainer import nnUNetTrainerCPS, nnUNetTrainerCPS_UIF
from nnunet_ext.fd.trainer import nnUNetTrainerFD
from nnunet_ext.s2s2.stack import available_stacks
from nnunet_ext.s2s2.term import S2S2Term
from nnunet_ext.s2s2.trainer import nnUNetTrainerS2S2

PAIR_NETWORKS = ("net_a", "net_b")


class PerNetworkTerm(LossTerm):
    """A single-network loss term applied to each network of a ``CPSNetworkPair`` (training output ``(a, b)``).

    Network i sees its own output and its own features (tapped as ``<network>.<tap>``), and the batch as it is or
    as ``view`` narrows it. Each logged value is the mean over the networks and enters the total with
    ``len(networks)`` times the inner term's weight (see the module docstring).
    """

    def __init__(self, term: LossTerm, networks: Sequence[str] = PAIR_NETWORKS,
                 view: Optional[Callable[[StepState], StepState]] = None):
        super().__init__()
        self.term = term
        self.networks = tuple(networks)
        self.view = view

    def required_features(self, network) -> List[str]:
        pair = unwrap_network(network)
        return [f"{name}.{tap}" for name in self.networks
                for tap in self.term.required_features(getattr(pair, name))]

    def forward(self, state: StepState) -> Dict[str, WeightedTerm]:
        values: Dict[str, List[torch.Tensor]] = {}
        weights: Dict[str, float] = {}
        for i, name in enumerate(self.networks):
            prefix = name + "."
            features = {k[len(prefix):]: v for k, v in state.features.items() if k.startswith(prefix)}
            sub = StepState(data=state.data, target=state.target, output=state.output[i], features=features,
                            extras=state.extras)
            for key, t in self.term(self.view(sub) if self.view is not None else sub).items():
                values.setdefault(key, []).append(t.value)
                weights[key] = t.weight
        k = len(self.networks)
        return {key: WeightedTerm(sum(v) / k, weights[key] * k) for key, v in values.items()}


def labelled_real_and_copy(state: StepState) -> StepState:
    """S2S2's view of a FLARE22 batch ``[real (n), copy (n), unlabelled (m)]``: the first 2n patches, the target
    twice (S2S2's term takes the second half of output and target as the copy's)."""
    n2 = 2 * num_labelled(state.target)
    target = state.target
    target = [torch.cat((t, t)) for t in target] if isinstance(target, (list, tuple)) else torch.cat((target, target))
    return StepState(data=state.data[:n2], target=target, output=labelled_part(state.output, n2),
                     features={k: v[:n2] for k, v in state.features.items()}, extras=state.extras)


class nnUNetTrainerFLARE22(nnUNetTrainerS2S2, nnUNetTrainerFD, nnUNetTrainerCPS_UIF):
    """CPS (weight 1, no ramp-up) + UIF (keep the 10% most certain after 20% of the epochs) + FD (0.015) on each
    network + S2S2 (1.0 / 1.0 / 1.0) on each network where a semantic stack exists."""

    # CPS + UIF: the FLARE22 settings (docs/methods/flare22.md: weight 1, no ramp-up, 200 of 2000 kept)
    cps_weight: float = 1.0
    cps_rampup: float = 0.0
    uif_warmup: float = 0.2
    uif_keep: float = 0.1
    # FD: the authors' default
    fd_lambda: float = 0.015
    # S2S2: the paper's default; used only where a stack exists for the configuration
    s2s2_alpha_enc: float = 1.0
    s2s2_alpha_dec: float = 1.0
    s2s2_copy_weight: float = 1.0
    #: False: never S2S2, even where a stack exists (``nnUNetTrainerFLARE22_noS2S2``)
    use_s2s2: bool = True

    _s2s2_checked: bool = False
    _s2s2_folder: Optional[Path] = None

    # ---- S2S2 where a stack exists --------------------------------------------------------------------------------
    def s2s2_stack(self) -> Optional[Path]:
        """The semantic stack S2S2 trains with, or None; decided once per run and said in the training log.

        None: ``use_s2s2`` is False, or no stack exists for this configuration (for ``s2s2_generator`` when set).
        Several stacks and no ``s2s2_generator``: S2S2's error (choose one with a variant).
        """
        if not self._s2s2_checked:
            self._s2s2_checked = True
            base, ident = self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier
            made = available_stacks(base, ident)
            if not self.use_s2s2:
                self.print_to_log_file(f"{type(self).__name__}: S2S2 switched off (use_s2s2 = False); "
                                       f"training CPS + UIF + FD")
            elif not made or (self.s2s2_generator is not None and self.s2s2_generator not in made):
                self.print_to_log_file(f"{type(self).__name__}: no semantic stack for {ident} in {base}; training "
                                       f"CPS + UIF + FD without S2S2 (to add it: {self._generate_command()})")
            else:
                self._s2s2_folder = self.stack_folder()
        return self._s2s2_folder

    def get_tr_and_val_datasets(self):
        if self.s2s2_stack() is not None:
            return super().get_tr_and_val_datasets()  # S2S2's: each case with one copy of its stack as channels
        return super(nnUNetTrainerS2S2, self).get_tr_and_val_datasets()  # nnU-Net's

    # ---- the terms ---------------------------------------------------------------------------------------------
    def build_loss_terms(self) -> List[LossTerm]:
        """The parts' terms (S2S2 -> FD -> CPS through ``super``): CPS's works on the pair, every other on each
        network; S2S2's on the labelled part of the batch, and only where a stack exists."""
        terms = []
        for term in super().build_loss_terms():
            if isinstance(term, S2S2Term):
                if self.s2s2_stack() is None:
                    continue
                term = PerNetworkTerm(term, view=labelled_real_and_copy)
            elif not isinstance(term, CPSTerm):
                term = PerNetworkTerm(term)
            terms.append(term)
        return terms

    # network A's Dice+CE on the labelled real patches (the first n of the batch), as in CPS
    segmentation_loss = nnUNetTrainerCPS.segmentation_loss

    def train_step(self, batch: dict) -> dict:
        """S2S2's paired channels (real, copy) become 2n patches, then CPS's step appends the unlabelled batch."""
        if self.s2s2_stack() is not None:
            c = self.num_input_channels
            data = batch["data"]
            batch = dict(batch, data=torch.cat((data[:, :c], data[:, c:])))
        return nnUNetTrainerCPS.train_step(self, batch)
