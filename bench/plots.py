"""PNG line charts of the result tables, drawn with Pillow (which torchvision already brings)
so that plotting adds no dependency; without Pillow the plots are skipped, nothing else."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Sequence

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#aec7e8"]
W, H = 1000, 620
LEFT, RIGHT, TOP, BOTTOM = 90, 300, 64, 70


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list:
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in ((1,) if hi / lo > 1e3 else (1, 2, 5)):
            v = m * 10 ** e
            if lo <= v <= hi:
                out.append(v)
    return out or [lo, hi]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}"
    return f"{v:g}"


def _merge_identical(series: dict) -> dict:
    """Series with the very same points become one, labelled "a = b" (else one hides the
    other)."""
    merged: dict = {}
    for name, s in series.items():
        merged.setdefault(tuple(sorted(s)), []).append(name)
    return {" = ".join(names): list(points) for points, names in merged.items()}


def line_chart(path: Path, title: str, subtitle: str, xlabel: str, ylabel: str,
               series: dict, logx: bool = True, logy: bool = False) -> None:
    """series: {label: [(x, y), ...]}; x on a log2 axis when ``logx`` (ticks at the data's x),
    y on a log10 axis when ``logy``."""
    from PIL import Image, ImageDraw, ImageFont
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and y > 0]
    if not pts:
        return
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = sorted({x for x, _ in pts})
    ys = [y for _, y in pts]
    fx = (lambda v: math.log2(v)) if logx else (lambda v: v)
    fy = (lambda v: math.log10(v)) if logy else (lambda v: v)
    x0, x1 = fx(xs[0]), fx(xs[-1])
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    if logy:
        y0, y1 = min(ys) / 1.5, max(ys) * 1.5
        yticks = _log_ticks(y0, y1)
    else:
        y0, y1 = 0.0, max(ys) * 1.08
        yticks = _nice_ticks(y0, y1)
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x):
        return LEFT + (fx(x) - x0) / (x1 - x0) * pw

    def py(y):
        return TOP + ph - (fy(y) - fy(y0)) / (fy(y1) - fy(y0)) * ph
    for t in yticks:
        d.line([(LEFT, py(t)), (LEFT + pw, py(t))], fill="#e6e6e6")
        d.text((LEFT - 8, py(t)), _label(t), fill="black", font=font, anchor="rm")
    for t in xs:
        d.line([(px(t), TOP), (px(t), TOP + ph)], fill="#e6e6e6")
        d.text((px(t), TOP + ph + 8), _label(t), fill="black", font=font, anchor="mt")
    d.rectangle([LEFT, TOP, LEFT + pw, TOP + ph], outline="black")
    d.text((LEFT, 14), title, fill="black", font=font)
    d.text((LEFT, 34), subtitle, fill="#555555", font=font)
    d.text((LEFT + pw / 2, H - 30), xlabel, fill="black", font=font, anchor="mt")
    d.text((12, TOP - 18), ylabel, fill="black", font=font)
    for i, (name, s) in enumerate(_merge_identical(series).items()):
        color = COLORS[i % len(COLORS)]
        line = [(px(x), py(y)) for x, y in s if y is not None and y > 0]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        for cx, cy in line:
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=color)
        ly = TOP + 6 + 18 * i
        d.rectangle([LEFT + pw + 16, ly, LEFT + pw + 30, ly + 10], fill=color)
        d.text((LEFT + pw + 36, ly - 1), name[:44], fill="black", font=font)
    img.save(path)


def _rows(tables: Sequence, name: str) -> list:
    for t in tables:
        if t.name == name:
            return [r for r in t.rows if r.get("status") == "ok"]
    return []


def _series(rows: list, key, x: str, y: str) -> dict:
    out: dict = {}
    for r in rows:
        if r.get(y) is not None:
            out.setdefault(key(r), []).append((r[x], r[y]))
    return out


def draw_all(out: Path, tables: Sequence, env: dict) -> list:
    """Every plot the tables allow; returns one line per plot written or skipped."""
    if importlib.util.find_spec("PIL") is None:
        return ["plots skipped: Pillow is not installed (pip install pillow)"]
    out = Path(out)
    sub = f"{env['device']}; {env['date']}; torch {env['torch']}"
    done: list = []

    def chart(name: str, title: str, xlabel: str, ylabel: str, series: dict,
              logy: bool, logx: bool = True) -> None:
        if series:
            line_chart(out / name, title, sub, xlabel, ylabel, series, logx=logx, logy=logy)
            done.append(f"wrote {out / name}")

    mem = [r for r in _rows(tables, "memory") if r["dtype"] == "float32"]
    chart("memory_vs_T.png", "Bytes kept for backward per neuron (excluding the output), float32",
          "T (time steps)", "bytes per neuron",
          _series(mem, lambda r: f"{r['impl']} ({r['device']})", "T", "kept_B_per_neuron"),
          logy=True)
    ker = [r for r in _rows(tables, "kernels") if r["dtype"] == "float32"]
    where = "GPU, do_bench median" if any(r["device"] == "cuda" for r in ker) else \
        "CPU, perf_counter median, small shape"
    chart("time_vs_T.png", f"Node forward + backward time, float32 ({where})", "T (time steps)",
          "ms", _series(ker, lambda r: r["impl"], "T", "fwdbwd_ms"), logy=True)
    bw = _series(ker, lambda r: r["impl"], "T", "fwdbwd_GBps")
    if bw:
        copy = {r["T"]: r["copy_GBps"] for r in ker if r.get("copy_GBps")}
        bw["device-to-device copy"] = sorted(copy.items())
        chart("bandwidth_vs_copy.png", "Effective bandwidth of forward + backward vs a copy, "
              "float32", "T (time steps)", "GB/s", bw, logy=False)
    else:
        done.append("bandwidth_vs_copy.png skipped: bandwidth is measured on GPU only")
    net = _rows(tables, "network")
    gpu = any(r.get("peak_MiB") is not None for r in net)
    for model in sorted({r["model"] for r in net}):
        rows = [r for r in net if r["model"] == model and r["batch"] == 32]
        chart(f"network_{model}_vs_T.png",
              f"{model}, batch 32: " + ("peak training memory (GPU)" if gpu else
                                        "bytes kept for backward (exact)"),
              "T (time steps)", "MiB",
              _series(rows, lambda r: r["variant"], "T", "peak_MiB" if gpu else "kept_MiB"),
              logy=False, logx=False)
    return done


class _Saved:
    """A result table read back from its CSV (numbers as floats), for redrawing."""

    def __init__(self, out: Path, name: str) -> None:
        from .summary import read_rows
        self.name = name
        self.rows = [{k: _parse(v) for k, v in r.items()} for r in read_rows([out], name)]


def _parse(v: str):
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def main(argv=None) -> None:
    """``python -m bench.plots --out DIR``: redraw the plots from the CSV files of a run (e.g.
    of a GPU machine that has no Pillow)."""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m bench.plots", description=main.__doc__)
    p.add_argument("--out", default="bench/results")
    out = Path(p.parse_args(argv).out)
    env = json.loads((out / "env.json").read_text())
    tables = [_Saved(out, n) for n in ("memory", "kernels", "network")]
    for line in draw_all(out, tables, env):
        print(line)


if __name__ == "__main__":
    main()
