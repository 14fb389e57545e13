"""Functional API, one module per op: validation and reshaping around ``revsnn.ops``."""
from ..state import RevLIFState
from ._lif import lif, lif_step
from ._rev_lif import rev_lif, rev_lif_inverse

__all__ = ["rev_lif", "rev_lif_inverse", "RevLIFState", "lif", "lif_step"]
