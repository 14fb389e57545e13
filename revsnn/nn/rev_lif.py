"""``nn.Module`` layers: thin wrappers over ``revsnn.functional``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..functional import _rev_lif as F
from ..functional._rev_lif import Param
from ..state import RevLIFState


class RevLIF(nn.Module):
    """Reversible LIF node (multi-step, SpikingJelly style): ``[T, B, C, *] -> [T, B, C, *]``.

    Keeps its :class:`RevLIFState` between calls until :meth:`reset` (``self.state``). The
    state carried from one call to the next holds no autograd history: gradients are truncated
    at call boundaries (truncated BPTT). Keywords are those of :func:`revsnn.functional.rev_lif`;
    ``tau`` and ``v_threshold`` may be per-channel tensors ``[C]``: pass ``nn.Parameter`` s to
    learn them (tau must stay > 1: parametrize it if your optimizer could push it below).
    """

    def __init__(self, tau: Param = 2.0, decay_input: bool = True, v_threshold: Param = 1.0,
                 v_reset: Optional[float] = 0.0, alpha: float = 1.0, beta1: float = -0.5,
                 beta2: float = 0.5, surrogate: str = "sigmoid",
                 surrogate_alpha: Optional[float] = None, detach_reset: bool = False,
                 dim: int = 2, backward: str = "fused", keep_stash: Optional[bool] = None,
                 validate: bool = False, backend: str = "auto") -> None:
        super().__init__()
        # validate now rather than at the first call
        F._validate(dict(tau=tau, decay_input=decay_input, v_threshold=v_threshold,
                         v_reset=v_reset, alpha=alpha, beta1=beta1, beta2=beta2,
                         surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                         detach_reset=detach_reset), backward, backend)
        self.tau = tau  # an nn.Parameter registers itself
        self.v_threshold = v_threshold
        self.kwargs = dict(decay_input=decay_input, v_reset=v_reset, alpha=alpha, beta1=beta1,
                           beta2=beta2, surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                           detach_reset=detach_reset, dim=dim, backward=backward,
                           keep_stash=keep_stash, validate=validate, backend=backend)
        self.state: Optional[RevLIFState] = None

    def reset(self) -> None:
        """Forget the state: the next call starts from zero potentials."""
        self.state = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, self.state = F.rev_lif(x, self.state, tau=self.tau, v_threshold=self.v_threshold,
                                  **self.kwargs)
        return y

    def inverse(self, y: torch.Tensor, state: RevLIFState) -> tuple[torch.Tensor, RevLIFState]:
        """Exact input and initial state of the call that produced ``y`` and ``state``."""
        return F.rev_lif_inverse(y, state, tau=self.tau, v_threshold=self.v_threshold,
                                 **self.kwargs)

    def extra_repr(self) -> str:
        def show(v):
            return f"Tensor{list(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)
        defaults = RevLIF.__init__.__defaults__
        names = RevLIF.__init__.__code__.co_varnames[1:1 + len(defaults)]
        values = dict(self.kwargs, tau=self.tau, v_threshold=self.v_threshold)
        always = ("tau", "alpha", "beta1", "beta2")
        return ", ".join(f"{k}={show(values[k])}" for k, d in zip(names, defaults)
                         if k in always or isinstance(values[k], torch.Tensor)
                         or values[k] != d)
