"""Reversible (RevNet-style) blocks over time-first tensors ``[T, B, C, *]``.

``RevBlock(f, g)`` splits its input along ``dim`` into halves ``x1, x2`` and computes::

    y1 = x1 + Q(f(x2))
    y2 = x2 + Q(g(y1))

so that the input follows from the output: ``x2 = y2 - Q(g(y1))``, ``x1 = y1 - Q(f(x2))``.
:class:`RevSequential` chains blocks under a single autograd node that keeps only the chain's
output; the backward rebuilds each block's input from its output and runs ``f``/``g`` again under
autograd, one block at a time, differentiating g's recomputed graph and freeing it before f runs
again. The halves travel as separate tensors; the backward holds one pair of input halves and
one of gradient halves, rewritten in place from block to block, and lets go of the chain's
output once its last block is inverted. Activation memory is therefore about two outputs' worth
plus one branch's recomputation, whatever the depth. The chain's input, rebuilt too, is handed
back to the layer that produced it when both sit in a :class:`RebuildSequential`, so that layer
need not keep its own copy.

Exactness. In floating point ``(x1 + a) - a`` need not give back ``x1``; one flipped bit would
cross a spiking node's input grid and flip spikes further down. ``Q`` rounds to the fixed grid
``2**-16`` (straight-through gradient), and the block input is rounded to it too, so every value
is a multiple of ``2**-16``. A multiple of ``2**-16`` with ``|v| < 2**8`` has at most 24
significant bits and is exact in float32; a float32 sum that comes out below ``2**8`` in
magnitude was therefore exact, and so is the subtraction that undoes it. (A float32 ``>= 2**8``
is itself a multiple of ``2**-15``, so ``Q`` of a large ``f`` output is still on the grid.) The
blocks keep that stream in float32 (float64 stays float64; half types are promoted): grid
``2**-16``, range ``|value| < 2**8 = 256`` for the block input and every block output. The
forward tracks the largest magnitude on the device; the backward raises ValueError if it
reached the range (or was NaN/Inf), rather than return gradients of a network it cannot rebuild.

State. The recomputation must see what the forward saw:

* neurons (any submodule with a ``reset()`` method and a ``state`` attribute, as
  :class:`revsnn.RevLIF`, or ``v``, as :class:`revsnn.LIF`): the state each had before
  ``f``/``g`` ran is kept (a reference: a neuron replaces its state, never edits it in place)
  and put back for the recomputation; the neurons end with the state they held when the
  backward began. A state carried in from an earlier call enters without autograd history
  (the forward ran under no_grad), so gradients stop at call boundaries, as RevLIF's always do;
* buffers: each buffer tensor held before ``f``/``g`` ran is put back for the recomputation
  (a neuron that keeps its state in a buffer, as snnTorch's ``init_hidden``, replaces it),
  and the recomputation's updates (BatchNorm running statistics) are undone, so each forward
  counts once;
* random numbers (dropout): the CPU and CUDA generator states before ``f`` and before ``g``
  are kept and replayed (``preserve_rng_state``), without disturbing the generators;
* autocast: the recomputation runs under the autocast settings of the forward.

``f`` and ``g`` may depend only on their input and their own parameters and buffers; parameter
gradients are returned from the single autograd node (not accumulated by a nested backward), so
DistributedDataParallel sees ordinary gradients. Double backward is not supported (it
raises).

torch.compile. A chain on its reversible path, and the layer that hands its output to it in a
:class:`RebuildSequential`, run as one eager region (``torch.compiler.disable``): the rest of the
model compiles around them, with the eager numbers. In the model zoo's reversible networks that
region holds most of the convolutions, so compiling gains little there.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

from .._config import acc_dtype, channel_dim
from .._readback import Readback
from ..ops._dispatch import first_order
from ..state import CHECKED_LATER

GRID_BITS = 16
"""Block values are multiples of ``2**-GRID_BITS``."""
LIMIT = 2.0 ** 8
"""Block inputs and outputs must satisfy ``|value| < LIMIT`` for exact reconstruction."""

_SCALE = float(2 ** GRID_BITS)


class _Quantize(torch.autograd.Function):
    """Round to the block grid; the gradient passes straight through."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.mul(_SCALE).round_().div_(_SCALE)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def quantize(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the block stream dtype, rounded to the ``2**-16`` grid (straight-through)."""
    return _Quantize.apply(x.to(acc_dtype(x.dtype)))


STATE_ATTRS = ("state", "v")
"""Where a neuron keeps its state between calls: ``state`` (:class:`revsnn.RevLIF`) or ``v``
(:class:`revsnn.LIF`, SpikingJelly-style nodes)."""


def _state_attr(m: nn.Module) -> Optional[str]:
    if not callable(getattr(m, "reset", None)):
        return None
    return next((a for a in STATE_ATTRS if hasattr(m, a)), None)


def _states(module: nn.Module) -> list:
    """(neuron, attribute, value) of every neuron in ``module``; :func:`_put` puts them back."""
    found = []
    for m in module.modules():  # a loop, not a comprehension with :=, which dynamo cannot trace
        a = _state_attr(m)
        if a is not None:
            found.append((m, a, getattr(m, a)))
    return found


def neurons(module: nn.Module) -> Iterator[nn.Module]:
    """Stateful submodules of ``module`` (itself included): those with a ``reset()`` method and
    a ``state`` or ``v`` attribute."""
    return (m for m, _, _ in _states(module))


def _buffers(module: nn.Module) -> list:
    """(module, name, tensor) of every buffer in ``module``, as :func:`_states` lists states: a
    neuron that keeps its state in a buffer (snnTorch's ``init_hidden``) replaces it, so the
    tensor it held before a call is the state that call started from. A buffer updated in
    place (BatchNorm's running statistics) is the same tensor before and after; the
    recomputation does not read those (``_KeepBuffers`` undoes its writes)."""
    return [(m, n, b) for m in module.modules() for n, b in m._buffers.items()
            if b is not None]


def _put(states: list) -> None:
    for m, a, v in states:
        setattr(m, a, v)


def reset_neurons(module: nn.Module) -> None:
    """Reset every neuron in ``module``: the next call starts a new sequence."""
    for m in neurons(module):
        m.reset()


class _Snapshot:
    """What one call of f (or g) depended on besides its input and parameters."""

    __slots__ = ("states", "cpu_rng", "cuda_rng")

    def __init__(self, module: nn.Module, x: torch.Tensor, rng: bool) -> None:
        self.states = _states(module) + _buffers(module)
        self.cpu_rng = torch.get_rng_state() if rng else None
        self.cuda_rng = torch.cuda.get_rng_state(x.device) if rng and x.is_cuda else None

    def rerun(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """module(x) with the neuron states, buffers and random numbers of the recorded call.
        The neurons then get back the states they held before: the rerun's final states (a
        RevLIF's with its stash) would otherwise stay alive until the backward ends."""
        before = _states(module) + _buffers(module)
        _put(self.states)
        try:
            if self.cpu_rng is None:
                return module(x)
            devices = [x.device] if self.cuda_rng is not None else []
            with torch.random.fork_rng(devices=devices):
                torch.set_rng_state(self.cpu_rng)
                if self.cuda_rng is not None:
                    torch.cuda.set_rng_state(self.cuda_rng, x.device)
                return module(x)
        finally:
            _put(before)


class _Autocast:
    """The autocast settings of the forward, re-entered for the recomputation."""

    def __init__(self, device_type: str) -> None:
        types = {device_type, "cpu"}
        self.settings = [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d))
                         for d in sorted(types)]

    def __enter__(self):
        self.ctx = [torch.autocast(d, dtype=dt, enabled=on) for d, on, dt in self.settings]
        for c in self.ctx:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.ctx):
            c.__exit__(*exc)


class _KeepBuffers:
    """Undo whatever a recomputation writes into the buffers (BatchNorm running stats)."""

    def __init__(self, module: nn.Module) -> None:
        self.saved = [(b, b.clone()) for b in module.buffers()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, c in self.saved:
                b.copy_(c)


class RevBlock(nn.Module):
    """Additive coupling ``y1 = x1 + Q(f(x2)), y2 = x2 + Q(g(y1))`` over ``[T, B, C, *]``.

    Args:
        f, g: modules mapping a half ``[T, B, C/2, *]`` to a tensor of the same shape (any
            dtype; the sum is taken in the block stream dtype, see the module docstring).
        dim: the split dimension (C, even); 1..rank-1 or negative.
        preserve_rng_state: replay the random numbers of the forward in the recomputation
            (needed for dropout inside ``f``/``g``).

    Called on its own, the block is a one-block :class:`RevSequential` (keeps only its output);
    chain blocks in a :class:`RevSequential` so that memory stays flat in depth.
    """

    def __init__(self, f: nn.Module, g: nn.Module, dim: int = 2,
                 preserve_rng_state: bool = True) -> None:
        super().__init__()
        if not isinstance(f, nn.Module) or not isinstance(g, nn.Module):
            raise TypeError(f"f and g must be nn.Module, got {type(f).__name__} and "
                            f"{type(g).__name__}")
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        self.f, self.g, self.dim = f, g, dim
        self.preserve_rng_state = bool(preserve_rng_state)

    def split_dim(self, x: torch.Tensor, name: str) -> int:
        """The dim of ``x`` this block splits (validated: rank >= 3, even size)."""
        if x.dim() < 3:
            raise ValueError(f"{name} must have shape [T, B, C, *] (rank >= 3), got rank "
                             f"{x.dim()}")
        d = channel_dim(x.shape, self.dim, name)
        if x.shape[d] % 2:
            raise ValueError(f"{name}.shape[{d}] (the split dim) must be even for a RevBlock, "
                             f"got {x.shape[d]}")
        return d

    def _branch(self, out: torch.Tensor, like: torch.Tensor, which: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.shape != like.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"RevBlock.{which} must map a half {tuple(like.shape)} to the "
                             f"same shape, got {shape}")
        return _Quantize.apply(out.to(like.dtype))

    def couple(self, x1: torch.Tensor, x2: torch.Tensor,
               snaps: Optional[list] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output halves ``(y1, y2)`` for input halves already on the grid (plain
        autograd). With ``snaps``, appends the snapshots of the f and g calls (for a later
        recomputation)."""
        if snaps is not None:
            snaps.append(_Snapshot(self.f, x2, self.preserve_rng_state))
        y1 = x1 + self._branch(self._call("f", x2), x2, "f")
        if snaps is not None:
            snaps.append(_Snapshot(self.g, y1, self.preserve_rng_state))
        y2 = x2 + self._branch(self._call("g", y1), y1, "g")
        return y1, y2

    def _call(self, which: str, half: torch.Tensor) -> torch.Tensor:
        """f or g on a half, with a hint where it fails on half-precision parameters (a model
        cast with .to(bfloat16)): the stream stays float32, so they get float32 input."""
        module = getattr(self, which)
        try:
            return module(half)
        except RuntimeError as e:
            low = {p.dtype for p in module.parameters()} & {torch.float16, torch.bfloat16}
            if not low or torch.is_autocast_enabled(half.device.type):
                raise
            raise TypeError(
                f"RevBlock.{which} failed on its {half.dtype} input with {sorted(map(str, low))} "
                f"parameters: the blocks keep their stream in {half.dtype} (exact reconstruction "
                f"needs it); keep the blocks' parameters in float32 and compute in half precision "
                f"under torch.autocast") from e

    def invert(self, y1: torch.Tensor, y2: torch.Tensor, snap_f: Optional[_Snapshot] = None,
               snap_g: Optional[_Snapshot] = None, gy: Optional[tuple] = None,
               params: Optional[list] = None, reuse: bool = False):
        """Input halves ``(x1, x2)`` of the block from its output halves. With ``gy`` (the
        halves of dL/dy) and the snapshots of the forward, also the halves of dL/dx and the
        gradients of ``params`` (None where unused).

        ``reuse``: ``y1, y2`` and ``gy`` are the caller's own tensors, each contiguous, and
        x and dL/dx are written into them (a chain's backward, which then holds one of each).
        Otherwise each half is a new tensor, made only when needed: x1 and dL/dx2 after f's
        graph is freed.

        Memory: g's recomputed graph is differentiated and freed before f runs again, so that
        one branch's activations are live at a time (:meth:`_undo`)."""
        if gy is None:
            with torch.no_grad():
                g_out = snap_g.rerun(self.g, y1) if snap_g else self.g(y1)
                x2 = _minus(y2, self._branch(g_out, y1, "g"), reuse)
                del g_out
                f_out = snap_f.rerun(self.f, x2) if snap_f else self.f(x2)
                x1 = _minus(y1, self._branch(f_out, x2, "f"), reuse)
            return x1, x2
        gy1, gy2 = gy
        n = len(params)
        x2, g_grads = self._undo("g", snap_g, y1, y2, gy2, params, reuse)
        gx1 = _plus(gy1, g_grads[0], reuse)
        g_grads[0] = None
        x1, f_grads = self._undo("f", snap_f, x2, y1, gx1, params, reuse)
        gx2 = _plus(gy2, f_grads[0], reuse)
        grads = [_add(a, b) for a, b in zip(g_grads[1:1 + n], f_grads[1:1 + n])]
        return (x1, x2), (gx1, gx2), grads

    def _undo(self, which: str, snap: _Snapshot, inp: torch.Tensor, coupled: torch.Tensor,
              grad_out: torch.Tensor, params: list, reuse: bool):
        """One half of the inverse with its gradient: branch ``which`` recomputed on ``inp``
        and differentiated with ``grad_out`` (its graph is freed on return), then the coupled
        half ``coupled - Q(branch(inp))``; returns it and the gradients (input, ``params``).
        The quantized output is made only once the graph is freed, so the two are never live
        together."""
        out, leaf = self._rerun(getattr(self, which), snap, inp)
        grads = _unshared(torch.autograd.grad(out, [leaf] + params, grad_out.to(out.dtype),
                                              allow_unused=True), grad_out)
        del leaf
        with torch.no_grad():
            x = _minus(coupled, self._branch(out, inp, which), reuse)
        return x, grads

    @staticmethod
    def _rerun(module: nn.Module, snap: _Snapshot, inp: torch.Tensor):
        """(module's output, its input leaf) recomputed under autograd as in the forward."""
        with torch.enable_grad():
            leaf = inp.detach().requires_grad_()
            return snap.rerun(module, leaf), leaf

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """See :meth:`RevSequential.inverse`."""
        return RevSequential(self).inverse(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(nn.ModuleList([self]), x, True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _add(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if a is None:
        return b
    return a if b is None else a + b


def _minus(a: torch.Tensor, b: torch.Tensor, in_place: bool) -> torch.Tensor:
    return a.sub_(b) if in_place else a - b


def _plus(a: torch.Tensor, b: Optional[torch.Tensor], in_place: bool) -> torch.Tensor:
    """``a + b`` (b None: a); a new contiguous tensor unless ``in_place``."""
    if b is None:
        return a if in_place else a.clone(memory_format=torch.contiguous_format)
    return a.add_(b) if in_place else a + b


def _unshared(grads: tuple, buf: torch.Tensor) -> list:
    """autograd.grad's results as a list, copying any parameter gradient that is ``buf``'s
    memory (the gradient passed through unchanged): a chain's backward overwrites ``buf``."""
    ptr = buf.untyped_storage().data_ptr()
    return [grads[0]] + [g.clone() if g is not None and g.untyped_storage().data_ptr() == ptr
                         else g for g in grads[1:]]


def _chain_dim(blocks: nn.ModuleList, x: torch.Tensor, name: str) -> int:
    """The split dim of ``x`` that every block of the chain uses: the halves pass from block
    to block."""
    dims = sorted({b.split_dim(x, name) for b in blocks})
    if len(dims) > 1:
        raise ValueError(f"the RevBlocks of one RevSequential must split the same dim; for "
                         f"{name} of rank {x.dim()} they split dims {dims}")
    return dims[0]


def _halves(x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The halves of ``x`` along ``d``, each a new contiguous tensor on the grid. Contiguous
    whatever x's layout (channels-last): the backward recomputes f and g on halves of the
    chain's output, and a convolution may round differently in another memory format."""
    return tuple(quantize(h).contiguous() for h in x.chunk(2, d))


def _amax(amax: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.maximum(amax, t.abs().amax()) if t.numel() else amax


class _Kept:
    """A tensor kept for the backward as ``save_for_backward`` keeps it (through the
    saved-tensor hooks in force: ``torch.autograd.graph.saved_tensors_hooks``), but let go of
    as soon as the backward has read it: a saved tensor lives until the node's backward ends,
    and the chain's output is dead once the last block has been inverted."""

    def __init__(self, t: torch.Tensor) -> None:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
        # detached: the output itself would close a cycle output -> grad_fn -> ctx -> output
        t, self.version = t.detach(), t._version
        self.unpack = hooks[1] if hooks else None
        self.packed = hooks[0](t) if hooks else t

    def take(self) -> torch.Tensor:
        if self.packed is None:
            raise RuntimeError("RevSequential backward ran a second time: pass "
                               "retain_graph=True to the first backward")
        t = self.unpack(self.packed) if self.unpack else self.packed
        # without hooks t shares the output's version counter, as a saved tensor would
        if self.unpack is None and t._version != self.version:
            raise RuntimeError("RevSequential backward: the chain's output was modified in "
                               "place after the forward; the backward rebuilds every block's "
                               "input from it")
        if not torch._C._autograd._get_current_graph_task_keep_graph():
            self.packed = None
        return t


class _Rebuilt:
    """A chain's input as the chain's backward rebuilds it, handed to the nodes of the layer
    before the chain that saved it (see :class:`RebuildSequential`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Optional[torch.Tensor] = None

    def view(self, size, stride, offset) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError(
                "RebuildSequential: a layer's backward needs the input of the RevSequential "
                "after it, which that chain's backward rebuilds, but the chain's backward has "
                "not run; the layer's output must feed the chain alone (or set the "
                "RebuildSequential's rebuild = False: it then keeps that output itself)")
        return self.value.as_strided(size, stride, offset)


class _Saved:
    """What the pack hook of :class:`RebuildSequential` returns for a tensor the layer before
    a chain saves: the tensor itself until the layer returns, then either a view of the
    chain's rebuilt input (when it is that input's memory) or what the hooks in force outside
    (``torch.autograd.graph.saved_tensors_hooks``) made of it."""

    __slots__ = ("t", "packed", "unpack", "rebuilt", "geometry", "version", "modified")

    def __init__(self, t: torch.Tensor) -> None:
        self.t, self.packed, self.unpack, self.rebuilt = t, None, None, None
        # the hooks take autograd's own in-place check away: made here as it would make it
        self.version, self.modified = t._version, False

    def is_memory_of(self, x: torch.Tensor) -> bool:
        return (self.t.dtype == x.dtype and self.t.device == x.device
                and self.t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr())

    def settle(self, rebuilt: Optional[_Rebuilt], outer) -> None:
        t, self.t = self.t, None
        if t._version != self.version:
            self.modified = True
        elif rebuilt is not None:
            self.rebuilt, self.geometry = rebuilt, (t.shape, t.stride(), t.storage_offset())
        elif outer is not None:
            self.packed, self.unpack = outer[0](t), outer[1]
        else:
            self.packed = t

    def get(self) -> torch.Tensor:
        if self.modified or self.unpack is None and self.packed is not None and (
                self.packed._version != self.version):
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                "inplace operation (a tensor saved by the layer before a RevSequential in a "
                "RebuildSequential)")
        if self.rebuilt is not None:
            return self.rebuilt.view(*self.geometry)
        return self.unpack(self.packed) if self.unpack is not None else self.packed


def _rebuildable(x: torch.Tensor) -> bool:
    """Whether a chain's rebuilt input can stand for ``x``'s memory: a float32 (float64)
    tensor covering its memory exactly, in the layout the chain rebuilds (contiguous)."""
    return (x.numel() > 0 and x.dtype == acc_dtype(x.dtype) and x.is_contiguous()
            and x.storage_offset() == 0
            and x.untyped_storage().nbytes() == x.numel() * x.element_size())


class _RevChain(torch.autograd.Function):
    """The whole chain as one autograd node that saves only the chain's output."""

    @staticmethod
    def forward(ctx, x, blocks, rebuilt, *params):
        d = _chain_dim(blocks, x, "x")
        pair = _halves(x, d)
        ctx.rebuilt, ctx.off_grid = rebuilt, None
        if rebuilt is not None:  # the rebuilt halves must be x's values exactly
            h1, h2 = x.chunk(2, d)
            ctx.off_grid = Readback(torch.logical_or((h1 != pair[0]).any(),
                                                     (h2 != pair[1]).any()))
        snaps: list = []
        amax = _amax(_amax(pair[0].new_zeros(()), pair[0]), pair[1])
        checked_later = CHECKED_LATER.set(True)  # the backward reruns (and checks) every call
        try:
            for b in blocks:
                pair = b.couple(*pair, snaps)
                amax = _amax(_amax(amax, pair[0]), pair[1])
        finally:
            CHECKED_LATER.reset(checked_later)
        y = torch.cat(pair, d)
        # read in the backward after nothing more than the forward (see Readback)
        ctx.blocks, ctx.snaps, ctx.amax, ctx.dim = blocks, snaps, Readback(amax), d
        ctx.index = {id(p): i for i, p in enumerate(params)}  # gradient slot of each parameter
        ctx.autocast = _Autocast(x.device.type)
        ctx.x_dtype = x.dtype
        ctx.y = _Kept(y)
        return y

    @staticmethod
    def _backward(ctx, gy):
        y = ctx.y.take()
        amax = ctx.amax.value()
        if not amax < LIMIT:
            raise ValueError(
                f"RevSequential backward: a block input or output reached |value| = "
                f"{amax} (or NaN/Inf); reversible blocks rebuild their input exactly "
                f"only while |value| < {LIMIT:g} (grid 2**-{GRID_BITS} in float32). Scale the "
                f"activations down (e.g. normalise inside f/g) or use reversible=False.")
        if ctx.off_grid is not None and ctx.off_grid.value():
            raise ValueError(
                f"RebuildSequential backward: the input of a RevSequential was not on the grid "
                f"2**-{GRID_BITS} (float32), so the layer before it cannot be given its output "
                f"back exactly; put that chain in an nn.Sequential")
        index = ctx.index
        grads: list = [None] * len(index)
        pair, gpair = y.chunk(2, ctx.dim), gy.to(y.dtype).chunk(2, ctx.dim)
        del y  # from here only pair holds the output: freed once the last block is inverted
        with ctx.autocast:  # the neurons keep their states: _Snapshot.rerun puts them back
            for i in range(len(ctx.blocks) - 1, -1, -1):
                b = ctx.blocks[i]
                # the parameters the forward recorded that still require grad (one frozen
                # since is not in the recomputed graph: it gets None, not an error)
                bp = [p for p in b.parameters() if id(p) in index and p.requires_grad]
                # the output (maybe the caller's) and the incoming gradient (maybe shared
                # with other nodes) are only read; the next blocks overwrite the chain's own
                reuse = i < len(ctx.blocks) - 1
                with _KeepBuffers(b):
                    pair, gpair, pg = b.invert(*pair, ctx.snaps[2 * i], ctx.snaps[2 * i + 1],
                                               gpair, bp, reuse)
                for p, g in zip(bp, pg):
                    grads[index[id(p)]] = _add(grads[index[id(p)]], g)
        if ctx.rebuilt is not None:
            # held from here by the saved tensors it stands for only: freed with them once
            # the layer before has run its backward (a second backward finds it there)
            ctx.rebuilt.value, ctx.rebuilt = torch.cat(pair, ctx.dim), None
        del pair
        gx = torch.cat(gpair, ctx.dim).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return (gx, None, None) + tuple(grads)

    backward = staticmethod(first_order(_backward.__func__, "RevSequential"))


def _params(blocks: nn.ModuleList) -> list:
    """Unique parameters of the chain that require a gradient, in a fixed order
    (``parameters()`` yields a shared parameter once)."""
    return [p for p in blocks.parameters() if p.requires_grad]


def _records(x: torch.Tensor, params: list) -> bool:
    """Whether a reversible chain (not empty; ``params``: its :func:`_params`) called on ``x``
    takes its autograd node (_RevChain)."""
    return torch.is_grad_enabled() and (x.requires_grad or bool(params))


def _eager_region(fn: Callable) -> Callable:
    """``fn``, run eagerly when torch.compile traces its caller (``torch.compiler.disable``).

    The reversible path needs it: its backward reruns the blocks and hands tensors over through
    saved-tensor hooks and Python state, which dynamo cannot capture. Traced, it broke into
    many graphs and recompiled its helpers until inductor, given dynamic shapes, failed to
    compile; as one eager region it runs as it does without compile. torch's lazy form of the
    decorator keeps ``import revsnn`` from importing dynamo (a second and more), and eager
    calls skip it altogether.
    """
    disabled = torch._disable_dynamo(fn)

    @functools.wraps(fn)
    def run(*args):
        return disabled(*args) if torch.compiler.is_compiling() else fn(*args)
    return run


@_eager_region
def _rev_chain(x: torch.Tensor, blocks: nn.ModuleList, rebuilt: Optional[_Rebuilt],
               params: list) -> torch.Tensor:
    return _RevChain.apply(x, blocks, rebuilt, *params)


def _run(blocks: nn.ModuleList, x: torch.Tensor, reversible: bool,
         rebuilt: Optional[_Rebuilt] = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if not blocks:
        return quantize(x)
    params = _params(blocks)
    if reversible and _records(x, params):
        return _rev_chain(x, blocks, rebuilt, params)
    d = _chain_dim(blocks, x, "x")
    pair = _halves(x, d)
    for b in blocks:
        pair = b.couple(*pair)
    return torch.cat(pair, d)


class RevSequential(nn.Module):
    """A chain of :class:`RevBlock` s: ``[T, B, C, *] -> [T, B, C, *]`` (float32 stream).

    Args:
        blocks: the RevBlocks, applied in order.
        reversible: True: one autograd node keeps only the output and the backward rebuilds
            every block's input (memory flat in depth). False: the same function through plain
            autograd (keeps every block's activations); values and gradients agree.
    """

    def __init__(self, *blocks: RevBlock, reversible: bool = True) -> None:
        super().__init__()
        for i, b in enumerate(blocks):
            if not isinstance(b, RevBlock):
                raise TypeError(f"RevSequential takes RevBlocks; argument {i} is "
                                f"{type(b).__name__}")
        self.blocks = nn.ModuleList(blocks)
        self.reversible = bool(reversible)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: Union[int, slice]) -> Union[RevBlock, "RevSequential"]:
        if isinstance(i, slice):
            return RevSequential(*self.blocks[i], reversible=self.reversible)
        return self.blocks[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.blocks, x, self.reversible, self._rebuilt)

    _rebuilt: Optional[_Rebuilt] = None  # set by RebuildSequential for one call

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The (grid-rounded) input of the forward call that returned ``y``, rebuilt from ``y``.

        The neurons inside must hold the state that call started from (after
        :func:`reset_neurons` for a call that began a sequence); dropout must be off (eval
        mode). Buffers and neuron states are left as they were.
        """
        if not self.blocks:
            return quantize(y)
        d = _chain_dim(self.blocks, y, "y")
        pair = _halves(y, d)  # new tensors: the blocks rebuild their inputs in them
        states = _states(self)
        try:
            with _KeepBuffers(self):
                for b in reversed(self.blocks):
                    pair = b.invert(*pair, reuse=True)
        finally:
            _put(states)
        return torch.cat(pair, d)

    def extra_repr(self) -> str:
        return f"reversible={self.reversible}"


class RebuildSequential(nn.Sequential):
    """``nn.Sequential`` in which a layer whose output goes straight into a reversible
    :class:`RevSequential` keeps no copy of that output for its backward: the chain's backward
    rebuilds its input exactly and hands it over, before the layer's backward runs. The layer's
    own node is then free of it (a :class:`revsnn.RevLIF` before a chain keeps nothing but its
    final state), and the output's memory goes as soon as the chain has read it.

    How: the layer runs under ``torch.autograd.graph.saved_tensors_hooks``; what it saves in
    the output's memory is replaced by a view of the rebuilt input, the rest goes on to the
    hooks in force outside, as without this class. Values and gradients are those of
    ``nn.Sequential``. The output must feed the chain alone (it does, in a plain sequence) and
    be on the blocks' grid (``2**-16``, float32: a float32 RevLIF output is); otherwise the
    backward raises. Where nothing is saved in the output's memory, or the chain does not take
    its reversible path (no grad, ``reversible=False``), this is ``nn.Sequential``; so it is
    with ``rebuild = False`` (an attribute, e.g. ``model.body.rebuild = False`` for the model
    zoo), for a graph that reads a layer's output elsewhere too (a regulariser on the spikes
    backpropagated on its own).
    """

    rebuild: bool = True

    def forward(self, x):
        if not self.rebuild:
            return super().forward(x)
        mods, i = list(self), 0
        while i < len(mods):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if not (isinstance(nxt, RevSequential) and nxt.reversible
                    and torch.is_grad_enabled()):
                x = mods[i](x)
                i += 1
                continue
            x = _into_chain(mods[i], nxt, x)
            i += 2
        return x


@_eager_region  # as the chain itself
def _into_chain(layer: nn.Module, chain: RevSequential, x: torch.Tensor) -> torch.Tensor:
    """``chain(layer(x))``, the layer's saves in its output's memory rebuilt by the chain."""
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    saved: list = []

    def pack(t: torch.Tensor) -> _Saved:
        saved.append(_Saved(t))
        return saved[-1]
    with torch.autograd.graph.saved_tensors_hooks(pack, _Saved.get):
        x = layer(x)
    mine = [s.is_memory_of(x) for s in saved]
    rebuilt = (_Rebuilt() if any(mine) and _rebuildable(x)
               and len(chain) and _records(x, _params(chain.blocks)) else None)
    for s, own in zip(saved, mine):
        s.settle(rebuilt if own else None, outer)
    saved.clear()  # autograd holds what it needs; nothing here outlives the chain's call
    chain._rebuilt = rebuilt
    try:
        return chain(x)
    finally:
        chain._rebuilt = None
