"""imgclf: from-scratch CNN vs. ImageNet transfer learning on your images, as a DVC + MLflow pipeline."""

__version__ = "0.1.0"
