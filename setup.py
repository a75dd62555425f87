"""t2v-turbo: distil text-to-video diffusion models into fast 4-step generators with mixed reward feedback."""
import re
from pathlib import Path

from setuptools import find_packages, setup

# one version, read from the package (``t2v-turbo --version`` prints the same)
VERSION = re.search(r'^__version__ = "([^"]+)"', Path("t2v_turbo/__init__.py").read_text(encoding="utf-8"), re.M).group(1)

setup(
    name="t2v-turbo",
    version=VERSION,
    description="Consistency distillation with mixed reward feedback for text-to-video diffusion models",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["t2v_turbo*", "distill*", "rewards*", "eval*", "miniworld*"]),
    include_package_data=True,
    package_data={"miniworld": ["assets/**/*", "data/*"], "eval.vbench": ["data/*"]},
    install_requires=[
        # torch/torchvision pinned together: open_clip needs a torchvision that matches torch.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "diffusers>=0.35",
        "transformers>=4.50",
        "open_clip_torch>=2.24",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "filelock>=3.12",
        "peft>=0.15",
        "av>=12",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.15",
        "imageio>=2.30",
        "matplotlib>=3.7",
        "numpy",
        "pillow",
        "ftfy",
        "regex",
    ],
    extras_require={
        "gpu": ["xformers", "bitsandbytes"],
        "wandb": ["wandb"],
        # ZeRO-2 (configs/accelerate/zero2.yaml); a source distribution that builds without a GPU (ops compile on use)
        "deepspeed": ["deepspeed>=0.15"],
        "test": ["pytest>=8", "pytest-timeout", "import-linter>=2.0"],
    },
    entry_points={
        "console_scripts": ["t2v-turbo=t2v_turbo.cli:main"],
        # rewards that packages above the reward layer add to the registry (rewards.base.ENTRY_POINT_GROUP)
        "t2v_turbo.rewards": ["miniworld = miniworld.rewards"],
    },
)
