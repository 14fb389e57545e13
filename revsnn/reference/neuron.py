"""Neuron dynamics in plain torch: the fixed-point twins of ``kernels/neuron.py`` (int64 in
units of 2**-F, bit-identical to the kernels) and the real-valued equations the gradients use.
"""
from __future__ import annotations

import math

import torch

from .._config import F_BITS, RevLIFConfig
from ..surrogate import spike


# -- fixed point (twins of kernels/neuron.py) ----------------------------------------------------
def mul_round(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) / 2**F rounded to nearest (ties up)."""
    return (a * c + (1 << (F_BITS - 1))) >> F_BITS


def charge_int(v: torch.Tensor, i: torch.Tensor, c_tau, cfg: RevLIFConfig) -> torch.Tensor:
    """c_tau = round(2**F / tau) (0 for IF), a scalar or a tensor broadcasting against v."""
    if cfg.int_decay_input:
        return v + mul_round(i - v + cfg.vr_i, c_tau)
    return v - mul_round(v - cfg.vr_i, c_tau) + i


def fire_reset_int(m: torch.Tensor, vth_i, cfg: RevLIFConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """vth_i = round(v_threshold * 2**F), a scalar or a tensor broadcasting against m."""
    s = m >= vth_i
    if cfg.hard_reset:
        return s, torch.where(s, cfg.vr_i, m)
    return s, torch.where(s, m - vth_i, m)


# -- real-valued equations (SpikingJelly's LIFNode) -----------------------------------------------
# tau and v_threshold default to the config's fields; a tensor (per channel, broadcasting against
# the potential) may be passed instead. tau = inf is the IF neuron V + I.
def charge_real(v: torch.Tensor, i: torch.Tensor, cfg, tau=None) -> torch.Tensor:
    tau = cfg.tau if tau is None else tau
    vr = 0.0 if cfg.v_reset is None else cfg.v_reset
    if not isinstance(tau, torch.Tensor):
        if math.isinf(tau):
            return v + i
        # CUDA divides by a Python number as a product with its reciprocal, which is not
        # correctly rounded; a tensor divisor is divided exactly, on every device
        tau = torch.tensor(tau, dtype=v.dtype, device=v.device)
    if cfg.decay_input:
        return v + (i - (v - vr)) / tau
    return v - (v - vr) / tau + i


def spike_reset_real(m: torch.Tensor, cfg, v_threshold=None) -> tuple[torch.Tensor, torch.Tensor]:
    """S = H(M - vth) with surrogate gradient; U = hard or soft reset (detach_reset aware)."""
    vth = cfg.v_threshold if v_threshold is None else v_threshold
    s = spike(m - vth, cfg.surrogate_alpha, cfg.surrogate)
    sr = s.detach() if cfg.detach_reset else s
    if cfg.hard_reset:
        return s, m * (1 - sr) + cfg.v_reset * sr
    return s, m - vth * sr


def reset_partials(m: torch.Tensor, s: torch.Tensor, vth, cfg):
    """(dU/dM with S fixed, dU/dS) at (M, S): twin of kernels/neuron.py reset_partials."""
    if cfg.hard_reset:
        du_dm, du_ds = 1.0 - s, cfg.v_reset - m
    else:
        du_dm, du_ds = torch.ones_like(m), -vth + torch.zeros_like(m)
    return du_dm, (torch.zeros_like(m) if cfg.detach_reset else du_ds)


def charge_dtau(v: torch.Tensor, i: torch.Tensor, inv_tau, cfg):
    """dM/dtau of the real-valued charge at (V, I): twin of kernels/neuron.py charge_dtau."""
    vr = 0.0 if cfg.v_reset is None else cfg.v_reset
    if cfg.int_decay_input:
        return (v - vr - i) * (inv_tau * inv_tau)
    return (v - vr) * (inv_tau * inv_tau)
