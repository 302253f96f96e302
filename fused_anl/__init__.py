"""fused_anl: fused robust losses for learning with noisy labels.

The Active Negative Loss family (NCE, NNCE, NFL, NNFL, ANL-CE, ANL-FL) and the
baselines of the paper (CE, FL, MAE, RCE, GCE, SCE, AGCE, AUL, AEL and the APL/ALF
combinations), each as a fused functional (``fused_anl.anl_ce``), an ``nn.Module``
(``fused_anl.ANLCELoss``) and an eager reference (``fused_anl.reference.anl_ce``).
"""
import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path


def _ensure_kernels_package():
    """Make the top-level kernels/ folder importable as ``fused_anl.kernels``.

    A wheel or an editable install maps it there already; running from the source
    tree (no install) loads it from the folder beside this package.
    """
    name = __name__ + ".kernels"
    if name in _sys.modules:
        return
    try:
        if _ilu.find_spec(name) is not None:
            return
    except ImportError:
        pass
    src = _Path(__file__).resolve().parent.parent / "kernels"
    spec = _ilu.spec_from_file_location(name, src / "__init__.py",
                                        submodule_search_locations=[str(src)])
    if spec is None:
        raise ImportError(f"fused_anl: cannot find the kernels package (looked in {src})")
    mod = _ilu.module_from_spec(spec)
    _sys.modules[name] = mod
    spec.loader.exec_module(mod)


_ensure_kernels_package()

from . import reference  # noqa: E402,F401
from ._registry import BATCH_LOSSES, LOSSES  # noqa: E402,F401
from . import batch_entropy  # noqa: E402,F401  (the module: fused_anl.batch_entropy.batch_entropy)
from .functional import *  # noqa: E402,F401,F403
from .functional import __all__ as _functional_all  # noqa: E402
from .modules import *  # noqa: E402,F401,F403
from .modules import __all__ as _modules_all  # noqa: E402
from .factory import PRESETS, get_loss  # noqa: E402,F401
from .linear import *  # noqa: E402,F401,F403
from .linear import __all__ as _linear_all  # noqa: E402
from . import noise  # noqa: E402,F401
from .noise import asymmetric_noise, symmetric_noise  # noqa: E402,F401
from .recipes import l1_penalty  # noqa: E402,F401
from .recipe import Recipe, from_config  # noqa: E402,F401

__version__ = "0.1.0"
__all__ = (list(_functional_all) + list(_modules_all) + list(_linear_all)
           + ["PRESETS", "get_loss", "reference", "LOSSES", "BATCH_LOSSES", "batch_entropy",
              "noise", "symmetric_noise",
              "asymmetric_noise", "l1_penalty", "from_config", "Recipe"])
