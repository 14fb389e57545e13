"""Reversible (RevNet-style) blocks over time-first tensors ``[T, B, C, *]``.

``RevBlock(f, g)`` splits its input along ``dim`` into halves ``x1, x2`` and computes::

    y1 = x1 + Q(f(x2))
    y2 = x2 + Q(g(y1))

so that the input follows from the output: ``x2 = y2 - Q(g(y1))``, ``x1 = y1 - Q(f(x2))``.
:class:`RevSequential` chains blocks under a single autograd node that keeps only the chain's
output; the backward rebuilds each block's input from its output and runs ``f``/``g`` again under
autograd, one block at a time, differentiating g's recomputed graph and freeing it before f runs
again. Activation memory is therefore that of the output plus one branch's recomputation,
whatever the depth.

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
* buffers (BatchNorm running statistics): the recomputation's updates are undone, so each
  forward counts once;
* random numbers (dropout): the CPU and CUDA generator states before ``f`` and before ``g``
  are kept and replayed (``preserve_rng_state``), without disturbing the generators;
* autocast: the recomputation runs under the autocast settings of the forward.

``f`` and ``g`` may depend only on their input and their own parameters and buffers; parameter
gradients are returned from the single autograd node (not accumulated by a nested backward), so
DistributedDataParallel sees ordinary gradients. Double backward is not supported.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from .._config import channel_dim
from .._readback import Readback

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


def _stream_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def quantize(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the block stream dtype, rounded to the ``2**-16`` grid (straight-through)."""
    return _Quantize.apply(x.to(_stream_dtype(x.dtype)))


STATE_ATTRS = ("state", "v")
"""Where a neuron keeps its state between calls: ``state`` (:class:`revsnn.RevLIF`) or ``v``
(:class:`revsnn.LIF`, SpikingJelly-style nodes)."""


def _state_attr(m: nn.Module) -> Optional[str]:
    if not callable(getattr(m, "reset", None)):
        return None
    return next((a for a in STATE_ATTRS if hasattr(m, a)), None)


def _states(module: nn.Module) -> list:
    """(neuron, attribute, value) of every neuron in ``module``; :func:`_put` puts them back."""
    return [(m, a, getattr(m, a)) for m in module.modules()
            if (a := _state_attr(m)) is not None]


def neurons(module: nn.Module) -> Iterator[nn.Module]:
    """Stateful submodules of ``module`` (itself included): those with a ``reset()`` method and
    a ``state`` or ``v`` attribute."""
    return (m for m, _, _ in _states(module))


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
        self.states = _states(module)
        self.cpu_rng = torch.get_rng_state() if rng else None
        self.cuda_rng = torch.cuda.get_rng_state(x.device) if rng and x.is_cuda else None

    def rerun(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """module(x) with the neuron states and random numbers of the recorded call. The
        neurons then get back the states they held before: the rerun's final states (a
        RevLIF's with its stash) would otherwise stay alive until the backward ends."""
        before = _states(module)
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

    def _split(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() < 3:
            raise ValueError(f"{name} must have shape [T, B, C, *] (rank >= 3), got rank "
                             f"{x.dim()}")
        d = channel_dim(x.shape, self.dim, name)
        if x.shape[d] % 2:
            raise ValueError(f"{name}.shape[{d}] (the split dim) must be even for a RevBlock, "
                             f"got {x.shape[d]}")
        return x.chunk(2, d)

    def _branch(self, out: torch.Tensor, like: torch.Tensor, which: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or out.shape != like.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"RevBlock.{which} must map a half {tuple(like.shape)} to the "
                             f"same shape, got {shape}")
        return _Quantize.apply(out.to(like.dtype))

    def couple(self, x: torch.Tensor, snaps: Optional[list] = None) -> torch.Tensor:
        """The block's output for an input already on the grid (plain autograd). With
        ``snaps``, appends the snapshots of the f and g calls (for a later recomputation)."""
        x1, x2 = self._split(x, "x")
        if snaps is not None:
            snaps.append(_Snapshot(self.f, x2, self.preserve_rng_state))
        y1 = x1 + self._branch(self.f(x2), x2, "f")
        if snaps is not None:
            snaps.append(_Snapshot(self.g, y1, self.preserve_rng_state))
        y2 = x2 + self._branch(self.g(y1), y1, "g")
        return torch.cat([y1, y2], self.dim)

    def invert(self, y: torch.Tensor, snap_f: Optional[_Snapshot] = None,
               snap_g: Optional[_Snapshot] = None,
               gy: Optional[torch.Tensor] = None, params: Optional[list] = None):
        """Input of the block from its output ``y``. With ``gy`` (and the snapshots of the
        forward), also ``dL/dx`` and the gradients of ``params`` (None where unused).

        Memory: x and dL/dx are written into their halves (no concatenation), and g's
        recomputed graph is differentiated and freed before f runs again, so that one branch's
        activations are live at a time."""
        y1, y2 = self._split(y, "y")
        x = torch.empty_like(y)
        x1, x2 = x.chunk(2, self.dim)
        if gy is None:
            with torch.no_grad():
                g_out = snap_g.rerun(self.g, y1) if snap_g else self.g(y1)
                torch.sub(y2, self._branch(g_out, y1, "g"), out=x2)
                del g_out
                f_out = snap_f.rerun(self.f, x2) if snap_f else self.f(x2)
                torch.sub(y1, self._branch(f_out, x2, "f"), out=x1)
            return x
        gy1, gy2 = self._split(gy, "grad")
        n = len(params)
        g_out, g_in = self._rerun(self.g, snap_g, y1)
        with torch.no_grad():
            torch.sub(y2, self._branch(g_out, y1, "g"), out=x2)
        g_grads = torch.autograd.grad(g_out, [g_in] + params, gy2.to(g_out.dtype),
                                      allow_unused=True)
        del g_out, g_in
        gy1 = _add(gy1, g_grads[0])
        f_out, f_in = self._rerun(self.f, snap_f, x2)
        with torch.no_grad():
            q = self._branch(f_out, x2, "f")
        f_grads = torch.autograd.grad(f_out, [f_in] + params, gy1.to(f_out.dtype),
                                      allow_unused=True)
        del f_out, f_in
        # only now: x1 shares its version counter with x2, the input f's graph saved
        torch.sub(y1, q, out=x1)
        del q
        gx = torch.empty_like(gy)
        gx1, gx2 = gx.chunk(2, self.dim)
        gx1.copy_(gy1)
        if f_grads[0] is None:
            gx2.copy_(gy2)
        else:
            torch.add(gy2, f_grads[0], out=gx2)
        return x, gx, [_add(a, b) for a, b in zip(g_grads[1:1 + n], f_grads[1:1 + n])]

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


class _RevChain(torch.autograd.Function):
    """The whole chain as one autograd node that saves only the chain's output."""

    @staticmethod
    def forward(ctx, x, blocks, *params):
        xq = quantize(x)
        snaps: list = []
        amax = xq.abs().amax() if xq.numel() else xq.new_zeros(())
        y = xq
        for b in blocks:
            y = b.couple(y, snaps)
            if y.numel():
                amax = torch.maximum(amax, y.abs().amax())
        # read in the backward after nothing more than the forward (see Readback)
        ctx.blocks, ctx.snaps, ctx.amax = blocks, snaps, Readback(amax)
        ctx.index = {id(p): i for i, p in enumerate(params)}  # gradient slot of each parameter
        ctx.autocast = _Autocast(x.device.type)
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, gy):
        (y,) = ctx.saved_tensors
        amax = ctx.amax.value()
        if not amax < LIMIT:
            raise ValueError(
                f"RevSequential backward: a block input or output reached |value| = "
                f"{amax} (or NaN/Inf); reversible blocks rebuild their input exactly "
                f"only while |value| < {LIMIT:g} (grid 2**-{GRID_BITS} in float32). Scale the "
                f"activations down (e.g. normalise inside f/g) or use reversible=False.")
        index = ctx.index
        grads: list = [None] * len(index)
        gy = gy.to(y.dtype)
        with ctx.autocast:  # the neurons keep their states: _Snapshot.rerun puts them back
            for i in range(len(ctx.blocks) - 1, -1, -1):
                b = ctx.blocks[i]
                bp = [p for p in b.parameters() if p.requires_grad]
                with _KeepBuffers(b):
                    y, gy, pg = b.invert(y, ctx.snaps[2 * i], ctx.snaps[2 * i + 1], gy, bp)
                for p, g in zip(bp, pg):
                    grads[index[id(p)]] = _add(grads[index[id(p)]], g)
        gx = gy.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return (gx, None) + tuple(grads)


def _params(blocks: nn.ModuleList) -> list:
    """Unique parameters of the chain that require a gradient, in a fixed order
    (``parameters()`` yields a shared parameter once)."""
    return [p for p in blocks.parameters() if p.requires_grad]


def _run(blocks: nn.ModuleList, x: torch.Tensor, reversible: bool) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    params = _params(blocks)
    records = torch.is_grad_enabled() and (x.requires_grad or bool(params))
    if reversible and records:
        return _RevChain.apply(x, blocks, *params)
    y = quantize(x)
    for b in blocks:
        y = b.couple(y)
    return y


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

    def __getitem__(self, i: int) -> RevBlock:
        return self.blocks[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.blocks, x, self.reversible)

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The (grid-rounded) input of the forward call that returned ``y``, rebuilt from ``y``.

        The neurons inside must hold the state that call started from (after
        :func:`reset_neurons` for a call that began a sequence); dropout must be off (eval
        mode). Buffers and neuron states are left as they were.
        """
        y = quantize(y)
        states = _states(self)
        try:
            with _KeepBuffers(self):
                for b in reversed(self.blocks):
                    y = b.invert(y)
        finally:
            _put(states)
        return y

    def extra_repr(self) -> str:
        return f"reversible={self.reversible}"
