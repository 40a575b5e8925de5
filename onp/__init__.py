"""ONP: repair backdoored image classifiers.

Every model in ONP takes images as float tensors ``[B, C, H, W]`` with values in ``[0, 1]``;
a model's own input scaling and normalization live inside it (see :mod:`onp.models.bundle`).
"""

__version__ = "0.1.0"
