"""Self-Rewarding Language Models, a reference implementation in PyTorch.

`pip install -e .` makes the packages model, kernels, sample, judge, train and
eval importable; the scripts inside them are run as plain files
(`python sample/generate.py ...`, `torchrun train/dpo.py ...`).
"""
from setuptools import setup

setup(
    name="self-rewarding",
    version="0.1.0",
    description="Self-Rewarding Language Models (Yuan et al., 2024) in pure PyTorch",
    python_requires=">=3.10",
    packages=["model", "kernels", "sample", "judge", "train", "eval"],
    install_requires=[
        "torch>=2.6",
        "sentencepiece",
        "safetensors",
        "numpy",
        "tqdm",
        "pyyaml",
        "triton; platform_system == 'Linux'",
    ],
    extras_require={
        # The CPU demo model ships as a GGUF file with a byte-level BPE tokenizer inside.
        "demo": ["gguf>=0.10", "tokenizers>=0.19"],
        "flash": ["flash-attn"],
        "plots": ["matplotlib"],
        # transformers is only a reference implementation for the tests, never imported by the project.
        "dev": ["pytest", "pytest-xdist", "transformers>=4.45", "accelerate", "protobuf",  # transformers needs them for GGUF and tokenizer.model
                "gguf>=0.10", "tokenizers>=0.19", "scipy",
                "tiktoken"],  # Meta's Llama 3 tokenizer runs on it: the reference for reading its tokenizer.model
    },
)
