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
from pathlib import Path

import pytest
import torch

import revsnn
from bench import kernels, memory, network, peak
from bench.common import linear_fit
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
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())

    def measure():
        x = torch.randn(4, 2, 6, 3, requires_grad=True)
        with KeptBytes() as kept:
            y, _ = revsnn.functional.rev_lif(x)
        assert kept.bytes(only={storage_id(y)}) == y.nbytes
    measure()  # the node's constant tensors, made once, are alive from here on
    before = live_tensors()
    measure()
    assert live_tensors() == before
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


def test_peak_cuda_path_with_the_allocator_calls_replaced(monkeypatch):
    """bench.peak's CUDA path runs on GPU machines only; here its torch.cuda calls are replaced
    by stand-ins (a fixed allocator trace) so that every line of it runs on CPU too."""
    frames = [dict(filename=f"{peak.ROOT}revsnn/nn/blocks.py", line=7, name="invert")]
    trace = [dict(action="alloc", addr=1, size=3 << 20, frames=frames),
             dict(action="alloc", addr=2, size=1 << 20, frames=[]),
             dict(action="free_completed", addr=1, size=3 << 20, frames=frames)]
    calls = []
    fake = dict(synchronize=lambda: None, memory_allocated=lambda: 10 << 20,
                max_memory_allocated=lambda: 50 << 20, reset_peak_memory_stats=lambda: None,
                current_device=lambda: 0)
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
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
    fraction = []
    card = types.SimpleNamespace(total_memory=8000 << 20)
    for name, fn in dict(is_available=lambda: True, current_device=lambda: 0,
                         get_device_properties=lambda i: card,
                         set_per_process_memory_fraction=fraction.append).items():
        monkeypatch.setattr(torch.cuda, name, fn)

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
