"""Plain-torch references: readable twins of the kernels and autograd ground truths."""
from .lif import lif_bptt
from .rev_lif import rev_lif_float64, rev_lif_int

__all__ = ["rev_lif_int", "rev_lif_float64", "lif_bptt"]
