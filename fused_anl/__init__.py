"""fused_anl: fused robust losses for learning with noisy labels."""
from . import reference  # noqa: F401
from ._registry import LOSSES  # noqa: F401
