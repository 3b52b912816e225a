"""imgcls: train, compare and explain image classifiers — every seed method a config away."""

__version__ = "0.1.0"
