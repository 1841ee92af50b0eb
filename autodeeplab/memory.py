"""Activation memory of a training step: discrete architectures and the supernet's expectation.

What is counted
    The bytes of the tensors that autograd keeps for the backward pass of one training step
    (forward of the retrained network + cross-entropy loss), each distinct tensor once: what
    ``torch.autograd.graph.saved_tensors_hooks`` sees, deduplicated by storage, parameters and
    BatchNorm buffers left out (they are weights, not activations). The model is exact, not
    fitted: it walks the network as :mod:`autodeeplab.network` builds it and records, for every
    operation, what PyTorch saves for it:

    ====================  ======================================================================
    ReLU                  its output
    convolution           its input
    BatchNorm (training)  its input, plus the batch mean and inverse std (``C`` values each)
    max pooling           its input, plus the argmax indices (int64, output size)
    average pooling       its input
    drop path             the per-sample mask (``N`` values) of every dropped branch
    resize, cat, add,     nothing (their backward needs shapes only)
    global pooling
    cross-entropy         the log-softmax output, the labels (int64) and two scalars
    ====================  ======================================================================

    The input batch is counted (the first convolution keeps it). Tensors that several
    operations keep (a ReLU output read by the next convolution, a cell state read by two
    pooling branches) are counted once.

Training peak
    :func:`training_memory` adds what the peak of a step holds besides activations: the
    weights, their gradients, the optimizer's state (SGD momentum: one buffer per weight) and
    the logits. In the retraining engine's order (forward, loss, ``zero_grad``, backward,
    step) the previous gradients are alive until the loss is computed, which is when all of
    these coexist. Other short-lived buffers (a layer's output until the next layer has used
    it, the gradient being propagated backward) are not modelled; ``benchmarks/memory_model.py``
    measures how close the estimate comes to real steps.

Architectures
    An architecture is a :class:`~autodeeplab.genotype.Genotype`: the cell and its
    network-level :class:`~autodeeplab.topology.Topology`, a single path or several (DiNTS).
    The walker follows :class:`autodeeplab.network.AutoDeepLab` for both: every active
    transition is one cell, an active node sums its incoming cells, ``H^{l-2}`` comes from
    :meth:`Topology.prev_prev_level`, every active last-layer node has its own ASPP, and the
    decoder's low-level feature comes from :meth:`Topology.low_level_layer` (see
    docs/network.md). :func:`all_on` is the cell on every transition of the trellis.

Supernet expectation (DiNTS' memory budget)
    :class:`SupernetMemory` gives, for independent transition probabilities ``p`` in the beta
    layout ``(L, 4, 3)`` (``p[l, s, m]`` for the transition from level ``s`` at layer
    ``l - 1`` to level ``s + m - 1`` at layer ``l``; entries of transitions that do not exist
    are ignored), the expectation of the estimate above over random topologies: each
    transition's cell costs ``p_e`` times its memory (averaged over the nodes that may provide
    its ``H^{l-2}``), each last-layer node's ASPP costs the probability that the node is active
    (``1 - prod(1 - p)`` of its incoming transitions), and the decoder's low-level input is
    weighted by the probability of each choice. At 0/1 probabilities this equals
    :func:`activation_memory` of the topology, except where one tensor is kept by two pieces:
    a pooling branch reading an ``H^{l-2}`` that needs neither a 1x1 projection nor a resize
    (same channels and size as the cell's input: one-block cells, two-block cells that move
    coarser, the stem's outputs for F = 64 or 128) while the decoder or a second cell keeps
    the same tensor. The expectation then counts that tensor twice (the default five-block
    cells never share a node tensor this way).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from autodeeplab import space
from autodeeplab.genotype import Block, Genotype, validate_cell
from autodeeplab.heads import (
    BASE_ATROUS_RATES,
    DEFAULT_ASPP_CHANNELS,
    DEFAULT_DECODER_CHANNELS,
    DEFAULT_LOW_LEVEL_CHANNELS,
    feature_size,
)
from autodeeplab.network import STEM_CHANNELS, NetworkConfig
from autodeeplab.topology import Topology, prev_prev_candidates

Transition = tuple[int, int, int]
"""``(layer, source level, target level)``; layer 0 reads the stem at level 0."""

PARTS: tuple[str, ...] = ("stem", "cells", "aspp", "decoder", "loss")
MOMENTUM_BUFFERS = 1
"""Optimizer state per weight of the retraining optimizer (SGD with momentum)."""
INDEX_BYTES = 8
"""Max-pooling indices and segmentation labels are int64."""


# ----------------------------------------------------------------------------- topology


def all_on(cell: Sequence[Block], layers: int) -> Genotype:
    """``cell`` on every transition of an ``layers``-layer trellis: the supernet as one
    multi-path architecture (the reference of :attr:`SupernetMemory.usage_all_on`)."""
    return Genotype(cell=tuple(cell), topology=Topology.all_on(layers))


def all_transitions(layers: int) -> tuple[Transition, ...]:
    """Every transition of an ``layers``-layer trellis (the search space's), sorted."""
    return tuple(sorted(space.SearchSpace(layers=layers).transitions()))


def transition_mask(layers: int) -> torch.Tensor:
    """``(L, 4, 3)`` bool: which entries of the beta layout are transitions of the trellis."""
    return torch.tensor(space.SearchSpace(layers=layers).used_transition_mask())


# ----------------------------------------------------------------------------- the walker


@dataclass(frozen=True)
class _T:
    """A tensor of the walked network: identity, channels and spatial size."""

    key: int
    channels: int
    size: tuple[int, int]


class _Recorder:
    """Collects the distinct tensors kept for backward, by part, in bytes."""

    def __init__(self, batch: int, itemsize: int) -> None:
        self.batch, self.itemsize = batch, itemsize
        self.saved: dict[int, tuple[int, str]] = {}
        self._keys = itertools.count()
        self.part = "stem"

    def new(self, channels: int, size: tuple[int, int]) -> _T:
        return _T(next(self._keys), channels, size)

    def save(self, t: _T, itemsize: int | None = None) -> None:
        if t.key not in self.saved:
            n = self.batch * t.channels * t.size[0] * t.size[1]
            self.saved[t.key] = (n * (itemsize or self.itemsize), self.part)

    def save_bytes(self, nbytes: int) -> None:
        """A small tensor that nothing else keeps (BN statistics, a mask, a scalar)."""
        self.saved[next(self._keys)] = (nbytes, self.part)

    @property
    def total(self) -> int:
        return sum(b for b, _ in self.saved.values())

    def by_part(self) -> dict[str, int]:
        out = dict.fromkeys(PARTS, 0)
        for b, part in self.saved.values():
            out[part] += b
        return out

    # ------------------------------------------------------------------ operations
    def relu(self, x: _T) -> _T:
        y = self.new(x.channels, x.size)
        self.save(y)
        return y

    def conv(self, x: _T, c_out: int, stride: int = 1) -> _T:
        self.save(x)
        return self.new(c_out, _strided(x.size, stride))

    def bn(self, x: _T) -> _T:
        self.save(x)
        self.save_bytes(2 * x.channels * self.itemsize)  # batch mean and inverse std
        return self.new(x.channels, x.size)

    def relu_conv_bn(self, x: _T, c_out: int, stride: int = 1) -> _T:
        return self.bn(self.conv(self.relu(x), c_out, stride))

    def conv_bn_relu(self, x: _T, c_out: int) -> _T:
        return self.relu(self.bn(self.conv(x, c_out)))

    def resize(self, x: _T, size: tuple[int, int]) -> _T:
        return x if x.size == size else self.new(x.channels, size)

    def op(self, name: str, x: _T, stride: int) -> _T:
        """One candidate operation of :mod:`autodeeplab.ops` (its module structure)."""
        c = x.channels
        if name in ("sep_conv_3x3", "sep_conv_5x5"):
            for s in (stride, 1):  # two [ReLU, depthwise, pointwise, BN]
                x = self.bn(self.conv(self.conv(self.relu(x), c, s), c))
            return x
        if name in ("atr_conv_3x3", "atr_conv_5x5"):
            return self.relu_conv_bn(x, c, stride)
        if name == "skip_connect":
            return x if stride == 1 else self.relu_conv_bn(x, c, stride)
        if name == "max_pool_3x3":
            self.save(x)
            y = self.new(c, _strided(x.size, stride))
            self.save(y, INDEX_BYTES)  # the indices have the output's shape
            return y
        if name == "avg_pool_3x3":
            self.save(x)
            return self.new(c, _strided(x.size, stride))
        raise ValueError(f"operation {name!r} has no memory model; valid: {space.PRIMITIVES[1:]}")

    def cell(
        self,
        cell: tuple[Block, ...],
        prev_prev: _T,
        prev: _T,
        channels: int,
        move: int,
        out_size: tuple[int, int],
        drop_path: bool,
    ) -> _T:
        """:class:`autodeeplab.network.Cell` (same preprocessing, strides and drop path)."""
        if move == -1:
            prev = self.resize(prev, out_size)
        pp = self.resize(prev_prev, prev.size)
        states = [
            pp if pp.channels == channels else self.relu_conv_bn(pp, channels),
            self.relu_conv_bn(prev, channels),
        ]
        stride_in = 2 if move == 1 else 1
        for block in cell:
            for inp, name in block:
                stride = stride_in if inp < 2 else 1
                self.op(name, states[inp], stride)
                if drop_path and not (name == "skip_connect" and stride == 1):
                    self.save_bytes(self.batch * self.itemsize)  # the (N, 1, 1, 1) mask
            states.append(self.new(channels, out_size))  # the block's sum
        return self.new(len(cell) * channels, out_size)  # the concatenation


def _strided(size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (-(-size[0] // stride), -(-size[1] // stride))


# ----------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Heads:
    """Head and loss settings that the activation memory depends on."""

    num_classes: int = 19
    in_channels: int = 3
    aspp_channels: int = DEFAULT_ASPP_CHANNELS
    aspp_branches: int = len(BASE_ATROUS_RATES)
    """Atrous 3x3 branches of each ASPP (one per rate)."""
    decoder_channels: int = DEFAULT_DECODER_CHANNELS
    low_level_reduced: int = DEFAULT_LOW_LEVEL_CHANNELS

    @classmethod
    def of(cls, config: NetworkConfig) -> Heads:
        return cls(
            num_classes=config.num_classes,
            in_channels=config.in_channels,
            aspp_channels=config.aspp_channels,
            aspp_branches=len(BASE_ATROUS_RATES)
            if config.aspp_rates is None
            else len(config.aspp_rates),
            decoder_channels=config.decoder_channels,
            low_level_reduced=config.low_level_reduced,
        )


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes kept for backward by one training step, in total and by part."""

    total: int
    by_part: dict[str, int]
    input_size: tuple[int, int]
    batch_size: int
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "activation_bytes": self.total,
            "activation_bytes_by_part": dict(self.by_part),
            "batch_size": self.batch_size,
            "input_size": list(self.input_size),
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class _Setting:
    """Everything but the architecture: sizes, batch, dtype, widths."""

    filter_multiplier: int
    heads: Heads
    input_size: tuple[int, int]
    batch_size: int
    itemsize: int
    drop_path: bool
    blocks: int
    level_sizes: tuple[tuple[int, int], ...] = field(init=False)

    def __post_init__(self) -> None:
        h, w = self.input_size
        sizes = tuple((feature_size(h, s), feature_size(w, s)) for s in space.LEVEL_STRIDES)
        object.__setattr__(self, "level_sizes", sizes)

    def channels(self, level: int) -> int:
        """Channels of node tensors at ``level``; ``-1`` / level 0 of the stem are handled by
        the caller."""
        return self.blocks * self.filter_multiplier * 2**level

    def recorder(self) -> _Recorder:
        return _Recorder(self.batch_size, self.itemsize)

    def stem(self, rec: _Recorder) -> tuple[_T, _T]:
        rec.part = "stem"
        h, w = self.input_size
        c1, c2, c3 = STEM_CHANNELS
        x = rec.new(self.heads.in_channels, (h, w))
        y = rec.bn(rec.conv(x, c1, 2))
        s2 = rec.bn(rec.conv(rec.relu(y), c2))
        s4 = rec.bn(rec.conv(rec.relu(s2), c3, 2))
        return s2, s4

    def aspp(self, rec: _Recorder, x: _T) -> _T:
        rec.part = "aspp"
        c = self.heads.aspp_channels
        for _ in range(1 + self.heads.aspp_branches):  # 1x1 and one 3x3 per rate
            rec.conv_bn_relu(x, c)
        rec.conv_bn_relu(rec.new(x.channels, (1, 1)), c)  # image pooling on the pooled map
        return rec.conv_bn_relu(rec.new((2 + self.heads.aspp_branches) * c, x.size), c)

    def decoder_and_loss(self, rec: _Recorder, low: _T) -> None:
        rec.part = "decoder"
        hd = self.heads
        reduced = rec.conv_bn_relu(low, hd.low_level_reduced)
        y = rec.new(hd.aspp_channels + reduced.channels, reduced.size)  # the concatenation
        y = rec.conv_bn_relu(rec.conv_bn_relu(y, hd.decoder_channels), hd.decoder_channels)
        rec.conv(y, hd.num_classes)
        rec.part = "loss"
        rec.save(rec.new(hd.num_classes, self.input_size))  # log-softmax
        rec.save(rec.new(1, self.input_size), INDEX_BYTES)  # labels
        rec.save_bytes(2 * self.itemsize)  # the loss' total weight and normaliser

    def node_tensor(self, rec: _Recorder, level: int) -> _T:
        return rec.new(self.channels(level), self.level_sizes[level])

    def check(self, max_stride: int) -> None:
        h, w = self.input_size
        if min(h, w) <= max_stride:
            raise ValueError(
                f"input {h}x{w} is too small for this architecture: its deepest level has "
                f"stride {max_stride}, so height and width must be at least {max_stride + 1}"
            )


def _setting(
    filter_multiplier: int,
    heads: Heads,
    input_size: tuple[int, int],
    batch_size: int,
    dtype: torch.dtype,
    drop_path: bool,
    blocks: int,
) -> _Setting:
    if isinstance(filter_multiplier, bool) or not isinstance(filter_multiplier, int):
        raise ValueError(f"filter_multiplier must be a positive integer, got {filter_multiplier!r}")
    if filter_multiplier < 1:
        raise ValueError(f"filter_multiplier must be a positive integer, got {filter_multiplier}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"input_size must be (H, W) with positive sides, got {input_size!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    size = (int(input_size[0]), int(input_size[1]))
    return _Setting(filter_multiplier, heads, size, batch_size, dtype.itemsize, drop_path, blocks)


def activation_memory(
    genotype: Genotype,
    *,
    filter_multiplier: int,
    input_size: tuple[int, int],
    batch_size: int,
    heads: Heads | None = None,
    dtype: torch.dtype = torch.float32,
    drop_path: bool = False,
) -> ActivationMemory:
    """Bytes that one training step of ``genotype`` (single or multi-path) keeps for backward
    (module docstring).

    ``drop_path``: Scheduled Drop Path is active (adds a per-sample mask per branch).
    """
    if not isinstance(genotype, Genotype):
        raise ValueError(f"expected a Genotype, got {type(genotype).__name__}")
    topo = genotype.topology
    st = _setting(
        filter_multiplier,
        heads or Heads(),
        input_size,
        batch_size,
        dtype,
        drop_path,
        genotype.blocks,
    )
    st.check(genotype.max_stride)
    rec = st.recorder()
    s2, s4 = st.stem(rec)
    nodes: dict[tuple[int, int], _T] = {(-2, -1): s2, (-1, space.STEM_LEVEL): s4}
    rec.part = "cells"
    for layer in range(topo.num_layers):
        for level in topo.active_levels(layer):
            pp = nodes[(layer - 2, topo.prev_prev_level(layer, level))]
            for s, t in topo.incoming(layer, level):
                rec.cell(
                    genotype.cell,
                    pp,
                    nodes[(layer - 1, s)],
                    st.filter_multiplier * 2**t,
                    t - s,
                    st.level_sizes[t],
                    drop_path,
                )
                rec.part = "cells"
            # One incoming cell: the node is its output; several: their sum. A new tensor
            # either way, of the same shape.
            nodes[(layer, level)] = st.node_tensor(rec, level)
    for level in genotype.output_levels:
        st.aspp(rec, nodes[(topo.num_layers - 1, level)])
    low_layer = topo.low_level_layer()
    low = s4 if low_layer is None else nodes[(low_layer, space.STEM_LEVEL)]
    st.decoder_and_loss(rec, low)
    return ActivationMemory(
        rec.total, rec.by_part(), st.input_size, batch_size, str(dtype).removeprefix("torch.")
    )


def network_activation_memory(
    config: NetworkConfig,
    input_size: tuple[int, int],
    batch_size: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> ActivationMemory:
    """:func:`activation_memory` of the :class:`AutoDeepLab` that ``config`` builds."""
    return activation_memory(
        config.genotype,
        filter_multiplier=config.filter_multiplier,
        input_size=input_size,
        batch_size=batch_size,
        heads=Heads.of(config),
        dtype=dtype,
        drop_path=config.drop_path_rate > 0,
    )


@dataclass(frozen=True)
class TrainingMemory:
    """Estimated memory of a training step: activations plus weights, gradients and the
    optimizer state (module docstring)."""

    activations: ActivationMemory
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    logits_bytes: int

    @property
    def peak_bytes(self) -> int:
        return (
            self.activations.total
            + self.weight_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.logits_bytes
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.activations.to_dict(),
            "weight_bytes": self.weight_bytes,
            "gradient_bytes": self.gradient_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "logits_bytes": self.logits_bytes,
            "peak_bytes": self.peak_bytes,
        }


def training_memory(
    config: NetworkConfig,
    input_size: tuple[int, int],
    batch_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    momentum_buffers: int = MOMENTUM_BUFFERS,
    params: int | None = None,
) -> TrainingMemory:
    """Activation memory of ``config`` plus its weights, gradients, ``momentum_buffers``
    optimizer buffers per weight and the logits. ``params``: the parameter count when it is
    already known (else counted on a meta-device twin)."""
    from autodeeplab.complexity import count_parameters, meta_model

    if params is None:
        params = count_parameters(meta_model(config))["total"]
    weights = params * dtype.itemsize
    act = network_activation_memory(config, input_size, batch_size, dtype=dtype)
    h, w = act.input_size
    logits = batch_size * config.num_classes * h * w * dtype.itemsize
    return TrainingMemory(act, weights, weights, momentum_buffers * weights, logits)


# ----------------------------------------------------------------------------- supernet


class SupernetMemory:
    """Expected activation memory of random topologies with independent transitions.

    Built once for a cell, a number of layers and a setting (the piece costs are computed
    here); :meth:`usage` is a differentiable function of the transition probabilities
    ``p: (L, 4, 3)`` in the beta layout (see the module docstring). :attr:`usage_all_on` is
    the usage with every transition on, and :meth:`budget_loss` DiNTS' term
    ``|target - usage / usage_all_on|``.
    """

    def __init__(
        self,
        cell: Sequence[Block],
        layers: int,
        *,
        filter_multiplier: int,
        input_size: tuple[int, int],
        batch_size: int,
        heads: Heads | None = None,
        dtype: torch.dtype = torch.float32,
        drop_path: bool = False,
    ) -> None:
        cell = validate_cell(cell)
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a positive integer, got {layers!r}")
        st = _setting(
            filter_multiplier, heads or Heads(), input_size, batch_size, dtype, drop_path, len(cell)
        )
        self.layers = layers
        self.transitions = all_transitions(layers)
        st.check(space.LEVEL_STRIDES[max(t for _, _, t in self.transitions)])
        self.mask = transition_mask(layers)

        def cost(walk: Any) -> int:
            rec = st.recorder()
            walk(rec)
            return rec.total

        s_rec = st.recorder()
        s2, s4 = st.stem(s_rec)
        self.stem_bytes = s_rec.total

        def input_of(rec: _Recorder, layer: int, level: int) -> _T:
            if layer == -2:
                return rec.new(s2.channels, s2.size)
            if layer == -1:
                return rec.new(s4.channels, s4.size)
            return st.node_tensor(rec, level)

        # cell_bytes[e][i]: the cell on transition e with its H^{l-2} from candidate i.
        self.cell_bytes: dict[Transition, tuple[int, ...]] = {}
        for layer, s, t in self.transitions:
            self.cell_bytes[(layer, s, t)] = tuple(
                cost(
                    lambda rec, k=k, layer=layer, s=s, t=t: rec.cell(
                        cell,
                        input_of(rec, layer - 2, k),
                        input_of(rec, layer - 1, s),
                        filter_multiplier * 2**t,
                        t - s,
                        st.level_sizes[t],
                        drop_path,
                    )
                )
                for k in prev_prev_candidates(layer, t)
            )
        self.head_bytes = tuple(
            cost(lambda rec, k=k: st.aspp(rec, st.node_tensor(rec, k)))
            for k in range(space.NUM_LEVELS)
        )
        # The decoder keeps its low-level input: a level-0 node, or the stem's stride-4 output.
        self.decoder_node_bytes = cost(lambda rec: st.decoder_and_loss(rec, st.node_tensor(rec, 0)))
        self.decoder_stem_bytes = cost(lambda rec: st.decoder_and_loss(rec, rec.new(128, s4.size)))
        assert s4.channels == 128, "stem width changed: update decoder_stem_bytes"
        self.usage_all_on = float(self.usage(self.mask.double()))

    def usage(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected bytes for transition probabilities ``probs: (L, 4, 3)`` (invalid entries
        ignored); differentiable, in ``probs``' dtype."""
        if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
            raise ValueError(
                f"probabilities must be a floating-point tensor of shape {tuple(self.mask.shape)}, "
                f"got {type(probs).__name__}"
            )
        if probs.shape != self.mask.shape:
            raise ValueError(
                f"probabilities must have the beta layout {tuple(self.mask.shape)} "
                f"(layers, levels, moves), got {tuple(probs.shape)}"
            )
        p = torch.where(self.mask, probs, torch.zeros((), dtype=probs.dtype))
        one = torch.ones((), dtype=probs.dtype)

        def p_of(e: Transition) -> torch.Tensor:
            layer, s, t = e
            return p[layer, s, space.move_between(s, t)]

        # active[layer][level]: probability that the node is active (an incoming transition on)
        active: list[list[torch.Tensor]] = []
        for layer in range(self.layers):
            row = []
            for level in range(space.NUM_LEVELS):
                off = one
                for e in self.transitions:
                    if e[0] == layer and e[2] == level:
                        off = off * (1 - p_of(e))
                row.append(1 - off)
            active.append(row)

        total = torch.zeros((), dtype=probs.dtype) + self.stem_bytes
        for e in self.transitions:
            layer, _, t = e
            cands = prev_prev_candidates(layer, t)
            if layer < 2:
                total = total + p_of(e) * self.cell_bytes[e][0]
                continue
            none_before = one
            expected = torch.zeros((), dtype=probs.dtype)
            for k, nbytes in zip(cands, self.cell_bytes[e], strict=True):
                a = active[layer - 2][k]
                expected = expected + none_before * a * nbytes
                none_before = none_before * (1 - a)
            total = total + p_of(e) * expected
        for level in range(space.NUM_LEVELS):
            total = total + active[self.layers - 1][level] * self.head_bytes[level]

        # The decoder keeps the stem's stride-4 output unless layer 0 has level 0 as its only
        # active node (then a level-0 node, of one size whichever layer it is in).
        only0 = active[0][space.STEM_LEVEL] * (1 - active[0][space.STEM_LEVEL + 1])
        total = total + (1 - only0) * self.decoder_stem_bytes + only0 * self.decoder_node_bytes
        return total

    def usage_fraction(self, probs: torch.Tensor) -> torch.Tensor:
        return self.usage(probs) / self.usage_all_on

    def budget_loss(self, probs: torch.Tensor, target: float) -> torch.Tensor:
        """DiNTS' memory term ``|target - usage / usage_all_on|``, ``target`` in ``(0, 1]``."""
        if not 0.0 < target <= 1.0 or math.isnan(target):
            raise ValueError(f"memory target must be a fraction in (0, 1], got {target}")
        return (target - self.usage_fraction(probs)).abs()
