"""Standard LIF node (SpikingJelly LIFNode semantics): kernel == twin, gradients against float64
BPTT, parameters, dtypes, state, memory, autograd plumbing, errors, layer."""
import math

import pytest
import torch

import revsnn
from revsnn.functional import lif, lif_step
from revsnn.reference import lif_bptt

from .conftest import DEVICE, SeenOps, assert_close_rel, assert_same_through_dispatcher

NODE_OPTIONS = {
    "hard": {},
    "soft": dict(v_reset=None),
    "no_decay": dict(decay_input=False, tau=4.0),
    "vr_vth": dict(v_reset=-0.25, v_threshold=0.75, tau=3.0),
    "soft_no_decay": dict(v_reset=None, decay_input=False, tau=1.5, v_threshold=0.3),
    "if": dict(tau=math.inf, v_reset=None, v_threshold=1.5),  # SpikingJelly's IFNode: V + X
}
REL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_x(shape, scale=1.5, dtype=torch.float32, seed=0, requires_grad=False, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * scale + shift).to(dtype).to(DEVICE)
    return x.requires_grad_(requires_grad)


def make_param(values, requires_grad=True):
    return torch.tensor(values, dtype=torch.float32, device=DEVICE).requires_grad_(requires_grad)


def grads(fn, x, v0, params, gs, gv):
    """Gradients of <spikes, gs> + <v_last, gv> w.r.t. x, v0 and the tensor parameters."""
    spikes, v_last = fn(x, v0, **params)
    loss = (spikes.double() * gs.double()).sum() + (v_last.double() * gv.double()).sum()
    leaves = [x, v0] + [p for p in params.values() if isinstance(p, torch.Tensor)]
    return spikes, v_last, torch.autograd.grad(loss, leaves)


def check_against_bptt(backend, kw, shape, dtype=torch.float32, seed=0):
    """Spikes equal and gradients (x, v0, tensor parameters) close to the float64 BPTT
    reference, for random x, v0 and upstream gradients; returns the op's results."""
    x = make_x(shape, dtype=dtype, seed=seed, requires_grad=True)
    v0 = make_x(shape[1:], scale=0.5, seed=seed + 1, shift=0.0, requires_grad=True)
    gs = make_x(shape, 1.0, dtype, seed=seed + 2, shift=0.0)
    gv = make_x(shape[1:], 1.0, seed=seed + 3, shift=0.0)
    s, v, g = grads(lambda a, b, **k: lif(a, b, backend=backend, **k), x, v0, kw, gs, gv)
    sr, vr, gr = grads(lif_bptt, x, v0, kw, gs, gv)
    assert torch.equal(s.double(), sr)
    for i, (a, b) in enumerate(zip(g, gr)):
        assert a.shape == b.shape
        assert b.abs().max() > 0.1  # every gradient carries signal
        # a parameter's gradient sums N*T float32 terms that largely cancel
        assert_close_rel(a, b, REL[dtype] if i < 2 else max(REL[dtype], 2e-4))
    return x, v0, s, v, g


# -- semantics -----------------------------------------------------------------------------------
@pytest.mark.parametrize("option,spikes,v_last", [
    # H: .75; .75 + (1.5 - .75)/2 = 1.125 fires (V = 0); .75; .375; .375 + 1.25/2 = 1.0 fires
    (dict(), [0, 1, 0, 0, 1], 0.0),
    # soft: V = .125 after the spike; .8125; .40625; 1.015625 fires, V = .015625
    (dict(v_reset=None), [0, 1, 0, 0, 1], 0.015625),
    # no decay, H = V - V/2 + X: 1.5 fires, 1.5 fires, 1.5 fires, 0, 1.625 fires
    (dict(decay_input=False), [1, 1, 1, 0, 1], 0.0),
    # starts at v_reset = -.5: .25, .625, .8125, .15625, .640625
    (dict(v_reset=-0.5), [0, 0, 0, 0, 0], 0.640625),
    # IF, soft reset, H = V + X (decay_input has no input to divide): 1.5, 2, 2.5, 1.5, 2.125
    (dict(tau=math.inf, v_reset=None), [1, 1, 1, 1, 1], 1.125),
])
def test_hand_computed_trajectory(backend, option, spikes, v_last):
    """x = 1.5, 1.5, 1.5, 0, 1.625 (exact binary fractions); tau 2, v_threshold 1. H equal to
    v_threshold fires (last step, hard reset)."""
    x = torch.tensor([1.5, 1.5, 1.5, 0.0, 1.625], device=DEVICE).view(5, 1, 1)
    s, v = lif(x, backend=backend, **option)
    assert s.flatten().tolist() == spikes
    assert v.item() == v_last


@pytest.mark.parametrize("option", list(NODE_OPTIONS))
@pytest.mark.parametrize("shape", [(5, 3, 7, 9), (3, 2, 33, 17), (16, 300), (1, 2, 5, 3)])
def test_forward_matches_twin_bit_exact(backend, option, shape):
    """Spikes and final potential are bit-identical to the torch twin (the CPU path), and the
    reference's spikes (computed by other code paths) agree."""
    kw = NODE_OPTIONS[option]
    x = make_x(shape, seed=len(shape))
    v0 = make_x(shape[1:], scale=0.5, seed=1, shift=0.0)
    s, v = lif(x, v0, backend=backend, **kw)
    st, vt = lif(x.cpu(), v0.cpu(), backend="torch", **kw)
    assert s.dtype == x.dtype and v.dtype == torch.float32
    assert torch.equal(s.cpu(), st) and torch.equal(v.cpu(), vt)
    sr, vr = lif_bptt(x, v0, **kw)
    assert torch.equal(s.double(), sr) and torch.equal(v.double(), vr)
    assert set(s.unique().tolist()) == {0.0, 1.0}


def test_per_channel_forward(backend):
    """Per-channel tau / v_threshold along dim (default 2, and a trailing dim): bit-identical to
    the twin and equal to running each channel alone with float parameters."""
    x = make_x((6, 2, 5, 4, 3), seed=3)
    tau = torch.tensor([1.5, 2.0, 3.0, 7.0, 1.1], device=DEVICE)
    vth = torch.tensor([0.2, 0.5, 1.0, 1.5, 0.9], device=DEVICE)
    s, v = lif(x, tau=tau, v_threshold=vth, v_reset=None, backend=backend)
    for c in range(5):
        sc, vc = lif(x[:, :, c], tau=tau[c].item(), v_threshold=vth[c].item(), v_reset=None,
                     backend=backend)
        assert torch.equal(s[:, :, c], sc) and torch.equal(v[:, c], vc)
    xl = x.movedim(2, -1).contiguous()
    sl, vl = lif(xl, tau=tau, v_threshold=vth, v_reset=None, dim=-1, backend=backend)
    assert torch.equal(sl, s.movedim(2, -1)) and torch.equal(vl, v.movedim(1, -1))


# -- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["hard", "soft", "no_decay", "vr_vth", "if"])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "fast_sigmoid"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_gradients_match_float64_bptt(backend, option, surrogate, detach_reset):
    kw = dict(NODE_OPTIONS[option], surrogate=surrogate, detach_reset=detach_reset)
    _, _, s, _, _ = check_against_bptt(backend, kw, (7, 3, 5, 11), seed=2)
    assert 0.05 < s.mean().item() < 0.6  # neurons fire, and not always


@pytest.mark.parametrize("option", ["hard", "soft", "no_decay", "soft_no_decay"])
@pytest.mark.parametrize("kind", ["per_channel", "one_element"])
def test_parameter_gradients(backend, option, kind):
    """Learnable tau and v_threshold (nn.Parameter-like leaves) get the float64 BPTT gradient."""
    kw = {k: v for k, v in NODE_OPTIONS[option].items() if k not in ("tau", "v_threshold")}
    if kind == "per_channel":
        kw.update(tau=make_param([1.5, 2.0, 3.0, 4.5, 9.0]),
                  v_threshold=make_param([0.4, 0.8, 1.0, 1.2, 0.6]))
    else:
        kw.update(tau=make_param([2.5]), v_threshold=make_param(0.7))
    check_against_bptt(backend, kw, (6, 2, 5, 37), seed=6)  # 370 neurons: two programs


def test_parameter_gradient_without_initial_state(backend):
    """tau's gradient through the first charge uses the default initial potential v_reset."""
    x = make_x((5, 3, 4), seed=10, requires_grad=True)
    tau = make_param([1.7, 2.2, 6.0, 3.0])
    kw = dict(tau=tau, v_reset=-0.5, decay_input=False)
    (gt,) = torch.autograd.grad(lif(x, backend=backend, **kw)[1].sum(), tau)
    (gtr,) = torch.autograd.grad(lif_bptt(x, **kw)[1].sum(), tau)
    assert_close_rel(gt, gtr)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, dtype):
    """Half inputs: spikes in the input dtype, membrane in float32, forward bit-identical to the
    twin; float64 all the way (parameters too, even on the Triton path)."""
    tau = make_param([1.3, 2.0, 2.7, 3.3, 5.1, 9.9]).to(dtype).detach().requires_grad_()
    kw = dict(tau=tau, v_threshold=0.3, v_reset=0.1)
    x, v0, s, v, g = check_against_bptt(backend, kw, (8, 2, 6, 5), dtype, seed=11)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert s.dtype == dtype and v.dtype == acc
    assert g[0].dtype == dtype and g[1].dtype == torch.float32 and g[2].dtype == dtype
    st, vt = lif(x.detach().cpu(), v0.detach().cpu(), backend="torch",
                 **dict(kw, tau=tau.detach().cpu()))
    assert torch.equal(s.cpu(), st) and torch.equal(v.cpu(), vt)


def test_gradient_flows_across_calls(backend):
    """The final potential is differentiable: two chained calls give the one-call result and
    gradient (SpikingJelly's multi-call BPTT)."""
    x = make_x((9, 2, 4, 5), seed=15, requires_grad=True)
    tau = make_param([2.0, 3.0, 1.5, 4.0])
    s, v = lif(x, tau=tau, backend=backend)
    sa, va = lif(x[:4], tau=tau, backend=backend)
    sb, vb = lif(x[4:], va, tau=tau, backend=backend)
    assert torch.equal(torch.cat([sa, sb]), s) and torch.equal(vb, v)
    gs = make_x(x.shape, 1.0, seed=16, shift=0)
    g1 = torch.autograd.grad((s * gs).sum() + v.sum(), (x, tau))
    g2 = torch.autograd.grad((torch.cat([sa, sb]) * gs).sum() + vb.sum(), (x, tau))
    for a, b in zip(g1, g2):
        assert_close_rel(a, b, 1e-6)


def test_step_by_step_loop(backend):
    """lif_step in a Python loop (snnTorch style) == one multi-step call, forward and backward;
    and so does the layer in step_mode="s"."""
    x = make_x((6, 3, 4, 2), seed=17, requires_grad=True)
    vth = make_param([0.5, 1.0, 1.5, 0.8])
    kw = dict(v_threshold=vth, v_reset=None, surrogate="atan", backend=backend)
    s, v = lif(x, **kw)
    v_step, outs = None, []
    for t in range(x.shape[0]):
        st, v_step = lif_step(x[t], v_step, **kw)
        outs.append(st)
    s_loop = torch.stack(outs)
    assert torch.equal(s_loop, s) and torch.equal(v_step, v)
    gs = make_x(x.shape, 1.0, seed=18, shift=0)
    g1 = torch.autograd.grad((s * gs).sum(), (x, vth))
    g2 = torch.autograd.grad((s_loop * gs).sum(), (x, vth))
    for a, b in zip(g1, g2):
        assert_close_rel(a, b, 1e-6)
    node = revsnn.LIF(v_threshold=vth, v_reset=None, surrogate="atan", step_mode="s",
                      backend=backend)
    assert torch.equal(torch.stack([node(xt) for xt in x]), s)
    assert torch.equal(node.v, v)


# -- kernels, memory, autograd plumbing ----------------------------------------------------------
def test_one_launch_per_pass(count_launches):
    if DEVICE == "cpu" and not revsnn.ops._dispatch.interpreting():
        pytest.skip("Triton cannot run here: no GPU and TRITON_INTERPRET unset")
    counts = count_launches("lif")
    x = make_x((6, 3, 7, 9), seed=0, requires_grad=True)
    tau, vth = make_param([2.0] * 7), make_param([1.0])
    s, v = lif(x, tau=tau, v_threshold=vth, backend="triton")
    assert counts == {"lif_fwd_kernel": 1, "lif_bwd_kernel": 0}
    (s.sum() + v.sum()).backward()
    assert counts == {"lif_fwd_kernel": 1, "lif_bwd_kernel": 1}
    assert tau.grad is not None and vth.grad is not None


def saved_tensors(fn):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("dtype,per_step", [(torch.float32, 4), (torch.float16, 4),
                                            (torch.bfloat16, 4), (torch.float64, 8)])
@pytest.mark.parametrize("T", [1, 4, 16])
def test_kept_for_backward(backend, dtype, per_step, T):
    """Only H (the membrane dtype: 4 bytes per neuron per step, as SpikingJelly's Triton
    backend's h_seq) is kept: no spikes, no input, no per-step reset potential."""
    B, C, H = 2, 6, 5
    x = make_x((T, B, C, H), dtype=dtype, seed=T, requires_grad=True)
    v0 = make_x((B, C, H), seed=1, requires_grad=True)
    (s, v), saved = saved_tensors(lambda: lif(x, v0, backend=backend))
    assert len(saved) == 1 and saved[0].shape == (T, B * C * H)
    assert saved[0].data_ptr() not in (s.data_ptr(), x.data_ptr())
    assert saved[0].numel() * saved[0].element_size() / (T * B * C * H) == per_step
    # a learnable tau adds the initial potential (once per neuron) and the parameters themselves
    tau, vth = make_param([2.0] * C), make_param([1.0] * C)
    _, saved = saved_tensors(lambda: lif(x, v0, tau=tau, v_threshold=vth, backend=backend))
    nbytes = sum(t.numel() * t.element_size() for t in saved)
    assert nbytes == per_step * (T * B * C * H + v0.numel() + 2 * C)  # all in the membrane dtype
    with torch.no_grad():
        _, saved = saved_tensors(lambda: lif(x, v0, backend=backend))
    assert saved == []


def test_direct_and_dispatched_calls_agree(backend):
    """Eager calls run the ops' implementations directly; under a dispatch mode they go through
    torch.ops (revsnn/ops/_dispatch.py): the same bits either way."""
    x = make_x((4, 3, 5, 2), seed=21, requires_grad=True)
    v0 = make_x((3, 5, 2), scale=0.5, seed=22, shift=0.0, requires_grad=True)
    params = dict(tau=make_param([2.0, 3.0, 1.5, 4.0, 2.5]), v_threshold=0.9)
    gs = make_x(x.shape, 1.0, seed=23, shift=0.0)
    gv = make_x(v0.shape, 1.0, seed=24, shift=0.0)

    def run():
        s, v, g = grads(lambda a, b, **k: lif(a, b, backend=backend, **k), x, v0, params, gs, gv)
        return (s, v) + tuple(g)
    assert_same_through_dispatcher(run, ["revsnn::lif_fwd", "revsnn::lif_bwd"])


@pytest.mark.parametrize("uses", ["spikes", "potential", "both"])
def test_backward_fills_only_the_gradients_it_needs(backend, uses):
    """H takes no gradient (no [T, N] tensor of zeros per backward); an unused output's
    gradient is zeros of that output's size, made only then."""
    x = make_x((4, 3, 5), seed=25, requires_grad=True)
    s, v = lif(x, backend=backend)
    loss = {"spikes": s.sum(), "potential": v.sum(), "both": s.sum() + v.sum()}[uses]
    with SeenOps() as seen:
        loss.backward()
    want = {"spikes": [v.numel()], "potential": [s.numel()], "both": []}[uses]
    assert seen.filled_before("revsnn::lif_bwd") == want


def test_compile_fullgraph(backend):
    """torch.compile(fullgraph=True) traces through the custom ops (aot_eager: no codegen)."""
    tau = make_param([2.0, 3.0, 1.5, 4.0, 2.5])

    def f(x, v0):
        s, v = lif(x, v0, tau=tau, v_threshold=0.9, v_reset=None, backend=backend)
        return (s * torch.linspace(-1, 1, s.numel(), device=s.device).view_as(s)).sum() + \
            v.square().sum()

    x = make_x((4, 3, 5, 2), seed=19, requires_grad=True)
    v0 = make_x((3, 5, 2), scale=0.5, seed=20, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    lc = compiled(x, v0)
    gc_ = torch.autograd.grad(lc, (x, v0, tau))
    le = f(x, v0)
    ge = torch.autograd.grad(le, (x, v0, tau))
    assert torch.equal(lc, le)
    for a, b in zip(gc_, ge):
        assert torch.equal(a, b)


def test_layouts_and_empty(backend):
    base = make_x((5, 3, 4, 6), seed=21)
    xt = base.transpose(2, 3)  # non-contiguous view
    s, v = lif(xt, backend=backend)
    st, vt = lif(xt.contiguous(), backend=backend)
    assert torch.equal(s, st) and torch.equal(v, vt)
    xe = torch.zeros(3, 2, 4, 0, device=DEVICE, requires_grad=True)  # an empty trailing dim
    s, v = lif(xe, tau=make_param([2.0] * 4), v_threshold=make_param([1.0] * 4), backend=backend)
    assert s.shape == xe.shape and v.shape == (2, 4, 0)
    x = torch.zeros(3, 0, 4, device=DEVICE, requires_grad=True)
    tau = make_param([2.0] * 4)
    s, v = lif(x, tau=tau, backend=backend)
    (s.sum() + v.sum()).backward()
    assert s.shape == x.shape and v.shape == (0, 4) and x.grad.shape == x.shape
    assert torch.equal(tau.grad, torch.zeros(4, device=DEVICE))


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("call,exc,match", [
    (lambda x: lif(x[0, 0, 0]), ValueError, "rank"),
    (lambda x: lif(x.int()), TypeError, "float32"),
    (lambda x: lif(x[:0]), ValueError, "T >= 1"),
    (lambda x: lif(x, torch.zeros(2, 6)), ValueError, "v must have shape"),
    (lambda x: lif(x, torch.zeros(2, 6, 3, device="meta")), ValueError, "v is on meta"),
    (lambda x: lif(x, torch.zeros(2, 6, 3, dtype=torch.int64)), TypeError, "v must be"),
    (lambda x: lif(x, 0.0), TypeError, "v must be"),
    (lambda x: lif(x, tau=1.0), ValueError, "tau must be > 1"),
    (lambda x: lif(x, tau=float("nan")), ValueError, "tau must be finite"),
    (lambda x: lif(x, tau=-math.inf), ValueError, r"tau must be finite \(or math.inf\)"),
    (lambda x: lif(x, tau="2"), TypeError, "tau must be a float"),
    (lambda x: lif(x, tau=torch.ones(5, device=x.device) * 2), ValueError,
     r"tau must be .*shape \[6\]"),
    (lambda x: lif(x, tau=torch.ones(6, dtype=torch.int64)), TypeError, "tau must be float32"),
    (lambda x: lif(x, tau=torch.ones(6, device="meta")), ValueError, "tau is on meta"),
    (lambda x: lif(x, v_threshold=torch.ones(6), dim=4), ValueError, "dim"),
    (lambda x: lif(x, v_threshold=torch.ones(6), dim=1.5), TypeError, "dim"),
    (lambda x: lif(x, v_threshold=float("inf")), ValueError, "v_threshold"),
    (lambda x: lif(x, v_reset="0"), TypeError, "v_reset"),
    (lambda x: lif(x, surrogate="relu"), ValueError, "surrogate"),
    (lambda x: lif(x, surrogate_alpha=-1.0), ValueError, "surrogate_alpha"),
    (lambda x: lif(x, backend="cuda"), ValueError, "backend"),
    (lambda x: lif_step(x[0, 0, 0, 0]), ValueError, "rank"),
    (lambda x: revsnn.LIF(tau=torch.tensor([2.0, 0.5])), ValueError, "tau must be finite and > 1"),
    (lambda x: revsnn.LIF(step_mode="x"), ValueError, "step_mode"),
    (lambda x: lif(x, v_reset=torch.zeros(6)), TypeError, "v_reset must be a float or None"),
    (lambda x: revsnn.LIF(v_reset=torch.zeros(())), TypeError, "v_reset"),
    (lambda x: lif(x, decay_input="no"), TypeError, "decay_input must be True or False"),
    (lambda x: lif(x, tau=torch.ones(0)), ValueError, "tau must be"),
    (lambda x: revsnn.LIF(detach_reset=None), TypeError, "detach_reset"),
    (lambda x: revsnn.LIF(learn_tau=True, channels=True), ValueError, "channels"),
    (lambda x: revsnn.LIF(tau=math.inf, learn_tau=True), ValueError, "no leak to learn"),
    (lambda x: revsnn.LIF(tau=torch.tensor([2.0, math.inf]), decay_input=False, learn_tau=True),
     ValueError, "no leak to learn"),
    (lambda x: revsnn.LIF(tau=torch.nn.Parameter(torch.tensor([2.0, math.inf])),
                          decay_input=False), ValueError, "a learned tau .* must be finite"),
    (lambda x: revsnn.LIF(dim="a", step_mode="s"), TypeError, "dim must be an int"),
    (lambda x: revsnn.LIF(dim=0, step_mode="s"), ValueError, "time dim"),
    (lambda x: revsnn.LIF(surrogate="relu"), ValueError, "surrogate"),
    (lambda x: lif(x.tolist()), TypeError, "x must be a torch.Tensor, got list"),
])
def test_bad_input(call, exc, match):
    x = torch.zeros(4, 2, 6, 3, device=DEVICE)
    with pytest.raises(exc, match=match):
        call(x)


# -- layer ---------------------------------------------------------------------------------------
def test_layer_keeps_state_until_reset(backend):
    node = revsnn.LIF(v_reset=None, tau=3.0, backend=backend)
    x = make_x((10, 2, 6, 3), seed=22)
    s_full, v_full = lif(x, v_reset=None, tau=3.0, backend=backend)
    sa = node(x[:4])
    sb = node(x[4:])
    assert torch.equal(torch.cat([sa, sb]), s_full) and torch.equal(node.v, v_full)
    node.reset()
    assert node.v is None
    assert torch.equal(node(x[:4]), sa)
    r = repr(node)
    assert r.startswith("LIF(tau=3.0, v_threshold=1.0, v_reset=None") and "decay_input" not in r
    assert repr(revsnn.LIF(step_mode="s")) == "LIF(tau=2.0, v_threshold=1.0, step_mode='s')"


def test_layer_if_channels(backend):
    """A tensor tau may hold inf with decay_input=False (a learned snnTorch beta clamped at 1):
    those channels integrate V + X with no leak; with decay_input the input would be divided
    by inf, so the layer refuses it."""
    tau = torch.tensor([2.0, math.inf, 3.0, math.inf, 2.0, 4.0], device=DEVICE)
    node = revsnn.LIF(tau=tau, decay_input=False, v_reset=None, backend=backend)
    x = make_x((5, 2, 6, 3), seed=31)
    s, v = node(x), node.v
    sr, vr = lif_bptt(x.double(), tau=tau.double(), decay_input=False, v_reset=None)
    assert torch.equal(s, sr.float())
    assert_close_rel(v, vr.float())
    acc, spikes = torch.zeros_like(x[0, :, 1]), []
    for xt in x[:, :, 1]:  # channel 1 by hand: integrate, fire at 1, subtract 1
        acc = acc + xt
        spikes.append((acc >= 1).float())
        acc = acc - spikes[-1]
    assert torch.equal(s[:, :, 1], torch.stack(spikes)) and s[:, :, 1].sum() > 0
    with pytest.raises(ValueError, match=r"tau must be finite and > 1.0, got inf"):
        revsnn.LIF(tau=tau)


def test_layer_parameters(backend):
    node = revsnn.LIF(learn_tau=True, learn_threshold=True, channels=6,
                      backend=backend).to(DEVICE)
    assert {n: tuple(p.shape) for n, p in node.named_parameters()} == {
        "tau": (6,), "v_threshold": (6,)}
    assert "tau=tensor[6]" in repr(node)
    scalar = revsnn.LIF(learn_tau=True)
    assert tuple(scalar.tau.shape) == () and scalar.v_threshold == 1.0
    p = torch.nn.Parameter(torch.full((6,), 2.0))
    shared = revsnn.LIF(tau=p, v_threshold=torch.ones(6))
    assert shared.tau is p and "v_threshold" in dict(shared.named_buffers())
    x = make_x((5, 2, 6, 3), seed=23)
    node(x).sum().backward()
    assert node.tau.grad.shape == (6,) and node.v_threshold.grad.abs().sum() > 0


def test_learnable_parameters_train(backend):
    """Only tau and v_threshold learn: each channel's firing rate moves to its target."""
    node = revsnn.LIF(tau=3.0, learn_tau=True, learn_threshold=True, channels=4,
                      backend=backend).to(DEVICE)
    x = make_x((8, 32, 4), scale=1.0, seed=24)
    target = torch.tensor([0.1, 0.3, 0.5, 0.7], device=DEVICE)
    opt = torch.optim.Adam(node.parameters(), lr=0.05)

    def loss_fn():
        node.reset()
        return (node(x).mean(dim=(0, 1)) - target).square().sum()

    first = loss_fn().item()
    for _ in range(40):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.1 * first
    assert (node.tau > 1).all() and not torch.equal(node.tau, torch.full_like(node.tau, 3.0))


def test_lif_learn_tau_makes_a_tensor_a_parameter():
    m = revsnn.LIF(tau=torch.tensor([2.0, 3.0]), learn_tau=True, channels=2, backend="torch")
    assert isinstance(m.tau, torch.nn.Parameter)
    assert "tau" in dict(m.named_parameters())


@pytest.mark.parametrize("v_reset", [0.0, None])
def test_lif_gradient_when_h_equals_threshold(backend, v_reset):
    """H == v_threshold fires, in the backward too: with hard reset dV/dH = 1 - S = 0 there;
    with soft reset S enters dL/dv_threshold. x = 2, tau = 2 from V = 0 gives H = 1 exactly
    at every step for the first neurons."""
    T, N = 5, 7
    x = torch.full((T, 3, N), 2.0, device=DEVICE)
    x[:, :, 4:] = torch.tensor([0.5, 1.5, 3.0], device=DEVICE)
    x.requires_grad_()
    v0 = torch.zeros(3, N, device=DEVICE, requires_grad=True)
    vth = torch.tensor([1.0], device=DEVICE, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    gs = torch.randn(x.shape, generator=g).to(DEVICE)
    gv = torch.randn(v0.shape, generator=g).to(DEVICE)
    kw = dict(tau=2.0, v_threshold=vth, v_reset=v_reset)
    out = []
    for fn in (lambda *a, **k: lif(*a, backend=backend, **k), lif_bptt):
        s, v = fn(x, v0, **kw)
        loss = (s.double() * gs.double()).sum() + (v.double() * gv.double()).sum()
        out.append((s.double(), torch.autograd.grad(loss, (x, v0, vth))))
    assert torch.equal(out[0][0], out[1][0]) and out[0][0][:, :, 0].eq(1).all()
    for a, b in zip(out[0][1], out[1][1]):
        assert_close_rel(a, b)


def test_lif_per_channel_tau_with_one_element_threshold(backend):
    """A per-channel tau (read per neuron) with a one-element learnable v_threshold (its
    gradient summed over each program's lanes, masked ones included) on a size that leaves
    masked lanes: the masked lanes' stand-in tau must keep their terms zero (not NaN)."""
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(6, 2, 5, 37, generator=g) * 1.5 + 0.5).to(DEVICE).requires_grad_()
    tau = torch.tensor([1.5, 2.0, 3.0, 4.5, 9.0], device=DEVICE, requires_grad=True)
    vth = torch.tensor([0.7], device=DEVICE, requires_grad=True)
    gs = torch.randn(x.shape, generator=g).to(DEVICE)
    res = []
    for fn in (lambda *a, **k: lif(*a, backend=backend, **k), lif_bptt):
        s, _ = fn(x, tau=tau, v_threshold=vth)
        res.append(torch.autograd.grad((s.double() * gs.double()).sum(), (x, tau, vth)))
    for a, b in zip(*res):
        assert torch.isfinite(a).all()
        assert_close_rel(a, b, 2e-4)


def test_lif_bptt_reference_takes_a_negative_channel_dim(backend):
    """lif_bptt with per-channel parameters along dim=-1 is lif's ground truth there as along
    the same dim counted from the front: same spikes, and the op's gradients match it."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(6, 2, 3, 5, generator=g) + 0.5).to(DEVICE).requires_grad_()
    tau = torch.tensor([1.5, 2.0, 3.0, 4.5, 9.0], device=DEVICE, requires_grad=True)
    vth = torch.tensor([0.4, 0.8, 1.0, 1.2, 0.6], device=DEVICE)
    kw = dict(tau=tau, v_threshold=vth)
    sr, vr = lif_bptt(x, dim=-1, **kw)
    sr3, vr3 = lif_bptt(x, dim=3, **kw)
    assert torch.equal(sr, sr3) and torch.equal(vr, vr3)
    s, v = lif(x, dim=-1, backend=backend, **kw)
    assert torch.equal(s.double(), sr)
    gs = torch.randn(x.shape, generator=g).to(DEVICE)
    for a, b in zip(torch.autograd.grad((s * gs).sum() + v.sum(), (x, tau)),
                    torch.autograd.grad((sr * gs.double()).sum() + vr.sum(), (x, tau))):
        assert_close_rel(a, b, 2e-4)


def test_lif_bptt_rounds_v_reset_like_the_op():
    """lif_bptt's derivatives are taken at the op's values, v_reset rounded to the float32
    membrane: given v_reset = 0.1 or its float32 rounding it returns the same numbers (as the
    op does; dU/dS = v_reset - H of the hard reset shows the difference)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(6, 3, 4, generator=g) + 0.5).requires_grad_()
    vr32 = float(torch.tensor(0.1, dtype=torch.float32))
    assert vr32 != 0.1
    out = []
    for vr in (0.1, vr32):
        s, vT = lif_bptt(x, v_reset=vr, decay_input=False)
        out.append((s, vT, *torch.autograd.grad((s * x).sum() + vT.sum(), x)))
    for a, b in zip(*out):
        assert torch.equal(a, b)
    s, vT = lif(x, v_reset=0.1, decay_input=False, backend="torch")
    assert torch.equal(s.double(), out[0][0]) and torch.equal(vT.double(), out[0][1])


def test_lif_initial_potential_alone_requiring_grad(backend):
    """Only v requires grad (x does not): the call records H and v gets the BPTT gradient."""
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(6, 3, 4, generator=g) + 0.5).to(DEVICE)
    v = (torch.randn(3, 4, generator=g) * 0.5).to(DEVICE).requires_grad_()
    s, vT = lif(x, v, backend=backend)
    (gv,) = torch.autograd.grad((s * x).sum() + vT.sum(), v)
    sr, vr = lif_bptt(x, v)
    (gvr,) = torch.autograd.grad((sr * x.double()).sum() + vr.sum(), v)
    assert gvr.abs().max() > 0.1
    assert_close_rel(gv, gvr)


@pytest.mark.parametrize("dim,shape", [(-1, (3, 2, 5)), (0, (5, 3, 2))])
def test_lif_step_channel_dim_negative_or_first(backend, dim, shape):
    """lif_step's dim counts x's dims ([B, *], no T): a negative one, or 0, selects the same
    channels as in lif over x[None]."""
    g = torch.Generator().manual_seed(12)
    x = (torch.randn(shape, generator=g) + 0.5).to(DEVICE)
    tau = torch.tensor([1.5, 2.0, 3.0, 4.5, 9.0], device=DEVICE)
    vth = torch.tensor([0.4, 0.8, 1.0, 1.2, 0.6], device=DEVICE)
    s, v = lif_step(x, tau=tau, v_threshold=vth, dim=dim, backend=backend)
    s1, v1 = lif(x[None], tau=tau, v_threshold=vth, dim=dim if dim < 0 else dim + 1,
                 backend=backend)
    assert torch.equal(s, s1[0]) and torch.equal(v, v1)


def test_lif_single_step_negative_dim_is_the_same_channel_dim():
    """dim=-1 names the last dim in both step modes (only a positive dim shifts by the missing
    T in step_mode='s')."""
    thr = torch.tensor([0.3, 0.6, 0.9, 1.2, 1.5])
    x = torch.rand(4, 3, 5) * 1.5
    multi = revsnn.LIF(v_threshold=thr, dim=-1, backend="torch")
    single = revsnn.LIF(v_threshold=thr, dim=-1, step_mode="s", backend="torch")
    ref = multi(x)
    assert 0 < ref.mean() < 1
    assert torch.equal(torch.stack([single(xt) for xt in x]), ref)


def test_lif_backward_op_returns_dx_in_the_spike_dtype(backend):
    # lif_bwd's dL/dx has gs's dtype (as its fake impl promises, which torch.compile relies on),
    # not the float32 membrane dtype; autograd would hide a mismatch by casting
    from revsnn._config import LIFConfig
    from revsnn.ops import lif as lif_op
    cfg = LIFConfig(True, 0.0, "sigmoid", 4.0, False)
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(5, 300, generator=g) + 0.5).half().to(DEVICE)
    gs = torch.randn(5, 300, generator=g).half().to(DEVICE)
    _, _, h = lif_op.launch_fwd(x, None, None, 2.0, None, 1.0, cfg, 1, 1, True, backend)
    gv = torch.zeros(300, device=DEVICE)
    gx, gv0, _, _ = lif_op.launch_bwd(gs, gv, h, None, None, 2.0, None, 1.0, cfg, 1, 1,
                                      False, False, backend)
    assert gx.dtype == torch.float16 and gv0.dtype == torch.float32


def test_lif_forward_without_save_h_allocates_no_h(backend):
    # inference (save_h=False) keeps no [T, N] buffer of charged potentials: H is [0, N], as
    # lif_fwd's fake impl says
    from revsnn._config import LIFConfig
    from revsnn.ops import lif as lif_op
    cfg = LIFConfig(True, 0.0, "sigmoid", 4.0, False)
    x = torch.randn(4, 300, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    s, vT, h = lif_op.launch_fwd(x, None, None, 2.0, None, 1.0, cfg, 1, 1, False, backend)
    assert h.shape == (0, 300) and s.shape == x.shape and vT.shape == (300,)
