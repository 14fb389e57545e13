"""``revsnn.LIF``: the standard LIF node as a layer, a thin wrapper over
``revsnn.functional.lif``."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._config import Param, check_tensor_params
from ..functional import _lif as F
from ._keep import keep

STEP_MODES = ("m", "s")


class LIF(nn.Module):
    """Standard LIF node with SpikingJelly's ``LIFNode`` semantics (see
    :func:`revsnn.functional.lif`): ``[T, B, *] -> spikes [T, B, *]`` (``step_mode="m"``) or
    one step ``[B, *] -> [B, *]`` (``step_mode="s"``).

    Keeps the membrane potential between calls in ``self.v`` (None until the first call and after
    :meth:`reset`), with its autograd history, as SpikingJelly does: a network driven step by
    step backpropagates through time; call :meth:`reset` between sequences.

    Args:
        tau, decay_input, v_threshold, v_reset, surrogate, surrogate_alpha, detach_reset: as
            :func:`revsnn.functional.lif`. ``tau`` and ``v_threshold`` may be tensors (one
            element, or one per channel along ``dim``): an ``nn.Parameter`` is learned, any
            other tensor is a buffer. Their values are checked here, once (tau > 1, or ``inf``
            for an IF channel with ``decay_input=False``; v_threshold finite).
        learn_tau, learn_threshold: make a float ``tau`` / ``v_threshold`` a learnable
            parameter (ParametricLIF / snnTorch ``learn_beta``, ``learn_threshold`` style), one
            value, or one per channel when ``channels`` is given. tau is learned as it is used,
            ``1/tau`` scaling the charge; keep it > 1 (not checked per call).
        channels: the number of channels along ``dim`` for learnable per-channel parameters.
        dim: the channel dim of the multi-step input ``[T, B, C, *]`` (default 2); in
            ``step_mode="s"`` the same dim of ``[B, C, *]`` without T.
        step_mode: ``"m"`` (multi-step, one launch for all T) or ``"s"`` (single step).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.
    """

    def __init__(self, tau: Param = 2.0, decay_input: bool = True, v_threshold: Param = 1.0,
                 v_reset: Optional[float] = 0.0, surrogate: str = "sigmoid",
                 surrogate_alpha: Optional[float] = None, detach_reset: bool = False, *,
                 learn_tau: bool = False, learn_threshold: bool = False,
                 channels: Optional[int] = None, dim: int = 2, step_mode: str = "m",
                 backend: str = "auto") -> None:
        super().__init__()
        if step_mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
        if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool)
                                     or channels < 1):
            raise ValueError(f"channels must be a positive int or None, got {channels!r}")
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if dim == 0:
            raise ValueError("dim indexes [T, B, C, *] (also in step_mode='s'): 0 is the time "
                             "dim, not a channel dim")
        # validate now rather than at the first call
        F._validate(tau, decay_input, v_threshold, v_reset, surrogate, surrogate_alpha,
                    detach_reset, backend)
        check_tensor_params("lif", tau, v_threshold, decay_input, learn_tau)
        self._set_param("tau", tau, learn_tau, channels)
        self._set_param("v_threshold", v_threshold, learn_threshold, channels)
        self.kwargs = dict(decay_input=decay_input, v_reset=v_reset, surrogate=surrogate,
                           surrogate_alpha=surrogate_alpha, detach_reset=detach_reset,
                           backend=backend)
        self.dim = dim
        self.step_mode = step_mode
        self.v: Optional[torch.Tensor] = None

    def _set_param(self, name: str, value: Param, learn: bool, channels: Optional[int]) -> None:
        """A float stays a float unless learned; a tensor becomes a parameter or a buffer."""
        if learn and not isinstance(value, nn.Parameter):
            t = torch.as_tensor(value, dtype=torch.float32).detach().clone()
            if channels is not None and t.numel() == 1:
                t = t.reshape(1).repeat(channels)
            value = nn.Parameter(t)
        keep(self, name, value if isinstance(value, torch.Tensor) else float(value))

    def reset(self) -> None:
        """Forget the potential: the next call starts from v_reset (0 for soft reset)."""
        self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = F.lif if self.step_mode == "m" else F.lif_step
        dim = self.dim if self.step_mode == "m" or self.dim < 0 else self.dim - 1
        spikes, self.v = fn(x, self.v, tau=self.tau, v_threshold=self.v_threshold, dim=dim,
                            **self.kwargs)
        return spikes

    def extra_repr(self) -> str:
        def show(p):
            return f"tensor{list(p.shape)}" if isinstance(p, torch.Tensor) else repr(p)

        defaults = dict(decay_input=True, v_reset=0.0, surrogate="sigmoid",
                        surrogate_alpha=None, detach_reset=False, backend="auto")
        out = [f"tau={show(self.tau)}", f"v_threshold={show(self.v_threshold)}"]
        out += [f"{k}={v!r}" for k, v in self.kwargs.items() if v != defaults[k]]
        if self.step_mode != "m":
            out.append(f"step_mode={self.step_mode!r}")
        return ", ".join(out)
