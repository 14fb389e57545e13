"""Node memory: bytes each implementation keeps for backward, per neuron and per neuron per
step, measured with ``torch.autograd.graph.saved_tensors_hooks``.

Every tensor autograd saves during one forward is recorded once per storage (views of one
tensor count once). The storages are split into the node's input ``x``, its output ``y`` and
the rest (state, stash, potentials, masks). Per-neuron figures are exact: the forward runs at
two batch sizes and the per-neuron bytes are the slope between them (kept bytes are affine in
the number of neurons; the intercept, e.g. a scalar ``tau``, is reported as ``fixed_bytes``).

"kept" = everything saved except ``y``: the next layer keeps ``y`` as its own input anyway (a
conv or linear saves its input), so a node that saves ``y`` adds nothing there. Where ``y`` is
kept only by the node (a residual add, the last layer), add ``output_B_per_neuron``.
"""
from __future__ import annotations

import math

import torch

from .common import Context, Missing, Progress, dtype_name, failure, kept_by_role, ok_groups
from .nodes import NODES, build, input_for

COLUMNS = ("impl", "label", "device", "dtype", "T", "kept_B_per_neuron",
           "kept_B_per_neuron_step", "input_B_per_neuron", "output_B_per_neuron",
           "other_B_per_neuron", "fixed_bytes", "ratio_vs_revlif", "out_dtype", "status", "note")

NEURON_SHAPE = (16, 5)  # C, H of one sample: C even for the reversible node's split
BATCHES = (2, 4)
MAX_COMPILED_T = 64


def plan(ctx: Context) -> tuple[list, tuple, tuple, dict]:
    """(implementation, device) pairs, Ts, dtypes, and implementations skipped with why."""
    if ctx.gpu:
        keys = ["revlif", "revlif-beta1", "revlif-recompute", "lif", "sj", "sj-triton",
                "sj-torch", "sj-cuda", "snntorch", "norse", "norse-compile"]
        pairs = [(k, "cuda") for k in keys]
    else:
        # SpikingJelly binds a different autograd on CPU (its torch reference) than on CUDA;
        # on meta tensors its ops record what they record on CUDA.
        pairs = [("revlif", "cpu"), ("revlif-beta1", "cpu"), ("revlif-recompute", "cpu"),
                 ("lif", "cpu"), ("sj", "cpu"), ("sj", "meta"), ("sj-op", "meta"),
                 ("snntorch", "cpu"), ("norse", "cpu"), ("norse-compile", "cpu")]
    skipped = {}
    if ctx.mode in ("tiny", "quick", "priority"):
        skipped["norse-compile"] = (f"skipped in {ctx.mode} mode: torch.compile recompiles "
                                    f"for every T and batch (seconds each); run the full suite")
        pairs = [p for p in pairs if p[0] != "norse-compile"]
    if ctx.mode == "tiny":
        return pairs, (4, 16, 32, 64), (torch.float32,), skipped
    return pairs, (4, 8, 16, 32, 64, 256), (torch.float32, torch.float16), skipped


def measure(fn, device: torch.device, dtype: torch.dtype, T: int) -> dict:
    """Per-neuron bytes (input, output, other) and fixed bytes from two batch sizes."""
    per = []
    out_dtype = None
    for B in BATCHES:
        x = input_for((T, B, *NEURON_SHAPE), device, dtype, seed=T)
        y, kept = kept_by_role(fn, x)
        per.append((B * math.prod(NEURON_SHAPE), kept["input"], kept["output"], kept["other"]))
        out_dtype = y.dtype
        del y, x
    (n1, *b1), (n2, *b2) = per
    slopes = [(v2 - v1) / (n2 - n1) for v1, v2 in zip(b1, b2)]
    fixed = sum(b1) - sum(slopes) * n1
    inp, out, other = slopes
    return dict(kept_B_per_neuron=inp + other, kept_B_per_neuron_step=(inp + other) / T,
                input_B_per_neuron=inp, output_B_per_neuron=out, other_B_per_neuron=other,
                fixed_bytes=fixed, out_dtype=dtype_name(out_dtype))


def run(ctx: Context) -> list:
    table = ctx.table(
        "memory", "Node memory kept for backward (saved_tensors_hooks, exact)", COLUMNS,
        notes=["Bytes per neuron over the whole sequence (`kept_B_per_neuron`) and per step. "
               "kept = input + other (everything autograd saved except the node's output y, "
               "which the next layer keeps as its own input anyway); `output_B_per_neuron` is "
               "what y adds where the node alone keeps it. `ratio_vs_revlif` = kept / kept of "
               "revsnn RevLIF at the same T and dtype. Device `meta`: meta tensors, which record "
               "the tensors the CUDA path saves without computing (exact, device-independent)."])
    pairs, Ts, dtypes, skipped = plan(ctx)
    for key, why in skipped.items():
        table.add(impl=key, label=NODES[key].label, status=why)
    prog = Progress("memory", len(pairs) * len(Ts) * len(dtypes))
    revlif = {}
    for dtype in dtypes:
        for key, dev in pairs:
            device = torch.device(dev)
            base = dict(impl=key, label=NODES[key].label, device=dev, dtype=dtype_name(dtype))
            try:
                built = build(key, device, dtype)
            except Missing as e:
                table.add(**base, status=f"missing: {e}")
                for _ in Ts:
                    prog.step(f"{key} {dev} {dtype_name(dtype)}: missing")
                continue
            for T in Ts:
                prog.step(f"{key} {dev} {dtype_name(dtype)} T={T}")
                if key == "norse-compile" and T > MAX_COMPILED_T:
                    table.add(**base, T=T, status=f"skipped: torch.compile unrolls Norse's "
                              f"loop over T; beyond T={MAX_COMPILED_T} compiling takes minutes")
                    continue
                try:
                    row = measure(built.fn, device, dtype, T)
                except Exception as e:  # Missing, or a labelled failure
                    table.add(**base, T=T, status=failure(e))
                    continue
                if key == "revlif":
                    revlif[(dtype, T)] = row["kept_B_per_neuron"]
                ref = revlif.get((dtype, T))
                ratio = row["kept_B_per_neuron"] / ref if ref else None
                table.add(**base, T=T, **row, ratio_vs_revlif=ratio, status="ok",
                          note=built.note)
    _scaling(ctx, table)
    return [table]


def _scaling(ctx: Context, table) -> None:
    for (impl, dev, dt), rows in ok_groups(table.rows, "impl", "device", "dtype").items():
        ctx.fit("memory", "kept bytes per neuron", impl, f"{dt}, device {dev}",
                "bytes per neuron per extra step", [r["T"] for r in rows],
                [r["kept_B_per_neuron"] for r in rows])
