import pytest
import torch

from autodeeplab import space
from autodeeplab.ops import OPS, build_op


@pytest.mark.parametrize("name", space.PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(9, 9), (8, 13)])
def test_every_op_shape(name, stride, size):
    op = build_op(name, 6, stride)
    x = torch.randn(2, 6, *size)
    y = op(x)
    h, w = size
    assert y.shape == (2, 6, -(-h // stride), -(-w // stride))


def test_none_is_zero_and_skip_is_identity():
    x = torch.randn(1, 4, 5, 5)
    assert torch.count_nonzero(build_op("none", 4)(x)) == 0
    assert torch.equal(build_op("skip_connect", 4)(x), x)


def test_avg_pool_excludes_padding():
    y = build_op("avg_pool_3x3", 1)(torch.ones(1, 1, 4, 4))
    assert torch.allclose(y, torch.ones_like(y))


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # hand-computed for C = 8, affine BN (2C per BN)
        ("sep_conv_3x3", 2 * (8 * 9 + 8 * 8 + 16)),
        ("sep_conv_5x5", 2 * (8 * 25 + 8 * 8 + 16)),
        ("atr_conv_3x3", 8 * 8 * 9 + 16),  # dense, not depthwise
        ("atr_conv_5x5", 8 * 8 * 25 + 16),
        ("max_pool_3x3", 0),
        ("skip_connect", 0),
        ("none", 0),
    ],
)
def test_parameter_counts(name, expected):
    assert _count(build_op(name, 8)) == expected


def test_atrous_is_dilated():
    conv = next(m for m in build_op("atr_conv_5x5", 3).modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.dilation == (2, 2) and conv.groups == 1


def test_registry_order_and_errors():
    assert tuple(OPS) == space.PRIMITIVES
    with pytest.raises(ValueError, match="valid operations are: none, max_pool_3x3"):
        build_op("dil_conv_3x3", 4)
    with pytest.raises(ValueError, match="stride"):
        build_op("skip_connect", 4, stride=3)
