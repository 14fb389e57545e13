"""The surrogate derivatives: the torch twin against the derivative of each surrogate's own
primitive (so a wrong formula in the one place both nodes share cannot pass), and the Triton
twin against the torch one."""
import math

import pytest
import torch
import triton
import triton.language as tl

from revsnn._config import SURROGATES
from revsnn.kernels.surrogate import surrogate_grad as tl_surrogate_grad
from revsnn.surrogate import spike, surrogate_grad

from .conftest import DEVICE, assert_close_rel

PRIMITIVES = {  # the smooth step whose derivative each surrogate is, as the libraries define it
    "sigmoid": lambda z, a: torch.sigmoid(a * z),
    "atan": lambda z, a: torch.atan(math.pi / 2 * a * z) / math.pi + 0.5,
    "fast_sigmoid": lambda z, a: z / (1 + a * z.abs()),
}
Z = torch.linspace(-3, 3, 601, dtype=torch.float64)  # 0 and +-1/2 on the grid


def test_every_surrogate_has_a_primitive_here():
    assert set(PRIMITIVES) == set(SURROGATES)


@pytest.mark.parametrize("kind", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 0.5, 1.0, 7.0])
def test_torch_surrogate_is_the_primitives_derivative(kind, alpha):
    a = SURROGATES[kind][1] if alpha is None else alpha
    z = Z.clone().requires_grad_()
    (want,) = torch.autograd.grad(PRIMITIVES[kind](z, a).sum(), z)
    got = surrogate_grad(Z, a, kind)
    assert got.dtype == Z.dtype and torch.allclose(got, want, rtol=1e-12, atol=0)
    assert want.max() > 0.01  # the comparison is not of two near-zero curves


@pytest.mark.parametrize("kind", sorted(SURROGATES))
def test_spike_fires_at_zero_and_carries_the_surrogate(kind):
    z = Z.clone().requires_grad_()
    s = spike(z, 3.0, kind)
    assert torch.equal(s, (Z >= 0).to(Z.dtype))
    (g,) = torch.autograd.grad(s.sum(), z)
    assert torch.equal(g, surrogate_grad(Z, 3.0, kind))


def test_fast_sigmoid_values():
    """1/(1 + alpha|z|)^2 at hand-computed points: 1 at the threshold, 1/4 where alpha|z| = 1."""
    got = surrogate_grad(torch.tensor([0.0, 0.04, -0.04, 0.12]), 25.0, "fast_sigmoid")
    assert torch.allclose(got, torch.tensor([1.0, 0.25, 0.25, 0.0625]), rtol=1e-6, atol=0)


@triton.jit
def _surrogate_kernel(z_ptr, out_ptr, n, alpha, KIND: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    z = tl.load(z_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl_surrogate_grad(z, alpha, KIND), mask=mask)


@pytest.mark.parametrize("kind", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 0.75])
def test_triton_surrogate_matches_torch(kind, alpha):
    a = SURROGATES[kind][1] if alpha is None else alpha
    z = Z.to(torch.float32, copy=True).to(DEVICE)[:-4]  # 597 values: a partial last block
    out = torch.empty_like(z)
    _surrogate_kernel[(triton.cdiv(z.numel(), 128),)](z, out, z.numel(), a,
                                                      KIND=SURROGATES[kind][0], BLOCK=128)
    assert_close_rel(out, surrogate_grad(z, a, kind), rel=1e-6)
