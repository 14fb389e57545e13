"""Model zoo: spiking VGG, ResNet, MLP and a small conv net, time-first ``[T, B, *]``.

Every model takes ``neuron="lif" | "revlif"`` (:class:`revsnn.LIF` or :class:`revsnn.RevLIF`,
both with the keywords in ``neuron_kwargs``) and ``reversible``: with ``reversible=True`` each
run of layers whose input and output shapes agree becomes a :class:`revsnn.nn.RevSequential` of
:class:`revsnn.nn.RevBlock` s (``f`` and ``g`` act on half the channels), so those layers keep
no activations for the backward; layers that change the shape (the stem, downsampling, the
classifier) stay ordinary. The reversible variant is a different network (about half the
parameters in the reversible layers), documented per model below. The layers run in a
:class:`revsnn.nn.RebuildSequential`: a layer feeding a chain keeps no copy of its output (the
chain's backward rebuilds it), so a RevLIF before a chain keeps nothing but its final state.

Input: a time-first tensor ``[T, B, *]`` is used as it is; a static input ``[B, *]`` (an image
``[B, C, H, W]``, or ``[B, F]`` for the MLP) is repeated ``T`` times (repeat encoding, ``T`` given
at construction). Output: logits ``[B, classes]``, the mean over time of a linear readout.
Each call is one sequence: the models reset their neurons at the start of ``forward``
(:func:`reset` does the same for any module).

Layers that hold no state run on all time steps at once (:class:`PerStep` merges T into the
batch, so BatchNorm normalises over time and batch). Neurons hold no parameters, so the same
seed gives the same initial weights for both neuron choices.

Parameter counts (10 classes; ``neuron`` does not change them):

========================  =========  ===============  ================
builder                   input      reversible=False  reversible=True
========================  =========  ===============  ================
``spiking_vgg11``         3x32x32    9,228,362        5,394,506
``spiking_vgg16``         3x32x32    14,724,042       8,143,818
``spiking_resnet18``      3x32x32    11,173,962       8,003,658
``spiking_resnet19``      3x32x32    12,697,994       8,716,682
``spiking_mlp``           64         43,402           27,018
``convnet8``              1x8x8      67,754           44,714
========================  =========  ===============  ================

(``tests/test_models.py`` recomputes every number of this table.)
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .nn import LIF, RevLIF
from .nn.blocks import RebuildSequential, RevBlock, RevSequential, reset_neurons

NEURONS = ("lif", "revlif")

reset = reset_neurons
"""``reset(module)``: reset every neuron in ``module`` (start a new sequence)."""


class PerStep(nn.Sequential):
    """Stateless layers applied to every time step at once: ``[T, B, *] -> [T, B, *']``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = super().forward(x.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])


def make_neuron(neuron: str, **neuron_kwargs) -> nn.Module:
    """A multi-step neuron layer over ``[T, B, C, *]``: ``"lif"`` or ``"revlif"`` (split dim 2)."""
    if neuron == "revlif":
        return RevLIF(dim=2, **neuron_kwargs)
    if neuron == "lif":
        return LIF(**neuron_kwargs)
    raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")


def _check(neuron: str, channels: dict, reversible: bool) -> None:
    """Raise for widths the chosen neuron or the reversible split cannot take."""
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
    for name, c in channels.items():
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise ValueError(f"{name} must be a positive int, got {c!r}")
        if reversible and c % 2:
            raise ValueError(f"{name}={c} must be even for reversible=True (RevBlocks split "
                             f"the channels in halves)")
        if neuron == "revlif" and c % 2:
            raise ValueError(f"{name}={c} must be even for neuron='revlif' (the reversible "
                             f"node pairs the first and second half of the channels)")
        if neuron == "revlif" and reversible and c % 4:
            raise ValueError(f"{name}={c} must be a multiple of 4 for neuron='revlif' with "
                             f"reversible=True (each RevBlock half feeds a RevLIF)")


class SpikingNet(nn.Module):
    """``body`` over ``[T, B, *]`` then a per-step readout averaged over time.

    Args:
        body: modules over time-first tensors, ending with ``[T, B, F]`` after flattening.
        head: per-step readout (e.g. ``PerStep(nn.Linear(F, classes))``).
        T: time steps of the repeat encoding for static inputs.
        static_rank: the rank of a static input (4 for images ``[B, C, H, W]``, 2 for
            ``[B, F]``); an input of rank ``static_rank + 1`` is already time-first.
    """

    def __init__(self, body: nn.Sequential, head: nn.Module, T: int, static_rank: int) -> None:
        super().__init__()
        if not isinstance(T, int) or isinstance(T, bool) or T < 1:
            raise ValueError(f"T must be an int >= 1, got {T!r}")
        self.body, self.head, self.T, self.static_rank = body, head, T, static_rank

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat a static ``[B, *]`` input ``T`` times; pass ``[T, B, *]`` through."""
        if x.dim() == self.static_rank:
            return x.unsqueeze(0).expand(self.T, *x.shape)
        if x.dim() == self.static_rank + 1:
            return x
        raise ValueError(f"input must be static [B, *] of rank {self.static_rank} or "
                         f"time-first [T, B, *] of rank {self.static_rank + 1}, got rank "
                         f"{x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, *]`` or ``[T, B, *]`` -> logits ``[B, classes]`` (mean over time)."""
        reset_neurons(self)
        h = self.body(self.encode(x))
        return self.head(h.flatten(2)).mean(0)


# -- convolutional building blocks -----------------------------------------------------------
def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> PerStep:
    return PerStep(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                   nn.BatchNorm2d(cout))


def conv_layer(cin: int, cout: int, neuron: str, nkw: dict, stride: int = 1) -> nn.Sequential:
    """conv3x3-BN-neuron."""
    return nn.Sequential(conv_bn(cin, cout, stride), make_neuron(neuron, **nkw))


def rev_conv_layers(c: int, n: int, neuron: str, nkw: dict, depth: int = 1) -> RevSequential:
    """n RevBlocks on c channels; f and g: ``depth`` x (conv3x3-BN-neuron) on c/2 channels."""
    def branch():
        return nn.Sequential(*[conv_layer(c // 2, c // 2, neuron, nkw) for _ in range(depth)])
    return RevSequential(*[RevBlock(branch(), branch()) for _ in range(n)])


class BasicBlock(nn.Module):
    """Spiking ResNet basic block: ``sn(BN(conv(sn(BN(conv(x))))) + shortcut(x))``."""

    def __init__(self, cin: int, cout: int, stride: int, neuron: str, nkw: dict) -> None:
        super().__init__()
        self.conv1 = conv_layer(cin, cout, neuron, nkw, stride)
        self.conv2 = conv_bn(cout, cout)
        self.shortcut = (conv_bn(cin, cout, stride, kernel=1) if stride != 1 or cin != cout
                         else nn.Identity())
        self.sn = make_neuron(neuron, **nkw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn(self.conv2(self.conv1(x)) + self.shortcut(x))


def pool() -> PerStep:
    return PerStep(nn.AvgPool2d(2))


class GlobalAvgPool(nn.Module):
    """``[N, C, H, W] -> [N, C, 1, 1]``, the mean over each map. ``nn.AdaptiveAvgPool2d(1)``
    computes the same, but its CUDA backward adds with atomics and differs from run to run,
    which would break a resumed run's equality with an uninterrupted one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)


# -- VGG -------------------------------------------------------------------------------------
_VGG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M"],
}


def _vgg(depth: int, num_classes: int, in_channels: int, neuron: str, reversible: bool,
         T: int, width: int, neuron_kwargs: Optional[dict]) -> SpikingNet:
    cfg = [v if v == "M" else v * width // 64 for v in _VGG[depth]]
    _check(neuron, {f"vgg channels {c}": c for c in cfg if c != "M"}, reversible)
    nkw = dict(neuron_kwargs or {})
    layers: list = []
    run = 0  # pending same-shape layers, merged into one RevSequential
    c = in_channels
    for v in cfg + [None]:
        if reversible and v == c and v != "M" and layers:  # the stem stays ordinary
            run += 1
            continue
        if run:
            layers.append(rev_conv_layers(c, run, neuron, nkw))
            run = 0
        if v is None:
            break
        if v == "M":
            layers.append(pool())
        else:
            layers.append(conv_layer(c, v, neuron, nkw))
            c = v
    return SpikingNet(RebuildSequential(*layers), PerStep(nn.Linear(c, num_classes)), T, 4)


def spiking_vgg11(num_classes: int = 10, in_channels: int = 3, neuron: str = "lif",
                  reversible: bool = False, T: int = 4, width: int = 64,
                  neuron_kwargs: Optional[dict] = None) -> SpikingNet:
    """Spiking VGG-11 for 32x32 inputs: 8 conv3x3-BN-neuron layers, 5 average pools, linear.

    ``width`` scales every stage (64: the standard 64-128-256-512). Parameters (10 classes,
    3x32x32): 9,228,362; reversible=True: 5,394,506 (the 256->256 and three 512->512 layers
    become RevBlocks).
    """
    return _vgg(11, num_classes, in_channels, neuron, reversible, T, width, neuron_kwargs)


def spiking_vgg16(num_classes: int = 10, in_channels: int = 3, neuron: str = "lif",
                  reversible: bool = False, T: int = 4, width: int = 64,
                  neuron_kwargs: Optional[dict] = None) -> SpikingNet:
    """Spiking VGG-16 for 32x32 inputs: 13 conv3x3-BN-neuron layers, 5 average pools, linear.

    Parameters (10 classes, 3x32x32): 14,724,042; reversible=True: 8,143,818 (the nine
    same-shape layers become RevBlocks).
    """
    return _vgg(16, num_classes, in_channels, neuron, reversible, T, width, neuron_kwargs)


# -- ResNet ----------------------------------------------------------------------------------
def _resnet(stem: int, stages: Sequence[tuple[int, int, int]], head: Callable[[int], nn.Module],
            num_classes: int, in_channels: int, neuron: str, reversible: bool, T: int,
            neuron_kwargs: Optional[dict]) -> SpikingNet:
    """stages: (channels, blocks, stride). Reversible: the blocks of a stage that keep the
    shape become RevBlocks whose f and g are two conv-BN-neuron layers on half the channels."""
    chans = {"stem channels": stem}
    chans.update({f"stage channels {c}": c for c, _, _ in stages})
    _check(neuron, chans, reversible)
    nkw = dict(neuron_kwargs or {})
    layers: list = [conv_layer(in_channels, stem, neuron, nkw)]
    c = stem
    for cout, n, stride in stages:
        same = n
        if stride != 1 or cout != c or not reversible:
            layers.append(BasicBlock(c, cout, stride, neuron, nkw))
            same = n - 1
            c = cout
        if reversible:
            if same:
                layers.append(rev_conv_layers(c, same, neuron, nkw, depth=2))
        else:
            layers += [BasicBlock(c, c, 1, neuron, nkw) for _ in range(same)]
    layers.append(PerStep(GlobalAvgPool()))
    return SpikingNet(RebuildSequential(*layers), head(c), T, 4)


def spiking_resnet18(num_classes: int = 10, in_channels: int = 3, neuron: str = "lif",
                     reversible: bool = False, T: int = 4,
                     neuron_kwargs: Optional[dict] = None) -> SpikingNet:
    """Spiking ResNet-18 for 32x32 inputs: conv3x3 stem (64), stages 64-128-256-512 of two
    basic blocks (stride 1, 2, 2, 2), global average pool, linear.

    Parameters (10 classes, 3x32x32): 11,173,962; reversible=True: 8,003,658 (both blocks of
    the first stage and the second block of the others become RevBlocks).
    """
    return _resnet(64, [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)],
                   lambda c: PerStep(nn.Linear(c, num_classes)), num_classes, in_channels,
                   neuron, reversible, T, neuron_kwargs)


def spiking_resnet19(num_classes: int = 10, in_channels: int = 3, neuron: str = "lif",
                     reversible: bool = False, T: int = 4,
                     neuron_kwargs: Optional[dict] = None) -> SpikingNet:
    """Spiking ResNet-19 (the tdBN paper's CIFAR network): conv3x3 stem (128), stages of
    3 x 128, 3 x 256 (stride 2), 2 x 512 (stride 2) basic blocks, global average pool,
    FC 256 with a neuron, linear.

    Parameters (10 classes, 3x32x32): 12,697,994; reversible=True: 8,716,682.
    """
    nkw = dict(neuron_kwargs or {})

    def head(c: int) -> nn.Module:
        return nn.Sequential(PerStep(nn.Linear(c, 256)), make_neuron(neuron, **nkw),
                        PerStep(nn.Linear(256, num_classes)))
    return _resnet(128, [(128, 3, 1), (256, 3, 2), (512, 2, 2)], head, num_classes,
                   in_channels, neuron, reversible, T, neuron_kwargs)


# -- small networks --------------------------------------------------------------------------
class StepBias(nn.Module):
    """A learned bias per time step, ``[T, B, F] -> [T, B, F]``: tells a layer which step (the
    position in a sequence fed one element per step) it is looking at."""

    def __init__(self, steps: int, features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(steps, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.bias.shape[0]:
            raise ValueError(f"StepBias was built for {self.bias.shape[0]} steps, got "
                             f"T={x.shape[0]}")
        return x + self.bias[:x.shape[0]]


def spiking_mlp(in_features: int = 64, num_classes: int = 10, hidden: int = 128,
                depth: int = 3, neuron: str = "lif", reversible: bool = False, T: int = 4,
                positions: Optional[int] = None,
                neuron_kwargs: Optional[dict] = None) -> SpikingNet:
    """Spiking MLP over ``[T, B, in_features]``: ``depth`` hidden layers Linear-BN-neuron of
    width ``hidden``, linear readout. With reversible=True the hidden->hidden layers form one
    RevSequential (f, g: Linear-BN-neuron on hidden/2).

    ``positions``: for sequences fed one element per step (the pixel-sequence task), the
    sequence length. The first layer then has a learned bias per step (its only source of
    position) and no BatchNorm (a BatchNorm over a one-feature linear map divides by a variance
    that swings with the sign of its weight), and the hidden BatchNorms normalise with the
    batch statistics in evaluation too (``track_running_stats=False``): on this task their
    running averages trail the fast-moving statistics and wreck evaluation accuracy.

    Parameters (64 inputs, 10 classes, hidden 128, depth 3): 43,402; reversible=True: 27,018.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if positions is not None and (not isinstance(positions, int) or isinstance(positions, bool)
                                  or positions < 1):
        raise ValueError(f"positions must be None or an int >= 1, got {positions!r}")
    _check(neuron, {"hidden": hidden}, reversible)
    nkw = dict(neuron_kwargs or {})
    running = positions is None

    def dense(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(PerStep(nn.Linear(i, o),
                                     nn.BatchNorm1d(o, track_running_stats=running)),
                             make_neuron(neuron, **nkw))
    if positions is None:
        first = dense(in_features, hidden)
    else:
        first = nn.Sequential(PerStep(nn.Linear(in_features, hidden)),
                              StepBias(positions, hidden), make_neuron(neuron, **nkw))
    layers: list = [first]
    if reversible and depth > 1:
        h = hidden // 2
        layers.append(RevSequential(*[RevBlock(dense(h, h), dense(h, h))
                                      for _ in range(depth - 1)]))
    else:
        layers += [dense(hidden, hidden) for _ in range(depth - 1)]
    return SpikingNet(RebuildSequential(*layers), PerStep(nn.Linear(hidden, num_classes)), T, 2)


def convnet8(num_classes: int = 10, in_channels: int = 1, width: int = 32,
             neuron: str = "lif", reversible: bool = False, T: int = 4,
             neuron_kwargs: Optional[dict] = None) -> SpikingNet:
    """Small spiking conv net for 8x8 images (scikit-learn's digits)::

        conv(in->w) [8x8], block(w), pool [4x4], conv(w->2w), block(2w), pool [2x2], linear

    where a block is conv3x3-BN-neuron (reversible=True: a RevBlock, f and g on half the
    channels). Parameters (1x8x8, 10 classes, width 32): 67,754; reversible=True: 44,714.
    """
    _check(neuron, {"width": width, "2*width": 2 * width}, reversible)
    nkw = dict(neuron_kwargs or {})
    w = width

    def block(c: int) -> nn.Module:
        return (rev_conv_layers(c, 1, neuron, nkw) if reversible
                else conv_layer(c, c, neuron, nkw))
    body = RebuildSequential(conv_layer(in_channels, w, neuron, nkw), block(w), pool(),
                             conv_layer(w, 2 * w, neuron, nkw), block(2 * w), pool())
    return SpikingNet(body, PerStep(nn.Linear(2 * w * 4, num_classes)), T, 4)


MODELS = {
    "vgg11": spiking_vgg11,
    "vgg16": spiking_vgg16,
    "resnet18": spiking_resnet18,
    "resnet19": spiking_resnet19,
    "mlp": spiking_mlp,
    "convnet8": convnet8,
}
"""Builders by name (``python -m revsnn.train --model NAME``)."""


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
