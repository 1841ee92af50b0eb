import itertools

import pytest
import torch
import torch.nn.functional as F

from autodeeplab import space
from autodeeplab.ops import OPS, Fusion, OpSpec, build_op, layers


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


# --------------------------------------------------------------------------- volumes
VOLUME_OPS = tuple(n for n in space.BUILTIN_OPS if 3 in space.op_spatial_dims(n))
CONVS = (torch.nn.Conv2d, torch.nn.Conv3d)


@pytest.mark.parametrize("name", VOLUME_OPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_shape_in_volumes(name, stride):
    op = build_op(name, 3, stride, spatial_dims=3)
    size = (7, 8, 5)
    y = op(torch.randn(2, 3, *size))
    assert y.shape == (2, 3, *(-(-d // stride) for d in size))


@pytest.mark.parametrize("name", [*space.PRIMITIVES, "conv_3x3"])
@pytest.mark.parametrize("stride", [1, 2])
def test_volume_op_on_one_slice_equals_the_image_op(name, stride):
    """On a volume of depth 1 every tap off the central depth slice of a kernel reads zero
    padding (pooling ignores the padding): the 3D op equals the 2D op whose kernels are the
    central slices of the 3D ones."""
    torch.manual_seed(0)
    op3 = build_op(name, 4, stride, spatial_dims=3).double()
    op2 = build_op(name, 4, stride).double()
    convs3 = [m for m in op3.modules() if isinstance(m, CONVS)]
    convs2 = [m for m in op2.modules() if isinstance(m, CONVS)]
    assert len(convs3) == len(convs2)
    with torch.no_grad():
        for m3, m2 in zip(convs3, convs2, strict=True):
            assert m3.kernel_size[1:] == m2.kernel_size and m3.dilation[1:] == m2.dilation
            m2.weight.copy_(m3.weight[:, :, m3.kernel_size[0] // 2])
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(op3(x.unsqueeze(2)).squeeze(2), op2(x), rtol=1e-10, atol=1e-12)


def _avg_pool_brute_force(x, stride):
    """3x3x3 windows around every ``stride``-th voxel, padding left out of the mean."""
    n, c, *size = x.shape
    out = torch.zeros(n, c, *(-(-d // stride) for d in size), dtype=x.dtype)
    for i, j, k in itertools.product(*(range(d) for d in out.shape[2:])):
        lo = [max(0, q * stride - 1) for q in (i, j, k)]
        hi = [min(d, q * stride + 2) for q, d in zip((i, j, k), size, strict=True)]
        out[:, :, i, j, k] = x[:, :, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].mean((2, 3, 4))
    return out


@pytest.mark.parametrize("size", [(1, 1, 1), (2, 1, 3), (4, 5, 3), (5, 6, 7)])
@pytest.mark.parametrize("stride", [1, 2])
def test_volume_avg_pool_on_any_size(size, stride):
    """3D average pooling without the padding equals brute force, also on maps smaller than
    the kernel (which PyTorch's own 3D pooling refuses), and PyTorch's where that accepts."""
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    pool = build_op("avg_pool_3x3", 3, stride, spatial_dims=3)
    torch.testing.assert_close(pool(x), _avg_pool_brute_force(x, stride))
    if min(size) >= 3:
        native = torch.nn.AvgPool3d(3, stride, 1, count_include_pad=False)
        torch.testing.assert_close(pool(x), native(x))


@pytest.mark.parametrize(
    ("name", "first"),
    [("p3d_conv_3x3x1", (3, 3, 1)), ("p3d_conv_3x1x3", (3, 1, 3)), ("p3d_conv_1x3x3", (1, 3, 3))],
)
def test_pseudo_3d_convs(name, first):
    """ReLU, the named kernel, its complement along the remaining axis, BN: checked against
    F.conv3d, and an impulse spreads over the full 3x3x3 box."""
    torch.manual_seed(0)
    op = build_op(name, 4, spatial_dims=3).double().eval()
    conv1, conv2 = (m for m in op.modules() if isinstance(m, torch.nn.Conv3d))
    second = tuple(4 - k for k in first)  # 3 <-> 1
    assert (conv1.kernel_size, conv2.kernel_size) == (first, second)
    x = torch.randn(2, 4, 5, 6, 7, dtype=torch.float64)
    y = F.conv3d(F.relu(x), conv1.weight, padding=[k // 2 for k in first])
    y = F.conv3d(y, conv2.weight, padding=[k // 2 for k in second])
    bn = op[-1]
    expected = (y - bn.running_mean.view(1, -1, 1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1, 1) + bn.eps
    ) * bn.weight.view(1, -1, 1, 1, 1) + bn.bias.view(1, -1, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(op(x), expected)
        impulse = torch.zeros(1, 4, 5, 5, 5, dtype=torch.float64)
        impulse[:, :, 2, 2, 2] = 1.0
        bn.running_mean.fill_(0.0)
        bn.bias.fill_(0.0)
        support = op(impulse).abs().sum(1)[0] > 0
    assert support[1:4, 1:4, 1:4].all() and support.sum() == 27


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # hand-computed for C = 8, affine BN (2C per BN), 3D kernels
        ("sep_conv_3x3", 2 * (8 * 27 + 8 * 8 + 16)),
        ("sep_conv_5x5", 2 * (8 * 125 + 8 * 8 + 16)),
        ("atr_conv_3x3", 8 * 8 * 27 + 16),
        ("atr_conv_5x5", 8 * 8 * 125 + 16),
        ("conv_3x3", 8 * 8 * 27 + 16),
        ("p3d_conv_3x3x1", 8 * 8 * 9 + 8 * 8 * 3 + 16),
        ("p3d_conv_1x3x3", 8 * 8 * 9 + 8 * 8 * 3 + 16),
        ("avg_pool_3x3", 0),
        ("skip_connect", 0),
    ],
)
def test_parameter_counts_in_volumes(name, expected):
    assert _count(build_op(name, 8, spatial_dims=3)) == expected


def test_dimension_errors():
    with pytest.raises(ValueError, match="'p3d_conv_3x3x1' exists for spatial_dims 3, not 2"):
        build_op("p3d_conv_3x3x1", 4)
    with pytest.raises(ValueError, match=r"spatial_dims must be 2 \(images\) or 3 \(volumes\)"):
        build_op("sep_conv_3x3", 4, spatial_dims=4)
    with pytest.raises(ValueError, match="spatial_dims must be distinct values of"):
        OpSpec("conv_4d", OPS["sep_conv_3x3"], False, spatial_dims=(4,))
    with pytest.raises(ValueError, match="axis if and only if it is 'factorized_conv'"):
        Fusion("factorized_conv", 3)
    with pytest.raises(ValueError, match="axis if and only if it is 'factorized_conv'"):
        Fusion("sep_conv", 3, axis=1)
    with pytest.raises(ValueError, match=r"must be 2 \(images\) or 3 \(volumes\), got 2\.0"):
        layers(2.0)
    assert layers(3).interpolation == "trilinear" and layers(2).conv is torch.nn.Conv2d
