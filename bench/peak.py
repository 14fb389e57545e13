"""Where the peak memory of one training step goes: the network peaks of ``bench.network``,
taken apart.

    python -m bench.peak --model resnet18 --variant revlif-rev --T 16 --batch 32

One SGD step (``bench.network.SGDStep``, after a warm-up step) in three phases: forward (with
the loss), backward, update. Each phase's peak is counted above what was allocated before the
model was built (on CUDA; on CPU, above what was live when the step began).

* CUDA: ``torch.cuda.max_memory_allocated`` per phase; and the caching allocator's trace of the
  step (``torch.cuda.memory._record_memory_history``) replayed in order to list the allocations
  live at the step's peak, grouped by the line of revsnn, bench or ``torch.nn`` code that made
  them (an allocation made inside the backward engine is listed under the ``backward()`` call,
  with the op's name where the trace has it).
* CPU: the CPU allocator's allocation and free events of the step, recorded by
  ``torch.profiler`` (``profile_memory=True``) and summed in order; the op running at the peak.
  On CPU the torch twins of revsnn's kernels run step by step with temporaries the Triton
  kernels do not have, and convolutions use other workspaces than cuDNN: a CPU peak locates
  transient memory, it does not predict the GPU figure.
* Both: the same step counted over tensors (``revsnn.memory.LiveBytes``): weights, gradients,
  momentum and input from the start, then every tensor an op makes until it is freed, with the
  line that made it. The same figure on every device: what a GPU allocator would count
  without the memory ops take and give back inside themselves (cuDNN workspaces). On CUDA the
  allocator's peak minus this one is that memory, and the same step also reads the allocator
  around every op (``OpAllocator``): the op inside which the allocator's count was highest,
  that count taken apart (tensors counted, memory the op took and gave back, memory outside
  the tensors counted), and the ops that took the most memory and gave it back.

``--cap-mib N`` (CUDA) caps the process's allocator at N MiB: whether the step fits a budget
when cuDNN must take convolution algorithms with smaller workspaces (PyTorch tries the next
algorithm when a workspace does not fit), and its peak then.
"""
from __future__ import annotations

import argparse
import gc
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch.utils._pytree import tree_flatten

from revsnn.memory import EXISTING, LiveBytes

from .common import Missing
from .network import MIB, VARIANTS, SGDStep

ROOT = f"{Path(__file__).resolve().parents[1]}/"
OWN_CODE = ("/revsnn/", "/bench/", "/torch/nn/modules/", "/torch/nn/functional")


def origin(frames: list) -> str:
    """The innermost frame of revsnn, bench or torch.nn code ("file:line function"), from an
    allocator trace entry's frames (innermost first)."""
    for f in frames:
        name = f.get("filename", "")
        if any(k in name for k in OWN_CODE):
            short = name.split("/site-packages/")[-1].removeprefix(ROOT)
            return f"{short}:{f.get('line')} {f.get('name')}"
    return "(no Python frame of revsnn, bench or torch.nn)"


def replay(entries: Iterable[dict]) -> tuple[int, Counter, list]:
    """(peak of the live bytes, bytes live at the peak by origin, the largest single
    allocations live at the peak as (bytes, origin), largest first) from allocator trace
    entries (``action`` 'alloc' or 'free_completed', ``addr``, ``size``, ``frames``), in order.
    The peak is counted from what was allocated when the trace began (a block allocated
    before it and freed within it counts down, by the size its free records).
    A large single allocation next to tensors of the activations' sizes is a workspace (cuDNN's
    convolution algorithms take one)."""
    entries = list(entries)
    cur = peak = 0
    peak_at = -1
    sizes: dict = {}
    for i, e in enumerate(entries):
        if e["action"] == "alloc":
            sizes[e["addr"]] = e["size"]
            cur += e["size"]
            if cur > peak:
                peak, peak_at = cur, i
        elif e["action"] == "free_completed":
            # a block allocated before the trace began has its size in the free's entry
            cur -= sizes.pop(e["addr"], e.get("size", 0))
    live: dict = {}
    for e in entries[:peak_at + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        elif e["action"] == "free_completed":
            live.pop(e["addr"], None)
    by_origin: Counter = Counter()
    for e in live.values():
        by_origin[origin(e.get("frames", []))] += e["size"]
    largest = sorted(((e["size"], origin(e.get("frames", []))) for e in live.values()),
                     key=lambda t: -t[0])
    return peak, by_origin, largest


def _python_origin() -> str:
    """origin() of the Python stack that is running, without the frames of LiveBytes, of this
    module and of the custom ops' call wrapper (the op's caller says more)."""
    skip = ("revsnn/memory.py", "bench/peak.py", "revsnn/ops/_dispatch.py")
    frames = [dict(filename=f.filename, line=f.lineno, name=f.name)
              for f in reversed(traceback.extract_stack()) if not f.filename.endswith(skip)]
    return origin(frames)


class OpAllocator(LiveBytes):
    """LiveBytes that also reads the CUDA allocator around every op (its peak statistic is
    reset before each). ``top``: the op inside which the allocator's count was highest, as a
    dict: ``op``, ``shapes`` (of its first tensor arguments), ``origin``, ``inside`` (that
    count), ``tensors`` (bytes of the tensors counted, after the op), ``given_back`` (what the
    op took and freed again before it returned: a workspace), ``outside`` (allocated but not a
    tensor counted: what was there before the step and anything the count misses).
    ``given_back``: the largest such memory per ``(op, shapes, origin)``."""

    def __init__(self, existing: Iterable[torch.Tensor] = (), origin=None) -> None:
        super().__init__(existing, origin)
        self.top: dict = {}
        self.given_back: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        torch.cuda.reset_peak_memory_stats()
        out = super().__torch_dispatch__(func, types, args, kwargs)
        inside, after = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        back = inside - after
        if back < MIB and inside <= self.top.get("inside", -1):
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        shapes = " ".join(str(list(t.shape)) for t in tensors[:3]) or "no tensor argument"
        where = self._origin() if self._origin else ""
        if back >= MIB:
            key = (str(func), shapes, where)
            self.given_back[key] = max(self.given_back[key], back)
        if inside > self.top.get("inside", -1):
            self.top = dict(op=str(func), shapes=shapes, origin=where, inside=inside,
                            tensors=self.now, given_back=back, outside=after - self.now)
        return out


def tensor_peak(model_name: str, variant: str, T: int, batch: int, kw: dict,
                device: str, per_op: Optional[bool] = None) -> dict:
    """Phase peaks of a step counted over tensors (see the module docstring), and the
    storages live at the step's peak by origin (an op of the backward under its name).
    ``per_op`` (default: on CUDA) also reads the allocator around every op (``OpAllocator``):
    the result then has ``top``, ``given_back`` and ``outside_at_start`` (bytes allocated
    outside the tensors counted when the step began)."""
    step = SGDStep(model_name, variant, T, batch, kw, device)
    step()
    gc.collect()
    params = list(step.model.parameters())
    existing = (params + [p.grad for p in params if p.grad is not None]
                + list(step.model.buffers()) + [step.x, step.labels]
                + [v for st in step.opt.state.values() for v in st.values()
                   if isinstance(v, torch.Tensor)])
    if per_op is None:
        per_op = device.startswith("cuda")
    live = (OpAllocator if per_op else LiveBytes)(existing, origin=_python_origin)
    extra = dict(outside_at_start=torch.cuda.memory_allocated() - live.now) if per_op else {}
    phases: dict = {}

    def mark(name):
        if mark.current:
            phases[mark.current] = (live.peak, live.at_peak)
        live.reset_peak()
        mark.current = name
    mark.current = None
    with live:
        step(mark)
    top = max(phases.values(), key=lambda v: v[0])
    by_origin: Counter = Counter()
    for nbytes, op, where in top[1]:
        if op == EXISTING:
            where = "(live at the step's start: weights, gradients, momentum, input)"
        elif "backward" in where or "backward" in op:
            where = f"{where} [{op}]"
        by_origin[where] += nbytes
    if per_op:
        extra.update(top=live.top, given_back=live.given_back)
    return dict(phases={k: v[0] for k, v in phases.items()}, live=by_origin, **extra)


def cuda_peak(model_name: str, variant: str, T: int, batch: int, kw: dict,
              device: str = "cuda") -> dict:
    """Phase peaks and the trace at the step's peak on CUDA (``device`` lets a test drive this
    path with the torch.cuda calls replaced)."""
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    step = SGDStep(model_name, variant, T, batch, kw, device)
    step()  # warm-up: compilation, momentum buffers
    phases = {}

    def mark(name):
        torch.cuda.synchronize()
        if mark.current:
            phases[mark.current] = torch.cuda.max_memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
        mark.current = name
    mark.current = None
    start = torch.cuda.memory_allocated() - base
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    try:
        step(mark)
        snap = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    trace = snap["device_traces"][torch.cuda.current_device()]
    peak, live, largest = replay(trace)
    return dict(phases=phases, start=start, traced_peak=start + peak, live=live,
                largest=largest)


def cpu_peak(model_name: str, variant: str, T: int, batch: int, kw: dict) -> dict:
    """Phase peaks of a step on CPU from the profiler's allocator events (above what was live
    when the step began), and the ops running at the step's peak."""
    from torch.profiler import ProfilerActivity, profile, record_function
    step = SGDStep(model_name, variant, T, batch, kw, "cpu")
    step()
    gc.collect()
    ranges = []

    def mark(name):
        if mark.ctx is not None:
            mark.ctx.__exit__(None, None, None)
        mark.ctx = record_function(f"bench.peak:{name}") if name else None
        if mark.ctx is not None:
            mark.ctx.__enter__()
    mark.ctx = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(mark)
    events = list(prof.profiler.kineto_results.events())
    for e in events:
        if e.name().startswith("bench.peak:"):
            ranges.append((e.name().split(":", 1)[1], e.start_ns(), e.end_ns()))
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    phases = {name: 0 for name, _, _ in ranges}
    cur = peak = 0
    t_peak = None
    for t, n in mem:
        cur += n
        for name, s, end in ranges:
            if s <= t <= end:
                phases[name] = max(phases[name], cur)
        if cur > peak:
            peak, t_peak = cur, t
    ops = sorted((e for e in events if e.name() != "[memory]"
                  and e.start_ns() <= (t_peak or 0) <= e.end_ns()), key=lambda e: e.start_ns())
    return dict(phases=phases, traced_peak=peak, at=[e.name() for e in ops][-4:])


def _print_allocator(r: dict, cuda: bool, top: int) -> None:
    phases = ", ".join(f"{k} {v / MIB:.0f}" for k, v in r["phases"].items())
    above = ("the allocations before the model" if cuda else
             "what was live when the step began: weights, momentum, input")
    print(f"{'CUDA' if cuda else 'CPU'} allocator, peak by phase, MiB above {above}: {phases}")
    if not cuda:
        print(f"CPU allocator peak of the step (above its start): "
              f"{r['traced_peak'] / MIB:.0f} MiB, during {' > '.join(r['at'])}")
        return
    print(f"traced step: {r['start'] / MIB:.0f} MiB live at its start, peak "
          f"{r['traced_peak'] / MIB:.0f} MiB; live at the peak, by origin:\n")
    print("| MiB | allocated at |\n|---|---|")
    for where, n in r["live"].most_common(top):
        print(f"| {n / MIB:.1f} | `{where}` |")
    print("\nlargest single allocations live at the peak:\n\n| MiB | allocated at |\n|---|---|")
    for n, where in r["largest"][:top]:
        print(f"| {n / MIB:.1f} | `{where}` |")


def _print_tensors(t: dict, top: int) -> None:
    print("counted over tensors (weights, gradients, momentum, input, then every tensor an op "
          "makes; no workspaces), MiB: "
          + ", ".join(f"{k} {v / MIB:.0f}" for k, v in t["phases"].items()))
    print("\n| MiB | live at the tensor peak, made at |\n|---|---|")
    for where, n in t["live"].most_common(top):
        print(f"| {n / MIB:.1f} | `{where}` |")
    if "top" not in t:
        return
    op = t["top"]
    print(f"\nallocator, read around every op: its peak, {op['inside'] / MIB:.0f} MiB, was "
          f"reached inside `{op['op']}` ({op['shapes']}) at `{op['origin']}`: "
          f"{op['tensors'] / MIB:.0f} MiB of tensors counted + {op['given_back'] / MIB:.0f} "
          f"taken and given back inside the op + {op['outside'] / MIB:.0f} outside the tensors "
          f"counted ({t['outside_at_start'] / MIB:.0f} of that already at the step's start)")
    print("\n| MiB | taken and given back inside one op (largest first) | shapes | at |\n"
          "|---|---|---|---|")
    for (name, shapes, where), n in t["given_back"].most_common(top):
        print(f"| {n / MIB:.1f} | `{name}` | {shapes} | `{where}` |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peak", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--variant", action="append", choices=list(VARIANTS),
                   help="repeatable (default: sj, revlif and revlif-rev)")
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--top", type=int, default=12, help="origins listed at the peak")
    p.add_argument("--tensors", action="store_true",
                   help="only the count over tensors (not the allocator's)")
    p.add_argument("--cap-mib", type=float, default=None,
                   help="CUDA: cap this process's allocator at this many MiB "
                        "(torch.cuda.set_per_process_memory_fraction). A step that does not fit "
                        "is reported as such; cuDNN takes convolution algorithms whose "
                        "workspaces fit under the cap")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    cap = ""
    if args.cap_mib is not None:
        if not cuda:
            p.error("--cap-mib needs CUDA: it caps the CUDA caching allocator")
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        if not 0 < args.cap_mib * MIB <= total:
            p.error(f"--cap-mib must be in (0, {total / MIB:.0f}], got {args.cap_mib}")
        torch.cuda.set_per_process_memory_fraction(args.cap_mib * MIB / total)
        cap = f", allocator capped at {args.cap_mib:.0f} MiB"
    if not cuda:
        torch.set_num_threads(1)
    for variant in args.variant or ["sj", "revlif", "revlif-rev"]:
        what = f"{args.model} {variant}, T = {args.T}, batch {args.batch}"
        step = (args.model, variant, args.T, args.batch, {})
        try:
            r = None if args.tensors else (cuda_peak if cuda else cpu_peak)(*step)
            t = tensor_peak(*step, "cuda" if cuda else "cpu")
        except Missing as e:
            print(f"\n## {what}: missing ({e})")
            continue
        except torch.cuda.OutOfMemoryError:
            if not cap:
                raise
            print(f"\n## {what}: does not fit{cap}")
            continue
        print(f"\n## {what}, {'CUDA' if cuda else 'CPU'}{cap}\n")
        if r is not None:
            _print_allocator(r, cuda, args.top)
            print()
        _print_tensors(t, args.top)
        if r is not None and cuda:
            gap = max(r["phases"].values()) - max(t["phases"].values())
            print(f"\nallocator peak - tensor peak: {gap / MIB:.0f} MiB (workspaces and other "
                  f"memory outside the tensors; the allocator's base also counts what was "
                  f"allocated before the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
