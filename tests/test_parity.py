"""Parity of revsnn.LIF with the real libraries: SpikingJelly ``LIFNode`` (its torch path on CPU,
its Triton kernels interpreted on CPU and compiled on CUDA), snnTorch ``Leaky`` and Norse's
single-state LIF (``LIFBoxCell``, and ``LIF`` when its synaptic current lasts one step).

The peer libraries are optional (``.venv/bin/pip install --no-deps -r requirements-peers.txt``);
a library that cannot be imported skips its tests, naming it."""
import importlib

import pytest
import torch

import revsnn

from .conftest import HAS_CUDA, INTERPRET, assert_close_rel, dyadic

INSTALL = ".venv/bin/pip install --no-deps -r requirements-peers.txt"


def peer(module: str, *submodules: str):
    """(module, None) if the peer library imports (with the submodules named, as attributes),
    else (None, a skip reason naming it)."""
    try:
        mod = importlib.import_module(module)
        for sub in submodules:
            importlib.import_module(f"{module}.{sub}")
        return mod, None
    except Exception as e:  # an absent library, or one of its own imports missing
        return None, f"{module.split('.')[0]} cannot be imported ({e}); install: {INSTALL}"


sj, SJ_MISSING = peer("spikingjelly.activation_based", "neuron", "surrogate", "functional",
                      "layer")
snn, SNN_MISSING = peer("snntorch")
norse, NORSE_MISSING = peer("norse.torch")
needs_sj = pytest.mark.skipif(sj is None, reason=str(SJ_MISSING))
needs_snn = pytest.mark.skipif(snn is None, reason=str(SNN_MISSING))
needs_norse = pytest.mark.skipif(norse is None, reason=str(NORSE_MISSING))


def rand(shape, scale=1.0, shift=0.0, seed=0, dtype=torch.float32, device="cpu", grad=False):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g) * scale + shift).to(dtype).to(device)
    return t.requires_grad_(grad)


def sj_surrogate(name):
    return sj.surrogate.Sigmoid() if name == "sigmoid" else sj.surrogate.ATan()


# -- SpikingJelly --------------------------------------------------------------------------------
RESETS = {  # name: (tau, v_threshold, v_reset)
    "hard": (2.0, 1.0, 0.0),
    "soft": (1.7, 1.0, None),
    "hard_vr": (1.6, 0.75, -0.25),
}


def sj_node(reset, decay_input, detach_reset, surrogate):
    tau, vth, vr = RESETS[reset]
    return sj.neuron.LIFNode(tau=tau, decay_input=decay_input, v_threshold=vth, v_reset=vr,
                      surrogate_function=sj_surrogate(surrogate), detach_reset=detach_reset,
                      step_mode="m")


def rev_node(reset, decay_input, detach_reset, surrogate, backend):
    tau, vth, vr = RESETS[reset]
    return revsnn.LIF(tau=tau, decay_input=decay_input, v_threshold=vth, v_reset=vr,
                      surrogate=surrogate, detach_reset=detach_reset, backend=backend)


def run_pair(node, x, v0, gs, gv):
    """Spikes, final potential and d(loss)/d(x, v0) of a stateful node started at v0."""
    node.v = v0
    s = node(x)
    v = node.v
    gx, g0 = torch.autograd.grad((s * gs).sum() + (v * gv).sum(), (x, v0))
    return s, v, gx, g0


def assert_exact(out, s_ref, v_ref, g_ref):
    """Spikes and final potential bit-equal (and neurons fire), gradients within 1e-6."""
    s, v, *g = out
    assert s_ref.mean() > 0.02
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    for a, b in zip(g, g_ref):
        assert_close_rel(a, b, rel=1e-6)


def assert_sj_parity(reset, decay_input, detach_reset, surrogate, shape, backend, seed=0):
    # Triton runs compiled on CUDA tensors where a GPU is present, else interpreted on the CPU
    dev = "cuda" if backend == "triton" and HAS_CUDA else "cpu"
    x = rand(shape, 1.5, 0.4, seed, device=dev, grad=True)
    v0 = rand(shape[1:], 0.5, 0.3, seed + 1, device=dev, grad=True)
    gs, gv = rand(shape, seed=seed + 2, device=dev), rand(shape[1:], seed=seed + 3, device=dev)
    ref = run_pair(sj_node(reset, decay_input, detach_reset, surrogate), x, v0, gs, gv)
    out = run_pair(rev_node(reset, decay_input, detach_reset, surrogate, backend), x, v0, gs,
                   gv)
    assert ref[0].mean() > 0.02  # neurons fire: the comparison means something
    assert torch.equal(out[0], ref[0])  # spikes bit-equal
    for a, b in zip(out[1:], ref[1:]):
        assert_close_rel(a, b, rel=1e-6)


@needs_sj
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("reset", list(RESETS))
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("T", [1, 4, 16, 64])
def test_lif_matches_spikingjelly_cpu(T, decay_input, reset, detach_reset, surrogate):
    """SpikingJelly's CPU path (torch autograd through its reference step) against the torch
    twin: spikes bit-equal, final potential and gradients (input and v0) within 1e-6."""
    assert sj.functional.neuron_implementation("lif", torch.device("cpu"))[
        "implementation"] == "torch-reference"
    for i, shape in enumerate([(T, 3, 5, 7), (T, 2, 33)]):
        assert_sj_parity(reset, decay_input, detach_reset, surrogate, shape, "torch", seed=i)


@needs_sj
@pytest.mark.skipif(not (HAS_CUDA or INTERPRET), reason="Triton needs a GPU or the interpreter")
@pytest.mark.parametrize("case", [(4, True, "hard", False, "sigmoid"),
                                  (16, False, "soft", True, "atan"),
                                  (16, True, "hard_vr", False, "atan")])
def test_lif_triton_matches_spikingjelly(case, count_launches):
    """revsnn's Triton kernels (interpreted on CPU) against SpikingJelly, on a size that is not
    a multiple of the block."""
    counts = count_launches("lif")
    T, decay_input, reset, detach_reset, surrogate = case
    assert_sj_parity(reset, decay_input, detach_reset, surrogate, (T, 2, 3, 37), "triton")
    assert all(n >= 1 for n in counts.values()), counts


@needs_sj
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lif_matches_spikingjelly_half_input_cpu(dtype):
    """Half-precision input, float32 membrane (SpikingJelly's functional form with a float32
    state): spikes bit-equal, gradients within the dtype's rounding."""
    tau, vth, vr = RESETS["hard_vr"]
    x = rand((16, 2, 6, 9), 1.5, 0.4, 5, dtype=dtype, grad=True)
    gs = rand(x.shape, seed=6, dtype=dtype)
    s_ref, v_ref, _ = sj.functional.lif_multi_step(
        x, torch.full(x.shape[1:], vr), tau, True, vth, vr, sj_surrogate("sigmoid"), False)
    (g_ref,) = torch.autograd.grad((s_ref * gs).sum(), x)
    s, v = revsnn.functional.lif(x, tau=tau, v_threshold=vth, v_reset=vr, backend="torch")
    (g,) = torch.autograd.grad((s * gs).sum(), x)
    assert s.dtype == dtype and torch.equal(s, s_ref) and torch.equal(v, v_ref)
    assert g.dtype == dtype
    assert_close_rel(g, g_ref, rel=2 * torch.finfo(dtype).eps)


def sj_triton():
    return importlib.import_module("spikingjelly._ops.lif.triton")


@needs_sj
@pytest.mark.skipif(not INTERPRET, reason="runs SpikingJelly's Triton kernels in the interpreter")
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_lif_matches_spikingjelly_triton_kernels_interpreted(reset):
    """SpikingJelly's own Triton kernels (its CUDA path; called directly here, as its wrapper
    insists on CUDA) in the interpreter against revsnn's: the kernels' operation order (its
    ``div_rn`` charge, its FMA backward) gives the same spikes and gradients."""
    import triton
    k = sj_triton()
    tau, vth, vr = RESETS[reset]
    T, N = 16, 3 * 37
    x = rand((T, N), 1.5, 0.4, 7)
    gs, gv = rand((T, N), seed=8), rand((N,), seed=9)
    v0 = torch.full((N,), 0.0 if vr is None else vr)
    s_ref, v_ref, h = torch.empty_like(x), torch.empty(N), torch.empty_like(x)
    grid = (triton.cdiv(N, 256),)
    k._forward_kernel[grid](x, v0, s_ref, v_ref, h, T, N, tau, vth, 0.0 if vr is None else vr,
                            True, vr is None, False, 256, None)
    gx_ref, g0_ref = torch.empty_like(x), torch.empty(N)
    k._backward_kernel[grid](gs, gv, h, gx_ref, g0_ref, T, N, tau, vth,
                             0.0 if vr is None else vr, 4.0, True, vr is None, False, 0, False,
                             1, 256, None)
    xg = x.clone().requires_grad_(True)
    s, v = revsnn.functional.lif(xg, tau=tau, v_threshold=vth, v_reset=vr, dim=1,
                                 backend="triton")
    (gx,) = torch.autograd.grad((s * gs).sum() + (v * gv).sum(), xg)
    assert s_ref.mean() > 0.02
    assert torch.equal(s, s_ref) and torch.equal(v, v_ref)
    assert_close_rel(gx, gx_ref, rel=1e-6)


@needs_sj
@pytest.mark.skipif(not HAS_CUDA, reason="SpikingJelly's Triton LIF runs on CUDA only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T", [4, 16, 64])
@pytest.mark.parametrize("reset,decay_input,detach_reset,surrogate",
                         [("hard", True, False, "sigmoid"), ("soft", False, True, "atan"),
                          ("hard_vr", True, True, "atan")])
def test_lif_matches_spikingjelly_triton_gpu(dtype, T, reset, decay_input, detach_reset,
                                             surrogate, monkeypatch, count_launches):
    """On CUDA: SpikingJelly's Triton implementation (asserted: it is the one selected, and its
    kernels are the ones that ran, so a silent fallback to its torch path cannot pass) against
    revsnn's Triton kernels (asserted the same way). Spike mismatch rate < 1e-5; potentials and
    gradients of the neurons whose spikes all agree within the dtype's tolerance."""
    dev = torch.device("cuda")
    info = sj.functional.neuron_implementation("lif", dev)
    assert info["implementation"] == "triton", info
    k = sj_triton()
    ran = {"fwd": 0, "bwd": 0}
    for key, kernel in (("fwd", k._forward_kernel), ("bwd", k._backward_kernel)):
        def run(*a, _orig=kernel.run, _key=key, **kw):
            ran[_key] += 1
            return _orig(*a, **kw)
        monkeypatch.setattr(kernel, "run", run)
    ours = count_launches("lif")

    tau, vth, vr = RESETS[reset]
    shape = (T, 8, 4099)
    x = rand(shape, 1.5, 0.4, T, dtype=dtype, device="cuda", grad=True)
    gs = rand(shape, seed=T + 1, dtype=dtype, device="cuda")
    gv = rand(shape[1:], seed=T + 2, device="cuda")
    v0 = torch.full(shape[1:], 0.0 if vr is None else vr, device=dev)
    s_ref, v_ref, _ = sj.functional.lif_multi_step(
        x, v0, tau, decay_input, vth, vr, sj_surrogate(surrogate), detach_reset)
    (g_ref,) = torch.autograd.grad((s_ref * gs).sum() + (v_ref * gv).sum(), x)
    assert ran == {"fwd": 1, "bwd": 1}, ran
    s, v = revsnn.functional.lif(x, tau=tau, decay_input=decay_input, v_threshold=vth,
                                 v_reset=vr, surrogate=surrogate, detach_reset=detach_reset,
                                 backend="triton")
    (g,) = torch.autograd.grad((s * gs).sum() + (v * gv).sum(), x)
    assert all(n >= 1 for n in ours.values()), ours

    differ = s != s_ref
    assert differ.double().mean().item() < 1e-5
    agree = ~differ.any(0)  # neurons whose whole spike train agrees
    assert agree.double().mean().item() > 0.999
    tol = 1e-6 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    assert_close_rel(v[agree], v_ref[agree], rel=tol)
    assert_close_rel(g[:, agree], g_ref[:, agree], rel=tol)


# -- snnTorch ------------------------------------------------------------------------------------
def snntorch_leaky(beta, threshold, reset, surrogate, reset_delay=True):
    spike_grad = (snn.surrogate.atan(alpha=2.0) if surrogate == "atan"
                  else getattr(snn.surrogate, surrogate)(slope=4.0))
    return snn.Leaky(beta=beta, threshold=threshold, spike_grad=spike_grad,
                     reset_mechanism=reset, reset_delay=reset_delay)


def run_snntorch(leaky, x, mem):
    spikes = []
    for xt in x:
        spk, mem = leaky(xt, mem)
        spikes.append(spk)
    return torch.stack(spikes), mem


def rev_for_snntorch(beta, threshold, reset, surrogate, reset_delay=True, backend="torch"):
    """revsnn.LIF with the snnTorch mapping (revsnn.convert's): tau = 1/(1 - beta), the input
    not decayed; snnTorch's delayed reset is detached, its immediate one (reset_delay=False)
    is not."""
    return revsnn.LIF(tau=1 / (1 - beta), decay_input=False, v_threshold=threshold,
                      v_reset=0.0 if reset == "zero" else None, surrogate=surrogate,
                      surrogate_alpha=2.0 if surrogate == "atan" else 4.0,
                      detach_reset=reset_delay, backend=backend)


@needs_snn
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid", "fast_sigmoid"])
@pytest.mark.parametrize("reset_delay", [True, False])
@pytest.mark.parametrize("beta,threshold", [(0.5, 1.0), (0.75, 0.6), (0.875, 1.0)])
@pytest.mark.parametrize("T", [1, 4, 16, 64])
def test_lif_matches_snntorch_zero_reset(T, beta, threshold, reset_delay, surrogate):
    """snnTorch's 'zero' reset is revsnn's hard reset to 0: spikes bit-equal, gradients within
    1e-6. snnTorch returns the potential before its delayed reset (reset_delay=True; detached),
    revsnn the potential after it: v = mem * (1 - spk) exactly, and that is what the gradients
    see. With reset_delay=False snnTorch resets at once, through the spike's gradient
    (detach_reset=False), and returns what revsnn does. (beta = 1 - 2**-k keeps beta*U and
    U - U/tau the same float.)"""
    shape = (T, 3, 5, 7)
    x = rand(shape, 0.8, 0.3, T, grad=True)
    v0 = (rand(shape[1:], 0.3, 0.0, T + 1).clamp(max=threshold - 0.05)).requires_grad_(True)
    gs, gv = rand(shape, seed=T + 2), rand(shape[1:], seed=T + 3)
    spk, mem = run_snntorch(snntorch_leaky(beta, threshold, "zero", surrogate, reset_delay),
                            x, v0)
    after = mem * (1 - spk[-1].detach()) if reset_delay else mem
    g_ref = torch.autograd.grad((spk * gs).sum() + (after * gv).sum(), (x, v0))
    out = run_pair(rev_for_snntorch(beta, threshold, "zero", surrogate, reset_delay), x, v0,
                   gs, gv)
    assert_exact(out, spk, after, g_ref)


@needs_snn
def test_snntorch_subtract_reset_documented_difference():
    """The documented difference (revsnn.convert.SNNTORCH_SUBTRACT): revsnn's soft reset equals
    snnTorch's 'subtract' reset on the input I + (1 - beta)*thr*S[t-1] -- the part of the
    threshold that snnTorch takes off after the leak. Without the compensation spikes differ."""
    beta, thr, T = 0.5, 1.0 + 2 ** -6, 16
    x = dyadic((T, 4, 64), 1, lo=-0.5, hi=1.5)
    s = rev_for_snntorch(beta, thr, "subtract", "atan")(x)
    leaky = snntorch_leaky(beta, thr, "subtract", "atan")
    mem, prev, spikes, ties = leaky.init_leaky(), torch.zeros_like(x[0]), [], 0
    for xt in x:
        spk, mem = leaky(xt + (1 - beta) * thr * prev, mem)
        ties += int((mem == thr).sum())  # snnTorch fires at >, revsnn at >=
        spikes.append(spk)
        prev = spk
    assert ties == 0
    assert s.mean() > 0.1 and torch.equal(s, torch.stack(spikes))
    plain, _ = run_snntorch(snntorch_leaky(beta, thr, "subtract", "atan"), x, None)
    assert (plain != s).sum() > 0  # the difference is real


@needs_snn
@pytest.mark.parametrize("T", [4, 64])
def test_snntorch_subtract_reset_now_matches_below_twice_threshold(T):
    """With reset_delay=False snnTorch's 'subtract' is revsnn's soft reset while the potential
    stays below 2*threshold (here: inputs < 0.9, beta 1/2, threshold 1): spikes and potentials
    bit-equal, gradients within 1e-6."""
    x = (rand((T, 3, 40), 0.6, 0.3, T).clamp(-1.0, 0.9)).requires_grad_(True)
    gs, gv = rand(x.shape, seed=1), rand(x.shape[1:], seed=2)
    spk, mem = run_snntorch(snntorch_leaky(0.5, 1.0, "subtract", "atan", False), x, None)
    (g_ref,) = torch.autograd.grad((spk * gs).sum() + (mem * gv).sum(), x)
    node = rev_for_snntorch(0.5, 1.0, "subtract", "atan", reset_delay=False)
    s = node(x)
    (g,) = torch.autograd.grad((s * gs).sum() + (node.v * gv).sum(), x)
    assert spk.mean() > 0.05
    assert torch.equal(s, spk) and torch.equal(node.v, mem)
    assert_close_rel(g, g_ref, rel=1e-6)


@needs_snn
def test_snntorch_general_beta_mismatch_is_rounding():
    """beta = 0.9: revsnn's U - U/tau and snnTorch's beta*U round differently (one ulp), so a
    potential that lands within an ulp of the threshold may fire in one and not the other:
    the mismatch is rare, and the potentials agree to float32 rounding."""
    T = 64
    x = rand((T, 8, 256), 0.5, 0.15, 4)
    spk, mem = run_snntorch(snntorch_leaky(0.9, 1.0, "zero", "atan"), x, None)
    s = (node := rev_for_snntorch(0.9, 1.0, "zero", "atan"))(x)
    assert spk.mean() > 0.05
    rate = (s != spk).double().mean().item()
    assert rate < 1e-3, rate
    agree = ~(s != spk).any(0)
    assert_close_rel(node.v[agree], (mem * (1 - spk[-1]))[agree], rel=1e-5)


# -- Norse ---------------------------------------------------------------------------------------
def norse_box_cell(k, reset, dt=1.0):
    """LIFBoxCell with dt*tau_mem_inv = k, Norse's tanh surrogate with alpha 2 (revsnn's sigmoid
    with alpha 4: 1 - tanh(2z)**2 = 4 sigmoid(4z) (1 - sigmoid(4z)))."""
    fn = importlib.import_module("norse.torch.functional.reset")
    p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(k / dt), v_th=torch.tensor(0.8),
                               method="tanh", alpha=torch.tensor(2.0),
                               reset_method=fn.reset_value if reset == "hard"
                               else fn.reset_subtract)
    return norse.LIFBoxCell(p, dt=dt)


def run_norse_cell(cell, x, v0):
    state, spikes = None, []
    state_cls = importlib.import_module("norse.torch.functional.lif_box").LIFBoxFeedForwardState
    state = state_cls(v=v0)
    for xt in x:
        z, state = cell(xt, state)
        spikes.append(z)
    return torch.stack(spikes), state.v


def rev_for_norse(k, reset, backend="torch"):
    return revsnn.LIF(tau=1 / k, decay_input=True, v_threshold=0.8,
                      v_reset=0.0 if reset == "hard" else None, surrogate="sigmoid",
                      surrogate_alpha=4.0, backend=backend)


@needs_norse
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("k", [0.5, 0.25])
@pytest.mark.parametrize("T", [1, 4, 16, 64])
def test_lif_matches_norse_lif_box(T, k, reset):
    """Norse's LIFBoxCell with dt*tau_mem_inv a power of two (multiplying by it is dividing by
    tau = 1/k): spikes and potentials bit-equal, gradients within 1e-6."""
    shape = (T, 3, 5, 7)
    x = rand(shape, 1.5, 0.5, T, grad=True)
    v0 = rand(shape[1:], 0.3, 0.4, T + 1, grad=True)
    gs, gv = rand(shape, seed=T + 2), rand(shape[1:], seed=T + 3)
    z, v_ref = run_norse_cell(norse_box_cell(k, reset), x, v0)
    g_ref = torch.autograd.grad((z * gs).sum() + (v_ref * gv).sum(), (x, v0))
    assert_exact(run_pair(rev_for_norse(k, reset), x, v0, gs, gv), z, v_ref, g_ref)


@needs_norse
def test_lif_matches_norse_lif_one_step_current():
    """Norse's LIF (two states) with dt*tau_syn_inv == 1: the current lasts one step and the
    neuron is the single-state LIF (Norse's default dt = 1e-3)."""
    T = 32
    p = norse.LIFParameters(tau_syn_inv=torch.tensor(1000.0), tau_mem_inv=torch.tensor(500.0),
                            v_th=torch.tensor(0.8), method="tanh", alpha=torch.tensor(2.0))
    x = rand((T, 4, 50), 1.5, 0.5, 1, grad=True)
    gs = rand(x.shape, seed=2)
    z, state = norse.LIF(p)(x)
    (g_ref,) = torch.autograd.grad((z * gs).sum(), x)
    s, v = revsnn.functional.lif(x, tau=2.0, v_threshold=0.8, surrogate="sigmoid",
                                 backend="torch")
    (g,) = torch.autograd.grad((s * gs).sum(), x)
    assert z.mean() > 0.05
    assert torch.equal(s, z) and torch.equal(v, state.v)
    assert torch.equal(state.i, torch.zeros_like(state.i))
    assert_close_rel(g, g_ref, rel=1e-6)


@needs_norse
def test_norse_general_tau_mismatch_is_rounding():
    """Norse's default dt*tau_mem_inv = 0.1 (tau = 10): multiplying by 0.1 and dividing by 10
    round differently; spikes agree but for rare threshold ties."""
    T = 64
    x = rand((T, 8, 256), 2.0, 0.6, 5)
    z, v_ref = run_norse_cell(norse_box_cell(0.1, "hard", dt=1e-3), x, torch.zeros(x.shape[1:]))
    node = rev_for_norse(float(1e-3 * torch.tensor(100.0)), "hard")  # k as Norse computes it
    s = node(x)
    assert z.mean() > 0.02
    rate = (s != z).double().mean().item()
    assert rate < 1e-3, rate


def test_peer_skip_reason_names_the_library():
    mod, why = peer("no_such_snn_library.torch")
    assert mod is None and "no_such_snn_library" in why and "requirements-peers.txt" in why

