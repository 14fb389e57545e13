"""Small device values that the host reads later, without waiting for the device now."""
from __future__ import annotations

from typing import Union

import torch


class Readback:
    """A 0-dim tensor's value, read on the host when it is needed rather than when it is made.

    On CUDA the value is copied into pinned host memory behind an event when the Readback is
    made, so that :meth:`value` waits, at most, for the work queued up to that point, not for
    what was queued since. The backward checks of the reversible node and the reversible blocks
    use it: their forwards compute the value to check (the smallest state word, the largest
    block magnitude) and their backwards read it after launching their own work, so the device
    is never idle while the host waits; so does the ``RevLIF`` layer for its calls that no
    backward checks, read at its next call or reset. On CPU the value is read at once
    (nothing to wait for). Either way :meth:`value` is the value the tensor had when the
    Readback was made.
    """

    __slots__ = ("_host", "_event")

    def __init__(self, t: torch.Tensor) -> None:
        if t.is_cuda:
            self._host = torch.empty((), dtype=t.dtype, pin_memory=True)
            self._host.copy_(t, non_blocking=True)  # on t's device's current stream
            self._event = torch.cuda.Event()
            self._event.record(torch.cuda.current_stream(t.device))
        else:
            self._host, self._event = t.item(), None

    def value(self) -> Union[int, float, bool]:
        """The value as a Python number."""
        if self._event is None:
            return self._host
        self._event.synchronize()
        return self._host.item()
