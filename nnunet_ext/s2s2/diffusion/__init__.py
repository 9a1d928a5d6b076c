"""The mask-conditioned diffusion generator of S2S2 (docs/methods/s2s2.md), built with diffusers.

Laid out as diffusers lays out its own code:

* ``spec``: what a tuned model knows about its data (``DiffusionSpec``), where it lives (``tuned_folder``),
  the errors.
* ``models``: the networks and what feeds them (``build_unet``, ``load_init_unet``, ``one_hot``,
  ``palette_image``).
* ``schedulers``: the DDPM training scheduler and the DDIM sampling scheduler.
* ``pipelines``: a network + its scheduler + the spec: training loss and sampling (``MaskDiffusion``,
  ``ControlNetDiffusion``, ``load_tuned``).
* ``io``: the folder of a tuned model (save, read the spec, the local Stable Diffusion parts).
* ``generator``: the S2S2 stack generator (``DiffusionGenerator``) that ``s2s2-generate`` runs.

Model: a diffusers ``UNet2DModel`` whose input is the noisy image (the C channels as nnU-Net normalised them, then
standardised with the training slices' per-channel mean and std) concatenated with the one-hot label map (one
channel per label value: ``LabelManager.all_labels`` plus the ignore label; any other value, such as nnU-Net's -1
outside the nonzero mask or the padding, is all zeros); it predicts the noise (epsilon). Trained with
``DDPMScheduler`` (1000 steps, ``squaredcos_cap_v2``), sampled with ``DDIMScheduler`` (same betas, ``trailing``
timesteps, eta 0 and 25 steps by default). The condition is dropped (all zeros) for a fraction ``cond_drop`` of the
training samples, so classifier-free guidance (``guidance`` > 1) can be used when sampling (default 1: none).

Sizes: the network is fully convolutional (plain ResNet blocks; self-attention only in the mid block, at the
lowest resolution, optional), tuned on ``image_size`` x ``image_size`` crops of 2D slices. A copy is sampled at
the slice's own size: the mask is padded (no label) up to a multiple of ``2 ** (levels - 1)``, the sample is
cropped back. No resizing: every copy has the exact pixel grid of the preprocessed slice. 3D data: slice by slice
(the paper's generators are 2D), the slices of a volume sampled independently.

Copies: each generated slice is standardised to the real slice's per-channel mean and std (as GIN), so the stack
keeps nnU-Net's normalisation. Slice ``z`` of copy ``k`` of case ``c`` depends only on ``(seed, c, k, z)``
(``generator``: a generator of its own draws the initial noise and, with eta > 0, DDIM's noise): shards, batch
sizes and resumed runs give the same stack (up to floating-point differences between devices).

Folder of a tuned model (``io``; ``MaskDiffusion.save`` / ``load``): ``unet/`` (``save_pretrained``: the EMA weights),
``scheduler/`` (the DDPM training scheduler, ``save_pretrained``), ``s2s2_diffusion.json`` (labels, channels,
statistics, training settings; written last). It is under ``$nnUNet_results`` (``tuned_folder``).
"""
from nnunet_ext.s2s2.diffusion.generator import DiffusionGenerator
from nnunet_ext.s2s2.diffusion.io import read_spec, weights_checksum
from nnunet_ext.s2s2.diffusion.models import (PALETTE, autocast, build_unet, describe, load_init_unet, one_hot,
                                              palette_image, size_multiple, unet_size)
from nnunet_ext.s2s2.diffusion.pipelines import (DEFAULT_PROMPT, ControlNetDiffusion, MaskDiffusion, load_tuned,
                                                 modality_of)
from nnunet_ext.s2s2.diffusion.schedulers import sampling_scheduler, train_scheduler
from nnunet_ext.s2s2.diffusion.spec import (GENERATOR_PREFIX, SPEC_FILE, DiffusionModelError, DiffusionSpec,
                                            tune_command, tuned_folder)

__all__ = ["DiffusionSpec", "MaskDiffusion", "ControlNetDiffusion", "DiffusionGenerator", "DiffusionModelError",
           "build_unet", "train_scheduler", "one_hot", "palette_image", "tuned_folder", "tune_command",
           "load_init_unet", "load_tuned", "read_spec", "modality_of", "SPEC_FILE", "DEFAULT_PROMPT",
           "GENERATOR_PREFIX", "PALETTE", "autocast", "describe", "sampling_scheduler", "size_multiple", "unet_size",
           "weights_checksum"]
