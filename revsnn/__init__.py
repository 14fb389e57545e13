"""revsnn: fused Triton kernels for memory-frugal spiking neural network training."""
import os as _os

# In a source checkout the Triton kernels sit in ../kernels; installed, they are revsnn/kernels
# (setup.cfg maps them there). Either way they import as revsnn.kernels.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "kernels")):
    _root = _os.path.dirname(_here)
    if _os.path.isfile(_os.path.join(_root, "kernels", "rev_lif.py")):
        __path__.append(_root)  # noqa: F821  (the package's own __path__)

from . import functional, reference  # noqa: E402
from .nn import LIF, RevLIF  # noqa: E402
from .state import RevLIFState  # noqa: E402
from .convert import convert  # noqa: E402

__all__ = ["LIF", "RevLIF", "RevLIFState", "convert", "functional", "reference"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``revsnn.models`` is imported on first use (it is not needed to use the layers)."""
    if name == "models":
        import importlib
        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module 'revsnn' has no attribute {name!r}")
