from setuptools import find_packages, setup

setup(
    name="nnunet_ext",
    version="0.1.0",
    description="Recent segmentation methods (feature distillation, semantic stacking, CPS, GMS, STEGO) "
                "as nnU-Net v2 trainers and tools",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_ext", "nnunet_ext.*"]) + ["nnunet_ext_trainers"],
    # the nnUNet_extTrainer folder is the repository's trainers/, installed as package nnunet_ext_trainers
    package_dir={"nnunet_ext_trainers": "trainers"},
    install_requires=[
        "nnunetv2>=2.8.1",
        "torch>=2.1",
        "numpy",
        "scipy",
        "SimpleITK",
        "tqdm",
        "h5py",
        "pillow",
        "matplotlib",
        "monai>=1.3",        # surface distances (NSD, HD95) for nnunet-ext evaluate
        "torchio>=0.19",     # MRI corruptions (motion, ghosting, bias field) for nnunet-ext robustness
        "pandas",
        "diffusers>=0.30",   # frozen VAEs (AutoencoderKL, TAESD as AutoencoderTiny): GMS, S2S2, STEGO
        "safetensors",
        "timm",              # ViT backbones for STEGO (built locally, weights from a local file)
    ],
    extras_require={
        # the paper's S2S2 generator (ControlNet on a local Stable Diffusion): CLIP text encoder and tokenizer
        "controlnet": ["transformers>=4.40"],
        "test": ["pytest", "transformers>=4.40"],
    },
    entry_points={"console_scripts": ["nnunet-ext=nnunet_ext.cli:main"]},
)
