"""nnunet_ext: recent segmentation methods as nnU-Net v2 trainers, planners and tools.

Everything runs inside nnU-Net's own pipeline (``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train D C F -tr <Trainer>``, ``nnUNetv2_predict``). Trainers are found by nnU-Net through
the ``nnUNet_extTrainer`` environment variable: ``export nnUNet_extTrainer="$(nnunet-ext trainers-path)"``.
"""
__version__ = "0.1.0"
