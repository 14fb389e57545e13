"""Standard LIF op (SpikingJelly's ``LIFNode``): torch.library custom ops, their autograd, and
dispatch to the Triton kernels (``kernels/lif.py``) or their torch twin
(``revsnn/reference/lif.py``).

Every op works on the [T, N] view of x (N = prod(x.shape[1:])); a per-channel parameter has
``channels`` values, neuron n using value ``(n // inner) % channels``. The functional API
(``revsnn/functional/_lif.py``) validates and reshapes.

Kept for backward: H, the charged potential of every step, in the membrane dtype: 4 bytes per
neuron per step (8 for float64 input), as SpikingJelly's Triton backend keeps its ``h_seq``; no
spikes, no input (spikes and reset potentials are recomputed from H). With a learnable tau also
the initial potential (once per neuron, not per step) and the parameter tensors themselves.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._config import LIFConfig, acc_dtype
from ..reference import lif as twin
from ._dispatch import (custom_op, differentiable, grid_1d, kernels_module,
                        launch_options, use_triton)

# The node's scalar options, in the order every custom op below takes them.
NODE_ARGS = ("decay_input", "v_reset", "surrogate", "surrogate_alpha", "detach_reset")


def _kernel_params(tau, tau_value, vth, vth_value, cfg: LIFConfig, acc, dummy):
    """Pointers, scalars and modes (see kernels/lif.py) of tau, v_threshold and v_reset. A tensor
    is read from memory; a float is a float32 scalar argument, except with float64 input, where
    it goes as a one-element tensor: Triton passes Python floats as float32."""
    ptrs, scalars, modes = [], [], {}
    vr = 0.0 if cfg.v_reset is None else cfg.v_reset
    for name, t, value in (("TAU", tau, tau_value), ("VTH", vth, vth_value), ("VR", None, vr)):
        if t is None and acc == torch.float64:
            t = torch.full((1,), value, dtype=acc, device=dummy.device)
        ptrs.append(dummy if t is None else t)
        scalars.append(value if t is None else 0.0)
        modes[f"{name}_MODE"] = 0 if t is None else (1 if t.numel() == 1 else 2)
    return ptrs, scalars, modes


def _twin_params(tau, tau_value, vth, vth_value):
    return (tau_value if tau is None else tau), (vth_value if vth is None else vth)


def launch_fwd(x: torch.Tensor, v0: Optional[torch.Tensor], tau, tau_value: float, vth,
               vth_value: float, cfg: LIFConfig, C: int, I: int, save_h: bool, backend: str):
    """Forward over all T. x: contiguous [T, N]; v0: None or [N] in the membrane dtype.
    Returns (spikes, final potential, H) as ``reference.lif.fwd_twin``."""
    if not use_triton(x, backend):
        return twin.fwd_twin(x, v0, *_twin_params(tau, tau_value, vth, vth_value), cfg, C, I,
                             save_h)
    T, N = x.shape
    acc = acc_dtype(x.dtype)
    spikes = torch.empty_like(x)
    vT = torch.empty(N, dtype=acc, device=x.device)
    h = torch.empty(T if save_h else 0, N, dtype=acc, device=x.device)
    if N:
        ptrs, scalars, modes = _kernel_params(tau, tau_value, vth, vth_value, cfg, acc, vT)
        kernels_module("lif").lif_fwd_kernel[grid_1d(N, "lif")](
            x, vT if v0 is None else v0, spikes, vT, h if save_h else vT, *ptrs, T, N, C, I,
            *scalars, DECAY_INPUT=cfg.decay_input, HARD=cfg.hard_reset, HAS_V0=v0 is not None,
            SAVE_H=save_h, F64=acc == torch.float64, enable_fp_fusion=False, **modes,
            **launch_options("lif"))
    return spikes, vT, h


def launch_bwd(gs: torch.Tensor, gv: torch.Tensor, h: torch.Tensor, v0: Optional[torch.Tensor],
               tau, tau_value: float, vth, vth_value: float, cfg: LIFConfig, C: int, I: int,
               grad_tau: bool, grad_vth: bool, backend: str):
    """Time-reversed pass; see ``reference.lif.bwd_twin`` for the results (the kernels sum a
    one-element parameter's partials per program already, the twin per neuron)."""
    if not use_triton(h, backend):
        return twin.bwd_twin(gs, gv, h, v0, *_twin_params(tau, tau_value, vth, vth_value), cfg,
                             C, I, grad_tau, grad_vth)
    T, N = h.shape
    gx = torch.empty(T, N, dtype=gs.dtype, device=h.device)
    gv0 = torch.empty_like(gv)
    grid = grid_1d(N, "lif")

    def partials(p, wanted):
        # one per program for a one-element parameter, one per neuron for a per-channel one
        return gv.new_empty(grid[0] if p.numel() == 1 else N) if wanted else None

    g_tau, g_vth = partials(tau, grad_tau), partials(vth, grad_vth)
    if N:
        ptrs, scalars, modes = _kernel_params(tau, tau_value, vth, vth_value, cfg, h.dtype, gv)
        kernels_module("lif").lif_bwd_kernel[grid](
            gs, gv, h, gv if v0 is None else v0, gx, gv0, gv if g_tau is None else g_tau,
            gv if g_vth is None else g_vth, *ptrs, T, N, C, I, (T - 1) * N, *scalars,
            cfg.surrogate_alpha, DECAY_INPUT=cfg.decay_input, HARD=cfg.hard_reset,
            DETACH_RESET=cfg.detach_reset, SURROGATE=cfg.surrogate_id, HAS_V0=v0 is not None,
            GRAD_TAU=grad_tau, GRAD_VTH=grad_vth, F64=h.dtype == torch.float64, **modes,
            **launch_options("lif"))
    return gx, gv0, g_tau, g_vth


def _reduce(partial: torch.Tensor, p: torch.Tensor, C: int, I: int) -> torch.Tensor:
    """Partial sums -> the parameter's gradient: their total for a one-element p, the sum over
    each channel's neurons for a per-channel p (partials per neuron [N]). A deterministic torch
    reduction, not atomics: float atomics would make the gradient differ from run to run, and
    the C addresses that every program hits would serialise."""
    if p.numel() == 1:
        return partial.sum().reshape(p.shape)
    return partial.view(-1, C, I).sum(dim=(0, 2))


# -- custom ops ----------------------------------------------------------------------------------
@custom_op("lif_fwd")
def lif_fwd(x: torch.Tensor, v0: Optional[torch.Tensor], tau: Optional[torch.Tensor],
            tau_value: float, v_threshold: Optional[torch.Tensor], v_threshold_value: float,
            decay_input: bool, v_reset: Optional[float], surrogate: str, surrogate_alpha: float,
            detach_reset: bool, channels: int, inner: int, save_h: bool, backend: str,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, N] -> (spikes [T, N] x.dtype, final potential [N], H [T, N] or [0, N]).

    tau / v_threshold: a tensor [1] or [channels] in the membrane dtype, or None to use the
    float ``*_value``."""
    cfg = LIFConfig(decay_input, v_reset, surrogate, surrogate_alpha, detach_reset)
    return launch_fwd(x, v0, tau, tau_value, v_threshold, v_threshold_value, cfg, channels,
                      inner, save_h, backend)


@lif_fwd.register_fake
def _(x, v0, tau, tau_value, v_threshold, v_threshold_value, decay_input, v_reset, surrogate,
      surrogate_alpha, detach_reset, channels, inner, save_h, backend):
    T, N = x.shape
    acc = acc_dtype(x.dtype)
    return (torch.empty_like(x), x.new_empty(N, dtype=acc),
            x.new_empty((T if save_h else 0, N), dtype=acc))


@custom_op("lif_bwd")
def lif_bwd(gs: torch.Tensor, gv: torch.Tensor, h: torch.Tensor, v0: Optional[torch.Tensor],
            tau: Optional[torch.Tensor], tau_value: float, v_threshold: Optional[torch.Tensor],
            v_threshold_value: float, decay_input: bool, v_reset: Optional[float],
            surrogate: str, surrogate_alpha: float, detach_reset: bool, grad_tau: bool,
            grad_vth: bool, channels: int, inner: int, backend: str,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dx [T, N], dL/dv0 [N], dL/dtau (tau's shape, or empty), dL/dv_threshold (likewise))
    from dL/dspikes, dL/d(final potential) and the saved H (one time-reversed pass)."""
    cfg = LIFConfig(decay_input, v_reset, surrogate, surrogate_alpha, detach_reset)
    gx, gv0, g_tau, g_vth = launch_bwd(gs, gv, h, v0, tau, tau_value, v_threshold,
                                       v_threshold_value, cfg, channels, inner, grad_tau,
                                       grad_vth, backend)
    return (gx, gv0, _reduce(g_tau, tau, channels, inner) if grad_tau else h.new_empty(0),
            _reduce(g_vth, v_threshold, channels, inner) if grad_vth else h.new_empty(0))


@lif_bwd.register_fake
def _(gs, gv, h, v0, tau, tau_value, v_threshold, v_threshold_value, decay_input, v_reset,
      surrogate, surrogate_alpha, detach_reset, grad_tau, grad_vth, channels, inner, backend):
    return (torch.empty_like(gs), torch.empty_like(gv),
            torch.empty_like(tau) if grad_tau else h.new_empty(0),
            torch.empty_like(v_threshold) if grad_vth else h.new_empty(0))


def _setup_context(ctx, inputs, output):
    _, v0, tau, tau_value, vth, vth_value = inputs[:6]
    ctx.grad_v0 = v0 is not None and v0.requires_grad
    ctx.grad_tau = tau is not None and tau.requires_grad
    ctx.grad_vth = vth is not None and vth.requires_grad
    # the initial potential only enters tau's gradient (through the first charge)
    ctx.save_for_backward(output[2], v0 if ctx.grad_tau else None, tau, vth)
    ctx.values = (tau_value, vth_value)
    ctx.node_args = inputs[6:11]
    ctx.layout = inputs[11:13]
    ctx.backend = inputs[14]
    ctx.spike_dtype = output[0].dtype
    ctx.mark_non_differentiable(output[2])
    # no zeros for the gradients that are not there: H's would be a [T, N] tensor to fill
    ctx.set_materialize_grads(False)


def _backward(ctx, gs, gv, _gh):
    h, v0, tau, vth = ctx.saved_tensors
    if gs is None:
        gs = torch.zeros(h.shape, dtype=ctx.spike_dtype, device=h.device)
    if gv is None:  # the final potential unused: common, and only [N]
        gv = h.new_zeros(h.shape[1])
    gx, gv0, g_tau, g_vth = lif_bwd(
        gs.contiguous(), gv.contiguous(), h, v0, tau, ctx.values[0], vth, ctx.values[1],
        *ctx.node_args, ctx.grad_tau, ctx.grad_vth, *ctx.layout, ctx.backend)
    return ((gx, gv0 if ctx.grad_v0 else None, g_tau if ctx.grad_tau else None, None,
             g_vth if ctx.grad_vth else None) + (None,) * 10)


apply_lif = differentiable(lif_fwd, _setup_context, _backward)
"""``lif_fwd`` with autograd: its arguments; differentiable in x, v0, tau and v_threshold."""
