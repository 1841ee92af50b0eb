"""The discrete Auto-DeepLab network that is retrained after search (see docs/network.md).

``AutoDeepLab = Encoder (stem + cells along the path) -> ASPP -> DeepLabv3+ decoder``.

Multi-path topologies (DiNTS)
    Every active transition is a :class:`Cell` with its move; an active node sums its incoming
    cells; ``H^{l-2}`` is the active node of layer ``l - 2`` chosen by
    :meth:`Topology.prev_prev_level` (same level, else nearest, finer on a tie); every active
    node of the last layer has its own ASPP (:class:`MultiASPP`, rates for its stride), their
    outputs resized to the finest and summed before the decoder. A single path is the special
    case of one cell per layer and one ASPP, with the same modules and state_dict keys.

Stem
    Three 3x3 convs (64 stride 2, 64, 128 stride 2), BN after each, ReLU between. Its stride-2
    (64 ch) and stride-4 (128 ch) outputs are the two inputs of the first cell.
Cells
    Cell ``l`` at level ``k`` has ``f = F * 2^k`` filters per block and outputs ``B * f``
    channels. See :class:`Cell` for the preprocessing and the resolution changes.
Low-level features for the decoder
    The output of the last cell of the path's initial run at level 0 (the stride-4 cells before
    the path first goes deeper; cell index 2 of the released path). A path that starts at level 1
    has no such cell: the stem's stride-4 output (128 ch) is used. For a multi-path topology
    the run ends at the first layer with an active node other than level 0.
Spatial sizes
    Level ``k`` has size ``ceil(H / 2^(k + 2))`` (what stride-2 convs with "same" padding give).
    Height and width must exceed the path's deepest stride so that the deepest map is at least
    2x2.
Volumes
    ``spatial_dims=3`` builds every part for ``(N, C, D, H, W)`` volumes: 3x3x3 convolutions,
    3D pooling and BatchNorm, trilinear resizing (the layers of :func:`autodeeplab.ops.layers`),
    with the same modules, state_dict keys and wiring as for images; every side follows the
    size rule above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from autodeeplab import ops, space
from autodeeplab.genotype import Block, Genotype
from autodeeplab.heads import (
    ASPP,
    DEFAULT_ASPP_CHANNELS,
    DEFAULT_DECODER_CHANNELS,
    DEFAULT_LOW_LEVEL_CHANNELS,
    DeepLabV3PlusDecoder,
    atrous_rates_for_stride,
)
from autodeeplab.ops import ReLUConvBN, build_op
from autodeeplab.topology import Topology

STEM_CHANNELS: tuple[int, int, int] = (64, 64, 128)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Drop whole samples of a branch with probability ``rate``, rescaling the kept ones."""
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # one draw per sample, images or volumes
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(N, C, *spatial)`` resized (bi/trilinearly) to ``size``; unchanged when it has it."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return ops.resize(x, size)


class Stem(nn.Module):
    """``(N, C_in, *spatial) -> {"stride2": (N, 64, *spatial/2), "stride4": (N, 128,
    *spatial/4)}``; 3x3 convolutions (3x3x3 for ``spatial_dims=3``)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, int, int] = STEM_CHANNELS,
        spatial_dims: int = 2,
    ):
        super().__init__()
        lay = ops.layers(spatial_dims)
        c1, c2, c3 = channels
        self.out_channels = {"stride2": c2, "stride4": c3}
        self.conv1 = nn.Sequential(
            lay.conv(in_channels, c1, 3, 2, 1, bias=False), lay.batch_norm(c1)
        )
        self.conv2 = nn.Sequential(
            nn.ReLU(inplace=False), lay.conv(c1, c2, 3, 1, 1, bias=False), lay.batch_norm(c2)
        )
        self.conv3 = nn.Sequential(
            nn.ReLU(inplace=False), lay.conv(c2, c3, 3, 2, 1, bias=False), lay.batch_norm(c3)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s2 = self.conv2(self.conv1(x))  # (N, 64, *spatial/2)
        s4 = self.conv3(s2)  # (N, 128, *spatial/4)
        return {"stride2": s2, "stride4": s4}


class Cell(nn.Module):
    """One discrete cell: ``(H^{l-2}, H^{l-1}) -> H^l`` with ``len(cell) * channels`` outputs.

    ``move`` is the level change from the previous cell: ``-1`` finer (``H^{l-1}`` is upsampled
    to ``out_size`` before its 1x1 conv), ``0`` same, ``+1`` coarser (the ops reading the two
    cell inputs use stride 2). ``H^{l-1}`` goes through ReLU-1x1conv-BN to ``channels``;
    ``H^{l-2}`` is resized to the size of the (preprocessed) ``H^{l-1}`` and, only if its
    channel count differs, goes through ReLU-1x1conv-BN too. ``spatial_dims=3`` builds it for
    volumes (``out_size`` then has three sides).
    """

    def __init__(
        self,
        cell: tuple[Block, ...],
        prev_prev_channels: int,
        prev_channels: int,
        channels: int,
        move: int,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if move not in (-1, 0, 1):
            raise ValueError(f"move must be -1 (finer), 0 (same) or 1 (coarser), got {move}")
        self.move = move
        self.blocks = len(cell)
        self.out_channels = self.blocks * channels
        self.drop_path_rate = 0.0
        # Block 0 reads both cell inputs (a validated genotype guarantees it).
        sd = spatial_dims
        self.preprocess0: nn.Module = (
            ReLUConvBN(prev_prev_channels, channels, 1, spatial_dims=sd)
            if prev_prev_channels != channels
            else nn.Identity()
        )
        self.preprocess1 = ReLUConvBN(prev_channels, channels, 1, spatial_dims=sd)
        self.inputs: tuple[int, ...] = tuple(inp for block in cell for inp, _ in block)
        stride_in = 2 if move == 1 else 1
        self.ops = nn.ModuleList(
            build_op(op, channels, stride_in if inp < 2 else 1, spatial_dims=sd)
            for block in cell
            for inp, op in block
        )
        # Identity branches are never dropped (as in DARTS): dropping them removes no compute.
        self._droppable = tuple(not isinstance(op, nn.Identity) for op in self.ops)

    def set_drop_path_rate(self, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.drop_path_rate = float(rate)

    def forward(
        self, prev_prev: torch.Tensor, prev: torch.Tensor, out_size: tuple[int, ...]
    ) -> torch.Tensor:
        if self.move == -1:
            prev = _resize(prev, out_size)  # (N, C_prev, *out_size)
        in_size = tuple(prev.shape[2:])
        states = [
            self.preprocess0(_resize(prev_prev, in_size)),  # (N, f, *in_size)
            self.preprocess1(prev),  # (N, f, *in_size)
        ]
        for b in range(self.blocks):
            out = None
            for j in (2 * b, 2 * b + 1):
                x = self.ops[j](states[self.inputs[j]])
                if self._droppable[j]:
                    x = drop_path(x, self.drop_path_rate, self.training)
                out = x if out is None else out + x
            states.append(out)  # (N, f, *out_size)
        return torch.cat(states[2:], dim=1)  # (N, B * f, *out_size)


class Encoder(nn.Module):
    """Stem + one cell per active transition of ``genotype.topology``: named features.

    A single path has one cell per layer; a multi-path topology (DiNTS) has one cell per active
    transition, and every active node sums the outputs of the cells entering it.
    :attr:`cells` holds the cells in the order of :meth:`Topology.transitions` (layer by
    layer), so a single path keeps the cell indices (and state_dict keys) of a path network.

    ``forward(x)`` returns ``{"stride4": low-level feature, "out": finest last-layer node}`` and,
    for a multi-path topology whose last layer has several active nodes, one more entry per
    coarser node, ``"out<stride>"`` (e.g. ``"out16"``); :attr:`output_keys` lists the output
    entries from finest to coarsest, :attr:`out_channels` and :attr:`strides` describe every
    entry. ``spatial_dims=3`` builds it for volumes ``(N, in_channels, D, H, W)``.
    """

    def __init__(
        self,
        genotype: Genotype,
        filter_multiplier: int,
        in_channels: int = 3,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if filter_multiplier < 1:
            raise ValueError(f"filter_multiplier must be >= 1, got {filter_multiplier}")
        self.genotype = genotype
        self.in_channels = in_channels
        self.spatial_dims = space.check_spatial_dims(spatial_dims)
        self.stem = Stem(in_channels, spatial_dims=spatial_dims)
        topo = genotype.topology
        # Node tensors by (layer, level); layer -2 / -1 are the stem's stride-2 / stride-4
        # outputs (level -1 and 0), which the first two layers read.
        width = {
            _STEM2: self.stem.out_channels["stride2"],
            _STEM4: self.stem.out_channels["stride4"],
        }
        cells, plan = [], []
        for layer, src, dst in topo.transitions():
            pp = (layer - 2, topo.prev_prev_level(layer, dst))
            cell = Cell(
                genotype.cell,
                width[pp],
                width[(layer - 1, src)],
                filter_multiplier * 2**dst,
                dst - src,
                spatial_dims,
            )
            cells.append(cell)
            plan.append(CellPlan(layer, src, dst, pp))
            width[(layer, dst)] = cell.out_channels
        self.cells = nn.ModuleList(cells)
        self.plan: tuple[CellPlan, ...] = tuple(plan)
        # layer of the decoder's low-level node (on a path, the index of its cell)
        self.low_level_index = topo.low_level_layer()
        self.low_level_node = (
            _STEM4 if self.low_level_index is None else (self.low_level_index, space.STEM_LEVEL)
        )
        last = topo.num_layers - 1
        self.output_levels = genotype.output_levels
        self.output_keys = tuple(
            "out" if i == 0 else f"out{space.LEVEL_STRIDES[k]}"
            for i, k in enumerate(self.output_levels)
        )
        self.out_channels = {"stride4": width[self.low_level_node]}
        self.strides = {"stride4": space.LEVEL_STRIDES[0]}
        for key, level in zip(self.output_keys, self.output_levels, strict=True):
            self.out_channels[key] = width[(last, level)]
            self.strides[key] = space.LEVEL_STRIDES[level]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` saying what works if ``x`` cannot go through this encoder."""
        volumes = self.spatial_dims == 3
        axes = "D, H, W" if volumes else "H, W"
        if x.ndim != 2 + self.spatial_dims:
            raise ValueError(
                f"expected {'a volume' if volumes else 'an image'} batch of shape "
                f"(N, {self.in_channels}, {axes}), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}); pass tensors of shape "
                f"(N, {self.in_channels}, {axes})"
            )
        deepest = self.genotype.max_stride
        sides = tuple(x.shape[2:])
        if min(sides) <= deepest:
            what = "every side" if volumes else "height and width"
            unit = "voxels" if volumes else "pixels"
            shape = "x".join(str(s) for s in sides)
            raise ValueError(
                f"input {shape} is too small for this path: its deepest level has stride "
                f"{deepest}, so {what} must be at least {deepest + 1} {unit} "
                f"(for a deepest feature map of at least 2 per side)"
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        stem = self.stem(x)
        sizes = [tuple(stem["stride4"].shape[2:])]
        for _ in range(1, space.NUM_LEVELS):
            # ceil(h / 2) written as (h + 1) // 2: ONNX export traces these sizes, and its
            # integer division truncates, so the -(-h // 2) idiom would round the wrong way.
            sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
        nodes = {_STEM2: stem["stride2"], _STEM4: stem["stride4"]}
        # Cells come layer by layer and read layers l - 1 and l - 2 only, so a node of layer l
        # can accumulate its incoming cells in place.
        for cell, p in zip(self.cells, self.plan, strict=True):
            y = cell(nodes[p.prev_prev], nodes[(p.layer - 1, p.src)], sizes[p.dst])
            key = (p.layer, p.dst)  # (N, B*f, *size_k)
            nodes[key] = y if key not in nodes else nodes[key] + y
        last = self.genotype.layers - 1
        out = {"stride4": nodes[self.low_level_node]}
        for key, level in zip(self.output_keys, self.output_levels, strict=True):
            out[key] = nodes[(last, level)]
        return out


_STEM2 = (-2, -1)
"""Node key of the stem's stride-2 output (``H^{l-2}`` of layer 0)."""
_STEM4 = (-1, space.STEM_LEVEL)
"""Node key of the stem's stride-4 output (``H^{l-1}`` of layer 0, ``H^{l-2}`` of layer 1)."""


@dataclass(frozen=True)
class CellPlan:
    """Where a cell of the encoder sits: its transition and the node giving its ``H^{l-2}``."""

    layer: int
    src: int
    dst: int
    prev_prev: tuple[int, int]


def low_level_cell_index(path: Sequence[int]) -> int | None:
    """Index of the cell whose output feeds the decoder, or ``None`` for the stem's stride 4.

    The last cell of the path's initial run at level 0 (index 2 for the released path); a path
    whose first cell is at level 1 has no such cell (:meth:`Topology.low_level_layer`).
    """
    return Topology.from_path(path).low_level_layer()


def head_rates(
    genotype: Genotype, aspp_rates: Sequence[int] | None = None
) -> tuple[tuple[int, ...], ...]:
    """ASPP atrous rates of every output node (``genotype.output_levels``, finest first).

    ``None``: DeepLab's rates for each node's stride (:func:`atrous_rates_for_stride`).
    Explicit ``aspp_rates`` are the rates at the output stride (the finest node, the only one
    of a single path); a node ``2^j`` times coarser divides them by ``2^j`` (rounded half up,
    at least 1), which keeps their field of view in input pixels, as DeepLab's rule does.
    """
    levels = genotype.output_levels
    if aspp_rates is None:
        return tuple(atrous_rates_for_stride(space.LEVEL_STRIDES[k]) for k in levels)
    rates = tuple(aspp_rates)
    return tuple(
        tuple(max(1, (2 * r + 2 ** (k - levels[0])) // 2 ** (k - levels[0] + 1)) for r in rates)
        for k in levels
    )


class MultiASPP(nn.Module):
    """One :class:`~autodeeplab.heads.ASPP` per output node of a multi-path encoder; their
    outputs are resized to the first (finest) one and summed.

    ``forward(*features)`` takes the features finest first, ``(N, C_i, *spatial_i)``, and
    returns ``(N, channels, *spatial_0)``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        rates: Sequence[tuple[int, ...]],
        channels: int = DEFAULT_ASPP_CHANNELS,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            ASPP(c, r, channels, spatial_dims=spatial_dims)
            for c, r in zip(in_channels, rates, strict=True)
        )
        self.out_channels = channels

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        ys = [head(x) for head, x in zip(self.heads, features, strict=True)]
        size = ys[0].shape[2:]
        y = ys[0]
        for other in ys[1:]:
            y = y + _resize(other, size)  # (N, channels, *spatial_0)
        return y


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that defines an :class:`AutoDeepLab` (besides its weights).

    ``in_channels``: image channels (3 for RGB) or, for volumes, the number of modalities;
    ``spatial_dims``: 2 for images, 3 for volumes.
    """

    genotype: Genotype
    num_classes: int = 19
    filter_multiplier: int = 20
    in_channels: int = 3
    aspp_channels: int = DEFAULT_ASPP_CHANNELS
    aspp_rates: tuple[int, ...] | None = None
    decoder_channels: int = DEFAULT_DECODER_CHANNELS
    low_level_reduced: int = DEFAULT_LOW_LEVEL_CHANNELS
    drop_path_rate: float = 0.0
    spatial_dims: int = 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["genotype"] = self.genotype.to_dict()
        d["aspp_rates"] = None if self.aspp_rates is None else list(self.aspp_rates)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        valid = {f.name for f in fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise ValueError(
                f"unknown network config keys {sorted(unknown)}; valid keys: {sorted(valid)}"
            )
        data = dict(data)
        if "genotype" not in data:
            raise ValueError("network config needs a 'genotype'")
        if not isinstance(data["genotype"], Genotype):
            data["genotype"] = Genotype.from_dict(data["genotype"])
        if data.get("aspp_rates") is not None:
            data["aspp_rates"] = tuple(data["aspp_rates"])
        return cls(**data)


class AutoDeepLab(nn.Module):
    """Discrete Auto-DeepLab: ``(N, in_channels, H, W) -> logits (N, num_classes, H, W)``, or
    with ``spatial_dims=3`` volumes ``(N, in_channels, D, H, W) -> (N, num_classes, D, H, W)``.

    Parts: :attr:`encoder` (stem + cells), :attr:`aspp`, :attr:`decoder`. ASPP atrous rates
    default to DeepLab's convention for the output stride of the last cell
    (:func:`~autodeeplab.heads.atrous_rates_for_stride`).

    Scheduled Drop Path: a cell of layer ``i`` (0-based) of ``L`` drops each non-identity
    branch with probability ``drop_path_rate * (i + 1) / L * progress``; the training loop sets
    ``progress`` in ``[0, 1]`` with :meth:`set_drop_path` (it starts at 1, the full rate).
    Drop path never acts in eval mode.
    """

    def __init__(
        self,
        genotype: Genotype,
        num_classes: int = 19,
        filter_multiplier: int = 20,
        *,
        in_channels: int = 3,
        aspp_channels: int = DEFAULT_ASPP_CHANNELS,
        aspp_rates: tuple[int, ...] | None = None,
        decoder_channels: int = DEFAULT_DECODER_CHANNELS,
        low_level_reduced: int = DEFAULT_LOW_LEVEL_CHANNELS,
        drop_path_rate: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        space.check_spatial_dims(spatial_dims)
        if not isinstance(genotype, Genotype):
            raise ValueError(f"genotype must be a Genotype, got {type(genotype).__name__}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        rates_by_node = head_rates(genotype, aspp_rates)
        rates = rates_by_node[0]
        self.config = NetworkConfig(
            genotype=genotype,
            num_classes=num_classes,
            filter_multiplier=filter_multiplier,
            in_channels=in_channels,
            aspp_channels=aspp_channels,
            aspp_rates=None if aspp_rates is None else rates,
            decoder_channels=decoder_channels,
            low_level_reduced=low_level_reduced,
            drop_path_rate=drop_path_rate,
            spatial_dims=spatial_dims,
        )
        self.genotype = genotype
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        sd = spatial_dims
        self.encoder = Encoder(genotype, filter_multiplier, in_channels, sd)
        outputs = self.encoder.output_keys
        self.aspp: nn.Module = (
            ASPP(self.encoder.out_channels["out"], rates, aspp_channels, spatial_dims=sd)
            if len(outputs) == 1
            else MultiASPP(
                [self.encoder.out_channels[k] for k in outputs], rates_by_node, aspp_channels, sd
            )
        )
        self.decoder = DeepLabV3PlusDecoder(
            self.encoder.out_channels["stride4"],
            num_classes,
            aspp_channels=aspp_channels,
            channels=decoder_channels,
            low_level_reduced=low_level_reduced,
            spatial_dims=sd,
        )
        self.drop_path_rate = drop_path_rate
        self.set_drop_path(1.0)

    @classmethod
    def from_config(cls, config: NetworkConfig) -> AutoDeepLab:
        kwargs = {f.name: getattr(config, f.name) for f in fields(config)}
        return cls(**kwargs)

    @property
    def output_stride(self) -> int:
        return self.genotype.output_stride

    def set_drop_path(self, progress: float) -> tuple[float, ...]:
        """Set training progress in ``[0, 1]``; returns the per-cell drop rates now in use."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"drop path progress must be in [0, 1], got {progress}")
        n = self.genotype.layers
        for cell, plan in zip(self.encoder.cells, self.encoder.plan, strict=True):
            cell.set_drop_path_rate(self.drop_path_rate * (plan.layer + 1) / n * progress)
        return self.drop_path_rates()

    def drop_path_rates(self) -> tuple[float, ...]:
        """Current drop probability of each cell (applies in training mode only)."""
        return tuple(cell.drop_path_rate for cell in self.encoder.cells)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)  # {"stride4": (N, C_low, *spatial/4), "out": (N, C, *spatial/s)}
        y = self.aspp(*(feats[k] for k in self.encoder.output_keys))  # (N, 256, *spatial/s)
        y = self.decoder(y, feats["stride4"])  # (N, classes, *spatial/4)
        return ops.resize(y, x.shape[2:])  # (N, classes, *spatial)
