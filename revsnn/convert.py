"""Drop-in conversion: revsnn layers in place of the neurons of a SpikingJelly, snnTorch or Norse
model, in the style of Liger-Kernel's ``apply_liger_kernel_to_*``::

    report = revsnn.convert(model, to="lif")   # or to="revlif"
    print(report)                               # what was replaced, what was left and why

The peer libraries are optional and never imported here: a model holding their modules has
imported them already (``sys.modules`` is consulted).

Mappings (docs/bring_your_own_model.md shows them in use):

* SpikingJelly ``LIFNode`` / ``IFNode`` / ``ParametricLIFNode``: the same equations (revsnn's
  LIF *is* SpikingJelly's ``LIFNode``): tau, decay_input, v_threshold, v_reset (None: soft
  reset), detach_reset, surrogate ``Sigmoid``/``ATan`` with its alpha (``SuperSpike`` with
  alpha 1 and ``SoftSign`` with alpha 2: ``fast_sigmoid``). ``ParametricLIFNode`` keeps its
  learnable ``w`` (``tau = 1/sigmoid(w)``, applied as a division: equal to SpikingJelly's
  multiplication up to rounding). ``IFNode``: ``tau=inf``, ``V + X``.
  Multi-step nodes become ``revsnn.LIF`` / ``revsnn.RevLIF`` themselves.
* snnTorch ``Leaky``: ``tau = 1/(1 - beta)``, ``decay_input=False``; ``"zero"`` reset ->
  ``v_reset=0``, ``"subtract"`` -> soft reset; ``detach_reset=reset_delay`` (snnTorch's delayed
  reset, its default, is detached; its immediate one is not); ``spike_grad`` ``atan(alpha)`` /
  ``sigmoid(slope)`` / ``fast_sigmoid(slope)``. Per-neuron (along one axis) and learnable beta /
  threshold stay the same tensors (for to="revlif" that axis is also the one the node splits in
  two). The ``"zero"`` reset is exact; the ``"subtract"`` reset is not (see
  :data:`SNNTORCH_SUBTRACT`, :data:`SNNTORCH_SUBTRACT_NOW`), and the report says so.
* Norse ``LIFBoxCell``: ``tau = 1/(dt * tau_mem_inv)``, ``decay_input=True``, ``reset_value`` ->
  hard reset to ``v_reset`` (needs ``v_leak == v_reset``: SpikingJelly's LIF leaks towards its
  reset potential), ``reset_subtract`` -> soft reset (needs ``v_leak == 0``). ``LIFCell`` / ``LIF``
  carry a synaptic current as well: exact only when ``dt * tau_syn_inv == 1`` (the current then
  lasts one step). Norse's surrogates: ``method="super"`` (the default) is ``fast_sigmoid``, its
  alpha read off the gradient Norse computes (Norse 1.1 leaves alpha out: alpha 1);
  ``method="tanh"`` with ``alpha=2`` is revsnn's sigmoid with alpha 4; the others have no
  revsnn counterpart: such a module is left unless ``surrogate=`` is given as an override.

Everywhere, revsnn fires at ``v >= threshold`` (SpikingJelly's rule); snnTorch and Norse fire at
``v > threshold``: spikes differ only where a potential lands exactly on the threshold.

Step-by-step loops keep working: modules called one step at a time become adapters with the
source's call signature (``spk, mem = lif(cur, mem)`` for snnTorch, ``z, s = cell(x, s)`` for
Norse, ``node(x_t)`` for single-step SpikingJelly nodes). Gradients flow from step to step for
``to="lif"``. The reversible node keeps no autograd history between calls, so a ``"revlif"``
adapter called step by step trains with gradients truncated at every step (it warns); its
memory win needs all T steps in one call: :func:`multistep` runs a step-wise network that way.
"""
from __future__ import annotations

import copy
import inspect
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ._config import BACKENDS, check_tensor_params, layout_of
from .functional import _lif as _lif_fn
from .functional import _rev_lif as _rev_fn
from .nn import LIF, RevLIF
from .nn._keep import keep
from .state import RevLIFState

TARGETS = ("lif", "revlif")

SNNTORCH_SUBTRACT = (
    "snnTorch's 'subtract' reset takes the threshold off after the leak (U = beta*U + I - thr*S); "
    "revsnn's soft reset takes it off before (U = beta*(U - thr*S) + I), so after a spike the "
    "potential is higher by (1 - beta)*thr than snnTorch's")
SNNTORCH_SUBTRACT_NOW = (
    "snnTorch's 'subtract' reset with reset_delay=False is revsnn's soft reset while the "
    "potential stays below 2*threshold; above, snnTorch's double-reset compensation differs")


# -- report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Replaced:
    """A module put in place: where, what it was, what it is now, and any documented difference
    between the two (empty: the revsnn module computes what the original computed)."""

    name: str
    source: str
    target: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Left:
    """A neuron module left in place, and why."""

    name: str
    source: str
    reason: str


@dataclass
class ConversionReport:
    """What :func:`convert` did. ``str(report)`` is a readable summary."""

    to: str
    replaced: list[Replaced] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"revsnn.convert(to={self.to!r}): {len(self.replaced)} replaced, "
                 f"{len(self.left)} left in place"]
        if self.to == "revlif" and self.replaced:
            lines.append("  (the reversible node outputs S + alpha*x_other, not spikes: the "
                         "converted network computes something else; train or fine-tune it)")
        for r in self.replaced:
            lines.append(f"  replaced {r.name}: {r.source} -> {r.target}")
            lines.extend(f"      note: {n}" for n in r.notes)
        for lf in self.left:
            lines.append(f"  left     {lf.name}: {lf.source}: {lf.reason}")
        return "\n".join(lines)


# -- adapters: revsnn nodes behind the source libraries' call signatures --------------------------
class _Node(nn.Module):
    """A revsnn node (``to="lif"``: :func:`revsnn.functional.lif`, ``"revlif"``:
    :func:`revsnn.functional.rev_lif`) run over ``[T, B, *]`` with the given keywords."""

    def __init__(self, to: str, kwargs: dict) -> None:
        super().__init__()
        _check_keywords(to, kwargs)
        self.to = to
        # a Parameter (a source's learnable threshold, an override) is registered, so that
        # model.parameters() and the optimizer see it
        self.learned = [k for k, v in kwargs.items() if isinstance(v, nn.Parameter)]
        for k in self.learned:
            setattr(self, k, kwargs[k])
        self.kwargs = {k: v for k, v in kwargs.items() if k not in self.learned}
        self._last: Optional[tuple[torch.Tensor, RevLIFState]] = None

    def _params(self) -> dict:
        """Keywords computed from kept tensors at each call (learnable / per-channel)."""
        return {}

    def _keywords(self) -> dict:
        return {**self.kwargs, **{k: getattr(self, k) for k in self.learned}, **self._params()}

    def check_values(self) -> None:
        """For ``to="revlif"``, raise for a tensor tau / v_threshold value out of the node's
        fixed-point range, as RevLIF's constructor does: the op checks tensor values on the
        device, where a bad one only flags the state (a threshold above 64 would run on, to
        NaN potentials). ``to="lif"`` computes in float whatever the source computed."""
        if self.to == "lif":
            return
        kw = self._keywords()
        try:
            check_tensor_params("rev_lif", kw.get("tau"), kw.get("v_threshold"),
                                kw.get("decay_input", True))
        except ValueError as e:  # say where a value the user never set comes from
            raise ValueError(", ".join(self._derived() + [str(e)])) from None

    def run(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """x ``[T, B, *]``; state: None, a float ``[B, *]`` or a RevLIFState (revlif)."""
        kw = self._keywords()
        if self.to == "lif":
            return _lif_fn.lif(x, state, **kw)
        return _rev_fn.rev_lif(x, state, **kw)

    def _from_user(self, v: Any, like: torch.Tensor) -> Any:
        """The node's state from a potential the caller handed back: the exact RevLIFState
        behind one this adapter returned, a float potential of one step's shape, else rest."""
        if self._last is not None and v is self._last[0]:
            return self._last[1]
        if isinstance(v, torch.Tensor) and v.shape == like.shape:
            return v
        return None

    def _to_user(self, st: Any) -> torch.Tensor:
        """The potential to hand to the caller (revlif: the float view of the state)."""
        if isinstance(st, RevLIFState):
            v = st.v
            self._last = (v, st)
            return v
        return st

    def _derived(self) -> list[str]:
        """How the per-call keywords of :meth:`_params` come about, for the repr."""
        return []

    def extra_repr(self) -> str:
        return ", ".join([f"to={self.to!r}", *self._derived()]
                         + [f"{k}={v!r}" for k, v in self.kwargs.items()]
                         + [f"{k}=Parameter{list(getattr(self, k).shape)}"
                            for k in self.learned])


class _Stepwise(_Node):
    """A node called one time step at a time (``[B, *]``), or, inside :func:`multistep`, once
    on all T steps folded into the batch (``[T*B, *]``). ``v`` holds the node's state where the
    source module kept one (None for explicit-state signatures); :meth:`reset` clears it."""

    stepwise = True
    """Called one step at a time: :func:`multistep` folds time into the batch for it."""

    def __init__(self, to: str, kwargs: dict) -> None:
        super().__init__(to, kwargs)
        self._steps: Optional[int] = None
        self._warned = False
        self.v: Any = None

    def reset(self) -> None:
        """Back to rest: the next step starts from the resting potential."""
        self.v, self._last = None, None

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One step ``[B, *]`` from the node's state (None: rest); in multistep mode all steps
        ``[T*B, *]`` from rest. Returns the output and the node's new state."""
        if self._steps is not None:
            out, st = self.run(x.unflatten(0, (self._steps, -1)), None)
            return out.flatten(0, 1), st
        if (self.to == "revlif" and not self._warned and torch.is_grad_enabled()
                and x.requires_grad):
            self._warned = True
            warnings.warn("a reversible (to='revlif') node called one step at a time keeps no "
                          "autograd history between steps: gradients are truncated at every "
                          "step. Run the network with revsnn.convert.multistep(model, x_seq).",
                          stacklevel=3)
        out, st = self.run(x.unsqueeze(0), state)
        return out[0], st


class SpikingJellyNode(_Stepwise):
    """A SpikingJelly node that is single-step (``step_mode="s"``), or a ``ParametricLIFNode``
    (its learnable ``w`` kept: ``tau = 1/sigmoid(w)`` at each call). Keeps its state in ``v``
    between calls until :meth:`reset` (SpikingJelly's ``functional.reset_net`` calls it)."""

    def __init__(self, to: str, kwargs: dict, multi_step: bool,
                 w: Optional[torch.Tensor] = None) -> None:
        super().__init__(to, kwargs)
        self.multi_step = multi_step
        keep(self, "w", w)

    @property
    def stepwise(self) -> bool:
        return not self.multi_step

    @property
    def step_mode(self) -> str:
        """SpikingJelly's ``"s"`` / ``"m"`` (``functional.set_step_mode`` sets it)."""
        return "m" if self.multi_step else "s"

    @step_mode.setter
    def step_mode(self, mode: str) -> None:
        if mode not in ("s", "m"):
            raise ValueError(f"step_mode must be 's' or 'm', got {mode!r}")
        self.multi_step = mode == "m"

    def _params(self) -> dict:
        return {} if self.w is None else {"tau": 1.0 / self.w.sigmoid()}

    def _derived(self) -> list[str]:
        return [] if self.w is None else ["tau=1/sigmoid(w)"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, *]`` (multi-step) or ``[B, *]`` (single-step) -> the same shape."""
        out, self.v = (self.run if self.multi_step else self.step)(x, self.v)
        return out


class SnnTorchLeaky(_Stepwise):
    """snnTorch ``Leaky``'s call signature on a revsnn node: ``spk, mem = lif(cur, mem)``, or
    with ``init_hidden=True`` ``spk = lif(cur)`` (``(spk, mem)`` with ``output=True``).

    ``mem`` is the potential *after* the reset (snnTorch's default ``reset_delay=True`` hands
    back the potential before its delayed reset); hand it back unchanged. ``init_leaky()``,
    ``reset_mem()`` and ``reset()`` start from rest. beta and threshold are kept as the source's
    tensors (a learnable beta stays the optimizer's Parameter; ``tau = 1/(1 - beta.clamp(0, 1))``
    at each call)."""

    def __init__(self, to: str, kwargs: dict, beta: Optional[torch.Tensor],
                 threshold: Optional[torch.Tensor], init_hidden: bool, output: bool) -> None:
        super().__init__(to, kwargs)
        keep(self, "beta", beta)
        keep(self, "threshold", threshold)
        self.init_hidden, self.output = init_hidden, output

    def _params(self) -> dict:
        kw = {}
        if self.beta is not None:
            kw["tau"] = 1.0 / (1.0 - self.beta.clamp(0, 1).reshape(-1))
        if self.threshold is not None:
            kw["v_threshold"] = self.threshold.reshape(-1)
        return kw

    def _derived(self) -> list[str]:
        return ((["tau=1/(1-beta)"] if self.beta is not None else [])
                + (["v_threshold=threshold"] if self.threshold is not None else []))

    def init_leaky(self) -> torch.Tensor:
        """Start from rest; returns snnTorch's empty placeholder potential."""
        self.reset()
        return torch.zeros(0)

    reset_mem = init_leaky

    def forward(self, input_: torch.Tensor, mem: Optional[torch.Tensor] = None):
        if self.init_hidden:
            if mem is not None:
                raise TypeError("`mem` should not be passed as an argument while "
                                "`init_hidden=True`")
            spk, self.v = self.step(input_, self.v)
            return (spk, self._to_user(self.v)) if self.output else spk
        spk, st = self.step(input_, self._from_user(mem, input_))
        return spk, self._to_user(st)


class NorseCell(_Stepwise):
    """Norse ``LIFBoxCell`` / ``LIFCell`` call signature on a revsnn node:
    ``z, state = cell(x, state)``; the state is the source's state class (``v``; ``i`` is zero:
    the converted cells carry no synaptic current from one step to the next)."""

    def __init__(self, to: str, kwargs: dict, state_cls: type) -> None:
        super().__init__(to, kwargs)
        self.state_cls = state_cls

    def forward(self, input_tensor: torch.Tensor, state: Any = None):
        v = None if state is None else self._from_user(state.v, input_tensor)
        z, st = self.step(input_tensor, v)
        return z, _norse_state(self.state_cls, self._to_user(st))


class NorseLIF(_Node):
    """Norse ``LIF`` (a whole sequence ``[T, B, *]`` per call) on a revsnn node:
    ``z_seq, state = lif(x_seq, state)``."""

    def __init__(self, to: str, kwargs: dict, state_cls: type) -> None:
        super().__init__(to, kwargs)
        self.state_cls = state_cls

    def forward(self, input_tensor: torch.Tensor, state: Any = None):
        v = None if state is None else self._from_user(state.v, input_tensor[0])
        z, st = self.run(input_tensor, v)
        return z, _norse_state(self.state_cls, self._to_user(st))


def _norse_state(cls: type, v: torch.Tensor):
    fields = getattr(cls, "_fields", ("v",))
    return cls(**{f: v if f == "v" else torch.zeros_like(v) for f in fields})


# -- mappings: one per source neuron -------------------------------------------------------------
@dataclass
class _Plan:
    """How one source module maps. ``kwargs``: revsnn keywords; ``problems``: keyword -> why the
    source's option has no counterpart (an override of that keyword resolves it); ``blockers``:
    why it cannot be converted at all; ``notes``: documented differences of the conversion."""

    source: str
    build: Any = None            # (to, kwargs) -> nn.Module
    kwargs: dict = field(default_factory=dict)
    problems: dict = field(default_factory=dict)
    blockers: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    step_input: bool = False     # called one step ([B, C, *]) at a time


def _scalar(t: Any) -> Optional[float]:
    """A float from a number or a one-element tensor; None for anything else."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return float(t)
    if isinstance(t, torch.Tensor) and t.numel() == 1:
        return float(t.detach().reshape(()).item())
    return None


def _axis_from_right(t: torch.Tensor) -> Optional[int]:
    """The one axis along which a broadcast parameter varies, counted from the right as
    broadcasting aligns (-1: last); None if it varies along more than one."""
    varying = [i for i, n in enumerate(t.shape) if n != 1]
    return -(t.dim() - varying[0]) if len(varying) == 1 else None


def _sj(name: str):
    return sys.modules.get(f"spikingjelly.activation_based.{name}")


def _sj_surrogate(sf: Any, plan: _Plan) -> None:
    surrogate = _sj("surrogate")
    alpha = _scalar(getattr(sf, "alpha", None))
    usable = surrogate is not None and getattr(sf, "spiking", True) and alpha is not None
    for name, cls in (("sigmoid", "Sigmoid"), ("atan", "ATan")):
        if usable and type(sf) is getattr(surrogate, cls, None):
            plan.kwargs.update(surrogate=name, surrogate_alpha=alpha)
            return
    # fast_sigmoid, 1/(1 + a|z|)^2, times a factor that is 1 at one alpha only
    for cls, form, exact in (("SuperSpike", "alpha/(1 + |z|)^2", 1.0),
                             ("SoftSign", "alpha/(2(1 + alpha|z|)^2)", 2.0)):
        if usable and type(sf) is getattr(surrogate, cls, None):
            if alpha == exact:
                plan.kwargs.update(surrogate="fast_sigmoid", surrogate_alpha=alpha)
                return
            plan.problems["surrogate"] = (f"surrogate_function {cls}(alpha={alpha}) is {form}, "
                                          f"revsnn's fast_sigmoid only at alpha={exact}")
            return
    plan.problems["surrogate"] = (f"surrogate_function {type(sf).__name__} has no revsnn "
                                  f"counterpart (revsnn has Sigmoid, ATan, SuperSpike(alpha=1) "
                                  f"and SoftSign(alpha=2))")


def _map_spikingjelly(m: nn.Module, kind: str, to: str) -> _Plan:
    plan = _Plan(f"spikingjelly {type(m).__name__}")
    vr = m.v_reset
    plan.kwargs.update(v_threshold=_scalar(m.v_threshold), detach_reset=bool(m.detach_reset),
                       v_reset=None if vr is None else _scalar(vr))
    if plan.kwargs["v_threshold"] is None or (vr is not None and plan.kwargs["v_reset"] is None):
        plan.blockers.append("v_threshold / v_reset are not plain numbers")
    _sj_surrogate(m.surrogate_function, plan)
    if getattr(m, "store_v_seq", False):
        plan.blockers.append("store_v_seq=True: revsnn records no potential sequence")
    if getattr(m, "_neuron_precision", None) is not None:
        plan.blockers.append("an explicit neuron precision is set")
    multi = m.step_mode == "m"
    plan.step_input = not multi
    if kind == "IFNode":
        plan.kwargs["tau"] = math.inf
    elif kind == "LIFNode":
        plan.kwargs.update(tau=float(m.tau), decay_input=bool(m.decay_input))
    else:  # ParametricLIFNode
        plan.kwargs["decay_input"] = bool(m.decay_input)
    w = m.w if kind == "ParametricLIFNode" else None

    def build(to_, kw):
        w_ = None if "tau" in kw else w
        if multi and w_ is None:
            return (LIF if to_ == "lif" else RevLIF)(**kw)
        return SpikingJellyNode(to_, kw, multi, w_)
    plan.build = build
    return plan


def _snntorch_surrogate(m: nn.Module, plan: _Plan) -> None:
    if getattr(m, "surrogate_disable", False):
        plan.problems["surrogate"] = "surrogate_disable=True (no surrogate gradient)"
        return
    fn = m.spike_grad
    qual = getattr(fn, "__qualname__", "")
    if getattr(fn, "__module__", None) == "snntorch.surrogate" and fn.__closure__:
        found = inspect.getclosurevars(fn).nonlocals
        if qual == "atan.<locals>.inner" and _scalar(found.get("alpha")) is not None:
            plan.kwargs.update(surrogate="atan", surrogate_alpha=_scalar(found["alpha"]))
            return
        for name in ("sigmoid", "fast_sigmoid"):
            if qual == f"{name}.<locals>.inner" and _scalar(found.get("slope")) is not None:
                plan.kwargs.update(surrogate=name, surrogate_alpha=_scalar(found["slope"]))
                return
    plan.problems["surrogate"] = (f"spike_grad {qual or fn!r} has no revsnn counterpart "
                                  f"(revsnn has atan, sigmoid and fast_sigmoid)")


def _norse_super(alpha: Any) -> tuple[Optional[float], str]:
    """``(a, "")``: Norse's ``method="super"`` with ``alpha`` is fast_sigmoid with alpha ``a``,
    read off the gradient Norse computes at z = 0, 1 and -1/2 (its own formula, whatever its
    version does with alpha: Norse 1.1 leaves it out, ``1/(1 + |z|)^2``); ``(None, why)`` if
    that gradient cannot be read or has another form."""
    threshold = getattr(sys.modules.get("norse.torch.functional.threshold"), "threshold", None)
    if threshold is None:
        return None, "Norse's threshold function was not found"
    try:  # whatever the caller's grad mode, inference mode or default device
        with torch.inference_mode(False), torch.enable_grad():
            z = torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64, device="cpu",
                             requires_grad=True)
            (g,) = torch.autograd.grad(threshold(z, "super", alpha).sum(), z)
            g0, g1, g2 = g.tolist()
    except Exception as e:  # another Norse's signature or rules: the module is left, not convert
        return None, f"its gradient could not be read ({type(e).__name__}: {e})"
    a = g1 ** -0.5 - 1 if g1 > 0 else math.nan
    if g0 != 1 or not 0 < a < math.inf or abs(g2 - (1 + a / 2) ** -2) > 1e-9:
        return None, (f"its gradient at z = 0, 1, -1/2 ({g0:.6g}, {g1:.6g}, {g2:.6g}) is not "
                      f"1/(1 + a|z|)^2")
    return a, ""


def _map_snntorch(m: nn.Module, kind: str, to: str) -> _Plan:
    plan = _Plan("snntorch Leaky", step_input=True)
    # the delayed reset (snnTorch's default) is computed from a detached spike; the immediate
    # one (reset_delay=False) subtracts the spike itself, gradient and all
    delayed = bool(getattr(m, "reset_delay", True))
    plan.kwargs.update(decay_input=False, detach_reset=delayed)
    for attr, why in (("inhibition", "inhibition=True"), ("state_quant", "state_quant is set")):
        if getattr(m, attr, False):
            plan.blockers.append(f"{why}: no revsnn counterpart")
    if isinstance(m.graded_spikes_factor, nn.Parameter) or _scalar(m.graded_spikes_factor) != 1:
        plan.blockers.append("graded_spikes_factor != 1: revsnn spikes are 0/1")
    mech = m.reset_mechanism
    if mech == "none":
        plan.blockers.append("reset_mechanism='none' (a non-spiking integrator)")
    plan.kwargs["v_reset"] = 0.0 if mech == "zero" else None
    if mech == "subtract":
        plan.notes.append(SNNTORCH_SUBTRACT if delayed else SNNTORCH_SUBTRACT_NOW)
    _snntorch_surrogate(m, plan)

    kept = {}
    axes = set()
    for name, key, t in (("beta", "tau", m.beta), ("threshold", "v_threshold", m.threshold)):
        value = _scalar(t)
        if value is not None and not isinstance(t, nn.Parameter):
            if name == "beta":
                b = min(max(value, 0.0), 1.0)  # snnTorch clamps beta to [0, 1]
                if b <= 0:
                    plan.blockers.append("beta <= 0: no membrane memory (tau would be <= 1)")
                elif b >= 1:  # no leak: the IF neuron
                    plan.kwargs[key] = math.inf
                else:
                    plan.kwargs[key] = 1.0 / (1.0 - b)
            else:
                plan.kwargs[key] = value
            continue
        if name == "beta" and bool((t.detach() <= 0).any()):
            plan.blockers.append("beta <= 0 somewhere: no membrane memory (tau would be <= 1)")
        kept[name] = t
        if t.numel() == 1:
            continue
        axis = _axis_from_right(t)
        if axis is None:
            plan.blockers.append(f"{name} varies along more than one axis (revsnn takes one "
                                 f"value per channel)")
            continue
        axes.add(axis)
    if len(axes) > 1:
        plan.blockers.append("beta and threshold vary along different axes")
    elif axes:
        plan.kwargs["dim"] = axes.pop()
    init_hidden, output = bool(m.init_hidden), bool(m.output)

    def build(to_, kw):
        beta = kept.get("beta") if "tau" not in kw else None
        thr = kept.get("threshold") if "v_threshold" not in kw else None
        return SnnTorchLeaky(to_, kw, beta, thr, init_hidden, output)
    plan.build = build
    return plan


def _map_norse(m: nn.Module, kind: str, to: str) -> _Plan:
    plan = _Plan(f"norse {kind}", step_input=kind != "LIF")
    p, dt = m.p, m.dt
    plan.kwargs["decay_input"] = True
    plan.kwargs["detach_reset"] = False
    for name in ("tau_mem_inv", "tau_syn_inv", "v_leak", "v_reset"):
        if isinstance(getattr(p, name, None), torch.Tensor) and getattr(p, name).requires_grad:
            plan.blockers.append(f"learnable {name} (a tensor that requires grad): revsnn would "
                                 f"take it as a constant")
    k = _scalar(dt * torch.as_tensor(p.tau_mem_inv))  # as Norse computes it, in float32
    if k is None or not 0 < k < 1:
        plan.blockers.append(f"dt*tau_mem_inv must be one number in (0, 1) (revsnn's tau = "
                             f"1/(dt*tau_mem_inv) > 1), got {k if k is not None else 'a tensor'}")
    else:
        plan.kwargs["tau"] = 1.0 / k
    v_leak, v_th, v_reset = (_scalar(getattr(p, n)) for n in ("v_leak", "v_th", "v_reset"))
    if None in (v_leak, v_th, v_reset):
        plan.blockers.append("per-neuron v_leak / v_th / v_reset")
    # a learnable one-value threshold stays the optimizer's tensor
    plan.kwargs["v_threshold"] = (p.v_th if v_th is not None
                                  and isinstance(p.v_th, nn.Parameter) else v_th)
    reset = getattr(p, "reset_method", None)
    reset_name = getattr(reset, "__name__", "reset_value")
    if kind == "LIFBoxCell" and reset_name == "reset_subtract":
        plan.kwargs["v_reset"] = None
        if v_leak != 0:
            plan.blockers.append(f"soft reset with v_leak={v_leak}: revsnn's soft-reset LIF "
                                 f"leaks towards 0")
    elif reset_name == "reset_value":
        plan.kwargs["v_reset"] = v_reset
        if v_leak != v_reset:
            plan.blockers.append(f"v_leak={v_leak} != v_reset={v_reset}: revsnn's LIF leaks "
                                 f"towards its reset potential")
    else:
        plan.blockers.append(f"reset_method {reset_name} has no revsnn counterpart")
    if kind != "LIFBoxCell":
        syn = _scalar(dt * torch.as_tensor(p.tau_syn_inv))
        if syn != 1:
            plan.blockers.append(f"synaptic current: dt*tau_syn_inv = {syn} (revsnn's neurons "
                                 f"have one state; exact only when dt*tau_syn_inv == 1)")
    if getattr(m, "record_states", False):
        plan.blockers.append("record_states=True: revsnn records no state sequence")
    method, alpha = p.method, _scalar(p.alpha)
    super_alpha, why = _norse_super(p.alpha) if method == "super" else (None, "")
    if method == "tanh" and alpha == 2.0:
        plan.kwargs.update(surrogate="sigmoid", surrogate_alpha=4.0)
    elif super_alpha is not None:
        plan.kwargs.update(surrogate="fast_sigmoid", surrogate_alpha=super_alpha)
    elif method == "super":
        plan.problems["surrogate"] = (
            f"method='super' (alpha={alpha}) is revsnn's fast_sigmoid, but {why}; pass "
            f"surrogate='fast_sigmoid' (Norse 1.1: surrogate_alpha=1) to convert anyway")
    else:
        plan.problems["surrogate"] = (
            f"method={method!r} (alpha={alpha}) has no revsnn counterpart (Norse's 'super' is "
            f"revsnn's fast_sigmoid, its 'tanh' with alpha=2 revsnn's sigmoid; pass "
            f"surrogate='sigmoid', 'atan' or 'fast_sigmoid' to convert anyway)")
    norse_fn = sys.modules.get("norse.torch.functional.lif_box" if kind == "LIFBoxCell"
                               else "norse.torch.functional.lif")
    state_cls = getattr(norse_fn, "LIFBoxFeedForwardState" if kind == "LIFBoxCell"
                        else "LIFFeedForwardState", None)
    if state_cls is None:
        plan.blockers.append("Norse's state class was not found")
    plan.build = (lambda to_, kw: NorseLIF(to_, kw, state_cls)) if kind == "LIF" else (
        lambda to_, kw: NorseCell(to_, kw, state_cls))
    return plan


def _sources() -> list[tuple[type, Optional[str], Any, str]]:
    """(class, kind, mapper, library) of every supported neuron of the libraries loaded now,
    then the libraries' neuron base classes (kind None: recognised, not supported)."""
    out = []
    sj = _sj("neuron")
    if sj is not None:
        out += [(getattr(sj, k, None), k, _map_spikingjelly, "spikingjelly")
                for k in ("LIFNode", "IFNode", "ParametricLIFNode")]
        out.append((getattr(sj, "BaseNode", None), None, None, "spikingjelly"))
    snn = sys.modules.get("snntorch")
    if snn is not None:
        out += [(getattr(snn, "Leaky", None), "Leaky", _map_snntorch, "snntorch"),
                (getattr(snn, "SpikingNeuron", None), None, None, "snntorch")]
    nt = sys.modules.get("norse.torch")
    if nt is not None:
        out += [(getattr(nt, k, None), k, _map_norse, "norse")
                for k in ("LIFBoxCell", "LIFCell", "LIF")]
        base = sys.modules.get("norse.torch.module.snn")
        out += [(getattr(base, k, None), None, None, "norse")
                for k in ("SNN", "SNNCell", "SNNRecurrent", "SNNRecurrentCell")]
    return [s for s in out if isinstance(s[0], type)]


def _plan_for(m: nn.Module, to: str, sources) -> Optional[_Plan]:
    """The plan for a neuron of a peer library; None for any other module."""
    for cls, kind, mapper, _ in sources:
        if kind is not None and type(m) is cls:
            return mapper(m, kind, to)
    for cls, kind, _, lib in sources:
        if isinstance(m, cls):
            why = (f"a subclass of {cls.__name__}: its dynamics may differ" if kind else
                   "no revsnn counterpart")
            return _Plan(f"{lib} {type(m).__name__}", blockers=[why])
    return None


# -- convert --------------------------------------------------------------------------------------
def _target_keywords(to: str) -> set:
    fn = _lif_fn.lif if to == "lif" else _rev_fn.rev_lif
    return {n for n, p in inspect.signature(fn).parameters.items()
            if p.kind == inspect.Parameter.KEYWORD_ONLY}


def _check_keywords(to: str, kwargs: dict) -> None:
    """Raise what revsnn raises for these keywords (a tiny no-grad call on the torch twin; a
    per-channel tensor is checked against the input at the real call, its values, for
    ``to="revlif"``, by :meth:`_Node.check_values`)."""
    unknown = sorted(set(kwargs) - _target_keywords(to))
    if unknown:
        raise TypeError(f"unknown keyword(s) {unknown} for revsnn."
                        f"{'LIF' if to == 'lif' else 'RevLIF'}; known: "
                        f"{sorted(_target_keywords(to))}")
    if kwargs.get("backend", "auto") not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {kwargs['backend']!r}")
    kw = {k: v for k, v in kwargs.items() if k not in ("dim", "backend")
          and not (isinstance(v, torch.Tensor) and v.numel() > 1)}
    with torch.no_grad():
        (_lif_fn.lif if to == "lif" else _rev_fn.rev_lif)(torch.zeros(1, 1, 2), None,
                                                           backend="torch", **kw)


def _input_shapes(model: nn.Module, names: list[str], example_input: Any) -> dict:
    """Shapes of the first input each named module sees in one no-grad forward of a copy of
    the model (the model itself, and its neurons' states, stay untouched)."""
    # a state left by a training forward has autograd history, which deepcopy refuses: the
    # copy gets it detached (the model's own tensors stay as they are)
    memo = {id(t): t.detach().clone() for m in model.modules() for v in vars(m).values()
            for t in (v.values() if isinstance(v, dict) else (v,))  # SpikingJelly's _memories
            if isinstance(t, torch.Tensor) and not t.is_leaf}
    twin = copy.deepcopy(model, memo)
    mods = dict(twin.named_modules(remove_duplicate=False))
    shapes: dict = {}

    def hook(name):
        def record(_, args):
            if args and isinstance(args[0], torch.Tensor):
                shapes.setdefault(name, args[0].shape)
        return record
    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names if n in mods]
    try:
        with torch.no_grad():
            twin(*example_input) if isinstance(example_input, tuple) else twin(example_input)
    finally:
        for h in handles:
            h.remove()
    return shapes


def convert(model: nn.Module, to: str = "lif", *, strict: bool = False,
            example_input: Any = None, **overrides: Any) -> ConversionReport:
    """Replace, in place, the neurons of a SpikingJelly, snnTorch or Norse model by revsnn
    layers (module docstring: the mappings and where they differ).

    Args:
        model: any ``nn.Module``; its neuron modules are replaced where they sit (a module
            shared by several parents is replaced by one shared revsnn module).
        to: ``"lif"`` (:class:`revsnn.LIF`, computes what the source neuron computes) or
            ``"revlif"`` (:class:`revsnn.RevLIF`, the reversible node: far less memory kept for
            backward, but a different network to train).
        strict: raise ValueError (model untouched) if any neuron would be left in place.
        example_input: for ``to="revlif"``: an input (a tuple for several arguments) that
            ``model`` accepts; one no-grad forward pass of a copy of the model finds each
            neuron's channel count, and a neuron whose input has an odd channel count (the
            reversible node splits channels into two halves) is left in place. Without it such
            a neuron raises a ValueError naming the odd dim at its first forward.
        overrides: keywords of the target layer applied to every converted neuron (e.g.
            ``backend="torch"``, ``surrogate="atan"``, for revlif ``alpha=0.5``). An override
            also resolves a source option that has no counterpart (a surrogate revsnn lacks).

    Returns:
        a :class:`ConversionReport`: ``replaced`` (name, source, target, notes) and ``left``
        (name, source, reason).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, got {to!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    _check_keywords(to, overrides)
    sources = _sources()
    report = ConversionReport(to)
    if _plan_for(model, to, sources) is not None:
        report.left.append(Left("<model>", type(model).__name__, "the model itself is a neuron: "
                                "wrap it in a container (e.g. nn.Sequential) to convert it"))

    slots: dict[int, list] = {}  # id(neuron) -> every (parent, attribute, dotted name) it fills
    plans: dict[int, _Plan] = {}
    seen: set = set()

    def visit(module: nn.Module, prefix: str) -> None:
        for attr, child in module._modules.items():
            if child is None:
                continue
            key, name = id(child), prefix + attr
            if key in plans:
                slots[key].append((module, attr, name))
            elif key not in seen:
                seen.add(key)
                plan = _plan_for(child, to, sources)
                if plan is None:
                    visit(child, name + ".")
                else:
                    plans[key], slots[key] = plan, [(module, attr, name)]
    visit(model, "")

    shapes = {}
    if to == "revlif" and example_input is not None:
        shapes = _input_shapes(model, [slots[i][0][2] for i in plans], example_input)

    todo = []
    for key, plan in plans.items():
        names = ", ".join(n for _, _, n in slots[key])
        reasons = list(plan.blockers)
        notes = list(plan.notes)
        kw = dict(plan.kwargs)
        for k, why in plan.problems.items():
            if k in overrides:
                notes.append(f"{why}; converted with the override {k}={overrides[k]!r}")
            else:
                reasons.append(why)
        if "surrogate" in overrides and "surrogate_alpha" not in overrides:
            kw.pop("surrogate_alpha", None)
        kw.update(overrides)
        shape = shapes.get(slots[key][0][2])
        if shape is not None:
            reason = _odd_split(shape, plan.step_input, kw.get("dim", 2))
            if reason:
                reasons.append(reason)
        if not reasons:
            try:
                new = plan.build(to, kw)
                if isinstance(new, _Node):  # revsnn's layers check their own at construction
                    new.check_values()
            except (ValueError, TypeError) as e:
                reasons.append(str(e))
        if reasons:
            report.left.append(Left(names, plan.source, "; ".join(reasons)))
        else:
            todo.append((key, new))
            report.replaced.append(Replaced(names, plan.source, _describe(new), tuple(notes)))

    if strict and report.left:
        raise ValueError("revsnn.convert(strict=True): the model was not changed, because "
                         "these neurons cannot be converted:\n"
                         + "\n".join(f"  {lf.name}: {lf.source}: {lf.reason}"
                                     for lf in report.left))
    for key, new in todo:
        for parent, attr, _ in slots[key]:
            setattr(parent, attr, new)
    # SpikingJelly's reset_net caches each net's resettable modules
    invalidate = getattr(_sj("functional"), "invalidate_reset_cache", None)
    if todo and invalidate is not None:
        invalidate(model)
    return report


def _odd_split(shape: torch.Size, step_input: bool, dim: int) -> Optional[str]:
    """Why the reversible node cannot take inputs of this shape (what it would raise)."""
    full = (1, *shape) if step_input else tuple(shape)  # a step runs as T = 1
    try:
        layout_of(full, dim)
    except ValueError as e:
        x = f" (one step: x of shape {full})" if step_input else ""
        return f"input of shape {tuple(shape)}{x}: {e}"
    return None


def _describe(m: nn.Module) -> str:
    return f"{type(m).__name__}({m.extra_repr()})"


# -- multistep ------------------------------------------------------------------------------------
def multistep(model: nn.Module, x_seq: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """Run a step-wise converted network over a time-first input in one call.

    ``model(x_t)`` computes one time step (``x_t``: ``[B, *]``), as a network of snnTorch
    ``Leaky`` / Norse cells / single-step SpikingJelly nodes written for a loop over time does.
    ``multistep`` calls it once on ``x_seq.flatten(0, 1)`` (``[T*B, *]``): the layers between
    neurons process all steps as one batch, and every converted neuron adapter runs its revsnn
    node over all T steps at once, from rest -- one kernel launch each, and for
    ``to="revlif"`` the reversible node's memory win, with gradients through all T steps.

    The layers between neurons must treat the samples of a batch independently (convolutions,
    linear layers, pooling, ...; a BatchNorm in training normalises over T*B, as SpikingJelly's
    multi-step containers do; a reshape must use ``x.shape[0]``, not a fixed batch size).
    Neurons' potentials handed back inside the network (snnTorch's ``mem``) are the final
    potentials ``[B, *]``, not a trajectory.

    Args:
        model: a network converted by :func:`convert` holding step adapters.
        x_seq: ``[T, B, *]``. Further arguments go to ``model`` unchanged.
    Returns:
        the model's output, every tensor in it (also inside tuples, lists, dicts) whose first
        dim is T*B viewed as ``[T, B, *]``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x_seq, torch.Tensor) or x_seq.dim() < 2:
        raise ValueError("x_seq must be a tensor [T, B, *] (rank >= 2), got "
                         + (f"rank {x_seq.dim()}" if isinstance(x_seq, torch.Tensor)
                            else type(x_seq).__name__))
    steppers = [m for m in model.modules() if isinstance(m, _Stepwise) and m.stepwise]
    if not steppers:
        raise ValueError("model holds no step-wise revsnn adapter: convert it first with "
                         "revsnn.convert (multi-step models take [T, B, *] as they are)")
    T, B = x_seq.shape[:2]
    for m in steppers:
        m.reset()
        m._steps = T
    try:
        out = model(x_seq.flatten(0, 1), *args, **kwargs)
    finally:
        for m in steppers:
            m._steps = None
    return _unfold(out, T, B)


def _unfold(out: Any, T: int, B: int) -> Any:
    if isinstance(out, torch.Tensor):
        return out.unflatten(0, (T, B)) if out.dim() and out.shape[0] == T * B else out
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(_unfold(o, T, B) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_unfold(o, T, B) for o in out)
    if isinstance(out, dict):
        return {k: _unfold(v, T, B) for k, v in out.items()}
    return out


# ``revsnn.convert`` is this module's function once the package exports it: the helpers ride on
# it, so that ``revsnn.convert.multistep(...)`` reads as documented.
convert.multistep = multistep  # type: ignore[attr-defined]
convert.ConversionReport = ConversionReport  # type: ignore[attr-defined]
