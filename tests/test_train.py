"""Training command: arguments, tiny runs on the digits, exact resume, DDP with gloo on CPU."""
import importlib.util
import io
import os
import random
import re
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from revsnn import data as rdata
from revsnn import train as rtrain
from revsnn.memory import KeptBytes, storage_id

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_name_every_option_and_only_real_ones():
    """docs/train.md documents each option of the parser, and it and the README's training
    section name no option the parser lacks (torchrun's own excepted)."""
    options = {o for a in rtrain.parser()._actions for o in a.option_strings} - {"-h", "--help"}
    flag = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
    with open(os.path.join(ROOT, "docs", "train.md")) as f:
        docs = set(flag.findall(f.read())) - {"--nproc_per_node"}
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read().split("## Train a reversible SNN", 1)[1].split("\n## ", 1)[0]
    assert docs == options
    assert set(flag.findall(readme)) <= options


TINY = ["--train-size", "96", "--test-size", "64", "--batch-size", "32", "--width", "8",
        "--T", "2", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast, and unharmed by a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(argv, log=None):
    lines = []
    out = rtrain.train(rtrain.parse_args(argv), log=lines.append if log is None else log)
    return out, lines


def test_defaults():
    a = rtrain.parse_args([])
    assert (a.dataset, a.model, a.neuron, a.reversible, a.T) == ("digits", "convnet8",
                                                                 "revlif", False, 4)
    a = rtrain.parse_args(["--dataset", "digits-seq"])
    assert (a.model, a.T) == ("mlp", 64)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["--T", "0"], "--T must be >= 1, got 0"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--width", "7"], "width=7 must be even for neuron='revlif'"),
    (["--width", "6", "--reversible"], "multiple of 4"),
    (["--dataset", "digits-seq", "--T", "8"], "--T must be 64"),
    (["--model", "vgg11"], "sized for 32x32 images"),
    (["--dataset", "cifar10", "--model", "resnet18", "--width", "8"], "--width is not an "
                                                                     "option"),
    (["--tau", "1.0"], "--tau must be > 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--seed", "-1"], "--seed must be in [0, 2**31)"),
    (["--dataset", "cifar10", "--model", "convnet8"], "sized for the 8x8 digits"),
    (["--device", "foo"], "--device foo"),
    (["--checkpoint", "/nonexistent/dir/x.pt"], "is not a writable folder"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        rtrain.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_gets_a_message_not_a_download(tmp_path, capsys):
    assert rtrain.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "nope"),
                        "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py not found" in err and "does not download" in err
    assert rtrain.main(["--dataset", "cifar100", "--no-progress"]) == 2
    assert "needs --data-dir" in capsys.readouterr().err
    if importlib.util.find_spec("tonic") is None:
        assert rtrain.main(["--dataset", "dvs128", "--data-dir", str(tmp_path)]) == 2
        assert "tonic" in capsys.readouterr().err


def test_dvs128_through_tonic(tmp_path, monkeypatch):
    """The dvs128 path against a stand-in for tonic's API (DVSGesture, ToFrame)."""
    import types

    class ToFrame:
        def __init__(self, sensor_size, n_time_bins):
            self.shape = (n_time_bins, sensor_size[2], sensor_size[1], sensor_size[0])

    class DVSGesture:
        sensor_size = (128, 128, 2)
        complete = True  # as tonic: a check that fails calls download()
        filename, folder_name = "ibmGestureTrain.tar.gz", "ibmGestureTrain"

        def __init__(self, save_to, train, transform):
            assert save_to == str(tmp_path)
            if not self.complete:
                self.download()
            self.n, self.transform = (5 if train else 3), transform

        def download(self):
            raise AssertionError("downloaded")

        def __iter__(self):
            for i in range(self.n):
                yield torch.ones(self.transform.shape).numpy(), i % 11

    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(DVSGesture=DVSGesture),
                                 transforms=types.SimpleNamespace(ToFrame=ToFrame))
    monkeypatch.setitem(sys.modules, "tonic", fake)
    (tmp_path / "DVSGesture").mkdir()
    ds = rdata.load("dvs128", str(tmp_path), T=3)
    assert ds.train.x.shape == (5, 3, 2, 32, 32) and ds.num_classes == 11
    assert float(ds.train.x[0, 0, 0, 0, 0]) == 16.0  # events summed over 4x4 pixels
    x, y = next(rdata.Loader(ds, "train", 4, 0, True).epoch(0))
    assert x.shape == (3, 4, 2, 32, 32)
    DVSGesture.complete = False  # e.g. the archive deleted after extraction
    with pytest.raises(ValueError, match="ibmGestureTrain.tar.gz.*does not download"):
        rdata.load("dvs128", str(tmp_path), T=3)


def test_cifar_path_with_a_stand_in(tmp_path, monkeypatch):
    """CIFAR arrays as torchvision holds them -> normalised, augmented batches."""
    import numpy as np
    import torchvision

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert root == str(tmp_path) and download is False
            n = 6 if train else 4
            self.data = np.full((n, 32, 32, 3), 128, dtype=np.uint8)
            self.targets = list(range(n))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    (tmp_path / "cifar-10-batches-py").mkdir()
    ds = rdata.load("cifar10", str(tmp_path))
    assert ds.train.x.shape == (6, 3, 32, 32) and ds.train.x.dtype == torch.uint8
    x, y = next(rdata.Loader(ds, "train", 6, 0, True).epoch(0))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    mid = (128 / 255 - 0.4914) / 0.2470
    assert abs(float(x[:, 0, 12:20, 12:20].mean()) - mid) < 1e-5  # centre survives the crop
    assert (x == 0).any()  # zero padding shifted in by the random crop
    xt, _ = next(rdata.Loader(ds, "test", 4, 0, False).epoch(0))
    assert not (xt == 0).any()  # no augmentation at test time


def test_digits_data():
    ds = rdata.load("digits")
    assert ds.train.x.shape == (1437, 1, 8, 8) and ds.test.x.shape == (360, 1, 8, 8)
    assert float(ds.train.x.max()) == 1.0 and float(ds.train.x.min()) == 0.0
    seq = rdata.load("digits-seq")
    assert torch.equal(seq.test.x.view(-1, 1, 8, 8), ds.test.x)
    loader = rdata.Loader(seq, "train", 50, seed=3, shuffle=True)
    x, y = next(loader.epoch(0))
    assert x.shape == (64, 50, 1) and y.shape == (50,)
    x2, _ = next(loader.epoch(0))
    x3, _ = next(loader.epoch(1))
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of"):
        rdata.load("mnist")
    # two ranks split the padded order between them
    parts = [torch.cat([b for _, b in rdata.Loader(ds, "train", 64, 3, True, r, 2).epoch(0)])
             for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 719


def test_ranks_augment_independently():
    """Same data order on every rank, but each rank crops and flips with its own generator:
    with a shared one, the i-th sample of every rank's batch got the same crop and flip."""
    img = torch.arange(2 * 8 * 8, dtype=torch.uint8).view(1, 2, 8, 8).repeat(16, 1, 1, 1)
    split = rdata.Split(img, torch.arange(16))
    ds = rdata.Dataset("toy", split, split, 16, time_first=False, augment=True)
    batches = [list(rdata.Loader(ds, "train", 8, 5, True, r, 2).epoch(0)) for r in (0, 1)]
    (x0, y0), (x1, y1) = batches[0][0], batches[1][0]
    assert not torch.equal(x0, x1)  # identical images, so only the augmentation differs
    assert sorted(torch.cat([y0, y1]).tolist()) == list(range(16))  # one shared order
    again = next(rdata.Loader(ds, "train", 8, 5, True, 1, 2).epoch(0))[0]
    assert torch.equal(again, x1)  # still a function of (seed, epoch, rank)


@pytest.mark.parametrize("neuron, reversible", [("revlif", False), ("revlif", True),
                                                ("lif", True)])
def test_tiny_static_run_learns(neuron, reversible):
    out, lines = run(["--neuron", neuron, "--epochs", "3", "--lr", "1e-2"] + TINY
                     + (["--reversible"] if reversible else []))
    h = out["history"]
    assert len(h) == 3 and len(lines) == 4
    assert h[-1]["loss"] < h[0]["loss"]
    assert h[-1]["train_acc"] > h[0]["train_acc"]
    assert all(0 <= r["test_acc"] <= 1 for r in h)
    assert all(r["kept_bytes"] > 0 for r in h)
    assert "test acc" in lines[-1] and "kept for backward" in lines[-1]


def test_learns_the_digits():
    out, _ = run(["--reversible", "--train-size", "384", "--epochs", "3", "--width", "16",
                  "--T", "2", "--no-progress"])
    assert out["history"][-1]["test_acc"] > 0.6  # 10 classes: chance is 0.1


def test_pixel_sequence_run_and_memory():
    kept = {}
    for rev in (False, True):
        out, lines = run(["--dataset", "digits-seq", "--epochs", "1", "--train-size", "32",
                          "--test-size", "32", "--batch-size", "32", "--width", "16",
                          "--no-progress"]
                         + (["--reversible"] if rev else []))
        kept[rev] = out["history"][0]["kept_bytes"]
        assert "T=64" in lines[0]
    assert kept[True] < kept[False]


def test_amp_bf16_runs():
    out, _ = run(["--amp", "bf16", "--epochs", "1", "--reversible"] + TINY)
    assert torch.isfinite(torch.tensor(out["history"][0]["loss"]))


class _Crash(Exception):
    pass


def _crash_at_epoch(n):
    """A log function that kills the run when epoch n has trained, before its checkpoint."""
    def log(line):
        if line.startswith(f"epoch {n:3d}"):
            raise _Crash
    return log


def test_resume_matches_uninterrupted(tmp_path):
    base = ["--epochs", "3", "--reversible"] + TINY
    full, _ = run(base + ["--checkpoint", str(tmp_path / "a.pt")])
    ck = str(tmp_path / "b.pt")
    with pytest.raises(_Crash):
        run(base + ["--checkpoint", ck], log=_crash_at_epoch(2))
    resumed, lines = run(base + ["--resume", ck, "--checkpoint", ck])
    assert [r["epoch"] for r in resumed["history"]] == [2, 3]
    assert not os.path.exists(ck + ".tmp")  # written aside, then renamed over the old one
    assert torch.load(ck, weights_only=True)["args"]["world"] == 1
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for r, f in zip(resumed["history"], full["history"][1:]):
        assert dict(r, time=0) == dict(f, time=0)
    with pytest.raises(ValueError, match="other settings"):
        run(base + ["--resume", ck, "--neuron", "lif"])
    with pytest.raises(ValueError, match="no such checkpoint"):
        run(base + ["--resume", str(tmp_path / "missing.pt")])


def test_progress_bar():
    buf = io.StringIO()
    old, sys.stderr = sys.stderr, buf
    try:
        bar = rtrain.Progress(4, "epoch 1/1", True, width=8)
        for i in range(1, 5):
            bar.update(i, torch.tensor(0.5))
    finally:
        sys.stderr = old
    assert buf.getvalue().endswith("\repoch 1/1 [########] 4/4 loss 0.5000\n")


# -- DDP ---------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir, done):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    for rev in (False, True):
        # the second run: one test sample for two ranks (a rank with no test batch must not
        # leave the other waiting in DDP's buffer sync)
        args = rtrain.parse_args(["--epochs", "1", "--device", "cpu", "--seed", "5",
                                  "--train-size", "64"] + TINY[2:]
                                 + (["--reversible", "--test-size", "1"] if rev else []))
        out = rtrain.train(args, log=lambda s: None)
        torch.save(out["model"].state_dict(),  # weights and BatchNorm statistics
                   os.path.join(out_dir, f"rank{rank}_rev{int(rev)}.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # rank 0 hosts the rendezvous store: if it exits while another rank is still tearing down,
    # that rank's gloo/store threads can abort (seen as SIGABRT, "terminate called without an
    # active exception"); so nobody leaves before every rank has torn down
    done.wait(timeout=60)


def test_ddp_two_processes_end_with_identical_weights_and_statistics(tmp_path):
    done = mp.get_context("spawn").Barrier(2)
    ctx = mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), done), nprocs=2,
                   join=False)
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "DDP workers did not finish in 120 s"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    torch.manual_seed(5)
    init = dict(rtrain.build_model(rtrain.parse_args(TINY[2:] + ["--reversible"]), 10)
                .named_parameters())
    for rev in (0, 1):
        w0 = torch.load(tmp_path / f"rank0_rev{rev}.pt")
        w1 = torch.load(tmp_path / f"rank1_rev{rev}.pt")
        assert w0.keys() == w1.keys() and len(w0) > 0
        assert all(torch.equal(w0[k], w1[k]) for k in w0)
        assert any("running_mean" in k for k in w0)  # the test accuracy's model on each rank
        if rev:
            assert any(not torch.equal(w0[k], init[k]) for k in init)


@pytest.mark.slow
def test_cli_entry_point_and_torchrun(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-m", "revsnn.train", "--epochs", "1"] + TINY,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "epoch   1" in r.stdout
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "revsnn.train", "--epochs", "1",
                        "--reversible", "--device", "cpu"] + TINY,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "2 x cpu" in r.stdout


@pytest.mark.slow
def test_compile_runs():
    out, _ = run(["--compile", "--epochs", "1", "--reversible"] + TINY)
    assert torch.isfinite(torch.tensor(out["history"][0]["loss"]))


def _ids_dataset(n):
    """Samples whose label is their index."""
    ids = torch.arange(n)
    split = rdata.Split(ids.float().view(n, 1), ids)
    return rdata.Dataset("ids", split, split, n, time_first=False, augment=False)


def _ids(loader):
    return torch.cat([y for _, y in loader.epoch(0)]).tolist()


def test_loader_shards_train_padded_and_eval_once():
    ds = _ids_dataset(10)
    train = [rdata.Loader(ds, "train", 3, 1, True, r, 3) for r in range(3)]
    parts = [_ids(ld) for ld in train]
    assert [len(p) for p in parts] == [4, 4, 4]  # 10 padded to 12 by wrapping around
    assert set(sum(parts, [])) == set(range(10))
    assert all(len(ld) == 2 == len(list(ld.epoch(0))) for ld in train)
    evals = [_ids(rdata.Loader(ds, "test", 3, 1, False, r, 3)) for r in range(3)]
    assert evals == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]  # in order, each sample once


def test_crop_flip_flips_horizontally():
    x = torch.randn(16, 2, 5, 7)
    out = rdata._crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


@pytest.mark.parametrize("argv, message", [
    (["--train-size", "0"], "--train-size must be >= 1, got 0"),
    (["--test-size", "0"], "--test-size must be >= 1, got 0"),
    (["--seed", str(2 ** 31)], "--seed must be in [0, 2**31)"),
])
def test_bad_arguments_at_the_boundary(argv, message, capsys):
    with pytest.raises(SystemExit):
        rtrain.parse_args(argv)
    assert message in capsys.readouterr().err


def test_good_arguments_at_the_boundary():
    a = rtrain.parse_args(["--seed", str(2 ** 31 - 1), "--weight-decay", "0", "--train-size",
                           "1", "--test-size", "1"])
    assert (a.seed, a.weight_decay, a.train_size, a.test_size) == (2 ** 31 - 1, 0.0, 1, 1)


class _Recorder:
    """Stands in for torch.nn.functional in revsnn.train: records each training batch's loss,
    size and correct count."""

    def __init__(self):
        self.batches = []

    def cross_entropy(self, out, y):
        loss = nn.functional.cross_entropy(out, y)
        self.batches.append((float(loss.detach()), len(y), int((out.argmax(1) == y).sum())))
        return loss


def test_epoch_loss_and_accuracy_are_means_over_samples(monkeypatch):
    """80 samples in batches of 32, 32, 16: the epoch's loss is the sample-weighted mean of the
    batch losses, its accuracy correct / samples; the logged line shows them in percent."""
    rec = _Recorder()
    monkeypatch.setattr(rtrain, "F", rec)
    argv = ["--epochs", "1", "--train-size", "80"] + TINY[2:]
    out, lines = run(argv)
    h = out["history"][0]
    assert [n for _, n, _ in rec.batches] == [32, 32, 16]
    want = sum(loss * n for loss, n, _ in rec.batches) / 80
    assert h["loss"] == pytest.approx(want, rel=1e-12)
    assert h["train_acc"] == sum(c for _, _, c in rec.batches) / 80
    # the test accuracy: the model as trained, on the first 64 test samples
    ds = rtrain.rdata.load("digits")
    x, y = next(rtrain.rdata.Loader(ds, "test", 64, 0, False).epoch(0))
    with torch.no_grad():
        acc = float((out["model"].eval()(x).argmax(1) == y[:64]).double().mean())
    assert h["test_acc"] == acc
    m = re.search(r"loss (\S+)  train acc\s+(\S+)%  test acc\s+(\S+)%", lines[-1])
    assert m, lines[-1]
    assert float(m.group(1)) == pytest.approx(h["loss"], abs=1e-4)
    assert float(m.group(2)) == pytest.approx(100 * h["train_acc"], abs=0.051)
    assert float(m.group(3)) == pytest.approx(100 * acc, abs=0.051)


def test_two_ranks_report_the_summed_counts(monkeypatch):
    """The DDP path with the collective replaced: what an epoch reports (loss, train and test
    accuracy) comes from the counts summed over the ranks, each divided by the right count."""
    reduced = []

    def all_reduce(t):
        reduced.append(t.numel())
        # as if the other rank's counts made these totals: loss sum, correct, samples
        # (training) and correct, samples (evaluation)
        t.copy_(torch.tensor([30.0, 12.0, 40.0] if t.numel() == 3 else [9.0, 36.0],
                             dtype=t.dtype))
    monkeypatch.setattr(rtrain, "_setup_distributed", lambda device: (0, 2, torch.device("cpu")))
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                        lambda m, device_ids=None: m)
    monkeypatch.setattr(rtrain.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(rtrain.dist, "all_reduce", all_reduce)
    sent = []
    monkeypatch.setattr(rtrain.dist, "broadcast", lambda t, src: sent.append((t, src)))
    out, lines = run(["--epochs", "1"] + TINY)
    h = out["history"][0]
    assert sorted(reduced) == [2, 3]
    buffers = list(out["model"].buffers())  # rank 0's BatchNorm statistics, evaluated by all
    assert len(sent) == len(buffers) > 0 and all(t is b and src == 0
                                                 for (t, src), b in zip(sent, buffers))
    assert (h["loss"], h["train_acc"], h["test_acc"]) == (0.75, 0.3, 0.25)
    assert "2 x cpu" in lines[0]


def test_kept_bytes_is_the_largest_step_without_the_parameters():
    """80 samples: batches of 32, 32 and 16. The reported figure is the largest step's (a full
    batch), parameters excluded, as counted around the model's forward and the loss."""
    out, _ = run(["--epochs", "1", "--train-size", "80"] + TINY[2:])
    args = rtrain.parse_args(["--epochs", "1"] + TINY[2:])
    torch.manual_seed(0)
    model = rtrain.build_model(args, 10).train()
    x, y = torch.rand(32, 1, 8, 8), torch.arange(32) % 10
    params = {storage_id(p) for p in model.parameters()}
    with KeptBytes() as kb:
        nn.functional.cross_entropy(model(x).float(), y)
    assert out["history"][0]["kept_bytes"] == kb.bytes(exclude=params) > 0


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_unless_no_progress(monkeypatch):
    argv = ["--epochs", "1"] + [a for a in TINY if a != "--no-progress"]
    for flag, drawn in (([], True), (["--no-progress"], False)):
        err = _Tty()
        monkeypatch.setattr(sys, "stderr", err)
        run(argv + flag)
        monkeypatch.undo()
        text = err.getvalue()
        if drawn:
            assert "\repoch 1/1 [" in text and re.search(r"\] 3/3 loss \d\.\d{4}\n$", text), text
        else:
            assert text == ""


def test_amp_dtype_in_training_and_evaluation_and_no_scaler_for_bf16(monkeypatch):
    seen, scalers = set(), []
    build = rtrain.build_model

    def build_and_watch(args, n):
        model = build(args, n)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o: seen.add((m.training, o.dtype)))
        return model

    class Scaler(torch.amp.GradScaler):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            scalers.append(self)
    monkeypatch.setattr(rtrain, "build_model", build_and_watch)
    monkeypatch.setattr(torch.amp, "GradScaler", Scaler)
    run(["--amp", "bf16", "--epochs", "1", "--reversible"] + TINY)
    assert seen == {(True, torch.bfloat16), (False, torch.bfloat16)}
    assert len(scalers) == 1 and not scalers[0].is_enabled()


def test_cosine_schedule_ends_at_zero(tmp_path):
    ck = tmp_path / "c.pt"
    run(["--epochs", "2", "--checkpoint", str(ck)] + TINY)
    state = torch.load(ck, weights_only=True)
    assert state["scheduler"]["last_epoch"] == 2 and state["epoch"] == 2
    assert abs(state["optimizer"]["param_groups"][0]["lr"]) < 1e-12


def test_resume_restores_rng_and_refuses_other_batch_or_lr(tmp_path):
    """Resuming a finished run trains no epoch: the random state left is the checkpoint's
    (torch and Python). A checkpoint is bound to its batch size and learning rate."""
    ck = str(tmp_path / "c.pt")
    base = ["--epochs", "1"] + TINY
    run(base + ["--checkpoint", ck])
    state = torch.load(ck, weights_only=False)
    torch.manual_seed(999)  # a random state the run itself never reaches
    random.seed(999)
    torch.rand(3)
    state["rng"]["torch"], state["rng"]["python"] = torch.get_rng_state(), random.getstate()
    torch.save(state, ck)
    torch.manual_seed(123)
    random.seed(123)
    out, _ = run(base + ["--resume", ck])
    assert out["history"] == []
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    assert random.getstate() == state["rng"]["python"]
    for other in (["--batch-size", "16"], ["--lr", "1e-3"]):
        with pytest.raises(ValueError, match="other settings"):
            run(base + other + ["--resume", ck])


def test_resume_restores_the_gradient_scaler(tmp_path, monkeypatch):
    scalers = []

    class Scaler(torch.amp.GradScaler):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            scalers.append(self)
    monkeypatch.setattr(torch.amp, "GradScaler", Scaler)
    ck = str(tmp_path / "c.pt")
    base = ["--epochs", "1", "--amp", "fp16"] + TINY
    run(base + ["--checkpoint", ck])
    assert scalers[-1].is_enabled()
    state = torch.load(ck, weights_only=False)
    state["scaler"]["scale"], state["scaler"]["_growth_tracker"] = 1024.0, 7
    torch.save(state, ck)
    run(base + ["--resume", ck])
    assert scalers[-1].state_dict()["scale"] == 1024.0
    assert scalers[-1].state_dict()["_growth_tracker"] == 7
