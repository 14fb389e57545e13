"""Datasets for ``python -m revsnn.train``, held in memory as tensors, and a deterministic loader.

* ``digits``: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes; shipped inside
  the scikit-learn package, so it works offline), static images ``[B, 1, 8, 8]`` that the model
  repeats ``T`` times. A fixed split (seed 0, independent of ``--seed``): 1,437 train, 360 test.
* ``digits-seq``: the same images as pixel sequences: ``T = 64`` steps, one pixel per step in
  row-major order, ``[64, B, 1]``.
* ``cifar10`` / ``cifar100``: torchvision's CIFAR in ``--data-dir`` (never downloaded here),
  normalised, random crop (padding 4) and horizontal flip for training.
* ``dvs128``: DVS128 Gesture through ``tonic`` (if installed) in ``--data-dir`` as
  ``tonic.datasets.DVSGesture(DIR)`` leaves it (archives and extracted folders): events binned
  into ``T`` frames, 2 polarities, summed down to 32x32, ``[T, B, 2, 32, 32]``.

The loader draws each epoch's order from a generator seeded with ``(seed, epoch)`` alone, so a
run resumed at an epoch boundary sees the same data in the same order as an uninterrupted one;
with ``world > 1`` each rank takes every ``world``-th sample of that order, and draws its
augmentation from its own generator, seeded with ``(seed, epoch, rank)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

DATASETS = ("digits", "digits-seq", "cifar10", "cifar100", "dvs128")
DIGITS_SPLIT_SEED = 0
DIGITS_TEST = 360


@dataclass
class Split:
    """Samples ``x`` (``[N, *]``, static, or ``[N, T, *]`` for event frames) and labels ``[N]``."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass
class Dataset:
    """A train/test pair and how to turn a batch of samples into a model input."""

    name: str
    train: Split
    test: Split
    num_classes: int
    time_first: bool   # samples carry their own time axis (dim 1): batches become [T, B, *]
    augment: bool      # CIFAR-style random crop + flip on training batches
    mean: Optional[torch.Tensor] = None
    std: Optional[torch.Tensor] = None

    def prepare(self, x: torch.Tensor, train: bool, gen: torch.Generator) -> torch.Tensor:
        """A batch of stored samples -> the model input (float, time-first if sequential)."""
        x = x.float()
        if self.mean is not None:
            x = (x / 255.0 - self.mean.to(x.device)) / self.std.to(x.device)
        if train and self.augment:
            x = _crop_flip(x, gen)
        if self.time_first:
            x = x.transpose(0, 1).contiguous()
        return x


def _crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of ``[B, C, H, W]``."""
    B, _, H, W = x.shape
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen).tolist()
    flip = torch.rand(B, generator=gen) < 0.5
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    out = torch.stack([xp[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])
    return torch.where(flip.to(x.device)[:, None, None, None], out.flip(-1), out)


def _digits(sequence: bool) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ValueError("the digits dataset ships with scikit-learn: pip install "
                         "scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    test, train = perm[:DIGITS_TEST], perm[DIGITS_TEST:]
    # pixel sequence: [N, 64 steps, 1 feature]; static: [N, 1, 8, 8]
    x = x.view(-1, 64, 1) if sequence else x.view(-1, 1, 8, 8)
    return Dataset("digits-seq" if sequence else "digits", Split(x[train], y[train]),
                   Split(x[test], y[test]), 10, time_first=sequence, augment=False)


def _need_dir(data_dir: Optional[str], name: str, sub: str, hint: str) -> str:
    if not data_dir:
        raise ValueError(f"--dataset {name} needs --data-dir DIR holding the data ({hint})")
    if not os.path.isdir(os.path.join(data_dir, sub)):
        raise ValueError(f"--dataset {name}: {os.path.join(data_dir, sub)} not found. revsnn "
                         f"does not download data sets; {hint}")
    return data_dir


def _cifar(name: str, data_dir: Optional[str]) -> Dataset:
    cls_name = "CIFAR10" if name == "cifar10" else "CIFAR100"
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    # The folder first: a missing data set is reported even where torchvision cannot import.
    root = _need_dir(data_dir, name, sub, f"fetch it once with torchvision.datasets."
                     f"{cls_name}(DIR, download=True)")
    import torchvision
    cls = getattr(torchvision.datasets, cls_name)
    splits = []
    for train in (True, False):
        ds = cls(root, train=train, download=False)
        x = torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, 32, 32]
        splits.append(Split(x, torch.as_tensor(ds.targets, dtype=torch.long)))
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    return Dataset(name, splits[0], splits[1], 10 if name == "cifar10" else 100,
                   time_first=False, augment=True, mean=mean, std=std)


def _dvs128(data_dir: Optional[str], T: int) -> Dataset:
    try:
        import tonic
    except ImportError as e:
        raise ValueError("--dataset dvs128 reads DVS128 Gesture through the tonic package, "
                         "which is not installed (pip install tonic)") from e
    root = _need_dir(data_dir, "dvs128", "DVSGesture",
                     "fetch it once with tonic.datasets.DVSGesture(DIR)")

    class DVSGesture(tonic.datasets.DVSGesture):  # tonic names its folder after the class
        def download(self) -> None:
            # tonic downloads whenever its check fails, and the check also wants the archive
            # kept beside the extracted files
            raise ValueError(
                f"--dataset dvs128: tonic found no complete DVS128 Gesture in "
                f"{os.path.join(root, 'DVSGesture')} (it needs {self.filename} and the "
                f"extracted {self.folder_name}/). revsnn does not download data sets; fetch "
                f"it once with tonic.datasets.DVSGesture(DIR)")

    size = tonic.datasets.DVSGesture.sensor_size
    to_frames = tonic.transforms.ToFrame(sensor_size=size, n_time_bins=T)
    splits = []
    for train in (True, False):
        ds = DVSGesture(save_to=root, train=train, transform=to_frames)
        xs, ys = [], []
        for frames, label in ds:
            f = torch.as_tensor(frames, dtype=torch.float32)  # [T, 2, 128, 128]
            xs.append(torch.nn.functional.avg_pool2d(f, 4) * 16)  # event counts per 4x4
            ys.append(int(label))
        splits.append(Split(torch.stack(xs), torch.tensor(ys, dtype=torch.long)))
    return Dataset("dvs128", splits[0], splits[1], 11, time_first=True, augment=False)


def load(name: str, data_dir: Optional[str] = None, T: int = 16) -> Dataset:
    """Load a dataset by name (see the module docstring); ``T`` only matters for dvs128."""
    if name == "digits":
        return _digits(False)
    if name == "digits-seq":
        return _digits(True)
    if name in ("cifar10", "cifar100"):
        return _cifar(name, data_dir)
    if name == "dvs128":
        return _dvs128(data_dir, T)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


class Loader:
    """Deterministic batches of one split, sharded over ``world`` ranks.

    In training every rank sees ``len(self)`` batches per epoch (the order is padded by wrapping
    around so that the ranks stay in step, as DistributedSampler does); evaluation shards
    without padding, so that summed counts cover each sample once.
    """

    def __init__(self, data: Dataset, split: str, batch_size: int, seed: int,
                 shuffle: bool, rank: int = 0, world: int = 1,
                 device: torch.device = torch.device("cpu")) -> None:
        self.data, self.split = data, getattr(data, split)
        self.train = split == "train"
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world, self.device = rank, world, device
        n = len(self.split.y)
        self.per_rank = -(-n // world)

    def __len__(self) -> int:
        return -(-self.per_rank // self.batch_size)

    def generator(self, epoch: int, rank: Optional[int] = None) -> torch.Generator:
        """The epoch's data-order generator, a function of (seed, epoch) only; with ``rank``,
        that rank's augmentation generator (one stream per rank: with a shared one, the i-th
        sample of every rank's batch would be cropped and flipped alike)."""
        key = self.seed * 1_000_003 + epoch
        if rank is not None:
            key = key * 1_009 + 1 + rank
        return torch.Generator().manual_seed(key)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(input, labels) batches of one epoch, on ``device``."""
        n = len(self.split.y)
        order = (torch.randperm(n, generator=self.generator(epoch)) if self.shuffle
                 else torch.arange(n))
        aug = self.generator(epoch, self.rank)
        total = self.per_rank * self.world
        if self.train and total > n:
            order = torch.cat([order, order[:total - n]])
        mine = order[self.rank::self.world]
        for i in range(0, len(mine), self.batch_size):
            idx = mine[i:i + self.batch_size]
            x = self.data.prepare(self.split.x[idx], self.train, aug)
            yield x.to(self.device, non_blocking=True), self.split.y[idx].to(self.device)
