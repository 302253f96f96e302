"""pytest set-up for the benchmarks (``python -m pytest benchmarks``); not part of the
test suite (pyproject's testpaths is ``tests``).

The source tree goes first on sys.path (the package need not be installed). Without
a GPU, ``backend="auto"`` must mean the analytic PyTorch path, not the Triton
interpreter that the unit tests use (orders of magnitude slower), so TRITON_INTERPRET
is dropped here, before anything imports the kernels. Do not collect ``tests`` and
``benchmarks`` in one pytest run.
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if not torch.cuda.is_available():
    os.environ.pop("TRITON_INTERPRET", None)
