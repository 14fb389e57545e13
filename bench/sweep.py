"""Launch-configuration sweep of the reversible node's kernels, and where its time goes (GPU only).

    python -m bench.sweep [--quick] [--baseline DIR] [--host]

For each shape: the raw forward kernel (writing the stash) and fused backward kernel under each
(BLOCK, num_warps), and with ``--baseline DIR`` those of another copy of kernels/ (an earlier
revision, for an A/B in one run), timed with ``triton.testing.do_bench`` medians next to a
device-to-device copy of x, with registers and spills of each compiled kernel and a check that
every row gives the same bits; then the whole autograd call (``revsnn.functional.rev_lif`` and
its backward) at the default configuration, whose excess over the raw kernels is host time the
device waited for; then the host time per call of each layer of that call (``host_times``:
kernel launches alone, the functional call, autograd) next to SpikingJelly's Triton LIF, and a
``torch.profiler`` table of one forward + backward. ``--host``: the host table only; it also
runs on CPU under ``TRITON_INTERPRET=1``, where it times the host path with the launches left
out.
Bytes counted: forward reads x and writes y and the stash; backward reads y, the output gradient
and the stash and writes the input gradient (the final state is negligible).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import triton
import triton.language as tl

from revsnn._config import RevLIFConfig, channel_param
from revsnn.functional import rev_lif
from revsnn.ops import _dispatch
from revsnn.ops import rev_lif as op

from .common import time_ms

CONFIGS = [(128, 4), (256, 4), (256, 8), (128, 2), (512, 8)]
HOST_REPS = 500


def _compiled(kernel, launch):
    """The CompiledKernel a launch used (Triton's run returns it)."""
    got = []
    run = kernel.run

    def capture(*a, **k):
        got.append(run(*a, **k))
        return got[-1]
    kernel.run = capture
    try:
        launch()
    finally:
        kernel.run = run
    return got[-1]


@contextlib.contextmanager
def _kernels(module):
    """The reversible node's ops launch the kernels of ``module`` (a copy of kernels/rev_lif.py
    from another revision, or a stand-in) while the context lasts."""
    current = op.kernels_module
    op.kernels_module = lambda name: module
    try:
        yield
    finally:
        op.kernels_module = current


def _resources(k) -> tuple:
    """(registers, spills) of a compiled kernel ("-" under the interpreter)."""
    return getattr(k, "n_regs", "-"), getattr(k, "n_spills", "-")


def load_kernels(path: str):
    """A kernels package at ``path`` (a copy of kernels/ from another revision: rev_lif.py and
    what it imports), to time against the current one in the same run."""
    import importlib
    import sys
    from pathlib import Path
    where = Path(path).resolve()
    sys.path.insert(0, str(where.parent))
    return importlib.import_module(f"{where.name}.rev_lif")


def sweep(shape, configs, bench, device="cuda", baseline=None):
    T, B, C = shape
    x = torch.randn(shape, device=device) * 1.5 + 0.3
    x4 = x.view(T, B, 2, C // 2)
    cfg = RevLIFConfig.build()
    tau = channel_param(2.0, "tau", C, x.device)
    vth = channel_param(1.0, "v_threshold", C, x.device)
    dst = torch.empty_like(x)
    copy_ms = bench(lambda: dst.copy_(x))
    copy_gbps = 2 * x.nbytes / copy_ms / 1e6
    print(f"\n### shape {list(shape)} float32: copy {copy_ms:.3f} ms = {copy_gbps:.0f} GB/s")
    print("| kernels | BLOCK | warps | fwd_ms | fwd_GBps | fwd/copy | bwd_ms | bwd_GBps | bwd/copy "
          "| regs fwd/bwd | spills fwd/bwd | same bits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    gy = torch.randn_like(x4)
    ref = None
    default = _dispatch.LAUNCH["rev_lif"]
    rows = [("current", op.kernels_module("rev_lif"), c) for c in configs]
    if baseline is not None:
        rows += [("baseline", baseline, default)]
    for label, mod, (block, warps) in rows:
        _dispatch.LAUNCH["rev_lif"] = (block, warps)
        try:
            with _kernels(mod):
                def fwd():
                    return op.launch_fwd(x4, None, tau, vth, cfg, True, False, "triton")
                kf = _compiled(mod.rev_lif_fwd_kernel, fwd)
                y, vT, stash, _ = fwd()

                def bwd():
                    return op.launch_bwd(y, gy, vT, stash, None, tau, vth, cfg, 1, x.dtype, None,
                                         "triton")
                kb = _compiled(mod.rev_lif_bwd_kernel, bwd)
                gx = bwd()[0]
                bits = (y, vT, stash, gx)
                same = ref is None or all(torch.equal(a, b) for a, b in zip(bits, ref))
                ref = ref or bits
                t_f, t_b = bench(fwd), bench(bwd)
                rf, rb = _resources(kf), _resources(kb)
                f_bytes = 2 * x.nbytes + stash.nbytes
                b_bytes = 3 * x.nbytes + stash.nbytes
                print(f"| {label} | {block} | {warps} | {t_f:.3f} | {f_bytes / t_f / 1e6:.0f} | "
                      f"{f_bytes / t_f / 1e6 / copy_gbps:.2f} | {t_b:.3f} | "
                      f"{b_bytes / t_b / 1e6:.0f} | {b_bytes / t_b / 1e6 / copy_gbps:.2f} | "
                      f"{rf[0]}/{rb[0]} | {rf[1]}/{rb[1]} | {same} |")
                del y, vT, stash, gx, bits
        finally:
            _dispatch.LAUNCH["rev_lif"] = default
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)

    def call():
        return rev_lif(xg, backend="triton")[0]

    def call_bwd():
        call().backward(g)
        xg.grad = None
    t_call, t_call_b = bench(call), bench(call_bwd)
    print(f"\nautograd call at BLOCK {default[0]}, {default[1]} warps: forward {t_call:.3f} ms, "
          f"forward + backward {t_call_b:.3f} ms (raw kernels above: the difference is host time "
          f"the device waited for)")
    return call_bwd


HOST_SHAPE = (4, 2, 64)
"""Small enough that every kernel is a few microseconds: a loop of calls measures the host."""


def _host_ms(fn, device: torch.device, reps: int) -> float:
    """Wall time per call of ``reps`` calls made back to back with one synchronisation at the
    end: with kernels this small the device keeps up, so this is the host's time per call."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1e3


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


class _Clone(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


class _NoLaunch:
    """Stands in for a kernels module: a kernel's launch only zeroes its int32 arguments, so
    that the state it leaves reads as healthy (a flagged one would make the backward raise)."""

    def __getattr__(self, name):
        return self

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            for a in args:
                if isinstance(a, torch.Tensor) and a.dtype == torch.int32:
                    a.zero_()
        return launch


def _no_launch(fn):
    """``fn`` with the reversible node's kernel launches left out (outputs still allocated, the
    int32 ones zeroed): what the host spends around the launches."""
    def run():
        with _kernels(_NoLaunch()):
            fn()
    return run


def host_times(device: torch.device, reps: int = 200) -> list:
    """(label, host ms per call, or the reason it is missing) for the layers of the reversible
    node's call and for SpikingJelly's Triton LIF, at :data:`HOST_SHAPE`: the raw kernel
    launches (``launch_fwd``/``launch_bwd``: output allocation + Triton's launch), the
    functional call without and with autograd recording, forward + backward, and both with the
    launches left out; beside them, what the machine takes for an allocation, a 3-argument
    Triton launch and a trivial autograd.Function. On CPU (Triton's interpreter, which would
    time Python running the kernels) only the rows without a launch."""
    from . import nodes
    from .common import Missing
    T, B, C = HOST_SHAPE
    x = nodes.input_for(HOST_SHAPE, device, torch.float32)
    x4 = x.detach().view(T, B, 2, C // 2)
    cfg = RevLIFConfig.build()
    tau = channel_param(2.0, "tau", C, device)
    vth = channel_param(1.0, "v_threshold", C, device)
    y, vT, stash, _ = op.launch_fwd(x4, None, tau, vth, cfg, True, False, "triton")
    gy = torch.randn_like(x4)
    g = torch.randn_like(x)

    def fwd_bwd(fn):
        def run():
            fn(x).backward(g)
            x.grad = None
        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn(x)
        return run

    def revlif(inp):
        return rev_lif(inp, backend="triton")[0]
    host_path = [
        ("machine: torch.empty_like", lambda: torch.empty_like(x)),
        ("machine: a trivial autograd.Function, forward + backward", fwd_bwd(_Clone.apply)),
        ("revsnn RevLIF: forward, kernel launches left out", _no_launch(lambda: revlif(x))),
        ("revsnn RevLIF: forward + backward, kernel launches left out",
         _no_launch(fwd_bwd(revlif))),
    ]
    if device.type != "cuda":
        return [(label, _host_ms(fn, device, reps)) for label, fn in host_path]
    rows = host_path + [
        ("machine: a Triton kernel launch (copy, 3 arguments)",
         lambda: _copy_kernel[(1,)](x4, gy, x4.numel(), BLOCK=256)),
        ("revsnn: forward kernel launch (launch_fwd)",
         lambda: op.launch_fwd(x4, None, tau, vth, cfg, True, False, "triton")),
        ("revsnn: backward kernel launch (launch_bwd)",
         lambda: op.launch_bwd(y, gy, vT, stash, None, tau, vth, cfg, 1, x.dtype, None,
                               "triton")),
        ("revsnn RevLIF: forward, no autograd", no_grad(revlif)),
        ("revsnn RevLIF: forward, autograd recording", lambda: revlif(x)),
        ("revsnn RevLIF: forward + backward", fwd_bwd(revlif)),
    ]
    try:
        sj = nodes.build("sj-triton", device, torch.float32).fn
        rows += [("SpikingJelly Triton LIF: forward, autograd recording", lambda: sj(x)),
                 ("SpikingJelly Triton LIF: forward + backward", fwd_bwd(sj))]
    except Missing as e:
        rows.append(("SpikingJelly Triton LIF", f"missing: {e}"))
    return [(label, fn if isinstance(fn, str) else _host_ms(fn, device, reps))
            for label, fn in rows]


def _print_host(device: torch.device) -> None:
    print(f"\n### host time per call on {device.type}, shape {list(HOST_SHAPE)} float32 "
          f"({HOST_REPS} calls back to back, one synchronisation)\n\n| call | ms |\n|---|---|")
    for label, ms in host_times(device, HOST_REPS):
        print(f"| {label} | {ms if isinstance(ms, str) else f'{ms:.4f}'} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two configurations, one shape")
    ap.add_argument("--host", action="store_true", help="the host-time table only")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also time this copy of kernels/ (at the default launch options)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        if args.host and _dispatch.interpreting():
            torch.set_num_threads(1)
            _print_host(torch.device("cpu"))
            return 0
        print("bench.sweep needs a CUDA GPU (--host also runs on CPU, under "
              "TRITON_INTERPRET=1: the host path with the kernel launches left out)")
        return 1

    def bench(fn):
        return time_ms(fn, torch.device("cuda"))
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    if args.host:
        _print_host(torch.device("cuda"))
        return 0
    configs = CONFIGS[:2] if args.quick else CONFIGS
    shapes = [(16, 256, 65536)] if args.quick else [(16, 256, 65536), (4, 64, 65536)]
    step = None
    baseline = load_kernels(args.baseline) if args.baseline else None
    for shape in shapes:
        step = sweep(shape, configs, bench, baseline=baseline)
    _print_host(torch.device("cuda"))
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(f"\n### profile: 3 x forward + backward, shape {list(shapes[-1])}\n")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12,
                                    max_name_column_width=50))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
