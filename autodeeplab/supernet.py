"""The Auto-DeepLab supernet: continuous relaxation over cells and over the network path.

Layout of the computation (the mathematics is the paper's; only the batching is ours):

* Every trellis node ``(layer l, level s)`` owns **one** search cell ``Cell(., .; alpha)``. The
  node update of the paper,

      sH^l = sum over sources s' of  beta(s' -> s) * Cell(s' H^{l-1} -> s, sH^{l-2}),

  applies that cell to up to three sources. The sources are stacked along the batch dimension
  and run through the cell in one pass; every BatchNorm keeps separate statistics (batch and
  running) per source, so the result equals three separate applications of the cell.
* Inside a cell, all edges that leave the same input (a cell input or a block output) are fused
  as each op's registry entry says (:class:`autodeeplab.ops.Fusion`): their convolutions run as
  one grouped convolution, the parameter-free ops (pooling, identity) are computed once and
  shared by every edge, and ``none`` costs nothing. Ops without a fusion run per edge.
* Input 0 (``H^{l-2}``) is the same tensor for every source of a node, so its edges are
  computed once and broadcast to the sources.

An auxiliary skip connection (DARTS-, Chu et al., ICLR 2021; off by default): ``forward(x,
aux_skip=c)`` adds ``c * x`` to the output of every mixed edge, outside the softmax. Every edge
of a search cell keeps the shape of its input (stride 1, same channels), so all edges get it.

Memory options (off by default, the paper's mathematics is the default):

* ``checkpoint_cells``: gradient checkpointing of every node's cell.
* ``selective_checkpoint``: keep only the outputs of a node's dense and pointwise convolutions;
  ReLU, BatchNorm, pooling, depthwise convolutions and the op mixing are recomputed in the
  backward pass (the same mathematics, less memory than storing everything, less time than
  ``checkpoint_cells``).
* ``partial_channels = K``: PC-DARTS partial-channel connections; only ``1/K`` of the channels of
  an edge go through the mixed operation, the rest bypass it, followed by a channel shuffle; the
  block inputs are weighted by edge-normalisation logits (an extra architecture parameter).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from autodeeplab import ops, space
from autodeeplab.genotype import Genotype
from autodeeplab.heads import search_head_rates
from autodeeplab.projection import CellProjection
from autodeeplab.relaxation import Relaxation, SoftmaxRelaxation

# True while torch.utils.checkpoint recomputes a forward pass: BatchNorm must not update its
# running statistics a second time.
_RECOMPUTING: contextvars.ContextVar[bool] = contextvars.ContextVar("recomputing", default=False)


@contextlib.contextmanager
def _recompute_context() -> Iterator[None]:
    token = _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(token)


def _recomputing() -> bool:
    """True while gradient checkpointing recomputes a forward pass. False while
    ``torch.compile`` traces the forward pass (a first pass, never a recomputation): Dynamo
    cannot trace ``ContextVar.get``, which broke the graph at every BatchNorm."""
    return False if torch.compiler.is_compiling() else _RECOMPUTING.get()


def _checkpoint_contexts() -> tuple[
    contextlib.AbstractContextManager, contextlib.AbstractContextManager
]:
    return contextlib.nullcontext(), _recompute_context()


# Operations whose outputs selective checkpointing keeps: the dense and per-edge pointwise
# convolutions (the FLOPs of the cell). Everything else in a node (ReLU, BatchNorm, pooling,
# depthwise convolutions, the op mixing, concatenations) is recomputed in the backward pass.
_KEPT_MATRIX_OPS = frozenset(
    {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default}
)


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    if op is torch.ops.aten.convolution.default:
        x, groups = args[0], args[8]
        depthwise = groups > 1 and groups == x.shape[1]
        return CheckpointPolicy.PREFER_RECOMPUTE if depthwise else CheckpointPolicy.MUST_SAVE
    if op in _KEPT_MATRIX_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@contextlib.contextmanager
def _stacked(*managers: contextlib.AbstractContextManager) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


def _selective_checkpoint_contexts() -> tuple[
    contextlib.AbstractContextManager, contextlib.AbstractContextManager
]:
    forward, recompute = create_selective_checkpoint_contexts(_selective_policy)
    return forward, _stacked(recompute, _recompute_context())


class GroupBatchNorm(nn.Module):
    """BatchNorm without affine parameters and with separate statistics per group.

    The input ``(N * groups, C, *spatial)`` (images or volumes) holds ``groups`` interleaved
    sub-batches (sample ``n`` of group ``g`` at index ``n * groups + g``); each group is
    normalised with its own batch statistics and keeps its own running statistics.
    """

    def __init__(
        self, num_features: int, groups: int = 1, momentum: float = 0.1, eps: float = 1e-5
    ):
        super().__init__()
        self.num_features, self.groups = num_features, groups
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(groups * num_features))
        self.register_buffer("running_var", torch.ones(groups * num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        y = x.reshape(n // self.groups, self.groups * c, *spatial)  # free view: groups -> channels
        if self.training:
            # A recomputation (gradient checkpointing) must not update the running statistics a
            # second time: momentum 0 leaves them exactly as they are and runs the same
            # operations as the first pass (selective checkpointing replays them one by one).
            momentum = 0.0 if _recomputing() else self.momentum
            y = F.batch_norm(
                y,
                self.running_mean,
                self.running_var,
                training=True,
                momentum=momentum,
                eps=self.eps,
            )
        else:
            y = F.batch_norm(y, self.running_mean, self.running_var, training=False, eps=self.eps)
        return y.reshape(n, c, *spatial)

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}"


def _bn(num_features: int, affine: bool = False, spatial_dims: int = 2) -> nn.Module:
    return ops.layers(spatial_dims).batch_norm(num_features, affine=affine)


class MixedEdges(nn.Module):
    """All mixed-operation edges leaving one cell input, fused.

    ``forward(x, weights)`` maps ``x: (M, C, *spatial)`` (``M = N * groups``, the sources
    interleaved; images or volumes as ``spatial_dims`` says) and the op weights of the ``E``
    edges, ``weights: (E, O)``, to the ``E`` edge outputs ``(M, E, C, *spatial)``. ``aux_skip = c`` adds ``c * x`` to every edge output (DARTS-;
    with partial channels, to the channels that go through the operations: the others bypass
    them anyway).

    The kernels follow each op's registry entry (:class:`autodeeplab.ops.Fusion`): ``zero`` ops
    cost nothing, ``shared`` ops run once for all edges, ``sep_conv``, ``dilated_conv`` and
    ``factorized_conv`` ops run as one (grouped) convolution over all edges, with per-source BatchNorm statistics. An op
    without a fusion runs as one module per edge, applied to every source separately (so its
    BatchNorms normalise each source with its own batch statistics, as the fused kernels do; the
    sources share their running statistics).
    """

    def __init__(
        self,
        channels: int,
        num_edges: int,
        groups: int,
        partial_channels: int = 1,
        op_names: Sequence[str] = space.PRIMITIVES,
        spatial_dims: int = 2,
    ):
        super().__init__()
        if channels % partial_channels:
            raise ValueError(
                f"partial_channels={partial_channels} must divide the cell channels {channels}"
            )
        self.channels, self.num_edges, self.groups = channels, num_edges, groups
        self.partial, self.spatial_dims = partial_channels, spatial_dims
        self.op_names: tuple[str, ...] = tuple(op_names)
        c = channels // partial_channels  # channels that go through the operations
        ec = num_edges * c
        pointwise = _EDGE_POINTWISE[spatial_dims]
        conv = _REACHABLE_CONV[spatial_dims]  # skips the taps that read only padding
        self.shared = nn.ModuleDict()  # parameter-free: one output shared by all edges
        self.sep = nn.ModuleDict()
        self.atr = nn.ModuleDict()
        self.factorized = nn.ModuleDict()
        self.plain = nn.ModuleDict()  # no fusion: one module per edge
        self._shared_columns: list[int] = []
        self._kernels: list[tuple[int, str]] = []  # (alpha column, op name), in column order
        for column, name in enumerate(self.op_names):
            spec = ops.get_op(name)
            kind = spec.fusion.kind if spec.fusion is not None else None
            if kind == "zero":
                continue
            if kind == "shared":
                module = spec.build(c, 1, False, spatial_dims)
                if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
                    raise ValueError(
                        f"operation {name!r} is registered with fusion 'shared' but its module "
                        "has parameters or buffers; register it without a fusion"
                    )
                self.shared[name] = module
                self._shared_columns.append(column)
                continue
            k, d = (spec.fusion.kernel_size, spec.fusion.dilation) if spec.fusion else (1, 1)
            if kind == "sep_conv":
                self.sep[name] = nn.ModuleList(
                    [
                        conv(ec, ec, k, padding=k // 2, groups=ec, bias=False),  # depthwise
                        pointwise(ec, ec, 1, groups=num_edges, bias=False),  # per edge
                        GroupBatchNorm(ec, groups),
                        conv(ec, ec, k, padding=k // 2, groups=ec, bias=False),
                        pointwise(ec, ec, 1, groups=num_edges, bias=False),
                        GroupBatchNorm(ec, groups),
                    ]
                )
            elif kind == "dilated_conv":
                self.atr[name] = nn.ModuleList(
                    [
                        conv(c, ec, k, padding=d * (k // 2), dilation=d, bias=False),
                        GroupBatchNorm(ec, groups),
                    ]
                )
            elif kind == "factorized_conv":
                assert spec.fusion is not None and spec.fusion.axis is not None
                first, second = ops.factorized_kernels(k, spec.fusion.axis, spatial_dims)
                self.factorized[name] = nn.ModuleList(
                    [
                        conv(c, ec, first, padding=[q // 2 for q in first], bias=False),
                        conv(  # the second convolution, per edge
                            ec,
                            ec,
                            second,
                            padding=[q // 2 for q in second],
                            groups=num_edges,
                            bias=False,
                        ),
                        GroupBatchNorm(ec, groups),
                    ]
                )
            else:
                self.plain[name] = nn.ModuleList(
                    spec.build(c, 1, False, spatial_dims) for _ in range(num_edges)
                )
            self._kernels.append((column, name))
        cols = self._shared_columns
        # a slice when the columns are consecutive (the paper's ops): no gather in the graph
        self._shared_index: slice | list[int] = (
            slice(cols[0], cols[-1] + 1)
            if cols and cols == list(range(cols[0], cols[-1] + 1))
            else cols
        )

    def forward(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        edge_scale: torch.Tensor | None = None,
        aux_skip: float = 0.0,
    ) -> torch.Tensor:
        """``edge_scale: (E,)`` (PC-DARTS edge normalisation) scales each whole edge output."""
        if x.dim() != 2 + self.spatial_dims:
            raise ValueError(
                f"mixed edges built for spatial_dims={self.spatial_dims} expect a "
                f"{2 + self.spatial_dims}-D input (M, C, *spatial), got shape {tuple(x.shape)}"
            )
        m, _, *sp = x.shape
        e, c = self.num_edges, self.channels // self.partial
        xp = x[:, :c] if self.partial > 1 else x  # (M, c, *spatial)
        per_edge = (1, e, 1, *(1,) * len(sp))  # broadcasts an (E,) weight over (M, E, c, *spatial)

        def mix(op_out: torch.Tensor, k: int) -> torch.Tensor:  # (M, E*c, *sp) -> (M, E, c, *sp)
            return op_out.view(m, e, c, *sp) * weights[:, k].view(per_edge)

        # Parameter-free ops are shared by all edges: (M, P, c, *sp) x (E, P) -> (M, E, c, *sp)
        if self._shared_columns:
            free = torch.stack([op(xp) for op in self.shared.values()], dim=1)
            out = torch.einsum("mpc...,ep->mec...", free, weights[:, self._shared_index])
        else:
            out = xp.new_zeros(m, e, c, *sp)

        r = F.relu(xp)
        r_rep = None
        for k, name in self._kernels:
            if name in self.sep:
                if r_rep is None:  # (M, E*c, *spatial), laid out for the depthwise kernels
                    r_rep = _repeat_edges(r, e)
                dw1, pw1, bn1, dw2, pw2, bn2 = self.sep[name]
                y = bn1(pw1(_depthwise(dw1, r_rep)))
                # the ReLU runs in the depthwise layout: its saved output is the convolution's
                # saved input, not a second copy
                y = bn2(pw2(_depthwise(dw2, F.relu(_depthwise_layout(y)))))
            elif name in self.atr:
                conv, bn = self.atr[name]
                y = bn(conv(r))
            elif name in self.factorized:
                first, second, bn = self.factorized[name]
                y = bn(second(first(r)))
            else:
                y = self._per_edge(self.plain[name], xp)
            out = out + mix(y, k)
        if aux_skip:  # skipped at 0, so the paper's supernet is computed exactly as before
            out = out + aux_skip * xp.unsqueeze(1)

        if self.partial > 1:
            rest = x[:, c:].unsqueeze(1).expand(m, e, self.channels - c, *sp)
            out = _channel_shuffle(torch.cat((out, rest), dim=2), self.partial)
        if edge_scale is not None:
            out = out * edge_scale.view(per_edge)
        return out

    def _per_edge(self, modules: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        """Unfused op: module ``k`` on edge ``k``, every source separately;
        ``(M, E, c, *spatial)``."""
        m, c, *sp = x.shape
        g = self.groups
        by_source = x.view(m // g, g, c, *sp)
        outs = []
        for module in modules:
            # Under gradient checkpointing the recomputation must not update running statistics
            # a second time: it runs on copies of the buffers.
            scratch = _scratch_buffers(module) if _recomputing() else contextlib.nullcontext()
            with scratch:
                y = torch.stack([module(by_source[:, j]) for j in range(g)], dim=1)
            outs.append(y.view(m, c, *sp))
        return torch.stack(outs, dim=1)


@contextlib.contextmanager
def _scratch_buffers(module: nn.Module) -> Iterator[None]:
    """Run ``module`` on copies of its buffers, leaving the originals as they are (swapped, not
    restored in place: autograd may have saved the copies)."""
    saved = []
    for sub in module.modules():
        for name, buf in sub._buffers.items():
            if buf is not None:
                saved.append((sub, name, buf))
                sub._buffers[name] = buf.clone()
    try:
        yield
    finally:
        for sub, name, buf in saved:
            sub._buffers[name] = buf


def _channels_last_depthwise(x: torch.Tensor) -> bool:
    """Whether depthwise convolutions of ``x`` run in channels-last layout: 2D maps on the CPU,
    where oneDNN's depthwise kernels (3x3 and 5x5, forward + backward) are about twice as fast
    as in NCHW at the supernet's shapes (docs/supernet.md)."""
    return x.device.type == "cpu" and x.dim() == 4


def _depthwise_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout :func:`_depthwise` computes in (no copy when it already is)."""
    if _channels_last_depthwise(x):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _repeat_edges(x: torch.Tensor, edges: int) -> torch.Tensor:
    """``x: (M, c, *spatial)`` repeated ``edges`` times along the channels, ``(M, E*c,
    *spatial)``, as ``x.repeat(1, E, ...)`` but written directly in :func:`_depthwise`'s layout
    (one copy)."""
    if not _channels_last_depthwise(x):
        return x.repeat(1, edges, *(1,) * (x.dim() - 2))
    m, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1).unsqueeze(3).expand(m, h, w, edges, c)
    return nhwc.reshape(m, h, w, edges * c).permute(0, 3, 1, 2)


def _depthwise(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution, in channels-last layout for 2D maps on the CPU (see
    :func:`_channels_last_depthwise`); the output comes back in the default layout."""
    return conv(_depthwise_layout(x)).contiguous()


def _pointwise(conv: nn.Module, x: torch.Tensor, edges: int) -> torch.Tensor:
    """The per-edge 1x1 convolution ``conv`` (``edges`` groups, no bias) as one batched matrix
    product: ``(M, E*C, *spatial) -> (M, E*C, *spatial)``, the same mathematics as the grouped
    convolution and the same parameter. On the CPU the grouped convolution runs group by group
    through copies (PyTorch's slow convolution path); alone, the matrix product is 1.1-3.7x
    faster, forward and backward, at the shapes of the supernet's cells, and the 321x321 weight
    step peaks 1.4 GiB lower (docs/supernet.md)."""
    m, ec, *sp = x.shape
    c = ec // edges
    w = conv.weight.view(edges, c, c)  # (E, C_out, C_in)
    return torch.matmul(w, x.reshape(m, edges, c, -1)).view(m, ec, *sp)


class EdgePointwise2d(nn.Conv2d):
    """Grouped 1x1 convolution without bias (one group per edge), computed by :func:`_pointwise`;
    parameters, initialisation and state_dict are those of the ``Conv2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pointwise(self, x, self.groups)


class EdgePointwise3d(nn.Conv3d):
    """:class:`EdgePointwise2d` for volumes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pointwise(self, x, self.groups)


_EDGE_POINTWISE = {2: EdgePointwise2d, 3: EdgePointwise3d}


def _reachable_taps(conv: nn.Module, size: Sequence[int]) -> tuple[int, ...] | None:
    """Per spatial axis, the largest tap offset (in taps from the centre) of ``conv``'s kernel
    that can reach a real pixel of a map of ``size``; ``None`` when every tap can (or ``conv``
    is not a stride-1 "same" convolution with odd kernels and zero padding).

    With stride 1 and padding ``dilation * (k // 2)``, output pixel ``p`` reads input pixel
    ``p + t * dilation`` through the tap ``t`` (``|t| <= k // 2``): a tap with ``|t| * dilation
    >= n`` reads only the zero padding at every output pixel of an axis of ``n`` pixels."""
    k, d = conv.kernel_size, conv.dilation
    if (
        conv.padding_mode != "zeros"
        or any(s != 1 for s in conv.stride)
        or any(ki % 2 == 0 for ki in k)
        or tuple(conv.padding) != tuple(di * (ki // 2) for ki, di in zip(k, d, strict=True))
    ):
        return None
    reach = tuple(min(ki // 2, (n - 1) // di) for ki, di, n in zip(k, d, size, strict=True))
    return None if all(r == ki // 2 for r, ki in zip(reach, k, strict=True)) else reach


class _ReachableTaps:
    """Convolution that leaves out the kernel taps which read only zero padding (see
    :func:`_reachable_taps`): on a map smaller than the kernel's reach, e.g. a 5x5 kernel of
    dilation 2 on the 2x2 maps of the coarsest level, it convolves with the kernel's central
    taps and the matching smaller padding. The same mathematics: every output is the same sum
    without its terms that multiply padding zeros, the gradient of the input is unchanged and
    that of the left-out taps is exactly zero (the slice's backward pass writes it). Parameters,
    initialisation and state_dict are those of the plain convolution. On the CPU the 5x5
    atrous convolutions of a 64x64 search step run about 8x faster on those maps
    (docs/supernet.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reach = _reachable_taps(self, x.shape[2:])
        if reach is None:
            return super().forward(x)  # type: ignore[misc]
        centre = [
            (ki // 2 - r, ki // 2 + r + 1) for ki, r in zip(self.kernel_size, reach, strict=True)
        ]
        weight = self.weight[(slice(None), slice(None), *(slice(a, b) for a, b in centre))]
        if not any(reach) and self.groups == self.in_channels == self.out_channels:
            # only the centre tap of a depthwise kernel is left: a per-channel scale (a 1x1
            # depthwise convolution takes PyTorch's group-by-group path, ~250x slower on the CPU)
            per_channel = (1, -1, *(1,) * (x.dim() - 2))
            y = x * weight.reshape(per_channel)
            return y if self.bias is None else y + self.bias.reshape(per_channel)
        padding = [r * di for r, di in zip(reach, self.dilation, strict=True)]
        conv = F.conv2d if x.dim() == 4 else F.conv3d
        return conv(x, weight, self.bias, 1, padding, self.dilation, self.groups)


class ReachableConv2d(_ReachableTaps, nn.Conv2d):
    """``nn.Conv2d`` that skips the kernel taps which read only padding (:class:`_ReachableTaps`)."""


class ReachableConv3d(_ReachableTaps, nn.Conv3d):
    """:class:`ReachableConv2d` for volumes."""


_REACHABLE_CONV = {2: ReachableConv2d, 3: ReachableConv3d}


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel shuffle of ``(M, E, C, *spatial)`` along ``C`` (PC-DARTS)."""
    m, e, c, *sp = x.shape
    return x.view(m, e, groups, c // groups, *sp).transpose(2, 3).reshape(m, e, c, *sp)


class SearchCell(nn.Module):
    """A cell with every candidate operation on every edge, applied to ``sources`` inputs at once.

    ``forward(s0, s1, alpha_weights)``: ``s0: (N, C, *spatial)`` is ``H^{l-2}`` (shared by all
    sources), ``s1: (N * sources, C, *spatial)`` the per-source ``H^{l-1}`` (interleaved, sample
    ``n`` of source ``g`` at ``n * sources + g``), ``alpha_weights: (E, O)`` for the ``O``
    operations ``op_names``. Returns the cell outputs ``(N * sources, B * C, *spatial)``.
    ``aux_skip``: see :class:`MixedEdges`.
    """

    def __init__(
        self,
        channels: int,
        blocks: int,
        sources: int,
        partial_channels: int = 1,
        op_names: Sequence[str] = space.PRIMITIVES,
        spatial_dims: int = 2,
    ):
        super().__init__()
        self.channels, self.blocks, self.sources = channels, blocks, sources
        # one fused group of edges per cell input (block B-1's output feeds no edge)
        self.edges = nn.ModuleList(
            MixedEdges(
                channels,
                len(space.edges_from_input(j, blocks)),
                1 if j == 0 else sources,
                partial_channels,
                op_names,
                spatial_dims,
            )
            for j in range(blocks + 1)
        )
        self.register_buffer(
            "edge_ids",
            torch.tensor([i for j in range(blocks + 1) for i in space.edges_from_input(j, blocks)]),
            persistent=False,
        )
        bounds = np.cumsum(
            [0] + [len(space.edges_from_input(j, blocks)) for j in range(blocks + 1)]
        )
        self._slices = tuple(slice(int(a), int(b)) for a, b in itertools.pairwise(bounds))

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        alpha_weights: torch.Tensor,
        edge_weights: torch.Tensor | None = None,
        aux_skip: float = 0.0,
    ) -> torch.Tensor:
        n, g = s0.shape[0], self.sources
        w = alpha_weights[self.edge_ids]  # (E, O), rows ordered by input
        ew = edge_weights[self.edge_ids] if edge_weights is not None else None
        sl = self._slices

        def edges(j: int, x: torch.Tensor) -> torch.Tensor:
            return self.edges[j](x, w[sl[j]], None if ew is None else ew[sl[j]], aux_skip)

        # inputs 0 and 1 feed every block
        y0 = edges(0, s0)  # (N, B, C, *spatial)
        y1 = edges(1, s1)  # (N*G, B, C, *spatial)
        _, _, c, *sp = y1.shape
        acc = (y1.view(n, g, self.blocks, c, *sp) + y0.unsqueeze(1)).view(
            n * g, self.blocks, c, *sp
        )
        partial = [acc[:, b] for b in range(self.blocks)]
        outs = []
        for b in range(self.blocks):
            h_b = partial[b]  # (N*G, C, *spatial): block b is complete
            outs.append(h_b)
            if b + 1 < self.blocks:
                y = edges(b + 2, h_b)  # (N*G, B-b-1, C, *spatial)
                for k, target in enumerate(range(b + 1, self.blocks)):
                    partial[target] = partial[target] + y[:, k]
        return torch.cat(outs, dim=1)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BatchNorm (no affine; safe under gradient checkpointing)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, spatial_dims: int = 2
    ):
        super().__init__(
            nn.ReLU(inplace=False),
            ops.layers(spatial_dims).conv(c_in, c_out, kernel, stride, kernel // 2, bias=False),
            GroupBatchNorm(c_out),
        )


class SearchNode(nn.Module):
    """Node ``(layer, level)``: preprocessing of its inputs, the shared cell, beta mixing."""

    def __init__(
        self,
        level: int,
        source_levels: tuple[int, ...],
        source_channels: tuple[int, ...],
        prev_prev_channels: int,
        channels: int,
        blocks: int,
        partial_channels: int = 1,
        op_names: Sequence[str] = space.PRIMITIVES,
        spatial_dims: int = 2,
    ):
        super().__init__()
        self.level, self.source_levels = level, source_levels
        sd = spatial_dims
        self.pre_prev_prev = ReLUConvBN(prev_prev_channels, channels, spatial_dims=sd)
        pre = []
        for src, c_src in zip(source_levels, source_channels, strict=True):
            if src < level:  # from the finer level: stride-2 convolution
                pre.append(ReLUConvBN(c_src, channels, kernel=3, stride=2, spatial_dims=sd))
            else:  # same level, or from the coarser level after (bi/tri)linear upsampling
                pre.append(ReLUConvBN(c_src, channels, spatial_dims=sd))
        self.pre_prev = nn.ModuleList(pre)
        self.cell = SearchCell(
            channels, blocks, len(source_levels), partial_channels, op_names, spatial_dims
        )

    def forward(
        self,
        prev: list[torch.Tensor],
        prev_prev: torch.Tensor,
        source_weights: torch.Tensor,
        alpha_weights: torch.Tensor,
        edge_weights: torch.Tensor | None,
        size: tuple[int, ...],
        aux_skip: float = 0.0,
    ) -> torch.Tensor:
        """``prev``: source tensors; ``source_weights``: ``(G,)`` betas; ``size``: the node's
        spatial size; returns ``(N, B*C, *size)``."""
        if tuple(prev_prev.shape[2:]) != tuple(size):
            prev_prev = ops.resize(prev_prev, size)
        s0 = self.pre_prev_prev(prev_prev)
        s1 = []
        for x, src, pre in zip(prev, self.source_levels, self.pre_prev, strict=True):
            if src > self.level:
                x = ops.resize(x, size)
            s1.append(pre(x))
        n, g = s0.shape[0], len(s1)
        s1_all = torch.stack(s1, dim=1).flatten(0, 1)  # (N*G, C, *size), source-interleaved
        out = self.cell(s0, s1_all, alpha_weights, edge_weights, aux_skip)  # (N*G, B*C, *size)
        out = out.view(n, g, *out.shape[1:])
        return torch.einsum("ng...,g->n...", out, source_weights)


class SearchASPP(nn.Module):
    """Search head of one level: 1x1 conv, one 3x3 conv with atrous rate ``rate`` (the paper:
    ``96 / stride``), image pooling; concatenated and projected to class logits.

    The image-pooling branch has no BatchNorm so that batch size 1 works in training mode.
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, rate: int, spatial_dims: int = 2
    ):
        super().__init__()
        lay = ops.layers(spatial_dims)
        self.conv1 = nn.Sequential(
            lay.conv(in_channels, channels, 1, bias=False),
            _bn(channels, True, spatial_dims),
            nn.ReLU(),
        )
        self.atrous = nn.Sequential(
            _REACHABLE_CONV[spatial_dims](
                in_channels, channels, 3, padding=rate, dilation=rate, bias=False
            ),
            _bn(channels, True, spatial_dims),
            nn.ReLU(),
        )
        self.pool = nn.Sequential(
            lay.adaptive_avg_pool(1), lay.conv(in_channels, channels, 1), nn.ReLU()
        )
        self.project = lay.conv(3 * channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat((self.conv1(x), self.atrous(x), pooled), dim=1))


class SearchStem(nn.Module):
    """Three 3x3 (3x3x3 for volumes) convs (64 s2, 64, 128 s2); returns the 1/2 and 1/4
    outputs (pre-activation)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, int, int] = (64, 64, 128),
        spatial_dims: int = 2,
    ):
        super().__init__()
        conv, sd = ops.layers(spatial_dims).conv, spatial_dims
        c0, c1, c2 = channels
        self.conv0 = nn.Sequential(conv(in_channels, c0, 3, 2, 1, bias=False), _bn(c0, True, sd))
        self.conv1 = nn.Sequential(conv(c0, c1, 3, 1, 1, bias=False), _bn(c1, True, sd))
        self.conv2 = nn.Sequential(conv(c1, c2, 3, 2, 1, bias=False), _bn(c2, True, sd))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.conv1(F.relu(self.conv0(x)))
        quarter = self.conv2(F.relu(half))
        return half, quarter


class SearchNetwork(nn.Module):
    """The Auto-DeepLab supernet.

    Args:
        num_classes: number of segmentation classes.
        layers: number of cell layers ``L`` (12 in the paper).
        blocks: blocks per cell ``B`` (5).
        filter_multiplier: ``F``; a node at level ``k`` has ``B * F * 2**k`` channels (8).
        in_channels: image channels.
        stem_channels: output channels of the three stem convolutions.
        partial_channels: PC-DARTS ``K`` (1 = off, the paper's mixed op on all channels).
        op_names: the candidate operations, in alpha-column order (names of the operation
            registry :data:`autodeeplab.ops.OP_REGISTRY`; default the paper's eight).
        relaxation: the architecture parameters and how they weight the supernet (built for the
            same search space); ``None`` = the paper's :class:`SoftmaxRelaxation`, with PC-DARTS
            edge normalisation when ``partial_channels > 1``.
        aspp_rates: atrous rate of the search head at each level (stride 4, 8, 16, 32);
            ``None`` = the paper's ``96 / stride`` (see :func:`autodeeplab.heads.search_head_rates`).
        checkpoint_cells: recompute every cell in the backward pass instead of storing its
            activations (saves memory, costs about one extra forward pass).
        selective_checkpoint: store only the outputs of every node's dense and pointwise
            convolutions and recompute the cheap rest (ReLU, BatchNorm, pooling, depthwise
            convolutions, op mixing) in the backward pass; excludes ``checkpoint_cells``.
        spatial_dims: 2 for images ``(N, C, H, W)``, 3 for volumes ``(N, C, D, H, W)``: every
            convolution, BatchNorm and pooling is built for it and resizing is trilinear
            (the search space's ``spatial_dims``).
        path: a fixed network-level path (one level per layer; the search space's ``path``):
            the supernet holds only the path's nodes, each reading its predecessor on the path
            with weight 1, and searches the cell alone; ``None`` (the paper): the whole trellis.

    ``forward(images)`` returns logits ``(N, num_classes, *spatial)`` at input size;
    ``forward(images, aux_skip=c)`` adds the DARTS- auxiliary skip connection ``c * x`` to every
    mixed edge (``c = 0``, the default, is the paper's supernet); ``arch_progress`` (the share of
    the architecture steps done) reaches relaxations with a schedule (the Gumbel temperature).
    """

    def __init__(
        self,
        num_classes: int,
        layers: int = space.DEFAULT_LAYERS,
        blocks: int = space.DEFAULT_BLOCKS,
        filter_multiplier: int = 8,
        in_channels: int = 3,
        stem_channels: tuple[int, int, int] = (64, 64, 128),
        partial_channels: int = 1,
        checkpoint_cells: bool = False,
        selective_checkpoint: bool = False,
        aspp_rates: Sequence[int] | None = None,
        op_names: Sequence[str] = space.PRIMITIVES,
        relaxation: Relaxation | None = None,
        spatial_dims: int = 2,
        path: Sequence[int] | None = None,
    ):
        super().__init__()
        if num_classes < 1 or layers < 1 or blocks < 1 or filter_multiplier < 1:
            raise ValueError(
                "num_classes, layers, blocks and filter_multiplier must be positive, got "
                f"{num_classes}, {layers}, {blocks}, {filter_multiplier}"
            )
        if partial_channels < 1 or filter_multiplier % partial_channels:
            raise ValueError(
                f"partial_channels must be a positive divisor of filter_multiplier={filter_multiplier}, "
                f"got {partial_channels}"
            )
        self.num_classes, self.layers, self.blocks = num_classes, layers, blocks
        self.filter_multiplier, self.in_channels = filter_multiplier, in_channels
        for name, flag in (
            ("checkpoint_cells", checkpoint_cells),
            ("selective_checkpoint", selective_checkpoint),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if checkpoint_cells and selective_checkpoint:
            raise ValueError(
                "checkpoint_cells and selective_checkpoint exclude each other: checkpoint_cells "
                "already recomputes the whole cell; choose one"
            )
        unfused = [name for name in op_names if ops.get_op(name).fusion is None]
        if selective_checkpoint and unfused:
            raise ValueError(
                f"selective_checkpoint needs operations registered with a fusion; {unfused} have "
                "none (use checkpoint_cells for them)"
            )
        self.partial_channels, self.checkpoint_cells = partial_channels, checkpoint_cells
        self.selective_checkpoint = selective_checkpoint
        rates = search_head_rates("paper" if aspp_rates is None else aspp_rates, None)
        self.aspp_rates: tuple[int, ...] = rates
        self.search_space = space.SearchSpace(
            layers, blocks, tuple(op_names), spatial_dims, None if path is None else tuple(path)
        )
        self.spatial_dims = spatial_dims

        self.stem = SearchStem(in_channels, stem_channels, spatial_dims)
        half_c, quarter_c = stem_channels[1], stem_channels[2]

        def node_channels(level: int) -> int:
            return blocks * filter_multiplier * 2**level

        self.nodes = nn.ModuleDict()
        for t in self.search_space.all_nodes():
            src_c = (quarter_c,) if t.layer == 0 else tuple(node_channels(s) for s in t.sources)
            pp_c = (
                (half_c if t.prev_prev < 0 else quarter_c)
                if t.layer < 2
                else node_channels(t.prev_prev)
            )
            self.nodes[self._key(t.layer, t.level)] = SearchNode(
                t.level,
                t.sources,
                src_c,
                pp_c,
                filter_multiplier * 2**t.level,
                blocks,
                partial_channels,
                self.search_space.ops,
                spatial_dims,
            )
        last_levels = self.search_space.levels_at(layers - 1)
        self.heads = nn.ModuleList(
            SearchASPP(node_channels(s), node_channels(s), num_classes, rates[s], spatial_dims)
            for s in last_levels
        )

        # Created last, as the architecture parameters always were: seeded runs start alike.
        if relaxation is None:
            relaxation = SoftmaxRelaxation(
                self.search_space, edge_normalisation=partial_channels > 1
            )
        elif relaxation.space != self.search_space:
            raise ValueError(
                f"the relaxation was built for {relaxation.space}, the supernet's search space is "
                f"{self.search_space}"
            )
        self.relaxation = relaxation
        # Registered on the supernet itself: the state_dict keys are the relaxation's names
        # (``alphas``, ``betas``, ``edge_logits``), as in every checkpoint written so far.
        self._arch_names: tuple[str, ...] = ()
        for name, param in relaxation.init_parameters().items():
            self.register_parameter(name, param)
            self._arch_names += (name,)
        self.projection: CellProjection | None = None
        """Decisions of a perturbation-based selection applied to the op weights
        (:mod:`autodeeplab.projection`); ``None``: the relaxation's weights unchanged."""

    # ------------------------------------------------------------------ trellis structure
    @staticmethod
    def _key(layer: int, level: int) -> str:
        return f"{layer}_{level}"

    # ------------------------------------------------------------------ parameters
    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters of the relaxation (softmax: alphas ``(E, O)``, betas
        ``(L, 4, 3)``, + PC-DARTS edge logits ``(E,)``)."""
        return [p for p in self.arch_state().values() if p is not None]

    def arch_state(self) -> dict[str, torch.Tensor | None]:
        """The architecture tensors by name, read from the module at call time (so that
        ``torch.func.functional_call`` substitutes them too)."""
        return {name: getattr(self, name) for name in self._arch_names}

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def alpha_weights(self, arch_progress: float = 0.0) -> torch.Tensor:
        """Op mixing weights ``(E, O)`` of a forward pass in the supernet's current mode (see
        :meth:`Relaxation.forward_op_weights`), with the decisions of :attr:`projection`
        applied."""
        weights = self.relaxation.forward_op_weights(
            self.arch_state(), self.training, arch_progress
        )
        return weights if self.projection is None else self.projection.apply(weights)

    def beta_weights(self) -> torch.Tensor:
        """Transition weights ``(L, 4, 3)`` (see :meth:`Relaxation.transition_weights`)."""
        return self.relaxation.transition_weights(self.arch_state())

    def edge_weights(self) -> torch.Tensor | None:
        """Whole-edge scales ``(E,)`` or ``None`` (see :meth:`Relaxation.edge_weights`)."""
        return self.relaxation.edge_weights(self.arch_state())

    def used_beta_mask(self) -> torch.Tensor:
        """True for the beta entries that take part in the forward pass ``(L, 4, 3)``."""
        return torch.tensor(self.search_space.used_transition_mask())

    # ------------------------------------------------------------------ decoding
    def genotype(self) -> Genotype:
        """Decode the current architecture (see :meth:`Relaxation.decode`); with a
        :attr:`projection`, its cell replaces the decoded one."""
        genotype = self.relaxation.decode(self.arch_state())
        if self.projection is None:
            return genotype
        return self.projection.genotype(genotype, self.relaxation.op_weights(self.arch_state()))

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: torch.Tensor, aux_skip: float = 0.0, arch_progress: float = 0.0
    ) -> torch.Tensor:
        axes = "H, W" if self.spatial_dims == 2 else "D, H, W"
        if x.dim() != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            kind = "images" if self.spatial_dims == 2 else "volumes"
            raise ValueError(
                f"expected {kind} of shape (N, {self.in_channels}, {axes}), got {tuple(x.shape)}"
            )
        min_size = 2 ** (space.NUM_LEVELS + 1)
        if min(x.shape[2:]) < min_size:
            raise ValueError(
                f"input {tuple(x.shape[2:])} is too small: the supernet reaches stride 32, so "
                f"{axes} must be at least {min_size}"
            )
        alpha_w = self.alpha_weights(arch_progress)
        beta_w = self.beta_weights()
        edge_w = self.edge_weights()

        half, quarter = self.stem(x)
        sizes = [tuple(quarter.shape[2:])]
        for _ in range(space.NUM_LEVELS - 1):
            sizes.append(tuple(math.ceil(d / 2) for d in sizes[-1]))

        prev_prev: dict[int, torch.Tensor] = {-1: half}  # layer l-2, by level
        prev: dict[int, torch.Tensor] = {space.STEM_LEVEL: quarter}  # layer l-1, by level
        for layer in range(self.layers):
            current = {}
            for t in self.search_space.nodes(layer):
                level, srcs = t.level, t.sources
                node = self.nodes[self._key(layer, level)]
                weights = torch.stack(
                    [beta_w[layer, s, space.move_between(s, level)] for s in srcs]
                )
                pp = prev_prev[t.prev_prev]
                inputs = (
                    [prev[s] for s in srcs],
                    pp,
                    weights,
                    alpha_w,
                    edge_w,
                    sizes[level],
                    aux_skip,
                )
                if self.checkpoint_cells and torch.is_grad_enabled():
                    current[level] = checkpoint(
                        node, *inputs, use_reentrant=False, context_fn=_checkpoint_contexts
                    )
                elif self.selective_checkpoint and torch.is_grad_enabled():
                    current[level] = checkpoint(
                        node,
                        *inputs,
                        use_reentrant=False,
                        context_fn=_selective_checkpoint_contexts,
                    )
                else:
                    current[level] = node(*inputs)
            prev_prev, prev = prev, current

        logits = None
        last_levels = self.search_space.levels_at(self.layers - 1)
        for level, head in zip(last_levels, self.heads, strict=True):
            y = ops.resize(head(prev[level]), x.shape[2:])
            logits = y if logits is None else logits + y
        return logits
