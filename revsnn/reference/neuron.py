"""Neuron dynamics in plain torch: the fixed-point twins of ``kernels/neuron.py`` (int64 in
units of 2**-F, bit-identical to the kernels) and the real-valued equations the gradients use.
"""
from __future__ import annotations

import torch

from .._config import F_BITS, RevLIFConfig
from ..surrogate import spike


# -- fixed point (twins of kernels/neuron.py) ----------------------------------------------------
def mul_round(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) / 2**F rounded to nearest (ties up)."""
    return (a * c + (1 << (F_BITS - 1))) >> F_BITS


def charge_int(v: torch.Tensor, i: torch.Tensor, cfg: RevLIFConfig) -> torch.Tensor:
    if cfg.int_decay_input:
        return v + mul_round(i - v + cfg.vr_i, cfg.c_tau)
    return v - mul_round(v - cfg.vr_i, cfg.c_tau) + i


def fire_reset_int(m: torch.Tensor, cfg: RevLIFConfig) -> tuple[torch.Tensor, torch.Tensor]:
    s = m >= cfg.vth_i
    if cfg.hard_reset:
        return s, torch.where(s, cfg.vr_i, m)
    return s, torch.where(s, m - cfg.vth_i, m)


# -- real-valued equations (SpikingJelly's LIFNode) -----------------------------------------------
def charge_real(v: torch.Tensor, i: torch.Tensor, cfg: RevLIFConfig) -> torch.Tensor:
    vr = 0.0 if cfg.v_reset is None else cfg.v_reset
    if cfg.is_if:
        return v + i
    if cfg.decay_input:
        return v + (i - (v - vr)) / cfg.tau
    return v - (v - vr) / cfg.tau + i


def spike_reset_real(m: torch.Tensor, cfg: RevLIFConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """S = H(M - vth) with surrogate gradient; U = hard or soft reset (detach_reset aware)."""
    s = spike(m - cfg.v_threshold, cfg.surrogate_alpha, cfg.surrogate)
    sr = s.detach() if cfg.detach_reset else s
    if cfg.hard_reset:
        return s, m * (1 - sr) + cfg.v_reset * sr
    return s, m - cfg.v_threshold * sr


def reset_grad(m: torch.Tensor, s: torch.Tensor, sg: torch.Tensor,
               cfg: RevLIFConfig) -> torch.Tensor:
    """dU/dM at (M, S) given dS/dM = sg (twin of kernels/neuron.py reset_grad)."""
    keep = 1.0 - s
    if cfg.hard_reset:
        return keep if cfg.detach_reset else keep + (cfg.v_reset - m) * sg
    return torch.ones_like(m) if cfg.detach_reset else 1.0 - cfg.v_threshold * sg
