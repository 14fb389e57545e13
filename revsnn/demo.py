"""``python -m revsnn.demo``: the reversible LIF node on a realistic shape, on this machine.

Runs forward and backward, proves that the inverse rebuilds the input and the initial state bit
for bit, and prints what each node keeps for backward and how long a step takes, next to a
standard LIF trained by plain-PyTorch BPTT (``revsnn.reference.lif_bptt``).
"""
from __future__ import annotations

import argparse
import time

import torch

from .functional import rev_lif, rev_lif_inverse
from ._config import RevLIFConfig
from .reference.neuron import charge_real, spike_reset_real


def lif_bptt(x):  # placeholder until revsnn.reference.lif lands
    cfg = RevLIFConfig.build()
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        s, v = spike_reset_real(charge_real(v, x[t], cfg), cfg)
        out.append(s)
    return torch.stack(out), v


def _kept(fn):
    """(output, bytes of every tensor autograd saved while fn ran, counted once per storage)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


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
    (y, state), rev_bytes = _kept(lambda: rev_lif(x))
    x_rec, state0 = rev_lif_inverse(y.detach(), state)
    x_grid = torch.floor(x.detach() * 2 ** 16 + 0.5) / 2 ** 16  # the node's float32 input grid
    exact = torch.equal(x_rec, x_grid) and not state0.v_fixed.any()
    print(f"inverse rebuilt x and the initial state bit for bit: {exact} "
          f"(max |x_rec - x| = {(x_rec - x_grid).abs().max().item():.1e} over "
          f"{x.numel()} values; spike rate {(y.detach() - x_grid.roll(shape[1] // 2, 2)).mean().item():.3f})")
    if not exact:
        raise SystemExit("reconstruction was not exact")
    y.sum().backward()

    _, lif_bytes = _kept(lambda: lif_bptt(x)[0])
    y_bytes = y.numel() * y.element_size()

    def step_rev():
        x.grad = None
        y, _ = rev_lif(x)
        y.backward(torch.ones_like(y))

    def step_lif():
        x.grad = None
        s, _ = lif_bptt(x)
        s.backward(torch.ones_like(s))

    t_rev = _time(step_rev, device, repeat)
    t_lif = _time(step_lif, device, repeat)
    rows = [
        ("RevLIF (revsnn, fused)", (rev_bytes - y_bytes) / neurons, y_bytes / neurons / T,
         t_rev / T),
        ("LIF, plain-PyTorch BPTT", lif_bytes / neurons, None, t_lif / T),
    ]
    print(f"\n| node | kept for backward, bytes/neuron (excl. output) | + output y, "
          f"bytes/neuron/step | fwd+bwd time per step |")
    print("|---|---|---|---|")
    for name, kept, yb, t in rows:
        ytxt = f"{yb:.0f} (the node's own output)" if yb is not None else "-"
        print(f"| {name} | {kept:.1f} | {ytxt} | {t * 1e3:.2f} ms |")
    print(f"\nAt T={T} the standard LIF keeps {lif_bytes / neurons:.0f} bytes per neuron, RevLIF "
          f"{(rev_bytes - y_bytes) / neurons:.0f} plus its output (which the next layer keeps "
          f"anyway). Timings: {device.type.upper()}, mean of {repeat} runs.")


if __name__ == "__main__":
    main()
