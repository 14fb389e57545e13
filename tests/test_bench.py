"""The benchmark suite (bench/): `python -m bench --tiny` runs on CPU, writes well-formed tables,
never puts a number in a row it could not measure, and reports the node memory the unit tests
promise (tests/test_rev_lif.py::test_kept_for_backward)."""
import csv
import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
import types
import weakref
from collections import Counter
from pathlib import Path

import pytest
import torch

import revsnn
from bench import kernels, memory, network, nodes, peak
from bench.common import Context, Table, linear_fit
from bench.summary import headline, not_measured, summary
from revsnn import models
from revsnn.memory import EXISTING, KeptBytes, LiveBytes, storage_id

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"memory": memory.COLUMNS, "kernels": kernels.COLUMNS,
          "kernels_on": kernels.ON_COLUMNS, "network": network.COLUMNS,
          "network_fit": network.FIT_COLUMNS, "network_depth": network.DEPTH_COLUMNS}
NUMERIC = {"memory": "kept_B_per_neuron", "kernels": "fwdbwd_ms", "kernels_on": "fwdbwd_ms",
           "network": "kept_MiB", "network_depth": "kept_MiB"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def read_csv(out, name):
    with open(out / f"{name}.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_tables_are_well_formed(results):
    out, _ = results
    for name, columns in TABLES.items():
        header, rows = read_csv(out, name)
        assert header == list(columns), name
        assert rows, f"{name}.csv has no rows"
        md = [l for l in (out / f"{name}.md").read_text().splitlines() if l.startswith("|")]
        assert md[0] == "| " + " | ".join(columns) + " |"
        assert md[1] == "|" + "---|" * len(columns)
        assert len(md) == 2 + len(rows), name
        for line in md[2:]:
            assert line.endswith(" |") and line.count(" | ") == len(columns) - 1, line
    header, rows = read_csv(out, "scaling")
    assert rows and all(r["slope"] for r in rows)


def test_no_number_without_a_measurement(results):
    out, _ = results
    for name, col in NUMERIC.items():
        _, rows = read_csv(out, name)
        for r in rows:
            status = r["status"]
            assert status == "ok" or status.startswith(("missing:", "skipped")), (name, r)
            if status == "ok":
                assert float(r[col]) > 0, (name, r)
            else:
                assert r[col] == "", (name, r)
    # the CUDA-only implementations show up, labelled, on a CPU run
    _, rows = read_csv(out, "kernels")
    sj_triton = [r for r in rows if r["impl"] == "sj-triton"]
    assert sj_triton and all(r["status"].startswith("missing: CUDA only") for r in sj_triton)


def test_memory_matches_the_unit_tests(results):
    """RevLIF keeps 4 + 2*ceil(T/16) bytes per neuron besides y with |beta| = 1/2 and 4 with
    |beta| = 1 (tests/test_rev_lif.py); its input is not kept, its output is (4 bytes per
    step in float32)."""
    out, _ = results
    _, rows = read_csv(out, "memory")
    ok = [r for r in rows if r["status"] == "ok" and r["dtype"] == "float32"]
    seen = set()
    for r in ok:
        T = int(r["T"])
        if r["impl"] in ("revlif", "revlif-recompute"):
            assert float(r["kept_B_per_neuron"]) == 4 + 2 * math.ceil(T / 16)
        elif r["impl"] == "revlif-beta1":
            assert float(r["kept_B_per_neuron"]) == 4
        else:
            continue
        assert float(r["input_B_per_neuron"]) == 0
        assert float(r["output_B_per_neuron"]) == 4 * T
        assert float(r["kept_B_per_neuron_step"]) == pytest.approx(
            float(r["kept_B_per_neuron"]) / T, rel=1e-3)
        seen.add((r["impl"], T))
    assert {T for _, T in seen} >= {4, 16, 32, 64}
    revlif = {int(r["T"]): float(r["kept_B_per_neuron"]) for r in ok if r["impl"] == "revlif"}
    for r in ok:
        assert float(r["ratio_vs_revlif"]) == pytest.approx(
            float(r["kept_B_per_neuron"]) / revlif[int(r["T"])], rel=1e-3)
    # a standard LIF trained by BPTT keeps per step: revsnn.LIF its potential H (4 bytes)
    lif = [r for r in ok if r["impl"] == "lif"]
    assert lif and all(float(r["kept_B_per_neuron_step"]) == 4 for r in lif)


def test_summary_env_and_plots(results):
    out, stdout = results
    assert "revsnn bench summary" in stdout and "| figure | value |" in stdout
    if not torch.cuda.is_available():  # a target without its table is a line, not a gap
        assert ("| RevLIF forward bandwidth / copy, T=16, 2**24 neurons, fp32 |  | >= 0.8 | "
                "not measured | kernels_node not run (GPU only) |") in stdout
    env = json.loads((out / "env.json").read_text())
    for key in ("device", "date", "command", "torch", "triton", "revsnn"):
        assert env[key], key
    assert env["command"].startswith("python -m bench --tiny")
    if importlib.util.find_spec("PIL") is None:
        return  # plots are optional: drawn with Pillow where it is installed
    for png in ("memory_vs_T.png", "time_vs_T.png"):
        assert (out / png).stat().st_size > 1000


def test_kept_bytes_counts_each_storage_once():
    x = torch.randn(6, 4, requires_grad=True)
    with KeptBytes() as kept:
        y = (x * x[0]) * x[1:2]  # mul saves both operands: x (twice, as views) and x * x[0]
    assert kept.bytes() == x.nbytes + y.nbytes
    assert kept.bytes(exclude={storage_id(x)}) == y.nbytes
    meta = torch.empty(5, device="meta", requires_grad=True)
    with KeptBytes() as kept:
        meta * meta.exp()
    assert kept.bytes() == 2 * meta.nbytes  # storages told apart without data pointers


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gc.get_objects meets deprecated objects
def test_kept_bytes_releases_a_graph_never_backpropagated():
    """Measuring a forward that is never backpropagated frees its graph with its output (the
    reversible node saves its own output y); the graph stays usable for a backward."""
    import gc

    def live_tensors():
        gc.collect()
        return {id(o): (tuple(o.shape), o.dtype) for o in gc.get_objects()
                if isinstance(o, torch.Tensor)}

    def measure():
        x = torch.randn(4, 2, 6, 3, requires_grad=True)
        with KeptBytes() as kept:
            y, _ = revsnn.functional.rev_lif(x)
        assert kept.bytes(only={storage_id(y)}) == y.nbytes
    measure()  # the node's constant tensors, made once, are alive from here on
    before = live_tensors()
    measure()
    after = live_tensors()
    assert after.keys() == before.keys(), (  # the tensors that appeared or went
        [after[k] for k in after.keys() - before.keys()],
        [before[k] for k in before.keys() - after.keys()])
    x = torch.randn(4, 2, 6, 3, requires_grad=True)
    with KeptBytes():
        y, _ = revsnn.functional.rev_lif(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, torch.autograd.grad(revsnn.functional.rev_lif(x)[0].sum(), x)[0])


def test_live_bytes_follows_the_storages_ops_make():
    x, gone = torch.randn(1000), torch.randn(1000)
    live = LiveBytes(existing=[x, gone])
    del gone
    assert live.now == x.nbytes  # an existing tensor freed, inside the block or before it
    with live:
        a = x * 2
        v = a.view(10, 100)  # a view and an in-place op make no new memory
        a.add_(1)
        b = a + v.flatten()
        del a, v
        c = b * 3
    assert live.peak == 3 * x.nbytes  # x, a, b; then a is freed before c is made
    assert live.now == 3 * x.nbytes
    assert [op for _, op, _ in live.at_peak] == [EXISTING, "aten.mul.Tensor", "aten.add.Tensor"]
    del b, c
    assert live.now == x.nbytes
    live.reset_peak()
    assert live.peak == x.nbytes


def test_memory_counters_edge_cases():
    """LiveBytes tells meta storages apart (their data_ptr() is 0) and does not keep itself
    alive; KeptBytes keeps autograd's in-place check, which its hooks would otherwise skip."""
    m = torch.empty(1000, device="meta")
    with LiveBytes() as live:
        a = m * 2
        b = a + m
    assert live.now == a.nbytes + b.nbytes == 2 * m.nbytes
    with LiveBytes() as live:
        a = torch.zeros(0)
        torch.mul(torch.ones(100), 2, out=a)  # out= resized: a's memory grows from nothing
        a.resize_(200)
    assert live.now == a.nbytes == 800
    del a
    assert live.now == 0
    ref = weakref.ref(LiveBytes(existing=[m]))
    gc.collect()
    assert ref() is None
    x = torch.randn(4, requires_grad=True)
    with KeptBytes():
        y = x.sigmoid()
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_kept_bytes_keeps_the_hooks_around_it():
    """Saved-tensor hooks in force around a KeptBytes block still see what is saved inside it
    (autograd calls only the innermost hooks): an outer KeptBytes counts the inner block's
    tensors, and outer hooks that move saved tensors elsewhere still do."""
    x = torch.randn(8, requires_grad=True)
    with KeptBytes() as outer:
        a = x.exp()  # saves its output a
        with KeptBytes() as inner:
            b = a.sin()  # saves a (already counted by outer)
            c = b * x  # saves b and x
    assert inner.bytes() == a.nbytes + b.nbytes + x.nbytes
    assert outer.bytes() == inner.bytes()
    moved = []

    def away(t):
        moved.append(t.nbytes)
        return t.detach().clone()  # a copy stands in for memory elsewhere (save_on_cpu)
    with torch.autograd.graph.saved_tensors_hooks(away, lambda t: t):
        with KeptBytes() as kept:
            y = x.sin() * x
    assert sum(moved) == 3 * x.nbytes and kept.bytes() == 2 * x.nbytes
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(g, x.cos() * x + x.sin())
    (g,) = torch.autograd.grad(c.sum(), x)
    assert torch.allclose(g, (x.exp().cos() * x.exp() * x + x.exp().sin()))


def test_network_batch_line_is_exact():
    """The CPU fallback of bench/network.py (batch 2 and 3, extended linearly) gives what the
    meta-tensor count gives at the real batch."""
    kw = dict(depth=2, hidden=16, in_features=8)
    model = network.make_model("mlp", "revlif", 3, "cpu", **kw)
    k2, k3, k5 = (network.kept_bytes(model, network._static_input("mlp", b, "cpu", kw))
                  for b in (2, 3, 5))
    assert k5 == k2 + 3 * (k3 - k2)
    meta = network.make_model("mlp", "revlif", 3, "meta", **kw)
    assert network.kept_bytes(meta, network._static_input("mlp", 5, "meta", kw)) == k5


def test_linear_fit():
    slope, intercept = linear_fit([4, 8, 16], [9, 17, 33])
    assert (slope, intercept) == pytest.approx((2, 1))


def test_peak_replay_of_an_allocator_trace():
    def ev(action, addr, size=0, where="revsnn/x.py"):
        return dict(action=action, addr=addr, size=size,
                    frames=[dict(filename=f"/site-packages/{where}", line=1, name="f")])
    trace = [ev("alloc", 1, 100), ev("alloc", 2, 50, "bench/y.py"), ev("free_requested", 1),
             ev("free_completed", 1), ev("alloc", 3, 120), ev("alloc", 4, 10),
             ev("free_completed", 4), ev("free_completed", 3), ev("alloc", 5, 60)]
    top, live, largest = peak.replay(trace)
    assert top == 180  # blocks 2, 3 and 4; block 1 was freed before
    assert live == {"revsnn/x.py:1 f": 130, "bench/y.py:1 f": 50}
    assert largest == [(120, "revsnn/x.py:1 f"), (50, "bench/y.py:1 f"),
                       (10, "revsnn/x.py:1 f")]
    # a block from before the trace freed first: the later allocation only refills it
    top, _, _ = peak.replay([ev("free_completed", 9, 100), ev("alloc", 1, 100)])
    assert top == 0


def test_peak_cpu_step_by_phase():
    r = peak.cpu_peak("vgg11", "revlif-rev", 2, 2, dict(width=16))
    assert set(r["phases"]) == set(network.SGDStep.PHASES)
    assert r["traced_peak"] == max(r["phases"].values()) > 0
    assert r["at"]


def test_peak_over_tensors_and_report(capsys):
    r = peak.tensor_peak("vgg11", "revlif-rev", 2, 2, dict(width=16), "cpu")
    assert set(r["phases"]) == set(network.SGDStep.PHASES)
    assert sum(r["live"].values()) == max(r["phases"].values())
    assert r["live"]["(live at the step's start: weights, gradients, momentum, input)"] > 0
    assert any(k.startswith("revsnn/nn/blocks.py") for k in r["live"])
    peak.main(["--model", "vgg11", "--T", "2", "--batch", "2", "--variant", "revlif-rev"])
    out = capsys.readouterr().out
    assert "CPU allocator peak of the step" in out and "counted over tensors" in out
    assert "| MiB | live at the tensor peak, made at |" in out
    peak.main(["--model", "vgg11", "--T", "2", "--batch", "2", "--variant", "lif", "--tensors"])
    out = capsys.readouterr().out
    assert "allocator" not in out and "counted over tensors" in out


def test_peak_per_op_allocator_reading_with_the_allocator_calls_replaced(monkeypatch, capsys):
    """OpAllocator (CUDA only) with a stand-in allocator: 100 MiB allocated throughout, its
    peak growing by 1 MiB per reading, so the last op holds the peak and every op gave
    memory back."""
    reads = []

    def max_allocated():
        reads.append((101 + len(reads)) << 20)
        return reads[-1]
    for name, fn in dict(memory_allocated=lambda: 100 << 20, max_memory_allocated=max_allocated,
                         reset_peak_memory_stats=lambda: None).items():
        monkeypatch.setattr(torch.cuda, name, fn)
    t = peak.tensor_peak("vgg11", "revlif-rev", 2, 2, dict(width=16), "cpu", per_op=True)
    top = t["top"]
    assert top["inside"] == reads[-1] and top["given_back"] == reads[-1] - (100 << 20)
    assert top["tensors"] + top["given_back"] + top["outside"] == top["inside"]
    assert top["op"] and any(op.startswith("aten.convolution_backward") and shapes.startswith("[")
                             for op, shapes, _ in t["given_back"])
    assert max(t["given_back"].values()) == top["given_back"]
    assert len(t["given_back"]) > 10 and min(t["given_back"].values()) == 1 << 20
    assert t["outside_at_start"] == (100 << 20) - t["live"][
        "(live at the step's start: weights, gradients, momentum, input)"]
    peak._print_tensors(t, 3)
    out = capsys.readouterr().out
    assert f"its peak, {reads[-1] >> 20} MiB, was reached inside `{top['op']}`" in out
    assert out.count("\n| ") == 3 + 1 + 3 + 1  # header rows and three rows of each table


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="the raw launches need Triton: a GPU or the interpreter")
def test_sweep_host_times_runs_every_layer():
    from bench import sweep
    cuda = torch.cuda.is_available()
    rows = dict(sweep.host_times(torch.device("cuda" if cuda else "cpu"), reps=2))
    revsnn_rows = [v for k, v in rows.items() if k.startswith("revsnn")]
    assert len(revsnn_rows) == (7 if cuda else 2)
    assert all(isinstance(v, float) and v > 0 for v in revsnn_rows)
    assert sum(k.startswith("machine") for k in rows) == (3 if cuda else 2)
    assert any(k.startswith("SpikingJelly") for k in rows) == cuda


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="the raw launches need Triton: a GPU or the interpreter")
def test_sweep_table_compares_launch_configurations_and_a_baseline(capsys):
    """The launch-configuration sweep (a GPU tuning tool) on a tiny odd shape: a row per
    configuration and one for a baseline copy of kernels/, each with the same bits as the
    first; the timings come from the stand-in bench (1 ms each)."""
    from bench import sweep
    device = "cuda" if torch.cuda.is_available() else "cpu"
    timed = []
    default = revsnn.ops._dispatch.LAUNCH["rev_lif"]
    step = sweep.sweep((3, 2, 10), sweep.CONFIGS[:2], lambda fn: (timed.append(fn()), 1.0)[1],
                       device=device, baseline=sweep.load_kernels("kernels"))
    step()
    assert revsnn.ops._dispatch.LAUNCH["rev_lif"] == default  # put back after the sweep
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| current") or line.startswith("| baseline")]
    assert [r.split(" | ")[:3] for r in rows] == [
        ["| current", "128", "4"], ["| current", "256", "4"], ["| baseline", "128", "4"]]
    assert all(r.endswith("| True |") for r in rows)
    assert len(timed) == 1 + 2 * len(rows) + 2  # the copy, fwd and bwd per row, the autograd call


def test_peak_cuda_path_with_the_allocator_calls_replaced(monkeypatch):
    """bench.peak's CUDA path runs on GPU machines only; here its torch.cuda calls are replaced
    by stand-ins (a fixed allocator trace) so that every line of it runs on CPU too."""
    frames = [dict(filename=f"{peak.ROOT}revsnn/nn/blocks.py", line=7, name="invert")]
    trace = [dict(action="alloc", addr=1, size=3 << 20, frames=frames),
             dict(action="alloc", addr=2, size=1 << 20, frames=[]),
             dict(action="free_completed", addr=1, size=3 << 20, frames=frames)]
    calls = []
    _fake_cuda(monkeypatch)
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history",
                        lambda *a, **k: calls.append(k))
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", lambda: {"device_traces": [trace]})
    r = peak.cuda_peak("vgg11", "revlif-rev", 2, 2, dict(width=16), device="cpu")
    assert r["phases"] == {p: 40 << 20 for p in network.SGDStep.PHASES}
    assert r["traced_peak"] == 4 << 20 and r["start"] == 0
    assert r["live"] == {"revsnn/nn/blocks.py:7 invert": 3 << 20,
                         "(no Python frame of revsnn, bench or torch.nn)": 1 << 20}
    assert calls[-1] == dict(enabled=None)  # recording switched off again


def test_peak_cap_with_the_cuda_calls_replaced(monkeypatch, capsys):
    """--cap-mib sets the allocator's fraction of the card and reports a step that does not
    fit instead of failing; without CUDA it is an argument error."""
    with pytest.raises(SystemExit):
        peak.main(["--cap-mib", "100"])
    assert "--cap-mib needs CUDA" in capsys.readouterr().err
    fraction = _cuda_main(monkeypatch)

    def oom(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(peak, "cuda_peak", oom)
    assert peak.main(["--variant", "revlif-rev", "--cap-mib", "2000"]) == 0
    assert fraction == [0.25]
    out = capsys.readouterr().out
    assert ("resnet18 revlif-rev, T = 16, batch 32: does not fit, allocator capped at 2000 MiB"
            in out)
    with pytest.raises(SystemExit):
        peak.main(["--cap-mib", "9000"])
    assert "--cap-mib must be in (0, 8000]" in capsys.readouterr().err
    with pytest.raises(torch.cuda.OutOfMemoryError):  # without a cap an OOM is an error
        peak.main(["--variant", "revlif-rev"])


def test_csv_keeps_full_precision_markdown_rounds(tmp_path):
    from bench.common import Table
    t = Table(tmp_path, "t", "title", ["a", "b"], {})
    t.add(a=1270.4375, b=None)
    _, rows = read_csv(tmp_path, "t")
    assert rows == [{"a": "1270.4375", "b": ""}]
    assert "| 1270 |" in (tmp_path / "t.md").read_text()


def test_network_gpu_points_one_batch_at_a_time(tmp_path, monkeypatch):
    """On a GPU each batch is its own measurement: one that runs out of memory is a failed row
    with its batch, and the smaller one already measured stays (the CUDA call is replaced)."""
    from bench.common import Context

    def step_memory(name, variant, T, batch, kw):
        if batch == 32:
            raise RuntimeError("CUDA out of memory (stand-in)")
        return 100 * 2 ** 20, 60 * 2 ** 20
    monkeypatch.setattr(network, "gpu_step_memory", step_memory)
    monkeypatch.setattr(Context, "gpu", property(lambda self: True))
    ctx = Context(tmp_path, {}, torch.device("cpu"), "priority")
    table = ctx.table("network", "t", network.COLUMNS)
    cfg = dict(models={"vgg11": dict(width=16)}, variants=["revlif"], points=[(4, 16), (4, 32)])
    rows = network._measure(ctx, cfg, table)
    assert [(r["batch"], r["peak_MiB"]) for r in rows] == [(16, 100.0)]
    failed = [r for r in table.rows if r["status"] != "ok"]
    assert len(failed) == 1 and failed[0]["batch"] == 32 and "out of memory" in failed[0]["status"]


def test_csv_cells_of_numpy_floats_are_plain_numbers(tmp_path):
    import numpy as np
    from bench.common import Table
    Table(tmp_path, "t", "title", ["a"], {}).add(a=np.float64(0.25))
    assert read_csv(tmp_path, "t")[1] == [{"a": "0.25"}]


def test_live_bytes_existing_views_count_their_storage_once():
    x = torch.randn(1000)
    live = LiveBytes(existing=[x, x[:10], x.view(10, 100)])
    assert live.now == x.nbytes


def test_live_bytes_views_and_in_place_of_older_tensors_are_not_allocations():
    x = torch.randn(1000)  # made before the block, not declared existing
    with LiveBytes() as live:
        v = x.view(10, 100)
        x.mul_(2)
        v.add_(1)
    assert live.now == 0 and live.peak == 0


def test_kept_by_role_counts_the_input_once():
    from bench.common import kept_by_role
    x = torch.randn(6, 5, requires_grad=True)
    _, kept = kept_by_role(lambda t: t * t.exp(), x)  # saves x and exp(x); not its output
    assert kept == dict(input=x.nbytes, output=0, other=x.nbytes)


def test_bench_memory_fixed_bytes_is_the_intercept():
    from bench.memory import measure
    c = torch.randn(5, requires_grad=True)  # saved once per call: 20 fixed bytes
    row = measure(lambda x: x * c, torch.device("cpu"), torch.float32, T=4)
    assert row["input_B_per_neuron"] == 4 * 4 and row["other_B_per_neuron"] == 0
    assert row["fixed_bytes"] == c.nbytes


def test_scaling_fit_residual_is_relative(tmp_path):
    from bench.common import Context, linear_fit
    ctx = Context(tmp_path, {}, torch.device("cpu"), "tiny")
    xs, ys = [1.0, 2.0, 3.0], [10.0, 20.0, 40.0]
    ctx.fit("s", "q", "subject", "condition", "unit", xs, ys)
    slope, icpt = linear_fit(xs, ys)
    want = max(abs(slope * x + icpt - y) / y for x, y in zip(xs, ys))
    assert ctx.scaling.rows[-1]["max_rel_residual"] == pytest.approx(want)


MIB = 2 ** 20
MEM = ("impl", "device", "dtype", "T", "kept_B_per_neuron", "ratio_vs_revlif",
       "output_B_per_neuron", "status")
KER = ("impl", "device", "dtype", "T", "shape", "timer", "fwd_ms", "fwdbwd_ms",
       "fwd_GBps", "fwdbwd_GBps", "copy_GBps", "fwdbwd_frac_of_copy", "status")
NET = ("model", "variant", "T", "batch", "kept_MiB", "peak_MiB", "sj_over_this_kept",
       "sj_over_this_peak", "method", "status")


def _tables(out):
    """A GPU run's tables with round numbers."""
    t = Table(out, "memory", "m", MEM, {})
    for T, kept, ratio in ((4, 6.0, 1.0), (16, 6.0, 1.0), (32, 8.0, 1.0)):
        t.add(impl="revlif", device="cuda", dtype="float32", T=T, kept_B_per_neuron=kept,
              ratio_vs_revlif=ratio, output_B_per_neuron=4 * T, status="ok")
    for T, kept in ((4, 34.0), (16, 130.0), (32, 80.0)):
        t.add(impl="sj-triton", device="cuda", dtype="float32", T=T, kept_B_per_neuron=kept,
              ratio_vs_revlif=kept / 8 if T == 32 else kept / 6, status="ok")
    t.add(impl="sj-op", device="meta", dtype="float32", T=32, kept_B_per_neuron=260.0,
          ratio_vs_revlif=32.5, status="ok")
    t.add(impl="revlif", device="cuda", dtype="float16", T=32, kept_B_per_neuron=6.0,
          ratio_vs_revlif=1.0, status="ok")
    t.add(impl="sj-triton", device="cuda", dtype="float16", T=32, kept_B_per_neuron=45.0,
          ratio_vs_revlif=7.5, status="ok")
    t.add(impl="norse", device="cuda", dtype="float32", status="failed: RuntimeError: x")
    k = Table(out, "kernels", "k", KER, {})
    for impl, ms in (("revlif", 2.0), ("sj-triton", 3.0), ("revlif-recompute", 5.0)):
        for T in (16, 32):
            k.add(impl=impl, device="cuda", dtype="float32", T=T, shape=f"{T}x64x65536",
                  timer="do_bench", fwd_ms=ms / 2, fwdbwd_ms=ms * T / 16,
                  fwdbwd_frac_of_copy=0.9 if impl == "revlif" else None, status="ok")
    n = Table(out, "kernels_node", "n", KER, {})
    n.add(impl="revlif", device="cuda", dtype="float32", T=16, timer="do_bench", fwd_ms=1.0,
          fwdbwd_ms=4.0, fwd_GBps=800.0, fwdbwd_GBps=500.0, copy_GBps=1000.0, status="ok")
    n.add(impl="revlif-recompute", device="cuda", dtype="float32", T=16, timer="do_bench",
          fwd_ms=1.0, fwdbwd_ms=7.0, fwd_GBps=800.0, fwdbwd_GBps=300.0, copy_GBps=1000.0,
          status="ok")
    w = Table(out, "network", "w", NET, {})
    for T in (4, 16):
        for batch, peak_ratio in ((16, 0.5), (32, 1.5)):
            w.add(model="vgg11", variant="revlif", T=T, batch=batch, kept_MiB=10.0 * T,
                  peak_MiB=100.0 * T, sj_over_this_kept=2.0, sj_over_this_peak=peak_ratio,
                  method="CUDA, one SGD step", status="ok")
    w.add(model="resnet18", variant="revlif-rev", T=16, batch=32, kept_MiB=50.0,
          sj_over_this_kept=2.5, method="meta tensors", status="ok")
    w.add(model="resnet18", variant="lif-rev", T=16, batch=32, status="skipped in tiny mode")
    f = Table(out, "network_fit", "f", network.FIT_COLUMNS, {})
    f.add(model="vgg11", variant="revlif", quantity="peak", MiB_per_sample_step=0.61962890625,
          MiB_per_sample=0.125, MiB_fixed=4.0, points=4, max_rel_residual=1.23456e-7,
          budget_GiB=8.0, max_batch_T16=813, max_batch_T32=409, max_T_batch32=412,
          basis="measured peak (GPU)")
    d = Table(out, "network_depth", "d", network.DEPTH_COLUMNS, {})
    for depth in (2, 4):
        d.add(model="mlp", variant="revlif", depth=depth, T=16, batch=32, kept_MiB=1.0 * depth,
              peak_MiB=7.0 * depth, method="CUDA, one SGD step", status="ok")
    (out / "env.json").write_text('{"device": "NVIDIA Test", "date": "today"}')


def test_summary_figures_and_verdicts(tmp_path):
    _tables(tmp_path)
    rows = {fig.split(" (")[0]: (value, target, verdict, where)
            for fig, value, target, verdict, where in headline([tmp_path])}
    # SJ's triton row (on CUDA) before the meta one; 80 / 8 = 10: the target met at equality
    assert rows["node memory SJ / RevLIF, T=32, float32"] == (10.0, ">= 10x", "met",
                                                              "sj-triton on cuda")
    assert rows["node memory SJ / RevLIF, T=32, float16"] == (7.5, ">= 8x", "missed",
                                                              "sj-triton on cuda")
    assert rows["fwd+bwd speed RevLIF vs SJ triton, T=16, fp32"] == (1.5, ">= 1x", "met", "cuda")
    assert rows["fwd+bwd speed fused vs recompute backward, T=32, fp32"][0] == 2.5
    assert rows["RevLIF fwd+bwd bandwidth / copy, T=16, fp32"][:3] == (0.9, ">= 0.8", "met")
    shape = ", T=16, 2**24 neurons, fp32"
    assert rows["RevLIF forward bandwidth / copy" + shape] == (0.8, ">= 0.8", "met", "cuda")
    # backward alone: (500 * 4 - 800 * 1) MB / (4 - 1) ms = 400 GB/s, of a 1000 GB/s copy
    assert rows["RevLIF fused backward bandwidth / copy" + shape][:3] == (
        pytest.approx(0.4), ">= 0.8", "missed")
    assert rows["fused backward speed-up over recompute"] == (2.0, ">= 1.5x", "met", "cuda")
    # the GPU row's peak ratio at batch 32; a row without a peak gives its kept ratio
    assert rows["network peak SJ / revlif, vgg11, T=16, batch 32"] == (
        1.5, ">= 1.3x", "met", "CUDA, one SGD step")
    assert rows["network kept SJ / revlif-rev, resnet18, T=16, batch 32"] == (
        2.5, ">= 3x", "missed", "meta tensors")
    assert not_measured([tmp_path]) == [("memory", "norse", "failed: RuntimeError: x"),
                                        ("network", "lif-rev", "skipped in tiny mode")]
    text = summary(tmp_path)
    assert "| network peak SJ / revlif, vgg11, T=16, batch 32 | 1.5 | >= 1.3x | met |" in text
    assert "- memory: norse: failed: RuntimeError: x" in text


def test_report_tables(tmp_path):
    from bench.report import report
    _tables(tmp_path)
    text = report([tmp_path])
    assert "| implementation (device) | T=4 | T=16 | T=32 |" in text  # T in numeric order
    assert "| sj-triton (cuda) | 34 | 130 | 80 |" in text
    assert "| sj-triton (cuda) | 5.67 | 21.7 | 10 |" in text  # the ratio, not the bytes
    assert "| revlif | 2 (0.90 of copy) | 4 (0.90 of copy) |" in text
    # GPU rows: the peak and its ratio; batch 32 only
    assert "**vgg11, batch 32: peak MiB (SpikingJelly / this)**" in text
    assert "| revlif | 400.0 (1.50x) | 1600.0 (1.50x) |" in text and "(0.50x)" not in text
    assert "**resnet18, batch 32: MiB kept for backward (SpikingJelly / this)**" in text
    assert "| revlif-rev | 50.0 (2.50x) |" in text
    # the fit's numbers rounded as the other tables round them
    assert "| vgg11 | revlif | 0.6196 | 0.125 | 813 | 409 | 412 | 1.235e-07 |" in text
    assert "| revlif | 14 | 28 |" in text  # depth: the peak where there is one
    assert "- memory norse: failed: RuntimeError: x" in text


def test_host_meter_cpu_fallback_line_matches_meta(monkeypatch):
    kw = dict(depth=2, hidden=16, in_features=8)
    meter = network.HostMeter()
    meta, method, _ = meter("mlp", "revlif", 3, (5, 7), kw)
    assert method == "meta tensors"
    meter.why_not_meta[("mlp", "revlif")] = "forced"
    cpu, method, note = meter("mlp", "revlif", 3, (5, 7), kw)
    assert method.startswith("CPU tensors") and "forced" in note
    assert cpu == meta


def _gpu_ctx(tmp_path, monkeypatch, budget=8.0):
    monkeypatch.setattr(Context, "gpu", property(lambda self: True))
    return Context(tmp_path, {}, torch.device("cpu"), "priority", budget)


def test_network_ratios_and_parameters(tmp_path, monkeypatch):
    """The ratio columns are SpikingJelly's figure over the row's (kept and peak each on their
    own), params_M is millions of parameters, and the fit gets the parameters' bytes."""
    memory = {"sj": (300 * MIB, 120 * MIB), "revlif": (100 * MIB, 60 * MIB)}
    monkeypatch.setattr(network, "gpu_step_memory",
                        lambda name, variant, T, batch, kw: memory[variant])
    ctx = _gpu_ctx(tmp_path, monkeypatch)
    table = ctx.table("network", "t", network.COLUMNS)
    cfg = dict(models={"vgg11": dict(width=16)}, variants=["sj", "revlif"], points=[(4, 16)])
    rows = network._measure(ctx, cfg, table)
    with torch.device("meta"):
        n = models.count_parameters(models.spiking_vgg11(width=16))
    rev = [r for r in rows if r["variant"] == "revlif"]
    assert len(rev) == 1
    r = rev[0]
    assert (r["sj_over_this_peak"], r["sj_over_this_kept"]) == (3.0, 2.0)
    assert (r["peak_MiB"], r["kept_MiB"]) == (100.0, 60.0)
    assert r["params_M"] == n / 1e6 and r["params"] == 4 * n


def test_network_fit_budget(tmp_path, monkeypatch):
    """Points on an exact line bytes = a + b * batch + c * batch * T (CPU: kept bytes plus the
    weights and their gradients): the fit finds it, and the largest batch / T solve it against
    the budget (GiB = 2**30 bytes), rounded down."""
    ctx = Context(tmp_path, {}, torch.device("cpu"), "tiny", 8.0)
    fits = ctx.table("network_fit", "f", network.FIT_COLUMNS)
    a, b, c, p = 5_000_000, 1_234_567, 345_678, 1_000_000

    def row(variant, T, batch):
        return dict(model="m", variant=variant, status="ok", T=T, batch=batch,
                    kept=a + b * batch + c * batch * T, peak=None, params=p)
    rows = [row("v", T, B) for T, B in ((4, 16), (4, 32), (16, 32), (32, 16))]
    rows += [row("two", 4, 16), row("two", 16, 32)]  # two points: too few for three unknowns
    network._fit(ctx, rows, fits)
    fit = {r["variant"]: r for r in fits.rows}
    assert fit["two"]["basis"].startswith("not fitted")
    r = fit["v"]
    assert r["MiB_fixed"] == pytest.approx((a + 2 * p) / MIB, rel=1e-9)
    assert r["MiB_per_sample"] == pytest.approx(b / MIB, rel=1e-9)
    assert r["MiB_per_sample_step"] == pytest.approx(c / MIB, rel=1e-9)
    budget = 8 * 2 ** 30
    for T in (4, 16, 32):
        want = (budget - a - 2 * p) / (b + c * T)
        assert 0.01 < want % 1 < 0.99 and r[f"max_batch_T{T}"] == math.floor(want)
    want = (budget - a - 2 * p - 32 * b) / (32 * c)
    assert 0.01 < want % 1 < 0.99 and r["max_T_batch32"] == math.floor(want)


def test_gpu_step_memory_counts_from_before_the_model(monkeypatch):
    _fake_cuda(monkeypatch)
    real = network.SGDStep
    monkeypatch.setattr(network, "SGDStep",
                        lambda name, variant, T, batch, kw, device: real(name, variant, T, batch,
                                                                         kw, "cpu"))
    peak_bytes, kept = network.gpu_step_memory("mlp", "revlif", 2, 4, dict(hidden=8))
    assert peak_bytes == 40 * MIB and kept > 0


def test_kernel_bandwidth_bytes(tmp_path, monkeypatch):
    """A node keeping its input x, its output y and one other tensor of x's size: forward moves
    x + y + the other (x and y kept cost no extra write); backward reads dy and all three kept,
    and writes dx. Times: forward 2 ms, forward+backward 5 ms, copy 0.5 ms."""
    def node(x):
        return (x.exp() * x).sigmoid()  # keeps x and exp(x) (mul), its output (sigmoid)
    times = {"fwd": 2.0, "fwdbwd": 5.0}
    monkeypatch.setattr(kernels, "time_ms", lambda fn, device: times.get(fn.__name__, 0.5))
    monkeypatch.setattr(kernels, "_peak_mib", lambda ctx, fn: None)
    monkeypatch.setattr(kernels, "build", lambda key, device, dtype: nodes.Built(node))
    ctx = _gpu_ctx(tmp_path, monkeypatch)
    table = ctx.table("kernels", "k", kernels.COLUMNS)
    cfg = dict(Ts=(4,), inner=(2, 8), dtypes=(torch.float32,), impls=["revlif"])
    kernels._harness(ctx, cfg, table, kernels.Progress("k", 1), fit=False)
    (r,) = table.rows
    x = 4 * 2 * 8 * 4  # bytes of x, and of y, dx, dy, exp(x)
    assert r["fwd_GBps"] == pytest.approx(3 * x / 2.0 / 1e6)
    assert r["fwdbwd_GBps"] == pytest.approx((3 * x + 5 * x) / 5.0 / 1e6)
    assert r["copy_GBps"] == pytest.approx(2 * x / 0.5 / 1e6)
    assert r["fwdbwd_frac_of_copy"] == pytest.approx(r["fwdbwd_GBps"] / r["copy_GBps"])
    assert r["fwdbwd_ms_per_step"] == 5.0 / 4


@pytest.mark.parametrize("mode", ["tiny", "quick", "priority", "full"])
@pytest.mark.parametrize("dev", ["cpu", "cuda"])
def test_kernel_plan_lists_each_implementation_once(mode, dev, tmp_path):
    """Every implementation is either measured or a skipped row, never both or neither."""
    cfg = kernels.plan(Context(tmp_path, {}, torch.device(dev), mode))
    for impls, skip, every in ((cfg["impls"], cfg["skip"], kernels.ALL),
                               (cfg["on_impls"], cfg["skip_on"], kernels.ON_ALL)):
        assert len(impls) == len(set(impls)) and not set(impls) & set(skip)
        assert set(impls) | set(skip) == set(every)


@pytest.mark.parametrize("mode", ["tiny", "quick", "priority", "full"])
@pytest.mark.parametrize("dev", ["cpu", "cuda"])
def test_memory_and_network_plans_name_what_exists(mode, dev, tmp_path):
    """The plans of every mode, the GPU ones included (they run only on a lent GPU), name
    implementations, variants and models that exist, each once, skipped ones apart."""
    ctx = Context(tmp_path, {}, torch.device(dev), mode)
    pairs, Ts, dtypes, skipped = memory.plan(ctx)
    keys = [k for k, _ in pairs]
    assert set(keys) | set(skipped) <= set(nodes.NODES) and not set(keys) & set(skipped)
    assert len(pairs) == len(set(pairs)) and Ts and torch.float32 in dtypes
    assert {d for _, d in pairs} == ({"cuda"} if dev == "cuda" else {"cpu", "meta"})
    cfg = network.plan(ctx)
    headline = {"vgg11"} if mode == "tiny" else {"vgg11", "resnet18"}  # the targets' models
    assert headline <= set(cfg["models"]) <= set(models.MODELS)
    assert set(cfg["variants"]) <= set(network.VARIANTS) and "revlif-rev" in cfg["variants"]
    assert len(cfg["variants"]) == len(set(cfg["variants"]))


def test_node_settings(monkeypatch):
    import revsnn.functional
    calls = []
    real = revsnn.functional.rev_lif

    def rev_lif(x, **kw):
        calls.append(kw)
        return real(x, **kw)
    monkeypatch.setattr(revsnn.functional, "rev_lif", rev_lif)
    x = torch.rand(2, 2, 4)
    for key in ("revlif", "revlif-recompute", "revlif-beta1"):
        nodes.build(key, torch.device("cpu"), torch.float32).fn(x)
    assert calls == [{}, dict(backward="recompute"), dict(beta1=-1.0, beta2=1.0)]
    pytest.importorskip("snntorch")
    # snnTorch Leaky(beta=0.5), threshold 1, input 0.6: 0.6, 0.9, 1.05 -> a spike at step 3
    y = nodes.build("snntorch", torch.device("cpu"), torch.float32).fn(torch.full((3, 1, 1), 0.6))
    assert y.flatten().tolist() == [0.0, 0.0, 1.0]


def _fake_cuda(monkeypatch, **over):
    """torch.cuda's allocator calls replaced: 10 MiB allocated, a peak of 50 MiB."""
    fake = dict(synchronize=lambda: None, memory_allocated=lambda: 10 * MIB,
                max_memory_allocated=lambda: 50 * MIB, reset_peak_memory_stats=lambda: None,
                current_device=lambda: 0)
    fake.update(over)
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)


def test_peak_cuda_traced_peak_adds_what_was_live_at_the_step_start(monkeypatch):
    allocated = iter([10 * MIB, 15 * MIB])  # before the model; when the step starts
    _fake_cuda(monkeypatch, memory_allocated=lambda: next(allocated))
    trace = [dict(action="alloc", addr=1, size=4 * MIB, frames=[])]
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", lambda: {"device_traces": [trace]})
    r = peak.cuda_peak("mlp", "revlif", 2, 4, dict(hidden=8), device="cpu")
    assert r["start"] == 5 * MIB and r["traced_peak"] == 9 * MIB


def _cuda_main(monkeypatch, card_mib=8000):
    card = types.SimpleNamespace(total_memory=card_mib * MIB)
    fraction = []
    for name, fn in dict(is_available=lambda: True, current_device=lambda: 0,
                         get_device_properties=lambda i: card,
                         set_per_process_memory_fraction=fraction.append).items():
        monkeypatch.setattr(torch.cuda, name, fn)
    return fraction


def test_peak_cap_may_be_the_whole_card(monkeypatch, capsys):
    fraction = _cuda_main(monkeypatch)

    def oom(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(peak, "cuda_peak", oom)
    assert peak.main(["--variant", "revlif", "--cap-mib", "8000"]) == 0
    assert fraction == [1.0] and "does not fit" in capsys.readouterr().out


def test_peak_gap_between_allocator_and_tensor_peaks(monkeypatch, capsys):
    _cuda_main(monkeypatch)
    phases = ("forward", "backward", "update")
    r = dict(phases=dict(zip(phases, (300 * MIB, 500 * MIB, 200 * MIB))), start=0,
             traced_peak=500 * MIB, live=Counter(), largest=[])
    t = dict(phases=dict(zip(phases, (100 * MIB, 400 * MIB, 50 * MIB))), live=Counter())
    monkeypatch.setattr(peak, "cuda_peak", lambda *a: r)
    monkeypatch.setattr(peak, "tensor_peak", lambda *a: t)
    assert peak.main(["--variant", "revlif"]) == 0
    assert "allocator peak - tensor peak: 100 MiB" in capsys.readouterr().out


class _Stop(Exception):
    pass


def test_bench_priority_without_a_gpu_runs_the_quick_sizes(tmp_path, monkeypatch):
    # `python -m bench --priority` on a machine without CUDA says it runs --quick sizes on CPU:
    # the Context must get mode "quick" (the priority sizes are GPU-sized)
    import bench.__main__ as bench_main
    import bench.common
    seen = {}

    def fake_context(out, env, device, mode, budget):
        seen["mode"], seen["device"] = mode, device.type
        raise _Stop

    monkeypatch.setattr(bench.common, "Context", fake_context)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # main sets 1 on CPU
    try:
        bench_main.main(["--priority", "--out", str(tmp_path), "--no-plots", "--no-summary"])
    except _Stop:
        pass
    want = "priority" if seen["device"] == "cuda" else "quick"
    assert seen["mode"] == want


@pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="plots need Pillow")
def test_bench_plots_draw_the_network_chart_of_batch_32(tmp_path):
    # the network table's batch-32 rows make one chart per model (kept MiB vs T on CPU)
    from bench.plots import draw_all
    rows = [dict(status="ok", model="vgg11", batch=32, variant=v, T=T, kept_MiB=k * T)
            for v, k in (("lif", 2.0), ("rev", 0.5)) for T in (2, 4, 8)]
    rows.append(dict(status="ok", model="vgg11", batch=8, variant="lif", T=2, kept_MiB=1.0))
    tables = [types.SimpleNamespace(name="network", rows=rows)]
    env = dict(device="cpu", date="2026-01-01", torch="x")
    lines = draw_all(tmp_path, tables, env)
    png = tmp_path / "network_vgg11_vs_T.png"
    assert f"wrote {png}" in lines
    assert png.stat().st_size > 1000


@pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="plots need Pillow")
def test_bench_plots_redraw_from_csv_includes_the_network_chart(tmp_path, capsys):
    # `python -m bench.plots --out DIR` redraws every plot from a run's CSV files, the
    # network table's included
    import csv
    import json

    from bench import plots
    (tmp_path / "env.json").write_text(json.dumps(dict(device="cpu", date="d", torch="x")))
    cols = ["status", "model", "batch", "variant", "T", "kept_MiB"]
    with open(tmp_path / "network.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for v, k in (("lif", 2.0), ("rev", 0.5)):
            for T in (2, 4, 8):
                w.writerow(["ok", "vgg11", 32, v, T, k * T])
    plots.main(["--out", str(tmp_path)])
    assert "network_vgg11_vs_T.png" in capsys.readouterr().out
    assert (tmp_path / "network_vgg11_vs_T.png").stat().st_size > 1000


def test_bench_only_runs_the_named_sections(tmp_path, monkeypatch):
    # `python -m bench --only memory` imports and runs the memory section alone
    import bench.__main__ as bench_main
    ran = []

    def import_module(name, package=None):
        return types.SimpleNamespace(run=lambda ctx: ran.append(name) or [])

    monkeypatch.setattr(bench_main.importlib, "import_module", import_module)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # main sets 1 on CPU
    assert bench_main.main(["--tiny", "--only", "memory", "--out", str(tmp_path),
                            "--no-plots", "--no-summary"]) == 0
    assert ran == [".memory"]
