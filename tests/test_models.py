"""Model zoo: documented parameter counts, seeds, encodings, neuron reset, reversible memory."""
import copy
import re

import pytest
import torch
from torch import nn

from revsnn import models
from revsnn.nn import LIF, RevSequential, reset_neurons

from .test_blocks import kept_bytes
from .test_train import _one_thread  # noqa: F401  (autouse fixture)

BUILDERS = {
    "spiking_vgg11": (models.spiking_vgg11, {}),
    "spiking_vgg16": (models.spiking_vgg16, {}),
    "spiking_resnet18": (models.spiking_resnet18, {}),
    "spiking_resnet19": (models.spiking_resnet19, {}),
    "spiking_mlp": (models.spiking_mlp, {}),
    "convnet8": (models.convnet8, {}),
}


def documented_counts():
    """{builder: (count reversible=False, count reversible=True)} from the module's table."""
    rows = re.findall(r"``(\w+)``\s+\S+\s+([\d,]+)\s+([\d,]+)", models.__doc__)
    return {name: (int(a.replace(",", "")), int(b.replace(",", ""))) for name, a, b in rows}


def test_parameter_counts_match_docs():
    table = documented_counts()
    assert set(table) == set(BUILDERS)
    for name, (build, kw) in BUILDERS.items():
        for neuron in models.NEURONS:
            for i, rev in enumerate((False, True)):
                with torch.device("meta"):
                    n = models.count_parameters(build(neuron=neuron, reversible=rev, **kw))
                assert n == table[name][i], (name, neuron, rev, n)
        # the builder's own docstring quotes the same two numbers
        doc = build.__doc__.replace(",", "")
        assert str(table[name][0]) in doc and str(table[name][1]) in doc, name


def test_reversible_variants_use_reversible_blocks():
    for name, (build, kw) in BUILDERS.items():
        with torch.device("meta"):
            plain, rev = build(reversible=False, **kw), build(reversible=True, **kw)
        assert not any(isinstance(m, RevSequential) for m in plain.modules()), name
        assert any(isinstance(m, RevSequential) for m in rev.modules()), name


SMALL = {
    "vgg11": (lambda **k: models.spiking_vgg11(width=8, **k), (2, 3, 32, 32)),
    "mlp": (lambda **k: models.spiking_mlp(hidden=16, **k), (3, 64)),
    "convnet8": (lambda **k: models.convnet8(width=8, **k), (3, 1, 8, 8)),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_weights_for_both_neurons(name):
    build, _ = SMALL[name]
    sd = {}
    for neuron in models.NEURONS:
        torch.manual_seed(7)
        sd[neuron] = build(neuron=neuron, reversible=True).state_dict()
    a, b = sd.values()
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(8)
    other = build(neuron="lif", reversible=True).state_dict()
    assert not all(torch.equal(a[k], other[k]) for k in a)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("neuron", models.NEURONS)
@pytest.mark.parametrize("reversible", [False, True])
def test_forward_backward(name, neuron, reversible):
    build, shape = SMALL[name]
    torch.manual_seed(0)
    net = build(neuron=neuron, reversible=reversible, T=3)
    x = torch.rand(shape)
    out = net(x)
    assert out.shape == (shape[0], 10)
    torch.nn.functional.cross_entropy(out, torch.arange(shape[0]) % 10).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("build", [models.spiking_resnet18, models.spiking_resnet19,
                                   lambda **k: models.spiking_vgg16(width=8, **k)])
def test_cifar_networks_run(build):
    torch.manual_seed(0)
    net = build(neuron="revlif", reversible=True, T=1, num_classes=5)
    out = net(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 5)
    out.sum().backward()


def test_repeat_encoding_and_reset_each_call():
    torch.manual_seed(0)
    net = models.convnet8(width=8, neuron="revlif", reversible=True, T=4).eval()
    x = torch.rand(3, 1, 8, 8)
    y_static = net(x)
    y_again = net(x)  # a new sequence: neurons were reset, same answer
    y_time_first = net(x.unsqueeze(0).repeat(4, 1, 1, 1, 1))
    assert torch.equal(y_static, y_again)
    assert torch.equal(y_static, y_time_first)
    assert net.encode(x).shape == (4, 3, 1, 8, 8)


def test_reset_function():
    net = models.spiking_mlp(hidden=8, neuron="revlif")
    net.body(torch.rand(2, 3, 64))
    states = [m.state for m in net.modules() if hasattr(m, "state")]
    assert states and all(s is not None for s in states)
    models.reset(net)
    assert all(m.state is None for m in net.modules() if hasattr(m, "state"))


def test_reversible_keeps_less():
    x = torch.rand(8, 1, 8, 8)
    sizes = {}
    for rev in (False, True):
        torch.manual_seed(0)
        sizes[rev], _ = kept_bytes(models.convnet8(neuron="revlif", reversible=rev, T=4), x)
    assert sizes[True] < 0.8 * sizes[False]


def test_global_pool_is_the_adaptive_pool_without_its_cuda_atomics():
    """The ResNets pool with a mean (AdaptiveAvgPool2d's CUDA backward is nondeterministic,
    which a resumed run on a GPU would inherit) and get the same numbers."""
    x = torch.randn(6, 10, 4, 4, requires_grad=True)
    assert torch.equal(models.GlobalAvgPool()(x), torch.nn.AdaptiveAvgPool2d(1)(x))
    (g,) = torch.autograd.grad(models.GlobalAvgPool()(x).square().sum(), x)
    (ref,) = torch.autograd.grad(torch.nn.AdaptiveAvgPool2d(1)(x).square().sum(), x)
    assert torch.allclose(g, ref, rtol=0, atol=1e-7)
    for build in (models.spiking_resnet18, models.spiking_resnet19):
        net = build(reversible=True)
        assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in net.modules())
        assert any(isinstance(m, models.GlobalAvgPool) for m in net.modules())


def test_bad_arguments():
    with pytest.raises(ValueError, match="width=7 must be even for neuron='revlif'"):
        models.convnet8(width=7, neuron="revlif")
    with pytest.raises(ValueError, match="multiple of 4"):
        models.convnet8(width=6, neuron="revlif", reversible=True)
    with pytest.raises(ValueError, match="even for reversible=True"):
        models.spiking_mlp(hidden=7, neuron="lif", reversible=True)
    with pytest.raises(ValueError, match="neuron must be one of"):
        models.spiking_mlp(neuron="izhikevich")
    with pytest.raises(ValueError, match="T must be an int >= 1"):
        models.spiking_mlp(T=0)
    with pytest.raises(ValueError, match="depth must be"):
        models.spiking_mlp(depth=0)
    with pytest.raises(ValueError, match="neuron must be one of"):
        models.make_neuron("izhikevich")
    for bad in (0, 8.0, True):
        with pytest.raises(ValueError, match=f"hidden must be a positive int, got {bad!r}"):
            models.spiking_mlp(hidden=bad)
    with pytest.raises(ValueError, match="StepBias was built for 4 steps, got T=5"):
        models.StepBias(4, 3)(torch.zeros(5, 2, 3))
    net = models.spiking_mlp(hidden=8)
    with pytest.raises(ValueError, match="rank 2 or"):
        net(torch.zeros(2, 3, 4, 64))


def test_mlp_positions_must_be_an_int():
    with pytest.raises(ValueError, match="positions"):
        models.spiking_mlp(positions=True)


def test_vgg_stem_stays_ordinary_when_the_input_has_its_width():
    """A first layer as wide as the input would otherwise be a reversible chain on the raw
    image, not on spikes."""
    model = models.spiking_vgg11(in_channels=16, width=16, neuron="revlif", reversible=True)
    assert not isinstance(model.body[0], RevSequential)
    assert any(isinstance(m, RevSequential) for m in model.body)


class _StepIndex(nn.Module):
    """A readout giving step t the value t: [T, B, F] -> [T, B, 10]."""

    def forward(self, h):
        T, B = h.shape[:2]
        return torch.arange(T, dtype=h.dtype).view(T, 1, 1).expand(T, B, 10)


def test_readout_is_the_mean_over_time():
    net = models.spiking_mlp(hidden=8, T=5)
    net.head = _StepIndex()
    out = net(torch.rand(3, 64))
    assert out.shape == (3, 10) and torch.equal(out, torch.full((3, 10), 2.0))


def test_basic_block_adds_its_shortcut():
    torch.manual_seed(0)
    block = models.BasicBlock(4, 4, 1, "lif", {})
    with torch.no_grad():  # the residual branch silenced: what is left is sn(x)
        bn = block.conv2[1]
        bn.weight.zero_()
        bn.bias.zero_()
    x = 3 * torch.rand(3, 2, 4, 5, 5)
    y = block(x)
    assert y.sum() > 0 and torch.equal(y, LIF()(x))
    wider = models.BasicBlock(4, 8, 1, "lif", {})  # stride 1, more channels: a projection
    assert isinstance(wider.shortcut, models.PerStep)
    assert wider(x).shape == (3, 2, 8, 5, 5)


def test_step_bias_on_a_shorter_sequence():
    sb = models.StepBias(8, 3)
    with torch.no_grad():
        sb.bias.copy_(torch.randn(8, 1, 3))
    x = torch.randn(4, 2, 3)
    assert torch.equal(sb(x), x + sb.bias[:4])
    assert torch.equal(models.StepBias(4, 3)(x), x)  # as many steps as positions
    net = models.spiking_mlp(in_features=1, positions=8, hidden=8, T=4)
    assert net(torch.rand(4, 2, 1)).shape == (2, 10)


def test_pixel_sequence_mlp_normalises_with_batch_statistics():
    net = models.spiking_mlp(in_features=1, positions=8, hidden=8)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(not m.track_running_stats and m.running_mean is None for m in bns)
    plain = models.spiking_mlp(hidden=8)
    assert all(m.track_running_stats for m in plain.modules() if isinstance(m, nn.BatchNorm1d))


def test_reversible_revlif_takes_multiples_of_four_and_depth_two():
    models.convnet8(width=4, neuron="revlif", reversible=True)
    models.spiking_mlp(hidden=12, neuron="revlif", reversible=True)
    net = models.spiking_mlp(hidden=8, depth=2, reversible=True)
    chains = [m for m in net.modules() if isinstance(m, RevSequential)]
    assert len(chains) == 1 and len(chains[0]) == 1


def test_count_parameters_counts_the_trainable_ones():
    net = models.spiking_mlp(hidden=8)
    n = models.count_parameters(net)
    net.head[0].weight.requires_grad_(False)
    assert models.count_parameters(net) == n - net.head[0].weight.numel()


def _compiled_against_eager(backend, rtol, neuron="revlif", reversible=True, **compile_kw):
    """A convnet8 under torch.compile (dynamic shapes allowed: the second batch has another
    size) against the same model eager: outputs, losses and every gradient."""
    torch.manual_seed(0)
    net = models.convnet8(num_classes=10, in_channels=1, width=8, neuron=neuron,
                          reversible=reversible)
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, backend=backend, **compile_kw)
    for batch in (8, 6):
        x = torch.randn(4, batch, 1, 8, 8)
        y = torch.randint(0, 10, (batch,))
        outs, losses = [], []
        for model, run in ((net, compiled), (eager, eager)):
            outs.append(run(x))
            loss = nn.functional.cross_entropy(outs[-1], y)
            loss.backward()
            reset_neurons(model)
            losses.append(loss.detach())
        torch.testing.assert_close(outs[0], outs[1], rtol=rtol,
                                   atol=rtol * float(outs[1].abs().max()))
        torch.testing.assert_close(losses[0], losses[1], rtol=rtol, atol=0)
        for a, b in zip(net.parameters(), eager.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=rtol * b.grad.abs().max())


def _recorder(graphs):
    """A torch.compile backend without codegen: dynamo's graphs, kept and run as captured."""
    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    return record


def test_compiled_reversible_net_keeps_its_chains_eager():
    """The reversible chains (and the layer that hands its output to one) run as eager regions
    inside a compiled model: the same numbers as eager, in a few graphs. Traced, they broke
    into 34 graphs here, recompiling their helpers at every new tensor (and the graphs that
    inductor then compiled with dynamic shapes failed: the slow test below)."""
    graphs = []
    torch._dynamo.reset()
    _compiled_against_eager(_recorder(graphs), rtol=0)
    assert 0 < len(graphs) <= 6, len(graphs)


@pytest.mark.slow
def test_compiled_reversible_net_with_inductor_and_dynamic_shapes():
    torch._dynamo.reset()
    _compiled_against_eager("inductor", rtol=1e-5)


@pytest.mark.parametrize("neuron", ["revlif", "lif"])
def test_zoo_net_without_chains_compiles_as_one_graph(neuron):
    """A zoo network whose blocks are not reversible, neuron resets included, is one graph
    (fullgraph=True) per batch shape, with eager's outputs and gradients."""
    graphs = []
    torch._dynamo.reset()
    _compiled_against_eager(_recorder(graphs), rtol=0, neuron=neuron, reversible=False,
                            fullgraph=True)
    assert len(graphs) == 2  # the second batch size recompiles once


def test_eager_use_never_imports_dynamo():
    """The eager regions are marked lazily: ``import revsnn`` and an eager reversible step do
    not import torch._dynamo (over a second of import time)."""
    import subprocess
    import sys
    code = ("import sys, torch, revsnn\n"
            "from revsnn import models\n"
            "net = models.convnet8(width=8, neuron='revlif', reversible=True)\n"
            "net(torch.randn(4, 2, 1, 8, 8)).sum().backward()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "False"
