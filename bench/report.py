"""``python -m bench.report --out DIR [DIR ...]``: the result tables of one or more runs as the
compact Markdown that bench/RESULTS.md holds (pivots over T), each with the provenance line of
its run (card or CPU, date, versions, command). Only measured rows appear; rows without a
number are listed under the table with their status."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from .common import env_line, fmt
from .summary import num, print_for_out_dirs, read_rows


def _env(outs: Sequence[Path]) -> str:
    for o in outs:
        if (Path(o) / "env.json").exists():
            return env_line(json.loads((Path(o) / "env.json").read_text()))
    return "(no env.json)"


def pivot(rows: list, row_key: Callable, col: str, cell: Callable, title: str,
          row_head: str) -> str:
    """rows grouped by row_key (first column) with one column per value of ``col``."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return ""
    cols = sorted({r[col] for r in ok}, key=lambda v: float(v))
    keys = list(dict.fromkeys(row_key(r) for r in ok))
    lines = [f"**{title}**", "", f"| {row_head} | " + " | ".join(f"{col}={c}" for c in cols)
             + " |", "|---|" + "---|" * len(cols)]
    for k in keys:
        cells = []
        for c in cols:
            match = [r for r in ok if row_key(r) == k and r[col] == c]
            cells.append(cell(match[0]) if match else "")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _not_measured(rows: list, key: Callable) -> str:
    seen = list(dict.fromkeys(f"{key(r)}: {r['status']}" for r in rows
                              if r.get("status", "ok") != "ok"))
    return "".join(f"- {s}\n" for s in seen)


def _n(v, digits: str = ".3g") -> str:
    x = num(v)
    return "" if x is None else format(x, digits)


def _cell(v: str) -> str:
    """A CSV value as the Markdown tables show it: a number rounded as :func:`fmt` rounds (the
    CSVs keep it in full), anything else as it is."""
    x = num(v)
    return v if x is None else fmt(x)


def report(outs: Sequence[Path]) -> str:
    outs = [Path(o) for o in outs]
    parts = [f"Run: {_env(outs)}", ""]
    mem = read_rows(outs, "memory")
    for dtype in ("float32", "float16"):
        rows = [r for r in mem if r.get("dtype") == dtype]

        def name(r):
            return f"{r['impl']} ({r['device']})"
        parts.append(pivot(rows, name, "T", lambda r: fmt(num(r["kept_B_per_neuron"])),
                           f"Bytes kept for backward per neuron, excluding the output y, "
                           f"{dtype}", "implementation (device)"))
        parts.append(pivot(rows, name, "T", lambda r: _n(r["ratio_vs_revlif"]),
                           f"... as a multiple of revsnn RevLIF, {dtype}",
                           "implementation (device)"))
        rev = [r for r in rows if r["impl"] == "revlif" and r["status"] == "ok"]
        if rev:
            parts.append(pivot(rev, lambda r: "revlif: output y, bytes per neuron", "T",
                               lambda r: fmt(num(r["output_B_per_neuron"])),
                               f"The output y that RevLIF saves (shared with the next layer's "
                               f"saved input in a network), {dtype}", "what"))
    parts.append(_not_measured(mem, lambda r: f"memory {r['impl']}"))
    ker = read_rows(outs, "kernels")
    for dtype in ("float32", "float16"):
        rows = [r for r in ker if r.get("dtype") == dtype and r.get("status") == "ok"]
        if not rows:
            continue
        where = f"{rows[0]['timer']}, [T, {rows[0]['shape'].split('x', 1)[1].replace('x', ', ')}]"
        parts.append(pivot(rows, lambda r: r["impl"], "T",
                           lambda r: _n(r["fwdbwd_ms"]) + (
                               f" ({_n(r['fwdbwd_frac_of_copy'], '.2f')} of copy)"
                               if r.get("fwdbwd_frac_of_copy") else ""),
                           f"Forward + backward, ms ({where}), {dtype}", "implementation"))
        parts.append(pivot(rows, lambda r: r["impl"], "T", lambda r: _n(r["fwd_ms"]),
                           f"Forward (autograd recording), ms ({where}), {dtype}",
                           "implementation"))
    parts.append(_not_measured(ker, lambda r: f"kernels {r['impl']}"))
    node = [r for r in read_rows(outs, "kernels_node") if r.get("status") == "ok"]
    if node:
        parts.append(pivot(node, lambda r: r["impl"], "T",
                           lambda r: f"{_n(r['fwd_ms'])} / {_n(r['fwdbwd_ms'])} "
                                     f"({_n(r['fwd_GBps'])} / {_n(r['fwdbwd_GBps'])} GB/s; "
                                     f"copy {_n(r['copy_GBps'])} GB/s)",
                           f"Reversible node check, [16, 256, 65536] float32 ({node[0]['timer']}):"
                           f" forward / forward+backward ms", "implementation"))
    on = read_rows(outs, "kernels_on")
    shape = next((f"T = {r['T']}, batch {r['batch']}, {r['timer']}" for r in on
                  if r.get("status") == "ok"), "")
    parts.append(pivot(on, lambda r: r["impl"], "neurons",
                       lambda r: f"{_n(r['fwd_ms'])} / {_n(r['fwdbwd_ms'])}",
                       f"Linear + node ({shape}): forward / forward+backward ms",
                       "implementation"))
    parts.append(_not_measured(on, lambda r: f"open-neuromorphic {r['impl']}"))
    net = read_rows(outs, "network")
    for model in dict.fromkeys(r["model"] for r in net):
        rows = [r for r in net if r["model"] == model and r.get("batch") == "32"]
        gpu = any(r.get("peak_MiB") for r in rows)
        what = "peak_MiB" if gpu else "kept_MiB"
        ratio = "sj_over_this_peak" if gpu else "sj_over_this_kept"
        parts.append(pivot(rows, lambda r: r["variant"], "T",
                           lambda r: f"{_n(r[what], '.1f')}" + (
                               f" ({_n(r[ratio], '.2f')}x)" if r.get(ratio) else ""),
                           f"{model}, batch 32: {'peak MiB' if gpu else 'MiB kept for backward'}"
                           f" (SpikingJelly / this)", "variant"))
    parts.append(_not_measured(net, lambda r: f"network {r['model']} {r['variant']}"))
    fit = [r for r in read_rows(outs, "network_fit") if r.get("MiB_per_sample_step")]
    if fit:
        cols = ("model", "variant", "MiB_per_sample_step", "MiB_per_sample", "max_batch_T16",
                "max_batch_T32", "max_T_batch32", "max_rel_residual")
        parts += [f"**Largest batch / T within {fit[0]['budget_GiB']} GiB: fitted "
                  f"{fit[0]['quantity']} = c0 + c1*batch + c2*batch*T ({fit[0]['basis']})**",
                  "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        parts += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in fit]
        parts.append("")
    depth = read_rows(outs, "network_depth")
    parts.append(pivot(depth, lambda r: r["variant"], "depth",
                       lambda r: _n(r["peak_MiB"] or r["kept_MiB"], ".3g"),
                       "Spiking MLP, MiB (kept on CPU, peak on GPU) vs number of hidden layers",
                       "variant"))
    scal = read_rows(outs, "scaling")
    if scal:
        cols = ("section", "subject", "condition", "unit", "slope", "max_rel_residual")
        parts += ["**Fitted slopes**", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        parts += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in scal]
    return "\n".join(p for p in parts if p is not None) + "\n"


def main(argv=None) -> None:
    print_for_out_dirs("python -m bench.report", __doc__, report, argv)


if __name__ == "__main__":
    main()
