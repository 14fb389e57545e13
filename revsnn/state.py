"""State of a reversible LIF node between calls."""
from __future__ import annotations

import contextvars
from typing import NamedTuple, Optional

import torch

from ._config import ERROR_CODES, F_BITS, POISON_LIMIT

CHECKED_LATER = contextvars.ContextVar("revsnn_checked_later", default=False)
"""True while the node calls being made will be checked by their caller: a reversible chain's
forward, whose backward runs every call again under autograd (and so checks it there). A
``RevLIF`` layer then takes no readback of its own for a later check."""


class Made(NamedTuple):
    """What the values of a :class:`RevLIFState` depend on besides the input: the forward's
    number of steps, split dim and the node settings that enter its arithmetic, as
    ``(name, value)`` pairs; ``tau`` / ``v_threshold`` there: the number, or None for a
    per-channel tensor (not compared)."""

    steps: int
    dim: int
    settings: tuple

    def differences(self, other: "Made") -> list[str]:
        """``name: mine vs other`` for each entry that differs (``v_reset`` None is the soft
        reset, compared like any value)."""
        mine = dict(steps=self.steps, dim=self.dim, **dict(self.settings))
        theirs = dict(steps=other.steps, dim=other.dim, **dict(other.settings))
        tensors = ("tau", "v_threshold")
        return [f"{k}: {a} vs {theirs[k]}" for k, a in mine.items()
                if a != theirs[k] and not (k in tensors and None in (a, theirs[k]))]


class RevLIFState(NamedTuple):
    """Final state of :func:`revsnn.functional.rev_lif`, and the initial state of the next call.

    Attributes:
        v_fixed: int32 ``[B, C, *]`` (x's shape without T): the membrane potentials of both
            groups in fixed point, ``2**-18`` units. A word below ``-2**30`` marks a neuron pair
            whose input or state went out of range (see :meth:`check`).
        stash: int32 ``[n_words, B*C/2*prod(*)]``: the low bits that ``|beta| = 2**-k`` shifted
            out of the potentials at each step, ``k1 + k2`` bits per pair per step, packed
            ``32 // (k1 + k2)`` steps per word. Empty (``n_words = 0``) when not kept or when
            ``|beta1| = |beta2| = 1``. Needed only to run the node backwards.
        made: the :class:`Made` of the forward that returned this state (None for a state
            built by hand): :func:`revsnn.functional.rev_lif_inverse` raises if its own steps
            or settings differ, which would rebuild a wrong x without any other sign.
    """

    v_fixed: torch.Tensor
    stash: torch.Tensor
    made: Optional[Made] = None

    @property
    def v(self) -> torch.Tensor:
        """Membrane potential ``[B, C, *]`` as float32 (NaN for flagged neurons), no gradient."""
        v = self.v_fixed.to(torch.float32) * 2.0 ** -F_BITS
        return torch.where(self.v_fixed < POISON_LIMIT, float("nan"), v)

    def error(self, min_word: int | None = None) -> str | None:
        """Description of every error flagged in this state, or None if it is healthy.
        ``min_word``: the smallest word of ``v_fixed`` if already known (the healthy path then
        needs no reduction and no wait for the device)."""
        if self.v_fixed.numel() == 0:
            return None
        if min_word is None:
            min_word = int(self.v_fixed.amin())
        if min_word >= POISON_LIMIT:
            return None
        bad = self.v_fixed < POISON_LIMIT
        codes = torch.unique(self.v_fixed[bad].long() + 2 ** 31).tolist()
        found = sorted({bit for c in codes for bit in ERROR_CODES if c & bit})
        n = int(bad.sum()) // 2
        return (f"{n} neuron pair(s) flagged: " + "; ".join(ERROR_CODES[b] for b in found))

    def check(self, where: str = "rev_lif", min_word: int | None = None) -> None:
        """Raise ValueError if any neuron was flagged (NaN/Inf or out-of-range input/state);
        ``min_word`` as for :meth:`error`."""
        msg = self.error(min_word)
        if msg is not None:
            raise ValueError(f"{where}: {msg}. The result is not trustworthy; see revsnn "
                             f"README 'Exactness' for the input range of each dtype and alpha.")
