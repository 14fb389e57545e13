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

import functools
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

F_BITS = 18
"""Fractional bits of the int32 membrane potential."""
V_PARAM_MAX = 64.0
"""Largest |v_threshold|, |v_reset| accepted (their fixed-point words must fit comfortably)."""
V_MAX = (1 << 30) - 1
"""Largest |potential| (integer units) a healthy state may hold; beyond is flagged as overflow."""
INPUT_BITS = 28
"""|charge input| <= 2**INPUT_BITS: x << x_shift and y << (F - FY) on every grid. With it and
|potential| <= V_MAX, charge and reset stay in int32 (the kernels' arithmetic)."""
POISON_LIMIT = -(1 << 30)
"""Final-state words below this are poison markers ``INT32_MIN + code`` (see ``ERROR_CODES``)."""
ERROR_CODES = {
    1: "x held NaN/Inf or a value outside the representable input range",
    2: "a membrane potential overflowed the fixed-point range",
    4: "the initial state held NaN/Inf or a value outside the fixed-point range",
    8: "y was not produced by rev_lif with these settings (a value off the output grid, or "
       "one whose inverse leaves the fixed-point range)",
    16: "tau or v_threshold held a value out of range (tau > 1, inf only without decay_input; "
        "|v_threshold| <= 64)",
}

# dtype -> (significand bits P, output grid fraction bits FY). float64 shares float32's grid:
# the int32 state, not the output dtype, is the limit there.
_GRIDS = {
    torch.float32: (24, 16),
    torch.float64: (24, 16),
    torch.float16: (11, 8),
    torch.bfloat16: (8, 5),
}
SURROGATES = {"sigmoid": (0, 4.0), "atan": (1, 2.0), "fast_sigmoid": (2, 25.0)}
Param = Union[float, torch.Tensor]
"""tau or v_threshold: a number, or a tensor of one value or one per channel."""
MAX_STEP_NEURONS = 2 ** 31 - 1
"""Most neurons per time step: the reversible node's kernels index a step with int32 offsets."""
BACKWARDS = ("fused", "recompute")
BACKENDS = ("auto", "triton", "torch")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The float dtype the nodes compute in for inputs of ``dtype``: float64 for float64,
    float32 for the rest (float16 and bfloat16 potentials would drift)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_flag(value, name: str) -> None:
    """A boolean option: True/False (or 0/1), not a string or None that would read as one."""
    if isinstance(value, str) or value is None or value not in (0, 1):
        raise TypeError(f"{name} must be True or False, got {value!r}")


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


def surrogate_slope(surrogate: str, surrogate_alpha: Optional[float]) -> float:
    """The surrogate's alpha (its default when None), after checking both."""
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {sorted(SURROGATES)}, got {surrogate!r}")
    if surrogate_alpha is None:
        return SURROGATES[surrogate][1]
    if (not isinstance(surrogate_alpha, (int, float)) or isinstance(surrogate_alpha, bool)
            or not 0 < surrogate_alpha < math.inf):
        raise ValueError(f"surrogate_alpha must be a positive float, got {surrogate_alpha!r}")
    return float(surrogate_alpha)


class _NeuronOptions:
    """What both nodes derive from their reset and surrogate options."""

    v_reset: Optional[float]
    surrogate: str

    @property
    def hard_reset(self) -> bool:
        return self.v_reset is not None

    @property
    def surrogate_id(self) -> int:
        return SURROGATES[self.surrogate][0]


@dataclass(frozen=True)
class RevLIFConfig(_NeuronOptions):
    """Validated scalar node options and the fixed-point constants derived from them.

    ``tau`` and ``v_threshold`` may be per-channel: they travel as tensors beside the config
    (:func:`channel_param`); the config only records whether the node is an IF neuron (scalar
    ``tau = inf``)."""

    is_if: bool
    decay_input: bool
    v_reset: Optional[float]
    alpha: float
    beta1: float
    beta2: float
    surrogate: str
    surrogate_alpha: float
    detach_reset: bool

    @staticmethod
    def build(tau: Param = 2.0, decay_input: bool = True,
              v_threshold: Param = 1.0,
              v_reset: Optional[float] = 0.0, alpha: float = 1.0, beta1: float = -0.5,
              beta2: float = 0.5, surrogate: str = "sigmoid",
              surrogate_alpha: Optional[float] = None, detach_reset: bool = False,
              ) -> "RevLIFConfig":
        """Validate the scalar options (tensor tau/v_threshold are checked by channel_param)."""
        check_flag(decay_input, "decay_input")
        check_flag(detach_reset, "detach_reset")
        if not isinstance(tau, torch.Tensor):
            _check_scalar(tau, "tau", 1.0, math.inf, allow_inf=True)
        if not isinstance(v_threshold, torch.Tensor):
            _check_scalar(v_threshold, "v_threshold", -V_PARAM_MAX, V_PARAM_MAX, lo_open=False)
        if v_reset is not None:
            _check_scalar(v_reset, "v_reset", -V_PARAM_MAX, V_PARAM_MAX, lo_open=False)
        _pow2_exponent(alpha, "alpha", -2, 2)
        _pow2_exponent(beta1, "beta1", -8, 0)
        _pow2_exponent(beta2, "beta2", -8, 0)
        if not (beta1 < 0 < beta2):
            raise ValueError(
                f"beta1 must be negative and beta2 positive (an excitatory-inhibitory pair whose "
                f"linearised update contracts for every tau); got beta1={beta1}, beta2={beta2}. "
                f"With both positive the potentials diverge for tau >= 4.")
        surrogate_alpha = surrogate_slope(surrogate, surrogate_alpha)
        is_if = not isinstance(tau, torch.Tensor) and math.isinf(tau)
        return RevLIFConfig(is_if, bool(decay_input), None if v_reset is None else float(v_reset),
                            float(alpha), float(beta1), float(beta2), surrogate,
                            float(surrogate_alpha), bool(detach_reset))

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(*fields) -> "RevLIFConfig":
        """The config with these (already validated) field values, made once: the ops rebuild
        it from their scalar arguments on every call, and its derived constants are cached."""
        return RevLIFConfig(*fields)

    # -- fixed-point constants (integer units of 2**-F_BITS), computed once per config -----------
    @property
    def int_decay_input(self) -> bool:
        """The IF neuron integrates ``V + I`` whatever ``decay_input`` says."""
        return self.decay_input and not self.is_if

    @functools.cached_property
    def vr_i(self) -> int:
        return 0 if self.v_reset is None else int(round(self.v_reset * 2 ** F_BITS))

    @functools.cached_property
    def k1(self) -> int:
        return -_pow2_exponent(self.beta1, "beta1", -8, 0)

    @functools.cached_property
    def k2(self) -> int:
        return -_pow2_exponent(self.beta2, "beta2", -8, 0)

    @functools.cached_property
    def alpha_exp(self) -> int:
        return _pow2_exponent(self.alpha, "alpha", -2, 2)

    @property
    def alpha_sign(self) -> int:
        return 1 if self.alpha > 0 else -1

    @functools.cached_property
    def steps_per_word(self) -> int:
        """Time steps whose shifted-out bits fit one int32 stash word (0: nothing to stash)."""
        kk = self.k1 + self.k2
        return 32 // kk if kk else 0

    def stash_words(self, T: int) -> int:
        spw = self.steps_per_word
        return -(-T // spw) if spw else 0


def _check_scalar(v, name: str, lo: float, hi: float, allow_inf: bool = False,
                  lo_open: bool = True) -> None:
    """``v`` in ``(lo, hi]`` (``[lo, hi]`` when not ``lo_open``)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise TypeError(f"{name} must be a float or a per-channel tensor, got {type(v).__name__}")
    if (math.isnan(v) or (math.isinf(v) and not allow_inf)
            or not (lo < v if lo_open else lo <= v) or not v <= hi):
        where = (f"> {lo}" if math.isinf(hi)
                 else f"in {'(' if lo_open else '['}{lo}, {hi}]")
        raise ValueError(f"{name} must be finite and {where}"
                         + (" (or math.inf)" if allow_inf else "") + f", got {v}")


def check_param_values(t: torch.Tensor, name: str, lo: float, hi: float,
                       allow_inf: bool = False, lo_open: bool = True) -> None:
    """Every value of a tensor tau or v_threshold, checked as a number would be. Reads the
    tensor on the host: for the layers' constructors, not for every call. A meta tensor has no
    values to read (the ops check them again on the device)."""
    if t.is_meta:
        return
    for v in t.detach().reshape(-1).tolist():
        _check_scalar(v, name, lo, hi, allow_inf, lo_open)


def check_tensor_params(op: str, tau: Param, v_threshold: Param, decay_input: bool,
                        learn_tau: bool = False) -> None:
    """The values of a tensor ``tau`` / ``v_threshold`` of op ``"lif"`` or ``"rev_lif"``,
    checked on the host against the ranges their numbers have, and a learned tau (an
    ``nn.Parameter``, or ``learn_tau``) finite. For the layers' constructors and
    ``revsnn.convert``, once: the reversible node checks tensor values on the device on every
    call (a bad value flags the state, no sync)."""
    rev = op == "rev_lif"
    learned = torch.as_tensor(tau) if learn_tau or isinstance(tau, torch.nn.Parameter) else None
    if learned is not None and not learned.is_meta and bool(learned.isinf().any()):
        raise ValueError("a learned tau (learn_tau=True or an nn.Parameter) must be finite: "
                         "inf is the IF neuron, with no leak to learn (its gradient is 0, and "
                         "weight decay would make it NaN)")
    if isinstance(tau, torch.Tensor):  # inf: an IF channel, V + I (decay_input: I/inf = 0)
        check_param_values(tau, "tau", 1.0, math.inf, allow_inf=not decay_input)
    if isinstance(v_threshold, torch.Tensor):
        lim = V_PARAM_MAX if rev else math.inf
        check_param_values(v_threshold, "v_threshold", -lim, lim, lo_open=not rev)


@functools.lru_cache(maxsize=256)
def _scalar_tensor(value: float, device: torch.device) -> torch.Tensor:
    # made once per value and device: building it on every call is a host-to-device copy,
    # which waits for the device; the ops only read it. Never an inference tensor (made under
    # inference_mode), which autograd could not save in later calls that train.
    with torch.inference_mode(False):
        return torch.tensor([value], dtype=torch.float32, device=device)


def channel_param(value: Param, name: str, channels: int,
                  device: torch.device) -> torch.Tensor:
    """tau or v_threshold as a float tensor [1] (a scalar) or [C] (one per channel).

    A tensor keeps its autograd history (a learnable parameter gets a gradient). Its values are
    not read here (that would wait for the device on every call): the kernels flag a value out
    of range in the node's state (error code 16), as they flag a bad x."""
    if not isinstance(value, torch.Tensor):
        if torch.compiler.is_compiling():  # a compiled graph builds its constants once anyway
            return torch.tensor([float(value)], dtype=torch.float32, device=device)
        return _scalar_tensor(float(value), torch.device(device))
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.numel() not in (1, channels) or value.dim() > 1:
        raise ValueError(f"{name} must be a scalar or a tensor of shape [{channels}] (one per "
                         f"channel of the split dim), got shape {tuple(value.shape)}")
    check_device(value, name, device)
    return value.reshape(-1)


@dataclass(frozen=True)
class Grid:
    """Input/output grid of one dtype and alpha, in the integer units the kernels use."""

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
    """The grid of x and y for the output ``dtype`` and the config's alpha (module docstring)."""
    p_bits, fy = _GRIDS[dtype]
    a = cfg.alpha_exp
    return Grid(fy, fy + a, F_BITS - fy - a, (1 << p_bits) - (1 << fy))


def check_device(t: torch.Tensor, name: str, device: torch.device) -> None:
    """An argument must live where x lives."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}")


def check_float_tensor(t: torch.Tensor, name: str) -> None:
    """``t`` must be a tensor of a dtype the nodes take (float32, float64, float16, bfloat16)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _GRIDS:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


@dataclass(frozen=True)
class Layout:
    """x of shape [T, *lead, C, *trail] viewed as [T, A, 2, R] (A = prod(lead),
    R = C/2*prod(trail)).

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


def channel_dim(shape: torch.Size, dim: int, name: str = "x") -> int:
    """``dim`` as a non-negative index of a non-time dimension of a time-first ``shape``."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    nd = len(shape)
    d = dim + nd if dim < 0 else dim
    if not 1 <= d < nd:
        raise ValueError(f"dim must index a non-time dimension of {name} (1..{nd - 1}), got {dim}")
    return d


def layout_of(shape: torch.Size, dim: int, name: str = "x") -> Layout:
    """The :class:`Layout` of a time-first ``shape`` split along ``dim``, after checking it."""
    if len(shape) < 3:
        raise ValueError(f"{name} must have shape [T, B, C, *] (rank >= 3), got rank {len(shape)}")
    d = channel_dim(shape, dim, name)
    C = shape[d]
    if C % 2:
        raise ValueError(f"{name}.shape[{d}] (the split dim) must be even for the two-group "
                         f"reversible node, got {C}")
    if shape[0] < 1:
        raise ValueError(f"{name} must have at least one time step (T >= 1), got T={shape[0]}")
    if math.prod(shape[1:]) > MAX_STEP_NEURONS:
        raise ValueError(f"{name} has {math.prod(shape[1:])} neurons per time step, more than "
                         f"the {MAX_STEP_NEURONS} the kernels index; split the batch")
    return Layout(shape[0], math.prod(shape[1:d]), C // 2 * math.prod(shape[d + 1:]), d)


@dataclass(frozen=True)
class LIFConfig(_NeuronOptions):
    """Validated scalar options of the standard LIF node (``revsnn.LIF``, SpikingJelly's
    ``LIFNode``). tau and v_threshold travel beside it (floats, or tensors [1] / [C] that may be
    learnable); the reference neuron helpers take it where they take a :class:`RevLIFConfig`."""

    decay_input: bool
    v_reset: Optional[float]
    surrogate: str
    surrogate_alpha: float
    detach_reset: bool

    @staticmethod
    def build(tau: Param = 2.0, decay_input: bool = True,
              v_threshold: Param = 1.0, v_reset: Optional[float] = 0.0,
              surrogate: str = "sigmoid", surrogate_alpha: Optional[float] = None,
              detach_reset: bool = False) -> "LIFConfig":
        """Check the options; tau and v_threshold only when they are numbers (a tensor's values
        would have to be read on the host: the layer checks them once, at construction)."""
        check_flag(decay_input, "decay_input")
        check_flag(detach_reset, "detach_reset")
        for name, v in (("tau", tau), ("v_threshold", v_threshold), ("v_reset", v_reset)):
            if (isinstance(v, torch.Tensor) and name != "v_reset"
                    or v is None and name == "v_reset"):
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise TypeError(f"{name} must be a float" + (" or None" if name == "v_reset"
                                                             else " or a tensor")
                                + f", got {type(v).__name__}")
            if not math.isfinite(v) and not (name == "tau" and v == math.inf):
                raise ValueError(f"{name} must be finite" + (" (or math.inf)" if name == "tau"
                                                             else "") + f", got {v}")
        if not isinstance(tau, torch.Tensor) and not tau > 1:
            raise ValueError(f"tau must be > 1 (SpikingJelly's LIFNode), got {tau}")
        surrogate_alpha = surrogate_slope(surrogate, surrogate_alpha)
        # tau = inf is the IF neuron, V + I (SpikingJelly's IFNode), whatever decay_input says,
        # as in the reversible node: charged without decay_input, nothing divides by inf
        is_if = not isinstance(tau, torch.Tensor) and math.isinf(tau)
        return LIFConfig(bool(decay_input) and not is_if,
                         None if v_reset is None else float(v_reset),
                         surrogate, float(surrogate_alpha), bool(detach_reset))
