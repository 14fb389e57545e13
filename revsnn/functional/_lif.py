"""Standard LIF (SpikingJelly's ``LIFNode``), functional form: validation and reshaping around
``revsnn/ops/lif.py``."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._config import (BACKENDS, LIFConfig, Param, acc_dtype, channel_dim, check_device,
                       check_float_tensor)
from ..ops import lif as _op


def _validate(tau: Param, decay_input: bool, v_threshold: Param, v_reset: Optional[float],
              surrogate: str, surrogate_alpha: Optional[float], detach_reset: bool,
              backend: str) -> LIFConfig:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return LIFConfig.build(tau, decay_input, v_threshold, v_reset, surrogate, surrogate_alpha,
                           detach_reset)


def _channels(shape: torch.Size, dim: int, params: tuple) -> tuple[int, int]:
    """(C, I): the channel count along ``dim`` and the elements after it, for per-channel
    parameters; (1, 1) when no parameter has more than one value."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if all(not isinstance(p, torch.Tensor) or p.numel() == 1 for p in params):
        return 1, 1
    d = channel_dim(shape, dim)
    # an empty trailing dim leaves nothing to compute; I = 1 keeps the [O, C, I] views defined
    return shape[d], max(math.prod(shape[d + 1:]), 1)


def _param(p: Param, name: str, x: torch.Tensor, C: int, acc: torch.dtype):
    """A tensor parameter as [1] or [C] in the membrane dtype (autograd sees the cast); None for
    a float, which the op takes as a scalar. Tensor values are not checked here: reading them
    would sync with the device on every call."""
    if not isinstance(p, torch.Tensor):
        return None
    check_float_tensor(p, name)
    check_device(p, name, x.device)
    if p.numel() != 1 and tuple(p.shape) != (C,) or p.numel() == 0:
        raise ValueError(f"{name} must be a float, a one-element tensor or a tensor of shape "
                         f"[{C}] (one value per channel along dim), got shape {tuple(p.shape)}")
    return p.to(acc).reshape(-1)


def _initial_state(v: Optional[torch.Tensor], x: torch.Tensor,
                   acc: torch.dtype) -> Optional[torch.Tensor]:
    if v is None:
        return None
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be None or a float tensor [B, *], got {type(v).__name__}")
    check_float_tensor(v, "v")
    if tuple(v.shape) != tuple(x.shape[1:]):
        raise ValueError(f"v must have shape {tuple(x.shape[1:])} (x without T), got "
                         f"{tuple(v.shape)}; reset the state between inputs of other shapes")
    check_device(v, "v", x.device)
    return v.to(acc).reshape(-1).contiguous()


def lif(x: torch.Tensor, v: Optional[torch.Tensor] = None, *, tau: Param = 2.0,
        decay_input: bool = True, v_threshold: Param = 1.0, v_reset: Optional[float] = 0.0,
        surrogate: str = "sigmoid", surrogate_alpha: Optional[float] = None,
        detach_reset: bool = False, dim: int = 2,
        backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Standard LIF node over all T steps (one kernel launch forward, one backward).

    Semantics are SpikingJelly's multi-step ``LIFNode``, in its operation order, so spikes are
    bit-identical to its CPU float32 path: ``H = V + (X - (V - vr))/tau`` (``decay_input``) or
    ``V - (V - vr)/tau + X``; ``S = H >= v_threshold``; hard reset ``V = H(1 - S) + vr*S``, soft
    reset (``v_reset=None``, ``vr = 0`` in the charge) ``V = H - v_threshold*S``. The membrane
    is float32 (float64 for float64 input).

    Args:
        x: ``[T, B, *]`` float32/float64/float16/bfloat16.
        v: initial potential ``[B, *]`` (any float dtype; receives a gradient if it requires
            one), or None: ``v_reset`` (0 for soft reset), as SpikingJelly starts.
        tau: > 1, or ``math.inf``: the IF neuron ``V + X`` (SpikingJelly's ``IFNode``,
            whatever ``decay_input`` says); a float, or a tensor with one element or one per
            channel along ``dim`` (e.g. an ``nn.Parameter``: it gets a gradient). Tensor
            values are not checked here (the ``LIF`` layer checks them once); a tensor's
            ``inf`` is an IF channel with ``decay_input=False`` (a learned snnTorch beta at 1).
        v_threshold: a float, or a tensor like ``tau``.
        v_reset: a float (hard reset) or None (soft reset).
        surrogate, surrogate_alpha: ``"sigmoid"`` (alpha 4), ``"atan"`` (alpha 2) or
            ``"fast_sigmoid"`` (alpha 25); :mod:`revsnn.surrogate` has the formulas.
        detach_reset: no gradient through the spike in the reset.
        dim: the channel dim of x for per-channel parameters (default 2 of ``[T, B, C, *]``).
        backend: ``"auto"`` (Triton on CUDA, torch twin on CPU), ``"triton"`` or ``"torch"``.

    Returns:
        spikes of x's shape and dtype (0/1), and the final potential ``[B, *]`` in the membrane
        dtype, differentiable (feed it to the next call to backpropagate across calls).
    """
    cfg = _validate(tau, decay_input, v_threshold, v_reset, surrogate, surrogate_alpha,
                    detach_reset, backend)
    check_float_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have shape [T, B, *] (rank >= 2), got rank {x.dim()}")
    if x.shape[0] < 1:
        raise ValueError(f"x must have at least one time step (T >= 1), got T={x.shape[0]}")
    acc = acc_dtype(x.dtype)
    C, I = _channels(x.shape, dim, (tau, v_threshold))
    tau_t = _param(tau, "tau", x, C, acc)
    vth_t = _param(v_threshold, "v_threshold", x, C, acc)
    v0 = _initial_state(v, x, acc)
    records = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, v0, tau_t, vth_t))
    T, N = x.shape[0], math.prod(x.shape[1:])
    spikes, v_last, _ = _op.apply_lif(
        x.reshape(T, N).contiguous(), v0, tau_t, 0.0 if tau_t is not None else float(tau),
        vth_t, 0.0 if vth_t is not None else float(v_threshold),
        *(getattr(cfg, k) for k in _op.NODE_ARGS), C, I, records, backend)
    return spikes.view(x.shape), v_last.view(x.shape[1:])


def lif_step(x: torch.Tensor, v: Optional[torch.Tensor] = None, *, tau: Param = 2.0,
             decay_input: bool = True, v_threshold: Param = 1.0,
             v_reset: Optional[float] = 0.0, surrogate: str = "sigmoid",
             surrogate_alpha: Optional[float] = None, detach_reset: bool = False, dim: int = 1,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One time step of :func:`lif`, for loops written step by step (snnTorch style).

    Args:
        x: ``[B, *]``; v: the potential the previous step returned (None at the start).
        dim: the channel dim of x (default 1 of ``[B, C, *]``). Other keywords: as :func:`lif`.
    Returns:
        the spikes ``[B, *]`` and the new potential ``[B, *]``; gradients flow through ``v``
        from step to step.
    """
    check_float_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have shape [B, *] (rank >= 1), got a 0-dim tensor")
    step_dim = dim + 1 if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 else dim
    spikes, v_next = lif(x.unsqueeze(0), v, tau=tau,
                         decay_input=decay_input, v_threshold=v_threshold, v_reset=v_reset,
                         surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                         detach_reset=detach_reset, dim=step_dim, backend=backend)
    return spikes[0], v_next
