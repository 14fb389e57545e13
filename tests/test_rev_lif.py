"""Reversible LIF node: exactness, kernel == twin, gradients, flags, memory, API."""
import contextlib
import copy
import gc
import math
import weakref

import pytest
import torch

import revsnn
from revsnn._config import F_BITS, POISON_LIMIT, V_MAX, RevLIFConfig, grid_for
from revsnn.functional import lif, rev_lif, rev_lif_inverse
from revsnn.reference import rev_lif_float64, rev_lif_int
from revsnn._readback import Readback
from revsnn.ops import rev_lif as rev_lif_op
from revsnn.ops._dispatch import direct
from revsnn.state import RevLIFState

from .conftest import (DEVICE, SeenOps, assert_close_rel, assert_same_through_dispatcher,
                       backends, dyadic)

NODE_OPTIONS = {
    "hard": {},
    "soft": dict(v_reset=None),
    "no_decay": dict(decay_input=False, tau=4.0),
    "if": dict(tau=math.inf, v_reset=None),
    "vr_vth": dict(v_reset=-0.25, v_threshold=0.75, tau=3.0),
    "alpha_beta": dict(alpha=-2.0, beta1=-0.25, beta2=0.125),
}
BETAS = {"half": dict(beta1=-0.5, beta2=0.5), "one": dict(beta1=-1.0, beta2=1.0)}


def make_x(shape, scale=1.5, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * scale + 0.3).to(dtype).to(DEVICE)
    return x.requires_grad_(requires_grad)


def on_grid(x):
    """x rounded to the float32 input grid (alpha = 1) the way the node does: half up."""
    return torch.floor(x * 2 ** 16 + 0.5) / 2 ** 16


# -- exactness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 4, 64, 256])
@pytest.mark.parametrize("option", ["hard", "soft", "no_decay", "if"])
@pytest.mark.parametrize("beta", ["half", "one"])
def test_round_trip_bit_exact(backend, T, option, beta):
    kw = dict(NODE_OPTIONS[option], **BETAS[beta], backend=backend)
    shape = (T, 2, 6, 5) if T >= 64 else (T, 3, 6, 7, 9)
    x = make_x(shape, seed=T)
    v0 = make_x(shape[1:], scale=0.5, seed=T + 1)
    y, st = rev_lif(x, v0, keep_stash=True, **kw)
    assert st.error() is None
    xr, s0 = rev_lif_inverse(y, st, **kw)
    # the input comes back exactly as the node used it (on its grid), and so does the state
    y2, st2 = rev_lif(xr, s0, keep_stash=True, **kw)
    assert torch.equal(y2, y) and torch.equal(st2.v_fixed, st.v_fixed)
    assert torch.equal(st2.stash, st.stash)
    assert torch.equal(xr, on_grid(x))
    assert torch.equal(s0.v_fixed, torch.floor(v0.double() * 2 ** 18 + 0.5).int())


@pytest.mark.parametrize("dtype,alpha", [(torch.float16, 1.0), (torch.bfloat16, 0.5),
                                         (torch.float64, 4.0), (torch.float32, 0.25),
                                         (torch.float16, -4.0)])
def test_round_trip_dtypes(backend, dtype, alpha):
    kw = dict(alpha=alpha, backend=backend)
    grid = grid_for(dtype, RevLIFConfig.build(alpha=alpha))
    x = make_x((32, 2, 10, 3), dtype=dtype, seed=3).clamp(-grid.x_max, grid.x_max)
    y, st = rev_lif(x, keep_stash=True, **kw)
    assert y.dtype == dtype and st.error() is None
    xr, s0 = rev_lif_inverse(y, st, **kw)
    assert xr.dtype == dtype
    y2, st2 = rev_lif(xr, s0, keep_stash=True, **kw)
    assert torch.equal(y2, y) and torch.equal(st2.v_fixed, st.v_fixed)
    assert torch.equal(s0.v_fixed, torch.zeros_like(s0.v_fixed))
    # y - S is alpha * x on the grid: rebuilding x from y needs no rounding at all
    assert (xr - x).abs().max().item() <= 2.0 ** -grid.x_frac


@pytest.mark.parametrize("option", list(NODE_OPTIONS))
@pytest.mark.parametrize("shape", [(16, 3, 6, 7, 9), (5, 2, 4), (9, 1, 10, 33)])
def test_kernel_matches_integer_twin(backend, option, shape):
    """Forward values, final state and stash are bit-identical to the plain-torch twin."""
    kw = NODE_OPTIONS[option]
    x = make_x(shape, seed=len(shape))
    y, st = rev_lif(x, keep_stash=True, backend=backend, **kw)
    yr, sr = rev_lif_int(x.cpu(), **kw)
    assert torch.equal(y.cpu(), yr)
    assert torch.equal(st.v_fixed.cpu(), sr.v_fixed)
    assert torch.equal(st.stash.cpu(), sr.stash)


def test_state_carried_across_calls_equals_one_call(backend):
    x = make_x((12, 2, 6, 5), seed=7)
    y, st = rev_lif(x, keep_stash=True, backend=backend)
    ya, sa = rev_lif(x[:5], keep_stash=True, backend=backend)
    yb, sb = rev_lif(x[5:], sa, keep_stash=True, backend=backend)
    assert torch.equal(torch.cat([ya, yb]), y) and torch.equal(sb.v_fixed, st.v_fixed)
    # and the chain runs backwards too
    xb, sa2 = rev_lif_inverse(yb, sb, backend=backend)
    assert torch.equal(sa2.v_fixed, sa.v_fixed)


def test_spike_flip_rate_vs_float64():
    """Fixed point follows the real-valued float64 node closely: few spikes differ."""
    T = 16
    x = on_grid(make_x((T, 64, 64, 8), seed=11))
    y, _ = rev_lif(x, backend="torch")
    y64, _ = rev_lif_float64(x)
    xs = x.double().reshape(T, 64, 2, 32 * 8)
    spikes = y.double().reshape(T, 64, 2, -1) - xs.flip(2)
    spikes64 = y64.reshape(T, 64, 2, -1) - xs.flip(2)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    rate = (spikes != spikes64).double().mean().item()
    assert spikes.mean().item() > 0.05  # the comparison means something only if neurons fire
    assert rate < 5e-5, rate  # measured: about 1e-6 (README, "Exactness")


# -- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "fast_sigmoid"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("backward", ["fused", "recompute"])
@pytest.mark.parametrize("shape", [(7, 3, 6, 7, 9), (64, 2, 4, 5)])
def test_gradients_match_straight_through_bptt(backend, surrogate, detach_reset, backward,
                                               shape):
    kw = dict(surrogate=surrogate, detach_reset=detach_reset)
    x = make_x(shape, seed=shape[0], requires_grad=True)
    v0 = make_x(shape[1:], scale=0.5, seed=1, requires_grad=True)
    gy = make_x(shape, scale=1.0, seed=2)
    y, _ = rev_lif(x, v0, backward=backward, backend=backend, **kw)
    gx, gv = torch.autograd.grad(y, (x, v0), gy)
    yr, _ = rev_lif_int(x, v0, **kw)
    gxr, gvr = torch.autograd.grad(yr, (x, v0), gy)
    assert torch.equal(y, yr)
    assert_close_rel(gx, gxr)
    assert_close_rel(gv, gvr)


@pytest.mark.parametrize("option", ["soft", "no_decay", "if", "vr_vth", "alpha_beta"])
def test_gradients_node_options(backend, option):
    kw = NODE_OPTIONS[option]
    x = make_x((16, 2, 6, 5, 3), seed=5, requires_grad=True)
    gy = make_x(x.shape, scale=1.0, seed=6)
    y, _ = rev_lif(x, backend=backend, **kw)
    (gx,) = torch.autograd.grad(y, x, gy)
    yr, _ = rev_lif_int(x, **kw)
    (gxr,) = torch.autograd.grad(yr, x, gy)
    assert_close_rel(gx, gxr)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_gradients_other_dtypes(backend, dtype):
    x = make_x((8, 2, 6, 5), dtype=dtype, seed=9, requires_grad=True)
    gy = make_x(x.shape, scale=1.0, dtype=dtype, seed=10)
    y, _ = rev_lif(x, backend=backend)
    (gx,) = torch.autograd.grad(y, x, gy)
    yr, _ = rev_lif_int(x)
    (gxr,) = torch.autograd.grad(yr, x, gy)
    assert gx.dtype == dtype
    assert_close_rel(gx, gxr, rel={torch.float64: 1e-6, torch.float16: 2e-3,
                                   torch.bfloat16: 1e-2}[dtype])


def test_gradient_is_not_trivially_zero(backend):
    """Guards the gradient tests: the surrogate path carries real signal here."""
    x = make_x((8, 2, 6, 5), seed=3, requires_grad=True)
    y, _ = rev_lif(x, backend=backend, alpha=0.25)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    yr, _ = rev_lif_int(x, alpha=0.25)
    (gxr,) = torch.autograd.grad(yr.square().sum(), x)
    no_surrogate = 2 * 0.25 * (y - torch.floor(y)).detach()  # alpha * dL/dy ignoring spikes
    assert (gxr - no_surrogate.flip(2)).abs().max() > 0.1
    assert_close_rel(gx, gxr)


# -- error flags ---------------------------------------------------------------------------------
# the backward runs on the flagged state before its check raises (its numbers are discarded)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("case", ["nan", "inf", "range", "overflow", "state_nan"])
def test_error_flag_fires(backend, case):
    x = make_x((32, 2, 4, 3), seed=1, requires_grad=True)
    kw, v0 = dict(backend=backend), None
    with torch.no_grad():
        if case == "nan":
            x[3, 1, 2, 0] = float("nan")
        elif case == "inf":
            x[0, 0, 0, 0] = -float("inf")
        elif case == "range":
            x[5, 1, 1, 1] = 300.0  # float32 with alpha = 1 accepts |x| <= 255
        elif case == "overflow":
            x.fill_(250.0)  # on top of v0 = 4000, this leaves the +-4096 fixed-point range
            v0 = torch.full(x.shape[1:], 4000.0, device=DEVICE)
            kw.update(tau=math.inf, v_reset=None)
        else:
            v0 = torch.zeros(x.shape[1:], device=DEVICE)
            v0[1, 3, 2] = float("nan")
    y, st = rev_lif(x, v0, **kw)
    assert st.error() is not None
    assert torch.isnan(st.v).any()
    with pytest.raises(ValueError, match="flagged"):
        y.sum().backward()
    with pytest.raises(ValueError, match="flagged"):
        rev_lif_inverse(y.detach(), st, **kw)
    with pytest.raises(ValueError, match="flagged"):
        rev_lif(x.detach(), v0, validate=True, **kw)
    # the flag travels with the state into the next call
    _, st2 = rev_lif(x.detach()[:2].nan_to_num(0).clamp(-1, 1), st, **kw)
    assert st2.error() is not None


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("path", ["direct", "dispatcher"])
def test_flag_raises_at_backward_on_either_path(backend, path, monkeypatch):
    """Eager calls read the state's smallest word, taken in the forward, after the backward's
    launch; through the dispatcher (here: under a dispatch mode) the backward op checks the
    state itself. Both raise."""
    x = make_x((8, 2, 4, 3), seed=1, requires_grad=True)
    with torch.no_grad():
        x[3, 1, 2, 0] = float("nan")
    direct_calls = []  # check_state of each backward op run without the dispatcher
    impl = rev_lif_op.rev_lif_bwd.impl

    def spy(*args):
        direct_calls.append(args[17])
        return impl(*args)
    monkeypatch.setattr(rev_lif_op.rev_lif_bwd, "impl", spy)
    with SeenOps() if path == "dispatcher" else contextlib.nullcontext():
        y, _ = rev_lif(x, backend=backend)
        with pytest.raises(ValueError, match="flagged"):
            y.sum().backward()
    assert direct_calls == ([False] if path == "direct" else [])


def test_readback_returns_the_value_when_made():
    """The backward checks read values the forward took (on CUDA through pinned memory behind
    an event): a later change to the tensor must not show."""
    t = torch.tensor(-7, dtype=torch.int32, device=DEVICE)
    r = Readback(t)
    t.fill_(3)  # on CUDA: queued after the copy, on the same stream
    assert r.value() == -7 and r.value() == -7  # read twice (a retained graph's backward)
    assert math.isnan(Readback(torch.tensor(float("nan"), device=DEVICE)).value())


def test_in_range_extremes_pass(backend):
    x = torch.full((4, 1, 2), 255.0, device=DEVICE)
    x[1] = -255.0
    y, st = rev_lif(x, keep_stash=True, validate=True, backend=backend)
    xr, _ = rev_lif_inverse(y, st, backend=backend)
    assert torch.equal(xr, x)


def test_inverse_rejects_y_off_grid(backend):
    x = make_x((4, 2, 6), seed=2)
    y, st = rev_lif(x, keep_stash=True, backend=backend)
    with pytest.raises(ValueError, match="off the output grid"):
        rev_lif_inverse(y + 2.0 ** -20, st, backend=backend)


def test_inverse_flags_a_state_no_forward_produced(backend):
    """A final state that no forward produced (here: potentials near the range limit with
    this y) makes the reconstruction leave the fixed-point range: flagged (code 8), in the
    kernels' int32 arithmetic as in the twin's int64 one, never returned as an x."""
    x = make_x((12, 2, 6, 5), seed=11)
    y, st = rev_lif(x, keep_stash=True, backend=backend)
    forged = RevLIFState(torch.full_like(st.v_fixed, 2 ** 30 - 5), st.stash)
    with pytest.raises(ValueError, match="not produced by rev_lif"):
        rev_lif_inverse(y, forged, backend=backend)
    _, v0 = rev_lif_inverse(y, forged, validate=False, backend=backend)
    _, v0_twin = rev_lif_inverse(y.cpu(), RevLIFState(forged.v_fixed.cpu(), st.stash.cpu()),
                                 validate=False, backend="torch")
    assert (v0.v_fixed < POISON_LIMIT).all()
    assert torch.equal(v0.v_fixed.cpu(), v0_twin.v_fixed)


# -- kernels, memory, autograd plumbing -----------------------------------------------------------
def test_one_launch_per_pass(count_launches):
    if DEVICE == "cpu" and not revsnn.ops._dispatch.interpreting():
        pytest.skip("Triton cannot run here: no GPU and TRITON_INTERPRET unset")
    counts = count_launches("rev_lif")
    x = make_x((6, 3, 6, 7, 9), seed=0, requires_grad=True)
    y, st = rev_lif(x, backend="triton")
    assert counts == {"rev_lif_fwd_kernel": 1, "rev_lif_bwd_kernel": 0}
    y.sum().backward()
    assert counts == {"rev_lif_fwd_kernel": 1, "rev_lif_bwd_kernel": 1}
    rev_lif_inverse(y.detach(), st, backend="triton")
    assert counts == {"rev_lif_fwd_kernel": 1, "rev_lif_bwd_kernel": 2}
    y, _ = rev_lif(x, backend="triton", backward="recompute")
    y.sum().backward()  # inverse, forward saving M, backward from M
    assert counts == {"rev_lif_fwd_kernel": 3, "rev_lif_bwd_kernel": 4}


def saved_bytes(fn):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("T", [4, 16, 32, 64])
@pytest.mark.parametrize("beta", ["half", "one"])
def test_kept_for_backward(backend, T, beta):
    B, C, H = 2, 8, 5
    x = make_x((T, B, C, H), seed=T, requires_grad=True)
    (y, st), saved = saved_bytes(lambda: rev_lif(x, backend=backend, **BETAS[beta]))
    activations = {y.data_ptr(), st.v_fixed.data_ptr(), st.stash.data_ptr()} - {0}
    # besides y, the state and the stash only tau and v_threshold: [1] each (or [C] per channel)
    params = [t for t in saved if t.numel() and t.data_ptr() not in activations]
    assert len(params) == 2 and all(t.numel() == 1 for t in params)
    assert {t.data_ptr() for t in saved if t.numel()} - {t.data_ptr() for t in params} \
        == activations
    neurons = B * C * H
    per_neuron = (st.v_fixed.nbytes + st.stash.nbytes) / neurons
    if beta == "one":
        assert per_neuron == 4
    else:
        assert per_neuron == 4 + 2 * math.ceil(T / 16)
        if T <= 32:
            assert per_neuron <= 8


def test_forward_keeps_no_input_alive(backend):
    x0 = make_x((8, 2, 6, 5), requires_grad=True)
    x = x0 * 2  # a non-leaf: only the node could keep it alive
    ref = weakref.ref(x)
    y, st = rev_lif(x, backend=backend)
    del x
    gc.collect()
    assert ref() is None
    y.sum().backward()
    assert x0.grad is not None


def test_stash_only_when_needed(backend):
    x = make_x((20, 2, 6))
    _, st = rev_lif(x, backend=backend)
    assert st.stash.shape == (0, 6)
    _, st = rev_lif(x.requires_grad_(), backend=backend)
    assert st.stash.shape == (2, 6)
    with torch.no_grad():
        _, st = rev_lif(x, backend=backend)
    assert st.stash.shape == (0, 6)
    with pytest.raises(ValueError, match="no stash"):
        rev_lif_inverse(torch.zeros(20, 2, 6, device=DEVICE), st, backend=backend)
    _, st = rev_lif(x.detach(), backend=backend, beta1=-1.0, beta2=1.0)
    assert st.stash.shape == (0, 6)  # |beta| = 1 shifts nothing out: inverse needs no stash
    rev_lif_inverse(torch.zeros(20, 2, 6, device=DEVICE), st, backend=backend,
                    beta1=-1.0, beta2=1.0)


# -- layouts -------------------------------------------------------------------------------------
def test_noncontiguous_and_dim(backend):
    base = make_x((6, 3, 5, 8), seed=4)
    y, st = rev_lif(base, dim=-1, backend=backend)
    y_moved, st_moved = rev_lif(base.movedim(-1, 2).contiguous(), backend=backend)
    assert torch.equal(y, y_moved.movedim(2, -1))
    assert torch.equal(st.v, st_moved.v.movedim(1, -1))
    xt = base.transpose(1, 2)  # non-contiguous view, split dim is now 3 channels... use dim 3
    yt, _ = rev_lif(xt, dim=3, backend=backend)
    assert torch.equal(yt, rev_lif(xt.contiguous(), dim=3, backend=backend)[0])
    xc = make_x((2, 4, 6, 5, 3), seed=5).to(memory_format=torch.channels_last_3d)
    yc, _ = rev_lif(xc, backend=backend)
    assert torch.equal(yc, rev_lif(xc.contiguous(), backend=backend)[0])


def test_strided_and_expanded_states_read_as_their_values(backend):
    """The kernels read dense memory: a state that is a strided or expanded view (of floats, of
    int32 words, or a strided stash) must give what its contiguous copy gives."""
    x = make_x((5, 3, 6), seed=31, requires_grad=True)
    row = torch.tensor([[0.9, 0.1, 0.5, -0.3, 0.7, 0.2]], device=DEVICE)
    wide = make_x((3, 12), seed=32)
    for v0 in (row.expand(3, 6), wide[:, ::2], wide.t().contiguous().t()[:, :6]):
        assert not v0.is_contiguous()
        y, st = rev_lif(x, v0, backend=backend)
        yc, stc = rev_lif(x, v0.contiguous(), backend=backend)
        assert torch.equal(y, yc) and torch.equal(st.v_fixed, stc.v_fixed)
    y, st = rev_lif(x, keep_stash=True, backend=backend)
    words = torch.zeros(st.v_fixed.shape[0], 12, dtype=torch.int32, device=DEVICE)
    words[:, ::2] = st.v_fixed
    stash = torch.zeros(st.stash.shape[0], 2 * st.stash.shape[1], dtype=torch.int32,
                        device=DEVICE)
    stash[:, 1::2] = st.stash
    strided = RevLIFState(words[:, ::2], stash[:, 1::2])
    x_back, v0_back = rev_lif_inverse(y.detach(), strided, backend=backend)
    assert torch.equal(x_back, on_grid(x.detach()))
    y2, st2 = rev_lif(x, strided, backend=backend)
    assert torch.equal(y2, rev_lif(x, RevLIFState(st.v_fixed, st.stash), backend=backend)[0])


@pytest.mark.parametrize("change,match", [
    (dict(T=3), "steps: 4 vs 3"), (dict(beta1=-0.25), "beta1: -0.5 vs -0.25"),
    (dict(tau=3.0), "tau: 2.0 vs 3.0"), (dict(v_reset=None), "v_reset: 0.0 vs None"),
    (dict(alpha=-1.0), "alpha: 1.0 vs -1.0")])
def test_inverse_with_other_steps_or_settings_raises(backend, change, match):
    """Each of these rebuilds a wrong x from a consistent-looking y and state (the stash has
    the same words): the state records what made it, and the inverse compares."""
    x = make_x((4, 2, 6), seed=35)
    y, st = rev_lif(x, keep_stash=True, backend=backend)
    kw = {k: v for k, v in change.items() if k != "T"}
    with pytest.raises(ValueError, match=f"forward vs now: {match}"):
        rev_lif_inverse(y[:change.get("T", 4)], st, backend=backend, **kw)
    hand_made = RevLIFState(st.v_fixed, st.stash)  # nothing recorded: not compared
    rev_lif_inverse(y[:change.get("T", 4)], hand_made, backend=backend, **kw)


def test_inference_mode_first_then_training():
    """The scalar parameters' cached tensors are made outside inference mode: a first call
    under torch.inference_mode (a validation pass before training) must not poison them."""
    node = revsnn.RevLIF(tau=3.5, v_threshold=0.75)
    with torch.inference_mode():
        node(make_x((4, 2, 6)))
    node.reset()
    x = make_x((4, 2, 6), requires_grad=True)
    node(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("node", ["lif", "rev_lif"])
def test_double_backward_raises_and_create_graph_keeps_first_order(node):
    """The ops' backwards are first order: with create_graph=True the gradient is the usual
    one, and differentiating it raises instead of treating it as a constant."""
    fn = (lambda x: lif(x)[0]) if node == "lif" else (lambda x: rev_lif(x)[0])
    x = make_x((4, 2, 6), seed=33, requires_grad=True)
    g, = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
    g_plain, = torch.autograd.grad(fn(x).square().sum(), x)
    assert torch.equal(g.detach(), g_plain) and g.requires_grad
    with pytest.raises(RuntimeError, match=f"backward of revsnn's {node} is not differentiable"):
        g.square().sum().backward()


def test_layer_raises_for_a_flagged_call_no_backward_checks():
    """Under no_grad nothing would ever read the flags: the layer reads them at its next call
    or reset() (the call itself does not wait for the device)."""
    node = revsnn.RevLIF()
    bad = make_x((4, 2, 6), seed=34)
    bad[1, 0, 2] = float("nan")
    with torch.no_grad():
        node(bad)
        with pytest.raises(ValueError, match="earlier call.*NaN/Inf"):
            node(make_x((4, 2, 6)))
        node.reset()  # checked once
        node(bad)
        with pytest.raises(ValueError, match="earlier call"):
            node.reset()
        node.reset()
        for _ in range(2):
            node(make_x((4, 2, 6)))
        node.reset()
    x = bad.clone().requires_grad_()
    y = node(x)  # recorded: its backward checks, as before
    node.reset()
    with pytest.raises(ValueError, match="NaN/Inf"):
        y.sum().backward()
    with torch.no_grad():  # a raising reset() still forgets the flagged state
        node(bad)
        with pytest.raises(ValueError, match="earlier call"):
            node.reset()
        assert node.state is None
        node(make_x((4, 2, 6)))
        node.reset()


def test_layer_with_a_pending_check_copies_and_compiles():
    """A copy starts with nothing pending (a CUDA event cannot be copied); compiled calls
    do not read the flags on the host (no graph break, no guard on the value)."""
    import io
    from torch._dynamo.testing import CompileCounter
    node = revsnn.RevLIF(backend="torch")
    with torch.no_grad():
        node(make_x((4, 2, 6)))
    assert len(node._unchecked) == 1
    assert len(copy.deepcopy(node)._unchecked) == 0 and len(node._unchecked) == 1
    torch.save(node, io.BytesIO())
    counter = CompileCounter()
    net = torch.compile(torch.nn.Sequential(torch.nn.Linear(6, 6), revsnn.RevLIF(
        backend="torch")), backend=counter)
    with torch.no_grad():
        for seed in range(5):
            net(make_x((4, 2, 6), seed=seed))
    assert counter.frame_count <= 2


def test_layer_tensor_params_are_buffers():
    """A tensor tau / v_threshold that is not a Parameter is a buffer: in the state_dict, moved
    and cast with the layer, and a copy (the caller's tensor is not aliased)."""
    tau = torch.full([6], 3.0)
    node = revsnn.RevLIF(tau=tau, v_threshold=torch.tensor(0.5))
    assert set(node.state_dict()) == {"tau", "v_threshold"}
    tau.fill_(1.0)
    assert torch.equal(node.tau, torch.full([6], 3.0))
    node.double()
    assert node.tau.dtype == torch.float64
    x = make_x((3, 2, 6))
    y, _ = rev_lif(x, tau=3.0, v_threshold=0.5)
    assert torch.equal(node(x), y)
    other = revsnn.RevLIF(tau=torch.zeros(6) + 9.0, v_threshold=torch.tensor(0.1))
    other.load_state_dict(node.state_dict())
    other.reset()
    assert torch.equal(other(x), y)


def test_empty_batch_and_single_step(backend):
    x = torch.zeros(3, 0, 4, device=DEVICE, requires_grad=True)
    y, st = rev_lif(x, backend=backend)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    x = make_x((1, 2, 4), requires_grad=True)
    y, st = rev_lif(x, backend=backend)
    y.sum().backward()
    xr, _ = rev_lif_inverse(y.detach(), st, backend=backend)
    assert torch.equal(xr, on_grid(x.detach()))


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("call,exc,match", [
    (lambda x: rev_lif(x[0, 0]), ValueError, "rank"),
    (lambda x: rev_lif(x[:, :, :5]), ValueError, "even"),
    (lambda x: rev_lif(x.int()), TypeError, "float32"),
    (lambda x: rev_lif(x[:0]), ValueError, "T >= 1"),
    (lambda x: rev_lif(x, dim=0), ValueError, "dim"),
    (lambda x: rev_lif(x, torch.zeros(2, 6)), ValueError, "state must have shape"),
    (lambda x: rev_lif(x, torch.zeros(2, 6, 3, device="meta")), ValueError, "is on meta"),
    (lambda x: rev_lif(x, torch.zeros(2, 6, 3, dtype=torch.int64)), TypeError, "state"),
    (lambda x: rev_lif(x, "v"), TypeError, "state"),
    (lambda x: rev_lif(x, alpha=3.0), ValueError, "alpha"),
    (lambda x: rev_lif(x, alpha=8.0), ValueError, "alpha"),
    (lambda x: rev_lif(x, beta1=0.5), ValueError, "beta1 must be negative"),
    (lambda x: rev_lif(x, beta2=2.0 ** -9), ValueError, "beta2"),
    (lambda x: rev_lif(x, tau=1.0), ValueError, "tau"),
    (lambda x: rev_lif(x, tau=float("nan")), ValueError, "tau"),
    (lambda x: rev_lif(x, surrogate="relu"), ValueError, "surrogate"),
    (lambda x: rev_lif(x, surrogate_alpha=-1.0), ValueError, "surrogate_alpha"),
    (lambda x: rev_lif(x, backend="cuda"), ValueError, "backend"),
    (lambda x: rev_lif(x, backward="auto"), ValueError, "backward"),
    (lambda x: rev_lif(x, v_threshold=float("inf")), ValueError, "v_threshold"),
    (lambda x: rev_lif(x.requires_grad_(), keep_stash=False), ValueError, "keep_stash"),
    (lambda x: rev_lif_inverse(x, x), TypeError, "RevLIFState"),
    (lambda x: rev_lif(x, decay_input="no"), TypeError, "decay_input must be True or False"),
    (lambda x: rev_lif(x, detach_reset=None), TypeError, "detach_reset"),
    (lambda x: rev_lif(x, keep_stash="yes"), TypeError, "keep_stash"),
    (lambda x: rev_lif(x, validate="no"), TypeError, "validate"),
    # expanded: 2**31 neurons per step without the memory; more than the kernels' int32 offsets
    (lambda x: rev_lif(x.new_zeros(1).expand(1, 2, 2 ** 30)), ValueError, "neurons per time step"),
    (lambda x: revsnn.RevLIF(tau=torch.tensor([2.0, 0.5])), ValueError, "tau must be finite"),
    (lambda x: revsnn.RevLIF(tau=torch.tensor([2.0, math.inf])), ValueError, "tau must be finite"),
    (lambda x: revsnn.RevLIF(v_threshold=torch.tensor([65.0])), ValueError, "v_threshold"),
    (lambda x: revsnn.RevLIF(keep_stash=1.5), TypeError, "keep_stash"),
    (lambda x: revsnn.RevLIF(tau=torch.nn.Parameter(torch.tensor([2.0, math.inf])),
                             decay_input=False), ValueError, "a learned tau .* must be finite"),
    (lambda x: rev_lif(x, alpha="1"), TypeError, "alpha must be a float"),
    (lambda x: rev_lif(x, alpha=0.0), ValueError, "alpha must be a finite non-zero power"),
    (lambda x: rev_lif(x, beta1=-math.inf), ValueError, "beta1 must be a finite non-zero"),
    (lambda x: rev_lif(x, v_threshold="1"), TypeError, "v_threshold must be a float or a"),
    (lambda x: rev_lif(x.tolist()), TypeError, "x must be a torch.Tensor, got list"),
    (lambda x: rev_lif(x, dim=2.0), TypeError, "dim must be an int, got float"),
    # a stash made for other steps: the words would be read as another step's bits
    (lambda x: rev_lif_inverse(x, RevLIFState(torch.zeros(2, 6, 3, dtype=torch.int32),
                                              torch.zeros(2, 18, dtype=torch.int32))),
     ValueError, r"state.stash has shape \(2, 18\), expected \(1, 18\) for T=4"),
])
def test_bad_input(call, exc, match):
    x = torch.zeros(4, 2, 6, 3, device=DEVICE)
    with pytest.raises(exc, match=match):
        call(x)


def test_triton_backend_needs_gpu_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        rev_lif(torch.zeros(2, 1, 2), backend="triton")


# -- layer ---------------------------------------------------------------------------------------
def test_layer_keeps_state_until_reset(backend):
    node = revsnn.RevLIF(backend=backend, v_reset=None, keep_stash=True)
    x = make_x((10, 2, 6, 3), seed=8)
    y_full, st_full = rev_lif(x, v_reset=None, backend=backend)
    ya = node(x[:4])
    yb = node(x[4:])
    assert torch.equal(torch.cat([ya, yb]), y_full)
    assert torch.equal(node.state.v_fixed, st_full.v_fixed)
    xb, _ = node.inverse(yb, node.state)
    assert torch.equal(xb, on_grid(x[4:]))
    node.reset()
    assert node.state is None
    assert torch.equal(node(x[:4]), ya)
    assert "v_reset=None" in repr(node) and "tau=2.0" in repr(node)


def test_layer_trains(backend):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), revsnn.RevLIF(backend=backend, dim=-1),
                              torch.nn.Linear(16, 2)).to(DEVICE)
    x = torch.randn(6, 32, 8, device=DEVICE)
    target = (x.sum(dim=(0, 2)) > 0).long()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        net[1].reset()
        loss = torch.nn.functional.cross_entropy(net(x).mean(0), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_float_state_receives_gradient(backend):
    x = make_x((5, 2, 4), seed=1, requires_grad=True)
    v0 = make_x((2, 4), scale=0.5, seed=2, requires_grad=True)
    y, _ = rev_lif(x, v0, backend=backend)
    y.sum().backward()
    assert v0.grad is not None and v0.grad.abs().sum() > 0


# -- torch.compile -------------------------------------------------------------------------------
def _compiled_matches_eager(compile_backend):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), revsnn.RevLIF(dim=-1),
                              torch.nn.Linear(16, 4)).to(DEVICE)
    x = torch.randn(6, 3, 8, device=DEVICE, requires_grad=True)

    def run(model):
        net[1].reset()
        y = model(x)
        return y, torch.autograd.grad(y.square().sum(), [x, *net.parameters()])

    y0, g0 = run(net)
    compiled = torch.compile(net, fullgraph=True, backend=compile_backend)
    for _ in range(2):  # second call: state carried in from the first, no recompile needed
        y1, g1 = run(compiled)
        assert torch.equal(y0, y1)
        for a, b in zip(g0, g1):
            torch.testing.assert_close(a, b)


def test_compile_fullgraph_aot_eager():
    torch._dynamo.reset()
    _compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    torch._dynamo.reset()
    _compiled_matches_eager("inductor")


# -- dispatch: direct eager calls, the dispatcher wherever something must see the op -------------
def test_direct_call_only_where_nothing_must_see_the_op():
    x = torch.zeros(3, device=DEVICE)
    assert not direct((x,))  # grad mode on: a double backward must record the op
    with torch.no_grad():
        assert direct((x, None, 2.0, "sigmoid"))
        assert not direct((x.to("meta"),))
        with SeenOps():
            assert not direct((x,))
        with torch.profiler.profile():
            assert not direct((x,))


def test_direct_and_dispatched_calls_agree(backend):
    x = make_x((5, 2, 6, 3), seed=4, requires_grad=True)
    tau = torch.full((6,), 2.5, device=DEVICE, requires_grad=True)
    g = make_x(x.shape, seed=5)

    def run():
        y, st = rev_lif(x, tau=tau, backend=backend)
        y.backward(g)
        out = y.detach(), st.v_fixed, x.grad, tau.grad
        x.grad = tau.grad = None
        return out
    assert_same_through_dispatcher(run, ["revsnn::rev_lif_fwd", "revsnn::rev_lif_bwd"])


def test_backward_fills_no_gradient_for_the_integer_outputs(backend):
    """The final state and the stash take no gradient; materialising theirs would allocate and
    zero-fill two tensors on every backward."""
    x = make_x((5, 2, 6, 3), seed=6, requires_grad=True)
    y, _ = rev_lif(x, backend=backend)
    with SeenOps() as seen:
        y.backward(torch.ones_like(y))
    assert seen.filled_before("revsnn::rev_lif_bwd") == []


# -- per-channel and learnable tau / v_threshold -------------------------------------------------
def channel_params(C, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    tau = (1.5 + 3 * torch.rand(C, generator=g)).to(DEVICE).requires_grad_(requires_grad)
    vth = (0.5 + torch.rand(C, generator=g)).to(DEVICE).requires_grad_(requires_grad)
    return tau, vth


@pytest.mark.parametrize("option", ["hard", "soft", "no_decay"])
@pytest.mark.parametrize("shape", [(24, 3, 6, 7, 9), (64, 2, 10)])
def test_per_channel_params_exact_and_match_twin(backend, option, shape):
    tau, vth = channel_params(shape[2], seed=len(shape))
    kw = dict(NODE_OPTIONS[option], tau=tau, v_threshold=vth)
    x = make_x(shape, seed=1)
    y, st = rev_lif(x, keep_stash=True, backend=backend, **kw)
    yr, sr = rev_lif_int(x.cpu(), **{k: v.cpu() if torch.is_tensor(v) else v
                                     for k, v in kw.items()})
    assert torch.equal(y.cpu(), yr) and torch.equal(st.v_fixed.cpu(), sr.v_fixed)
    xr, _ = rev_lif_inverse(y, st, backend=backend, **kw)
    assert torch.equal(xr, on_grid(x))
    # per-channel really is per channel: the pair of channels (0, C/2) given the scalar
    # run's values behaves as in that run, the other channels do not
    h = shape[2] // 2
    tau[0] = tau[h] = 2.5
    vth[0] = vth[h] = 0.75
    y, _ = rev_lif(x, backend=backend, **kw)
    y0, _ = rev_lif(x, backend=backend, **dict(kw, tau=2.5, v_threshold=0.75))
    pair = [0, h]
    assert torch.equal(y0[:, :, pair], y[:, :, pair]) and not torch.equal(y0, y)


@pytest.mark.parametrize("option", ["hard", "soft", "no_decay", "vr_vth"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_learnable_params_gradients(backend, option, detach_reset):
    shape = (12, 3, 6, 7, 5)
    tau, vth = channel_params(shape[2], seed=3, requires_grad=True)
    kw = dict(NODE_OPTIONS[option], detach_reset=detach_reset)
    kw.pop("v_threshold", None)
    kw.pop("tau", None)
    x = make_x(shape, seed=2, requires_grad=True)
    gy = make_x(shape, scale=1.0, seed=4)
    y, _ = rev_lif(x, tau=tau, v_threshold=vth, backend=backend, **kw)
    grads = torch.autograd.grad(y, (x, tau, vth), gy)
    yr, _ = rev_lif_int(x, tau=tau, v_threshold=vth, **kw)
    grads_ref = torch.autograd.grad(yr, (x, tau, vth), gy)
    for g, gr in zip(grads, grads_ref):
        assert g.shape == gr.shape and gr.abs().max() > 0
        assert_close_rel(g, gr)


@pytest.mark.parametrize("per_channel", ["tau", "v_threshold"])
def test_one_param_per_channel_the_other_scalar(backend, per_channel):
    """A per-channel tau with a scalar v_threshold (and the reverse): forward exact against
    the ground truth, gradients of the right shapes and values."""
    shape = (10, 2, 6, 5)
    tau, vth = channel_params(shape[2], seed=7, requires_grad=True)
    scalar = torch.tensor([1.75 if per_channel == "v_threshold" else 0.9], device=DEVICE,
                          requires_grad=True)
    kw = dict(tau=tau, v_threshold=scalar) if per_channel == "tau" else dict(tau=scalar,
                                                                          v_threshold=vth)
    x = make_x(shape, seed=8, requires_grad=True)
    gy = make_x(shape, scale=1.0, seed=9)
    y, st = rev_lif(x, backend=backend, **kw)
    yr, sr = rev_lif_int(x, **kw)
    assert torch.equal(y, yr.detach()) and torch.equal(st.v_fixed, sr.v_fixed)
    wrt = (x, kw["tau"], kw["v_threshold"])
    for g, gr in zip(torch.autograd.grad(y, wrt, gy), torch.autograd.grad(yr, wrt, gy)):
        assert g.shape == gr.shape
        assert_close_rel(g, gr)


def test_scalar_tensor_params_and_layer_parameters(backend):
    tau = torch.nn.Parameter(torch.tensor(3.0, device=DEVICE))
    vth = torch.nn.Parameter(torch.tensor([0.8], device=DEVICE))
    node = revsnn.RevLIF(tau=tau, v_threshold=vth, backend=backend)
    assert {n for n, _ in node.named_parameters()} == {"tau", "v_threshold"}
    x = make_x((6, 2, 4, 3), seed=5, requires_grad=True)
    node(x).square().sum().backward()
    yr, _ = rev_lif_int(x, tau=tau, v_threshold=vth)
    gt, gv = torch.autograd.grad(yr.square().sum(), (tau, vth))
    assert_close_rel(tau.grad, gt)
    assert_close_rel(vth.grad, gv)
    assert "tau=tensor[]" in repr(node)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x: rev_lif(x, tau=torch.full((5,), 2.0)), ValueError, r"shape \[6\]"),
    (lambda x: rev_lif(x, v_threshold=torch.ones(6, dtype=torch.int32)), TypeError,
     "v_threshold"),
    (lambda x: rev_lif(x, tau=torch.full((6,), 2.0, device="meta")), ValueError, "tau is on"),
    (lambda x: rev_lif(x, tau=torch.full((6,), 2.0, requires_grad=True),
                       backward="recompute"), ValueError, "fused"),
])
def test_bad_channel_params(call, exc, match):
    with pytest.raises(exc, match=match):
        call(torch.zeros(3, 2, 6, 2))


# the backward runs on the flagged state before its check raises (its numbers are discarded)
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("which,value,decay_input", [
    ("tau", 0.9, True), ("tau", float("nan"), True), ("tau", float("inf"), True),
    ("v_threshold", 65.0, True), ("v_threshold", float("-inf"), False)])
def test_param_values_out_of_range_flag_the_state(backend, which, value, decay_input):
    """Tensor tau / v_threshold values are checked on the device, not read on the host: one
    bad channel flags its pairs (code 16), which validate=True and the backward report."""
    x = make_x((3, 2, 6, 5), seed=9, requires_grad=True)
    tau, vth = channel_params(6, seed=9)
    bad = dict(tau=tau, v_threshold=vth)
    bad[which] = bad[which].clone()
    bad[which][4] = value
    kw = dict(bad, decay_input=decay_input, backend=backend)
    y, st = rev_lif(x, **kw)
    assert st.error() is not None and "out of range" in st.error()
    flagged = st.v_fixed < POISON_LIMIT
    assert flagged[:, [1, 4]].all() and not flagged[:, [0, 2, 3, 5]].any()  # pair (1, 4)
    with pytest.raises(ValueError, match="tau or v_threshold"):
        rev_lif(x, validate=True, **kw)
    with pytest.raises(ValueError, match="tau or v_threshold"):
        y.sum().backward()
    yt, st_twin = rev_lif(x.detach().cpu(), **{k: v.cpu() if torch.is_tensor(v) else v
                                               for k, v in dict(kw, backend="torch").items()})
    assert torch.equal(st.v_fixed.cpu(), st_twin.v_fixed) and torch.equal(y.detach().cpu(), yt)


def test_inf_tau_without_decay_input_is_an_if_channel(backend):
    """tau = inf in a per-channel tensor is an IF neuron there, as the scalar tau = inf is
    everywhere (decay_input=False: with it, inf is out of range, tested above)."""
    x = make_x((5, 2, 4, 3), seed=10)
    tau = torch.tensor([math.inf, 3.0, math.inf, 3.0], device=DEVICE)
    y, st = rev_lif(x, tau=tau, decay_input=False, backend=backend)
    assert st.error() is None
    y_if, _ = rev_lif(x, tau=math.inf, backend=backend)
    y_lif, _ = rev_lif(x, tau=3.0, decay_input=False, backend=backend)
    assert torch.equal(y[:, :, [0, 2]], y_if[:, :, [0, 2]])
    assert torch.equal(y[:, :, [1, 3]], y_lif[:, :, [1, 3]])


def test_kernel_constants_are_the_configs():
    """The kernels spell out revsnn/_config.py's limits as constexpr (they cannot import it):
    a change on one side must reach the other."""
    from revsnn._config import ERROR_CODES, INPUT_BITS, V_MAX, V_PARAM_MAX
    from revsnn.kernels import rev_lif as k
    assert k.V_MAX.value == V_MAX and k.POISON_LIMIT.value == POISON_LIMIT
    assert k.V_PARAM_MAX.value == V_PARAM_MAX and k.INPUT_LIMIT.value == 1 << INPUT_BITS
    assert "tau or v_threshold" in ERROR_CODES[k.BAD_PARAM.value]


def test_rev_lif_layer_no_grad_empty_batch():
    layer = revsnn.RevLIF(backend="torch")
    with torch.no_grad():
        for _ in range(2):
            assert layer(torch.zeros(3, 0, 4)).shape == (3, 0, 4)
    layer.reset()


@pytest.mark.parametrize("node", ["rev_lif", "lif"])
@pytest.mark.parametrize("alpha", [0.0, float("inf")])
def test_surrogate_alpha_zero_or_inf_rejected(node, alpha):
    fn = getattr(revsnn.functional, node)
    with pytest.raises(ValueError, match="surrogate_alpha"):
        fn(torch.zeros(2, 1, 2), surrogate_alpha=alpha, backend="torch")


def test_per_channel_param_must_be_one_dimensional():
    x = torch.zeros(2, 1, 4)
    for shape in ((4, 1), (2, 2), (1, 1)):
        with pytest.raises(ValueError, match="shape"):
            revsnn.functional.rev_lif(x, tau=torch.full(shape, 2.0), backend="torch")


def test_inverse_with_scalar_tau_of_a_per_channel_forward():
    """Made does not compare a per-channel tau with a number (documented): the inverse of a
    forward with a constant [C] tensor runs with the plain number."""
    from revsnn.functional import rev_lif, rev_lif_inverse
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 6, 3, generator=g)
    y, st = rev_lif(x, tau=torch.full((6,), 2.0), keep_stash=True, backend="torch")
    xr, _ = rev_lif_inverse(y, st, tau=2.0, backend="torch")
    xt, _ = rev_lif_inverse(y, st, tau=torch.full((6,), 2.0), backend="torch")
    assert torch.equal(xr, xt)


def test_error_message_counts_neuron_pairs():
    x = torch.zeros(2, 1, 2)  # one neuron pair
    x[0, 0, 0] = float("nan")
    _, st = revsnn.functional.rev_lif(x, backend="torch")
    assert st.error().startswith("1 neuron pair(s) flagged")


# -- the reversible node on dyadic inputs: exact, ties at the threshold included ------------------
def real_rev_lif(x, v0, tau, v_threshold, v_reset, decay_input, alpha, beta1, beta2):
    """The node's real-valued equations (README), written out independently in float64.
    x: [T, B, C, *]; v0: [B, C, *]. Returns y, the final potential and how many charged
    potentials M landed exactly on v_threshold."""
    h = x.shape[2] // 2
    x = x.double()
    v1, v2 = v0.double()[:, :h], v0.double()[:, h:]
    vr = 0.0 if v_reset is None else v_reset
    ties = 0

    def charge(v, i):
        if math.isinf(tau):
            return v + i
        if decay_input:
            return v + (i - (v - vr)) / tau
        return v - (v - vr) / tau + i

    def fire(m):
        nonlocal ties
        ties += int((m == v_threshold).sum())
        s = (m >= v_threshold).double()
        u = torch.where(s > 0, vr, m) if v_reset is not None else m - v_threshold * s
        return s, u

    ys = []
    for t in range(x.shape[0]):
        x1, x2 = x[t, :, :h], x[t, :, h:]
        s1, u1 = fire(charge(v1, x1))
        y1 = s1 + alpha * x2
        v1n = u1 + beta1 * v2
        s2, u2 = fire(charge(v1n, y1))
        y2 = s2 + alpha * x1
        v2n = u2 + beta2 * v1
        ys.append(torch.cat([y1, y2], dim=1))
        v1, v2 = v1n, v2n
    return torch.stack(ys), torch.cat([v1, v2], dim=1), ties


DYADIC_OPTIONS = {
    "hard": dict(),
    "soft": dict(v_reset=None),
    "no_decay_v_reset": dict(decay_input=False, v_reset=-0.25),
    "vr_vth": dict(v_reset=-0.25, v_threshold=0.75),
}


@pytest.mark.parametrize("option", list(DYADIC_OPTIONS))
@pytest.mark.parametrize("betas", [(-1.0, 1.0), (-0.5, 0.5)])
def test_rev_lif_exact_on_dyadic_inputs_ties_fire(backend, option, betas):
    """Where nothing rounds, the fixed-point node is the real-valued one exactly: y and the
    final state equal independent float64 maths, and M == v_threshold (which happens many
    times here) fires. Pins `>=` (not `>`) in the fixed-point fire/reset, and the v_reset term
    of the charge without decay_input."""
    kw = dict(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0, alpha=1.0,
              beta1=betas[0], beta2=betas[1])
    kw.update(DYADIC_OPTIONS[option])
    T, shape = (6, (6, 8, 8, 5)) if betas[0] == -1.0 else (5, (5, 8, 8, 5))
    x = dyadic(shape, 1, bits=2, lo=-2, hi=3).to(DEVICE)
    v0 = dyadic(shape[1:], 2, bits=2, lo=-1, hi=1).to(DEVICE)
    y, st = rev_lif(x, v0, backend=backend, **kw)
    y_ref, v_ref, ties = real_rev_lif(x.cpu(), v0.cpu(), **kw)
    assert ties >= 5  # the comparison below covers M == v_threshold
    assert st.error() is None
    assert torch.equal(y.double().cpu(), y_ref)
    assert torch.equal(st.v_fixed.double().cpu() * 2.0 ** -F_BITS, v_ref)


@pytest.mark.parametrize("backward", ["fused", "recompute"])
def test_rev_lif_gradient_with_ties_at_threshold(backend, backward):
    """The gradient where M == v_threshold (a spike, hard reset: dU/dM = 1 - S = 0) matches
    the ground truth on either backward; the recompute backward derives S from the saved M."""
    x = dyadic((6, 4, 8, 5), 1, bits=2, lo=-2, hi=3).to(DEVICE).requires_grad_()
    v0 = dyadic((4, 8, 5), 2, bits=2, lo=-1, hi=1).to(DEVICE)
    g = torch.Generator().manual_seed(3)
    gy = torch.randn(x.shape, generator=g).to(DEVICE)
    kw = dict(beta1=-1.0, beta2=1.0)
    y, _ = rev_lif(x, v0, backward=backward, backend=backend, **kw)
    (gx,) = torch.autograd.grad(y, x, gy)
    yr, _ = rev_lif_int(x, v0, **kw)
    (gxr,) = torch.autograd.grad(yr, x, gy)
    assert torch.equal(y, yr)
    assert_close_rel(gx, gxr)


# -- range checks at their boundaries ------------------------------------------------------------
def test_rev_lif_parameter_range_boundaries(backend):
    """tau must be > 1 (tau = 1 is flagged, as the host check rejects a float 1.0) and
    |v_threshold| <= 64 (64 itself is valid, as the float 64.0 is)."""
    x = dyadic((3, 2, 4, 3), 4, bits=2, lo=-2, hi=3).to(DEVICE)
    ok = rev_lif(x, tau=torch.tensor([2.0, 1.0 + 2 ** -20, 3.0, 2.0], device=DEVICE),
                 v_threshold=torch.tensor([64.0, 1.0, -63.5, 0.5], device=DEVICE),
                 backend=backend)[1]
    assert ok.error() is None
    _, st = rev_lif(x, tau=torch.tensor([2.0, 1.0, 3.0, 2.0], device=DEVICE), backend=backend)
    assert st.error() is not None and "tau or v_threshold" in st.error()
    flagged = st.v_fixed < POISON_LIMIT
    assert flagged[:, [1, 3]].all() and not flagged[:, [0, 2]].any()  # the pair (1, 3)
    # the host checks the same closed range for a number and for a layer's tensor
    for vth in (-64.0, 64.0):
        assert rev_lif(x, v_threshold=vth, v_reset=vth, backend=backend)[1].error() is None
        revsnn.RevLIF(v_threshold=torch.tensor([vth, 1.0]))
    for vth in (-64.0 - 2 ** -10, 64.0 + 2 ** -10):
        with pytest.raises(ValueError, match=r"v_threshold must be finite and in \[-64.0, 64.0\]"):
            rev_lif(x, v_threshold=vth, backend=backend)
        with pytest.raises(ValueError, match="v_threshold"):
            revsnn.RevLIF(v_threshold=torch.tensor([vth, 1.0]))


def test_rev_lif_float_state_at_the_range_limit(backend):
    """A float initial potential that rounds to +-V_MAX is in range; one more unit is not."""
    lim = (V_MAX - 0.5) * 2.0 ** -F_BITS  # v * 2**F + 0.5 == V_MAX exactly (float64)
    x = torch.zeros(1, 1, 2, dtype=torch.float64, device=DEVICE)
    v0 = torch.tensor([[lim, -lim - 2.0 ** -F_BITS]], dtype=torch.float64, device=DEVICE)
    y, st = rev_lif(x, v0, keep_stash=True, backend=backend)
    assert st.error() is None
    _, s0 = rev_lif_inverse(y, st, backend=backend)
    assert s0.v_fixed.tolist() == [[V_MAX, -V_MAX]]
    over = v0 + torch.tensor([[2.0 ** -F_BITS, 0.0]], dtype=torch.float64, device=DEVICE)
    _, st = rev_lif(x, over, backend=backend)
    assert st.error() is not None and "initial state" in st.error()


# IF neuron, soft reset, beta = -1/+1: M = V + I, U = M - S, V1new = U1 - V2, V2new = U2 + V1.
# Each case (v1, v2, x1, x2) leaves the +-4096 range in exactly one quantity of the step.
OVERFLOW_CASES = {
    "m1": (4000.0, 4090.0, 250.0, -150.0),    # M1 = 4250
    "m2": (-250.0, -4091.0, 249.0, 10.0),     # V1new = 4090, M2 = 4100
    "v1n": (0.0, -4000.0, 100.0, -10.0),      # V1new = 4099, M2 = 4090
    "v2n": (3000.0, 0.0, 0.0, 0.0),           # V2new = 2999 + 3000
}


@pytest.mark.parametrize("case", list(OVERFLOW_CASES))
def test_rev_lif_each_overflow_check(backend, case):
    v1, v2, x1, x2 = OVERFLOW_CASES[case]
    kw = dict(tau=math.inf, v_reset=None, beta1=-1.0, beta2=1.0, backend=backend)
    x = torch.tensor([[[x1, x2]]], device=DEVICE)
    v0 = torch.tensor([[v1, v2]], device=DEVICE)
    _, st = rev_lif(x, v0, **kw)
    assert st.error() is not None and "overflowed" in st.error()
    assert (st.v_fixed < POISON_LIMIT).all()


def inverse_case(case, backend):
    """(y, state, keywords) that no forward produced, each caught by one check of the
    inverse only: y beyond the output grid's range, a rebuilt x beyond the charge input's
    range, a rebuilt M1 beyond the fixed-point range."""
    if case == "m1":
        # IF, soft: M2 = 3000 fires, x1 = 201 - 1, V1 = 6999 - 2999 = 4000, M1 = 4200
        kw = dict(tau=math.inf, v_reset=None, beta1=-1.0, beta2=1.0, backend=backend)
        y = torch.tensor([[[0.0, 201.0]]], device=DEVICE)
        words = torch.tensor([[3000, 6999]], dtype=torch.int32, device=DEVICE) * 2 ** F_BITS
        return y, RevLIFState(words, torch.zeros(0, 1, dtype=torch.int32, device=DEVICE)), kw
    kw = dict(beta1=-1.0, beta2=1.0, backend=backend)
    x = dyadic((1, 2, 4, 3), 5, bits=2, lo=-1, hi=1).to(DEVICE)
    y, st = rev_lif(x, keep_stash=True, **kw)
    y = y.clone()
    if case == "y_range":
        # -2**15 is on the grid, and -2**15 * 2**16 is exactly INT32_MIN (|.| of which is
        # itself in int32): only the range check on y sees it; M2 < 1 (no spike)
        y[0, :, :2], y[0, :, 2:] = 0.0, -2.0 ** 15
    elif case == "x1_range":  # M2 = (V1new + 100) / 2 fires: x1 = -1024 - 1 (|x| <= 1024)
        y[0, :, :2], y[0, :, 2:] = 100.0, -1024.0
    else:  # "x2_range": x1 = 100 - S2, then M1 = (V1 + x1) / 2 fires: x2 = -1024 - 1
        y[0, :, :2], y[0, :, 2:] = -1024.0, 100.0
    return y, RevLIFState(st.v_fixed, st.stash), kw


@pytest.mark.parametrize("case", ["y_range", "x1_range", "x2_range", "m1"])
def test_rev_lif_inverse_each_reconstruction_check(backend, case):
    y, st, kw = inverse_case(case, backend)
    with pytest.raises(ValueError, match="not produced by rev_lif"):
        rev_lif_inverse(y, st, **kw)
    _, s0 = rev_lif_inverse(y, st, validate=False, **kw)
    assert (s0.v_fixed < POISON_LIMIT).all()


@pytest.mark.parametrize("learnable", ["tau", "v_threshold"])
def test_rev_lif_only_one_learnable_parameter(backend, learnable):
    """Only tau (or only v_threshold) takes a gradient: the backward must still compute it."""
    shape = (8, 2, 6, 5)
    g = torch.Generator().manual_seed(12)
    tau = (1.5 + 3 * torch.rand(6, generator=g)).to(DEVICE)
    vth = (0.5 + torch.rand(6, generator=g)).to(DEVICE)
    (tau if learnable == "tau" else vth).requires_grad_()
    p = tau if learnable == "tau" else vth
    x = (torch.randn(shape, generator=g) * 1.5 + 0.3).to(DEVICE)
    gy = torch.randn(shape, generator=g).to(DEVICE)
    y, _ = rev_lif(x, tau=tau, v_threshold=vth, backend=backend)
    (gp,) = torch.autograd.grad(y, p, gy)
    yr, _ = rev_lif_int(x, tau=tau, v_threshold=vth)
    (gpr,) = torch.autograd.grad(yr, p, gy)
    assert gp.shape == p.shape and gpr.abs().max() > 0
    assert_close_rel(gp, gpr)


def test_rev_lif_float64_input_is_quantized_once(backend):
    """float64 x is rounded to the grid (2**-16) from its float64 value, half up: a value just
    below a half-way point rounds down, although rounding it to float32 first (|x| in [64,
    128): float32's spacing there is 2**-17) would land on the half-way point and round up."""
    k = torch.tensor([100.0, -100.0, 70.5, -127.25], dtype=torch.float64)
    x = (k + 2.0 ** -17 - 2.0 ** -40).reshape(1, 1, 4).repeat(3, 2, 1).to(DEVICE)
    y, st = rev_lif(x, keep_stash=True, backend=backend, v_threshold=64.0)
    assert st.error() is None
    xr, _ = rev_lif_inverse(y, st, backend=backend, v_threshold=64.0)
    assert torch.equal(xr, torch.floor(x * 2 ** 16 + 0.5) / 2 ** 16)
    assert torch.equal(xr.cpu(), k.reshape(1, 1, 4).repeat(3, 2, 1))


def test_rev_lif_float64_reference_matches_the_node_where_nothing_rounds():
    """The float64 reference with an initial state and per-channel tau / v_threshold (group 2
    unlike group 1): on dyadic inputs, short enough that no fixed-point step rounds, its y and
    final potential are the node's exactly. Pins which half of v0 and of the parameters each
    group takes, and the order of the final potential's halves."""
    shape = (5, 3, 8, 5)
    x = dyadic(shape, 1, bits=2, lo=-2, hi=3)
    v0 = dyadic(shape[1:], 2, bits=2, lo=-1, hi=1)
    kw = dict(tau=torch.tensor([2.0, 4.0, 2.0, 2.0, 4.0, 2.0, 4.0, 4.0]),
              v_threshold=torch.tensor([1.0, 0.75, 1.25, 0.5, 1.5, 1.0, 0.75, 1.25]),
              v_reset=-0.25)
    y, st = rev_lif(x, v0, backend="torch", **kw)
    yf, vf = rev_lif_float64(x, v0, **kw)
    assert st.error() is None and y.sum() != 0
    assert torch.equal(y.double(), yf)
    assert torch.equal(st.v_fixed.double() * 2.0 ** -F_BITS, vf)


def test_rev_lif_inverse_flags_float64_y_off_grid_below_float32_precision(backend):
    """float64 y is checked against the output grid in float64: an offset of 2**-40, which
    rounding y to float32 would erase, is still off the grid."""
    x = torch.randn(4, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y, st = rev_lif(x.to(DEVICE), keep_stash=True, backend=backend)
    y_off = y.clone()
    y_off[1, 0, 2] += 2.0 ** -40
    with pytest.raises(ValueError, match="off the output grid"):
        rev_lif_inverse(y_off, st, backend=backend)


def test_rev_lif_learnable_tau_without_decay_input_and_nonzero_v_reset(backend):
    """dM/dtau of the charge without decay_input is (V - v_reset)/tau**2: with v_reset != 0
    the gradient of a learnable per-channel tau matches the ground truth."""
    shape = (8, 2, 6, 5)
    g = torch.Generator().manual_seed(21)
    tau = (1.5 + 3 * torch.rand(6, generator=g)).to(DEVICE).requires_grad_()
    x = (torch.randn(shape, generator=g) * 1.5 + 0.3).to(DEVICE)
    gy = torch.randn(shape, generator=g).to(DEVICE)
    kw = dict(tau=tau, decay_input=False, v_reset=-0.5, v_threshold=0.75)
    y, _ = rev_lif(x, backend=backend, **kw)
    (gt,) = torch.autograd.grad(y, tau, gy)
    yr, _ = rev_lif_int(x, **kw)
    (gtr,) = torch.autograd.grad(yr, tau, gy)
    assert torch.equal(y, yr.detach()) and gtr.abs().max() > 0
    assert_close_rel(gt, gtr)


@pytest.mark.skipif(len(backends()) < 2, reason="needs the Triton path (GPU or interpreter)")
def test_rev_lif_float64_gradients_twin_equals_kernel():
    """With float64 input both backward paths compute in float64 from the float32-rounded
    1/tau (tau = 3 is not a power of two, so 1 - 1/tau and 1/tau**2 would round in float32):
    the twin's gradients, of a learnable float64 tau too, are the kernel's to float64
    precision, not merely to float32's."""
    g = torch.Generator().manual_seed(7)
    shape = (8, 2, 6, 5)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + 0.3).to(DEVICE)
    v0 = (torch.randn(shape[1:], generator=g, dtype=torch.float64) * 0.5).to(DEVICE)
    gy = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
    tau = torch.tensor([3.0, 1.7, 2.2, 6.0, 3.0, 1.3], dtype=torch.float64, device=DEVICE)
    res = []
    for b in backends():
        leaves = [t.detach().clone().requires_grad_() for t in (x, v0, tau)]
        y, _ = rev_lif(leaves[0], leaves[1], tau=leaves[2], v_reset=None, backend=b)
        res.append(torch.autograd.grad(y, leaves, gy))
    for a, b in zip(*res):
        assert a.dtype == torch.float64
        assert_close_rel(a, b, 1e-13)


@pytest.mark.parametrize("backward", ["fused", "recompute"])
def test_rev_lif_half_input_float32_state_gradient_keeps_float32_precision(backend, backward):
    """x in bfloat16, the initial state in float32: dL/dv0 is accumulated and returned in
    float32 (the membrane's dtype), not rounded through x's 8-bit significand."""
    g = torch.Generator().manual_seed(8)
    shape = (6, 2, 6, 5)
    x = (torch.randn(shape, generator=g) * 1.5 + 0.3).to(torch.bfloat16).to(DEVICE)
    v0 = (torch.randn(shape[1:], generator=g) * 0.5).to(DEVICE).requires_grad_()
    gy = torch.randn(shape, generator=g).to(torch.bfloat16).to(DEVICE)
    y, _ = rev_lif(x, v0, backward=backward, backend=backend)
    (gv,) = torch.autograd.grad(y, v0, gy)
    yr, _ = rev_lif_int(x, v0)
    (gvr,) = torch.autograd.grad(yr, v0, gy)
    assert torch.equal(y, yr.detach()) and gv.dtype == torch.float32
    assert_close_rel(gv, gvr, 1e-5)


def test_rev_lif_state_of_the_wrong_dtype_rejected():
    """A RevLIFState whose words are not int32 (a float tensor put in by hand) is a TypeError
    naming state.v_fixed, not read as a float potential; a stash that is not int32 is refused
    by the inverse."""
    x = torch.randn(3, 2, 4, device=DEVICE)
    y, st = rev_lif(x, keep_stash=True)
    with pytest.raises(TypeError, match="state.v_fixed must be int32"):
        rev_lif(x, RevLIFState(st.v_fixed.float(), st.stash))
    with pytest.raises(TypeError, match="state.v_fixed must be int32"):
        rev_lif_inverse(y, RevLIFState(st.v_fixed.long(), st.stash))
    with pytest.raises(ValueError, match="state.stash must be int32"):
        rev_lif_inverse(y, RevLIFState(st.v_fixed, st.stash.long()))


def test_rev_lif_state_requiring_grad_alone_keeps_the_stash(backend):
    """Only the float initial state requires grad (x does not): autograd records, so the
    stash is kept and v0 gets its gradient."""
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(6, 2, 6, 5, generator=g) * 1.5 + 0.3).to(DEVICE)
    v0 = (torch.randn(2, 6, 5, generator=g) * 0.5).to(DEVICE).requires_grad_()
    y, st = rev_lif(x, v0, backend=backend)
    assert st.stash.shape[0] > 0
    (gv,) = torch.autograd.grad(y.square().sum(), v0)
    (gvr,) = torch.autograd.grad(rev_lif_int(x, v0)[0].square().sum(), v0)
    assert_close_rel(gv, gvr)


def test_rev_lif_learnable_params_under_no_grad_record_nothing(backend):
    """Under no_grad a learnable tau / v_threshold does not make the call record: the
    recompute backward (which cannot differentiate them) is accepted and no stash is kept."""
    tau = torch.tensor([2.0, 3.0, 2.5, 4.0], device=DEVICE, requires_grad=True)
    vth = torch.tensor([1.0, 0.8, 1.2, 0.9], device=DEVICE, requires_grad=True)
    x = torch.randn(5, 2, 4, device=DEVICE)
    with torch.no_grad():
        y, st = rev_lif(x, tau=tau, v_threshold=vth, backward="recompute", backend=backend)
    assert st.stash.shape[0] == 0
    y2, _ = rev_lif(x, tau=tau.detach(), v_threshold=vth.detach(), backend=backend)
    assert torch.equal(y, y2)
    with pytest.raises(ValueError, match="backward='fused'"):
        rev_lif(x, tau=tau, v_threshold=vth, backward="recompute", backend=backend)


def test_rev_lif_keep_stash_false_is_fine_when_beta_shifts_nothing(backend):
    """With |beta1| = |beta2| = 1 nothing is shifted out, the backward needs no stash: keep_stash
    =False while autograd records is accepted (it is refused for |beta| < 1)."""
    x = torch.randn(5, 2, 4, device=DEVICE, requires_grad=True)
    kw = dict(beta1=-1.0, beta2=1.0, backend=backend)
    y, st = rev_lif(x, keep_stash=False, **kw)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    (g_ref,) = torch.autograd.grad(rev_lif(x, **kw)[0].square().sum(), x)
    assert st.stash.shape[0] == 0 and torch.equal(g, g_ref)
    with pytest.raises(ValueError, match="keep_stash=False"):
        rev_lif(x, keep_stash=False, backend=backend)


def test_rev_lif_inverse_names_a_changed_decay_input():
    """The inverse with another decay_input than its forward raises, naming the keyword the
    user passes (decay_input), not the config's internal int_decay_input."""
    x = torch.randn(4, 2, 6, device=DEVICE)
    y, st = rev_lif(x, keep_stash=True)
    with pytest.raises(ValueError, match="vs now: decay_input: True vs False"):
        rev_lif_inverse(y, st, decay_input=False)


def test_rev_lif_per_channel_params_along_a_later_dim(backend):
    """Per-channel tau / v_threshold count the channels of the split dim (here the last one,
    of another size than dim 2): accepted, and the node is the ground truth's."""
    g = torch.Generator().manual_seed(10)
    x = (torch.randn(6, 2, 3, 8, generator=g) * 1.5 + 0.3).to(DEVICE)
    tau = (1.5 + 3 * torch.rand(8, generator=g)).to(DEVICE)
    vth = (0.5 + torch.rand(8, generator=g)).to(DEVICE)
    y, st = rev_lif(x, tau=tau, v_threshold=vth, dim=-1, backend=backend)
    yr, sr = rev_lif_int(x, tau=tau, v_threshold=vth, dim=-1)
    assert torch.equal(y, yr) and torch.equal(st.v_fixed, sr.v_fixed)


def test_rev_lif_inverse_returns_a_state_without_stash(backend):
    """The initial state the inverse returns carries an empty stash (the forward's stash
    belonged to the call just undone), of the right pair count."""
    x = torch.randn(5, 2, 6, device=DEVICE)
    y, st = rev_lif(x, keep_stash=True, backend=backend)
    assert st.stash.shape[0] > 0
    _, s0 = rev_lif_inverse(y, st, backend=backend)
    assert tuple(s0.stash.shape) == (0, 6) and s0.stash.dtype == torch.int32


@pytest.mark.parametrize("alpha", [-2.0, 0.25, 4.0])
def test_rev_lif_alpha_scales_the_other_input(backend, alpha):
    """y = S + alpha * x_other for alpha != 1, checked against the real-valued equations (not
    through the grid the node derives from alpha): on dyadic inputs nothing rounds, so the
    two agree exactly, and the inverse gives x back."""
    shape = (5, 3, 8, 5)
    x = dyadic(shape, 1, bits=2, lo=-2, hi=3).to(DEVICE)
    y, st = rev_lif(x, alpha=alpha, keep_stash=True, backend=backend)
    yf, vf = rev_lif_float64(x.cpu(), alpha=alpha)
    assert st.error() is None
    assert torch.equal(y.double().cpu(), yf)
    assert torch.equal(st.v_fixed.double().cpu() * 2.0 ** -F_BITS, vf)
    assert torch.equal(rev_lif_inverse(y, st, alpha=alpha, backend=backend)[0], x)


def test_rev_lif_float64_input_range_is_float32s(backend):
    """float64 x shares float32's grid and range (README table: |x| <= 255 for alpha = 1):
    255 passes, 256 is flagged like any out-of-range input."""
    x = torch.full((3, 1, 2), 255.0, dtype=torch.float64, device=DEVICE)
    assert rev_lif(x, backend=backend)[1].error() is None
    x[1, 0, 0] = 256.0
    assert "outside the representable input range" in rev_lif(x, backend=backend)[1].error()


def test_rev_lif_float16_grid_and_range_of_the_readme(backend):
    """float16 (README table, alpha = 1): x on 2**-8 comes back exactly, |x| <= 7 passes and
    the next float16 above 7 is flagged."""
    x = torch.tensor([2.0 ** -8, -3 * 2.0 ** -8, 7.0, -7.0], dtype=torch.float16)
    x = x.reshape(1, 1, 4).repeat(3, 2, 1).to(DEVICE)
    y, st = rev_lif(x, keep_stash=True, backend=backend)
    assert st.error() is None
    assert torch.equal(rev_lif_inverse(y, st, backend=backend)[0], x)
    x[0, 0, 2] = torch.nextafter(torch.tensor(7.0, dtype=torch.float16),
                                 torch.tensor(8.0, dtype=torch.float16))
    assert "outside the representable input range" in rev_lif(x, backend=backend)[1].error()


def test_rev_lif_repr_shows_tensor_params_and_the_coupling_constants():
    node = revsnn.RevLIF(v_threshold=torch.tensor([0.5, 1.0, 1.5, 2.0]), tau=torch.tensor(3.0))
    r = repr(node)
    assert "v_threshold=tensor[4]" in r and "tau=tensor[]" in r
    plain = repr(revsnn.RevLIF())
    assert "tau=2.0, alpha=1.0, beta1=-0.5, beta2=0.5" in plain
    assert "v_threshold" not in plain and "surrogate" not in plain


def test_inverse_accepts_the_split_dim_negative_or_not(backend):
    # layout_of normalises dim: a forward split at dim=-2 and an inverse at dim=2 are the same
    # call (Made compares the normalised dim), and the round trip is exact
    x = (torch.randn(3, 2, 4, 3, generator=torch.Generator().manual_seed(0)) * 2 ** 4).round()
    x = (x / 2 ** 4).to(DEVICE)
    y, st = revsnn.functional.rev_lif(x, dim=-2, backend=backend, keep_stash=True)
    assert st.made.dim == 2
    x_back, _ = revsnn.functional.rev_lif_inverse(y, st, dim=2, backend=backend)
    assert torch.equal(x_back, x)


@pytest.mark.skipif("triton" not in backends(), reason="needs CUDA or TRITON_INTERPRET=1")
def test_half_input_parameter_gradients_summed_in_float32():
    # float16 x, float32 learnable tau / v_threshold: the kernel's per-neuron partials must stay
    # in the float32 accumulator (as the twin's) before the per-channel sum, not in x's dtype
    shape = (6, 2, 4, 33)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 1.5 + 0.3).half().to(DEVICE)
    gy = torch.randn(shape, generator=g).half().to(DEVICE)
    got = []
    for backend in ("triton", "torch"):
        tau = torch.tensor([2.0, 3.0, 2.5, 4.0], device=DEVICE, requires_grad=True)
        vth = torch.tensor([0.9, 1.1, 0.8, 1.0], device=DEVICE, requires_grad=True)
        y, _ = revsnn.functional.rev_lif(x, tau=tau, v_threshold=vth, backend=backend)
        got.append(torch.autograd.grad(y, (tau, vth), gy))
    for a, b in zip(*got):
        assert a.dtype == torch.float32 and b.abs().max() > 0
        assert_close_rel(a, b, rel=1e-5)
