"""The spiking nodes the benchmarks compare, behind one interface.

``build(key, device, dtype, pre=None)`` returns a :class:`Built`: ``fn(x)`` runs the node over
a time-first input ``x [T, B, *]`` with autograd and returns its output ``[T, B, *]``.
``pre`` (e.g. an ``nn.Linear``) is applied before the node, the way each library is usually
driven: to the whole ``[T, B, *]`` tensor for multi-step nodes, inside the step loop for
snnTorch. An implementation that cannot run here raises :class:`bench.common.Missing`.

Neuron settings: every node is its library's default LIF with tau = 2 where the library has a
tau (revsnn, SpikingJelly: hard reset to 0, threshold 1, sigmoid surrogate alpha 4);
snnTorch ``Leaky(beta=0.5)`` (the same leak, its own subtractive reset); Norse ``LIF()`` with its
default parameters (current-based, two state variables). The libraries are benchmarked as they
are used, not as exact equivalents.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .common import Missing


@dataclass
class Built:
    fn: Callable[[torch.Tensor], torch.Tensor]
    note: str = ""


@dataclass(frozen=True)
class Node:
    key: str
    label: str
    make: Callable[..., Built]


def _import(module: str):
    try:
        return importlib.import_module(module)
    except Exception as e:
        raise Missing(f"{module.split('.')[0]} not installed ({type(e).__name__}: "
                      f"{str(e)[:80]})") from None


def _apply(pre: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    return x if pre is None else pre(x)


# -- revsnn ------------------------------------------------------------------------------------
def _revlif(**kw) -> Callable[..., Built]:
    def make(device, dtype, pre=None):
        from revsnn.functional import rev_lif
        return Built(lambda x: rev_lif(_apply(pre, x), **kw)[0])
    return make


def _lif(device, dtype, pre=None):
    from revsnn.functional import lif
    return Built(lambda x: lif(_apply(pre, x))[0])


# -- SpikingJelly ------------------------------------------------------------------------------
_SJ_BOUND: dict = {}  # device -> (requested, bound implementation) of SpikingJelly's LIF op


def _sj_select(name: str, device: torch.device) -> str:
    """Bind SpikingJelly's LIF op to one CUDA implementation ("auto", "triton", "torch", "cuda")
    and return the name of the one that is bound. SpikingJelly 2.0 reads this choice from the
    environment variable SJ_LIF_CUDA_IMPLEMENTATION at import; re-binding it in-process (its
    selection object) lets one run compare all of them. Raises Missing when the requested one
    is unavailable, with SpikingJelly's reason."""
    if device in _SJ_BOUND and _SJ_BOUND[device][0] == name:
        return _SJ_BOUND[device][1]
    ops = _import("spikingjelly._ops.lif")
    fn = _import("spikingjelly.activation_based.functional.neuron")
    sel = getattr(ops, "_selection", None)
    if sel is None or not hasattr(sel, "_requested"):
        raise Missing("this SpikingJelly version has no selectable LIF implementations")
    _SJ_BOUND.pop(device, None)
    sel._requested = name
    sel._selections.clear()
    sel._compiled_selections.clear()
    try:
        got = fn.neuron_implementation("lif", device)
    except RuntimeError as e:
        raise Missing(f"SpikingJelly {name} implementation unavailable: {str(e)[:160]}") \
            from None
    if name != "auto" and got["implementation"] != name:
        raise Missing(f"SpikingJelly bound {got['implementation']!r}, not {name!r}")
    _SJ_BOUND[device] = (name, got["implementation"])
    return got["implementation"]


def _sj_module(device, dtype, pre=None):
    """``LIFNode(step_mode="m")`` as users call it (its state in x's dtype)."""
    neuron = _import("spikingjelly.activation_based.neuron")
    if device.type == "cuda":
        note = f"implementation: {_sj_select('auto', device)}"
        if dtype != torch.float32:
            # lif_multi_step takes its fused op only for a float32 state
            note = "state in x's dtype, not float32: SpikingJelly's torch reference"
    elif device.type == "cpu":
        note = "CPU: torch reference under autograd"
    else:
        note = "meta tensors: the CUDA path's autograd"
    node = neuron.LIFNode(step_mode="m").to(device)

    def run(x):
        if device.type == "cuda":
            _sj_select("auto", device)  # another node may have re-bound the op since
        node.reset()
        return node(_apply(pre, x))
    return Built(run, note)


def _sj_op(implementation: Optional[str]):
    """``functional.lif_multi_step`` with a float32 state: the fused op that LIFNode uses for
    float32 input, with one CUDA implementation forced (None: on meta tensors, where the
    autograd that all CUDA implementations share records the same tensors)."""
    def make(device, dtype, pre=None):
        if implementation is None:
            if device.type != "meta":
                raise Missing("measured on meta tensors only (its CUDA autograd)")
            note = "meta tensors: autograd shared by SJ's triton, torch and cuda implementations"
        else:
            if device.type != "cuda":
                raise Missing(f"CUDA only (SpikingJelly {implementation} implementation)")
            note = f"implementation: {_sj_select(implementation, device)}"
        fn = _import("spikingjelly.activation_based.functional.neuron")

        def run(x):
            if implementation is not None:
                _sj_select(implementation, device)  # a no-op unless another node re-bound it
            x = _apply(pre, x)
            v0 = torch.zeros(x.shape[1:], dtype=torch.float32, device=x.device)
            return fn.lif_multi_step(x, v0)[0]
        return Built(run, note)
    return make


# -- snnTorch, Norse ---------------------------------------------------------------------------
def _snntorch(device, dtype, pre=None):
    """``snn.Leaky`` in its usual loop: ``spk, mem = leaky(cur, mem)`` per step, then stack."""
    snn = _import("snntorch")
    leaky = snn.Leaky(beta=0.5).to(device)

    def run(x):
        mem = leaky.reset_mem()
        out = []
        for t in range(x.shape[0]):
            spk, mem = leaky(_apply(pre, x[t]), mem)
            out.append(spk)
        return torch.stack(out)
    return Built(run)


def _norse(compiled: bool):
    def make(device, dtype, pre=None):
        norse = _import("norse.torch")
        lif = norse.LIF().to(device)

        def run(x):
            return lif(_apply(pre, x))[0]
        if compiled:
            if device.type == "meta":
                raise Missing("torch.compile does not run on meta tensors")
            # Norse loops over T in Python: dynamo unrolls the loop and recompiles for every
            # new T. Allow that, rather than its silent fall-back to eager after 8 recompiles.
            import torch._dynamo
            cfg = torch._dynamo.config
            cfg.recompile_limit = max(cfg.recompile_limit, 64)
            return Built(torch.compile(run), "torch.compile (inductor)")
        return Built(run)
    return make


NODES = {n.key: n for n in [
    Node("revlif", "revsnn RevLIF (fused backward)", _revlif()),
    Node("revlif-beta1", "revsnn RevLIF, |beta| = 1 (no stash)", _revlif(beta1=-1.0, beta2=1.0)),
    Node("revlif-recompute", "revsnn RevLIF (backward='recompute')",
         _revlif(backward="recompute")),
    Node("lif", "revsnn LIF (fused BPTT)", _lif),
    Node("sj", "SpikingJelly LIFNode(step_mode='m')", _sj_module),
    Node("sj-op", "SpikingJelly lif_multi_step op (CUDA autograd)", _sj_op(None)),
    Node("sj-triton", "SpikingJelly LIF, triton implementation", _sj_op("triton")),
    Node("sj-torch", "SpikingJelly LIF, torch implementation", _sj_op("torch")),
    Node("sj-cuda", "SpikingJelly LIF, native cuda implementation (SJ 2.0 has no cupy)",
         _sj_op("cuda")),
    Node("snntorch", "snnTorch Leaky, step loop", _snntorch),
    Node("norse", "Norse LIF", _norse(False)),
    Node("norse-compile", "Norse LIF, torch.compile", _norse(True)),
]}


def build(key: str, device: torch.device, dtype: torch.dtype,
          pre: Optional[nn.Module] = None) -> Built:
    """The node ``key`` of :data:`NODES`, ready to run on ``device``; raises Missing."""
    return NODES[key].make(device, dtype, pre)


def input_for(shape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Benchmark input: N(0.3, 1), clamped to +-4 so every node takes it (the reversible
    node's half-precision grid covers |x| < 7), requiring grad."""
    if device.type == "meta":
        return torch.empty(shape, dtype=dtype, device=device, requires_grad=True)
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=g, device=device).add_(0.3).clamp_(-4, 4)
    return x.to(dtype).requires_grad_()
