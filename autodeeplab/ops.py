"""The candidate operations as a registry: one :class:`OpSpec` per operation.

An entry describes an operation fully: its name, its module factory (the discrete operation, used
by the retrained network and, for unfused ops, by the supernet), whether it is parameter-free,
and how the supernet fuses it over the edges of a cell (:class:`Fusion`). The built-in entries are
the eight operations of :data:`autodeeplab.space.PRIMITIVES`, in that order; more can be added
with :func:`register_op` (see docs/extending.md).

Every factory has the same signature ``factory(channels, stride, affine) -> nn.Module`` and maps
``(N, channels, H, W)`` to ``(N, channels, ceil(H / stride), ceil(W / stride))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from autodeeplab import space

OpFactory = Callable[[int, int, bool], nn.Module]


class Zero(nn.Module):
    """The ``none`` operation: a zero tensor of the output shape."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BatchNorm."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding, dilation, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked [ReLU, depthwise kxk, pointwise 1x1, BN]; the stride is in the first one."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, affine: bool = True):
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        for s in (stride, 1):
            layers += [
                nn.ReLU(inplace=False),
                nn.Conv2d(channels, channels, kernel_size, s, pad, groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels, affine=affine),
            ]
        super().__init__(*layers)


def _skip(channels: int, stride: int, affine: bool) -> nn.Module:
    if stride == 1:
        return nn.Identity()
    # Identity cannot change resolution; like the released network, use ReLU-1x1 conv-BN.
    return ReLUConvBN(channels, channels, 1, stride, 0, affine=affine)


FUSION_KINDS: tuple[str, ...] = ("zero", "shared", "sep_conv", "dilated_conv")
"""How the supernet can compute an op on all the edges that leave one cell input at once:

* ``zero``: contributes nothing (``none``).
* ``shared``: parameter-free at stride 1; the factory's module runs once and its output is shared
  by every edge (pooling, identity).
* ``sep_conv``: two stacked [ReLU, depthwise ``k x k``, pointwise 1x1, BN], one grouped
  convolution for all edges.
* ``dilated_conv``: ReLU, dense ``k x k`` convolution with ``dilation``, BN; one convolution
  whose output channels hold every edge.

An op without a fusion runs as one module per edge (the factory's), mixed by a weighted sum.
"""


@dataclass(frozen=True)
class Fusion:
    """The supernet's fused kernel for an op: a kind of :data:`FUSION_KINDS` and, for the
    convolution kinds, its kernel size and dilation."""

    kind: str
    kernel_size: int = 1
    dilation: int = 1

    def __post_init__(self) -> None:
        if self.kind not in FUSION_KINDS:
            raise ValueError(
                f"unknown fusion kind {self.kind!r}; valid kinds: {', '.join(FUSION_KINDS)}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0 or self.dilation < 1:
            raise ValueError(
                "fusion kernel_size must be odd and positive and dilation positive, got "
                f"kernel_size={self.kernel_size}, dilation={self.dilation}"
            )


@dataclass(frozen=True)
class OpSpec:
    """One operation of the registry.

    ``parameter_free``: the op has no parameters in a search cell (stride 1); ``fusion``: how
    the supernet fuses it, ``None`` for a plain module per edge.
    """

    name: str
    factory: OpFactory
    parameter_free: bool
    fusion: Fusion | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"an operation name must be a non-empty identifier, got {self.name!r}")
        shared = self.fusion is not None and self.fusion.kind in ("zero", "shared")
        if shared and not self.parameter_free:
            raise ValueError(
                f"operation {self.name!r}: fusion {self.fusion.kind!r} needs a "
                "parameter-free operation"
            )


_BUILTIN: tuple[OpSpec, ...] = (
    OpSpec("none", lambda c, stride, affine: Zero(stride), True, Fusion("zero")),
    OpSpec(
        "max_pool_3x3",
        lambda c, stride, affine: nn.MaxPool2d(3, stride, padding=1),
        True,
        Fusion("shared"),
    ),
    OpSpec(
        "avg_pool_3x3",
        lambda c, stride, affine: nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
        True,
        Fusion("shared"),
    ),
    OpSpec("skip_connect", _skip, True, Fusion("shared")),
    OpSpec(
        "sep_conv_3x3",
        lambda c, stride, affine: SepConv(c, 3, stride, affine),
        False,
        Fusion("sep_conv", 3),
    ),
    OpSpec(
        "sep_conv_5x5",
        lambda c, stride, affine: SepConv(c, 5, stride, affine),
        False,
        Fusion("sep_conv", 5),
    ),
    OpSpec(
        "atr_conv_3x3",
        lambda c, stride, affine: ReLUConvBN(c, c, 3, stride, 2, 2, affine),
        False,
        Fusion("dilated_conv", 3, dilation=2),
    ),
    OpSpec(
        "atr_conv_5x5",
        lambda c, stride, affine: ReLUConvBN(c, c, 5, stride, 4, 2, affine),
        False,
        Fusion("dilated_conv", 5, dilation=2),
    ),
)

OP_REGISTRY: dict[str, OpSpec] = {spec.name: spec for spec in _BUILTIN}
"""Every known operation by name: the built-in ones in :data:`autodeeplab.space.PRIMITIVES`
order, then those added with :func:`register_op`."""

if tuple(OP_REGISTRY) != space.PRIMITIVES:  # the canonical order is defined in one place
    raise RuntimeError(f"built-in operations {tuple(OP_REGISTRY)} do not follow space.PRIMITIVES")

OPS: dict[str, OpFactory] = {name: OP_REGISTRY[name].factory for name in space.PRIMITIVES}
"""Factories of the built-in operations, keyed by the names of :data:`space.PRIMITIVES`."""


def get_op(name: str) -> OpSpec:
    """Registry entry of ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    if name not in OP_REGISTRY:
        raise ValueError(
            f"unknown operation {name!r}; valid operations are: {', '.join(OP_REGISTRY)}"
        )
    return OP_REGISTRY[name]


def register_op(spec: OpSpec) -> OpSpec:
    """Add an operation to the registry; it can then be named in a
    :class:`~autodeeplab.space.SearchSpace` and in genotypes. A taken name raises
    ``ValueError``."""
    if spec.name in OP_REGISTRY:
        raise ValueError(f"operation {spec.name!r} is already registered")
    OP_REGISTRY[spec.name] = spec
    space.add_op_name(spec.name)
    return spec


def unregister_op(name: str) -> None:
    """Remove an operation added with :func:`register_op` (built-in ones stay)."""
    if name in space.PRIMITIVES:
        raise ValueError(f"{name!r} is a built-in operation and cannot be removed")
    get_op(name)
    del OP_REGISTRY[name]
    space.remove_op_name(name)


def build_op(name: str, channels: int, stride: int = 1, affine: bool = True) -> nn.Module:
    """Build operation ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    spec = get_op(name)
    if stride not in (1, 2):
        raise ValueError(f"operations support stride 1 or 2, got {stride}")
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    return spec.factory(channels, stride, affine)
