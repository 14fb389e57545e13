"""``python -m revsnn.demo``: the reversible LIF node on a realistic shape, on this machine.

Runs forward and backward, proves that the inverse rebuilds the input and the initial state bit
for bit, and prints what each node keeps for backward and how long a step takes, next to a
standard LIF trained by BPTT: revsnn's fused ``LIF`` (which keeps only the charged potential
H, 4 bytes per neuron per step) and a hand-written PyTorch loop.
"""
from __future__ import annotations

import argparse
import time

import torch

from .functional import rev_lif, rev_lif_inverse
from ._config import LIFConfig
from .functional import lif
from .memory import KeptBytes
from .reference.neuron import charge_real, spike_reset_real


def plain_lif(x: torch.Tensor) -> torch.Tensor:
    """The LIF loop people write by hand (tau 2, hard reset): autograd keeps every step."""
    cfg = LIFConfig.build()
    v = torch.zeros_like(x[0])
    spikes = []
    for t in range(x.shape[0]):
        s, v = spike_reset_real(charge_real(v, x[t], cfg, 2.0), cfg, 1.0)
        spikes.append(s)
    return torch.stack(spikes)


def _kept(fn):
    """(output, bytes of every tensor autograd saved while fn ran, counted once per storage)."""
    with KeptBytes() as kept:
        out = fn()
    return out, kept.bytes()


def _time(fn, device, repeat):
    fn()  # warm-up (and Triton compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--shape", type=int, nargs="+", default=None,
                   help="B C H W of one step (default: 32 128 32 32 on GPU, 8 64 16 16 on CPU)")
    p.add_argument("--repeat", type=int, default=None)
    args = p.parse_args(argv)
    for name in ("T", "repeat"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = args.shape or ([32, 128, 32, 32] if device.type == "cuda" else [8, 64, 16, 16])
    repeat = args.repeat or (20 if device.type == "cuda" else 2)
    T = args.T
    torch.manual_seed(0)
    x = (torch.randn(T, *shape, device=device) * 1.5 + 0.3).requires_grad_()
    neurons = x[0].numel()
    print(f"revsnn demo on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}"
          f"  x: [T={T}, {', '.join(map(str, shape))}] float32, {neurons} neurons")

    # exactness: run the node, then run it backwards from its output and final state
    y, state = rev_lif(x)
    x_rec, state0 = rev_lif_inverse(y.detach(), state)
    x_grid = torch.floor(x.detach() * 2 ** 16 + 0.5) / 2 ** 16  # the node's float32 input grid
    exact = torch.equal(x_rec, x_grid) and not state0.v_fixed.any()
    print(f"inverse rebuilt x and the initial state bit for bit: {exact} "
          f"(max |x_rec - x| = {(x_rec - x_grid).abs().max().item():.1e} over "
          f"{x.numel()} values; spike rate "
          f"{(y.detach() - x_grid.roll(shape[1] // 2, 2)).mean().item():.3f})")
    if not exact:
        raise SystemExit("reconstruction was not exact")
    y.sum().backward()

    y_bytes = y.numel() * y.element_size()

    def fwd_bwd(fn):
        def step():
            x.grad = None
            out = fn()
            out.backward(torch.ones_like(out))
        return step

    nodes = [("RevLIF (revsnn, fused)", lambda: rev_lif(x)[0]),
             ("LIF (revsnn, fused)", lambda: lif(x)[0]),
             ("LIF, hand-written PyTorch loop", lambda: plain_lif(x))]
    print("\n| node | kept for backward, bytes/neuron | time per step, fwd+bwd |")
    print("|---|---|---|")
    for name, fn in nodes:
        _, kept = _kept(fn)
        if name.startswith("RevLIF"):
            kept_txt = (f"{(kept - y_bytes) / neurons:.1f} + its output y "
                        f"({y_bytes / neurons / T:.0f} per step, kept by the next layer anyway)")
        else:
            kept_txt = f"{kept / neurons:.1f} ({kept / neurons / T:.1f} per step)"
        print(f"| {name} | {kept_txt} | {_time(fwd_bwd(fn), device, repeat) / T * 1e3:.2f} ms |")
    print(f"\nbytes/neuron: measured with saved_tensors_hooks at T={T}. Timings: "
          f"{device.type.upper()}, mean of {repeat} runs after a warm-up.")


if __name__ == "__main__":
    main()
