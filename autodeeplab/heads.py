"""Segmentation heads of the retrained network: dense ASPP and the DeepLabv3+ decoder.

Contracts
    :class:`ASPP` maps the last encoder feature ``(N, C_in, h, w)`` to ``(N, channels, h, w)``
    (256 channels in the paper; narrower heads suit small studies).
    :class:`DeepLabV3PlusDecoder` takes that ASPP output and the stride-4 low-level feature
    ``(N, C_low, H/4, W/4)`` and returns class logits at stride 4, ``(N, classes, H/4, W/4)``.
    Upsampling the logits to the input size is the job of the model.
    Both work on volumes ``(N, C, d, h, w)`` alike when built with ``spatial_dims=3`` (3x3x3
    convolutions, trilinear upsampling).

Every convolution is dense and bias-free (a BatchNorm follows), except the final classifier.

Atrous rates
    ``paper``: DeepLab's ``(6, 12, 18) * 16 / output_stride``, a fixed field of view in input
    pixels (:func:`atrous_rates_for_stride`). ``auto``: the same rates scaled by
    ``crop / 513`` so that they keep their share of the feature map at small crops
    (:func:`auto_atrous_rates`). The search supernet's head uses the same two rules with one
    rate, 6 at stride 16 (:func:`search_head_rates`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from autodeeplab import ops, space

DEFAULT_ASPP_CHANNELS = 256
DEFAULT_DECODER_CHANNELS = 256
DEFAULT_LOW_LEVEL_CHANNELS = 48
BASE_ATROUS_RATES: tuple[int, int, int] = (6, 12, 18)
"""DeepLab's atrous rates at output stride 16; they scale inversely with the output stride."""
SEARCH_ATROUS_RATE = 6
"""The search head's single atrous rate at stride 16 (the paper's ``96 / stride``)."""
REFERENCE_CROP = 513
"""The training crop DeepLab's rates were chosen for (a 33x33 map at output stride 16)."""
RATE_MODES: tuple[str, ...] = ("paper", "auto")
"""Named rules for atrous rates; an explicit list of integers is the third choice."""


def _check_stride(output_stride: int) -> None:
    if output_stride not in space.LEVEL_STRIDES:
        raise ValueError(f"output stride must be one of {space.LEVEL_STRIDES}, got {output_stride}")


def atrous_rates_for_stride(
    output_stride: int, base: tuple[int, ...] = BASE_ATROUS_RATES
) -> tuple[int, ...]:
    """ASPP atrous rates for a feature at ``output_stride``, DeepLab's convention (``paper``).

    ``(6, 12, 18)`` at stride 16, doubled at 8, halved at 32 (``(3, 6, 9)``) and ``(24, 48, 72)``
    at stride 4, i.e. every rate covers the same field of view in input pixels, whatever the
    crop. ``base`` gives the rates at stride 16 (``(6,)`` for the search head: ``96 / stride``).
    """
    _check_stride(output_stride)
    return tuple(r * 16 // output_stride for r in base)


def feature_size(crop_size: int, stride: int) -> int:
    """Side of the feature map at ``stride`` for a ``crop_size`` input: ``ceil(crop / stride)``
    (what the network's stride-2 convolutions with "same" padding produce)."""
    return -(-crop_size // stride)


def auto_atrous_rates(
    output_stride: int, crop_size: int, base: tuple[int, ...] = BASE_ATROUS_RATES
) -> tuple[int, ...]:
    """Atrous rates scaled to the training crop (``auto``): DeepLab's geometry at any crop.

    ``rate = round(base * (crop / output_stride) / (513 / 16))``, rounded half up, then clamped
    to ``1 .. max(1, h - 1)`` with ``h = ceil(crop / output_stride)`` the feature map's side.
    Every rate thus keeps the fraction of the feature map it spans at DeepLab's 513 crop and
    stride 16 (the largest, 18 on a 33-pixel map, about 0.56 of it): ``(6, 12, 18)`` at 513 /
    stride 16 exactly (and the ``paper`` rates at every stride for a 513 crop), ``(3, 6, 9)``
    at 64 / stride 4. At ``rate >= h`` every off-centre tap of every output position would fall
    into the zero padding, leaving a 1x1 convolution; the clamp rules that out.
    """
    _check_stride(output_stride)
    if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1:
        raise ValueError(f"crop size must be a positive integer, got {crop_size!r}")
    num = 16 * crop_size  # rate = base * num / den, in exact integer arithmetic
    den = REFERENCE_CROP * output_stride
    upper = max(1, feature_size(crop_size, output_stride) - 1)
    return tuple(min(upper, max(1, (2 * r * num + den) // (2 * den))) for r in base)


def resolve_atrous_rates(
    spec: str | Sequence[int],
    output_stride: int,
    crop_size: int | None,
    *,
    base: tuple[int, ...] = BASE_ATROUS_RATES,
    key: str = "model.aspp_rates",
) -> tuple[int, ...]:
    """The rates that ``spec`` (``paper``, ``auto`` or explicit integers) gives at
    ``output_stride``; ``auto`` needs the training ``crop_size``. ``key`` names the setting in
    error messages."""
    if isinstance(spec, str):
        if spec == "paper":
            return atrous_rates_for_stride(output_stride, base)
        if spec == "auto":
            if crop_size is None:
                raise ValueError(f"{key}=auto needs the training crop size (data.crop_size)")
            return auto_atrous_rates(output_stride, crop_size, base)
        raise ValueError(
            f"{key} must be one of {', '.join(RATE_MODES)} or a list of positive integers, "
            f"got {spec!r}"
        )
    rates = tuple(spec)
    if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
        raise ValueError(
            f"{key} must be one of {', '.join(RATE_MODES)} or a list of positive integers, "
            f"got {list(rates)!r}"
        )
    return rates


def search_head_rates(spec: str | Sequence[int], crop_size: int | None) -> tuple[int, ...]:
    """Atrous rate of the search head at every level (stride 4, 8, 16, 32) for ``spec``:
    ``paper`` (``96 / stride``: 24, 12, 6, 3), ``auto`` (scaled to ``crop_size`` like
    :func:`auto_atrous_rates`) or four explicit integers."""
    key = "model.aspp_rates"
    if not isinstance(spec, str):
        rates = resolve_atrous_rates(spec, space.LEVEL_STRIDES[0], None, key=key)
        if len(rates) != space.NUM_LEVELS:
            raise ValueError(
                f"{key} for the search needs one rate per level (strides "
                f"{', '.join(map(str, space.LEVEL_STRIDES))}), got {list(rates)!r}"
            )
        return rates
    return tuple(
        resolve_atrous_rates(spec, s, crop_size, base=(SEARCH_ATROUS_RATE,), key=key)[0]
        for s in space.LEVEL_STRIDES
    )


def conv_bn_relu(
    c_in: int, c_out: int, kernel_size: int = 1, dilation: int = 1, spatial_dims: int = 2
) -> nn.Sequential:
    """Dense conv (same padding, no bias) -> BN -> ReLU."""
    lay = ops.layers(spatial_dims)
    pad = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        lay.conv(c_in, c_out, kernel_size, padding=pad, dilation=dilation, bias=False),
        lay.batch_norm(c_out),
        nn.ReLU(inplace=False),
    )


class ImagePooling(nn.Module):
    """Global average pooling -> 1x1 conv -> BN -> ReLU, broadcast back to the input size.

    In training mode the BN over a ``(N, C, 1, 1)`` tensor needs a batch of at least 2.
    """

    def __init__(self, c_in: int, c_out: int, spatial_dims: int = 2) -> None:
        super().__init__()
        self.pool = ops.layers(spatial_dims).adaptive_avg_pool(1)
        self.proj = conv_bn_relu(c_in, c_out, 1, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.pool(x))  # (N, C_out, 1, ...)
        return ops.resize(y, x.shape[2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): five branches, concatenated and projected.

    Branches: 1x1 conv, one dense 3x3 conv per atrous rate, image pooling; each is
    conv-BN-ReLU with ``channels`` filters. The concatenation goes through 1x1 conv-BN-ReLU.
    ``(N, in_channels, *spatial) -> (N, channels, *spatial)``; ``spatial_dims`` 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        rates: tuple[int, ...],
        channels: int = DEFAULT_ASPP_CHANNELS,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if not rates or any(r < 1 for r in rates):
            raise ValueError(f"ASPP atrous rates must be positive integers, got {rates!r}")
        self.in_channels = in_channels
        self.out_channels = channels
        self.rates = tuple(rates)
        sd = spatial_dims
        branches: list[nn.Module] = [conv_bn_relu(in_channels, channels, 1, spatial_dims=sd)]
        branches += [conv_bn_relu(in_channels, channels, 3, r, sd) for r in self.rates]
        branches.append(ImagePooling(in_channels, channels, sd))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(len(branches) * channels, channels, 1, spatial_dims=sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([b(x) for b in self.branches], dim=1)  # (N, 5 * channels, *spatial)
        return self.project(y)  # (N, channels, *spatial)


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+ decoder: fuse the ASPP output with stride-4 low-level features.

    Low-level features go through 1x1 conv-BN-ReLU to ``low_level_reduced`` (48) channels; the
    ASPP output is bilinearly (volumes: trilinearly) upsampled to their size; the
    concatenation goes through two 3x3 conv-BN-ReLU with ``channels`` (256) filters and a 1x1
    classifier (with bias).
    """

    def __init__(
        self,
        low_level_channels: int,
        num_classes: int,
        aspp_channels: int = DEFAULT_ASPP_CHANNELS,
        channels: int = DEFAULT_DECODER_CHANNELS,
        low_level_reduced: int = DEFAULT_LOW_LEVEL_CHANNELS,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        sd = spatial_dims
        self.reduce = conv_bn_relu(low_level_channels, low_level_reduced, 1, spatial_dims=sd)
        self.fuse = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_reduced, channels, 3, spatial_dims=sd),
            conv_bn_relu(channels, channels, 3, spatial_dims=sd),
        )
        self.classifier = ops.layers(sd).conv(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low_level)  # (N, 48, *spatial / 4)
        x = ops.resize(x, low.shape[2:])
        x = self.fuse(torch.cat([x, low], dim=1))  # (N, channels, *spatial / 4)
        return self.classifier(x)  # (N, num_classes, *spatial / 4)
