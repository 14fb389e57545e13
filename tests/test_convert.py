"""revsnn.convert: small conv SNNs from SpikingJelly, snnTorch and Norse, converted in place.

to="lif": the converted model computes what the original computed (forward bit-equal, gradients
to float32 rounding). to="revlif": it trains and keeps less for backward. Plus the report,
strict, overrides, the step adapters and revsnn.convert.multistep, and bad input."""
import copy
import importlib
import math
import sys
import warnings
from collections import namedtuple

import pytest
import torch
from torch import nn

import revsnn
from revsnn.convert import (SNNTORCH_SUBTRACT, ConversionReport, SnnTorchLeaky,
                            SpikingJellyNode, multistep)
from revsnn.memory import KeptBytes
from revsnn.nn import reset_neurons

from .conftest import dyadic
from .test_parity import (assert_close_rel, needs_norse, needs_sj, needs_snn, norse, rand, sj,
                          snn)

T, B, HW = 6, 3, 6


def frame(seed=0, channels=2, grad=True, steps=T):
    """Input ``[T, B, C, H, W]`` that makes the first layer fire."""
    return rand((steps, B, channels, HW, HW), 1.0, 0.5, seed, grad=grad)


def excite(model):
    """Stronger weights and a positive bias, so that every neuron layer fires (~5-40 %)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4.0)
                m.bias.add_(0.5)
    return model


def converted_copy(original, to="lif", **kwargs):
    """A converted deep copy of ``original`` (torch twin for to="lif") and the report."""
    model = copy.deepcopy(original)
    if to == "lif":
        kwargs.setdefault("backend", "torch")
    return model, revsnn.convert(model, to=to, **kwargs)


def converted_all(original, names, to="lif", **kwargs):
    """:func:`converted_copy`, asserting that exactly the neurons ``names`` were replaced."""
    model, report = converted_copy(original, to, **kwargs)
    assert [r.name for r in report.replaced] == names and not report.left
    return model, report


def grads(model, x, out):
    """Gradients of a fixed random projection of ``out`` w.r.t. x and every parameter."""
    g = rand(out.shape, seed=99)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad((out * g).sum(), [x] + params)


def assert_same_model(original, converted, run, seed=0):
    """Forward bit-equal (and firing), backward within 1e-6 of each gradient's scale."""
    x = frame(seed)
    ref, out = run(original, x), run(converted, x)
    assert torch.equal(out, ref) and ref.mean() > 0.02
    for a, b in zip(grads(converted, x, out), grads(original, x, ref)):
        assert a.shape == b.shape
        assert_close_rel(a, b, rel=1e-6)


# -- SpikingJelly --------------------------------------------------------------------------------
def sj_net(step_mode="m"):
    L, N, S = sj.layer, sj.neuron, sj.surrogate
    torch.manual_seed(0)
    return excite(nn.Sequential(
        L.Conv2d(2, 4, 3, padding=1, step_mode=step_mode),
        N.LIFNode(tau=2.0, step_mode=step_mode),
        L.Conv2d(4, 6, 3, padding=1, step_mode=step_mode),
        N.ParametricLIFNode(init_tau=2.0, v_reset=None, surrogate_function=S.ATan(),
                            detach_reset=True, step_mode=step_mode),
        L.Flatten(step_mode=step_mode),
        L.Linear(6 * HW * HW, 4, step_mode=step_mode),
        N.LIFNode(tau=4.0, decay_input=False, v_threshold=0.5, step_mode=step_mode)))


def run_sj(model, x):
    sj.functional.reset_net(model)
    out = model(x)
    sj.functional.reset_net(model)
    return out


def run_sj_steps(model, x):
    sj.functional.reset_net(model)
    out = torch.stack([model(xt) for xt in x])
    sj.functional.reset_net(model)
    return out


@needs_sj
def test_spikingjelly_to_lif_is_the_same_model():
    original = sj_net()
    converted, _ = converted_all(original, ["1", "3", "6"])
    assert isinstance(converted[1], revsnn.LIF) and isinstance(converted[6], revsnn.LIF)
    # the learnable w is the model's own Parameter, still learned: tau = 1/sigmoid(w)
    assert isinstance(converted[3], SpikingJellyNode) and converted[3].w is not None
    assert_same_model(original, converted, run_sj)
    # state is kept between calls and reset_net clears it, as SpikingJelly's nodes do
    x = frame(1, grad=False)
    a, b = converted(x[:3]), converted(x[3:])
    assert torch.equal(torch.cat([a, b]), run_sj(original, x))


@needs_sj
@pytest.mark.parametrize("cls,exact,other", [("SuperSpike", 1.0, 2.0), ("SoftSign", 2.0, 1.0)])
def test_spikingjelly_fast_sigmoid_forms_at_their_one_alpha(cls, exact, other):
    """SpikingJelly's SuperSpike, alpha/(1 + |z|)^2, and SoftSign, alpha/(2(1 + alpha|z|)^2), are
    fast_sigmoid at their default alphas (1 and 2); at another alpha the factor in front is no
    revsnn surrogate: left, with the reason."""
    def net(alpha):
        torch.manual_seed(0)
        sf = getattr(sj.surrogate, cls)(alpha)
        return excite(nn.Sequential(
            sj.layer.Conv2d(2, 4, 3, padding=1, step_mode="m"),
            sj.neuron.LIFNode(surrogate_function=sf, step_mode="m")))
    assert getattr(sj.surrogate, cls)().alpha == exact  # the default
    original = net(exact)
    converted, _ = converted_all(original, ["1"])
    assert converted[1].kwargs["surrogate"] == "fast_sigmoid"
    assert converted[1].kwargs["surrogate_alpha"] == exact
    assert_same_model(original, converted, run_sj)
    assert_left(net(other), "1", "spikingjelly LIFNode",
                f"surrogate_function {cls}(alpha={other}) is ")


@needs_sj
@pytest.mark.parametrize("v_reset", [0.0, None])
def test_spikingjelly_if_node_is_the_same_model(v_reset):
    """IFNode (V + X) becomes revsnn.LIF(tau=inf): bit-equal, hard or soft reset, multi-step
    and step by step; to="revlif" takes tau=inf too."""
    L, N = sj.layer, sj.neuron
    for mode, run in (("m", run_sj), ("s", run_sj_steps)):
        torch.manual_seed(0)
        original = excite(nn.Sequential(L.Conv2d(2, 4, 3, padding=1, step_mode=mode),
                                        N.IFNode(v_reset=v_reset, step_mode=mode),
                                        L.Conv2d(4, 4, 3, padding=1, step_mode=mode),
                                        N.IFNode(v_reset=v_reset, step_mode=mode)))
        converted, _ = converted_all(original, ["1", "3"])
        assert math.isinf(converted[1].tau if mode == "m" else converted[1].kwargs["tau"])
        assert_same_model(original, converted, run)
    report = revsnn.convert(nn.Sequential(N.IFNode(step_mode="m")), to="revlif")
    assert not report.left and "tau=inf" in report.replaced[0].target


@needs_sj
def test_spikingjelly_single_step_nodes_keep_working():
    original = sj_net("s")
    converted, report = converted_copy(original)
    assert len(report.replaced) == 3
    assert all(isinstance(converted[i], SpikingJellyNode) for i in (1, 3, 6))
    assert_same_model(original, converted, run_sj_steps)
    # the step-wise network also runs over the whole sequence in one call per neuron
    x = frame(2, grad=False)
    assert torch.equal(multistep(converted, x), run_sj_steps(original, x))
    # and SpikingJelly's own switch to multi-step mode reaches the adapters
    for model in (original, converted):
        sj.functional.set_step_mode(model, "m")
    assert converted[1].step_mode == "m"
    assert torch.equal(run_sj(converted, x), run_sj(original, x))


# -- snnTorch ------------------------------------------------------------------------------------
class SnnTorchNet(nn.Module):
    """snnTorch tutorial style: the forward loops over time, passing ``mem`` explicitly."""

    def __init__(self, reset="zero", beta2=None):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * HW * HW, 4)
        self.lif1 = snn.Leaky(beta=0.5, reset_mechanism=reset)
        beta2 = torch.tensor([0.5, 0.75, 0.875, 0.5, 0.75, 0.875]).view(6, 1, 1) \
            if beta2 is None else beta2
        self.lif2 = snn.Leaky(beta=beta2, learn_beta=True, threshold=0.8,
                              spike_grad=snn.surrogate.sigmoid(slope=4.0),
                              reset_mechanism=reset)
        self.lif3 = snn.Leaky(beta=0.75, learn_threshold=True, reset_mechanism=reset,
                              reset_delay=False)
        excite(self)

    def forward(self, x):
        mem1, mem2, mem3 = self.lif1.init_leaky(), self.lif2.init_leaky(), self.lif3.init_leaky()
        out = []
        for xt in x:
            spk1, mem1 = self.lif1(self.conv1(xt), mem1)
            spk2, mem2 = self.lif2(self.conv2(spk1), mem2)
            spk3, mem3 = self.lif3(self.fc(spk2.flatten(1)), mem3)
            out.append(spk3)
        return torch.stack(out)


def snntorch_seq():
    """snnTorch Sequential style (init_hidden=True): one call per time step."""
    torch.manual_seed(0)
    return excite(nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), snn.Leaky(beta=0.5, init_hidden=True,
                                                 reset_mechanism="zero"),
        nn.Conv2d(4, 6, 3, padding=1), snn.Leaky(beta=0.75, init_hidden=True,
                                                 reset_mechanism="zero"),
        nn.Flatten(), nn.Linear(6 * HW * HW, 4),
        snn.Leaky(beta=0.875, init_hidden=True, output=True, reset_mechanism="zero")))


def run_snntorch_seq(model, x):
    for m in model.modules():
        if hasattr(m, "reset_mem"):
            m.reset_mem()
    return torch.stack([model(xt)[0] for xt in x])


@needs_snn
def test_snntorch_to_lif_is_the_same_model():
    """'zero' reset, per-channel learnable beta (one value per conv channel: dim -3), learnable
    threshold, immediate reset: all exact; the step loop with explicit mem is unchanged."""
    original = SnnTorchNet()
    converted, report = converted_all(original, ["lif1", "lif2", "lif3"])
    assert all(not r.notes for r in report.replaced)
    assert converted.lif2.kwargs["dim"] == -3
    assert {n for n, _ in converted.named_parameters()} == \
        {n for n, _ in original.named_parameters()}
    assert_same_model(original, converted, lambda m, x: m(x))
    # a learnable beta is kept, not copied: an optimizer that holds it goes on updating it
    beta = original.lif2.beta
    revsnn.convert(original)
    assert original.lif2.beta is beta


@needs_snn
def test_snntorch_sequential_and_multistep():
    original = snntorch_seq()
    converted, _ = converted_copy(original)
    assert all(isinstance(converted[i], SnnTorchLeaky) for i in (1, 3, 6))
    assert_same_model(original, converted, run_snntorch_seq)
    x = frame(3)
    ref = run_snntorch_seq(original, x)
    out, mem = multistep(converted, x)  # output=True: (spk, mem); mem is the final potential
    assert torch.equal(out, ref) and mem.shape == (B, 4)
    # the Linear layer rounds a batch of T*B rows a little differently from T batches of B
    for a, b in zip(grads(converted, x, out), grads(original, x, ref)):
        assert_close_rel(a, b, rel=1e-5)


@needs_snn
def test_snntorch_subtract_reset_is_replaced_with_a_note():
    model = SnnTorchNet(reset="subtract")
    report = revsnn.convert(model, to="lif")
    notes = {r.name: r.notes for r in report.replaced}
    assert notes["lif1"] == (SNNTORCH_SUBTRACT,) and notes["lif2"] == (SNNTORCH_SUBTRACT,)
    assert "below 2*threshold" in notes["lif3"][0]  # reset_delay=False
    assert "note: snnTorch's 'subtract' reset" in str(report)


# -- Norse ---------------------------------------------------------------------------------------
class NorseNet(nn.Module):
    """A Norse cell network stepped in a loop, ending in Norse's sequence LIF."""

    def __init__(self, method="tanh"):
        super().__init__()
        torch.manual_seed(0)
        box = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(0.5), method=method,
                                     alpha=torch.tensor(2.0))
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.cell1 = norse.LIFBoxCell(box, dt=1.0)
        self.cell2 = norse.LIFCell(norse.LIFParameters(
            tau_syn_inv=torch.tensor(1.0), tau_mem_inv=torch.tensor(0.25),
            v_th=torch.tensor(0.6), method=method, alpha=torch.tensor(2.0)), dt=1.0)
        self.fc = nn.Linear(6 * HW * HW, 4)
        self.lif = norse.LIF(norse.LIFParameters(
            tau_syn_inv=torch.tensor(1000.0), tau_mem_inv=torch.tensor(500.0),
            v_th=torch.tensor(0.3), method=method, alpha=torch.tensor(2.0)))
        excite(self)

    def forward(self, x):
        s1 = s2 = None
        hidden = []
        for xt in x:
            z1, s1 = self.cell1(self.conv1(xt), s1)
            z2, s2 = self.cell2(self.conv2(z1), s2)
            hidden.append(self.fc(z2.flatten(1)))
        z, _ = self.lif(torch.stack(hidden))
        return z


@needs_norse
@pytest.mark.parametrize("method,surrogate", [("tanh", ("sigmoid", 4.0)),
                                              ("super", ("fast_sigmoid", 1.0))])
def test_norse_to_lif_is_the_same_model(method, surrogate):
    """Norse's default surrogate, "super" (its alpha left out by Norse 1.1), is fast_sigmoid."""
    original = NorseNet(method=method)
    converted, _ = converted_all(original, ["cell1", "cell2", "lif"])
    assert {(m.kwargs["surrogate"], m.kwargs["surrogate_alpha"])
            for m in (converted.cell1, converted.cell2, converted.lif)} == {surrogate}
    assert_same_model(original, converted, lambda m, x: m(x))


@needs_norse
@pytest.mark.parametrize("form,alpha", [(lambda z, a: (1 + a * z.abs()) ** -2, 2.0),
                                        (lambda z, a: a * (1 + z.abs()) ** -2, None),
                                        (lambda z, a: torch.exp(-z.abs()), None)],
                         ids=["with-alpha", "scaled", "other"])
def test_norse_super_is_read_off_its_gradient(monkeypatch, form, alpha):
    """A Norse whose "super" took its alpha (2 here) would convert with that alpha; a gradient
    of another form is left in place, not given a wrong surrogate."""
    class Super(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, a):
            ctx.save_for_backward(z)
            ctx.a = a
            return (z > 0).to(z.dtype)

        @staticmethod
        def backward(ctx, g):
            return g * form(ctx.saved_tensors[0], float(ctx.a)), None
    real = norse.functional.threshold.threshold
    monkeypatch.setattr(norse.functional.threshold, "threshold",
                        lambda z, method, a: Super.apply(z, a) if method == "super"
                        else real(z, method, a))
    model = nn.Sequential(norse.LIFBoxCell(norse.LIFBoxParameters(
        method="super", alpha=torch.tensor(2.0))))
    report = revsnn.convert(model, to="lif")
    if alpha is None:
        assert not report.replaced and "method='super'" in report.left[0].reason
    else:
        assert model[0].kwargs["surrogate"] == "fast_sigmoid"
        assert model[0].kwargs["surrogate_alpha"] == alpha


@needs_norse
def test_norse_super_probe_that_fails_leaves_the_module(monkeypatch):
    def threshold(z, method, alpha, extra):  # a Norse with another signature
        raise AssertionError("not called with this signature")
    monkeypatch.setattr(norse.functional.threshold, "threshold", threshold)
    assert_left(nn.Sequential(norse.LIFBoxCell()), "0", "norse LIFBoxCell",
                "is revsnn's fast_sigmoid, but its gradient could not be read (TypeError: ")


@needs_norse
@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_norse_super_converts_in_inference_and_no_grad_mode(mode):
    model = nn.Sequential(norse.LIFBoxCell())
    with mode():
        report = revsnn.convert(model, to="lif")
    assert [r.name for r in report.replaced] == ["0"] and not report.left
    assert (model[0].kwargs["surrogate"], model[0].kwargs["surrogate_alpha"]) == (
        "fast_sigmoid", 1.0)


@needs_norse
def test_norse_surrogate_without_counterpart_needs_an_override():
    model = NorseNet(method="triangle")
    report = revsnn.convert(model, to="lif")
    assert not report.replaced and len(report.left) == 3
    assert all("method='triangle'" in lf.reason for lf in report.left)
    report = revsnn.convert(model, to="lif", surrogate="atan")
    assert len(report.replaced) == 3 and not report.left
    assert all("override surrogate='atan'" in r.notes[0] for r in report.replaced)
    assert model(frame(4, grad=False)).shape == (T, B, 4)


@needs_norse
def test_norse_two_state_lif_is_left_with_the_reason():
    cell = norse.LIFCell()  # dt*tau_syn_inv = 0.2: a synaptic current that outlasts a step
    report = revsnn.convert(nn.Sequential(cell), to="lif", surrogate="atan")
    assert not report.replaced and "dt*tau_syn_inv = 0.2" in report.left[0].reason


# -- to="revlif" ---------------------------------------------------------------------------------
def train(model, run, steps=8, seed=0):
    """A few Adam steps on a fixed batch of a 4-class problem; the losses."""
    x = frame(seed, grad=False)
    target = torch.arange(B) % 4
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        logits = run(model, x).mean(0)
        loss = nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def kept_bytes(model, run):
    """Bytes kept for backward by one forward pass (each storage counted once)."""
    x = frame(5, grad=False)
    with KeptBytes() as kept:
        run(model, x)
    return kept.bytes()


def assert_keeps_less_and_trains(original, run_original, model, run):
    """``model`` keeps under 60 % of what ``original`` keeps for backward, and a few Adam steps
    cut its loss by more than 20 %."""
    before, after = kept_bytes(original, run_original), kept_bytes(model, run)
    assert after < 0.6 * before, (before, after)
    losses = train(model, run)
    assert losses[-1] < 0.8 * losses[0], losses


@needs_sj
def test_spikingjelly_to_revlif_trains_and_keeps_less():
    original = sj_net()
    model, report = converted_all(original, ["1", "3", "6"], "revlif",
                                  example_input=frame(grad=False))
    assert isinstance(model[1], revsnn.RevLIF) and isinstance(model[6], revsnn.RevLIF)
    assert isinstance(model[3], SpikingJellyNode) and model[3].w is not None  # tau learned
    assert "train or fine-tune" in str(report)
    assert_keeps_less_and_trains(original, run_sj, model, run_sj)


@needs_snn
def test_snntorch_to_revlif_multistep_trains_and_keeps_less():
    """A step-wise network converted to revlif: step by step it warns (gradients truncated at
    each step) and computes the same forward as multistep, which runs each node over all T
    steps in one call, trains and keeps less than the original's step loop."""
    original = snntorch_seq()
    # the last Leaky sees 4 features: even; convert all three
    model, _ = converted_all(original, ["1", "3", "6"], "revlif",
                             example_input=frame(grad=False)[0])

    def run_multi(m, x):
        return multistep(m, x)[0]
    # in float64, where batching T*B rows or B rows rounds the same (the node's input grid is
    # 2**-16), stepping and multistep give the same outputs bit for bit
    m64, x = copy.deepcopy(model).double(), frame(6).double()
    with pytest.warns(UserWarning, match="truncated at every step"):
        stepped = run_snntorch_seq(m64, x)
    assert torch.equal(run_multi(m64, x), stepped)
    assert_keeps_less_and_trains(original, run_snntorch_seq, model, run_multi)


@needs_sj
def test_revlif_odd_channels_left_with_example_input():
    L, N = sj.layer, sj.neuron
    model = nn.Sequential(L.Conv2d(2, 5, 3, padding=1, step_mode="m"), N.LIFNode(step_mode="m"),
                          L.Conv2d(5, 4, 3, padding=1, step_mode="m"), N.LIFNode(step_mode="m"))
    x = frame(grad=False)
    report = revsnn.convert(copy.deepcopy(model), to="revlif", example_input=x)
    assert [r.name for r in report.replaced] == ["3"]
    assert report.left[0].name == "1"
    assert "x.shape[2] (the split dim) must be even" in report.left[0].reason
    assert "(6, 3, 5, 6, 6)" in report.left[0].reason
    with pytest.raises(ValueError, match="1: spikingjelly LIFNode: input of shape"):
        revsnn.convert(copy.deepcopy(model), to="revlif", strict=True, example_input=x)
    # without example_input the odd node is converted and says so at its first forward
    revsnn.convert(model, to="revlif")
    with pytest.raises(ValueError, match="must be even"):
        model(x)


@needs_sj
def test_example_input_after_a_training_forward():
    """A forward that autograd recorded leaves SpikingJelly's v with history, which deepcopy
    refuses; the shapes are still found, and the model's own state is left as it was."""
    L, N = sj.layer, sj.neuron
    model = nn.Sequential(L.Conv2d(2, 4, 3, padding=1, step_mode="m"), N.LIFNode(step_mode="m"))
    x = frame()
    model(x).sum().backward()
    v = model[1].v
    assert v.grad_fn is not None
    report = revsnn.convert(model, to="revlif", example_input=x.detach())
    assert [r.name for r in report.replaced] == ["1"] and not report.left


@needs_sj
def test_spikingjelly_set_step_mode_single_step_refused_by_revlif():
    """RevLIF is multi-step only: SpikingJelly's set_step_mode(net, "s") raises on it rather
    than leaving it to read [B, C, H, W] as [T, B, ...]."""
    L, N = sj.layer, sj.neuron
    model = nn.Sequential(L.Conv2d(2, 4, 3, padding=1, step_mode="m"), N.LIFNode(step_mode="m"))
    revsnn.convert(model, to="revlif")
    assert model[1].step_mode == "m"
    sj.functional.set_step_mode(model, "m")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SpikingJelly warns: RevLIF is not its StepModule
        with pytest.raises(ValueError, match="RevLIF runs multi-step only"):
            sj.functional.set_step_mode(model, "s")


@needs_norse
def test_norse_learnable_parameters():
    """A learnable v_th (one value) stays the optimizer's Parameter; a learnable tau_mem_inv
    would become a constant, so the neuron is left with the reason."""
    v_th = nn.Parameter(torch.tensor(0.4))
    cell = norse.LIFBoxCell(norse.LIFBoxParameters(
        tau_mem_inv=torch.tensor(0.5), v_th=v_th, method="tanh", alpha=torch.tensor(2.0)))
    model = nn.Sequential(nn.Linear(3, 4), cell)
    report = revsnn.convert(model, to="lif", backend="torch")
    assert [r.name for r in report.replaced] == ["1"]
    assert model[1].v_threshold is v_th and any(p is v_th for p in model.parameters())
    z, _ = model[1](torch.rand(5, 3) * 4, None)
    z.sum().backward()
    assert v_th.grad is not None and v_th.grad.abs() > 0
    learnt = norse.LIFBoxCell(norse.LIFBoxParameters(
        tau_mem_inv=nn.Parameter(torch.tensor(0.5)), method="tanh", alpha=torch.tensor(2.0)))
    report = revsnn.convert(nn.Sequential(learnt), to="lif")
    assert "learnable tau_mem_inv" in report.left[0].reason


# -- report, strict, overrides, bad input --------------------------------------------------------
@needs_sj
@needs_snn
def test_report_names_what_was_left_and_strict_leaves_the_model_alone():
    S, N = sj.surrogate, sj.neuron
    shared = snn.Leaky(beta=0.5)
    model = nn.Sequential(N.LIFNode(step_mode="m"),
                          N.LIFNode(step_mode="m", surrogate_function=S.PiecewiseQuadratic()),
                          N.LIFNode(step_mode="m", store_v_seq=True),
                          snn.Synaptic(alpha=0.9, beta=0.8),
                          nn.Sequential(shared), shared, nn.ReLU())
    before = [type(m) for m in model]
    with pytest.raises(ValueError, match="strict=True") as err:
        revsnn.convert(model, to="lif", strict=True)
    assert "PiecewiseQuadratic" in str(err.value) and "Synaptic" in str(err.value)
    assert [type(m) for m in model] == before
    report = revsnn.convert(model, to="lif")
    assert isinstance(report, ConversionReport)
    assert [r.name for r in report.replaced] == ["0", "4.0, 5"]
    assert model[5] is model[4][0] and isinstance(model[5], SnnTorchLeaky)
    left = {lf.name: lf.reason for lf in report.left}
    assert set(left) == {"1", "2", "3"}
    assert "PiecewiseQuadratic" in left["1"] and "store_v_seq" in left["2"]
    assert left["3"] == "no revsnn counterpart"
    text = str(report)
    assert text.startswith("revsnn.convert(to='lif'): 2 replaced, 3 left in place")
    assert "left     3: snntorch Synaptic: no revsnn counterpart" in text


@needs_sj
def test_subclass_and_model_itself():
    class MyLIF(sj.neuron.LIFNode):
        pass
    report = revsnn.convert(nn.Sequential(MyLIF(step_mode="m")))
    assert "a subclass of LIFNode" in report.left[0].reason
    report = revsnn.convert(sj.neuron.LIFNode(step_mode="m"))
    assert report.left[0].name == "<model>" and "wrap it" in report.left[0].reason


@needs_sj
def test_overrides_apply_to_every_converted_node():
    model = sj_net()
    report = revsnn.convert(model, to="lif", surrogate="atan", backend="torch")
    assert model[1].kwargs["surrogate"] == "atan" and model[1].kwargs["surrogate_alpha"] is None
    assert model[3].kwargs["surrogate"] == "atan"
    assert len(report.replaced) == 3
    model = sj_net()
    revsnn.convert(model, to="revlif", alpha=0.5, tau=3.0)
    assert isinstance(model[3], revsnn.RevLIF)  # a fixed tau in place of the learnable one
    assert model[3].kwargs["alpha"] == 0.5 and model[3].tau == 3.0


def test_no_peer_modules_no_change():
    model = nn.Sequential(nn.Linear(3, 4), revsnn.LIF(), nn.ReLU())
    report = revsnn.convert(model)
    assert not report.replaced and not report.left
    assert "0 replaced, 0 left in place" in str(report)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(model="net"), TypeError, "model must be a torch.nn.Module"),
    (dict(to="rev"), ValueError, "to must be one of"),
    (dict(strict=1), TypeError, "strict must be a bool"),
    (dict(taus=2.0), TypeError, r"unknown keyword\(s\) \['taus'\]"),
    (dict(alpha=0.5), TypeError, r"unknown keyword\(s\) \['alpha'\] for revsnn.LIF"),
    (dict(tau=0.5), ValueError, "tau must be > 1"),
    (dict(to="revlif", beta1=0.3), ValueError, "beta1"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
])
def test_bad_input(kwargs, exc, match):
    model = kwargs.pop("model", nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(exc, match=match):
        revsnn.convert(model, **kwargs)


def test_multistep_bad_input():
    with pytest.raises(TypeError, match="model must be"):
        multistep("net", torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"x_seq must be a tensor \[T, B, \*\]"):
        multistep(nn.Identity(), torch.zeros(3))
    with pytest.raises(ValueError, match="no step-wise revsnn adapter"):
        multistep(nn.Sequential(revsnn.LIF()), torch.zeros(2, 2, 2))
    assert revsnn.convert.multistep is multistep


@needs_snn
def test_snntorch_adapter_signature():
    """init_hidden refuses mem, as snnTorch does; the explicit-mem revlif adapter hands back a
    float potential and resumes exactly from the state behind it."""
    m = nn.Sequential(snn.Leaky(beta=0.5, init_hidden=True))
    revsnn.convert(m)
    with pytest.raises(TypeError, match="init_hidden"):
        m[0](torch.zeros(2, 4), torch.zeros(2, 4))
    m = nn.Sequential(snn.Leaky(beta=0.5, reset_mechanism="zero"))
    revsnn.convert(m, to="revlif")
    x = frame(7, channels=4, grad=False)[:, :, :, 0, 0]  # [T, B, 4]
    mem, spikes = m[0].init_leaky(), []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no gradient recorded: no warning
        for xt in x:
            y, mem = m[0](xt, mem)
            spikes.append(y)
    assert mem.dtype == torch.float32 and mem.shape == (B, 4)
    y_all, st = revsnn.functional.rev_lif(x, tau=2.0, decay_input=False, v_reset=0.0,
                                          surrogate="atan", surrogate_alpha=2.0,
                                          detach_reset=True)
    assert torch.equal(torch.stack(spikes), y_all) and torch.equal(mem, st.v)


@needs_sj
def test_convert_invalidates_spikingjelly_reset_cache():
    """reset_net caches a net's resettable modules: after convert it must reset the new ones."""
    model = nn.Sequential(sj.layer.Linear(4, 4), sj.neuron.LIFNode(tau=2.0, step_mode="m"))
    sj.functional.reset_net(model)  # fills SpikingJelly's cache with the LIFNode
    old = model[1]  # still referenced elsewhere: the cache entry stays alive
    revsnn.convert(model, to="lif", backend="torch")
    assert model[1] is not old
    model(torch.randn(3, 2, 4))
    assert model[1].v is not None
    sj.functional.reset_net(model)
    assert model[1].v is None


@needs_snn
def test_multistep_leaves_the_step_adapters_stepping():
    """After multistep, the same model runs one step at a time again as before."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), snn.Leaky(beta=0.8, init_hidden=True,
                                                     reset_mechanism="zero"))
    revsnn.convert(model, to="lif", backend="torch")
    x = torch.randn(4, 2, 4) * 2

    def loop():
        reset_neurons(model)
        return torch.stack([model(xt) for xt in x])
    before = loop()
    assert before.sum() > 0
    seq = multistep(model, x)
    assert torch.equal(seq, before)
    assert torch.equal(loop(), before)


@needs_snn
def test_snntorch_learned_beta_above_one_is_clamped_as_snntorch_does():
    """snnTorch clamps beta to [0, 1] at every step: a learnable beta pushed above 1 acts as
    1 (no leak), not as a growing potential."""
    torch.manual_seed(0)
    original = snn.Leaky(beta=1.25, learn_beta=True, reset_mechanism="zero", threshold=2.0)
    model = nn.Sequential(original)
    report = revsnn.convert(model, to="lif", backend="torch")
    assert len(report.replaced) == 1
    x = torch.rand(8, 3, 5) * 0.6
    outs = []
    for node in (original, model[0]):
        mem = node.init_leaky()
        spikes = []
        for xt in x:
            spk, mem = node(xt, mem)
            spikes.append(spk)
        outs.append(torch.stack(spikes))
    assert outs[0].sum() > 0
    assert torch.equal(outs[0], outs[1])


@needs_norse
def test_norse_lif_state_handed_back_continues_the_sequence():
    """``z, s = lif(x1); lif(x2, s)`` continues from s (to="lif": a float potential [B, *])."""
    p = norse.LIFParameters(tau_syn_inv=torch.tensor(1000.0), tau_mem_inv=torch.tensor(250.0),
                            v_th=torch.tensor(0.5), method="tanh", alpha=torch.tensor(2.0))
    model = nn.Sequential(norse.LIF(p))
    report = revsnn.convert(model, to="lif", backend="torch")
    assert len(report.replaced) == 1
    lif = model[0]
    x = torch.rand(8, 2, 6) * 1.5
    whole, _ = lif(x)
    z1, s = lif(x[:4])
    z2, _ = lif(x[4:], s)
    assert whole.sum() > 0
    assert torch.equal(torch.cat([z1, z2]), whole)


@needs_norse
def test_norse_value_reset_needs_v_leak_equal_v_reset():
    p = norse.LIFBoxParameters(tau_mem_inv=torch.tensor(0.5), v_leak=torch.tensor(0.0),
                               v_reset=torch.tensor(0.5), method="tanh",
                               alpha=torch.tensor(2.0))
    report = revsnn.convert(nn.Sequential(norse.LIFBoxCell(p, dt=1.0)), to="lif")
    assert not report.replaced
    assert "v_leak=0.0 != v_reset=0.5" in report.left[0].reason


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.lif = sj.neuron.LIFNode(step_mode="m")

    def forward(self, a, b):
        return self.lif(self.conv(a.flatten(0, 1)).unflatten(0, a.shape[:2]) + b)


@needs_sj
def test_example_input_tuple_is_several_arguments():
    model = _TwoInputs()
    a, b = torch.rand(3, 2, 2, 4, 4), torch.rand(3, 2, 4, 4, 4)
    report = revsnn.convert(model, to="revlif", example_input=(a, b))
    assert [r.name for r in report.replaced] == ["lif"] and not report.left


@needs_snn
def test_example_input_of_a_step_network_counts_the_channels_of_one_step():
    """A Leaky stepped on [B, C, H, W]: the reversible node sees [1, B, C, H, W], so the split
    dim is C (odd here), not H."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), snn.Leaky(beta=0.5, init_hidden=True))
    report = revsnn.convert(model, to="revlif", example_input=torch.rand(3, 2, 6, 6))
    assert not report.replaced and len(report.left) == 1
    assert "one step: x of shape (1, 3, 5, 6, 6)" in report.left[0].reason


@needs_sj
def test_example_input_checked_along_the_overridden_dim():
    model = nn.Sequential(sj.neuron.LIFNode(step_mode="m"))
    x = torch.rand(3, 2, 5, 4)  # dim 2 odd, the last dim even
    report = revsnn.convert(model, to="revlif", example_input=x, dim=-1)
    assert [r.name for r in report.replaced] == ["0"] and not report.left
    assert model(x).shape == x.shape


@needs_snn
def test_tau_override_replaces_a_learnable_beta():
    """tau= overrides snnTorch's beta also when beta is learnable (the kept beta would
    otherwise set tau at every call)."""
    nodes = []
    for learn in (True, False):
        model = nn.Sequential(snn.Leaky(beta=0.5, learn_beta=learn, reset_mechanism="zero"))
        revsnn.convert(model, to="lif", tau=3.0, backend="torch")
        nodes.append(model[0])
    x = torch.rand(6, 2, 4) * 0.8
    runs = []
    for node in nodes:
        mem, out = node.init_leaky(), []
        for xt in x:
            spk, mem = node(xt, mem)
            out.append(mem)
        runs.append(torch.stack(out))
    assert torch.equal(runs[0], runs[1])


@needs_norse
def test_norse_cell_state_carries_a_zero_current():
    """The converted LIFCell hands back Norse's state class with v the potential and i zero
    (no synaptic current is carried from step to step)."""
    cell = norse.LIFCell(norse.LIFParameters(
        tau_syn_inv=torch.tensor(1.0), tau_mem_inv=torch.tensor(0.25), v_th=torch.tensor(0.6),
        method="tanh", alpha=torch.tensor(2.0)), dt=1.0)
    model = nn.Sequential(cell)
    report = revsnn.convert(model, to="lif", backend="torch")
    assert len(report.replaced) == 1
    _, s = model[0](torch.rand(3, 4) + 0.2)
    assert s.v.abs().sum() > 0
    assert torch.equal(s.i, torch.zeros_like(s.v))


# -- neurons left in place: configurations revsnn cannot reproduce ------------------------------
def assert_left(model, name, source, reason, to="lif", **kwargs):
    """``convert`` leaves ``model.<name>`` where it is and names it with ``reason`` (replacing
    nothing); ``strict=True`` raises naming it, the model untouched."""
    node = model.get_submodule(name)
    with pytest.raises(ValueError, match="strict=True") as err:
        revsnn.convert(model, to=to, strict=True, **kwargs)
    assert f"{name}: {source}: " in str(err.value) and reason in str(err.value)
    assert model.get_submodule(name) is node
    report = revsnn.convert(model, to=to, **kwargs)
    assert model.get_submodule(name) is node and not report.replaced
    assert [(lf.name, lf.source) for lf in report.left] == [(name, source)]
    assert reason in report.left[0].reason
    assert f"left     {name}: {source}: " in str(report)
    return report


def _sj_precision():
    node = sj.neuron.LIFNode(step_mode="m")
    # what SpikingJelly's precision.prepare_model_for_precision sets on each multi-step node
    # (its public entry point needs CUDA; on CPU the node refuses to run with it)
    node._neuron_precision = (torch.bfloat16, "fp32", "fp32")
    with pytest.raises(RuntimeError, match="requires CUDA"):
        node(torch.rand(2, 1, 3))
    return node


def _sj_tensor(attr):
    """A per-neuron v_threshold / v_reset put on a node after construction (its constructor
    asserts floats). SpikingJelly's own kernel refuses it too; convert must leave it, not read
    it as some number (or a v_reset as None: a soft reset)."""
    node = sj.neuron.LIFNode(step_mode="m")
    setattr(node, attr, torch.tensor([0.5, 0.25]))
    with pytest.raises(RuntimeError, match="Expected a value of type"):
        node(torch.rand(2, 1, 2))
    sj.functional.reset_net(node)
    return node


def _sj_store_v_seq():
    node = sj.neuron.LIFNode(step_mode="m", store_v_seq=True)
    node(torch.rand(4, 2, 3))
    assert node.v_seq.shape == (4, 2, 3)  # the trajectory revsnn does not record
    sj.functional.reset_net(node)
    return node


def snn_steps(node, x):
    """snnTorch ``Leaky`` with explicit ``mem`` over ``x`` ``[T, B, *]``: spikes and mems."""
    mem, spikes, mems = node.init_leaky(), [], []
    for xt in x:
        spk, mem = node(xt, mem)
        spikes.append(spk)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


def _snn_checked(check, **kwargs):
    """A ``Leaky`` built with ``kwargs``, whose run on a fixed input ``x`` passes ``check(x,
    spikes, mems)``: the option really does what the reason says."""
    def build():
        node = snn.Leaky(**{"beta": 0.9, "reset_mechanism": "zero", **kwargs})
        if check is not None:
            x = dyadic((6, 4, 3), 0, lo=0.2, hi=0.8)  # positive: every neuron charges
            check(x, *snn_steps(node, x))
        return node
    return build


def _quant(**kw):
    return importlib.import_module("snntorch.functional.quant").state_quant(**kw)


def _no_reset(_, spikes, mems):
    # a non-spiking integrator: the potential never drops, it only leaks by beta
    assert spikes.sum() > 0 and (mems[1:] >= 0.9 * mems[:-1]).all()


def _one_winner(_, spikes, __):
    # inhibition: only the largest potential of each sample may fire at a step
    assert spikes.sum() > 0 and spikes.sum(-1).max() == 1


def _graded(_, spikes, __):
    assert set(spikes.unique().tolist()) == {0.0, 2.0}


def _on_grid(_, __, mems):
    # 4-bit state quantisation: the potential lives on a few levels
    assert 1 < mems.unique().numel() <= 16


def _memoryless(x, spikes, mems):
    # beta clamped to 0: the potential is this step's input alone (revsnn's tau would be 1)
    assert spikes.sum() == 0 and torch.equal(mems, x)


def _middle_memoryless(x, spikes, mems):
    # beta [0.5, 0, 0.5]: the middle neuron alone forgets (x < threshold: it never fires)
    assert spikes[..., 1].sum() == 0 and torch.equal(mems[..., 1], x[..., 1])
    assert not torch.equal(mems[..., 0], x[..., 0])


def _per_element(x, spikes, mems):
    # snnTorch runs a [4, 3] parameter neuron by neuron; revsnn takes one value per channel
    assert spikes.shape == x.shape and 0 < spikes.mean() < 1
    with pytest.raises(ValueError, match="one value per channel"):
        revsnn.LIF(tau=torch.full((4, 3), 2.0))(x.unsqueeze(2))


def _norse_box(**kw):
    return norse.LIFBoxCell(norse.LIFBoxParameters(
        **{"tau_mem_inv": torch.tensor(0.5), "method": "tanh", "alpha": torch.tensor(2.0),
           **kw}), dt=1.0)


def _norse_memoryless():
    """dt*tau_mem_inv = 1: the potential is the input alone, whatever it was before."""
    cell, x = _norse_box(tau_mem_inv=torch.tensor(1.0)), dyadic((2, 3), 0)
    _, s = cell(x + 1.0)
    assert s.v.abs().sum() > 0
    assert torch.equal(cell(x, s)[1].v, cell(x)[1].v)
    return cell


def _norse_recording():
    lif = norse.LIF(norse.LIFParameters(
        tau_syn_inv=torch.tensor(1000.0), tau_mem_inv=torch.tensor(500.0), method="tanh",
        alpha=torch.tensor(2.0)), record_states=True)
    assert lif(dyadic((4, 2, 3), 0))[1].v.shape == (4, 2, 3)  # one state per step
    return lif


def _reset_halfway(z, v, reset, th):
    """A user's reset method (Norse takes any callable): halfway to v_reset."""
    return v - z * (v - reset) / 2


LEFT = [
    # (peer module, source, reason substring); the builders also check, where cheap, that the
    # peer really behaves as the reason says
    pytest.param(lambda: _sj_tensor("v_threshold"), "spikingjelly LIFNode",
                 "v_threshold / v_reset are not plain numbers", marks=needs_sj,
                 id="sj-tensor-threshold"),
    # without the blocker v_reset would read as None, a soft reset: a silent wrong conversion
    pytest.param(lambda: _sj_tensor("v_reset"), "spikingjelly LIFNode",
                 "v_threshold / v_reset are not plain numbers", marks=needs_sj,
                 id="sj-tensor-reset"),
    pytest.param(_sj_store_v_seq, "spikingjelly LIFNode", "store_v_seq=True: revsnn records",
                 marks=needs_sj, id="sj-store_v_seq"),
    pytest.param(_sj_precision, "spikingjelly LIFNode", "an explicit neuron precision is set",
                 marks=needs_sj, id="sj-precision"),
    pytest.param(_snn_checked(_one_winner, inhibition=True, threshold=0.5), "snntorch Leaky",
                 "inhibition=True: no revsnn counterpart", marks=needs_snn, id="snn-inhibition"),
    pytest.param(lambda: _snn_checked(_on_grid, state_quant=_quant(num_bits=4))(),
                 "snntorch Leaky", "state_quant is set: no revsnn counterpart", marks=needs_snn,
                 id="snn-state_quant"),
    pytest.param(_snn_checked(_graded, graded_spikes_factor=2.0), "snntorch Leaky",
                 "graded_spikes_factor != 1", marks=needs_snn, id="snn-graded"),
    # learnable: 1 now, any magnitude after a step of training
    pytest.param(_snn_checked(None, learn_graded_spikes_factor=True), "snntorch Leaky",
                 "graded_spikes_factor != 1", marks=needs_snn, id="snn-graded-learnable"),
    pytest.param(_snn_checked(_no_reset, reset_mechanism="none"), "snntorch Leaky",
                 "reset_mechanism='none' (a non-spiking integrator)", marks=needs_snn,
                 id="snn-no-reset"),
    pytest.param(_snn_checked(_memoryless, beta=0.0, threshold=2.0), "snntorch Leaky",
                 "beta <= 0: no membrane memory", marks=needs_snn, id="snn-beta-zero"),
    pytest.param(_snn_checked(_memoryless, beta=-0.5, threshold=2.0), "snntorch Leaky",
                 "beta <= 0: no membrane memory", marks=needs_snn, id="snn-beta-negative"),
    pytest.param(_snn_checked(_middle_memoryless, beta=torch.tensor([0.5, 0.0, 0.5])),
                 "snntorch Leaky", "beta <= 0 somewhere", marks=needs_snn,
                 id="snn-beta-zero-per-neuron"),
    pytest.param(_snn_checked(_memoryless, beta=0.0, learn_beta=True, threshold=2.0),
                 "snntorch Leaky", "beta <= 0 somewhere", marks=needs_snn,
                 id="snn-beta-zero-learnable"),
    pytest.param(_snn_checked(_per_element, beta=torch.linspace(0.25, 0.875, 12).view(4, 3)),
                 "snntorch Leaky", "beta varies along more than one axis", marks=needs_snn,
                 id="snn-beta-2d"),
    pytest.param(_snn_checked(_per_element, threshold=torch.linspace(0.5, 1.5, 12).view(4, 3)),
                 "snntorch Leaky", "threshold varies along more than one axis",
                 marks=needs_snn, id="snn-threshold-2d"),
    # one beta per row of a [4, 3] step, one threshold per column: two axes, one dim= at most
    pytest.param(_snn_checked(None, beta=torch.tensor([0.5, 0.75, 0.875, 0.5]).view(4, 1),
                              threshold=torch.tensor([0.5, 1.0, 1.5])),
                 "snntorch Leaky", "beta and threshold vary along different axes",
                 marks=needs_snn, id="snn-different-axes"),
    pytest.param(_norse_memoryless, "norse LIFBoxCell",
                 "dt*tau_mem_inv must be one number in (0, 1) (revsnn's tau = 1/(dt*tau_mem_inv) "
                 "> 1), got 1.0", marks=needs_norse, id="norse-no-memory"),
    pytest.param(lambda: _norse_box(tau_mem_inv=torch.tensor([0.5, 0.25])), "norse LIFBoxCell",
                 "dt*tau_mem_inv must be one number in (0, 1) (revsnn's tau = 1/(dt*tau_mem_inv) "
                 "> 1), got a tensor", marks=needs_norse, id="norse-per-neuron-tau"),
    pytest.param(lambda: _norse_box(v_th=torch.tensor([0.5, 0.75])), "norse LIFBoxCell",
                 "per-neuron v_leak / v_th / v_reset", marks=needs_norse,
                 id="norse-per-neuron-threshold"),
    pytest.param(lambda: _norse_box(reset_method=_reset_halfway), "norse LIFBoxCell",
                 "reset_method _reset_halfway has no revsnn counterpart", marks=needs_norse,
                 id="norse-custom-reset"),
    pytest.param(_norse_recording, "norse LIF",
                 "record_states=True: revsnn records no state sequence", marks=needs_norse,
                 id="norse-record_states"),
]


@pytest.mark.parametrize("build,source,reason", LEFT)
@pytest.mark.parametrize("to", ["lif", "revlif"])
def test_unconvertible_neuron_is_left_and_named(build, source, reason, to):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # snnTorch warns that inhibition is unstable
        node = build()
    assert_left(nn.Sequential(nn.Identity(), node), "1", source, reason, to=to)


@needs_snn
@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_snntorch_beta_at_least_one_is_an_if_neuron(beta):
    """snnTorch clamps beta to 1: no leak at all, the IF neuron (tau = inf) of both revsnn
    nodes; to="lif" computes what snnTorch computed, bit for bit."""
    x = dyadic((4, 2, 3), 0, lo=0.0, hi=1.0)
    node = snn.Leaky(beta=beta, threshold=10.0, reset_mechanism="zero")
    assert torch.equal(snn_steps(node, x)[1], x.cumsum(0))  # a pure sum: dyadic, exact
    for to in ("lif", "revlif"):
        model = nn.Sequential(snn.Leaky(beta=beta, threshold=0.7, reset_mechanism="zero"))
        ref = snn_steps(model[0], x * 0.8)
        report = revsnn.convert(model, to=to)
        assert [r.name for r in report.replaced] == ["0"] and not report.left
        assert isinstance(model[0], SnnTorchLeaky) and model[0].kwargs["tau"] == math.inf
        if to == "lif":  # the spikes (the mem handed back is the one after the reset)
            out = snn_steps(model[0], x * 0.8)
            assert ref[0].sum() > 0 and torch.equal(out[0], ref[0])


@needs_snn
@pytest.mark.parametrize("kwargs,reason", [
    (dict(surrogate_disable=True), "surrogate_disable=True (no surrogate gradient)"),
    (dict(spike_grad=snn.surrogate.triangular() if snn else None),
     "spike_grad 'triangular.<locals>.inner' has no revsnn counterpart (revsnn has atan, "
     "sigmoid and fast_sigmoid)"),
], ids=["surrogate_disable", "triangular"])
def test_snntorch_surrogate_without_counterpart_needs_an_override(kwargs, reason):
    """A gradient revsnn cannot give leaves the neuron, unless surrogate= picks one (then the
    replacement says which)."""
    node = snn.Leaky(beta=0.5, reset_mechanism="zero", **kwargs)
    if "surrogate_disable" in kwargs:  # snnTorch's bypass: a step with no gradient at all
        x = torch.full((2, 3), 2.0, requires_grad=True)
        spk, _ = node(x, node.init_leaky())
        assert spk.sum() > 0 and not spk.requires_grad
    model = nn.Sequential(node)
    assert_left(model, "0", "snntorch Leaky", reason)
    report = revsnn.convert(model, to="lif", surrogate="sigmoid")
    assert [r.name for r in report.replaced] == ["0"] and not report.left
    assert report.replaced[0].notes == (f"{reason}; converted with the override "
                                        f"surrogate='sigmoid'",)
    assert model[0].kwargs["surrogate"] == "sigmoid"


@needs_norse
def test_norse_subtract_reset_needs_no_leak_potential():
    """Norse's reset_subtract is revsnn's soft reset, whose LIF leaks towards 0: exact with
    v_leak = 0 (same spikes and potentials step by step), left with any other v_leak."""
    reset_subtract = importlib.import_module("norse.torch.functional.reset").reset_subtract
    x = rand((T, B, 5), 1.0, 0.5, seed=1)  # not on a grid: no potential lands on v_th
    original = _norse_box(reset_method=reset_subtract, v_th=torch.tensor(0.5))
    model = nn.Sequential(copy.deepcopy(original))
    report = revsnn.convert(model, to="lif", backend="torch")
    assert [r.name for r in report.replaced] == ["0"] and model[0].kwargs["v_reset"] is None
    runs = []
    for cell in (original, model[0]):
        s, zs, vs = None, [], []
        for xt in x:
            z, s = cell(xt, s)
            zs.append(z)
            vs.append(s.v)
        runs.append((torch.stack(zs), torch.stack(vs)))
    assert runs[0][0].sum() > 0
    assert torch.equal(runs[1][0], runs[0][0]) and torch.equal(runs[1][1], runs[0][1])
    # with v_leak = 0.25 Norse's potential drifts from 0 towards 0.25 without input
    leaky = _norse_box(reset_method=reset_subtract, v_leak=torch.tensor(0.25))
    rest = sys.modules["norse.torch.functional.lif_box"].LIFBoxFeedForwardState(torch.zeros(2))
    assert leaky(torch.zeros(2), rest)[1].v.eq(0.125).all()
    assert_left(nn.Sequential(leaky), "0", "norse LIFBoxCell",
                "soft reset with v_leak=0.25: revsnn's soft-reset LIF leaks towards 0")


@pytest.mark.parametrize("build,source", [
    pytest.param(lambda: sj.neuron.LIFNode(v_threshold=100.0, step_mode="m"),
                 "spikingjelly LIFNode", marks=needs_sj, id="spikingjelly"),
    pytest.param(lambda: snn.Leaky(beta=0.5, threshold=100.0, reset_mechanism="zero"),
                 "snntorch Leaky", marks=needs_snn, id="snntorch"),
    # kept as tensors (read at every call): checked by value once, as RevLIF's constructor
    # checks its tensors; unchecked, the node would flag every state and run on to NaN
    pytest.param(lambda: snn.Leaky(beta=0.5, threshold=100.0, learn_threshold=True,
                                   reset_mechanism="zero"),
                 "snntorch Leaky", marks=needs_snn, id="snntorch-learnable"),
    pytest.param(lambda: snn.Leaky(beta=0.5, threshold=torch.tensor([1.0] * 5 + [100.0]),
                                   reset_mechanism="zero"),
                 "snntorch Leaky", marks=needs_snn, id="snntorch-per-neuron"),
    pytest.param(lambda: _norse_box(v_th=nn.Parameter(torch.tensor(100.0))),
                 "norse LIFBoxCell", marks=needs_norse, id="norse-learnable"),
])
def test_what_revsnn_refuses_to_build_is_left_with_its_error(build, source):
    """A configuration the mapping accepts but the target layer refuses is left, the layer's
    own error as the reason: the reversible node keeps thresholds as fixed-point words
    (|v_threshold| <= 64); the peers, and revsnn.LIF (to="lif" converts it), take any float."""
    node = build()
    reason = "v_threshold must be finite and in [-64.0, 64.0], got 100.0"
    assert_left(nn.Sequential(node), "0", source, reason, to="revlif")
    with pytest.raises(ValueError, match=r"v_threshold must be finite and in \[-64.0, 64.0\]"):
        revsnn.RevLIF(v_threshold=100.0)
    model = nn.Sequential(node)
    report = revsnn.convert(model, to="lif")
    assert [r.name for r in report.replaced] == ["0"] and model[0] is not node


@pytest.mark.parametrize("build,source", [
    pytest.param(lambda: sj.neuron.LIFNode(step_mode="m",
                                           surrogate_function=sj.surrogate.Sigmoid(alpha=0.0)),
                 "spikingjelly LIFNode", marks=needs_sj, id="spikingjelly"),
    pytest.param(lambda: snn.Leaky(beta=0.5, spike_grad=snn.surrogate.atan(alpha=0.0)),
                 "snntorch Leaky", marks=needs_snn, id="snntorch"),
])
def test_surrogate_of_width_zero_is_left_for_its_alpha(build, source):
    """A surrogate revsnn has, with alpha 0 (no gradient at all): left, and the reason is the
    alpha, not the surrogate's kind."""
    assert_left(nn.Sequential(build()), "0", source,
                "surrogate_alpha must be a positive float, got 0.0")


@needs_sj
def test_derived_values_are_checked_for_the_reversible_node_only():
    """A ParametricLIFNode whose sigmoid(w) rounds to 1 has tau = 1 (no memory): revsnn.LIF
    computes that in float, as SpikingJelly does (bit-equal), so to="lif" converts it; the
    reversible node's fixed point needs tau > 1, so to="revlif" leaves it, saying where the 1
    comes from. On meta tensors there is no value to check."""
    def plif():
        node = sj.neuron.ParametricLIFNode(step_mode="m")
        with torch.no_grad():
            node.w.fill_(20.0)
        return node
    original = nn.Sequential(plif())
    converted, _ = converted_all(original, ["0"])
    x = frame(2, channels=3, grad=False)
    ref = run_sj(original, x)
    assert torch.equal(run_sj(converted, x), ref) and ref.sum() > 0
    assert_left(nn.Sequential(plif()), "0", "spikingjelly ParametricLIFNode",
                "tau=1/sigmoid(w), tau must be finite and > 1.0, got 1.0", to="revlif")
    on_meta = nn.Sequential(plif()).to("meta")
    assert [r.name for r in revsnn.convert(on_meta, to="revlif").replaced] == ["0"]


@needs_norse
def test_norse_state_class_missing_leaves_the_cell(monkeypatch):
    """A Norse release without the feed-forward state class the adapter hands back (norse
    1.1.0 has it: removed here) leaves the cell rather than failing at its first call."""
    monkeypatch.delattr(sys.modules["norse.torch.functional.lif_box"], "LIFBoxFeedForwardState")
    assert_left(nn.Sequential(_norse_box()), "0", "norse LIFBoxCell",
                "Norse's state class was not found", surrogate="atan")


@needs_sj
def test_a_removed_child_module_is_skipped():
    """``model.head = None`` keeps the slot in ``_modules`` with None in it."""
    model = nn.Sequential(sj.neuron.LIFNode(step_mode="m"))
    model.head = nn.Linear(2, 2)
    model.head = None
    model.tail = sj.neuron.LIFNode(step_mode="m")
    assert "head" in model._modules and model._modules["head"] is None
    report = revsnn.convert(model, to="lif", backend="torch")
    assert [r.name for r in report.replaced] == ["0", "tail"] and not report.left
    assert isinstance(model.tail, revsnn.LIF) and model.head is None


@needs_sj
def test_spikingjelly_adapter_refuses_an_unknown_step_mode():
    """As SpikingJelly's own nodes do, also through its set_step_mode; the mode is unchanged."""
    model = nn.Sequential(sj.neuron.LIFNode(step_mode="s"))
    with pytest.raises(ValueError, match="step_mode can only be"):
        model[0].step_mode = "t"
    revsnn.convert(model, to="lif", backend="torch")
    node = model[0]
    assert isinstance(node, SpikingJellyNode)
    with pytest.raises(ValueError, match="step_mode must be 's' or 'm', got 't'"):
        node.step_mode = "t"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the adapter is not SpikingJelly's StepModule
        with pytest.raises(ValueError, match="step_mode must be 's' or 'm'"):
            sj.functional.set_step_mode(model, "multi")
    assert node.step_mode == "s" and not node.multi_step


Out = namedtuple("Out", "spikes mem tag")


class _StructuredStep(nn.Module):
    """A step network (Linear -> Leaky) whose forward returns the spikes ``[B, 6]``, the
    potential and a non-tensor tag in a namedtuple, a list or a dict (the dict nesting a
    list)."""

    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.fc = nn.Linear(4, 6)
        self.lif = snn.Leaky(beta=0.75, init_hidden=True, output=True, reset_mechanism="zero")

    def forward(self, x):
        spk, mem = self.lif(self.fc(x))
        if self.kind == "namedtuple":
            return Out(spk, mem, "lif")
        if self.kind == "list":
            return [spk, mem, "lif"]
        return {"spikes": spk, "more": [mem], "tag": "lif"}


def _fields(out):
    """(spikes, mem, tag) of a :class:`_StructuredStep` output."""
    if isinstance(out, dict):
        return out["spikes"], out["more"][0], out["tag"]
    return tuple(out)


@needs_snn
@pytest.mark.parametrize("kind", ["namedtuple", "list", "dict"])
def test_multistep_unfolds_structured_outputs(kind):
    """multistep views every [T*B, *] tensor of the output as [T, B, *], keeps the container
    types and leaves the rest (the final potential [B, *], a string) as it is: the same values
    as running the network step by step."""
    model = _StructuredStep(kind).double()  # float64: T*B rows or B rows round the same
    revsnn.convert(model, to="lif", backend="torch")
    x = dyadic((T, B, 4), 0, lo=0.0, hi=2.0).double()
    reset_neurons(model)
    steps = [model(xt) for xt in x]
    out = multistep(model, x)
    assert type(out) is type(steps[0])
    if kind == "dict":
        assert set(out) == {"spikes", "more", "tag"} and type(out["more"]) is list
    spikes, mem, tag = _fields(out)
    ref = torch.stack([_fields(s)[0] for s in steps])
    assert spikes.shape == (T, B, 6) and mem.shape == (B, 6) and tag == "lif"
    assert 0 < ref.mean() < 1
    assert torch.equal(spikes, ref) and torch.equal(mem, _fields(steps[-1])[1])
