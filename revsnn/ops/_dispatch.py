"""Which path runs an op: the Triton kernels (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``) or the torch twins (CPU tensors)."""
from __future__ import annotations

import importlib
import os

import torch

from .._config import BACKENDS

LAUNCH = {"rev_lif": (128, 4), "lif": (256, 4)}
"""(BLOCK, num_warps) of each op's kernels: neurons (pairs, for the reversible node) per program,
and warps. The reversible node runs one pair per thread: on an H200 that took 30/34 registers
(forward/backward) against 60/63 with two pairs per thread, and ran 1.28x/1.25x faster at
2**28 elements (bench/sweep.py, bench/RESULTS.md). Read at each launch, so that the sweep can
vary it."""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(x: torch.Tensor, backend: str) -> bool:
    """True if the Triton kernels should run on x; raises for an impossible request."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if x.is_cuda:
        return True
    if backend == "triton":
        if x.device.type == "cpu" and interpreting():
            return True
        raise ValueError(f"backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 set "
                         f"before triton is imported, for CPU tensors); got device {x.device}")
    if x.device.type != "cpu":
        raise ValueError(f"unsupported device {x.device}: revsnn runs on CUDA and CPU")
    return False


def kernels_module(name: str):
    """revsnn.kernels.<name>, imported on first use so that `import revsnn` needs no triton."""
    return importlib.import_module(f"revsnn.kernels.{name}")


def launch_options(op: str) -> dict:
    """BLOCK and num_warps of the kernels of ``op`` (a key of LAUNCH)."""
    block, warps = LAUNCH[op]
    return dict(BLOCK=block, num_warps=warps)


def grid_1d(n: int, op: str) -> tuple[int]:
    """One program per BLOCK elements of ``op``'s kernels."""
    return (-(-n // LAUNCH[op][0]),)


def direct(args) -> bool:
    """True where an op may run its Python implementation itself instead of going through the
    dispatcher: eager, grad mode off (inside ``autograd.Function.forward``, or a first-order
    backward), no profiler, no Python dispatch or torch-function mode, and only plain CPU or
    CUDA tensors. Everywhere else (torch.compile, meta and fake tensors, FlopCounterMode and
    other modes, profiling, double backward) the dispatcher must see the op."""
    if (torch.is_grad_enabled() or torch.compiler.is_compiling()
            or torch._C._autograd._profiler_enabled() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()):
        return False
    for a in args:
        if isinstance(a, torch.Tensor) and not (type(a) is torch.Tensor
                                                and (a.is_cuda or a.is_cpu)):
            return False
    return True


class Op:
    """A ``torch.library`` custom op (``custom``, its ``torch.ops`` entry ``packet``) that eager
    calls run directly where :func:`direct` allows: the dispatcher's Python round trip took
    12 us per forward and 17 us per backward of the reversible node on the 2-core CPU of
    bench/RESULTS.md, out of about 150 us of host time per forward + backward."""

    def __init__(self, name: str, impl) -> None:
        self.impl = impl
        self.custom = torch.library.custom_op(f"revsnn::{name}", mutates_args=())(impl)
        self.packet = getattr(torch.ops.revsnn, name)
        self.register_fake = self.custom.register_fake

    def __call__(self, *args):
        return self.impl(*args) if direct(args) else self.packet(*args)


def custom_op(name: str):
    """Decorator: the function becomes the custom op ``revsnn::<name>``, as an :class:`Op`."""
    return lambda impl: Op(name, impl)


def first_order(backward, name: str):
    """``backward`` for an op whose backward is not itself differentiable: under
    ``create_graph=True`` its gradients come out requiring grad, and differentiating them
    raises instead of silently treating them as constants (``once_differentiable`` does that
    only when an incoming gradient requires grad; here the saved tensors carry the
    dependence on the input, so any second-order use is wrong)."""
    def wrapped(ctx, *grads):
        if not torch.is_grad_enabled():
            return backward(ctx, *grads)
        with torch.no_grad():
            out = backward(ctx, *grads)
        present = [i for i, g in enumerate(out) if isinstance(g, torch.Tensor)]
        guard = torch._C._functions.DelayedError(
            f"the backward of revsnn's {name} is not differentiable: double backward "
            f"(gradients of gradients, create_graph=True) is not supported".encode(),
            len(present))
        marked = guard(*[out[i].detach().requires_grad_() for i in present])
        out = list(out)
        for i, g in zip(present, marked if isinstance(marked, tuple) else (marked,)):
            out[i] = g
        return tuple(out)
    return wrapped


def differentiable(op: Op, setup_context, backward):
    """Register ``op``'s autograd and return a differentiable callable with its arguments.
    torch.compile traces the registered op; eager calls go through an equivalent
    ``torch.autograd.Function``, whose dispatch costs less host time (about 30 us less per
    forward of the reversible node on the 2-core CPU of bench/RESULTS.md, kernel launch
    excluded; 15 to 20 us more since its forward takes ctx). The backward is first-order only
    (:func:`first_order`)."""
    backward = first_order(backward, op.packet.__name__.removesuffix("_fwd"))
    op.custom.register_autograd(backward, setup_context=setup_context)

    def forward(ctx, *args):
        # the ctx-taking form: Function.apply with a separate setup_context binds the
        # arguments through inspect.signature on every call (15 us each on the CPU of
        # bench/RESULTS.md)
        output = op(*args)
        setup_context(ctx, args, output)
        return output
    function = type(f"{op.packet.__name__}_function", (torch.autograd.Function,), dict(
        forward=staticmethod(forward), backward=staticmethod(backward)))

    def apply(*args):
        if torch.compiler.is_compiling():
            return op.packet(*args)
        return function.apply(*args)
    return apply
