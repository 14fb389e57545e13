"""The short summary printed after a run (and by ``python -m bench.summary --out DIR``): the
headline figures against issue 4's targets, read back from the CSV files, and every row that is
missing, skipped or failed."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Optional, Sequence


def read_rows(outs: Sequence[Path], name: str) -> list:
    """The rows of table ``name`` from every output folder that has it."""
    rows = []
    for out in outs:
        path = Path(out) / f"{name}.csv"
        if path.exists():
            with open(path, newline="") as f:
                rows += list(csv.DictReader(f))
    return rows


def num(v: Optional[str]) -> Optional[float]:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _pick(rows: list, **want) -> Optional[dict]:
    for r in rows:
        if r.get("status") == "ok" and all(r.get(k) == str(v) for k, v in want.items()):
            return r
    return None


def _sj_node(rows: list, dtype: str, T: int) -> Optional[dict]:
    """SpikingJelly's fused path: its triton implementation on CUDA, else its op's CUDA
    autograd on meta tensors."""
    for impl, dev in (("sj-triton", "cuda"), ("sj-op", "meta")):
        r = _pick(rows, impl=impl, device=dev, dtype=dtype, T=T)
        if r:
            return r
    return None


def _verdict(value: Optional[float], target: float, more_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if more_is_better else value <= target
    return "met" if ok else "missed"


def headline(out: Sequence[Path]) -> list:
    """[(figure, value, target, verdict, where)]"""
    lines = []
    mem = read_rows(out, "memory")
    for dtype, target in (("float32", 10.0), ("float16", 8.0)):
        rev, sj = _pick(mem, impl="revlif", dtype=dtype, T=32), _sj_node(mem, dtype, 32)
        ratio = num(sj["kept_B_per_neuron"]) / num(rev["kept_B_per_neuron"]) \
            if rev and sj else None
        kept = [f"{num(r['kept_B_per_neuron']):g}" if r else "?" for r in (sj, rev)]
        lines.append((f"node memory SJ / RevLIF, T=32, {dtype} (kept B/neuron: "
                      f"{kept[0]} / {kept[1]})",
                      ratio, f">= {target:g}x", _verdict(ratio, target),
                      f"{sj['impl']} on {sj['device']}" if sj else "SJ row missing"))
    ker = read_rows(out, "kernels")
    for T in ("16", "32"):
        rev = _pick(ker, impl="revlif", dtype="float32", T=T)
        sj = _pick(ker, impl="sj-triton", dtype="float32", T=T)
        rec = _pick(ker, impl="revlif-recompute", dtype="float32", T=T)
        if not rev:
            lines.append((f"fwd+bwd speed RevLIF vs SJ triton, T={T}, fp32", None, ">= 1x",
                          "not measured", "RevLIF row missing or failed"))
        else:
            where = rev["device"]
            if sj:
                r = num(sj["fwdbwd_ms"]) / num(rev["fwdbwd_ms"])
                lines.append((f"fwd+bwd speed RevLIF vs SJ triton, T={T}, fp32", r, ">= 1x",
                              _verdict(r, 1.0), where))
            else:
                lines.append((f"fwd+bwd speed RevLIF vs SJ triton, T={T}, fp32", None, ">= 1x",
                              "not measured", "SJ triton needs CUDA"))
            if rec:
                r = num(rec["fwdbwd_ms"]) / num(rev["fwdbwd_ms"])
                lines.append((f"fwd+bwd speed fused vs recompute backward, T={T}, fp32", r,
                              "(fused >= 1.5x, backward alone)", "see kernels table", where))
            frac = num(rev.get("fwdbwd_frac_of_copy"))
            if frac is not None:
                lines.append((f"RevLIF fwd+bwd bandwidth / copy, T={T}, fp32", frac, ">= 0.8",
                              _verdict(frac, 0.8), where))
    lines += _node_check(read_rows(out, "kernels_node"))
    net = read_rows(out, "network")
    for model, variant, target in (("vgg11", "revlif", 1.3), ("resnet18", "revlif-rev", 3.0)):
        r = _pick(net, model=model, variant=variant, T=16, batch=32)
        if r:
            key = "sj_over_this_peak" if r.get("peak_MiB") else "sj_over_this_kept"
            ratio = num(r[key])
            what = "peak" if key.endswith("peak") else "kept"
        else:
            ratio, what = None, "memory"
        lines.append((f"network {what} SJ / {variant}, {model}, T=16, batch 32", ratio,
                      f">= {target:g}x", _verdict(ratio, target),
                      r["method"] if r else "row missing"))
    return lines


def _node_check(rows: list) -> list:
    """Issue 2's GPU targets from the kernels_node table: each pass's bandwidth against a copy
    (backward = fwd+bwd minus fwd) and the fused backward against the recompute one."""
    rev, rec = _pick(rows, impl="revlif"), _pick(rows, impl="revlif-recompute")
    if not rev:
        why = "RevLIF row missing or failed" if rows else "kernels_node not run (GPU only)"
        return [(f"RevLIF {what}, T=16, 2**24 neurons, fp32", None, target, "not measured", why)
                for what, target in (("forward bandwidth / copy", ">= 0.8"),
                                     ("fused backward bandwidth / copy", ">= 0.8"))]
    where, shape = rev["device"], "T=16, 2**24 neurons, fp32"
    t_f, t_fb, copy = num(rev["fwd_ms"]), num(rev["fwdbwd_ms"]), num(rev["copy_GBps"])
    fwd_bw = num(rev["fwd_GBps"]) / copy
    bwd_bw = (num(rev["fwdbwd_GBps"]) * t_fb - num(rev["fwd_GBps"]) * t_f) / (t_fb - t_f) / copy
    lines = [(f"RevLIF forward bandwidth / copy, {shape}", fwd_bw, ">= 0.8",
              _verdict(fwd_bw, 0.8), where),
             (f"RevLIF fused backward bandwidth / copy, {shape}", bwd_bw, ">= 0.8",
              _verdict(bwd_bw, 0.8), where)]
    if rec:
        r = (num(rec["fwdbwd_ms"]) - num(rec["fwd_ms"])) / (t_fb - t_f)
        lines.append((f"fused backward speed-up over recompute (backward alone), {shape}", r,
                      ">= 1.5x", _verdict(r, 1.5), where))
    return lines


def not_measured(out: Sequence[Path]) -> list:
    """Unique (table, implementation or variant, status) of rows that carry no number."""
    seen = []
    for name in ("memory", "kernels", "kernels_node", "kernels_on", "network", "network_depth"):
        for r in read_rows(out, name):
            if r.get("status", "ok") != "ok":
                item = (name, r.get("impl") or r.get("variant") or "", r["status"])
                if item not in seen:
                    seen.append(item)
    return seen


def summary(out) -> str:
    """The summary of one output folder, or of several (sections run one by one)."""
    out = [Path(o) for o in ([out] if isinstance(out, (str, Path)) else out)]
    env = {}
    for o in out:
        if (o / "env.json").exists():
            env = json.loads((o / "env.json").read_text())
    lines = [f"## revsnn bench summary ({env.get('device', '?')}, {env.get('date', '?')})", "",
             "| figure | value | target | verdict | measured on |", "|---|---|---|---|---|"]
    for fig, value, target, verdict, where in headline(out):
        v = "" if value is None else f"{value:.3g}"
        lines.append(f"| {fig} | {v} | {target} | {verdict} | {where} |")
    missing = not_measured(out)
    if missing:
        lines += ["", "Rows without a number (missing, skipped or failed):"]
        lines += [f"- {table}: {impl}: {status}" for table, impl, status in missing]
    return "\n".join(lines) + "\n"


def print_for_out_dirs(prog: str, doc: str, render, argv=None) -> None:
    """The command line of ``python -m bench.summary`` and ``bench.report``: ``--out DIR ...``,
    then print ``render(dirs)``."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--out", nargs="+", default=["bench/results"],
                   help="one or more output folders of python -m bench")
    print(render(p.parse_args(argv).out))


def main(argv=None) -> None:
    print_for_out_dirs("python -m bench.summary", __doc__, summary, argv)


if __name__ == "__main__":
    main()
