"""Test set-up. Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; the
variable must be set before triton is imported, hence here and not in a fixture."""
import os

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class SeenOps(TorchDispatchMode):
    """A dispatch mode that changes nothing and records the ops it sees: ``ops`` (names) and
    ``calls`` (in order: name, and the element count of the output if it is one tensor)."""

    def __init__(self):
        super().__init__()
        self.ops, self.calls = set(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.name())
        self.calls.append((func.name(), out.numel() if isinstance(out, torch.Tensor) else None))
        return out

    def filled_before(self, op: str) -> list:
        """Element counts of the tensors zero-filled before the first call of ``op``."""
        names = [n for n, _ in self.calls]
        return [k for n, k in self.calls[:names.index(op)]
                if n in ("aten::zeros", "aten::new_zeros", "aten::zeros_like", "aten::zero_",
                         "aten::fill_")]


def assert_same_through_dispatcher(run, ops) -> None:
    """``run()`` (returning tensors) gives the same bits as an eager call, which runs the ops'
    implementations directly, and under a dispatch mode, which sends them through torch.ops
    (revsnn/ops/_dispatch.py); the mode must see every op in ``ops``."""
    plain = run()
    with SeenOps() as seen:
        dispatched = run()
    assert set(ops) <= seen.ops
    for a, b in zip(plain, dispatched, strict=True):
        assert torch.equal(a, b)


def dyadic(shape, seed, bits=4, lo=-1.0, hi=1.0):
    """Uniform values on a 2**-bits grid in [lo, hi] (CPU): sums of few of them stay exact, so
    two orders of the same arithmetic (or fixed and real-valued maths) give the same numbers."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=g) * (hi - lo) + lo
    return torch.round(u * 2 ** bits) / 2 ** bits


def assert_close_rel(a, b, rel=1e-5):
    """max |a - b| <= rel * max |b|: a relative bound that tiny gradients cannot dodge."""
    err = (a.double() - b.double()).abs().max().item()
    assert err <= rel * b.double().abs().max().item() + 1e-30, (err, b.abs().max().item())


def backends():
    """The paths every kernel test runs: the torch twin, and Triton where it can run."""
    out = ["torch"]
    if HAS_CUDA or INTERPRET:
        out.append("triton")
    return out


@pytest.fixture(params=backends())
def backend(request):
    return request.param


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def count_launches(monkeypatch):
    """Counts launches of every Triton kernel in revsnn.kernels.<module>: call it with the
    module name, get a dict {kernel name: launches} that fills as kernels run."""
    import importlib

    def install(module):
        mod = importlib.import_module(f"revsnn.kernels.{module}")
        counts = {}
        for name in dir(mod):
            k = getattr(mod, name)
            if name.endswith("_kernel") and hasattr(k, "run"):
                counts[name] = 0

                def run(*a, _orig=k.run, _name=name, **kw):
                    counts[_name] += 1
                    return _orig(*a, **kw)
                monkeypatch.setattr(k, "run", run)
        return counts
    return install
