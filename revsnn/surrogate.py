"""Surrogate derivatives dS/dM of the Heaviside spike, torch side (the Triton twin is in
``kernels/surrogate.py``). Formulas and default alphas:

* ``sigmoid`` (alpha 4): ``alpha * sigmoid(alpha z) * (1 - sigmoid(alpha z))``, SpikingJelly's
  ``Sigmoid`` (snnTorch's ``sigmoid(slope)`` with alpha = slope)
* ``atan`` (alpha 2): ``alpha / 2 / (1 + (pi/2 * alpha * z)**2)``, SpikingJelly's ``ATan`` and
  snnTorch's ``atan``
* ``fast_sigmoid`` (alpha 25): ``1 / (1 + alpha |z|)**2``, snnTorch's ``fast_sigmoid(slope)``
  (alpha = slope) and the SuperSpike surrogate of Zenke & Ganguli (2018): Norse's
  ``method="super"`` computes it with alpha 1, as does SpikingJelly's ``SuperSpike(alpha=1)``;
  SpikingJelly's ``SoftSign(alpha=2)`` is it with alpha 2
"""
from __future__ import annotations

import math

import torch

from ._config import SURROGATES


def surrogate_grad(z: torch.Tensor, alpha: float, kind: str) -> torch.Tensor:
    """dS/dz of the surrogate spike at ``z = M - v_threshold`` (same shape and dtype as z)."""
    kind_id = SURROGATES[kind][0]
    if kind_id == 0:
        s = torch.sigmoid(alpha * z)
        return alpha * s * (1 - s)
    if kind_id == 1:
        t = (math.pi / 2 * alpha) * z
        return (alpha / 2) / (1 + t * t)
    d = 1 + alpha * z.abs()
    return 1 / (d * d)


class SpikeFn(torch.autograd.Function):
    """Heaviside ``z >= 0`` forward, surrogate gradient backward (for the autograd references)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float, kind: str) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.alpha, ctx.kind = alpha, kind
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * surrogate_grad(z, ctx.alpha, ctx.kind), None, None


def spike(z: torch.Tensor, alpha: float, kind: str) -> torch.Tensor:
    """Spikes ``z >= 0`` (z's shape and dtype) whose gradient is the ``kind`` surrogate."""
    return SpikeFn.apply(z, alpha, kind)
