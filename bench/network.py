"""Network memory: CIFAR-sized spiking VGG and ResNet models of ``revsnn.models``.

Variants: ``lif`` (revsnn.LIF), ``sj`` (the same network with every neuron a SpikingJelly
``LIFNode(step_mode="m")``), ``revlif`` (revsnn.RevLIF), and with ``reversible=True`` (RevBlocks
where the shapes allow: a different, smaller network, see ``revsnn.models``) ``lif-rev`` and
``revlif-rev``. Input: 3x32x32 images, repeat-encoded over T.

CPU: the bytes of every tensor autograd keeps for backward in one forward, parameters and
buffers excluded, each storage once. Measured on meta tensors where the model runs on them
(exact shapes and dtypes, no compute, any batch: SpikingJelly's ops record there what they
record on CUDA); otherwise on CPU tensors at batch 2 and 3 and extended linearly in batch
(from batch 2 on, every kept tensor has the batch as a factor or is independent of it, so the
line is exact; tests/test_bench.py checks it; the ``method`` column says which way).
GPU: ``torch.cuda.max_memory_allocated`` over one SGD training step (forward, backward,
update, after a warm-up step) above what was allocated before the model was built, and the
kept bytes on CUDA tensors.

``network_fit``: a linear model ``bytes = c0 + c1 * batch + c2 * batch * T`` fitted by least
squares, used to find the largest batch and T that fit the budget. CPU: kept bytes + weights +
gradients (a lower bound of the training peak: no optimizer state, no transient backward
workspace); GPU: the measured peak.
"""
from __future__ import annotations

import gc
import math

import numpy as np
import torch
from torch import nn

from revsnn import models
from revsnn.memory import KeptBytes, storage_id

from .common import Context, Missing, Progress, failure, ok_groups

VARIANTS = {  # SpikingJelly first: the other rows give their size relative to it
    "sj": ("SpikingJelly LIFNode", "lif", False),
    "lif": ("revsnn LIF", "lif", False),
    "revlif": ("revsnn RevLIF", "revlif", False),
    "lif-rev": ("revsnn LIF, reversible blocks", "lif", True),
    "revlif-rev": ("revsnn RevLIF, reversible blocks", "revlif", True),
}
COLUMNS = ("model", "variant", "label", "T", "batch", "params_M", "kept_MiB", "peak_MiB",
           "sj_over_this_kept", "sj_over_this_peak", "method", "status", "note")
FIT_COLUMNS = ("model", "variant", "quantity", "MiB_per_sample_step", "MiB_per_sample",
               "MiB_fixed", "points", "max_rel_residual", "budget_GiB", "max_batch_T4",
               "max_batch_T16", "max_batch_T32", "max_T_batch32", "basis")
DEPTH_COLUMNS = ("model", "variant", "depth", "T", "batch", "kept_MiB", "peak_MiB", "method",
                 "status")
BATCHES = (16, 32)
MIB = 2 ** 20


def plan(ctx: Context) -> dict:
    """Models (with builder keywords), T values (or explicit (T, batch) points), variants,
    the depth sweep, and which T and variants the slow CPU fallback may take."""
    if ctx.mode == "tiny":
        return dict(models={"vgg11": dict(width=16)}, Ts=(2, 4),
                    variants=list(VARIANTS), depth=dict(d=(2, 4), hidden=64, T=4),
                    cpu_Ts=(2, 4), cpu_variants=("revlif-rev",))
    if ctx.mode == "quick":
        return dict(models={"vgg11": {}, "resnet18": {}}, Ts=(4, 8, 16, 32),
                    variants=list(VARIANTS), depth=dict(d=(2, 4, 8), hidden=256, T=16),
                    cpu_Ts=(4, 16), cpu_variants=("lif-rev", "revlif-rev"))
    if ctx.mode == "priority":
        return dict(models={"vgg11": {}, "resnet18": {}},
                    variants=["sj", "lif", "revlif", "revlif-rev"], depth=None,
                    points=[(4, 32), (16, 32), (16, 16)])
    return dict(models={"vgg11": {}, "resnet18": {}, "vgg16": {}, "resnet19": {}},
                Ts=(4, 8, 16, 32), variants=list(VARIANTS),
                depth=dict(d=(2, 4, 8), hidden=256, T=16), cpu_Ts=(4, 8, 16, 32))


# -- building ----------------------------------------------------------------------------------
def _swap_to_sj(model: nn.Module) -> nn.Module:
    """Every revsnn.LIF becomes a SpikingJelly LIFNode(step_mode="m") with the same defaults
    (tau 2, hard reset to 0, threshold 1, sigmoid surrogate)."""
    try:
        from spikingjelly.activation_based import neuron
    except Exception as e:
        raise Missing(f"spikingjelly not installed ({type(e).__name__})") from None
    from revsnn import LIF
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LIF):
                setattr(parent, name, neuron.LIFNode(step_mode="m"))
    return model


def make_model(name: str, variant: str, T: int, device, **kw) -> nn.Module:
    _, neuron, reversible = VARIANTS[variant]
    torch.manual_seed(0)
    with torch.device(device):
        model = models.MODELS[name](neuron=neuron, reversible=reversible, T=T, **kw)
    return _swap_to_sj(model) if variant == "sj" else model


def _static_input(name: str, batch: int, device, kw: dict) -> torch.Tensor:
    shape = (batch, kw.get("in_features", 64)) if name == "mlp" else (batch, 3, 32, 32)
    if torch.device(device).type == "meta":
        return torch.empty(shape, device=device)
    return torch.randn(shape, generator=torch.Generator().manual_seed(batch)).to(device)


# -- measuring ---------------------------------------------------------------------------------
def kept_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward, parameters and buffers excluded."""
    fixed = {storage_id(t) for t in list(model.parameters()) + list(model.buffers())}
    with KeptBytes() as kept:
        model(x)
    return kept.bytes(exclude=fixed)


class HostMeter:
    """Kept bytes on the CPU host: meta tensors where the model runs on them, else CPU tensors
    at batch 2 and 3 and the exact line through them (not batch 1: there the repeat-encoded
    input [T, 1, ...] flattens to a view of the image instead of a copy). Remembers which
    models need the fallback (and why)."""

    def __init__(self) -> None:
        self.why_not_meta: dict = {}

    def needs_cpu(self, name: str, variant: str, kw: dict) -> bool:
        key = (name, variant)
        if key not in self.why_not_meta:
            try:
                # T = batch = 2: BatchNorm needs more than one value per channel
                kept_bytes(make_model(name, variant, 2, "meta", **kw),
                           _static_input(name, 2, "meta", kw))
                self.why_not_meta[key] = None
            except Missing:
                raise
            except Exception as e:
                self.why_not_meta[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        return self.why_not_meta[key] is not None

    def __call__(self, name: str, variant: str, T: int, batches, kw: dict) -> tuple:
        """({batch: kept bytes}, method, note)."""
        if not self.needs_cpu(name, variant, kw):
            model = make_model(name, variant, T, "meta", **kw)
            return ({B: kept_bytes(model, _static_input(name, B, "meta", kw)) for B in batches},
                    "meta tensors", "")
        model = make_model(name, variant, T, "cpu", **kw)
        k2, k3 = (kept_bytes(model, _static_input(name, b, "cpu", kw)) for b in (2, 3))
        return ({B: k2 + (k3 - k2) * (B - 2) for B in batches},
                "CPU tensors, batch 2 and 3, linear in batch",
                f"does not run on meta tensors ({self.why_not_meta[(name, variant)]})")


class SGDStep:
    """One SGD training step (momentum) of a model on a fixed batch, in three phases: forward
    (with the cross-entropy loss), backward, update. ``step(mark)`` calls ``mark(phase)``
    before each phase and ``mark(None)`` after the last."""

    PHASES = ("forward", "backward", "update")

    def __init__(self, name: str, variant: str, T: int, batch: int, kw: dict, device) -> None:
        self.model = make_model(name, variant, T, device, **kw)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.x = _static_input(name, batch, device, kw)
        self.labels = torch.randint(0, 10, (batch,),
                                    generator=torch.Generator().manual_seed(0)).to(device)
        self.loss = None

    def forward(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss = nn.functional.cross_entropy(self.model(self.x), self.labels)

    def backward(self) -> None:
        loss, self.loss = self.loss, None
        loss.backward()

    def update(self) -> None:
        self.opt.step()

    def __call__(self, mark=None) -> None:
        for phase in self.PHASES:
            if mark:
                mark(phase)
            getattr(self, phase)()
        if mark:
            mark(None)


def gpu_step_memory(name: str, variant: str, T: int, batch: int, kw: dict) -> tuple:
    """(peak bytes of one SGD training step, kept bytes of its forward) on CUDA, counted from
    what was allocated before the model was built: weights, gradients, momentum, input,
    activations and every transient buffer of the step."""
    # an earlier point's reference cycles (SpikingJelly's modules leave some) would count here
    gc.collect()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    step = SGDStep(name, variant, T, batch, kw, "cuda")
    # before the warm-up: the neurons' states keep this forward's graph (SpikingJelly's v,
    # revsnn's LIF v) until the next forward resets them, which must come before the peak
    # statistics are reset, or the measured step starts with a whole extra forward live
    kept = kept_bytes(step.model, step.x)
    step()  # warm-up: kernel compilation and the momentum buffers
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, kept


def _params(name: str, variant: str, kw: dict) -> tuple[int, int]:
    """(number, bytes) of the model's parameters."""
    ps = list(make_model(name, variant, 1, "meta", **kw).parameters())
    return sum(p.numel() for p in ps), sum(p.numel() * p.element_size() for p in ps)


# -- the section -------------------------------------------------------------------------------
def run(ctx: Context) -> list:
    cfg = plan(ctx)
    table = ctx.table(
        "network", "Network memory, " + ("peak training memory (GPU)" if ctx.gpu
                                         else "kept for backward (CPU, exact)"), COLUMNS,
        notes=["kept_MiB: bytes autograd keeps for backward in one forward (parameters and "
               "buffers excluded). peak_MiB (GPU): torch.cuda.max_memory_allocated over one "
               "SGD step, above what was allocated before the model was built. sj_over_this: "
               "SpikingJelly's figure / this row's, same model, T, batch (the paper's headline "
               "ratio). Reversible variants are smaller networks "
               "(revsnn.models documents their parameter counts)."])
    fits = ctx.table(
        "network_fit", f"Largest batch and T within {ctx.budget_gib:g} GiB (fitted linear model)",
        FIT_COLUMNS,
        notes=["bytes = c0 + c1 * batch + c2 * batch * T, least squares over the measured "
               "points; max_batch_T* and max_T_batch32 solve it against the budget. "
               "Extrapolations of a fitted line, not measurements."])
    rows = _measure(ctx, cfg, table)
    _fit(ctx, rows, fits)
    out = [table, fits]
    if cfg["depth"]:
        out.append(_depth(ctx, cfg))
    return out


def _measure(ctx: Context, cfg: dict, table) -> list:
    points = cfg.get("points") or [(T, B) for T in cfg["Ts"] for B in BATCHES]
    Ts = sorted({T for T, _ in points})
    prog = Progress("network", len(cfg["models"]) * len(cfg["variants"]) * len(Ts))
    meter = HostMeter()
    measured = []
    for name, kw in cfg["models"].items():
        sj = {}
        for variant in cfg["variants"]:
            label = VARIANTS[variant][0]
            try:
                n_params, params = _params(name, variant, kw)
                slow = not ctx.gpu and meter.needs_cpu(name, variant, kw)
            except Missing as e:
                table.add(model=name, variant=variant, label=label, status=f"missing: {e}")
                for _ in Ts:
                    prog.step(f"{name} {variant}: missing")
                continue
            for T in Ts:
                prog.step(f"{name} {variant} T={T}")
                Bs = [B for t, B in points if t == T]
                base = dict(model=name, variant=variant, label=label, T=T,
                            params_M=n_params / 1e6)
                if slow and (T not in cfg["cpu_Ts"]
                             or variant not in cfg.get("cpu_variants", VARIANTS)):
                    for B in Bs:
                        table.add(**base, batch=B, status=(
                            f"skipped in {ctx.mode} mode: does not run on meta tensors and "
                            f"its CPU fallback costs seconds per point; `python -m bench` "
                            f"measures it"))
                    continue
                got, method, note = {}, "CUDA, one SGD step", ""
                for B in (Bs if ctx.gpu else [None]):
                    try:  # on the GPU one batch at a time: an OOM keeps the smaller ones
                        if ctx.gpu:
                            got[B] = gpu_step_memory(name, variant, T, B, kw)
                        else:
                            kept, method, note = meter(name, variant, T, Bs, kw)
                            got = {b: (None, kept[b]) for b in Bs}
                    except Exception as e:  # Missing, or a labelled failure
                        table.add(**base, **({} if B is None else dict(batch=B)),
                                  status=failure(e))
                for B, (peak, kept) in got.items():
                    if variant == "sj":
                        sj[(T, B)] = (kept, peak)
                    ref = sj.get((T, B))
                    row = table.add(
                        **base, batch=B, kept_MiB=kept / MIB,
                        peak_MiB=None if peak is None else peak / MIB,
                        sj_over_this_kept=ref[0] / kept if ref and kept else None,
                        sj_over_this_peak=ref[1] / peak if ref and peak else None,
                        method=method, status="ok", note=note)
                    measured.append(dict(row, kept=kept, peak=peak, params=params))
    return measured


def _fit(ctx: Context, rows: list, fits) -> None:
    budget = ctx.budget_gib * 2 ** 30
    for (name, variant), rs in ok_groups(rows, "model", "variant").items():
        quantity = "peak" if ctx.gpu else "kept + weights + grads"
        ys = np.array([r["peak"] if ctx.gpu else r["kept"] + 2 * r["params"] for r in rs],
                      dtype=float)
        A = np.array([[1.0, r["batch"], r["batch"] * r["T"]] for r in rs])
        if len({(r["T"], r["batch"]) for r in rs}) < 3 or len({r["batch"] for r in rs}) < 2:
            fits.add(model=name, variant=variant, quantity=quantity,
                     points=len(rs), basis="not fitted: needs 3 points and 2 batch sizes")
            continue
        (c0, c1, c2), *_ = np.linalg.lstsq(A, ys, rcond=None)
        resid = float(np.max(np.abs(A @ np.array([c0, c1, c2]) - ys) / ys))

        def max_batch(T):
            per = c1 + c2 * T
            return max(0, math.floor((budget - c0) / per)) if per > 0 else None

        per_step = 32 * c2
        max_T = max(0, math.floor((budget - c0 - 32 * c1) / per_step)) if per_step > 0 else None
        fits.add(model=name, variant=variant, quantity=quantity, MiB_per_sample_step=c2 / MIB,
                 MiB_per_sample=c1 / MIB, MiB_fixed=c0 / MIB, points=len(rs),
                 max_rel_residual=resid, budget_GiB=ctx.budget_gib, max_batch_T4=max_batch(4),
                 max_batch_T16=max_batch(16), max_batch_T32=max_batch(32),
                 max_T_batch32=max_T,
                 basis=("measured peak (GPU)" if ctx.gpu else
                        "kept + weights + grads (CPU; lower bound: no optimizer state, no "
                        "transient backward workspace)"))
        pts = [r for r in rs if r["batch"] == max(BATCHES)]
        ctx.fit("network", "kept bytes", f"{name} {variant}", f"batch {max(BATCHES)}",
                "MiB per extra step", [r["T"] for r in pts], [r["kept"] / MIB for r in pts])
        T = max(r["T"] for r in rs)
        pts = [r for r in rs if r["T"] == T]
        ctx.fit("network", "kept bytes", f"{name} {variant}", f"T {T}",
                "MiB per extra sample", [r["batch"] for r in pts],
                [r["kept"] / MIB for r in pts])


def _depth(ctx: Context, cfg: dict):
    d = cfg["depth"]
    table = ctx.table(
        "network_depth", f"Depth: spiking MLP (hidden {d['hidden']}), T = {d['T']}, batch 32",
        DEPTH_COLUMNS,
        notes=["revsnn.models.spiking_mlp with `depth` hidden layers; kept bytes as in the "
               "network table (CPU) and the peak of one SGD step (GPU)."])
    variants = ["sj", "lif", "revlif", "revlif-rev"]
    prog = Progress("network depth", len(variants) * len(d["d"]))
    meter = HostMeter()
    for variant in variants:
        xs, ys = [], []
        for depth in d["d"]:
            prog.step(f"mlp {variant} depth={depth}")
            kw = dict(depth=depth, hidden=d["hidden"])
            base = dict(model="mlp", variant=variant, depth=depth, T=d["T"], batch=32)
            try:
                if ctx.gpu:
                    peak, kept = gpu_step_memory("mlp", variant, d["T"], 32, kw)
                    method = "CUDA, one SGD step"
                else:
                    got, method, _ = meter("mlp", variant, d["T"], (32,), kw)
                    kept, peak = got[32], None
            except Exception as e:  # Missing, or a labelled failure
                table.add(**base, status=failure(e))
                continue
            table.add(**base, kept_MiB=kept / MIB, peak_MiB=None if peak is None else peak / MIB,
                      method=method, status="ok")
            xs.append(depth)
            ys.append(kept / MIB)
        ctx.fit("network", "kept bytes", f"mlp {variant}",
                f"hidden {d['hidden']}, T {d['T']}, batch 32", "MiB per extra layer", xs, ys)
    return table
