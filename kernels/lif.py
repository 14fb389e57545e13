"""Triton kernels of the standard LIF node, SpikingJelly's ``LIFNode`` (torch twin:
``revsnn/reference/lif.py``).

Each program owns BLOCK neurons of the [T, N] view (N = prod(x.shape[1:])) and walks all T steps
with the membrane potential in registers; pointers advance by N per step, so no index is ever
formed as t*N in 32 bits. The forward keeps only the charged potential H (float32; float64 for
float64 input) for the backward: spikes and reset potentials are recomputed from it.

tau, v_threshold and v_reset each come in one of three modes (constexpr ``*_MODE``): 0, the
scalar argument (float32); 1, element 0 of the pointer; 2, one value per channel,
``ptr[(n // I) % C]``.
"""
import triton
import triton.language as tl

from .neuron import charge_float, fire_reset_float, reset_partials
from .surrogate import surrogate_grad


@triton.jit
def _param(ptr, value, ch, mask, MODE: tl.constexpr):
    if MODE == 0:
        r = value
    elif MODE == 1:
        r = tl.load(ptr)
    else:
        r = tl.load(ptr + ch, mask=mask, other=1.0)
    return r


@triton.jit
def _program_neurons(N, C, I, tau_ptr, tau_s, vth_ptr, vth_s, vr_ptr, vr_s,
                     TAU_MODE: tl.constexpr, VTH_MODE: tl.constexpr, VR_MODE: tl.constexpr,
                     BLOCK: tl.constexpr):
    """This program's neurons n, their mask, and each neuron's tau, v_threshold, v_reset."""
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    ch = (n // I) % C
    return (n, mask, _param(tau_ptr, tau_s, ch, mask, TAU_MODE),
            _param(vth_ptr, vth_s, ch, mask, VTH_MODE), _param(vr_ptr, vr_s, ch, mask, VR_MODE))


@triton.jit
def _initial_v(v0_ptr, n, mask, vr, like, HAS_V0: tl.constexpr):
    """The potential before the first step: v0, or v_reset (0 for soft reset) as SpikingJelly."""
    if HAS_V0:
        v = tl.load(v0_ptr + n, mask=mask, other=0.0)
    else:
        v = tl.zeros(like.shape, dtype=like.dtype) + vr
    return v


@triton.jit
def charge_dtau_h(h, v_prev, vr, inv_tau, DECAY_INPUT: tl.constexpr):
    """dH/dtau along the trajectory, from H and the potential before the step: -(H - V)/tau
    with decay_input (H - V = (X - (V - vr))/tau), else (V - vr)/tau**2."""
    if DECAY_INPUT:
        g = (v_prev - h) * inv_tau
    else:
        g = (v_prev - vr) * (inv_tau * inv_tau)
    return g


@triton.jit
def _store_partial(ptr, g, n, mask, MODE: tl.constexpr):
    """A parameter gradient's partial sums: per program for a one-element parameter (MODE 1),
    per neuron for a per-channel one (a program's neurons may span many channels). Masked
    lanes hold zeros."""
    if MODE == 1:
        tl.store(ptr + tl.program_id(0), tl.sum(g, axis=0))
    else:
        tl.store(ptr + n, g, mask=mask)


@triton.jit
def lif_fwd_kernel(
    x_ptr, v0_ptr, s_ptr, vT_ptr, h_ptr, tau_ptr, vth_ptr, vr_ptr,
    T, N, C, I, tau_s, vth_s, vr_s,
    DECAY_INPUT: tl.constexpr, HARD: tl.constexpr, HAS_V0: tl.constexpr,
    TAU_MODE: tl.constexpr, VTH_MODE: tl.constexpr, VR_MODE: tl.constexpr,
    SAVE_H: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
):
    """Spikes (x's dtype) for all T steps, the final potential and (SAVE_H) every step's H."""
    n, mask, tau, vth, vr = _program_neurons(N, C, I, tau_ptr, tau_s, vth_ptr, vth_s, vr_ptr,
                                             vr_s, TAU_MODE, VTH_MODE, VR_MODE, BLOCK)
    acc = vT_ptr.dtype.element_ty
    v = _initial_v(v0_ptr, n, mask, vr, tl.zeros([BLOCK], dtype=acc), HAS_V0)
    xp = x_ptr + n
    sp = s_ptr + n
    hp = h_ptr + n
    for t in range(T):
        h = charge_float(v, tl.load(xp, mask=mask, other=0).to(acc), tau, vr, DECAY_INPUT, F64)
        s, v = fire_reset_float(h, vth, vr, HARD)
        tl.store(sp, s.to(s_ptr.dtype.element_ty), mask=mask)
        if SAVE_H:
            tl.store(hp, h, mask=mask)
            hp += N
        xp += N
        sp += N
    tl.store(vT_ptr + n, v, mask=mask)


@triton.jit
def lif_bwd_kernel(
    gs_ptr, gv_ptr, h_ptr, v0_ptr, gx_ptr, gv0_ptr, gtau_ptr, gvth_ptr, tau_ptr, vth_ptr, vr_ptr,
    T, N, C, I, last_step, tau_s, vth_s, vr_s, sg_alpha,
    DECAY_INPUT: tl.constexpr, HARD: tl.constexpr, DETACH_RESET: tl.constexpr,
    SURROGATE: tl.constexpr, HAS_V0: tl.constexpr,
    TAU_MODE: tl.constexpr, VTH_MODE: tl.constexpr, VR_MODE: tl.constexpr,
    GRAD_TAU: tl.constexpr, GRAD_VTH: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
):
    """Time-reversed BPTT from the saved H: dL/dx (gs's dtype), dL/dv0 and partial sums of
    dL/dtau (GRAD_TAU) and dL/dv_threshold (GRAD_VTH), summed over T in registers and over the
    program's neurons for a one-element parameter (see _store_partial); the op adds the
    partials up. gv is dL/d(final potential)."""
    n, mask, tau, vth, vr = _program_neurons(N, C, I, tau_ptr, tau_s, vth_ptr, vth_s, vr_ptr,
                                             vr_s, TAU_MODE, VTH_MODE, VR_MODE, BLOCK)
    inv_tau = 1.0 / tau
    lam = 1.0 - inv_tau
    carry = tl.load(gv_ptr + n, mask=mask, other=0.0)  # dL/dV after the current step
    acc = carry.dtype
    g_tau = tl.zeros([BLOCK], dtype=acc)
    g_vth = tl.zeros([BLOCK], dtype=acc)
    if GRAD_TAU:
        v_init = _initial_v(v0_ptr, n, mask, vr, carry, HAS_V0)
    hp = h_ptr + last_step + n
    gp = gs_ptr + last_step + n
    xp = gx_ptr + last_step + n
    h_prev = tl.load(hp, mask=mask, other=0.0)
    for i in range(T):
        t = T - 1 - i
        h = h_prev
        # prefetch H of the step before (the charge of tau's gradient needs its reset potential);
        # t as a block, not a scalar: triton 3.9's interpreter rejects a mask & a Python bool
        h_prev = tl.load(hp - N, mask=mask & (tl.zeros_like(n) + t > 0), other=0.0)
        sg = surrogate_grad(h - vth, sg_alpha, SURROGATE)
        s = (h >= vth).to(acc)
        du_dm, du_ds = reset_partials(h, s, vth, vr, HARD, DETACH_RESET)
        gs = tl.load(gp, mask=mask, other=0).to(acc)
        gz = (gs + carry * du_ds) * sg  # dL/d(H - vth) through the spike
        gh = gz + carry * du_dm
        if DECAY_INPUT:
            gx = gh * inv_tau
        else:
            gx = gh
        tl.store(xp, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        if GRAD_VTH:
            g_vth -= gz
            if not HARD:
                g_vth -= carry * s  # soft reset V = H - vth*S, S held fixed
        if GRAD_TAU:
            _, v_before = fire_reset_float(h_prev, vth, vr, HARD)
            v_before = tl.where(t > 0, v_before, v_init)
            g_tau += gh * charge_dtau_h(h, v_before, vr, inv_tau, DECAY_INPUT)
        carry = gh * lam
        hp -= N
        gp -= N
        xp -= N
    tl.store(gv0_ptr + n, carry, mask=mask)
    if GRAD_TAU:
        _store_partial(gtau_ptr, g_tau, n, mask, TAU_MODE)
    if GRAD_VTH:
        _store_partial(gvth_ptr, g_vth, n, mask, VTH_MODE)
