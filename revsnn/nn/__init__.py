"""``nn.Module`` layers, one module per op, each a thin wrapper over ``revsnn.functional``; and
the reversible network blocks."""
from .blocks import RebuildSequential, RevBlock, RevSequential, reset_neurons
from .lif import LIF
from .rev_lif import RevLIF

__all__ = ["RevLIF", "LIF", "RevBlock", "RevSequential", "RebuildSequential", "reset_neurons"]
