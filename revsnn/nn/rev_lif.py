"""``nn.Module`` layers: thin wrappers over ``revsnn.functional``."""
from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .._config import Param, check_tensor_params
from .._readback import Readback
from ..functional import _rev_lif as F
from ..state import CHECKED_LATER, RevLIFState
from ._keep import keep


class RevLIF(nn.Module):
    """Reversible LIF node (multi-step, SpikingJelly style): ``[T, B, C, *] -> [T, B, C, *]``.

    Keeps its :class:`RevLIFState` between calls until :meth:`reset` (``self.state``). The
    state carried from one call to the next holds no autograd history: gradients are truncated
    at call boundaries (truncated BPTT). Keywords are those of
    :func:`revsnn.functional.rev_lif`; ``tau`` and ``v_threshold`` may be per-channel tensors
    ``[C]``: pass ``nn.Parameter`` s to learn them (tau must stay > 1: parametrize it if your
    optimizer could push it below); other tensors become buffers.

    Errors (NaN/Inf or out-of-range input or parameters, flagged in the state by the kernels):
    a call that autograd records raises at its backward; any other call (no_grad, inference)
    raises at the layer's next call or :meth:`reset`, whichever comes first (its flags are read
    then, without waiting for the device at the call itself); ``validate=True`` raises at once.
    Not under ``torch.compile`` (no host read inside a graph), nor in ``nn.DataParallel``
    replicas: there, calls without a backward are checked only with ``validate=True``.
    """

    def __init__(self, tau: Param = 2.0, decay_input: bool = True, v_threshold: Param = 1.0,
                 v_reset: Optional[float] = 0.0, alpha: float = 1.0, beta1: float = -0.5,
                 beta2: float = 0.5, surrogate: str = "sigmoid",
                 surrogate_alpha: Optional[float] = None, detach_reset: bool = False,
                 dim: int = 2, backward: str = "fused", keep_stash: Optional[bool] = None,
                 validate: bool = False, backend: str = "auto") -> None:
        super().__init__()
        # validate now rather than at the first call (a tensor's shape needs x: checked there)
        F._validate(dict(tau=tau, decay_input=decay_input, v_threshold=v_threshold,
                         v_reset=v_reset, alpha=alpha, beta1=beta1, beta2=beta2,
                         surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                         detach_reset=detach_reset), backward, backend, keep_stash, validate)
        check_tensor_params("rev_lif", tau, v_threshold, decay_input)
        for name, value in (("tau", tau), ("v_threshold", v_threshold)):
            keep(self, name, value)
        self.kwargs = dict(decay_input=decay_input, v_reset=v_reset, alpha=alpha, beta1=beta1,
                           beta2=beta2, surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                           detach_reset=detach_reset, dim=dim, backward=backward,
                           keep_stash=keep_stash, validate=validate, backend=backend)
        self.state: Optional[RevLIFState] = None
        # state.v_fixed -> Readback of its smallest word, for the states of calls that no
        # backward checks; an entry goes with its state
        self._unchecked = WeakIdKeyDictionary()

    def _check_earlier_call(self) -> None:
        """Raise if the layer's state comes from a call that no backward checks and that call
        was flagged. The pending readback is filed under the state's tensor, not the layer:
        reversible blocks put other states in for their recomputations and inverses (whose
        calls are checked otherwise) and the layer's own state back after them."""
        if self.state is None:
            return
        pending = self._unchecked.pop(self.state.v_fixed, None)
        if pending is not None:
            self.state.check("RevLIF (an earlier call, not recorded by autograd)",
                             pending.value())

    def reset(self) -> None:
        """Forget the state: the next call starts from zero potentials. Raises ValueError if
        the last call was flagged and nothing has checked it (see the class docstring); the
        state is forgotten either way."""
        try:
            self._check_earlier_call()
        finally:
            self.state = None

    def __getstate__(self) -> dict:
        # a copy (deepcopy, pickle, torch.save) starts with nothing pending: the CUDA event
        # of a Readback cannot be copied, and the original still checks its own calls
        return {k: v for k, v in super().__getstate__().items() if k != "_unchecked"}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._unchecked = WeakIdKeyDictionary()

    def _replicate_for_data_parallel(self) -> "RevLIF":
        replica = super()._replicate_for_data_parallel()
        replica._unchecked = WeakIdKeyDictionary()
        return replica

    @property
    def step_mode(self) -> str:
        """Always ``"m"`` (multi-step): for SpikingJelly's ``functional.set_step_mode``, which
        sets this attribute on every module that has it."""
        return "m"

    @step_mode.setter
    def step_mode(self, mode: str) -> None:
        if mode != "m":
            raise ValueError(
                f"RevLIF runs multi-step only ([T, B, C, *] per call; its state carries no "
                f"gradient from call to call), got step_mode={mode!r}; keep the network "
                f"multi-step, or use revsnn.LIF, which has step_mode='s'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [T, B, C, *]`` (C even along ``dim``) -> ``y [T, B, C, *]``, x's dtype; the
        final state goes to ``self.state``, the next call's initial state."""
        # compiled graphs skip the deferred check: its host read would break the graph (and
        # Dynamo would guard on the value read); they raise at backward or with validate=True
        compiling = torch.compiler.is_compiling()
        if not compiling:
            self._check_earlier_call()
        y, self.state = F.rev_lif(x, self.state, tau=self.tau, v_threshold=self.v_threshold,
                                  **self.kwargs)
        if not (compiling or y.requires_grad or self.kwargs["validate"]
                or CHECKED_LATER.get()) and self.state.v_fixed.numel():
            self._unchecked[self.state.v_fixed] = Readback(self.state.v_fixed.amin())
        return y

    def inverse(self, y: torch.Tensor, state: RevLIFState) -> tuple[torch.Tensor, RevLIFState]:
        """Exact input ``x [T, B, C, *]`` and initial state (``v_fixed [B, C, *]``) of the call
        that produced ``y [T, B, C, *]`` and ``state`` (kept with its stash: ``keep_stash=True``
        or a call that autograd recorded)."""
        return F.rev_lif_inverse(y, state, tau=self.tau, v_threshold=self.v_threshold,
                                 **self.kwargs)

    def extra_repr(self) -> str:
        def show(v):
            return f"tensor{list(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)
        defaults = inspect.signature(RevLIF.__init__).parameters
        values = dict(self.kwargs, tau=self.tau, v_threshold=self.v_threshold)
        always = ("tau", "alpha", "beta1", "beta2")
        return ", ".join(f"{k}={show(values[k])}" for k in defaults if k in values
                         and (k in always or isinstance(values[k], torch.Tensor)
                              or values[k] != defaults[k].default))
