"""Train a spiking network: ``python -m revsnn.train`` (see docs/train.md).

With no arguments: the small conv net with reversible LIF nodes on scikit-learn's digits
(static images, T = 4), a couple of minutes on two CPU cores. Each epoch prints the training
loss and accuracy, the test accuracy, the time, and the memory: the peak allocated on a GPU,
and on any device the bytes the forward kept for the backward (saved tensors, parameters
excluded, largest step of the epoch).

Multi-GPU / multi-node: ``torchrun --nproc_per_node=N -m revsnn.train ...`` (DDP; NCCL on CUDA,
gloo on CPU). Checkpoints (``--checkpoint``) are written after every epoch; ``--resume`` restores
model, optimiser, scheduler, gradient scaler, epoch and random state, and the data order is a
function of (seed, epoch), so a resumed run repeats an uninterrupted one exactly (tested on the
CPU; on a GPU as far as every kernel the model runs is deterministic: cuDNN is set so).
"""
from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import time
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import data as rdata
from . import models
from .memory import KeptBytes, storage_id

# dataset -> (default model, default T)
_DEFAULTS = {
    "digits": ("convnet8", 4),
    "digits-seq": ("mlp", 64),
    "cifar10": ("resnet19", 4),
    "cifar100": ("resnet19", 4),
    "dvs128": ("vgg11", 16),
}
_WIDTH_ARG = {"convnet8": "width", "mlp": "hidden", "vgg11": "width", "vgg16": "width"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m revsnn.train",
        description="Train a spiking network (reversible LIF nodes and reversible blocks).")
    p.add_argument("--dataset", default="digits", choices=rdata.DATASETS,
                   help="digits: sklearn's 8x8 digits, static; digits-seq: the same as "
                        "64-step pixel sequences; cifar10/cifar100/dvs128 need --data-dir")
    p.add_argument("--data-dir", default=None, help="folder holding cifar/dvs128 data "
                                                   "(never downloaded)")
    p.add_argument("--model", default=None, choices=sorted(models.MODELS),
                   help="default: convnet8 (digits), mlp (digits-seq), resnet19 (cifar), "
                        "vgg11 (dvs128)")
    p.add_argument("--neuron", default="revlif", choices=models.NEURONS)
    p.add_argument("--reversible", action="store_true",
                   help="reversible blocks (RevSequential) wherever the shapes allow")
    p.add_argument("--width", type=int, default=None,
                   help="channels (convnet8, vgg) or hidden units (mlp)")
    p.add_argument("--T", type=int, default=None,
                   help="time steps (default: 4 for images, 64 for digits-seq, 16 for dvs128)")
    p.add_argument("--tau", type=float, default=2.0, help="membrane time constant")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-3, help="AdamW, cosine schedule")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--amp", default=None, choices=("bf16", "fp16"), help="autocast dtype")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (little gain with --reversible: its chains "
                   "run eagerly)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--train-size", type=int, default=None,
                   help="use only the first N training samples (quick runs)")
    p.add_argument("--test-size", type=int, default=None,
                   help="evaluate on the first N test samples only (quick runs)")
    p.add_argument("--checkpoint", default=None, help="write a checkpoint here every epoch")
    p.add_argument("--resume", default=None, help="continue from this checkpoint")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is drawn only when stderr is a terminal)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check the command line; bad values exit with a message naming the option."""
    p = parser()
    args = p.parse_args(argv)
    model, T = _DEFAULTS[args.dataset]
    args.model = args.model or model
    if args.T is None:
        args.T = T
    for name in ("T", "batch_size", "epochs"):
        v = getattr(args, name)
        if v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.dataset == "digits-seq" and args.T != 64:
        p.error(f"--dataset digits-seq is a 64-step pixel sequence: --T must be 64, got {args.T}")
    if args.dataset == "digits-seq" and args.model != "mlp":
        p.error("--dataset digits-seq feeds one pixel per step: use --model mlp")
    if args.dataset.startswith("digits") and args.model not in ("convnet8", "mlp"):
        p.error(f"--model {args.model} is sized for 32x32 images; for digits use convnet8 "
                f"or mlp")
    if args.width is not None and args.model not in _WIDTH_ARG:
        p.error(f"--width is not an option of --model {args.model}")
    for name in ("train_size", "test_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not args.tau > 1:
        p.error(f"--tau must be > 1, got {args.tau}")
    if not args.lr > 0 or not args.weight_decay >= 0:
        p.error(f"--lr must be > 0 and --weight-decay >= 0, got {args.lr} and "
                f"{args.weight_decay}")
    if not 0 <= args.seed < 2 ** 31:
        p.error(f"--seed must be in [0, 2**31), got {args.seed}")
    if not args.dataset.startswith("digits") and args.model in ("convnet8", "mlp"):
        p.error(f"--model {args.model} is sized for the 8x8 digits; for --dataset "
                f"{args.dataset} use vgg11, vgg16, resnet18 or resnet19")
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except RuntimeError as e:
            p.error(f"--device {args.device}: {e}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            p.error(f"--device {args.device}: no CUDA device here")
    if args.checkpoint is not None:
        folder = os.path.dirname(os.path.abspath(args.checkpoint))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            p.error(f"--checkpoint {args.checkpoint}: {folder} is not a writable folder")
    try:  # the builders name bad widths (odd channels for revlif); meta: no memory, no time
        with torch.device("meta"):
            build_model(args, 10)
    except ValueError as e:
        p.error(str(e))
    return args


def build_model(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    kw = dict(num_classes=num_classes, neuron=args.neuron, reversible=args.reversible,
              T=args.T, neuron_kwargs=dict(tau=args.tau))
    if args.model == "mlp" and args.dataset == "digits-seq":
        kw.update(in_features=1, positions=64)
    elif args.model == "mlp":
        kw["in_features"] = 64
    else:
        kw["in_channels"] = {"digits": 1, "dvs128": 2}.get(args.dataset, 3)
    if args.width is not None:
        kw[_WIDTH_ARG[args.model]] = args.width
    return models.MODELS[args.model](**kw)


# -- helpers -----------------------------------------------------------------------------------
class Progress:
    """A plain text progress bar on stderr."""

    def __init__(self, total: int, label: str, enabled: bool, width: int = 30) -> None:
        self.total, self.label, self.enabled, self.width = total, label, enabled, width
        self.last = 0.0

    def update(self, i: int, loss: torch.Tensor) -> None:
        now = time.monotonic()
        if not self.enabled or (i < self.total and now - self.last < 0.2):
            return
        self.last = now
        n = self.width * i // max(self.total, 1)
        sys.stderr.write(f"\r{self.label} [{'#' * n}{'.' * (self.width - n)}] "
                         f"{i}/{self.total} loss {loss.item():.4f}")
        if i >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:.2f} MiB"


def _rng_state(device: torch.device) -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


_RESUME_KEYS = ("dataset", "model", "neuron", "reversible", "width", "T", "tau", "seed",
                "batch_size", "train_size", "test_size", "amp", "epochs", "lr",
                "weight_decay", "world")
"""What a resumed run must share with the checkpoint's (``world``: the number of processes,
which decides the data shards)."""


def _setup_distributed(device: Optional[str]) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(want)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def train(args: argparse.Namespace, log=functools.partial(print, flush=True)) -> dict:
    """Run the training described by ``args`` (see :func:`parse_args`).

    Returns ``{"model": the trained model (unwrapped), "history": [per-epoch dict]}``.
    """
    rank, world, device = _setup_distributed(args.device)
    main = rank == 0
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    ds = rdata.load(args.dataset, args.data_dir, args.T)
    if args.train_size is not None:
        ds.train = rdata.Split(ds.train.x[:args.train_size], ds.train.y[:args.train_size])
    if args.test_size is not None:
        ds.test = rdata.Split(ds.test.x[:args.test_size], ds.test.y[:args.test_size])
    if args.model == "mlp" and args.dataset == "digits":  # the MLP takes [B, 64]
        ds.train.x, ds.test.x = ds.train.x.flatten(1), ds.test.x.flatten(1)
    model = build_model(args, ds.num_classes).to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net, dynamic=False)  # a graph per batch shape (train, eval, last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    start = 0
    if args.resume:
        if not os.path.isfile(args.resume):
            raise ValueError(f"--resume {args.resume}: no such checkpoint file")
        ck = torch.load(args.resume, map_location=device, weights_only=True)
        now = dict(vars(args), world=world)
        diff = {k: (ck["args"].get(k, 1 if k == "world" else None), now[k])
                for k in _RESUME_KEYS if ck["args"].get(k, 1 if k == "world" else None) != now[k]}
        if diff:
            raise ValueError(f"--resume {args.resume}: the checkpoint was made with other "
                             f"settings (checkpoint, now): {diff}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"], device)
        start = ck["epoch"]

    train_loader = rdata.Loader(ds, "train", args.batch_size, args.seed, True, rank, world,
                                device)
    test_loader = rdata.Loader(ds, "test", max(args.batch_size, 256), args.seed, False, rank,
                               world, device)
    if main:
        log(f"revsnn.train: {args.dataset} ({len(ds.train.y)} train, {len(ds.test.y)} test), "
            f"model {args.model} neuron={args.neuron} reversible={args.reversible} T={args.T}, "
            f"{models.count_parameters(model):,} parameters, {world} x {device}"
            + (f", amp {args.amp}" if args.amp else ""))
    history = []
    params = {storage_id(p) for p in model.parameters()}
    for epoch in range(start, args.epochs):
        net.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        bar = Progress(len(train_loader), f"epoch {epoch + 1}/{args.epochs}",
                       main and not args.no_progress and sys.stderr.isatty())
        tot = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        kept = 0
        for i, (x, y) in enumerate(train_loader.epoch(epoch)):
            with KeptBytes() as kb, torch.autocast(device.type, dtype=amp_dtype,
                                                   enabled=amp_dtype is not None):
                out = net(x)
                loss = F.cross_entropy(out.float(), y)
            kept = max(kept, kb.bytes(exclude=params))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            with torch.no_grad():  # on the device: no host sync per step
                tot[0] += loss.detach().double() * len(y)
                tot[1] += (out.argmax(1) == y).sum()
                tot[2] += len(y)
            bar.update(i + 1, loss)
        sched.step()
        if world > 1:
            # each rank's BatchNorm statistics moved with its own batches; rank 0's are those
            # the checkpoint keeps and DDP's next forward hands to every rank: evaluate them
            for b in model.buffers():
                dist.broadcast(b, 0)
        # the unwrapped model under DDP: DDP's forward syncs buffers with the other ranks, and a
        # rank with no test batch would not take part (a hang)
        acc = evaluate(model if world > 1 else net, test_loader, device, amp_dtype)
        if world > 1:
            dist.all_reduce(tot)
        elapsed = time.perf_counter() - t0
        rec = dict(epoch=epoch + 1, loss=float(tot[0] / tot[2]),
                   train_acc=float(tot[1] / tot[2]), test_acc=acc, time=elapsed,
                   kept_bytes=kept)
        mem = f"kept for backward {_mib(kept)}"
        if device.type == "cuda":
            rec["peak_bytes"] = torch.cuda.max_memory_allocated(device)
            mem = f"peak {_mib(rec['peak_bytes'])}, " + mem
        history.append(rec)
        if main:
            log(f"epoch {epoch + 1:3d}  loss {rec['loss']:.4f}  train acc "
                f"{100 * rec['train_acc']:5.1f}%  test acc {100 * acc:5.1f}%  "
                f"{elapsed:6.1f} s  {mem}")
        if args.checkpoint and main:
            # written aside, then renamed: a save cut short leaves the last checkpoint whole
            tmp = f"{args.checkpoint}.tmp"
            torch.save(dict(model=model.state_dict(), optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), scaler=scaler.state_dict(),
                            epoch=epoch + 1, rng=_rng_state(device),
                            args=dict(vars(args), world=world)), tmp)
            os.replace(tmp, args.checkpoint)
    return dict(model=model, history=history)


@torch.no_grad()
def evaluate(net: torch.nn.Module, loader: "rdata.Loader", device: torch.device,
             amp_dtype: Optional[torch.dtype]) -> float:
    """Accuracy over the loader's split (summed over ranks)."""
    net.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in loader.epoch(0):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = net(x)
        counts[0] += (out.argmax(1) == y).sum()
        counts[1] += len(y)
    if dist.is_initialized():
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except ValueError as e:  # data not found, incompatible checkpoint
        print(f"revsnn.train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
