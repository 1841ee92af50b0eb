"""The candidate operations as a registry: one :class:`OpSpec` per operation.

An entry describes an operation fully: its name, its module factory (the discrete operation, used
by the retrained network and, for unfused ops, by the supernet), whether it is parameter-free,
how the supernet fuses it over the edges of a cell (:class:`Fusion`), and the spatial
dimensionalities it exists for (2: images, 3: volumes). The built-in entries are
:data:`autodeeplab.space.BUILTIN_OPS`: the eight operations of
:data:`autodeeplab.space.PRIMITIVES`, in that order, then ``conv_3x3`` and the volume-only
pseudo-3D convolutions of DiNTS; more can be added with :func:`register_op` (see
docs/extending.md).

Every factory has the signature ``factory(channels, stride, affine, spatial_dims)`` and maps
``(N, channels, *spatial)`` to ``(N, channels, *ceil(spatial / stride))``; an entry declared
for images only (``OpSpec.spatial_dims == (2,)``, the default) is called without the last
argument, ``factory(channels, stride, affine)``.

Layer classes (convolution, BatchNorm, pooling) and the interpolation mode are chosen by
``spatial_dims`` in one place, :func:`layers`; every module of the library that works on images
and volumes alike asks it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autodeeplab import space

OpFactory = Callable[..., nn.Module]
"""``factory(channels, stride, affine[, spatial_dims]) -> nn.Module``."""


class AvgPool3d(nn.AvgPool3d):
    """``nn.AvgPool3d`` that also pools volumes smaller than its kernel.

    PyTorch's 3D average pooling refuses an input smaller than the kernel even when the padding
    makes up for it (its 2D pooling does not); the coarsest levels of a small volume (a 2x1x2
    map at stride 32) need it. Such inputs are padded explicitly and divided by the number of
    voxels each window covers; every other input takes PyTorch's own kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, stride, pad = (_triple(v) for v in (self.kernel_size, self.stride, self.padding))
        if all(d >= k for d, k in zip(x.shape[2:], kernel, strict=True)):
            return super().forward(x)
        if self.ceil_mode or self.divisor_override is not None:
            raise ValueError(
                "AvgPool3d on a volume smaller than its kernel supports only ceil_mode=False "
                f"and divisor_override=None, got {self.ceil_mode} and {self.divisor_override}"
            )
        padding = [p for q in reversed(pad) for p in (q, q)]  # F.pad order: last axis first
        volume = kernel[0] * kernel[1] * kernel[2]
        sums = F.avg_pool3d(F.pad(x, padding), kernel, stride) * volume
        if self.count_include_pad:
            return sums / volume
        ones = F.pad(x.new_ones(1, 1, *x.shape[2:]), padding)
        return sums / (F.avg_pool3d(ones, kernel, stride) * volume)


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return value, value, value
    a, b, c = value
    return a, b, c


@dataclass(frozen=True)
class Layers:
    """The layer classes of one spatial dimensionality."""

    spatial_dims: int
    conv: type[nn.Conv2d] | type[nn.Conv3d]
    batch_norm: type[nn.BatchNorm2d] | type[nn.BatchNorm3d]
    max_pool: type[nn.MaxPool2d] | type[nn.MaxPool3d]
    avg_pool: type[nn.AvgPool2d] | type[AvgPool3d]
    adaptive_avg_pool: type[nn.AdaptiveAvgPool2d] | type[nn.AdaptiveAvgPool3d]
    interpolation: str
    """``F.interpolate`` mode of the (bi/tri)linear resizing."""
    channels_last: torch.memory_format
    """The channels-last memory format (``NHWC`` / ``NDHWC``)."""


_LAYERS: dict[int, Layers] = {
    2: Layers(
        2,
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        "bilinear",
        torch.channels_last,
    ),
    3: Layers(
        3,
        nn.Conv3d,
        nn.BatchNorm3d,
        nn.MaxPool3d,
        AvgPool3d,
        nn.AdaptiveAvgPool3d,
        "trilinear",
        torch.channels_last_3d,
    ),
}


def layers(spatial_dims: int) -> Layers:
    """Layer classes for ``spatial_dims`` (2 or 3; anything else raises ``ValueError``)."""
    return _LAYERS[space.check_spatial_dims(spatial_dims)]


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear resizing of ``(N, C, *spatial)`` to ``size`` (``align_corners=False``)."""
    mode = layers(x.dim() - 2).interpolation
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


class Zero(nn.Module):
    """The ``none`` operation: a zero tensor of the output shape."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        every = slice(None, None, self.stride)
        return x[(slice(None), slice(None), *(every,) * (x.dim() - 2))].mul(0.0)


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
        spatial_dims: int = 2,
    ) -> None:
        lay = layers(spatial_dims)
        super().__init__(
            nn.ReLU(inplace=False),
            lay.conv(c_in, c_out, kernel_size, stride, padding, dilation, bias=False),
            lay.batch_norm(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked [ReLU, depthwise kxk, pointwise 1x1, BN]; the stride is in the first one."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        stride: int = 1,
        affine: bool = True,
        spatial_dims: int = 2,
    ):
        lay = layers(spatial_dims)
        pad = kernel_size // 2
        modules: list[nn.Module] = []
        for s in (stride, 1):
            modules += [
                nn.ReLU(inplace=False),
                lay.conv(channels, channels, kernel_size, s, pad, groups=channels, bias=False),
                lay.conv(channels, channels, 1, bias=False),
                lay.batch_norm(channels, affine=affine),
            ]
        super().__init__(*modules)


def factorized_kernels(
    kernel_size: int, axis: int, spatial_dims: int = 3
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Kernels of a factorised (pseudo-3D) convolution: ``k`` on every axis but ``axis``, then
    ``k`` on ``axis`` only; e.g. ``(3, 3, 1)`` and ``(1, 1, 3)`` for ``axis=2``."""
    if not 0 <= axis < spatial_dims:
        raise ValueError(
            f"a factorised convolution's axis must be in 0..{spatial_dims - 1}, got {axis}"
        )
    first = tuple(1 if a == axis else kernel_size for a in range(spatial_dims))
    second = tuple(kernel_size if a == axis else 1 for a in range(spatial_dims))
    return first, second


class FactorizedConv(nn.Sequential):
    """DiNTS' pseudo-3D convolution: ReLU, a ``k``-tap convolution over every axis but ``axis``
    (stride here), a ``k``-tap convolution along ``axis``, BN. Volumes only."""

    def __init__(
        self, channels: int, kernel_size: int, axis: int, stride: int = 1, affine: bool = True
    ) -> None:
        lay = layers(3)
        first, second = factorized_kernels(kernel_size, axis)
        super().__init__(
            nn.ReLU(inplace=False),
            lay.conv(channels, channels, first, stride, [k // 2 for k in first], bias=False),
            lay.conv(channels, channels, second, 1, [k // 2 for k in second], bias=False),
            lay.batch_norm(channels, affine=affine),
        )


def _skip(channels: int, stride: int, affine: bool, spatial_dims: int = 2) -> nn.Module:
    if stride == 1:
        return nn.Identity()
    # Identity cannot change resolution; like the released network, use ReLU-1x1 conv-BN.
    return ReLUConvBN(channels, channels, 1, stride, 0, affine=affine, spatial_dims=spatial_dims)


def _pseudo_3d(axis: int) -> OpFactory:
    def factory(channels: int, stride: int, affine: bool, spatial_dims: int) -> nn.Module:
        return FactorizedConv(channels, 3, axis, stride, affine)

    return factory


FUSION_KINDS: tuple[str, ...] = ("zero", "shared", "sep_conv", "dilated_conv", "factorized_conv")
"""How the supernet can compute an op on all the edges that leave one cell input at once:

* ``zero``: contributes nothing (``none``).
* ``shared``: parameter-free at stride 1; the factory's module runs once and its output is shared
  by every edge (pooling, identity).
* ``sep_conv``: two stacked [ReLU, depthwise ``k x k``, pointwise 1x1, BN], one grouped
  convolution for all edges.
* ``dilated_conv``: ReLU, dense ``k x k`` convolution with ``dilation``, BN; one convolution
  whose output channels hold every edge.
* ``factorized_conv``: ReLU, dense convolution with ``k`` taps on every axis but ``axis`` (1
  on it), dense ``k``-tap convolution along ``axis``, BN (:class:`FactorizedConv`); one
  convolution for all edges, then one grouped convolution.

An op without a fusion runs as one module per edge (the factory's), mixed by a weighted sum.
"""


@dataclass(frozen=True)
class Fusion:
    """The supernet's fused kernel for an op: a kind of :data:`FUSION_KINDS` and, for the
    convolution kinds, its kernel size and dilation (``factorized_conv``: and the spatial axis,
    0..2 over ``(D, H, W)``, that its second convolution runs along)."""

    kind: str
    kernel_size: int = 1
    dilation: int = 1
    axis: int | None = None

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
        if (self.kind == "factorized_conv") != (self.axis is not None):
            raise ValueError(
                "a fusion has an axis if and only if it is 'factorized_conv', got "
                f"kind={self.kind!r}, axis={self.axis!r}"
            )


@dataclass(frozen=True)
class OpSpec:
    """One operation of the registry.

    ``parameter_free``: the op has no parameters in a search cell (stride 1); ``fusion``: how
    the supernet fuses it, ``None`` for a plain module per edge; ``spatial_dims``: the
    dimensionalities it exists for. With the default ``(2,)`` the factory is called
    ``factory(channels, stride, affine)``; an entry that declares anything else is called with
    ``spatial_dims`` as a fourth argument.
    """

    name: str
    factory: OpFactory
    parameter_free: bool
    fusion: Fusion | None = None
    spatial_dims: tuple[int, ...] = (2,)

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"an operation name must be a non-empty identifier, got {self.name!r}")
        dims = tuple(self.spatial_dims)
        if (
            not dims
            or len(set(dims)) != len(dims)
            or any(d not in space.SPATIAL_DIMS for d in dims)
        ):
            raise ValueError(
                f"operation {self.name!r}: spatial_dims must be distinct values of "
                f"{space.SPATIAL_DIMS}, got {self.spatial_dims!r}"
            )
        object.__setattr__(self, "spatial_dims", tuple(sorted(dims)))
        shared = self.fusion is not None and self.fusion.kind in ("zero", "shared")
        if shared and not self.parameter_free:
            raise ValueError(
                f"operation {self.name!r}: fusion {self.fusion.kind!r} needs a "
                "parameter-free operation"
            )

    def build(
        self, channels: int, stride: int = 1, affine: bool = True, spatial_dims: int = 2
    ) -> nn.Module:
        """The op's module for ``spatial_dims``; a dimensionality the op does not exist for
        raises ``ValueError``."""
        space.check_spatial_dims(spatial_dims)
        if spatial_dims not in self.spatial_dims:
            raise ValueError(
                f"operation {self.name!r} exists for spatial_dims "
                f"{' or '.join(map(str, self.spatial_dims))}, not {spatial_dims}"
            )
        if self.spatial_dims == (2,):
            return self.factory(channels, stride, affine)
        return self.factory(channels, stride, affine, spatial_dims)


BOTH = space.SPATIAL_DIMS  # the entries that exist for images and volumes

_BUILTIN: tuple[OpSpec, ...] = (
    OpSpec("none", lambda c, stride, affine, sd=2: Zero(stride), True, Fusion("zero"), BOTH),
    OpSpec(
        "max_pool_3x3",
        lambda c, stride, affine, sd=2: layers(sd).max_pool(3, stride, padding=1),
        True,
        Fusion("shared"),
        BOTH,
    ),
    OpSpec(
        "avg_pool_3x3",
        lambda c, stride, affine, sd=2: layers(sd).avg_pool(
            3, stride, padding=1, count_include_pad=False
        ),
        True,
        Fusion("shared"),
        BOTH,
    ),
    OpSpec("skip_connect", _skip, True, Fusion("shared"), BOTH),
    OpSpec(
        "sep_conv_3x3",
        lambda c, stride, affine, sd=2: SepConv(c, 3, stride, affine, sd),
        False,
        Fusion("sep_conv", 3),
        BOTH,
    ),
    OpSpec(
        "sep_conv_5x5",
        lambda c, stride, affine, sd=2: SepConv(c, 5, stride, affine, sd),
        False,
        Fusion("sep_conv", 5),
        BOTH,
    ),
    OpSpec(
        "atr_conv_3x3",
        lambda c, stride, affine, sd=2: ReLUConvBN(c, c, 3, stride, 2, 2, affine, sd),
        False,
        Fusion("dilated_conv", 3, dilation=2),
        BOTH,
    ),
    OpSpec(
        "atr_conv_5x5",
        lambda c, stride, affine, sd=2: ReLUConvBN(c, c, 5, stride, 4, 2, affine, sd),
        False,
        Fusion("dilated_conv", 5, dilation=2),
        BOTH,
    ),
    # Not searched by default (space.PRIMITIVES is the default op set).
    OpSpec(
        "conv_3x3",
        lambda c, stride, affine, sd=2: ReLUConvBN(c, c, 3, stride, 1, 1, affine, sd),
        False,
        Fusion("dilated_conv", 3, dilation=1),
        BOTH,
    ),
    *(
        OpSpec(name, _pseudo_3d(axis), False, Fusion("factorized_conv", 3, axis=axis), (3,))
        for axis, name in zip((2, 1, 0), space.PSEUDO_3D_OPS, strict=True)
    ),
)

OP_REGISTRY: dict[str, OpSpec] = {spec.name: spec for spec in _BUILTIN}
"""Every known operation by name: the built-in ones in :data:`autodeeplab.space.BUILTIN_OPS`
order (:data:`autodeeplab.space.PRIMITIVES` first), then those added with :func:`register_op`."""

# the names, their order and their dimensionalities are defined in one place (space.py)
if tuple(OP_REGISTRY) != space.BUILTIN_OPS or any(
    spec.spatial_dims != space.op_spatial_dims(spec.name) for spec in _BUILTIN
):
    raise RuntimeError(f"built-in operations {tuple(OP_REGISTRY)} do not follow space.BUILTIN_OPS")

OPS: dict[str, OpFactory] = {name: OP_REGISTRY[name].factory for name in space.PRIMITIVES}
"""Factories of the paper's operations, keyed by the names of :data:`space.PRIMITIVES`
(``factory(channels, stride, affine, spatial_dims=2)``)."""


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
    space.add_op_name(spec.name, spec.spatial_dims)
    return spec


def unregister_op(name: str) -> None:
    """Remove an operation added with :func:`register_op` (built-in ones stay)."""
    if name in space.BUILTIN_OPS:
        raise ValueError(f"{name!r} is a built-in operation and cannot be removed")
    get_op(name)
    del OP_REGISTRY[name]
    space.remove_op_name(name)


def build_op(
    name: str, channels: int, stride: int = 1, affine: bool = True, spatial_dims: int = 2
) -> nn.Module:
    """Build operation ``name`` for ``spatial_dims`` (2: images, 3: volumes); unknown names
    raise ``ValueError`` listing the valid ones."""
    spec = get_op(name)
    if stride not in (1, 2):
        raise ValueError(f"operations support stride 1 or 2, got {stride}")
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    return spec.build(channels, stride, affine, spatial_dims)
