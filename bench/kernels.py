"""Node microbenchmarks: forward and forward+backward time of every implementation.

Two workloads:

* SpikingJelly's harness shape ``[T, 64, 65536]`` (T in 4, 8, 16, 32; float32 and float16): the
  node alone.
* The Open Neuromorphic benchmark: ``Linear(n, n)`` then the node, batch 16, T = 500,
  n = 4096 and 16384 neurons, float32 (snnTorch runs the linear inside its step loop).
* GPU only: the reversible node's own check (issue 2), T = 16, ``[16, 256, 65536]`` (2**24
  neurons per step), float32, fused and recompute backward, next to a copy.

"fwd" is a forward with autograd recording (what training runs); "fwd+bwd" adds the backward of
a fixed random output gradient. On CUDA the times are ``triton.testing.do_bench`` medians, and
the effective bandwidth is the bytes the implementation must move divided by its time:
forward = read x + write y + write what it keeps for backward; backward = read the output
gradient + write the input gradient + read what it kept (once). It is set next to a measured
device-to-device copy of x (read + write). On CPU (``--quick``) the shapes are small, the times
are ``time.perf_counter`` medians, and no bandwidth is reported.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import (Context, Missing, Progress, dtype_name, failure, kept_by_role, ok_groups,
                     time_ms)
from .nodes import NODES, build, input_for

COLUMNS = ("impl", "label", "device", "dtype", "T", "shape", "fwd_ms", "fwdbwd_ms",
           "fwdbwd_ms_per_step", "fwd_GBps", "fwdbwd_GBps", "copy_GBps", "fwdbwd_frac_of_copy",
           "peak_MiB", "out_dtype", "timer", "status", "note")
ON_COLUMNS = ("impl", "label", "device", "dtype", "T", "batch", "neurons", "fwd_ms",
              "fwdbwd_ms", "peak_MiB", "out_dtype", "timer", "status", "note")

ALL = ["revlif", "revlif-recompute", "lif", "sj", "sj-triton", "sj-torch", "sj-cuda",
       "snntorch", "norse", "norse-compile"]
PRIORITY = ["revlif", "revlif-recompute", "lif", "sj-triton", "sj-torch", "snntorch", "norse"]
ON_ALL = ["revlif", "revlif-recompute", "lif", "sj", "snntorch", "norse", "norse-compile"]
ON_PRIORITY = ["revlif", "lif", "sj", "snntorch", "norse"]
COMPILE_500 = "not run: torch.compile would unroll Norse's Python loop over T"
# the reversible node at T = 16 and 2**24 neurons per step, float32 (GPU only)
NODE_CHECK = dict(Ts=(16,), inner=(256, 65536), dtypes=(torch.float32,),
                  impls=["revlif", "revlif-recompute", "lif"])


def plan(ctx: Context) -> dict:
    """Shapes, dtypes and implementations per mode, and what is skipped (with why)."""
    gpu_on = dict(T=500, batch=16, neurons=(4096, 16384))
    if ctx.mode == "priority":
        why = "skipped in the priority subset (run `python -m bench` for all)"
        return dict(Ts=(4, 16, 32), inner=(64, 65536), dtypes=(torch.float32, torch.float16),
                    impls=PRIORITY, skip={k: why for k in ALL if k not in PRIORITY},
                    on=dict(gpu_on, neurons=(4096,)), on_impls=ON_PRIORITY,
                    skip_on={k: why for k in ON_ALL if k not in ON_PRIORITY})
    if ctx.gpu:
        return dict(Ts=(4, 8, 16, 32), inner=(64, 65536), dtypes=(torch.float32, torch.float16),
                    impls=ALL, skip={}, on=gpu_on, on_impls=ON_ALL[:-1],
                    skip_on={"norse-compile": COMPILE_500})
    # CPU: small shapes, labelled as CPU everywhere
    slow = ctx.mode in ("tiny", "quick")
    why = f"skipped in {ctx.mode} mode: torch.compile takes seconds per shape on CPU"
    tiny = ctx.mode == "tiny"
    return dict(Ts=(4, 8) if tiny else (4, 8, 16, 32), inner=(2, 256) if tiny else (4, 2048),
                dtypes=(torch.float32,) if slow else (torch.float32, torch.float16),
                impls=[k for k in ALL if not (slow and k == "norse-compile")],
                skip={"norse-compile": why} if slow else {},
                on=dict(T=10, batch=2, neurons=(64,)) if tiny
                else dict(T=50, batch=4, neurons=(512,)),
                on_impls=ON_ALL[:-1], skip_on={"norse-compile": why if slow else COMPILE_500})


def _timer(ctx: Context) -> str:
    return "do_bench median (CUDA)" if ctx.gpu else "perf_counter median (CPU)"


def _peak_mib(ctx: Context, fn) -> float | None:
    """Memory the step allocates above what was allocated before it (CUDA only)."""
    if not ctx.gpu:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def _time_pair(ctx: Context, fn, x: torch.Tensor, params: list):
    """(fwd ms, fwd+bwd ms, peak MiB, output bytes, output dtype, kept bytes by category)."""
    y = fn(x)  # warm-up: Triton compilation, torch.compile, library set-up
    y, saved = kept_by_role(fn, x)
    g = torch.randn_like(y)
    y_bytes, y_dtype = y.nbytes, y.dtype
    del y  # and its graph: nothing of it may stay allocated while timing

    def fwd():
        fn(x)

    def fwdbwd():
        fn(x).backward(g)
        x.grad = None
        for p in params:
            p.grad = None
    t_f = time_ms(fwd, ctx.device)
    t_fb = time_ms(fwdbwd, ctx.device)
    return t_f, t_fb, _peak_mib(ctx, fwdbwd), y_bytes, y_dtype, saved


def _copy_gbps(ctx: Context, x: torch.Tensor) -> float:
    dst = torch.empty_like(x)
    t = time_ms(lambda: dst.copy_(x), ctx.device)
    return 2 * x.nbytes / t / 1e6


def run(ctx: Context) -> list:
    cfg = plan(ctx)
    where = "GPU" if ctx.gpu else "CPU, reduced shape, 1 thread"
    harness = ctx.table(
        "kernels", f"Node time, SpikingJelly's harness shape [T, {cfg['inner'][0]}, "
        f"{cfg['inner'][1]}] ({where})", COLUMNS,
        notes=["fwd: forward with autograd recording; fwdbwd: forward + backward. GBps: bytes "
               "the implementation must move (x, y, what it keeps, the gradients) / time; "
               "copy_GBps: a device-to-device copy of x. peak_MiB: CUDA memory a fwd+bwd "
               "allocates above what was allocated before it. CPU rows: perf_counter medians "
               "on small shapes, not comparable with GPU figures."])
    on = ctx.table(
        "kernels_on", f"Open Neuromorphic benchmark: Linear + node ({where})", ON_COLUMNS,
        notes=["Linear(n, n) then the node over [T, batch, n]; snnTorch applies the linear "
               "per step inside its loop. Published reference: Open Neuromorphic, 'SNN library "
               "benchmarks' (open-neuromorphic.org), batch 16, T = 500, 4096 and 16384 "
               "neurons, forward + backward; their figures are not copied here."])
    for key, why in cfg["skip"].items():
        harness.add(impl=key, label=NODES[key].label, status=why)
    for key, why in cfg["skip_on"].items():
        on.add(impl=key, label=NODES[key].label, status=why)
    Ts, dtypes = cfg["Ts"], cfg["dtypes"]
    n_on = len(cfg["on"]["neurons"]) * len(cfg["on_impls"])
    n_node = len(NODE_CHECK["impls"]) if ctx.gpu else 0
    prog = Progress("kernels", len(dtypes) * len(Ts) * len(cfg["impls"]) + n_on + n_node)
    tables = [harness, on]
    if ctx.gpu:
        node = ctx.table(
            "kernels_node", "Reversible node at T = 16, [16, 256, 65536] (2**24 neurons per "
            "step), float32 (GPU)", COLUMNS,
            notes=["The check of issue 2: each kernel's effective bandwidth against a "
                   "device-to-device copy (target >= 80%), and the fused backward against "
                   "backward='recompute' (backward = fwdbwd_ms - fwd_ms; target >= 1.5x)."])
        _harness(ctx, NODE_CHECK, node, prog, fit=False)
        tables.append(node)
    _harness(ctx, cfg, harness, prog)
    _open_neuromorphic(ctx, cfg, on, prog)
    return tables


def _harness(ctx: Context, cfg: dict, table, prog: Progress, fit: bool = True) -> None:
    Ts, inner = cfg["Ts"], cfg["inner"]
    dev = ctx.device.type
    for dtype in cfg["dtypes"]:
        copy = {}
        built = {}
        for key in cfg["impls"]:
            try:
                built[key] = build(key, ctx.device, dtype)
            except Missing as e:
                table.add(impl=key, label=NODES[key].label, device=dev, dtype=dtype_name(dtype),
                          status=f"missing: {e}")
        for T in Ts:
            x = input_for((T, *inner), ctx.device, dtype, seed=T)
            if ctx.gpu:
                copy[T] = _copy_gbps(ctx, x)
            for key in cfg["impls"]:
                prog.step(f"{key} {dtype_name(dtype)} T={T}")
                if key not in built:
                    continue
                base = dict(impl=key, label=NODES[key].label, device=dev,
                            dtype=dtype_name(dtype), T=T, shape=f"{T}x{inner[0]}x{inner[1]}",
                            timer=_timer(ctx), note=built[key].note)
                try:
                    t_f, t_fb, peak, y_bytes, y_dtype, saved = _time_pair(
                        ctx, built[key].fn, x, [])
                except Exception as e:  # Missing, or a labelled failure
                    table.add(**base, status=failure(e))
                    continue
                row = dict(fwd_ms=t_f, fwdbwd_ms=t_fb, fwdbwd_ms_per_step=t_fb / T,
                           peak_MiB=peak, out_dtype=dtype_name(y_dtype))
                if ctx.gpu:
                    fwd_b = x.nbytes + y_bytes + saved["other"]
                    bwd_b = y_bytes + x.nbytes + sum(saved.values())
                    row.update(fwd_GBps=fwd_b / t_f / 1e6,
                               fwdbwd_GBps=(fwd_b + bwd_b) / t_fb / 1e6, copy_GBps=copy[T])
                    row["fwdbwd_frac_of_copy"] = row["fwdbwd_GBps"] / copy[T]
                table.add(**base, **row, status="ok")
            del x
    if not fit:
        return
    for (impl, dt), rows in ok_groups(table.rows, "impl", "dtype").items():
        ctx.fit("kernels", "fwd+bwd time", impl,
                f"{dt}, [T, {inner[0]}, {inner[1]}], {'GPU' if ctx.gpu else 'CPU'}",
                "ms per extra step", [r["T"] for r in rows], [r["fwdbwd_ms"] for r in rows])


def _open_neuromorphic(ctx: Context, cfg: dict, table, prog: Progress) -> None:
    T, B = cfg["on"]["T"], cfg["on"]["batch"]
    dev = ctx.device.type
    for n in cfg["on"]["neurons"]:
        x = input_for((T, B, n), ctx.device, torch.float32, seed=n)
        for key in cfg["on_impls"]:
            prog.step(f"open-neuromorphic {key} n={n}")
            base = dict(impl=key, label=NODES[key].label, device=dev, dtype="float32", T=T,
                        batch=B, neurons=n, timer=_timer(ctx))
            torch.manual_seed(0)
            linear = nn.Linear(n, n).to(ctx.device)
            try:
                node = build(key, ctx.device, torch.float32, pre=linear)
                t_f, t_fb, peak, _, y_dtype, _ = _time_pair(ctx, node.fn, x,
                                                            list(linear.parameters()))
            except Exception as e:  # Missing, or a labelled failure
                table.add(**base, status=failure(e))
                continue
            table.add(**base, fwd_ms=t_f, fwdbwd_ms=t_fb, peak_MiB=peak,
                      out_dtype=dtype_name(y_dtype), status="ok", note=node.note)
            del node, linear
        del x
