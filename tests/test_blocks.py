"""Reversible blocks: exact reconstruction, gradients equal to plain autograd, stateful modules
(neurons, BatchNorm, dropout) replayed faithfully, memory flat in depth, errors."""
import contextlib
import copy
import gc
import math
import weakref

import pytest
import torch
from torch import nn

import revsnn
from revsnn.models import PerStep
from revsnn.nn import RebuildSequential, RevBlock, RevSequential, reset_neurons
from revsnn.nn import blocks
from revsnn.nn.blocks import GRID_BITS, LIMIT, _Rebuilt, neurons, quantize
from revsnn.memory import KeptBytes, LiveBytes, storage_id

from .conftest import assert_close_rel
from .test_train import _one_thread  # noqa: F401  (autouse fixture)

NEURONS = ["revlif", "lif"]


def neuron_layer(kind):
    return revsnn.RevLIF(dim=2) if kind == "revlif" else revsnn.LIF()


def branch(c, kind, dropout=0.0):
    """conv-BN(-dropout)-neuron on c channels, over [T, B, c, H, W]."""
    mods = [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
    if dropout:
        mods.append(nn.Dropout(dropout))
    return nn.Sequential(PerStep(*mods), neuron_layer(kind))


def chain(n, C=8, kind="revlif", dropout=0.0, seed=0, reversible=True):
    torch.manual_seed(seed)
    return RevSequential(*[RevBlock(branch(C // 2, kind, dropout), branch(C // 2, kind, dropout))
                           for _ in range(n)], reversible=reversible)


def plain_copy(rev):
    """``rev`` run by plain autograd (a deepcopy keeps any parameter sharing)."""
    plain = copy.deepcopy(rev)
    plain.reversible = False
    return plain


def linear_chain(width):
    """Two blocks of Linear + RevLIF branches over ``[..., 2 * width]`` (split dim -1)."""
    def lin():
        return nn.Sequential(nn.Linear(width, width), revsnn.RevLIF(dim=-1))
    return RevSequential(RevBlock(lin(), lin(), dim=-1), RevBlock(lin(), lin(), dim=-1))


def make_x(shape, seed=1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def on_grid(x):
    return torch.round(x * 2 ** GRID_BITS) / 2 ** GRID_BITS


def run_pair(rev, x, weight, chunks=1, autocast=None):
    """Forward (in `chunks` calls without reset; under `autocast` if given) and backward of
    sum(y * weight) (outside autocast, as usual)."""
    xr = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        ys = [rev(c) for c in xr.chunk(chunks)]
    (torch.cat(ys) * weight).sum().backward()
    return torch.cat(ys), xr.grad


def compare(rev, plain, x, chunks=1, seed=3, autocast=None):
    weight = torch.linspace(-1, 1, x.numel()).view(x.shape)
    torch.manual_seed(seed)
    y_a, g_a = run_pair(rev, x, weight, chunks, autocast)
    after_a = torch.rand(3)
    torch.manual_seed(seed)
    y_b, g_b = run_pair(plain, x, weight, chunks, autocast)
    after_b = torch.rand(3)
    assert torch.equal(y_a, y_b)
    assert torch.equal(after_a, after_b)  # the recomputation left the generator alone
    assert_close_rel(g_a, g_b)
    n = 0
    for (name, p), q in zip(rev.named_parameters(), plain.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert_close_rel(p.grad, q.grad)
        n += 1
    assert n > 0
    for (name, a), b in zip(rev.named_buffers(), plain.buffers()):
        assert torch.equal(a, b), name  # BatchNorm statistics counted once
    for a, b in zip(neurons(rev), neurons(plain)):
        sa = a.state.v_fixed if hasattr(a, "state") else a.v
        sb = b.state.v_fixed if hasattr(b, "state") else b.v
        assert torch.equal(sa, sb)


# -- exactness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", NEURONS)
def test_reconstruction_through_8_blocks_bit_exact(kind):
    net = chain(8, kind=kind)
    x = make_x((4, 3, 8, 5, 5))
    y = net(x)
    assert not torch.equal(y, quantize(x))
    bufs = [b.clone() for b in net.buffers()]
    reset_neurons(net)
    x_rec = net.inverse(y)
    assert torch.equal(x_rec, on_grid(x))
    assert all(torch.equal(a, b) for a, b in zip(bufs, net.buffers()))


@pytest.mark.parametrize("kind", NEURONS)
def test_backward_rebuilds_every_block_input_exactly(kind):
    """The inputs f and g see in the backward's recomputation are those of the forward."""
    net = chain(8, kind=kind)
    seen = {}
    for i, b in enumerate(net):
        for name in ("f", "g"):
            getattr(b, name).register_forward_hook(
                lambda m, inp, out, k=(i, name): seen.setdefault(k, []).append(inp[0].clone()))
    x = make_x((4, 3, 8, 5, 5)).requires_grad_()
    net(x).sum().backward()
    assert len(seen) == 16
    for k, (fwd, rec) in seen.items():
        assert torch.equal(fwd, rec), k


# -- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", NEURONS)
def test_gradients_equal_plain_autograd(kind):
    rev = chain(3, kind=kind)
    plain = plain_copy(rev)
    compare(rev, plain, make_x((6, 4, 8, 5, 5)))


@pytest.mark.parametrize("kind", NEURONS)
def test_neuron_state_carried_between_calls(kind):
    """Two calls without reset: the recomputation of the first starts from zero state, that of
    the second from the state the first left, and the neurons end where the forward left them."""
    rev = chain(2, kind=kind)
    plain = plain_copy(rev)
    x = make_x((8, 3, 8, 4, 4))
    if kind == "lif":
        # plain LIF carries autograd history across calls; reversible blocks stop gradients at
        # call boundaries (the forward ran under no_grad): compare with a detached carry
        for m in neurons(plain):
            m.register_forward_pre_hook(lambda mod, inp: setattr(
                mod, "v", None if mod.v is None else mod.v.detach()))
    compare(rev, plain, x, chunks=2)


def test_dropout_random_numbers_replayed():
    rev = chain(3, kind="revlif", dropout=0.3)
    plain = plain_copy(rev)
    compare(rev, plain, make_x((4, 3, 8, 4, 4)))


def test_without_random_number_replay():
    """preserve_rng_state=False takes no generator state: still exact without random layers;
    with dropout the recomputation draws other masks, so the gradient is no longer the plain
    one (hence replay by default)."""
    x = make_x((4, 3, 8, 4, 4))
    for dropout in (0.0, 0.3):
        rev = chain(2, dropout=dropout)
        for b in rev.blocks:
            b.preserve_rng_state = False
        plain = plain_copy(rev)
        if not dropout:
            compare(rev, plain, x)
            continue
        weight = torch.linspace(-1, 1, x.numel()).view(x.shape)
        torch.manual_seed(3)
        y_a, g_a = run_pair(rev, x, weight)
        torch.manual_seed(3)
        y_b, g_b = run_pair(plain, x, weight)
        assert torch.equal(y_a, y_b) and not torch.allclose(g_a, g_b)


def test_autocast_bf16_matches_plain():
    rev = chain(2, kind="revlif")
    plain = plain_copy(rev)
    x = make_x((4, 2, 8, 4, 4))
    compare(rev, plain, x, autocast=torch.bfloat16)


class _CastsItself(nn.Module):
    """bfloat16 weights on a float32 half: casts in and out itself (no autocast needed)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4).to(torch.bfloat16)

    def forward(self, x):
        return self.lin(x.to(torch.bfloat16)).float()


def test_half_precision_parameters_point_to_autocast():
    """model.to(bfloat16) gives f and g half parameters, which the float32 stream cannot
    feed: a TypeError that says what to do (autocast), which then works; a branch that casts
    for itself runs as it is."""
    rev = chain(2).to(torch.bfloat16)
    x = make_x((3, 2, 8, 3, 3)).requires_grad_()
    with pytest.raises(TypeError, match="under torch.autocast"):
        rev(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rev(x)
    y.float().sum().backward()
    assert x.grad is not None
    own = RevSequential(RevBlock(_CastsItself(), _CastsItself(), dim=-1))
    own(make_x((3, 2, 8)).requires_grad_()).sum().backward()


class _Fails(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=dtype))

    def forward(self, h):
        raise RuntimeError("the branch's own error")


@pytest.mark.parametrize("dtype,autocast", [(torch.float32, False), (torch.bfloat16, True)])
def test_branch_errors_pass_unchanged_where_autocast_would_not_help(dtype, autocast):
    """The autocast hint replaces a branch's error only for half parameters outside
    autocast; any other failure is the branch's own and reaches the caller as it is."""
    block = RevBlock(_Fails(dtype), nn.Identity(), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with pytest.raises(RuntimeError, match="the branch's own error"):
            block(torch.zeros(2, 2, 4))


def test_single_block_and_no_grad():
    torch.manual_seed(0)
    block = RevBlock(branch(4, "revlif"), branch(4, "revlif"))
    x = make_x((3, 2, 8, 4, 4))
    with torch.no_grad():
        y0 = block(x)
    reset_neurons(block)
    y = block(x.clone().requires_grad_())
    assert torch.equal(y, y0)
    reset_neurons(block)
    assert torch.equal(block.inverse(y.detach()), on_grid(x))


def test_linear_branches_dim_last():
    torch.manual_seed(0)
    rev = linear_chain(6)
    plain = plain_copy(rev)
    compare(rev, plain, make_x((5, 3, 12)))


def test_channels_last_input_rebuilt_exactly():
    """A channels-last chain input: the forward's halves are contiguous, as the backward's
    and the inverse's are, so that the convolutions round alike (they need not in another
    memory format)."""
    rev = chain(3, C=16)
    plain = plain_copy(rev)
    x = make_x((3, 2, 16, 6, 6)).permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    assert not x.is_contiguous()
    compare(rev, plain, x)
    reset_neurons(rev)
    y = rev(x)
    reset_neurons(rev)
    assert torch.equal(rev.inverse(y.detach()), on_grid(x))


class _BufferStateNeuron(nn.Module):
    """A neuron keeping its potential in a buffer it replaces at each step (snnTorch's
    ``Leaky(init_hidden=True)``), running over T: it has no ``reset``/``state``, so only the
    buffer snapshot restores its state for the recomputation."""

    def __init__(self, c):
        super().__init__()
        self.lin = nn.Linear(c, c)
        self.register_buffer("mem", torch.zeros(()), persistent=False)

    def forward(self, x):
        out = []
        for xt in x:
            self.mem = 0.5 * self.mem + self.lin(xt)
            out.append(torch.tanh(self.mem))
        return torch.stack(out)


def test_buffer_state_replayed():
    torch.manual_seed(0)
    rev = RevSequential(*[RevBlock(_BufferStateNeuron(4), _BufferStateNeuron(4), dim=-1)
                          for _ in range(2)])
    plain = plain_copy(rev)
    x = make_x((5, 3, 8), scale=0.5)
    weight = torch.linspace(-1, 1, x.numel()).view(x.shape)
    for net in (rev, plain):  # a first call leaves a non-zero state behind
        with torch.no_grad():
            net(x)
    y_a, g_a = run_pair(rev, x, weight)
    y_b, g_b = run_pair(plain, x, weight)
    assert torch.equal(y_a, y_b)
    assert_close_rel(g_a, g_b)
    for p, q in zip(rev.parameters(), plain.parameters()):
        assert_close_rel(p.grad, q.grad)


def test_chain_forward_leaves_the_neurons_checks_to_its_backward():
    """Under a recorded chain the RevLIF calls run without grad, but the backward reruns and
    checks them: no readback of their own (it would never be read); a no-grad call of the
    same chain takes one, as any unrecorded call does."""
    rev = chain(2)
    x = make_x((3, 2, 8, 3, 3))
    y = rev(x.clone().requires_grad_())
    assert all(len(m._unchecked) == 0 for m in neurons(rev))
    y.sum().backward()
    reset_neurons(rev)
    with torch.no_grad():
        rev(x)
    assert all(len(m._unchecked) == 1 for m in neurons(rev))


def test_flagged_call_stays_pending_through_a_chain_backward():
    """A flagged no-grad call between a recorded chain forward and its backward raises at the
    layers' next reset: the backward's reruns put the recorded calls' states into the neurons
    for a while, and must not drop the pending check of the states they put back."""
    torch.manual_seed(0)
    net = RevSequential(*[RevBlock(
        nn.Sequential(nn.Linear(4, 4), revsnn.RevLIF(dim=-1, backend="torch")),
        nn.Sequential(nn.Linear(4, 4), revsnn.RevLIF(dim=-1, backend="torch")), dim=-1)
        for _ in range(2)])
    good = make_x((3, 2, 8))
    bad = good.clone()
    bad[0, 0, 0] = float("nan")
    y = net(good.clone().requires_grad_())
    with torch.no_grad():
        net(bad)  # flagged; no backward will check it
    states = [m.state for m in neurons(net)]
    pending = [len(m._unchecked) for m in neurons(net)]
    assert pending == [1, 1, 1, 1]
    y.sum().backward()  # reruns every recorded call from the state it started from
    assert [m.state for m in neurons(net)] == states
    assert [len(m._unchecked) for m in neurons(net)] == pending
    with pytest.raises(ValueError, match="flagged"):
        reset_neurons(net)


def test_double_backward_raises():
    rev = chain(2)
    x = make_x((3, 2, 8, 3, 3)).requires_grad_()
    g, = torch.autograd.grad(rev(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="RevSequential is not differentiable"):
        g.square().sum().backward()


def test_requires_grad_changed_between_forward_and_backward():
    """A parameter unfrozen after the forward gets no gradient (it was not in the graph); one
    frozen after it gets none either (the recomputation leaves it out); neither fails."""
    rev = chain(2)
    frozen = rev[0].f[0][0].weight
    frozen.requires_grad_(False)
    y = rev(make_x((3, 2, 8, 3, 3)).requires_grad_())
    frozen.requires_grad_(True)
    late = rev[1].g[0][0].weight
    late.requires_grad_(False)
    y.sum().backward()
    assert frozen.grad is None and late.grad is None
    assert rev[1].f[0][0].weight.grad is not None


class _AddParam(nn.Module):
    """``x * w + p`` with ``p`` of the half's full shape: autograd hands ``p`` the incoming
    gradient itself, memory the chain's backward goes on to overwrite."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.full((), 0.5))
        self.p = nn.Parameter(torch.linspace(-1, 1, math.prod(shape)).view(shape))

    def forward(self, x):
        return x * self.w + self.p


def test_parameter_gradient_sharing_the_gradient_memory():
    shape = (3, 2, 2, 5)
    rev = RevSequential(*[RevBlock(_AddParam(shape), _AddParam(shape), dim=-1)
                          for _ in range(3)])
    plain = plain_copy(rev)
    compare(rev, plain, make_x((3, 2, 2, 10)))


def test_retain_graph_and_second_backward():
    net = chain(2)
    x = make_x((3, 2, 8, 3, 3)).requires_grad_()
    y = net(x)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    y.sum().backward()
    assert torch.equal(x.grad, first)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.sum().backward()


def test_output_modified_in_place_raises():
    net = chain(2)
    y = net(make_x((3, 2, 8, 3, 3)).requires_grad_())
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_saved_tensors_hooks_see_the_output():
    """The chain's output goes through the saved-tensor hooks in force, as save_for_backward
    would send it (save_on_cpu: the unpacked copy is what the backward rebuilds from)."""
    net = chain(2)
    x = make_x((3, 2, 8, 3, 3))
    weight = torch.linspace(-1, 1, x.numel()).view(x.shape)
    _, g_plain = run_pair(net, x, weight)
    packed = []
    hooks = torch.autograd.graph.save_on_cpu()
    pack = hooks.pack_hook

    def spy(t):
        packed.append(t.untyped_storage().data_ptr())
        return pack(t)
    hooks.pack_hook = spy
    reset_neurons(net)
    xr = x.clone().requires_grad_()
    with hooks:
        y = net(xr)
    (y * weight).sum().backward()
    assert y.untyped_storage().data_ptr() in packed
    assert torch.equal(xr.grad, g_plain)


# -- memory --------------------------------------------------------------------------------------
def kept_bytes(net, x):
    """Bytes ``net(x)`` keeps for backward, parameters excluded, and the output."""
    with KeptBytes() as kb:
        y = net(x)
    return kb.bytes(exclude={storage_id(p) for p in net.parameters()}), y


def test_kept_for_backward_flat_in_depth():
    x = make_x((4, 2, 8, 4, 4)).requires_grad_()
    rev, plain = {}, {}
    for n in (2, 4, 8):
        rev[n], y = kept_bytes(chain(n), x)
        assert rev[n] == y.numel() * y.element_size()  # the chain's output, nothing else
        plain[n], _ = kept_bytes(chain(n, reversible=False), x)
    assert rev[2] == rev[4] == rev[8]
    assert plain[2] < plain[4] < plain[8]
    assert plain[8] > 10 * rev[8]


def test_backward_memory_one_pair_and_one_branch():
    """Besides one branch's recomputation (here its BatchNorm input and neuron output, and two
    gradients in flight), the backward holds one pair of input halves and one pair of
    gradient halves, rewritten in place block after block, and lets go of the chain's output
    (2 half-tensors, live as it begins) once the last block is inverted: 8 half-tensors at
    most, whatever the depth (10 if the output lived to the end; 15 when each block made new
    tensors)."""
    peaks = {}
    for n in (2, 4):
        net = chain(n, C=16)
        y = net(make_x((4, 8, 16, 12, 12)).requires_grad_())
        half = y.numel() * y.element_size() / 2
        loss = y.sum()  # its gradient is an expanded scalar: no memory
        live = LiveBytes(existing=[y])
        del y
        with live:
            loss.backward()
        peaks[n] = live.peak / half
    assert peaks[4] < 8.5 and abs(peaks[4] - peaks[2]) < 0.25, peaks


def test_output_freed_after_the_last_block():
    net = chain(2)
    y = net(make_x((3, 2, 8, 3, 3)).requires_grad_())
    ref = weakref.ref(y.untyped_storage())
    seen = []
    net[0].f.register_forward_hook(
        lambda m, i, o: seen.append(ref() is None) if torch.is_grad_enabled() else None)
    loss = y.sum()
    del y
    loss.backward()
    assert seen == [True]


def stem_and_chain(kind=RebuildSequential, head=None, C=8, seed=0):
    """conv - RevLIF (its output, on the blocks' grid, feeds the chain and is what the neuron
    keeps for its own backward) - a chain of two blocks."""
    torch.manual_seed(seed)
    head = head or revsnn.RevLIF(dim=2)
    return kind(PerStep(nn.Conv2d(3, C, 3, padding=1)), head, chain(2, C=C, seed=seed + 1))


@pytest.mark.parametrize("hooks", [False, True])
def test_rebuild_sequential_equals_sequential(hooks):
    """Same values and gradients as nn.Sequential; the hooks in force outside (save_on_cpu)
    still see every other saved tensor."""
    x = make_x((3, 2, 3, 5, 5))
    weight = torch.linspace(-1, 1, 3 * 2 * 8 * 25).view(3, 2, 8, 5, 5)
    runs = {}
    for kind in (nn.Sequential, RebuildSequential):
        net = stem_and_chain(kind)
        packed = []
        outer = torch.autograd.graph.save_on_cpu()
        pack = outer.pack_hook
        outer.pack_hook = lambda t: packed.append(t.shape) or pack(t)
        with outer if hooks else contextlib.nullcontext():
            y, gx = run_pair(net, x, weight)
        runs[kind] = (y, gx, [p.grad for p in net.parameters()], packed)
    (y_a, g_a, p_a, packed_a), (y_b, g_b, p_b, packed_b) = runs.values()
    assert torch.equal(y_a, y_b) and torch.equal(g_a, g_b)
    assert all(torch.equal(a, b) for a, b in zip(p_a, p_b))
    if hooks:  # all but the neuron's output (and the chain's, which it saves itself)
        assert len(packed_b) == len(packed_a) - 1 > 0


def test_rebuild_sequential_forward_holds_the_chain_input_no_more():
    x = make_x((4, 4, 3, 8, 8)).requires_grad_()
    held = {}
    for kind in (nn.Sequential, RebuildSequential):
        net = stem_and_chain(kind, C=16)
        with LiveBytes() as live:
            y = net(x)
            held[kind] = live.now
        y.sum().backward()
    assert held[nn.Sequential] - held[RebuildSequential] == y.nbytes


def test_rebuild_sequential_output_off_the_grid_raises():
    class Exp(nn.Module):  # saves its output, which is not on the blocks' grid
        def forward(self, x):
            return torch.exp(x)
    net = stem_and_chain(head=Exp())
    y = net(make_x((3, 2, 3, 3, 3), scale=0.5).requires_grad_())
    with pytest.raises(ValueError, match="not on the grid"):
        y.sum().backward()


def test_rebuild_sequential_keeps_the_in_place_check():
    """The saved-tensor hooks of RebuildSequential must not lose autograd's check: a tensor
    the layer saved and then modified in place raises, as under nn.Sequential."""
    class ExpThenScale(nn.Module):  # exp saves its output, which mul_ then changes
        def forward(self, x):
            return revsnn.RevLIF(dim=2)(x.exp().mul_(2))
    for kind in (nn.Sequential, RebuildSequential):
        torch.manual_seed(0)
        net = kind(ExpThenScale(), chain(2))
        y = net(make_x((3, 2, 8, 3, 3), scale=0.3).requires_grad_())
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_rebuilt_input_freed_with_the_layer_before(monkeypatch):
    """The rebuilt input lives until the layer before the chain has run its backward, not
    until the whole backward ends."""
    made = []

    class Recorded(blocks._Rebuilt):
        __slots__ = ("__weakref__",)

        def __init__(self):
            super().__init__()
            made.append(weakref.ref(self))
    monkeypatch.setattr(blocks, "_Rebuilt", Recorded)
    net = stem_and_chain()
    alive = []
    net[0].register_full_backward_hook(lambda m, gi, go: alive.append(made[0]() is not None))
    net(make_x((3, 2, 3, 4, 4)).requires_grad_()).sum().backward()
    assert len(made) == 1 and alive == [False]


def test_chain_on_the_device_rebuilds_every_input_exactly(device):
    """On a GPU: cuDNN's convolutions and the Triton node, recomputed, give the forward's bits
    (the grid makes the reconstruction exact only if the branches repeat themselves)."""
    net = chain(3, C=16).to(device)
    seen = {}
    for i, b in enumerate(net):
        for name in ("f", "g"):
            getattr(b, name).register_forward_hook(
                lambda m, inp, out, k=(i, name): seen.setdefault(k, []).append(inp[0].clone()))
    x = make_x((4, 3, 16, 8, 8)).to(device).requires_grad_()
    net(x).sum().backward()
    assert len(seen) == 6 and all(len(v) == 2 for v in seen.values())
    for k, (fwd, rec) in seen.items():
        assert torch.equal(fwd, rec), k


def test_model_zoo_rebuild_sequential_on_the_device(device):
    """A reversible model of the zoo (RebuildSequential body) against the same model with an
    nn.Sequential body: same output, same gradients (to rounding: GPU convolution backward
    need not be deterministic)."""
    from revsnn import models
    torch.manual_seed(0)
    net = models.convnet8(width=8, neuron="revlif", reversible=True, T=3).to(device)
    plain = copy.deepcopy(net)
    plain.body.__class__ = nn.Sequential
    x = make_x((5, 1, 8, 8)).to(device)
    outs = []
    for m in (net, plain):
        y = m(x)
        y.square().sum().backward()
        outs.append((y, [p.grad for p in m.parameters()]))
    (y_a, g_a), (y_b, g_b) = outs
    assert torch.equal(y_a, y_b)
    for a, b in zip(g_a, g_b):
        assert_close_rel(a, b)


def test_rebuilt_input_missing_raises():
    with pytest.raises(RuntimeError, match="feed the chain alone"):
        _Rebuilt().view((2,), (1,), 0)


def test_rebuild_off_for_a_second_use_of_the_chain_input():
    """A loss on the chain's input backpropagated before the rest needs that input kept: it
    raises with rebuild on, and gives nn.Sequential's gradients with rebuild = False."""
    x = make_x((3, 2, 3, 4, 4))
    grads = []
    for kind, rebuild in ((RebuildSequential, True), (RebuildSequential, False),
                          (nn.Sequential, None)):
        net = stem_and_chain(kind)
        if rebuild is not None:
            net.rebuild = rebuild
        seen = []
        net[1].register_forward_hook(lambda m, inp, out: seen.append(out))
        xr = x.clone().requires_grad_()
        y = net(xr)
        if rebuild:
            with pytest.raises(RuntimeError, match="rebuild = False"):
                seen[0].square().sum().backward(retain_graph=True)
            continue
        seen[0].square().sum().backward(retain_graph=True)
        y.sum().backward()
        grads.append(xr.grad)
    assert torch.equal(*grads)


def test_slice_of_a_chain_is_a_chain():
    net = chain(3)
    part = net[1:]
    assert isinstance(part, RevSequential) and len(part) == 2 and part[0] is net[1]


# -- errors --------------------------------------------------------------------------------------
class _Probe(nn.Module):
    """x * w then sin: sin saves the product, whose Python object lives exactly as long as the
    graph that saved it; records, when it runs again in a backward, whether the graphs of the
    probes in ``others`` were already freed."""

    def __init__(self, others=()):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.saved, self.others, self.others_freed = [], others, []

    def forward(self, x):
        if torch.is_grad_enabled():  # the block's backward re-running this branch
            self.others_freed.append(all(r() is None for p in self.others for r in p.saved))
        h = x * self.w
        self.saved.append(weakref.ref(h))
        return torch.sin(h)


def test_one_branch_graph_live_at_a_time():
    """The backward differentiates g's recomputed graph and frees it before f runs again: the
    block's transient memory is one branch's activations, not two."""
    g = _Probe()
    f = _Probe(others=[g])
    RevBlock(f, g)(make_x((2, 2, 4, 3)).requires_grad_()).sum().backward()
    assert f.others_freed == [True]
    assert f.w.grad is not None and g.w.grad is not None


class _Stateful(nn.Module):
    """A neuron as RevBlock sees one (reset() and a state attribute): each call leaves a new
    state object; with ``watch``, records (when re-run by a backward) the state of that other
    neuron."""

    def __init__(self, watch=None):
        super().__init__()
        self.state, self.seen = None, []
        self.watch = [watch] if watch is not None else []  # a list: not a submodule of this one

    def reset(self):
        self.state = None

    def forward(self, x):
        if self.watch and torch.is_grad_enabled():
            self.seen.append(self.watch[0].state)
        self.state = object()
        return x * 1.0


def test_rerun_states_are_dropped_at_once():
    """A branch's recomputation leaves its neurons with the states they held before it (the
    rerun's own, a RevLIF's with its stash, would otherwise live until the backward ends)."""
    g = _Stateful()
    f = _Stateful(watch=g)
    x = make_x((2, 2, 4, 3)).requires_grad_()
    y = RevBlock(f, g)(x)
    after_forward = g.state
    y.sum().backward()
    assert f.seen == [after_forward]
    assert g.state is after_forward


@pytest.mark.parametrize("bad", [LIMIT, float("nan")])
def test_out_of_range_detected_at_backward(bad):
    net = chain(2)
    x = make_x((3, 2, 8, 3, 3))
    x[0, 0, 0, 0, 0] = bad
    y = net(x.requires_grad_())
    with pytest.raises(ValueError, match=r"\|value\| < 256"):
        y.sum().backward()


def test_bad_arguments():
    net = chain(1)
    with pytest.raises(ValueError, match="must be even"):
        net(torch.zeros(2, 2, 7, 3, 3))
    with pytest.raises(ValueError, match="rank >= 3"):
        net(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="non-time dimension"):
        RevBlock(nn.Identity(), nn.Identity(), dim=0)(torch.zeros(2, 2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        net(torch.zeros(2, 2, 8, 3, 3, dtype=torch.long))
    wrong = RevBlock(nn.Linear(2, 3), nn.Identity(), dim=-1)
    with pytest.raises(ValueError, match="RevBlock.f must map a half"):
        wrong(torch.zeros(2, 2, 4))
    mixed = RevSequential(RevBlock(nn.Identity(), nn.Identity(), dim=2),
                          RevBlock(nn.Identity(), nn.Identity(), dim=-1))
    with pytest.raises(ValueError, match="must split the same dim"):
        mixed(torch.zeros(2, 2, 4, 4))
    with pytest.raises(TypeError, match="takes RevBlocks"):
        RevSequential(nn.Identity())
    with pytest.raises(TypeError, match="nn.Module"):
        RevBlock(lambda t: t, nn.Identity())
    with pytest.raises(TypeError, match="dim must be an int, got float"):
        RevBlock(nn.Identity(), nn.Identity(), dim=2.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        net([[0.0]])
    assert repr(RevSequential(RevBlock(nn.Identity(), nn.Identity(), dim=-1))) == (
        "RevSequential(\n  reversible=True\n  (blocks): ModuleList(\n    (0): RevBlock(\n"
        "      dim=-1\n      (f): Identity()\n      (g): Identity()\n    )\n  )\n)")


class _Zero(nn.Module):
    def forward(self, h):
        return h * 0


class _Minus100(nn.Module):
    def forward(self, h):
        return h * 0 - 100


def test_block_input_second_half_out_of_range_raises():
    """The range check covers both halves of the chain's input, not only outputs: here the
    second input half is 300 (>= 256) while every block output stays below 256."""
    net = RevSequential(RevBlock(_Zero(), _Minus100(), dim=-1))
    x = torch.zeros(2, 1, 4)
    x[..., 2:] = 300.0
    x.requires_grad_()
    y = net(x)
    assert y.abs().max() < 256  # only the input is out of range
    with pytest.raises(ValueError, match=r"\|value\| < 256"):
        y.sum().backward()


def test_chain_input_without_grad_still_keeps_only_the_output():
    """A chain with parameters records its one autograd node even when its input needs no
    gradient (the first layers of a network): flat memory, not plain autograd's."""
    x = make_x((4, 2, 8, 4, 4))  # requires_grad False
    net = chain(4)
    with KeptBytes() as kept:
        y = net(x)
    assert y.requires_grad
    assert kept.bytes(exclude={storage_id(p) for p in net.parameters()}) == y.nbytes


def _grads_rev_vs_plain(rev, x):
    plain = plain_copy(rev)
    out = {}
    for name, net in (("rev", rev), ("plain", plain)):
        xr = x.clone().requires_grad_()
        weight = torch.linspace(-1, 1, x.numel()).view(x.shape)
        (net(xr) * weight).sum().backward()
        out[name] = (xr.grad, [p.grad for p in net.parameters()])
    (gx_a, gp_a), (gx_b, gp_b) = out.values()
    assert_close_rel(gx_a, gx_b)
    assert len(gp_a) == len(gp_b) > 0
    for a, b in zip(gp_a, gp_b):
        assert a is not None and b is not None
        assert_close_rel(a, b)


def test_parameter_shared_by_two_blocks_gets_both_gradients():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    rev = RevSequential(RevBlock(shared, nn.Linear(4, 4), dim=-1),
                        RevBlock(shared, nn.Linear(4, 4), dim=-1))
    _grads_rev_vs_plain(rev, make_x((3, 2, 8), scale=0.5))


def test_parameter_shared_by_f_and_g_gets_both_gradients():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    rev = RevSequential(RevBlock(shared, shared, dim=-1))
    _grads_rev_vs_plain(rev, make_x((3, 2, 8), scale=0.5))


def test_inverse_leaves_the_neuron_states_as_they_were():
    for kind in ("revlif", "lif"):
        net = chain(2, kind=kind)
        x = make_x((4, 3, 8, 5, 5))
        with torch.no_grad():
            y = net(x)
        reset_neurons(net)
        before = [(m.state if kind == "revlif" else m.v) for m in neurons(net)]
        net.inverse(y)
        after = [(m.state if kind == "revlif" else m.v) for m in neurons(net)]
        assert len(before) == 4 and all(a is b for a, b in zip(before, after)), kind


def test_chain_forward_never_backpropagated_frees_its_output():
    """A recorded chain's output (which its node keeps for the backward) is freed as soon as
    the output is dropped when no backward ever runs: no reference cycle output -> node ->
    output, which only a later garbage-collector pass (not the device's memory pressure)
    would break."""
    net = chain(1)
    enabled = gc.isenabled()
    gc.disable()
    try:
        y = net(make_x((3, 2, 8, 3, 3)).requires_grad_())
        ref = weakref.ref(y.untyped_storage())
        del y
        assert ref() is None  # by reference counting, without gc.collect()
    finally:
        if enabled:
            gc.enable()


class _ReluFloorInPlace(nn.Module):
    """relu saves its output, which floor_ then changes in place before the layer returns (on
    the blocks' grid, so that the chain could rebuild it)."""

    def forward(self, x):
        return torch.relu(x).floor_()


class _Scale(nn.Module):
    """x * w saves x (not its output)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.w


@pytest.mark.parametrize("kind", [nn.Sequential, RebuildSequential])
def test_rebuild_sequential_in_place_check_on_the_output_memory(kind):
    """Autograd's in-place check kept for a tensor saved in the memory of the output that
    goes to the chain, modified before the layer returned."""
    torch.manual_seed(0)
    net = kind(_ReluFloorInPlace(), chain(1))
    y = net(make_x((3, 2, 8, 3, 3)).requires_grad_())
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("kind", [nn.Sequential, RebuildSequential])
def test_rebuild_sequential_in_place_check_after_the_forward(kind):
    """... and for a tensor the layer before the chain saved outside its output (its input),
    modified after the forward."""
    torch.manual_seed(0)
    net = kind(_Scale(), chain(1))
    x = make_x((3, 2, 8, 3, 3))
    y = net(x)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_half_input_runs_in_the_float32_stream():
    """A bfloat16 input is promoted to the float32 stream (its values are exact in float32):
    output float32 and equal to the float32 input's, gradient back in bfloat16."""
    net = chain(2)
    x = make_x((3, 2, 8, 3, 3)).bfloat16()
    ref = copy.deepcopy(net)
    y_ref = ref(x.float())
    xr = x.clone().requires_grad_()
    y = net(xr)
    assert y.dtype == torch.float32
    assert torch.equal(y, y_ref)
    y.sum().backward()
    assert xr.grad.dtype == torch.bfloat16
    empty = RevSequential()(x)
    assert empty.dtype == torch.float32 and torch.equal(empty, on_grid(x.float()))
    assert torch.equal(RevSequential().inverse(x), empty)


class _Const(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, h):
        return h * 0 + self.c


def test_block_output_second_half_out_of_range_raises():
    """The range check covers the second output half of each block: here only y2 = 300."""
    net = RevSequential(RevBlock(_Const(0.0), _Const(300.0), dim=-1))
    x = torch.zeros(2, 1, 4, requires_grad=True)
    y = net(x)
    assert y[..., :2].abs().max() == 0 and y[..., 2:].abs().max() == 300
    with pytest.raises(ValueError, match=r"\|value\| < 256"):
        y.sum().backward()


def test_slice_keeps_the_reversible_flag():
    net = chain(3, reversible=False)
    assert net[1:].reversible is False
    assert chain(2)[:1].reversible is True


def _sequential_vs_rebuild(make):
    x = make_x((3, 2, 3, 4, 4))
    out = []
    for kind in (nn.Sequential, RebuildSequential):
        torch.manual_seed(0)
        net = make(kind)
        xr = x.clone().requires_grad_()
        y = net(xr)
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        out.append((y, xr.grad))
    (y_a, g_a), (y_b, g_b) = out
    assert torch.equal(y_a, y_b) and torch.equal(g_a, g_b)


def test_rebuild_sequential_with_an_empty_chain():
    """An empty RevSequential takes no autograd node: nothing is rebuilt, the layer before keeps
    its output (no 'chain's backward has not run')."""
    _sequential_vs_rebuild(lambda kind: kind(
        PerStep(nn.Conv2d(3, 8, 1)), revsnn.RevLIF(dim=2), RevSequential()))


def test_rebuild_sequential_with_a_non_reversible_chain():
    """A reversible=False chain runs through plain autograd: the layer before keeps its
    output, as under nn.Sequential."""
    def make(kind):
        net = stem_and_chain(kind)
        net[2].reversible = False
        return net
    _sequential_vs_rebuild(make)


class _Exp(nn.Module):  # saves its output (exp's backward reads it)
    def forward(self, x):
        return torch.exp(x)


def test_rebuild_sequential_off_grid_in_the_second_half_raises():
    """The grid check covers both halves of the chain's input: exp(0) = 1 is on the grid in
    the first half, the second half is not."""
    torch.manual_seed(0)
    net = RebuildSequential(_Exp(), chain(2))
    x = make_x((3, 2, 8, 3, 3), scale=0.3)
    x[:, :, :4] = 0
    y = net(x.requires_grad_())
    with pytest.raises(ValueError, match="not on the grid"):
        y.sum().backward()


def test_float16_autocast_branch_output_quantized_in_the_stream_dtype():
    """Under float16 autocast f and g return float16; Q must round in the float32 stream
    (in float16, v * 2**16 overflows to inf for |v| >= 1)."""
    torch.manual_seed(0)
    net = linear_chain(4)
    plain = plain_copy(net)
    x = make_x((3, 2, 8))
    out = []
    for m in (net, plain):
        xr = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16):
            y = m(xr)
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
        assert y.abs().max() > 1
        y.sum().backward()
        out.append((y, xr.grad))
    assert torch.equal(out[0][0], out[1][0])
    assert torch.allclose(out[0][1], out[1][1])


class _Bias(nn.Module):  # ignores its input: autograd gives its input no gradient (None)
    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.full((4,), 0.5))

    def forward(self, h):
        return self.b.expand_as(h)


def test_incoming_gradient_shared_with_another_node_is_left_alone():
    """The gradient that reaches the chain may be the very tensor another node reads (an add
    passes one gradient to both inputs): the backward must not write into it, also where a
    branch ignores its input (its input gradient is None)."""
    torch.manual_seed(0)
    net = RevSequential(RevBlock(nn.Linear(4, 4), nn.Linear(4, 4), dim=-1),
                        RevBlock(nn.Linear(4, 4), _Bias(), dim=-1))
    x = make_x((3, 2, 8), scale=0.5).requires_grad_()
    p = torch.ones(3, 2, 8, requires_grad=True)
    other = p * 2  # created before the chain: its backward runs after the chain's
    y = net(x)
    w = torch.linspace(-1, 1, y.numel()).view(y.shape)
    ((y + other) * w).sum().backward()
    assert torch.equal(p.grad, 2 * w)


def test_rebuild_sequential_layer_output_in_another_layout_keeps_its_own():
    """ReLU saves its output, here dense but not contiguous (a transposed input): the chain
    rebuilds a contiguous input, which cannot stand for that memory; the gradients stay those
    of nn.Sequential."""
    base = on_grid(make_x((3, 2, 3, 3, 8)))
    out = []
    for kind in (nn.Sequential, RebuildSequential):
        torch.manual_seed(0)
        net = kind(nn.ReLU(), chain(2))
        xr = base.clone().requires_grad_()
        x = xr.transpose(2, 4)
        assert not x.is_contiguous()
        y = net(x)
        (y * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        out.append((y, xr.grad))
    (y_a, g_a), (y_b, g_b) = out
    assert torch.equal(y_a, y_b) and torch.equal(g_a, g_b)
