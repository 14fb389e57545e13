"""Validation, fixed-point constants and tensor layout, shared by every path of the reversible node.

Nothing here touches tensor elements: it turns user arguments into the small set of integers and
floats that the Triton kernels and their torch twin consume, and checks shapes, dtypes and devices.

Fixed-point scheme (see README, "Exactness"):

* Membrane potentials are int32 with ``F = 18`` fractional bits; intermediates are int64.
* The output ``y = S + alpha*x`` lives on a grid of ``2**-FY`` with ``|y| <= 2**(P - FY)``, where
  ``P`` is the significand width of the output dtype, so every ``y`` is exactly representable.
* ``x`` is quantized on entry to ``2**-(FY + a)`` with ``alpha = ±2**a``, so that ``alpha*x`` lies
  on the output grid; in integer units ``q`` the range is ``|q| <= 2**P - 2**FY``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

F_BITS = 18
"""Fractional bits of the int32 membrane potential."""
V_MAX = (1 << 30) - 1
"""Largest |potential| (integer units) a healthy state may hold; beyond is flagged as overflow."""
POISON_LIMIT = -(1 << 30)
"""Final-state words below this are poison markers ``INT32_MIN + code`` (see ``ERROR_CODES``)."""
ERROR_CODES = {
    1: "x held NaN/Inf or a value outside the representable input range",
    2: "a membrane potential overflowed the fixed-point range",
    4: "the initial state held NaN/Inf or a value outside the fixed-point range",
    8: "y held a value off the output grid (not produced by rev_lif with these settings)",
}

# dtype -> (significand bits P, output grid fraction bits FY). float64 shares float32's grid:
# the int32 state, not the output dtype, is the limit there.
_GRIDS = {
    torch.float32: (24, 16),
    torch.float64: (24, 16),
    torch.float16: (11, 8),
    torch.bfloat16: (8, 5),
}
SURROGATES = {"sigmoid": (0, 4.0), "atan": (1, 2.0)}
BACKWARDS = ("fused", "recompute")
BACKENDS = ("auto", "triton", "torch")


def _pow2_exponent(value: float, name: str, lo: int, hi: int) -> int:
    """Return e with |value| == 2**e, lo <= e <= hi, or raise ValueError naming the argument."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    mag = abs(float(value))
    if mag == 0 or not math.isfinite(mag):
        raise ValueError(f"{name} must be a finite non-zero power of two, got {value}")
    mant, exp = math.frexp(mag)
    if mant != 0.5 or not lo <= exp - 1 <= hi:
        raise ValueError(
            f"{name} must be ± a power of two with magnitude in [2**{lo}, 2**{hi}], got {value}")
    return exp - 1


@dataclass(frozen=True)
class RevLIFConfig:
    """Validated node parameters and the fixed-point constants derived from them."""

    tau: float
    decay_input: bool
    v_threshold: float
    v_reset: Optional[float]
    alpha: float
    beta1: float
    beta2: float
    surrogate: str
    surrogate_alpha: float
    detach_reset: bool

    @staticmethod
    def build(tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
              v_reset: Optional[float] = 0.0, alpha: float = 1.0, beta1: float = -0.5,
              beta2: float = 0.5, surrogate: str = "sigmoid",
              surrogate_alpha: Optional[float] = None, detach_reset: bool = False,
              ) -> "RevLIFConfig":
        if not isinstance(tau, (int, float)) or isinstance(tau, bool):
            raise TypeError(f"tau must be a float, got {type(tau).__name__}")
        if math.isnan(tau) or tau <= 1:
            raise ValueError(f"tau must be > 1 (math.inf for an IF neuron), got {tau}")
        for name, v in (("v_threshold", v_threshold), ("v_reset", v_reset)):
            if v is None and name == "v_reset":
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite float, got {v!r}")
            if abs(v) > 64:
                raise ValueError(f"{name} must satisfy |{name}| <= 64, got {v}")
        _pow2_exponent(alpha, "alpha", -2, 2)
        _pow2_exponent(beta1, "beta1", -8, 0)
        _pow2_exponent(beta2, "beta2", -8, 0)
        if not (beta1 < 0 < beta2):
            raise ValueError(
                f"beta1 must be negative and beta2 positive (an excitatory-inhibitory pair whose "
                f"linearised update contracts for every tau); got beta1={beta1}, beta2={beta2}. "
                f"With both positive the potentials diverge for tau >= 4.")
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")
        if surrogate_alpha is None:
            surrogate_alpha = SURROGATES[surrogate][1]
        if not isinstance(surrogate_alpha, (int, float)) or not surrogate_alpha > 0:
            raise ValueError(f"surrogate_alpha must be a positive float, got {surrogate_alpha!r}")
        return RevLIFConfig(float(tau), bool(decay_input), float(v_threshold),
                            None if v_reset is None else float(v_reset), float(alpha),
                            float(beta1), float(beta2), surrogate, float(surrogate_alpha),
                            bool(detach_reset))

    # -- fixed-point constants (integer units of 2**-F_BITS) -------------------------------------
    @property
    def is_if(self) -> bool:
        return math.isinf(self.tau)

    @property
    def hard_reset(self) -> bool:
        return self.v_reset is not None

    @property
    def c_tau(self) -> int:
        """round(2**F / tau): the leak (and input scale with decay_input) in fixed point."""
        return 0 if self.is_if else int(round(2 ** F_BITS / self.tau))

    @property
    def int_decay_input(self) -> bool:
        """The IF neuron integrates ``V + I`` whatever ``decay_input`` says."""
        return self.decay_input and not self.is_if

    @property
    def vth_i(self) -> int:
        return int(round(self.v_threshold * 2 ** F_BITS))

    @property
    def vr_i(self) -> int:
        return 0 if self.v_reset is None else int(round(self.v_reset * 2 ** F_BITS))

    @property
    def k1(self) -> int:
        return -_pow2_exponent(self.beta1, "beta1", -8, 0)

    @property
    def k2(self) -> int:
        return -_pow2_exponent(self.beta2, "beta2", -8, 0)

    @property
    def alpha_exp(self) -> int:
        return _pow2_exponent(self.alpha, "alpha", -2, 2)

    @property
    def alpha_sign(self) -> int:
        return 1 if self.alpha > 0 else -1

    @property
    def steps_per_word(self) -> int:
        """Time steps whose shifted-out bits fit one int32 stash word (0: nothing to stash)."""
        kk = self.k1 + self.k2
        return 32 // kk if kk else 0

    def stash_words(self, T: int) -> int:
        spw = self.steps_per_word
        return -(-T // spw) if spw else 0

    # -- real-valued derivatives used by the gradient ------------------------------------------
    @property
    def lam(self) -> float:
        """dM/dV of the real-valued charge."""
        return 1.0 if self.is_if else 1.0 - 1.0 / self.tau

    @property
    def kin(self) -> float:
        """dM/dI of the real-valued charge."""
        return 1.0 / self.tau if self.int_decay_input else 1.0

    @property
    def surrogate_id(self) -> int:
        return SURROGATES[self.surrogate][0]


@dataclass(frozen=True)
class Grid:
    """Input/output grid of one dtype and alpha, in the integer units the kernels use."""

    p_bits: int
    fy: int
    x_frac: int      # x is quantized to 2**-x_frac
    x_shift: int     # x integer units -> potential units: << x_shift
    qmax: int        # |q| <= qmax keeps S + alpha*x exactly representable

    @property
    def x_scale(self) -> float:
        return float(2 ** self.x_frac)

    @property
    def x_max(self) -> float:
        """Largest |x| accepted (after rounding to the grid)."""
        return self.qmax / self.x_scale


def grid_for(dtype: torch.dtype, cfg: RevLIFConfig) -> Grid:
    p_bits, fy = _GRIDS[dtype]
    a = cfg.alpha_exp
    return Grid(p_bits, fy, fy + a, F_BITS - fy - a, (1 << p_bits) - (1 << fy))


def check_float_tensor(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _GRIDS:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


@dataclass(frozen=True)
class Layout:
    """x of shape [T, *lead, C, *trail] viewed as [T, A, 2, R] (A = prod(lead), R = C/2*prod(trail)).

    Group 1 is the first C/2 channels, group 2 the rest; a neuron pair p = a*R + r holds
    group 1 at offset a*2R + r and group 2 at a*2R + R + r of each time step.
    """

    T: int
    A: int
    R: int
    dim: int

    @property
    def pairs(self) -> int:
        return self.A * self.R

    @property
    def neurons(self) -> int:
        return 2 * self.A * self.R


def layout_of(shape: torch.Size, dim: int, name: str = "x") -> Layout:
    if len(shape) < 3:
        raise ValueError(f"{name} must have shape [T, B, C, *] (rank >= 3), got rank {len(shape)}")
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    nd = len(shape)
    d = dim + nd if dim < 0 else dim
    if not 1 <= d < nd:
        raise ValueError(f"dim must index a non-time dimension of {name} (1..{nd - 1}), got {dim}")
    C = shape[d]
    if C % 2:
        raise ValueError(f"{name}.shape[{d}] (the split dim) must be even for the two-group "
                         f"reversible node, got {C}")
    if shape[0] < 1:
        raise ValueError(f"{name} must have at least one time step (T >= 1), got T={shape[0]}")
    return Layout(shape[0], math.prod(shape[1:d]), C // 2 * math.prod(shape[d + 1:]), d)
