"""Measuring memory: what autograd keeps for the backward pass (KeptBytes) and the tensors live
over a block of code (LiveBytes); used by the demo, training, bench and tests."""
from __future__ import annotations

import weakref
from typing import Callable, Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_id(t: torch.Tensor) -> int:
    """Identity of the memory behind ``t``, shared by all its views. The storage's C++ address,
    not ``data_ptr()``: meta tensors have no data and all report pointer 0."""
    return t.untyped_storage()._cdata


class KeptBytes:
    """Context manager recording every tensor autograd saves inside the block, once per storage.

    The saved tensors are held until the block ends (so no storage address is reused while
    counting) and then released; ``bytes(only=..., exclude=...)`` sums the storages' sizes,
    selected by :func:`storage_id`. Saved-tensor hooks in force around the block (an outer
    ``KeptBytes``, ``torch.autograd.graph.save_on_cpu``, ...) still pack and unpack what is
    saved: measuring does not change where tensors are kept. Example: bytes a model keeps,
    parameters excluded::

        with KeptBytes() as kept:
            loss = model(x).sum()
        kept.bytes(exclude={storage_id(p) for p in model.parameters()})
    """

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self._held: dict[int, torch.Tensor] = {}

    def _pack(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        self._held.setdefault(storage_id(t), t)
        # A pack hook that returns a saved *output* itself closes a cycle through C++ (output ->
        # grad_fn -> saved -> output) that no garbage collector sees: a forward that is never
        # backpropagated (as when only measuring) would keep its whole graph alive for good.
        # The detached alias has the same storage and version counter, and no grad_fn.
        return t.detach(), t._version

    @staticmethod
    def _unpack(packed: tuple[torch.Tensor, int]) -> torch.Tensor:
        # with hooks autograd does not check saved tensors for in-place changes: done here
        t, version = packed
        if t._version != version:
            raise RuntimeError("one of the variables needed for gradient computation has been "
                               "modified by an inplace operation (seen by revsnn's KeptBytes)")
        return t

    def _pack_through(self, outer_pack: Callable) -> Callable:
        def pack(t: torch.Tensor):
            self._held.setdefault(storage_id(t), t)
            return outer_pack(t)
        return pack

    def __enter__(self) -> "KeptBytes":
        self.sizes, self._held = {}, {}
        # autograd applies only the innermost hooks: the outer ones are called from ours
        outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
        pack, unpack = ((self._pack, self._unpack) if outer is None
                        else (self._pack_through(outer[0]), outer[1]))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self.sizes = {sid: t.untyped_storage().nbytes() for sid, t in self._held.items()}
        self._held = {}

    def bytes(self, only: Optional[set] = None, exclude: Iterable[int] = ()) -> int:
        skip = set(exclude)
        return sum(n for sid, n in self.sizes.items()
                   if sid not in skip and (only is None or sid in only))


EXISTING = "(existing)"
"""The op that :class:`LiveBytes` names for the memory of its ``existing`` tensors."""


class LiveBytes(TorchDispatchMode):
    """Context manager following the memory of the tensors that ops make inside it, as a
    device allocator would count them: each new storage from the op that made it until it is
    freed. ``now`` and ``peak`` in bytes (``reset_peak()`` starts a new peak, e.g. per phase);
    ``at_peak``: ``(bytes, op, origin)`` of every storage live at the peak, largest first.

    Only tensors are seen, on any device (CPU runs count what a GPU run would allocate for
    tensors): memory an op takes and gives back inside itself (cuDNN workspaces, the torch
    twins' temporaries) is not, nor is anything allocated before the block. Under the mode
    revsnn's ops go through the dispatcher, so each is counted by its outputs, as its Triton
    kernels allocate them.

    ``existing``: tensors made before the block whose memory counts as live from the start, so
    that freeing it inside the block shows. ``origin``: a function of no arguments called at
    each allocation to label it (e.g. with the calling line: costly, off by default).
    """

    def __init__(self, existing: Iterable[torch.Tensor] = (),
                 origin: Optional[Callable[[], str]] = None) -> None:
        super().__init__()
        self.now = 0
        self._origin = origin
        self._live: dict[int, tuple[int, str, str]] = {}
        for t in existing:
            self._track(t.untyped_storage(), EXISTING)
        self.reset_peak()

    def reset_peak(self) -> None:
        self.peak, self._at_peak = self.now, dict(self._live)

    @property
    def at_peak(self) -> list:
        return sorted(self._at_peak.values(), key=lambda v: -v[0])

    def _freed(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.now -= entry[0]

    def _track(self, s: torch.UntypedStorage, op: str) -> None:
        key = id(s)
        if key in self._live or s.nbytes() == 0:
            return
        self._live[key] = (s.nbytes(), op, self._origin() if self._origin else "")
        # the storage's Python object lives exactly as long as its memory; the finalizer holds
        # the counter weakly, so that a finished count is not kept alive by live tensors
        weakref.finalize(s, LiveBytes._freed_in, weakref.ref(self), key)
        self.now += s.nbytes()

    @staticmethod
    def _freed_in(ref: "weakref.ref[LiveBytes]", key: int) -> None:
        live = ref()
        if live is not None:
            live._freed(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # storages by identity (storage_id): every meta tensor's data_ptr() is 0
        before = {storage_id(t): t.untyped_storage().nbytes()
                  for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            s, size = t.untyped_storage(), before.get(storage_id(t))
            # an input's memory (a view, an in-place op) is not a new allocation, unless the op
            # grew it (resize_, an out= argument of the wrong size)
            if size is None or id(s) not in self._live and s.nbytes() != size:
                self._track(s, str(func))
            elif id(s) in self._live and self._live[id(s)][0] != s.nbytes():
                old, op, origin = self._live[id(s)]
                self._live[id(s)] = (s.nbytes(), op, origin)
                self.now += s.nbytes() - old
        if self.now > self.peak:
            self.peak, self._at_peak = self.now, dict(self._live)
        return out
