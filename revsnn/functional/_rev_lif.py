"""Reversible LIF, functional form: validation and reshaping around ``revsnn/ops/rev_lif.py``."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .._config import (BACKENDS, BACKWARDS, Param, RevLIFConfig, channel_param,
                       check_device, check_flag, check_float_tensor, layout_of)
from ..ops import rev_lif as _op
from ..state import Made, RevLIFState


StateLike = Union[None, RevLIFState, torch.Tensor]


def _initial_state(state: StateLike, x: torch.Tensor, lay) -> Optional[torch.Tensor]:
    """The op's v0 ([A, 2, R] view): None, the int32 words of a RevLIFState, or a float tensor."""
    if state is None:
        return None
    if isinstance(state, RevLIFState):
        v, name = state.v_fixed, "state.v_fixed"
        if v.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {v.dtype}")
    elif isinstance(state, torch.Tensor):
        v, name = state, "state"
        check_float_tensor(v, name)
    else:
        raise TypeError(f"state must be None, a RevLIFState or a float tensor [B, C, *], got "
                        f"{type(state).__name__}")
    if tuple(v.shape) != tuple(x.shape[1:]):
        raise ValueError(f"{name} must have shape {tuple(x.shape[1:])} (x without T), got "
                         f"{tuple(v.shape)}")
    check_device(v, name, x.device)
    # the kernels read a dense [A, 2, R]: a strided or expanded state is copied first
    return v.reshape(lay.A, 2, lay.R).contiguous()


def _validate(cfg_kwargs: dict, backward: str, backend: str,
              keep_stash: Optional[bool] = None, validate: bool = False) -> RevLIFConfig:
    if keep_stash is not None:
        check_flag(keep_stash, "keep_stash")
    check_flag(validate, "validate")
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return RevLIFConfig.build(**cfg_kwargs)


def _node_args(cfg: RevLIFConfig) -> tuple:
    return tuple(getattr(cfg, k) for k in _op.NODE_ARGS)


_ARITHMETIC = ("is_if", "int_decay_input", "v_reset", "alpha", "beta1", "beta2")
"""The RevLIFConfig values that enter the node's arithmetic (not the surrogate's)."""


def _made(lay, cfg: RevLIFConfig, tau: Param, v_threshold: Param) -> Made:
    def number(p):
        return None if isinstance(p, torch.Tensor) else float(p)
    settings = tuple((k.removeprefix("int_"), getattr(cfg, k)) for k in _ARITHMETIC)
    return Made(lay.T, lay.dim, settings + (("tau", number(tau)),
                                            ("v_threshold", number(v_threshold))))


def rev_lif(x: torch.Tensor, state: StateLike = None, *, tau: Param = 2.0,
            decay_input: bool = True, v_threshold: Param = 1.0,
            v_reset: Optional[float] = 0.0, alpha: float = 1.0, beta1: float = -0.5,
            beta2: float = 0.5, surrogate: str = "sigmoid",
            surrogate_alpha: Optional[float] = None, detach_reset: bool = False, dim: int = 2,
            backward: str = "fused", keep_stash: Optional[bool] = None, validate: bool = False,
            backend: str = "auto") -> tuple[torch.Tensor, RevLIFState]:
    """Reversible LIF node over all T steps (one kernel launch).

    Args:
        x: ``[T, B, C, *]`` float32/float64/float16/bfloat16; split along ``dim`` (C even) into
            group 1 (first C/2 channels) and group 2. Quantized on entry to the dtype's grid
            (README, "Exactness"); values outside the grid's range flag an error.
        state: initial potential: None (zeros), the :class:`RevLIFState` of an earlier call
            (no gradient flows into it), or a float tensor ``[B, C, *]`` (quantized to 2**-18;
            receives a gradient if it requires one).
        tau, decay_input, v_threshold, v_reset, surrogate, surrogate_alpha, detach_reset:
            SpikingJelly ``LIFNode`` semantics; ``tau=math.inf`` is the IF neuron,
            ``v_reset=None`` soft reset. Surrogates: ``"sigmoid"`` (alpha 4), ``"atan"`` (2),
            ``"fast_sigmoid"`` (25; :mod:`revsnn.surrogate` has the formulas).
            ``tau`` (> 1; inf, an IF channel, only with decay_input=False) and
            ``v_threshold`` (magnitude <= 64) may be tensors ``[C]``, one value per channel of
            ``dim`` (group 1 gets the first C/2): learnable ones receive gradients
            (``backward="fused"`` only). Their values are checked by the kernel, which flags
            the state (error code 16) rather than reading them on the host.
        alpha: coupling of the other group's input into the output, ± a power of two in
            [1/4, 4]. beta1 < 0 < beta2: cross-group coupling of the potentials, powers of two
            with magnitude in [2**-8, 1].
        backward: ``"fused"`` (one reverse pass rebuilding the trajectory and the gradient) or
            ``"recompute"`` (invert, re-run the forward saving M, backward: the classic way).
        keep_stash: keep the shifted-out bits that :func:`rev_lif_inverse` needs; default: only
            when autograd records (grad enabled and x or state requires grad).
        validate: check the error flags now (syncs with the device) instead of at backward or
            inverse time.
        backend: ``"auto"`` (Triton on CUDA, torch twin on CPU), ``"triton"`` or ``"torch"``.

    Returns:
        ``y`` of x's shape and dtype (``y = S + alpha * x_other``, not binary) and the final
        :class:`RevLIFState`.
    """
    cfg = _validate(dict(tau=tau, decay_input=decay_input, v_threshold=v_threshold,
                         v_reset=v_reset, alpha=alpha, beta1=beta1, beta2=beta2,
                         surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                         detach_reset=detach_reset), backward, backend, keep_stash, validate)
    check_float_tensor(x, "x")
    lay = layout_of(x.shape, dim)
    v0 = _initial_state(state, x, lay)
    tau_t = channel_param(tau, "tau", x.shape[lay.dim], x.device)
    vth_t = channel_param(v_threshold, "v_threshold", x.shape[lay.dim], x.device)
    grad_on = torch.is_grad_enabled()
    learn = grad_on and (tau_t.requires_grad or vth_t.requires_grad)
    if learn and backward != "fused":
        raise ValueError("learnable tau/v_threshold need backward='fused' (the recompute "
                         "baseline differentiates x and the initial state only)")
    records = learn or grad_on and (x.requires_grad or (v0 is not None and v0.requires_grad))
    if keep_stash is False and records and cfg.steps_per_word:
        raise ValueError("keep_stash=False, but autograd is recording and the backward needs "
                         "the stash (|beta| < 1); use keep_stash=None")
    write_stash = records if keep_stash is None else bool(keep_stash)
    x4 = x.reshape(lay.T, lay.A, 2, lay.R).contiguous()
    y, vT, stash = _op.apply_rev_lif(x4, v0, tau_t, vth_t, *_node_args(cfg), write_stash,
                                     backward, backend)
    out = RevLIFState(vT.view(x.shape[1:]), stash, _made(lay, cfg, tau, v_threshold))
    if validate:
        out.check("rev_lif")
    return y.view(x.shape), out


def rev_lif_inverse(y: torch.Tensor, state: RevLIFState, *, tau: Param = 2.0,
                    decay_input: bool = True, v_threshold: Param = 1.0,
                    v_reset: Optional[float] = 0.0, alpha: float = 1.0, beta1: float = -0.5,
                    beta2: float = 0.5, surrogate: str = "sigmoid",
                    surrogate_alpha: Optional[float] = None, detach_reset: bool = False,
                    dim: int = 2, backward: str = "fused", keep_stash: Optional[bool] = None,
                    validate: bool = True, backend: str = "auto",
                    ) -> tuple[torch.Tensor, RevLIFState]:
    """Run the node backwards: the exact ``x`` (as quantized) and initial state of a call.

    Args:
        y: ``[T, B, C, *]``, the output of :func:`rev_lif`.
        state: the :class:`RevLIFState` that call returned, with its stash (``keep_stash=True``
            unless ``|beta1| = |beta2| = 1``).
        Other keywords: the same values the forward used (``backward`` and ``keep_stash`` are
        accepted for symmetry and ignored).
    Returns:
        ``x`` (y's dtype; bit-identical to the input on its grid) and the initial state (its
        stash is empty: it belonged to an earlier call). Raises ValueError if the forward or
        the state was flagged, or y is not on the output grid.
    """
    cfg = _validate(dict(tau=tau, decay_input=decay_input, v_threshold=v_threshold,
                         v_reset=v_reset, alpha=alpha, beta1=beta1, beta2=beta2,
                         surrogate=surrogate, surrogate_alpha=surrogate_alpha,
                         detach_reset=detach_reset), backward, backend, keep_stash, validate)
    check_float_tensor(y, "y")
    lay = layout_of(y.shape, dim, "y")
    if not isinstance(state, RevLIFState):
        raise TypeError(f"state must be the RevLIFState returned by rev_lif, got "
                        f"{type(state).__name__}")
    if state.made is not None:
        differ = state.made.differences(_made(lay, cfg, tau, v_threshold))
        if differ:
            raise ValueError(f"rev_lif_inverse: y and its keywords must be those of the forward "
                             f"that returned state (forward vs now: {'; '.join(differ)})")
    vT = _initial_state(state, y, lay)
    if state.stash.device != y.device or state.stash.dtype != torch.int32:
        raise ValueError(f"state.stash must be int32 on {y.device}, got {state.stash.dtype} "
                         f"on {state.stash.device}")
    y4 = y.reshape(lay.T, lay.A, 2, lay.R).contiguous()
    with torch.no_grad():
        tau_t = channel_param(tau, "tau", y.shape[lay.dim], y.device)
        vth_t = channel_param(v_threshold, "v_threshold", y.shape[lay.dim], y.device)
        x, v0 = _op.rev_lif_inv(y4, vT, state.stash.contiguous(), tau_t, vth_t,
                                *_node_args(cfg), backend)
    out = RevLIFState(v0.view(y.shape[1:]), state.stash.new_empty(0, lay.pairs))
    if validate:
        out.check("rev_lif_inverse")
    return x.view(y.shape), out
