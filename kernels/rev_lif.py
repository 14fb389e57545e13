"""Triton kernels of the reversible LIF node (torch twin: ``revsnn/reference/rev_lif.py``).

Each program owns BLOCK neuron pairs and walks all T steps with the state in registers.
Tensors are viewed as [T, A, 2, R]: pair p = a*R + r has group 1 at a*2R + r = a*R + p and
group 2 R elements further; a step is N = 2*A*R elements. Pointers advance by N per step, so
no index is ever formed as t*N in 32 bits.

Integer units: potentials 2**-F; y 2**-FY (yq = S*2**FY + ALPHA_SIGN*q); x 2**-(FY + a) (q).
A state word below -2**30 is a poison marker INT32_MIN + code (revsnn/_config.py ERROR_CODES).

Arithmetic is int32 (the twin's is int64: the same values while they are in range): the input
grid bounds |q << X_SHIFT| and |yq << (F - FY)| by 2**28, a healthy potential by V_MAX < 2**30,
and then charge and reset cannot overflow (kernels/neuron.py). Only the coupling sums V1new,
V2new (up to about 2**31.2) and their inverses are formed in int64, where their range check
needs the exact value; a pair that fails any check is flagged, and its later values are not
specified (they may wrap, unlike the twin's).
"""
import triton
import triton.language as tl

from .neuron import charge, charge_dtau, fire_reset, reset_partials
from .surrogate import surrogate_grad

V_MAX = tl.constexpr(1073741823)       # 2**30 - 1
POISON_LIMIT = tl.constexpr(-1073741824)
V_PARAM_MAX = tl.constexpr(64.0)       # revsnn/_config.py
F64_MAX = tl.constexpr(1.7976931348623157e308)
BAD_PARAM = tl.constexpr(16)           # error code: tau or v_threshold out of range
INPUT_LIMIT = tl.constexpr(1 << 28)    # |charge input| <= 2**INPUT_BITS (revsnn/_config.py)


@triton.jit
def _to_acc(v, ACC_F64: tl.constexpr):
    if ACC_F64:
        r = v.to(tl.float64)
    else:
        r = v.to(tl.float32)
    return r


@triton.jit
def _poison(v, code):
    """Final-state word: v, or INT32_MIN + code where code != 0."""
    return tl.where(code != 0, code - 2147483647 - 1, v)


@triton.jit
def _poison_code(w):
    """Error code carried by a state word (0 for a healthy one)."""
    return tl.where(w < POISON_LIMIT, w + 2147483647 + 1, 0)


@triton.jit
def _load_state(v0_ptr, off, mask, F: tl.constexpr, V0_MODE: tl.constexpr):
    """Initial potential (int32) and error code; V0_MODE 0: zeros, 1: int32 state, 2: float."""
    if V0_MODE == 0:
        v = tl.zeros(off.shape, dtype=tl.int32)
        code = tl.zeros(off.shape, dtype=tl.int32)
    elif V0_MODE == 1:
        v = tl.load(v0_ptr + off, mask=mask, other=0)
        code = _poison_code(v)
    else:
        # float64 makes v*2**F + 0.5 exact, so this is round-half-up on every device
        f = tl.load(v0_ptr + off, mask=mask, other=0).to(tl.float64) * (1 << F) + 0.5
        ok = tl.abs(f) <= V_MAX
        v = tl.where(ok, tl.floor(f), 0).to(tl.int32)
        code = tl.where(ok, 0, 4)
    return v, code


@triton.jit
def _program_pairs(P, R, BLOCK: tl.constexpr):
    """This program's pairs p, their mask, in-step index r and the offsets of both neurons."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    r = p % R
    off1 = p - r + p
    return p, p < P, r, off1, off1 + R


@triton.jit
def _per_group(ptr, r, mask, INNER, HALF_C, PER_CH: tl.constexpr):
    """A parameter of each pair's two neurons: ptr[C] indexed by channel (PER_CH), or ptr[0]."""
    if PER_CH:
        ch = r // INNER
        a = tl.load(ptr + ch, mask=mask, other=2)
        b = tl.load(ptr + ch + HALF_C, mask=mask, other=2)
    else:
        # a block-shaped copy: the interpreter cannot combine scalar and block booleans
        a = tl.broadcast_to(tl.load(ptr), r.shape)
        b = a
    return a, b


@triton.jit
def _fixed_params(tau, vth, F: tl.constexpr, DECAY_INPUT: tl.constexpr):
    """c_tau = round(2**F / tau) and vth_i = round(vth * 2**F), int32, half up, in float64 (the
    same on every device), and whether both are in range: tau > 1 (inf, c_tau = 0, is the IF
    neuron, valid without decay_input only) and |vth| <= V_PARAM_MAX. Out of range, tau = 2
    and vth = 0 stand in (the state is flagged)."""
    t = tau.to(tl.float64)
    v = vth.to(tl.float64)
    ok = (t > 1.0) & (tl.abs(v) <= V_PARAM_MAX)
    if DECAY_INPUT:
        ok = ok & (t <= F64_MAX)
    c = tl.floor((1 << F) / tl.where(ok, t, 2.0) + 0.5).to(tl.int32)
    th = tl.floor(tl.where(ok, v, 0.0) * (1 << F) + 0.5).to(tl.int32)
    return c, th, ok


@triton.jit
def _node_params(tau_ptr, vth_ptr, r, mask, INNER, HALF_C, F: tl.constexpr,
                 DECAY_INPUT: tl.constexpr, TAU_PER_CH: tl.constexpr,
                 VTH_PER_CH: tl.constexpr):
    """Both neurons' fixed-point c_tau and vth_i, the error code of their parameters, and the
    parameters as loaded (tau1, tau2, vth1, vth2: the backward's real-valued gradient)."""
    tau1, tau2 = _per_group(tau_ptr, r, mask, INNER, HALF_C, TAU_PER_CH)
    vth1, vth2 = _per_group(vth_ptr, r, mask, INNER, HALF_C, VTH_PER_CH)
    c1, th1, ok1 = _fixed_params(tau1, vth1, F, DECAY_INPUT)
    c2, th2, ok2 = _fixed_params(tau2, vth2, F, DECAY_INPUT)
    code = tl.where(ok1 & ok2, 0, BAD_PARAM)
    return c1, c2, th1, th2, code, tau1, tau2, vth1, vth2


@triton.jit
def rev_lif_fwd_kernel(
    x_ptr, v0_ptr, y_ptr, vT_ptr, stash_ptr, m_ptr, tau_ptr, vth_ptr,
    T, P, R, N, INNER, HALF_C,
    vr, x_scale, qmax,
    F: tl.constexpr, FY: tl.constexpr, X_SHIFT: tl.constexpr, ALPHA_SIGN: tl.constexpr,
    K1: tl.constexpr, K2: tl.constexpr, SPW: tl.constexpr,
    DECAY_INPUT: tl.constexpr, HARD: tl.constexpr, TAU_PER_CH: tl.constexpr,
    VTH_PER_CH: tl.constexpr, V0_MODE: tl.constexpr, WRITE_STASH: tl.constexpr,
    SAVE_M: tl.constexpr, ACC_F64: tl.constexpr, BLOCK: tl.constexpr,
):
    """y, final state and (WRITE_STASH) the shifted-out bits for all T steps; SAVE_M also
    stores the pre-reset potentials M1, M2 (int32) for the recompute-style backward.
    tau_ptr, vth_ptr: float tau and v_threshold, per channel ([C]) or scalar ([1])."""
    p, mask, r, off1, off2 = _program_pairs(P, R, BLOCK)
    c1, c2, th1, th2, code, _, _, _, _ = _node_params(
        tau_ptr, vth_ptr, r, mask, INNER, HALF_C, F, DECAY_INPUT, TAU_PER_CH, VTH_PER_CH)
    v1, e1 = _load_state(v0_ptr, off1, mask, F, V0_MODE)
    v2, e2 = _load_state(v0_ptr, off2, mask, F, V0_MODE)
    code = code | e1 | e2
    one_y = 1 << FY
    word = tl.zeros([BLOCK], dtype=tl.int32)
    sp = stash_ptr + p
    xp = x_ptr + off1
    yp = y_ptr + off1
    mp = m_ptr + off1
    for t in range(T):
        # x*x_scale is exact (a power of two), so only the + 0.5 rounds, identically everywhere
        qf1 = tl.floor(_to_acc(tl.load(xp, mask=mask, other=0), ACC_F64) * x_scale + 0.5)
        qf2 = tl.floor(_to_acc(tl.load(xp + R, mask=mask, other=0), ACC_F64) * x_scale + 0.5)
        ok = (tl.abs(qf1) <= qmax) & (tl.abs(qf2) <= qmax)
        code = code | tl.where(ok, 0, 1)
        qf1 = tl.where(ok, qf1, 0.0)
        qf2 = tl.where(ok, qf2, 0.0)
        q1 = qf1.to(tl.int32)
        q2 = qf2.to(tl.int32)

        m1 = charge(v1, q1 << X_SHIFT, c1, vr, F, DECAY_INPUT)
        s1, u1 = fire_reset(m1, th1, vr, HARD)
        yq1 = s1.to(tl.int32) * one_y + ALPHA_SIGN * q2
        v1n = u1.to(tl.int64) - (v2 >> K1)
        m2 = charge(v1n.to(tl.int32), yq1 << (F - FY), c2, vr, F, DECAY_INPUT)
        s2, u2 = fire_reset(m2, th2, vr, HARD)
        v2n = u2.to(tl.int64) + (v1 >> K2)
        big = ((tl.abs(m1) > V_MAX) | (tl.abs(m2) > V_MAX)
               | (tl.abs(v1n) > V_MAX) | (tl.abs(v2n) > V_MAX))
        code = code | tl.where(big, 2, 0)

        ty = y_ptr.dtype.element_ty
        # y = S + alpha*x formed in floating point (the FP32 pipe is idle, the integer one is
        # not): exact, as y lies on the output grid
        y1 = _to_acc(s1, ACC_F64) + qf2 * (ALPHA_SIGN / one_y)
        y2 = _to_acc(s2, ACC_F64) + qf1 * (ALPHA_SIGN / one_y)
        tl.store(yp, y1.to(ty), mask=mask)
        tl.store(yp + R, y2.to(ty), mask=mask)
        if SAVE_M:
            tl.store(mp, m1, mask=mask)
            tl.store(mp + R, m2, mask=mask)
            mp += N
        if WRITE_STASH:
            j = t % SPW
            lo = (v2 & ((1 << K1) - 1)) | ((v1 & ((1 << K2) - 1)) << K1)
            word = word | (lo << (j * (K1 + K2)))
            if (j == SPW - 1) | (t == T - 1):
                tl.store(sp, word, mask=mask)
                word = tl.zeros([BLOCK], dtype=tl.int32)
                sp += P
        v1 = v1n.to(tl.int32)
        v2 = v2n.to(tl.int32)
        xp += N
        yp += N
    tl.store(vT_ptr + off1, _poison(v1, code), mask=mask)
    tl.store(vT_ptr + off2, _poison(v2, code), mask=mask)


@triton.jit
def rev_lif_bwd_kernel(
    y_ptr, gy_ptr, vT_ptr, stash_ptr, m_ptr, out_ptr, v0_ptr, pg_ptr, tau_ptr, vth_ptr,
    T, P, R, N, INNER, HALF_C, last_step, last_word,
    vr, x_unit, vr_f, alpha, beta1, beta2, sg_alpha,
    F: tl.constexpr, FY: tl.constexpr, X_SHIFT: tl.constexpr, ALPHA_SIGN: tl.constexpr,
    K1: tl.constexpr, K2: tl.constexpr, SPW: tl.constexpr,
    DECAY_INPUT: tl.constexpr, HARD: tl.constexpr, TAU_PER_CH: tl.constexpr,
    VTH_PER_CH: tl.constexpr, MODE: tl.constexpr,
    SURROGATE: tl.constexpr, DETACH_RESET: tl.constexpr, WRITE_V0: tl.constexpr,
    PARAM_GRAD: tl.constexpr, ACC_F64: tl.constexpr, BLOCK: tl.constexpr,
):
    """Time-reversed pass. MODE 0 (inverse): rebuild x and the initial int32 state from y, the
    final state and the stash. MODE 1 (streamlined backward): rebuild the same trajectory and
    accumulate dL/dx into out and (WRITE_V0) dL/dv0 into v0, in one pass; PARAM_GRAD also
    writes each neuron's dL/dtau and dL/dv_threshold into pg [2, N]. MODE 2: the gradient
    (x and v0 only) from saved M1, M2 (m_ptr) instead of a reconstruction."""
    p, mask, r, off1, off2 = _program_pairs(P, R, BLOCK)
    c1, c2, th1, th2, code, tau1, tau2, vf1, vf2 = _node_params(
        tau_ptr, vth_ptr, r, mask, INNER, HALF_C, F, DECAY_INPUT, TAU_PER_CH, VTH_PER_CH)
    one_y = 1 << FY
    # largest |yq| and |q| whose charge input (<< F - FY, << X_SHIFT) stays within 2**28
    Y_LIMIT: tl.constexpr = INPUT_LIMIT >> (F - FY)
    Q_LIMIT: tl.constexpr = INPUT_LIMIT >> X_SHIFT
    w1 = tl.load(vT_ptr + off1, mask=mask, other=0)
    w2 = tl.load(vT_ptr + off2, mask=mask, other=0)
    code = code | _poison_code(w1) | _poison_code(w2)
    v1n = w1
    v2n = w2
    g1n = _to_acc(tl.zeros([BLOCK], dtype=tl.float32), ACC_F64)
    g2n = _to_acc(tl.zeros([BLOCK], dtype=tl.float32), ACC_F64)
    if MODE != 0:
        # the real-valued 1/tau and v_threshold of the gradient, rounded to float32 first
        it1 = _to_acc((1.0 / tau1.to(tl.float64)).to(tl.float32), ACC_F64)
        it2 = _to_acc((1.0 / tau2.to(tl.float64)).to(tl.float32), ACC_F64)
        vf1 = _to_acc(vf1.to(tl.float32), ACC_F64)
        vf2 = _to_acc(vf2.to(tl.float32), ACC_F64)
        if DECAY_INPUT:
            kin1 = it1
            kin2 = it2
        else:
            kin1 = 1.0
            kin2 = 1.0
        dtau1 = g1n * 0
        dtau2 = g1n * 0
        dvth1 = g1n * 0
        dvth2 = g1n * 0
    yp = y_ptr + last_step + off1
    gp = gy_ptr + last_step + off1
    op = out_ptr + last_step + off1
    mp = m_ptr + last_step + off1
    sp = stash_ptr + last_word + p
    for i in range(T):
        t = T - 1 - i
        if MODE == 2:
            m1 = tl.load(mp, mask=mask, other=0)
            m2 = tl.load(mp + R, mask=mask, other=0)
            s1 = m1 >= th1
            s2 = m2 >= th2
            mp -= N
        else:
            yf1 = _to_acc(tl.load(yp, mask=mask, other=0), ACC_F64) * one_y
            yf2 = _to_acc(tl.load(yp + R, mask=mask, other=0), ACC_F64) * one_y
            if MODE == 0:
                # y (and below, the rebuilt x and potentials) as a forward can produce them;
                # beyond, the int32 arithmetic would not be exact: flagged, and zeroed
                on_grid = (yf1 == tl.floor(yf1)) & (yf2 == tl.floor(yf2))
                on_grid = on_grid & (tl.abs(yf1) <= Y_LIMIT) & (tl.abs(yf2) <= Y_LIMIT)
                code = code | tl.where(on_grid, 0, 8)
                yf1 = tl.where(on_grid, yf1, 0)
                yf2 = tl.where(on_grid, yf2, 0)
            yq1 = yf1.to(tl.int32)
            yq2 = yf2.to(tl.int32)
            if SPW > 0:
                j = t % SPW
                lo = tl.load(sp, mask=mask, other=0) >> (j * (K1 + K2))
                lo1 = lo & ((1 << K1) - 1)
                lo2 = (lo >> K1) & ((1 << K2) - 1)
                if j == 0:
                    sp -= P
            else:
                lo1 = 0
                lo2 = 0
            m2 = charge(v1n, yq1 << (F - FY), c2, vr, F, DECAY_INPUT)
            s2, u2 = fire_reset(m2, th2, vr, HARD)
            q1 = ALPHA_SIGN * (yq2 - s2.to(tl.int32) * one_y)
            v1w = ((v2n.to(tl.int64) - u2) << K2) + lo2
            if MODE == 0:
                bad = (tl.abs(q1) > Q_LIMIT) | (tl.abs(v1w) > V_MAX) | (tl.abs(m2) > V_MAX)
                code = code | tl.where(bad, 8, 0)
                q1 = tl.where(bad, 0, q1)
                v1w = tl.where(bad, 0, v1w)
            v1 = v1w.to(tl.int32)
            m1 = charge(v1, q1 << X_SHIFT, c1, vr, F, DECAY_INPUT)
            s1, u1 = fire_reset(m1, th1, vr, HARD)
            q2 = ALPHA_SIGN * (yq1 - s1.to(tl.int32) * one_y)
            v2w = ((u1.to(tl.int64) - v1n) << K1) + lo1
            if MODE == 0:
                bad = (tl.abs(q2) > Q_LIMIT) | (tl.abs(v2w) > V_MAX) | (tl.abs(m1) > V_MAX)
                code = code | tl.where(bad, 8, 0)
            v2 = v2w.to(tl.int32)
            yp -= N
        if MODE == 0:
            tx = out_ptr.dtype.element_ty
            tl.store(op, (_to_acc(q1, ACC_F64) * x_unit).to(tx), mask=mask)
            tl.store(op + R, (_to_acc(q2, ACC_F64) * x_unit).to(tx), mask=mask)
        else:
            gy1 = _to_acc(tl.load(gp, mask=mask, other=0), ACC_F64)
            gy2 = _to_acc(tl.load(gp + R, mask=mask, other=0), ACC_F64)
            mf1 = _to_acc(m1, ACC_F64) * (1.0 / (1 << F))
            mf2 = _to_acc(m2, ACC_F64) * (1.0 / (1 << F))
            sf1 = _to_acc(s1, ACC_F64)
            sf2 = _to_acc(s2, ACC_F64)
            sg1 = surrogate_grad(mf1 - vf1, sg_alpha, SURROGATE)
            sg2 = surrogate_grad(mf2 - vf2, sg_alpha, SURROGATE)
            dm1, ds1 = reset_partials(mf1, sf1, vf1, vr_f, HARD, DETACH_RESET)
            dm2, ds2 = reset_partials(mf2, sf2, vf2, vr_f, HARD, DETACH_RESET)
            # group 2's neuron: M2 = charge(V1new, Y1), its U2 feeds V2new
            gs2 = gy2 + g2n * ds2
            gm2 = gs2 * sg2 + g2n * dm2
            g1t = g1n + (1.0 - it2) * gm2
            gy1t = gy1 + kin2 * gm2
            # group 1's neuron: M1 = charge(V1, X1), its U1 feeds V1new
            gs1 = gy1t + g1t * ds1
            gm1 = gs1 * sg1 + g1t * dm1
            tx = out_ptr.dtype.element_ty
            tl.store(op, (alpha * gy2 + kin1 * gm1).to(tx), mask=mask)
            tl.store(op + R, (alpha * gy1t).to(tx), mask=mask)
            if PARAM_GRAD:
                xf1 = _to_acc(q1, ACC_F64) * x_unit
                yfl1 = _to_acc(yq1, ACC_F64) * (1.0 / one_y)
                vfl1 = _to_acc(v1, ACC_F64) * (1.0 / (1 << F))
                vfl1n = _to_acc(v1n, ACC_F64) * (1.0 / (1 << F))
                dtau1 += gm1 * charge_dtau(vfl1, xf1, vr_f, it1, DECAY_INPUT)
                dtau2 += gm2 * charge_dtau(vfl1n, yfl1, vr_f, it2, DECAY_INPUT)
                dvth1 -= gs1 * sg1
                dvth2 -= gs2 * sg2
                if not HARD:  # U = M - vth*S
                    dvth1 -= g1t * sf1
                    dvth2 -= g2n * sf2
            g1n = beta2 * g2n + (1.0 - it1) * gm1
            g2n = beta1 * g1t
            gp -= N
        if MODE != 2:
            v1n = v1
            v2n = v2
        op -= N
    if WRITE_V0:
        if MODE == 0:
            tl.store(v0_ptr + off1, _poison(v1n, code), mask=mask)
            tl.store(v0_ptr + off2, _poison(v2n, code), mask=mask)
        else:
            tv = v0_ptr.dtype.element_ty
            tl.store(v0_ptr + off1, g1n.to(tv), mask=mask)
            tl.store(v0_ptr + off2, g2n.to(tv), mask=mask)
    if PARAM_GRAD:
        tp = pg_ptr.dtype.element_ty
        tl.store(pg_ptr + off1, dtau1.to(tp), mask=mask)
        tl.store(pg_ptr + off2, dtau2.to(tp), mask=mask)
        tl.store(pg_ptr + N + off1, dvth1.to(tp), mask=mask)
        tl.store(pg_ptr + N + off2, dvth2.to(tp), mask=mask)
