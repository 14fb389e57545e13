"""``nn.Module`` layers, one module per op, each a thin wrapper over ``revsnn.functional``; and
the reversible network blocks."""
from .blocks import RevBlock, RevSequential, reset_neurons
from .lif import LIF
from .rev_lif import RevLIF

__all__ = ["RevLIF", "LIF", "RevBlock", "RevSequential", "reset_neurons"]
