"""What every benchmark section shares: the record of the machine, counting the bytes autograd
keeps, timing, result tables (CSV + Markdown) and a plain progress indicator."""
from __future__ import annotations

import csv
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from revsnn.memory import KeptBytes, storage_id

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("spikingjelly", "snntorch", "norse")


class Missing(Exception):
    """An implementation or measurement that cannot run here; the message says why. It becomes a
    row whose status starts with ``missing:``, never a number."""


def failure(e: Exception) -> str:
    """The status of a row whose measurement raised ``e``: labelled, never a number."""
    if isinstance(e, Missing):
        return f"missing: {e}"
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "failed: out of memory"
    first = str(e).splitlines()[0] if str(e) else ""
    return f"failed: {type(e).__name__}: {first[:120]}"


# -- the machine -------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # a peer that fails to import is as good as absent
        return f"absent ({type(e).__name__})"
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return getattr(mod, "__version__", "version unknown")


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" + uncommitted changes" if dirty else "")


def environment(device: torch.device, argv: Sequence[str]) -> dict:
    """Card or CPU, date, versions and the exact command: the provenance of every number."""
    import revsnn
    env = {
        "device": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "triton": _version("triton"),
        "revsnn": f"{revsnn.__version__} (git {_git_commit()})",
        "cpu_threads": torch.get_num_threads(),
        "load_average": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    env.update({p: _version(p) for p in PEERS})
    return env


def env_line(env: dict) -> str:
    keys = ("device", "date", "torch", "triton", "revsnn") + PEERS
    if env.get("device", "").startswith("CPU"):
        keys += ("cpu_threads", "load_average")
    return "; ".join(f"{k}: {env.get(k, '?')}" for k in keys) + \
        f"; command: `{env.get('command', '?')}`"


# -- what a node keeps ---------------------------------------------------------------------------
def kept_by_role(fn: Callable[[torch.Tensor], torch.Tensor],
                 x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``y = fn(x)`` once, and the bytes autograd kept for its backward, each storage once, split
    into the node's ``input`` x, its ``output`` y and the ``other`` tensors it saved."""
    with KeptBytes() as kept:
        y = fn(x)
    xi, yi = {storage_id(x)}, {storage_id(y)}
    return y, dict(input=kept.bytes(only=xi), output=kept.bytes(only=yi),
                   other=kept.bytes(exclude=xi | yi))


# -- time --------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, budget_s: float = 0.25,
            min_reps: int = 3, max_reps: int = 50) -> float:
    """Median time of ``fn`` in milliseconds. CUDA: ``triton.testing.do_bench`` median (it
    flushes the L2 cache between runs). CPU: ``time.perf_counter`` around each call, after one
    warm-up call, repeated within ``budget_s`` seconds (at least ``min_reps`` times)."""
    if device.type == "cuda":
        import triton.testing
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps
                                     or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


# -- result tables -----------------------------------------------------------------------------
def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:  # NaN
            return ""
        if abs(v) < 1e-9:  # rounding noise of a fit or a difference
            return "0"
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"
    return str(v)


def exact(v) -> str:
    """A CSV cell: the value in full (the Markdown tables round with :func:`fmt`; what reads
    the CSVs, bench.summary and the plots, computes from them)."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return repr(float(v)) if isinstance(v, float) else str(v)  # float(): numpy's repr differs


class Table:
    """Rows with fixed columns, rewritten to ``<out>/<name>.csv`` and ``<name>.md`` after every
    row, so a run cut short by a timeout still leaves what it measured."""

    def __init__(self, out: Path, name: str, title: str, columns: Sequence[str], env: dict,
                 notes: Sequence[str] = ()) -> None:
        self.out, self.name, self.title = Path(out), name, title
        self.columns, self.env, self.notes = list(columns), env, list(notes)
        self.rows: list[dict] = []
        self.out.mkdir(parents=True, exist_ok=True)
        self.write()  # replaces the file of an earlier run at once

    def add(self, **row) -> dict:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.name}: unknown columns {sorted(unknown)}")
        self.rows.append(row)
        self.write()
        return row

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", env_line(self.env), ""]
        lines += [f"{n}" for n in self.notes] + ([""] if self.notes else [])
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        for r in self.rows:
            cells = [fmt(r.get(c)).replace("|", "/") for c in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        with open(self.out / f"{self.name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            for r in self.rows:
                w.writerow({c: exact(r.get(c)) for c in self.columns})
        (self.out / f"{self.name}.md").write_text(self.markdown())


def ok_groups(rows: Iterable[dict], *keys: str) -> dict:
    """The measured rows (status ``ok``) grouped by the values of ``keys``, in order."""
    groups: dict = {}
    for r in rows:
        if r.get("status") == "ok":
            groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def write_env(out: Path, env: dict) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "env.json").write_text(json.dumps(env, indent=2) + "\n")


# -- progress ----------------------------------------------------------------------------------
class Progress:
    """``[section  3/40  0:12] what`` on stderr, one line per step (no dependency)."""

    def __init__(self, section: str, total: int) -> None:
        self.section, self.total, self.done = section, max(total, 1), 0
        self.start = time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        s = int(time.perf_counter() - self.start)
        print(f"[{self.section} {self.done:>3}/{self.total}  {s // 60}:{s % 60:02d}] {what}",
              file=sys.stderr, flush=True)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# -- run context -------------------------------------------------------------------------------
MODES = ("tiny", "quick", "priority", "full")


class Context:
    """What a section needs: where to write, the provenance record, the device, the mode
    (``tiny``: the test's sizes; ``quick``: CPU, under two minutes; ``priority``: the GPU subset
    of ``bench/gpu_check.sh``; ``full``), the memory budget, and the shared scaling table."""

    SCALING_COLUMNS = ("section", "quantity", "subject", "condition", "unit", "slope",
                       "intercept", "points", "max_rel_residual")

    def __init__(self, out: Path, env: dict, device: torch.device, mode: str,
                 budget_gib: float = 8.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.out, self.env, self.device, self.mode = Path(out), env, device, mode
        self.budget_gib = budget_gib
        self.scaling = self.table(
            "scaling", "Scaling: fitted slopes (least squares, y = slope * x + intercept)",
            self.SCALING_COLUMNS,
            notes=["Each row fits one figure against one variable with the others fixed "
                   "(`condition`); `max_rel_residual` is the largest |fit - measured| / "
                   "measured over the fitted points."])

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    def table(self, name: str, title: str, columns: Sequence[str],
              notes: Sequence[str] = ()) -> Table:
        return Table(self.out, name, title, columns, self.env, notes)

    def fit(self, section: str, quantity: str, subject: str, condition: str, unit: str,
            xs: Sequence[float], ys: Sequence[float]) -> None:
        """Least-squares line through (xs, ys), recorded in the scaling table (>= 2 points)."""
        if len(xs) < 2 or len(set(xs)) < 2:
            return
        slope, intercept = linear_fit(xs, ys)
        resid = max(abs(slope * x + intercept - y) / abs(y) for x, y in zip(xs, ys) if y) \
            if any(ys) else 0.0
        self.scaling.add(section=section, quantity=quantity, subject=subject,
                         condition=condition, unit=unit, slope=slope, intercept=intercept,
                         points=len(xs), max_rel_residual=resid)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx
