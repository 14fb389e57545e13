"""Plain-torch standard LIF node (SpikingJelly's ``LIFNode``).

* ``fwd_twin`` / ``bwd_twin``: the torch twins of ``kernels/lif.py`` (same arguments, same
  operation order: the forward is bit-identical); the CPU path of the op. Tensors are in the
  [T, N] view, seen as [T, O, C, I] where a parameter is per channel (C channels, I elements
  after the channel dim).
* :func:`lif_bptt`: ground truth for the gradients, autograd BPTT in float64.

tau and v_threshold are floats, or tensors [1] / [C] in the membrane dtype (float32, or float64
for float64 input).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from .._config import LIFConfig, Param, acc_dtype
from ..surrogate import surrogate_grad
from .neuron import charge_real, reset_partials, spike_reset_real


def _per_channel(p: Param) -> Param:
    """A [C] tensor as [C, 1], to broadcast against [O, C, I]; floats and [1] as they are."""
    return p.view(-1, 1) if isinstance(p, torch.Tensor) and p.numel() > 1 else p


def _initial_v(v0: Optional[torch.Tensor], cfg: LIFConfig, shape, acc, device) -> torch.Tensor:
    """v0, or v_reset (0 for soft reset) as SpikingJelly starts."""
    if v0 is not None:
        return v0.reshape(shape)
    return torch.full(shape, 0.0 if cfg.v_reset is None else cfg.v_reset, dtype=acc,
                      device=device)


def charge_dtau_h(h: torch.Tensor, v_prev: torch.Tensor, inv_tau: Param,
                  cfg: LIFConfig) -> torch.Tensor:
    """dH/dtau from H and the potential before the step (twin of kernels/lif.py)."""
    if cfg.decay_input:
        return (v_prev - h) * inv_tau
    return (v_prev - (0.0 if cfg.v_reset is None else cfg.v_reset)) * (inv_tau * inv_tau)


def fwd_twin(x: torch.Tensor, v0: Optional[torch.Tensor], tau: Param, v_threshold: Param,
             cfg: LIFConfig, C: int, I: int, save_h: bool):
    """Twin of lif_fwd_kernel. x: [T, N]; v0: None or [N] in the membrane dtype.
    Returns spikes [T, N] (x.dtype), the final potential [N] and H [T, N] ([0, N] unless
    save_h), both in the membrane dtype."""
    T, N = x.shape
    acc = acc_dtype(x.dtype)
    shape = (N // (C * I), C, I)
    tau, vth = _per_channel(tau), _per_channel(v_threshold)
    v = _initial_v(v0, cfg, shape, acc, x.device)
    spikes = torch.empty(T, *shape, dtype=x.dtype, device=x.device)
    h = torch.empty(T if save_h else 0, *shape, dtype=acc, device=x.device)
    for t in range(T):
        ht = charge_real(v, x[t].reshape(shape).to(acc), cfg, tau)
        s, v = spike_reset_real(ht, cfg, vth)
        spikes[t] = s
        if save_h:
            h[t] = ht
    return spikes.view(T, N), v.reshape(N), h.view(h.shape[0], N)


def bwd_twin(gs: torch.Tensor, gv: torch.Tensor, h: torch.Tensor, v0: Optional[torch.Tensor],
             tau: Param, v_threshold: Param, cfg: LIFConfig, C: int, I: int, grad_tau: bool,
             grad_vth: bool):
    """Twin of lif_bwd_kernel. gs: dL/dspikes [T, N]; gv: dL/d(final potential) [N]; h: the
    saved H [T, N]. Returns dL/dx [T, N] (gs.dtype), dL/dv0 [N] and the per-neuron sums over T
    of the dL/dtau and dL/dv_threshold contributions [N] (None unless asked for)."""
    T, N = h.shape
    shape = (N // (C * I), C, I)
    tau, vth = _per_channel(tau), _per_channel(v_threshold)
    inv_tau = 1.0 / tau
    lam = 1.0 - inv_tau
    hs = h.view(T, *shape)
    carry = gv.reshape(shape)
    gx = torch.empty(T, *shape, dtype=gs.dtype, device=gs.device)
    g_tau = torch.zeros_like(carry) if grad_tau else None
    g_vth = torch.zeros_like(carry) if grad_vth else None
    for t in range(T - 1, -1, -1):
        sg = surrogate_grad(hs[t] - vth, cfg.surrogate_alpha, cfg.surrogate)
        s = (hs[t] >= vth).to(h.dtype)
        du_dm, du_ds = reset_partials(hs[t], s, vth, cfg)
        gz = (gs[t].reshape(shape).to(h.dtype) + carry * du_ds) * sg
        gh = gz + carry * du_dm
        gx[t] = gh * inv_tau if cfg.decay_input else gh
        if grad_vth:
            g_vth = g_vth - gz - (0.0 if cfg.hard_reset else carry * s)
        if grad_tau:
            v_before = (spike_reset_real(hs[t - 1], cfg, vth)[1] if t
                        else _initial_v(v0, cfg, shape, h.dtype, h.device))
            g_tau = g_tau + gh * charge_dtau_h(hs[t], v_before, inv_tau, cfg)
        carry = gh * lam
    return (gx.view(T, N), carry.reshape(N), None if g_tau is None else g_tau.reshape(N),
            None if g_vth is None else g_vth.reshape(N))


# -- autograd reference --------------------------------------------------------------------------
def _in_dtype(p: Param, dtype: torch.dtype) -> Param:
    """p rounded to dtype (a float stays a Python float); a tensor keeps its autograd history."""
    if isinstance(p, torch.Tensor):
        return p.to(dtype)
    return float(torch.tensor(p, dtype=dtype))


def lif_bptt(x: torch.Tensor, v: Optional[torch.Tensor] = None, *, tau: Param = 2.0,
             decay_input: bool = True, v_threshold: Param = 1.0,
             v_reset: Optional[float] = 0.0, surrogate: str = "sigmoid",
             surrogate_alpha: Optional[float] = None, detach_reset: bool = False,
             dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth for the gradients of :func:`revsnn.functional.lif`: autograd BPTT in float64.

    The values follow the trajectory the op computes (membrane in float32 for float32, float16
    and bfloat16 input, float64 for float64, parameters rounded alike), so every spike is the
    op's; the derivatives are those of the real-valued equations in float64 at those values
    (straight-through). For float64 input this is plain float64 BPTT.

    Args:
        x: ``[T, B, *]``; v: optional initial potential ``[B, *]`` (default v_reset, or 0).
        tau, v_threshold: floats, or tensors with one element or one per channel of ``dim``.
        Other keywords: as :func:`revsnn.functional.lif`.
    Returns:
        spikes ``[T, B, *]`` and the final potential ``[B, *]``, float64, differentiable with
        respect to x, v and tensor tau / v_threshold.
    """
    cfg = LIFConfig.build(tau, decay_input, v_threshold, v_reset, surrogate, surrogate_alpha,
                          detach_reset)
    acc = acc_dtype(x.dtype)
    f64 = torch.float64
    step_shape = [-1] + [1] * (x.dim() - 1 - dim % x.dim())  # a [C] parameter vs x[t]
    params = []
    for p in (tau, v_threshold):
        p = _in_dtype(p, acc)
        if isinstance(p, torch.Tensor):
            p = p.reshape(step_shape) if p.numel() > 1 else p.reshape(())
        params.append(p)
    tau_a, vth_a = params
    tau64, vth64 = (p.to(f64) if isinstance(p, torch.Tensor) else p for p in params)
    if cfg.v_reset is not None:
        cfg = dataclasses.replace(cfg, v_reset=_in_dtype(cfg.v_reset, acc))
    xa = x.detach().to(acc)
    if v is None:
        va = _initial_v(None, cfg, x.shape[1:], acc, x.device)
        V = va.to(f64)
    else:
        va = v.detach().to(acc)
        V = v.to(acc).to(f64)
    spikes = []
    for t in range(x.shape[0]):
        with torch.no_grad():  # the op's values
            ha = charge_real(va, xa[t], cfg, tau_a.detach() if isinstance(tau_a, torch.Tensor)
                             else tau_a)
            _, va = spike_reset_real(ha, cfg, vth_a.detach()
                                     if isinstance(vth_a, torch.Tensor) else vth_a)
        H = charge_real(V, x[t].to(f64), cfg, tau64)
        H = H + (ha.to(f64) - H).detach()
        S, U = spike_reset_real(H, cfg, vth64)
        V = U + (va.to(f64) - U).detach()
        spikes.append(S)
    return torch.stack(spikes), V
