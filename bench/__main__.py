"""``python -m bench``: the revsnn benchmark suite (run from the repository root).

    python -m bench --quick                 # CPU, small sizes, under two minutes
    python -m bench                         # full suite (meant for a GPU)
    python -m bench --priority              # the GPU subset bench/gpu_check.sh runs
    python -m bench --only memory --out DIR

Writes ``<out>/<table>.csv`` and ``.md`` for every table (kernels, kernels_on, memory,
network, network_fit, network_depth, scaling), ``env.json`` (card or CPU, date, versions,
command) and PNG plots, then prints a short summary.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

SECTIONS = ("memory", "kernels", "network")


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="CPU only, small shapes, under two minutes (CPU timings labelled)")
    size.add_argument("--tiny", action="store_true",
                      help="the smallest sizes, for tests/test_bench.py (seconds)")
    size.add_argument("--priority", action="store_true",
                      help="the GPU subset sized for bench/gpu_check.sh (about two minutes)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections out of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--out", default="bench/results", help="output folder (default: %(default)s)")
    p.add_argument("--budget-gib", type=float, default=8.0,
                   help="memory budget for the largest T and batch that fit (default: 8)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--no-summary", action="store_true",
                   help="do not print the summary (bench/gpu_check.sh prints one at the end)")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad or not only:
        p.error(f"--only takes sections out of {', '.join(SECTIONS)}, got {args.only!r}")
    if args.budget_gib <= 0:
        p.error(f"--budget-gib must be positive, got {args.budget_gib}")
    args.only = only
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    import torch
    from .common import Context, environment, write_env

    cpu_only = args.quick or args.tiny
    device = torch.device("cuda" if torch.cuda.is_available() and not cpu_only else "cpu")
    if args.priority and device.type != "cuda":
        print("--priority is the GPU subset; no GPU here: running --quick sizes on CPU",
              file=sys.stderr)
    if args.tiny:
        mode = "tiny"
    elif args.quick or args.priority and device.type == "cpu":
        mode = "quick"
    else:
        mode = "priority" if args.priority else "full"
    if device.type == "cpu":
        # one thread: CPU timings on a shared machine are far steadier than with a thread pool
        # whose workers wait on each other
        torch.set_num_threads(1)
    env = environment(device, argv)
    out = Path(args.out)
    write_env(out, env)
    ctx = Context(out, env, device, mode, args.budget_gib)
    print(f"revsnn bench: {mode} mode on {env['device']}; results in {out}/", file=sys.stderr)
    t0 = time.perf_counter()
    tables = []
    for name in SECTIONS:
        if name in args.only:
            tables += importlib.import_module(f".{name}", __package__).run(ctx)
    tables.append(ctx.scaling)
    if not args.no_plots:
        from .plots import draw_all
        for line in draw_all(out, tables, env):
            print(line, file=sys.stderr)
    if not args.no_summary:
        from .summary import summary
        print(summary(out))
    print(f"done in {time.perf_counter() - t0:.0f} s; tables: "
          + ", ".join(f"{t.name}.csv/.md" for t in tables), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
