"""``nn.Module`` layers, one module per op, each a thin wrapper over ``revsnn.functional``."""
from .lif import LIF
from .rev_lif import RevLIF

__all__ = ["RevLIF", "LIF"]
