"""The eight candidate operations (see docs/supernet.md) as a registry of module factories.

Every factory has the same signature ``factory(channels, stride, affine) -> nn.Module`` and maps
``(N, channels, H, W)`` to ``(N, channels, ceil(H / stride), ceil(W / stride))``.
"""

from __future__ import annotations

from collections.abc import Callable

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


OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride, padding=1),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(
        3, stride, padding=1, count_include_pad=False
    ),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, 3, stride, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, 5, stride, affine),
    "atr_conv_3x3": lambda c, stride, affine: ReLUConvBN(c, c, 3, stride, 2, 2, affine),
    "atr_conv_5x5": lambda c, stride, affine: ReLUConvBN(c, c, 5, stride, 4, 2, affine),
}
"""Operation registry, keyed by the names of :data:`autodeeplab.space.PRIMITIVES`."""

assert tuple(OPS) == space.PRIMITIVES, "OPS must follow the canonical op order"


def build_op(name: str, channels: int, stride: int = 1, affine: bool = True) -> nn.Module:
    """Build operation ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    if name not in OPS:
        raise ValueError(f"unknown operation {name!r}; valid operations are: {', '.join(OPS)}")
    if stride not in (1, 2):
        raise ValueError(f"operations support stride 1 or 2, got {stride}")
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    return OPS[name](channels, stride, affine)
