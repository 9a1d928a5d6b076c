"""nnunet_ext's trainers for nnU-Net's ``nnUNet_extTrainer`` search path.

Point nnU-Net here with ``export nnUNet_extTrainer="$(nnunet-ext trainers-path)"``. nnU-Net imports
every module of this folder as a top-level module, so modules here stay tiny and import quickly;
the logic lives in the ``nnunet_ext`` package.
"""
