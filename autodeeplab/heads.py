"""Segmentation heads of the retrained network: dense ASPP and the DeepLabv3+ decoder.

Contracts
    :class:`ASPP` maps the last encoder feature ``(N, C_in, h, w)`` to ``(N, 256, h, w)``.
    :class:`DeepLabV3PlusDecoder` takes that ASPP output and the stride-4 low-level feature
    ``(N, C_low, H/4, W/4)`` and returns class logits at stride 4, ``(N, classes, H/4, W/4)``.
    Upsampling the logits to the input size is the job of the model.

Every convolution is dense and bias-free (a BatchNorm follows), except the final classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autodeeplab import space

DEFAULT_ASPP_CHANNELS = 256
DEFAULT_DECODER_CHANNELS = 256
DEFAULT_LOW_LEVEL_CHANNELS = 48
BASE_ATROUS_RATES: tuple[int, int, int] = (6, 12, 18)
"""DeepLab's atrous rates at output stride 16; they scale inversely with the output stride."""


def atrous_rates_for_stride(output_stride: int) -> tuple[int, int, int]:
    """ASPP atrous rates for a feature at ``output_stride``, DeepLab's convention.

    ``(6, 12, 18)`` at stride 16, doubled at 8, halved at 32 (``(3, 6, 9)``) and ``(24, 48, 72)``
    at stride 4, i.e. every rate covers the same field of view in input pixels.
    """
    if output_stride not in space.LEVEL_STRIDES:
        raise ValueError(f"output stride must be one of {space.LEVEL_STRIDES}, got {output_stride}")
    return tuple(r * 16 // output_stride for r in BASE_ATROUS_RATES)  # type: ignore[return-value]


def conv_bn_relu(c_in: int, c_out: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Dense conv (same padding, no bias) -> BN -> ReLU."""
    pad = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    )


class ImagePooling(nn.Module):
    """Global average pooling -> 1x1 conv -> BN -> ReLU, broadcast back to the input size.

    In training mode the BN over a ``(N, C, 1, 1)`` tensor needs a batch of at least 2.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.proj = conv_bn_relu(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.proj(F.adaptive_avg_pool2d(x, 1))  # (N, C_out, 1, 1)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): five branches, concatenated and projected.

    Branches: 1x1 conv, one dense 3x3 conv per atrous rate, image pooling; each is
    conv-BN-ReLU with ``channels`` filters. The concatenation goes through 1x1 conv-BN-ReLU.
    ``(N, in_channels, h, w) -> (N, channels, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        rates: tuple[int, ...],
        channels: int = DEFAULT_ASPP_CHANNELS,
    ) -> None:
        super().__init__()
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"ASPP atrous rates must be positive integers, got {rates!r}")
        self.in_channels = in_channels
        self.out_channels = channels
        self.rates = tuple(rates)
        branches: list[nn.Module] = [conv_bn_relu(in_channels, channels, 1)]
        branches += [conv_bn_relu(in_channels, channels, 3, dilation=r) for r in self.rates]
        branches.append(ImagePooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(len(branches) * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([b(x) for b in self.branches], dim=1)  # (N, 5 * channels, h, w)
        return self.project(y)  # (N, channels, h, w)


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+ decoder: fuse the ASPP output with stride-4 low-level features.

    Low-level features go through 1x1 conv-BN-ReLU to ``low_level_reduced`` (48) channels; the
    ASPP output is bilinearly upsampled to their size; the concatenation goes through two 3x3
    conv-BN-ReLU with ``channels`` (256) filters and a 1x1 classifier (with bias).
    """

    def __init__(
        self,
        low_level_channels: int,
        num_classes: int,
        aspp_channels: int = DEFAULT_ASPP_CHANNELS,
        channels: int = DEFAULT_DECODER_CHANNELS,
        low_level_reduced: int = DEFAULT_LOW_LEVEL_CHANNELS,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.reduce = conv_bn_relu(low_level_channels, low_level_reduced, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_reduced, channels, 3),
            conv_bn_relu(channels, channels, 3),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low_level)  # (N, 48, H/4, W/4)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, low], dim=1))  # (N, channels, H/4, W/4)
        return self.classifier(x)  # (N, num_classes, H/4, W/4)
