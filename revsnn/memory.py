"""Measuring what autograd keeps for the backward pass (used by the demo, training and bench)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch


def storage_id(t: torch.Tensor) -> int:
    """Identity of the memory behind ``t``, shared by all its views. The storage's C++ address,
    not ``data_ptr()``: meta tensors have no data and all report pointer 0."""
    return t.untyped_storage()._cdata


class KeptBytes:
    """Context manager recording every tensor autograd saves inside the block, once per storage.

    The saved tensors are held until the block ends (so no storage address is reused while
    counting) and then released; ``bytes(only=..., exclude=...)`` sums the storages' sizes,
    selected by :func:`storage_id`. Example: bytes a model keeps, parameters excluded::

        with KeptBytes() as kept:
            loss = model(x).sum()
        kept.bytes(exclude={storage_id(p) for p in model.parameters()})
    """

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self._held: dict[int, torch.Tensor] = {}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._held.setdefault(storage_id(t), t)
        # A pack hook that returns a saved *output* itself closes a cycle through C++ (output ->
        # grad_fn -> saved -> output) that no garbage collector sees: a forward that is never
        # backpropagated (as when only measuring) would keep its whole graph alive for good.
        # The detached alias has the same storage and no grad_fn.
        return t.detach()

    def __enter__(self) -> "KeptBytes":
        self.sizes, self._held = {}, {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
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

    def ids(self) -> set:
        return set(self.sizes)
