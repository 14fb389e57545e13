"""Reversible LIF op: torch.library custom ops, their autograd, and dispatch to the Triton kernels
(``kernels/rev_lif.py``) or their bit-identical torch twin (``revsnn/reference/rev_lif.py``).

Every op works on the [T, A, 2, R] view (``revsnn/_config.py``, ``Layout``); the functional API
in ``revsnn/functional/_rev_lif.py`` does the reshaping and validation. ``tau`` and
``v_threshold`` travel as float tensors of shape [1] (scalar) or [C] (per channel).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Optional

import torch

from .._config import F_BITS, RevLIFConfig, acc_dtype, grid_for
from .._readback import Readback
from ..reference import rev_lif as twin
from ..state import RevLIFState
from ._dispatch import (custom_op, differentiable, direct, grid_1d, kernels_module,
                        launch_options, use_triton)

# The scalar node options, in the order every custom op below takes them (RevLIFConfig's).
NODE_ARGS = tuple(f.name for f in fields(RevLIFConfig))


def _node_consts(cfg: RevLIFConfig, grid, tau: torch.Tensor, vth: torch.Tensor, R: int):
    """The kernels' scalar arguments of the node; C is the channel count where tau or
    v_threshold is per channel ([C]), and each says whether it is."""
    C = max(tau.numel(), vth.numel())
    return dict(INNER=R // (C // 2) if C > 1 else 1, HALF_C=C // 2, F=F_BITS, FY=grid.fy,
                X_SHIFT=grid.x_shift, ALPHA_SIGN=cfg.alpha_sign, K1=cfg.k1, K2=cfg.k2,
                SPW=cfg.steps_per_word, DECAY_INPUT=cfg.int_decay_input, HARD=cfg.hard_reset,
                TAU_PER_CH=tau.numel() > 1, VTH_PER_CH=vth.numel() > 1)


def launch_fwd(x: torch.Tensor, v0: Optional[torch.Tensor], tau: torch.Tensor,
               vth: torch.Tensor, cfg: RevLIFConfig, write_stash: bool, save_m: bool,
               backend: str):
    """Forward over all T. x: contiguous [T, A, 2, R]; v0: None, int32 or float [A, 2, R];
    tau, vth: float [1] or [C]. Returns (y, final int32 state, stash, M or None) as
    ``reference.rev_lif.fwd_twin`` does."""
    grid = grid_for(x.dtype, cfg)
    if not use_triton(x, backend):
        return twin.fwd_twin(x, v0, tau, vth, cfg, grid, write_stash, save_m)
    T, A, _, R = x.shape
    P = A * R
    y = torch.empty_like(x)
    vT = torch.empty(A, 2, R, dtype=torch.int32, device=x.device)
    stash = torch.empty(cfg.stash_words(T) if write_stash else 0, P, dtype=torch.int32,
                        device=x.device)
    m = torch.empty(x.shape, dtype=torch.int32, device=x.device) if save_m else None
    if P:
        nc = _node_consts(cfg, grid, tau, vth, R)
        kernels_module("rev_lif").rev_lif_fwd_kernel[grid_1d(P, "rev_lif")](
            x, vT if v0 is None else v0, y, vT, stash if write_stash else vT,
            vT if m is None else m, tau, vth,
            T, P, R, 2 * P, nc.pop("INNER"), nc.pop("HALF_C"),
            cfg.vr_i, grid.x_scale, float(grid.qmax),
            V0_MODE=0 if v0 is None else (1 if v0.dtype == torch.int32 else 2),
            WRITE_STASH=write_stash and cfg.steps_per_word > 0, SAVE_M=save_m,
            ACC_F64=x.dtype == torch.float64, **launch_options("rev_lif"), **nc)
    return y, vT, stash, m


def launch_bwd(y: Optional[torch.Tensor], gy: Optional[torch.Tensor], vT: torch.Tensor,
               stash: torch.Tensor, m: Optional[torch.Tensor], tau: torch.Tensor,
               vth: torch.Tensor, cfg: RevLIFConfig, mode: int, out_dtype: torch.dtype,
               v0_dtype: Optional[torch.dtype], backend: str, param_grad: bool = False):
    """Time-reversed pass: (out, v0, per-neuron parameter gradients) as
    ``reference.rev_lif.bwd_twin`` returns them for each mode."""
    ref = m if mode == 2 else y
    grid = grid_for(out_dtype, cfg)
    if not use_triton(ref, backend):
        return twin.bwd_twin(y, gy, vT, stash, m, tau, vth, cfg, grid, mode, out_dtype,
                             v0_dtype, param_grad)
    T, A, _, R = ref.shape
    P = A * R
    acc = acc_dtype(out_dtype)
    out = torch.empty(ref.shape, dtype=out_dtype, device=ref.device)
    v0 = None
    if mode == 0:
        v0 = torch.empty_like(vT)
    elif v0_dtype is not None:
        v0 = torch.empty(vT.shape, dtype=v0_dtype, device=vT.device)
    pg = torch.empty(2, A, 2, R, dtype=acc, device=vT.device) if param_grad else None
    if P:
        spw = cfg.steps_per_word
        nc = _node_consts(cfg, grid, tau, vth, R)
        kernels_module("rev_lif").rev_lif_bwd_kernel[grid_1d(P, "rev_lif")](
            ref if y is None else y, out if gy is None else gy, vT,
            stash if stash.numel() else vT, out if m is None else m, out,
            vT if v0 is None else v0, out if pg is None else pg, tau, vth,
            T, P, R, 2 * P, nc.pop("INNER"), nc.pop("HALF_C"),
            (T - 1) * 2 * P, ((T - 1) // spw) * P if spw else 0,
            cfg.vr_i, 1.0 / grid.x_scale, cfg.v_reset or 0.0, cfg.alpha,
            cfg.beta1, cfg.beta2, cfg.surrogate_alpha,
            MODE=mode, SURROGATE=cfg.surrogate_id, DETACH_RESET=cfg.detach_reset,
            WRITE_V0=v0 is not None, PARAM_GRAD=param_grad,
            ACC_F64=out_dtype == torch.float64, **launch_options("rev_lif"), **nc)
    return out, v0, pg


def _per_channel_sum(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-neuron gradients [A, 2, R] of a parameter, summed to its shape [1] or [C]."""
    if like.numel() == 1:
        return g.sum().reshape(1)
    A, _, R = g.shape
    half = like.numel() // 2
    return g.reshape(A, 2, half, R // half).sum(dim=(0, 3)).reshape(2 * half)


def _check_stash(stash: torch.Tensor, cfg: RevLIFConfig, T: int, P: int, where: str) -> None:
    want = cfg.stash_words(T)
    if stash.shape != (want, P):
        if stash.shape[0] == 0 and want:
            raise ValueError(
                f"{where}: the state carries no stash, but |beta| < 1 shifted bits out of the "
                f"potentials that only the stash can restore; run the forward with "
                f"keep_stash=True (or with autograd recording)")
        raise ValueError(f"{where}: state.stash has shape {tuple(stash.shape)}, expected "
                         f"({want}, {P}) for T={T} and these beta1/beta2")


# -- custom ops ----------------------------------------------------------------------------------
@custom_op("rev_lif_fwd")
def rev_lif_fwd(x: torch.Tensor, v0: Optional[torch.Tensor], tau: torch.Tensor,
                v_threshold: torch.Tensor, is_if: bool, decay_input: bool,
                v_reset: Optional[float], alpha: float, beta1: float, beta2: float,
                surrogate: str, surrogate_alpha: float, detach_reset: bool, write_stash: bool,
                backward: str, backend: str,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, A, 2, R] -> (y [T, A, 2, R], final int32 state [A, 2, R], stash [W, A*R])."""
    cfg = RevLIFConfig.of(is_if, decay_input, v_reset, alpha, beta1, beta2, surrogate,
                          surrogate_alpha, detach_reset)
    y, vT, stash, _ = launch_fwd(x, v0, tau, v_threshold, cfg, write_stash, False, backend)
    return y, vT, stash


@rev_lif_fwd.register_fake
def _(x, v0, tau, v_threshold, is_if, decay_input, v_reset, alpha, beta1, beta2, surrogate,
      surrogate_alpha, detach_reset, write_stash, backward, backend):
    cfg = RevLIFConfig.of(is_if, decay_input, v_reset, alpha, beta1, beta2, surrogate,
                          surrogate_alpha, detach_reset)
    T, A, _, R = x.shape
    W = cfg.stash_words(T) if write_stash else 0
    return (torch.empty_like(x), x.new_empty((A, 2, R), dtype=torch.int32),
            x.new_empty((W, A * R), dtype=torch.int32))


@custom_op("rev_lif_bwd")
def rev_lif_bwd(y: torch.Tensor, gy: torch.Tensor, vT: torch.Tensor, stash: torch.Tensor,
                tau: torch.Tensor, v_threshold: torch.Tensor, is_if: bool, decay_input: bool,
                v_reset: Optional[float], alpha: float, beta1: float, beta2: float,
                surrogate: str, surrogate_alpha: float, detach_reset: bool, v0_grad: bool,
                param_grad: bool, check_state: bool, backward: str, backend: str,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dx [T, A, 2, R], dL/dv0 [A, 2, R] or empty, dL/dtau, dL/dv_threshold (tau's
    shape, or empty)) from the saved y, state and stash. check_state: raise ValueError if the
    state was flagged (False: the caller checks it).

    backward="fused": one time-reversed pass that rebuilds the trajectory and the gradient.
    backward="recompute": the usual reversible-network way, for comparison: invert to x, re-run
    the forward saving M, then a backward pass over the saved M (three passes)."""
    cfg = RevLIFConfig.of(is_if, decay_input, v_reset, alpha, beta1, beta2, surrogate,
                          surrogate_alpha, detach_reset)
    _check_stash(stash, cfg, y.shape[0], y.shape[1] * y.shape[3], "rev_lif backward")
    params = (tau, v_threshold, cfg)
    acc = acc_dtype(y.dtype)
    v0_dtype = acc if v0_grad else None
    if backward == "fused":
        gx, gv0, pg = launch_bwd(y, gy, vT, stash, None, *params, 1, y.dtype, v0_dtype,
                                 backend, param_grad)
    else:
        x, v0, _ = launch_bwd(y, None, vT, stash, None, *params, 0, y.dtype, None, backend)
        _, _, _, m = launch_fwd(x, v0, *params, False, True, backend)
        gx, gv0, pg = launch_bwd(None, gy, vT, stash, m, *params, 2, y.dtype, v0_dtype,
                                 backend)
    # The flag check waits for the device: made after the launches, the device runs the
    # backward meanwhile instead of idling while the host prepares it. A flagged state's
    # gradient (computed from poison words, harmlessly) is never returned.
    if check_state:
        RevLIFState(vT, stash).check("rev_lif backward")

    def empty():
        return vT.new_empty(0, dtype=acc)
    if pg is None:
        g_tau, g_vth = empty(), empty()
    else:
        g_tau, g_vth = _per_channel_sum(pg[0], tau), _per_channel_sum(pg[1], v_threshold)
    return gx, (gv0 if gv0 is not None else empty()), g_tau, g_vth


@rev_lif_bwd.register_fake
def _(y, gy, vT, stash, tau, v_threshold, is_if, decay_input, v_reset, alpha, beta1, beta2,
      surrogate, surrogate_alpha, detach_reset, v0_grad, param_grad, check_state, backward,
      backend):
    acc = acc_dtype(y.dtype)
    return (torch.empty_like(y), vT.new_empty(vT.shape if v0_grad else (0,), dtype=acc),
            vT.new_empty(tau.shape if param_grad else (0,), dtype=acc),
            vT.new_empty(v_threshold.shape if param_grad else (0,), dtype=acc))


def _setup_context(ctx, inputs, output):
    x, v0, tau, v_threshold = inputs[:4]
    y, vT, stash = output
    # tau and v_threshold are [1] or [C]: parameters, not per-neuron memory
    ctx.save_for_backward(y, vT, stash, tau, v_threshold)
    ctx.node_args = inputs[4:4 + len(NODE_ARGS)]
    ctx.backward_mode, ctx.backend = inputs[-2], inputs[-1]
    ctx.v0_dtype = v0.dtype if v0 is not None and v0.is_floating_point() else None
    # The backward must raise if the state was flagged. Its smallest word, taken now and read
    # there (Readback), spares that check a wait for the backward kernel; where the dispatcher
    # must see the ops (torch.compile, modes), the backward op checks the state itself.
    ctx.state_min = (Readback(vT.amin())
                     if any(ctx.needs_input_grad) and vT.numel() and direct((vT,)) else None)
    # the integer state and stash take no gradient: materialised, each would be a tensor of
    # zeros to allocate and fill on every backward
    ctx.set_materialize_grads(False)


def _backward(ctx, gy, _g_state, _g_stash):
    y, vT, stash, tau, v_threshold = ctx.saved_tensors
    if gy is None:
        gy = torch.zeros_like(y)
    v0_grad = ctx.v0_dtype is not None and ctx.needs_input_grad[1]
    param_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
    checked = ctx.state_min
    gx, gv0, g_tau, g_vth = rev_lif_bwd(
        y, gy.contiguous(), vT, stash, tau, v_threshold, *ctx.node_args, v0_grad, param_grad,
        checked is None, ctx.backward_mode, ctx.backend)
    if checked is not None:
        RevLIFState(vT, stash).check("rev_lif backward", checked.value())
    return (gx, gv0.to(ctx.v0_dtype) if v0_grad else None,
            g_tau.to(tau.dtype) if ctx.needs_input_grad[2] else None,
            g_vth.to(v_threshold.dtype) if ctx.needs_input_grad[3] else None) + (None,) * 12


apply_rev_lif = differentiable(rev_lif_fwd, _setup_context, _backward)
"""``rev_lif_fwd`` with autograd: its arguments; differentiable in x, v0, tau, v_threshold."""


@custom_op("rev_lif_inv")
def rev_lif_inv(y: torch.Tensor, vT: torch.Tensor, stash: torch.Tensor, tau: torch.Tensor,
                v_threshold: torch.Tensor, is_if: bool, decay_input: bool,
                v_reset: Optional[float], alpha: float, beta1: float, beta2: float,
                surrogate: str, surrogate_alpha: float, detach_reset: bool, backend: str,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [T, A, 2, R], initial int32 state [A, 2, R]) rebuilt from y, final state and stash."""
    cfg = RevLIFConfig.of(is_if, decay_input, v_reset, alpha, beta1, beta2, surrogate,
                          surrogate_alpha, detach_reset)
    _check_stash(stash, cfg, y.shape[0], y.shape[1] * y.shape[3], "rev_lif_inverse")
    x, v0, _ = launch_bwd(y, None, vT, stash, None, tau, v_threshold, cfg, 0, y.dtype, None,
                          backend)
    return x, v0


@rev_lif_inv.register_fake
def _(y, vT, stash, tau, v_threshold, is_if, decay_input, v_reset, alpha, beta1, beta2,
      surrogate, surrogate_alpha, detach_reset, backend):
    return torch.empty_like(y), torch.empty_like(vT)
