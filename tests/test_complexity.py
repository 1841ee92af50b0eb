import math

import pytest
import torch

from autodeeplab.complexity import (
    PARTS,
    complexity,
    count_multiply_adds,
    count_parameters,
    multiply_adds,
)
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.heads import ASPP
from autodeeplab.models import model_config
from autodeeplab.network import AutoDeepLab
from autodeeplab.ops import build_op
from autodeeplab.supernet import MixedEdges

# One cell at /4 whose ops have no multiply-adds: every MAC below is countable by hand.
TINY = Genotype(cell=[[(0, "skip_connect"), (1, "max_pool_3x3")]], path=(0,))


def tiny_reference_macs(classes: int) -> dict[str, int]:
    """Hand count for a 32x32 input, F = 4: /2 = 16x16 (256 px), /4 = 8x8 (64 px)."""
    stem = 3 * 64 * 9 * 256 + 64 * 64 * 9 * 256 + 64 * 128 * 9 * 64
    cells = 64 * 4 * 64 + 128 * 4 * 64  # prev-prev and prev 1x1 convs at /4
    aspp = 4 * 256 * 64 + 3 * 9 * 4 * 256 * 64 + 4 * 256 * 1 + 5 * 256 * 256 * 64
    decoder = 4 * 48 * 64 + 304 * 9 * 256 * 64 + 256 * 9 * 256 * 64 + 256 * classes * 64
    return {"stem": stem, "cells": cells, "aspp": aspp, "decoder": decoder}


def test_tiny_model_multiply_adds_by_hand():
    model = AutoDeepLab(TINY, num_classes=2, filter_multiplier=4)
    c = complexity(model, (32, 32))
    ref = tiny_reference_macs(2)
    assert c.multiply_adds_by_part == ref
    assert c.multiply_adds == sum(ref.values())
    assert c.input_size == (32, 32)


def test_meta_count_equals_count_on_real_model():
    model = AutoDeepLab(RELEASED, num_classes=3, filter_multiplier=4).eval()
    real = count_multiply_adds(model, (65, 97))
    assert complexity(model, (65, 97)).multiply_adds == real["total"]


def test_multiply_adds_scale_with_pixels_for_a_fixed_path():
    # every feature map size doubles exactly when the input doubles on one side (sides
    # divisible by 32), and no part has a size-independent cost except image pooling
    cfg = model_config("autodeeplab-s", filter_multiplier=4)
    a = complexity(cfg, (64, 128)).multiply_adds_by_part
    b = complexity(cfg, (64, 256)).multiply_adds_by_part
    for part in ("stem", "cells", "decoder"):
        assert b[part] == 2 * a[part]


def test_parameters_by_part_add_up():
    model = AutoDeepLab(RELEASED, 19, 4)
    counts = count_parameters(model)
    assert set(counts) == {*PARTS, "total"}
    assert counts["total"] == sum(counts[p] for p in PARTS)
    assert counts["stem"] == 3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 2 * (64 + 64 + 128)


def test_counting_allocates_no_real_model():
    c = complexity(model_config("autodeeplab-l"), (1024, 2048))
    assert abs(c.params - 44.42e6) / 44.42e6 < 0.005
    # within 10% of the paper's 695.03B (see README, section Models, for the difference)
    assert abs(c.multiply_adds - 695.03e9) / 695.03e9 < 0.1


def test_bad_sizes():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        complexity(model_config("autodeeplab-s"), (0, 10))
    with pytest.raises(ValueError, match="at least 33 pixels"):
        complexity(model_config("autodeeplab-s"), (32, 512))


# ---------------------------------------------------------------------------- any module, 3D
def conv_macs_by_hooks(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Second formula: every convolution's output elements times the taps of one output
    (``C_in / groups x prod(kernel)``), read off forward hooks."""
    total = 0

    def hook(m, _inputs, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return total


class WeightedEdges(torch.nn.Module):
    """Mixed edges with fixed uniform op weights: a module of one input."""

    def __init__(self, edges: MixedEdges, num_ops: int) -> None:
        super().__init__()
        self.edges = edges
        self.register_buffer("weights", torch.full((edges.num_edges, num_ops), 1 / num_ops))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.edges(x, self.weights)


def test_multiply_adds_of_3d_convs_by_hand():
    conv = torch.nn.Conv3d(2, 3, 3, padding=1, bias=False)
    assert multiply_adds(conv, (1, 2, 4, 5, 6)) == (3 * 4 * 5 * 6) * (2 * 27)
    grouped = torch.nn.Conv3d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2, bias=False)
    # output 3 x 3 x 4 per sample and channel; each output reads 2 channels x 27 taps
    assert multiply_adds(grouped, (2, 4, 5, 6, 7)) == (2 * 4 * 3 * 3 * 4) * (2 * 27)


@pytest.mark.parametrize(
    ("name", "expected"),
    [  # C = 4 on a 5 x 6 x 7 volume (210 voxels)
        ("sep_conv_3x3", 2 * (4 * 27 + 4 * 4) * 210),
        ("atr_conv_5x5", 4 * 4 * 125 * 210),
        ("conv_3x3", 4 * 4 * 27 * 210),
        ("p3d_conv_1x3x3", (4 * 4 * 9 + 4 * 4 * 3) * 210),
        ("avg_pool_3x3", 0),
    ],
)
def test_multiply_adds_of_volume_ops_by_hand(name, expected):
    assert multiply_adds(build_op(name, 4, spatial_dims=3).eval(), (1, 4, 5, 6, 7)) == expected


def test_multiply_adds_of_volume_modules_against_a_second_formula():
    """The 3D ASPP and fused supernet edges (grouped, dilated and factorised convolutions, no
    matrix products) against the hook count; a meta-device twin counts the same."""
    torch.manual_seed(0)
    aspp = ASPP(6, (1, 2, 3), channels=8, spatial_dims=3).eval()
    x = torch.randn(2, 6, 5, 6, 7)
    assert multiply_adds(aspp, x.shape) == conv_macs_by_hooks(aspp, x) > 0
    names = ("none", "sep_conv_5x5", "atr_conv_3x3", "p3d_conv_3x1x3", "conv_3x3")
    edges = WeightedEdges(MixedEdges(4, 3, 2, op_names=names, spatial_dims=3), len(names))
    x = torch.randn(4, 4, 5, 6, 7)
    assert multiply_adds(edges, x.shape) == conv_macs_by_hooks(edges, x) > 0
    with torch.device("meta"):
        twin = ASPP(6, (1, 2, 3), channels=8, spatial_dims=3).eval()
    assert multiply_adds(twin, (2, 6, 5, 6, 7)) == multiply_adds(aspp, (2, 6, 5, 6, 7))
    with pytest.raises(ValueError, match=r"input_shape must be \(N, C, \*spatial\)"):
        multiply_adds(aspp, (6, 5))
