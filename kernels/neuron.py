"""Neuron dynamics shared by the Triton kernels.

Fixed-point functions take int64 values in units of 2**-F; their torch twins are in
``revsnn/reference/neuron.py`` and must round identically (both use only integer operations).
"""
import triton
import triton.language as tl


@triton.jit
def mul_round(a, c, F: tl.constexpr):
    """(a * c) / 2**F rounded to nearest (ties up): a product with a non-power-of-two constant."""
    return (a * c + (1 << (F - 1))) >> F


@triton.jit
def charge(v, i, c_tau, vr, F: tl.constexpr, DECAY_INPUT: tl.constexpr):
    """M = V + (I - (V - vr))/tau with decay_input, else V - (V - vr)/tau + I (c_tau = 0: IF)."""
    if DECAY_INPUT:
        m = v + mul_round(i - v + vr, c_tau, F)
    else:
        m = v - mul_round(v - vr, c_tau, F) + i
    return m


@triton.jit
def fire_reset(m, vth, vr, HARD: tl.constexpr):
    """S = H(M - vth); U = vr where S (hard reset) or M - vth*S (soft reset)."""
    s = m >= vth
    if HARD:
        u = tl.where(s, vr, m)
    else:
        u = tl.where(s, m - vth, m)
    return s, u


@triton.jit
def reset_grad(mf, s, sg, vth, vr, HARD: tl.constexpr, DETACH_RESET: tl.constexpr):
    """dU/dM of the real-valued reset at (M, S), with dS/dM = sg; detach_reset drops the S path."""
    keep = 1.0 - s
    if HARD:
        if DETACH_RESET:
            g = keep
        else:
            g = keep + (vr - mf) * sg
    else:
        if DETACH_RESET:
            g = 1.0
        else:
            g = 1.0 - vth * sg
    return g
