"""Which path runs an op: the Triton kernels (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``) or the torch twins (CPU tensors)."""
from __future__ import annotations

import importlib
import os

import torch

from .._config import BACKENDS

BLOCK = 256
"""Neurons (pairs, for the reversible node) per Triton program."""
NUM_WARPS = 4
"""Warps per program. The launchers read both at call time: bench/sweep.py varies them."""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(x: torch.Tensor, backend: str) -> bool:
    """True if the Triton kernels should run on x; raises for an impossible request."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if x.is_cuda:
        return True
    if backend == "triton":
        if x.device.type == "cpu" and interpreting():
            return True
        raise ValueError(f"backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 set "
                         f"before triton is imported, for CPU tensors); got device {x.device}")
    if x.device.type != "cpu":
        raise ValueError(f"unsupported device {x.device}: revsnn runs on CUDA and CPU")
    return False


def kernels_module(name: str):
    """revsnn.kernels.<name>, imported on first use so that `import revsnn` needs no triton."""
    return importlib.import_module(f"revsnn.kernels.{name}")


def launch_options() -> dict:
    """The block size and warps every kernel launch uses (read now, not at import)."""
    return dict(BLOCK=BLOCK, num_warps=NUM_WARPS)


def grid_1d(n: int) -> tuple[int]:
    """One program per BLOCK elements."""
    return (-(-n // BLOCK),)
