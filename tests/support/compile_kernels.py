"""Compile every Triton kernel specialisation that revsnn's launchers produce for an sm_90 target,
on a machine without a GPU. Run without TRITON_INTERPRET: `python tests/support/compile_kernels.py`.

The launchers run as usual on CPU tensors, but each kernel's `run` is replaced by a compile of
the exact argument list it was given (types from the values, constexprs from the keywords), so
this checks what the interpreter cannot: that the compiler accepts the kernels as launched.
"""
import itertools
import math
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from revsnn._config import LIFConfig, RevLIFConfig
from revsnn.ops import _dispatch
from revsnn.ops import lif as lif_op
from revsnn.ops import rev_lif as op

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
          torch.bfloat16: "bf16", torch.int32: "i32", torch.int64: "i64"}
compiled = {}


def arg_type(v):
    if isinstance(v, torch.Tensor):
        return "*" + DTYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(type(v))


def compile_instead(kernel):
    def run(*args, grid, warmup, **kwargs):
        names = kernel.arg_names
        sig = {n: arg_type(a) for n, a in zip(names, args)}
        consts = {k: v for k, v in kwargs.items() if k in names}
        options = {"num_warps": 4}
        options.update({k: v for k, v in kwargs.items() if k not in names})  # launch options
        sig.update({k: "constexpr" for k in consts})
        key = (kernel.__name__, tuple(sorted(sig.items())), tuple(sorted(consts.items())),
               tuple(sorted(options.items())))
        if key not in compiled:
            src = ASTSource(kernel, sig, {(names.index(k),): v for k, v in consts.items()})
            compiled[key] = triton.compile(src, target=TARGET, options=options)
            assert "cubin" in compiled[key].asm
    return run


def main():
    for name in ("rev_lif", "lif"):
        mod = _dispatch.kernels_module(name)
        for k in (getattr(mod, f"{name}_fwd_kernel"), getattr(mod, f"{name}_bwd_kernel")):
            k.run = compile_instead(k)
    _dispatch.use_triton = lambda x, backend: True
    op.use_triton = lif_op.use_triton = _dispatch.use_triton
    compile_rev_lif()
    compile_lif()
    print(f"compiled {len(compiled)} specialisations for sm_90")
    return 0


def compile_rev_lif():
    options = [dict(), dict(v_reset=None, surrogate="atan", detach_reset=True),
               dict(tau=math.inf, beta1=-1.0, beta2=1.0),
               dict(decay_input=False, alpha=-0.25, surrogate="fast_sigmoid")]
    # every dtype with the default options, every option set in float32; scalar (C = 1) and
    # per-channel (C = 4) tau / v_threshold, and one of each
    cases = [(options[0], d) for d in (torch.float16, torch.bfloat16, torch.float64)]
    for (kw, dtype), (C_tau, C_vth) in itertools.product(
            [(k, torch.float32) for k in options] + cases, ((1, 1), (4, 4), (1, 4), (4, 1))):
        cfg = RevLIFConfig.build(**kw)
        params = (torch.full((C_tau,), 2.0), torch.ones(C_vth), cfg)
        compile_all(torch.zeros(3, 2, 2, 5, dtype=dtype), params, dtype)


def compile_all(x, params, dtype):
    """Every launch the op makes for this configuration: forward with each initial-state kind,
    forward saving M, inverse, fused backward (with and without v0/parameter gradients) and
    the backward over saved M."""
    cfg = params[-1]
    for v0 in (None, torch.zeros(2, 2, 5, dtype=torch.int32), torch.zeros(2, 2, 5)):
        y, vT, stash, _ = op.launch_fwd(x, v0, *params, True, False, "triton")
    op.launch_fwd(x, None, *params, False, True, "triton")
    stash = torch.zeros(cfg.stash_words(3), 10, dtype=torch.int32)
    m = torch.zeros(x.shape, dtype=torch.int32)
    op.launch_bwd(y, None, vT, stash, None, *params, 0, dtype, None, "triton")
    for v0_dtype in (None, torch.float32 if dtype != torch.float64 else dtype):
        op.launch_bwd(y, y, vT, stash, None, *params, 1, dtype, v0_dtype, "triton",
                      param_grad=v0_dtype is not None)
        op.launch_bwd(None, y, vT, stash, m, *params, 2, dtype, v0_dtype, "triton")


def compile_lif():
    """The standard LIF's launches: scalar and tensor parameters, with and without an initial
    potential, forward with and without H, backward with and without parameter gradients."""
    opts = [dict(), dict(v_reset=None, surrogate="atan", detach_reset=True),
            dict(decay_input=False, surrogate="fast_sigmoid")]
    cases = [(k, torch.float32) for k in opts]
    cases += [(opts[0], d) for d in (torch.float16, torch.bfloat16, torch.float64)]
    for kw, dtype in cases:
        cfg = LIFConfig.build(**kw)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        x = torch.zeros(3, 40, dtype=dtype)
        per_channel = (torch.full((4,), 2.0, dtype=acc), torch.ones(1, dtype=acc))
        for tau, vth in [(None, None), per_channel]:
            for v0 in (None, torch.zeros(40, dtype=acc)):
                s, vT, h = lif_op.launch_fwd(x, v0, tau, 2.0, vth, 1.0, cfg, 4, 10, True,
                                             "triton")
                lif_op.launch_fwd(x, v0, tau, 2.0, vth, 1.0, cfg, 4, 10, False, "triton")
                for grads in {False, tau is not None}:
                    lif_op.launch_bwd(s, vT, h, v0, tau, 2.0, vth, 1.0, cfg, 4, 10, grads,
                                      grads, "triton")


if __name__ == "__main__":
    sys.exit(main())
