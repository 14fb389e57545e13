"""Plain-torch reversible LIF node.

* ``fwd_twin`` / ``bwd_twin``: the torch twins of ``kernels/rev_lif.py`` (same argument
  meaning, same integer arithmetic, bit-identical forward and inverse); the CPU path of the op.
* :func:`rev_lif_int`: ground truth for the gradients. Values come from the integer trajectory,
  derivatives from the real-valued equations along it (straight-through), via autograd BPTT.
* :func:`rev_lif_float64`: the real-valued equations themselves, float64 BPTT.

Tensors are in the [T, A, 2, R] view described in ``revsnn/_config.py`` (``Layout``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .._config import (F_BITS, INPUT_BITS, POISON_LIMIT, V_MAX, V_PARAM_MAX, Grid,
                       Param, RevLIFConfig, acc_dtype, channel_param, grid_for, layout_of)
from ..state import RevLIFState
from ..surrogate import surrogate_grad
from .neuron import (charge_dtau, charge_int, charge_real, fire_reset_int, reset_partials,
                     spike_reset_real)


def per_group(const: torch.Tensor, R: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A constant [1] or [C] (per channel) as the values of each pair's group-1 and group-2
    neuron, shapes [1] or [R], broadcasting against [A, R]: twin of the kernels' _per_group."""
    if const.numel() == 1:
        return const, const
    half = const.numel() // 2
    inner = R // half
    return const[:half].repeat_interleave(inner), const[half:].repeat_interleave(inner)


class NodeConstants(NamedTuple):
    """What the kernels derive from tau and v_threshold ([1] or [C] each)."""

    c_tau: torch.Tensor     # int64 round(2**F / tau), 0 for tau = inf (IF)
    vth_i: torch.Tensor     # int64 round(v_threshold * 2**F)
    inv_tau: torch.Tensor   # float32 1/tau, for the gradient
    vth: torch.Tensor       # float32 v_threshold, for the gradient
    bad: torch.Tensor       # bool: a value out of range (error code 16)


def node_constants(tau: torch.Tensor, v_threshold: torch.Tensor,
                   cfg: RevLIFConfig) -> NodeConstants:
    """Twin of the kernels' _fixed_params: half-up rounding in float64, tau = 2 and vth = 0
    standing in for values out of range (tau <= 1 or NaN, tau = inf with decay_input,
    |vth| > V_PARAM_MAX)."""
    t = tau.detach().to(torch.float64)
    v = v_threshold.detach().to(torch.float64)
    ok = (t > 1.0) & (v.abs() <= V_PARAM_MAX)
    if cfg.int_decay_input:
        ok = ok & (t <= torch.finfo(torch.float64).max)
    c = torch.floor(2 ** F_BITS / torch.where(ok, t, 2.0) + 0.5).long()
    th = torch.floor(torch.where(ok, v, 0.0) * 2 ** F_BITS + 0.5).long()
    return NodeConstants(c, th, (1.0 / t).to(torch.float32), v.to(torch.float32), ~ok)


def _bad_param_code(consts: NodeConstants, R: int) -> torch.Tensor:
    bad = per_group(consts.bad, R)
    return torch.where(bad[0] | bad[1], 16, 0).int()


def quantize_x(x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """q = floor(x * 2**x_frac + 0.5) as int64 (0 where out of range) and the in-range mask."""
    qf = torch.floor(x.to(acc_dtype(x.dtype)) * grid.x_scale + 0.5)
    ok = qf.abs() <= grid.qmax
    return torch.where(ok, qf, 0).to(torch.int64), ok


def _load_state(v0: Optional[torch.Tensor]):
    """Twin of the kernel's _load_state: (v1, v2) int64 [A, R] and the error code, from v0 in
    the [A, 2, R] view (None: zeros; int32: a state; float: quantized, round half up)."""
    if v0.dtype == torch.int32:
        code = torch.where(v0 < POISON_LIMIT, v0.long() + 2 ** 31, 0)
        v = v0.long()
    else:
        f = v0.to(torch.float64) * 2 ** F_BITS + 0.5
        ok = f.abs() <= V_MAX
        v = torch.where(ok, torch.floor(f), 0).long()
        code = torch.where(ok, 0, 4)
    return v[:, 0], v[:, 1], (code[:, 0] | code[:, 1]).int()


def _poison(v: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    return torch.where(code != 0, code.long() - 2 ** 31, v).to(torch.int32)


def _wrap_int32(w: torch.Tensor) -> torch.Tensor:
    """An int64 holding 32 bits -> the int32 with those bits (two's complement)."""
    return torch.where(w >= 2 ** 31, w - 2 ** 32, w).to(torch.int32)


class FwdStep(NamedTuple):
    m1: torch.Tensor
    s1: torch.Tensor
    u1: torch.Tensor
    v1n: torch.Tensor
    m2: torch.Tensor
    s2: torch.Tensor
    u2: torch.Tensor
    v2n: torch.Tensor
    yq1: torch.Tensor
    yq2: torch.Tensor


def fwd_step_int(v1, v2, q1, q2, c, th, cfg: RevLIFConfig, grid: Grid) -> FwdStep:
    """One step of the node in integers (all int64): the equations of the README.
    c, th: (group 1, group 2) of c_tau and vth_i, as from per_group."""
    one_y = 1 << grid.fy
    m1 = charge_int(v1, q1 << grid.x_shift, c[0], cfg)
    s1, u1 = fire_reset_int(m1, th[0], cfg)
    yq1 = s1.long() * one_y + cfg.alpha_sign * q2
    v1n = u1 - (v2 >> cfg.k1)
    m2 = charge_int(v1n, yq1 << (F_BITS - grid.fy), c[1], cfg)
    s2, u2 = fire_reset_int(m2, th[1], cfg)
    yq2 = s2.long() * one_y + cfg.alpha_sign * q1
    v2n = u2 + (v1 >> cfg.k2)
    return FwdStep(m1, s1, u1, v1n, m2, s2, u2, v2n, yq1, yq2)


def inv_step_int(v1n, v2n, yq1, yq2, lo1, lo2, c, th, cfg: RevLIFConfig, grid: Grid):
    """Undo one step: (v1, v2, q1, q2, m1, s1, m2, s2) from the state after it and its y."""
    one_y = 1 << grid.fy
    m2 = charge_int(v1n, yq1 << (F_BITS - grid.fy), c[1], cfg)
    s2, u2 = fire_reset_int(m2, th[1], cfg)
    q1 = cfg.alpha_sign * (yq2 - s2.long() * one_y)
    v1 = ((v2n - u2) << cfg.k2) + lo2
    m1 = charge_int(v1, q1 << grid.x_shift, c[0], cfg)
    s1, u1 = fire_reset_int(m1, th[0], cfg)
    q2 = cfg.alpha_sign * (yq1 - s1.long() * one_y)
    v2 = ((u1 - v1n) << cfg.k1) + lo1
    return v1, v2, q1, q2, m1, s1, m2, s2


class StepGrads(NamedTuple):
    gx1: torch.Tensor
    gx2: torch.Tensor
    gv1: torch.Tensor
    gv2: torch.Tensor
    dtau: tuple
    dvth: tuple


def grad_step(m1, s1, m2, s2, gy1, gy2, g1n, g2n, it, vth, cfg: RevLIFConfig,
              charge_inputs=None) -> StepGrads:
    """Chain rule of one step, time reversed, from the step's M, S, dL/dy and dL/d(state after
    the step); it, vth: (group 1, group 2) of 1/tau and v_threshold. With charge_inputs =
    (V1, X1, V1new, Y1) as floats also dL/dtau and dL/dv_threshold of each neuron.
    Twin of the kernel's MODE 1/2 block."""
    dt = gy1.dtype
    mf1 = m1.to(dt) * 2.0 ** -F_BITS
    mf2 = m2.to(dt) * 2.0 ** -F_BITS
    sf1, sf2 = s1.to(dt), s2.to(dt)
    sg1 = surrogate_grad(mf1 - vth[0], cfg.surrogate_alpha, cfg.surrogate)
    sg2 = surrogate_grad(mf2 - vth[1], cfg.surrogate_alpha, cfg.surrogate)
    dm1, ds1 = reset_partials(mf1, sf1, vth[0], cfg)
    dm2, ds2 = reset_partials(mf2, sf2, vth[1], cfg)
    kin1, kin2 = (it[0], it[1]) if cfg.int_decay_input else (1.0, 1.0)
    gs2 = gy2 + g2n * ds2
    gm2 = gs2 * sg2 + g2n * dm2
    g1t = g1n + (1.0 - it[1]) * gm2
    gy1t = gy1 + kin2 * gm2
    gs1 = gy1t + g1t * ds1
    gm1 = gs1 * sg1 + g1t * dm1
    dtau = dvth = None
    if charge_inputs is not None:
        v1, x1, v1n, y1 = charge_inputs
        dtau = (gm1 * charge_dtau(v1, x1, it[0], cfg), gm2 * charge_dtau(v1n, y1, it[1], cfg))
        dvth = (-gs1 * sg1, -gs2 * sg2)
        if not cfg.hard_reset:
            dvth = (dvth[0] - g1t * sf1, dvth[1] - g2n * sf2)
    return StepGrads(cfg.alpha * gy2 + kin1 * gm1, cfg.alpha * gy1t,
                     cfg.beta2 * g2n + (1.0 - it[0]) * gm1, cfg.beta1 * g1t, dtau, dvth)


def fwd_twin(x: torch.Tensor, v0: Optional[torch.Tensor], tau: torch.Tensor,
             v_threshold: torch.Tensor, cfg: RevLIFConfig,
             grid: Grid, write_stash: bool, save_m: bool):
    """Twin of rev_lif_fwd_kernel. x: [T, A, 2, R]; v0: None, int32 or float [A, 2, R];
    tau, v_threshold: float [1] or [C] each.
    Returns y [T, A, 2, R] (x.dtype), final state int32 [A, 2, R], stash int32 [W, A*R]
    (W = 0 unless write_stash) and M int32 [T, A, 2, R] (None unless save_m)."""
    T, A, _, R = x.shape
    consts = node_constants(tau, v_threshold, cfg)
    c, th = per_group(consts.c_tau, R), per_group(consts.vth_i, R)
    q, ok = quantize_x(x, grid)
    ok = ok.all(dim=2)
    if v0 is None:
        v1 = v2 = torch.zeros(A, R, dtype=torch.int64, device=x.device)
        code = torch.zeros(A, R, dtype=torch.int32, device=x.device)
    else:
        v1, v2, code = _load_state(v0)
    code = code | _bad_param_code(consts, R)
    yq = torch.empty(T, A, 2, R, dtype=torch.int64, device=x.device)
    m = torch.empty(T, A, 2, R, dtype=torch.int32, device=x.device) if save_m else None
    spw = cfg.steps_per_word
    kk = cfg.k1 + cfg.k2
    words = []
    word = torch.zeros(A, R, dtype=torch.int64, device=x.device)
    for t in range(T):
        code = code | torch.where(ok[t], 0, 1).int()
        st = fwd_step_int(v1, v2, q[t, :, 0], q[t, :, 1], c, th, cfg, grid)
        big = ((st.m1.abs() > V_MAX) | (st.m2.abs() > V_MAX)
               | (st.v1n.abs() > V_MAX) | (st.v2n.abs() > V_MAX))
        code = code | torch.where(big, 2, 0).int()
        yq[t, :, 0], yq[t, :, 1] = st.yq1, st.yq2
        if save_m:
            m[t, :, 0], m[t, :, 1] = st.m1.int(), st.m2.int()
        if write_stash and spw:
            j = t % spw
            lo = (v2 & ((1 << cfg.k1) - 1)) | ((v1 & ((1 << cfg.k2) - 1)) << cfg.k1)
            word = word | (lo << (j * kk))
            if j == spw - 1 or t == T - 1:
                words.append(_wrap_int32(word).reshape(-1))
                word = torch.zeros_like(word)
        v1, v2 = st.v1n, st.v2n
    y = (yq.to(acc_dtype(x.dtype)) * 2.0 ** -grid.fy).to(x.dtype)
    vT = torch.stack([_poison(v1, code), _poison(v2, code)], dim=1)
    stash = (torch.stack(words) if words
             else torch.empty(0, A * R, dtype=torch.int32, device=x.device))
    return y, vT, stash, m


def bwd_twin(y: Optional[torch.Tensor], gy: Optional[torch.Tensor], vT: torch.Tensor,
             stash: torch.Tensor, m: Optional[torch.Tensor], tau: torch.Tensor,
             v_threshold: torch.Tensor, cfg: RevLIFConfig,
             grid: Grid, mode: int, out_dtype: torch.dtype, v0_dtype: Optional[torch.dtype],
             param_grad: bool = False):
    """Twin of rev_lif_bwd_kernel. mode 0: returns (x, initial int32 state, None); mode 1:
    (dL/dx, dL/dv0, per-neuron dL/dtau and dL/dv_threshold [2, A, 2, R] if param_grad) from a
    reconstruction out of y, vT and stash; mode 2: the same from saved M (no parameter
    gradients). dL/dv0 is None when v0_dtype is None."""
    T, A, _, R = (m if mode == 2 else y).shape
    one_y = 1 << grid.fy
    acc = acc_dtype(out_dtype)
    consts = node_constants(tau, v_threshold, cfg)
    c, th = per_group(consts.c_tau, R), per_group(consts.vth_i, R)
    it = per_group(consts.inv_tau.to(acc), R)
    vth = per_group(consts.vth.to(acc), R)
    code = torch.where(vT < POISON_LIMIT, vT.long() + 2 ** 31, 0)
    code = (code[:, 0] | code[:, 1]).int() | _bad_param_code(consts, R)
    v1n, v2n = vT[:, 0].long(), vT[:, 1].long()
    g1n = torch.zeros(A, R, dtype=acc, device=vT.device)
    g2n = torch.zeros_like(g1n)
    pg = torch.zeros(2, A, 2, R, dtype=acc, device=vT.device) if param_grad else None
    out = torch.empty(T, A, 2, R, dtype=out_dtype, device=vT.device)
    spw = cfg.steps_per_word
    kk = cfg.k1 + cfg.k2
    for t in range(T - 1, -1, -1):
        if mode == 2:
            m1, m2 = m[t, :, 0].long(), m[t, :, 1].long()
            s1, s2 = m1 >= th[0], m2 >= th[1]
        else:
            yf = y[t].to(acc_dtype(y.dtype)) * one_y
            if mode == 0:
                y_limit = 2 ** (INPUT_BITS - (F_BITS - grid.fy))
                on_grid = ((yf == torch.floor(yf)) & (yf.abs() <= y_limit)).all(dim=1)
                code = code | torch.where(on_grid, 0, 8).int()
                yf = torch.where(on_grid[:, None], yf, 0)
            yq = yf.long()
            if spw:
                lo = stash[t // spw].reshape(A, R).long() >> (t % spw * kk)
                lo1, lo2 = lo & ((1 << cfg.k1) - 1), (lo >> cfg.k1) & ((1 << cfg.k2) - 1)
            else:
                lo1 = lo2 = 0
            v1, v2, q1, q2, m1, s1, m2, s2 = inv_step_int(
                v1n, v2n, yq[:, 0], yq[:, 1], lo1, lo2, c, th, cfg, grid)
            if mode == 0:  # as the forward could have produced them (else the kernels' int32
                q_limit = 2 ** (INPUT_BITS - grid.x_shift)  # arithmetic would not be exact)
                bad = ((q1.abs() > q_limit) | (q2.abs() > q_limit) | (v1.abs() > V_MAX)
                       | (v2.abs() > V_MAX) | (m1.abs() > V_MAX) | (m2.abs() > V_MAX))
                code = code | torch.where(bad, 8, 0).int()
        if mode == 0:
            out[t, :, 0] = (q1.to(acc) / grid.x_scale).to(out_dtype)
            out[t, :, 1] = (q2.to(acc) / grid.x_scale).to(out_dtype)
        else:
            inputs = None
            if param_grad:
                inputs = (v1.to(acc) * 2.0 ** -F_BITS, q1.to(acc) / grid.x_scale,
                          v1n.to(acc) * 2.0 ** -F_BITS, yq[:, 0].to(acc) / one_y)
            g = grad_step(m1, s1, m2, s2, gy[t, :, 0].to(acc), gy[t, :, 1].to(acc), g1n, g2n,
                          it, vth, cfg, inputs)
            out[t, :, 0], out[t, :, 1] = g.gx1.to(out_dtype), g.gx2.to(out_dtype)
            g1n, g2n = g.gv1, g.gv2
            if param_grad:
                pg[0, :, 0] += g.dtau[0]
                pg[0, :, 1] += g.dtau[1]
                pg[1, :, 0] += g.dvth[0]
                pg[1, :, 1] += g.dvth[1]
        if mode != 2:
            v1n, v2n = v1, v2
    if mode == 0:
        return out, torch.stack([_poison(v1n, code), _poison(v2n, code)], dim=1), None
    gv0 = None if v0_dtype is None else torch.stack([g1n, g2n], dim=1).to(v0_dtype)
    return out, gv0, pg


# -- autograd references -------------------------------------------------------------------------
def _split(x: torch.Tensor, dim: int):
    lay = layout_of(x.shape, dim)
    return lay, x.reshape(lay.T, lay.A, 2, lay.R)


def _real_params(tau, v_threshold, C: int, R: int, cfg: RevLIFConfig, device):
    """Per-group float64 tau and v_threshold (differentiable), and the [1]/[C] tensors."""
    tau_t = channel_param(tau, "tau", C, device)
    vth_t = channel_param(v_threshold, "v_threshold", C, device)
    taus = (math.inf, math.inf) if cfg.is_if else per_group(tau_t.to(torch.float64), R)
    return taus, per_group(vth_t.to(torch.float64), R), (tau_t, vth_t)


def rev_lif_int(x: torch.Tensor, v0: Optional[torch.Tensor] = None, *, tau: Param = 2.0,
                v_threshold: Param = 1.0, dim: int = 2,
                **node_kwargs) -> tuple[torch.Tensor, RevLIFState]:
    """Ground-truth reversible LIF: integer values, real-valued derivatives, autograd BPTT.

    Args:
        x: ``[T, B, C, *]`` float; v0: optional float initial potential ``[B, C, *]``.
        tau, v_threshold: floats or per-channel tensors ``[C]`` (gradients flow into them).
        node_kwargs: the node's other keywords (decay_input, v_reset, alpha, beta1, beta2,
            surrogate, surrogate_alpha, detach_reset).
    Returns:
        ``y`` (x.dtype, differentiable w.r.t. x, v0, tau and v_threshold, computed in float64)
        and the final :class:`RevLIFState` (stash always kept).
    """
    cfg = RevLIFConfig.build(tau=tau, v_threshold=v_threshold, **node_kwargs)
    grid = grid_for(x.dtype, cfg)
    lay, xv = _split(x, dim)
    taus, vths, params = _real_params(tau, v_threshold, x.shape[lay.dim], lay.R, cfg, x.device)
    consts = node_constants(*params, cfg)
    c, th = per_group(consts.c_tau, lay.R), per_group(consts.vth_i, lay.R)
    x64 = xv.to(torch.float64)
    q, _ = quantize_x(xv, grid)

    def st(value_int, real, scale=2.0 ** -F_BITS):
        # value from the integer trajectory, derivative from the real-valued expression
        return real + (value_int.to(torch.float64) * scale - real).detach()

    def neuron(M, k):
        S, U = spike_reset_real(M, cfg, vths[k])
        return st(s.s1 if k == 0 else s.s2, S, 1.0), U

    xq = st(q, x64, 1.0 / grid.x_scale)
    if v0 is None:
        v0v = None
        v1 = v2 = torch.zeros(lay.A, lay.R, dtype=torch.int64, device=x.device)
        V1 = V2 = torch.zeros(lay.A, lay.R, dtype=torch.float64, device=x.device)
    else:
        v0v = v0.reshape(lay.A, 2, lay.R)
        v1, v2, _ = _load_state(v0v)
        V1, V2 = st(v1, v0v[:, 0].to(torch.float64)), st(v2, v0v[:, 1].to(torch.float64))
    y, vT, stash, _ = fwd_twin(xv.detach(), None if v0v is None else v0v.detach(), *params, cfg,
                               grid, write_stash=True, save_m=False)
    ys = []
    for t in range(lay.T):
        X1, X2 = xq[t, :, 0], xq[t, :, 1]
        s = fwd_step_int(v1, v2, q[t, :, 0], q[t, :, 1], c, th, cfg, grid)
        M1 = st(s.m1, charge_real(V1, X1, cfg, taus[0]))
        S1, U1 = neuron(M1, 0)
        Y1 = S1 + cfg.alpha * X2
        V1n = st(s.v1n, st(s.u1, U1) + cfg.beta1 * V2)
        M2 = st(s.m2, charge_real(V1n, Y1, cfg, taus[1]))
        S2, U2 = neuron(M2, 1)
        Y2 = S2 + cfg.alpha * X1
        V2n = st(s.v2n, st(s.u2, U2) + cfg.beta2 * V1)
        ys.append(torch.stack([Y1, Y2], dim=1))
        V1, V2, v1, v2 = V1n, V2n, s.v1n, s.v2n
    y_st = torch.stack(ys).to(x.dtype).reshape(x.shape)
    # the autograd graph carries the derivatives; the twin's y carries the exact values
    y_out = y_st + (y.reshape(x.shape) - y_st).detach()
    return y_out, RevLIFState(vT.reshape(x.shape[1:]), stash)


def rev_lif_float64(x: torch.Tensor, v0: Optional[torch.Tensor] = None, *, tau: Param = 2.0,
                    v_threshold: Param = 1.0, dim: int = 2, **node_kwargs,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The real-valued equations in float64 with autograd BPTT (no quantization at all).

    Returns ``y`` (float64, ``x``'s shape) and the final potential float64 ``[B, C, *]``."""
    cfg = RevLIFConfig.build(tau=tau, v_threshold=v_threshold, **node_kwargs)
    lay, xv = _split(x.to(torch.float64), dim)
    taus, vths, _ = _real_params(tau, v_threshold, x.shape[lay.dim], lay.R, cfg, x.device)
    if v0 is None:
        V1 = V2 = torch.zeros(lay.A, lay.R, dtype=torch.float64, device=x.device)
    else:
        v0v = v0.to(torch.float64).reshape(lay.A, 2, lay.R)
        V1, V2 = v0v[:, 0], v0v[:, 1]
    ys = []
    for t in range(lay.T):
        X1, X2 = xv[t, :, 0], xv[t, :, 1]
        S1, U1 = spike_reset_real(charge_real(V1, X1, cfg, taus[0]), cfg, vths[0])
        Y1 = S1 + cfg.alpha * X2
        V1n = U1 + cfg.beta1 * V2
        S2, U2 = spike_reset_real(charge_real(V1n, Y1, cfg, taus[1]), cfg, vths[1])
        Y2 = S2 + cfg.alpha * X1
        V2n = U2 + cfg.beta2 * V1
        ys.append(torch.stack([Y1, Y2], dim=1))
        V1, V2 = V1n, V2n
    return (torch.stack(ys).reshape(x.shape),
            torch.stack([V1, V2], dim=1).reshape(x.shape[1:]))
