"""capt_jax: Causality-Aware Post-Training (CAPT) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="capt_jax",
    version="0.1.0",
    description="Causality-Aware Post-Training (Gui & Ji 2025) for JAX/Flax on TPU, GPU and CPU",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["capt_jax", "capt_jax.*"]),
    # The CPU decoding kernel's source, compiled on first use (capt_jax/model/panels.py).
    package_data={"capt_jax.model": ["panel_matmul.cc"]},
    install_requires=[
        "jax>=0.6",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "transformers>=4.50",
        "huggingface-hub>=0.30",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "ml-dtypes>=0.4",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",
        "pyyaml>=6",
        "openai>=1.0",
        "english-words>=2.0",  # PrOntoQA's nonsense split: pseudo-words that are no English word
    ],
    extras_require={
        # GGUF conversion goes through transformers' GGUF reader, which builds torch tensors.
        "gguf": ["gguf>=0.10", "accelerate>=1.0", "torch"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # make test runs on two workers
            "torch==2.13.0",
            "gguf>=0.10",
            "accelerate>=1.0",
            "peft>=0.15",
            # The NF4 reference: its CPU quantize/dequantize and transformers' 4-bit loading (tests only).
            "bitsandbytes>=0.50",
        ],
    },
)
