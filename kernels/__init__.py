"""Triton kernels of fused_anl (imported as ``fused_anl.kernels``).

- ``_codes``: term codes and the hyperparameter layout (plain Python).
- ``_terms``: the loss family's math as ``@triton.jit`` device functions.
- ``row_loss``: the kernels (single-block, streaming and split-row paths).
- ``launch``: path and block-size choice, allocation and launches.

Importing this package does not import Triton; ``launch`` does.
"""
