"""Neuron dynamics shared by the Triton kernels.

Fixed-point functions take int32 values in units of 2**-F (products are formed in int64);
their torch twins are in ``revsnn/reference/neuron.py`` (int64 throughout) and must round
identically: both use only integer operations, and every int32 value here is in range while the
node's state is (kernels/rev_lif.py bounds them).
"""
import triton
import triton.language as tl


@triton.jit
def mul_round(a, c, F: tl.constexpr):
    """(a * c) / 2**F rounded to nearest (ties up): a product with a non-power-of-two constant.
    a, c int32 with |c| <= 2**F: the product is int64 (one widening multiply), the result int32."""
    return ((a.to(tl.int64) * c + (1 << (F - 1))) >> F).to(tl.int32)


@triton.jit
def charge(v, i, c_tau, vr, F: tl.constexpr, DECAY_INPUT: tl.constexpr):
    """M = V + (I - (V - vr))/tau with decay_input, else V - (V - vr)/tau + I (c_tau = 0: IF).
    int32: with |V| < 2**30, |I| <= 2**28 and |vr| <= 2**24, M = V(1 - c) + (I + vr)c (or
    V(1 - c) + vr c + I), c = c_tau/2**F in [0, 1], so |M| < 2**30 + 2**28 + 1: no overflow."""
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
def reset_partials(mf, s, vth, vr, HARD: tl.constexpr, DETACH_RESET: tl.constexpr):
    """(dU/dM with S held fixed, dU/dS) of the real-valued reset at (M, S); detach_reset makes
    dU/dS zero. The total dU/dM is the first plus the second times dS/dM."""
    if HARD:
        du_dm = 1.0 - s
        du_ds = vr - mf
    else:
        du_dm = 1.0
        du_ds = -vth
    if DETACH_RESET:
        du_ds = 0.0
    return du_dm, du_ds


@triton.jit
def charge_dtau(vf, i_f, vr, inv_tau, DECAY_INPUT: tl.constexpr):
    """dM/dtau of the real-valued charge at (V, I)."""
    if DECAY_INPUT:
        g = (vf - vr - i_f) * (inv_tau * inv_tau)
    else:
        g = (vf - vr) * (inv_tau * inv_tau)
    return g


# -- floating point (the standard LIF node; torch twins: charge_real, spike_reset_real) ----------
@triton.jit
def div_rn(a, b, F64: tl.constexpr):
    """a / b correctly rounded, as torch divides on the CPU (a plain fp32 `/` may be approximate
    on the GPU); float64 division is always correctly rounded."""
    if F64:
        r = a / b
    else:
        r = tl.math.div_rn(a, b)
    return r


@triton.jit
def charge_float(v, x, tau, vr, DECAY_INPUT: tl.constexpr, F64: tl.constexpr):
    """H = V + (X - (V - vr))/tau with decay_input, else V - (V - vr)/tau + X, in SpikingJelly's
    operation order (so the rounding, and hence every spike, is the same)."""
    if DECAY_INPUT:
        h = v + div_rn(x - (v - vr), tau, F64)
    else:
        h = v - div_rn(v - vr, tau, F64) + x
    return h


@triton.jit
def fire_reset_float(h, vth, vr, HARD: tl.constexpr):
    """S = H >= vth (0/1 in h's dtype); V = H(1 - S) + vr*S (hard) or H - vth*S (soft). Products
    with S are exact, so contraction into FMAs cannot change V."""
    s = (h >= vth).to(h.dtype)
    if HARD:
        v = h * (1.0 - s) + vr * s
    else:
        v = h - vth * s
    return s, v
