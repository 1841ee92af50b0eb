"""The operation registry against the supernet: every registered op, fused or not, computes in a
supernet edge exactly what its discrete module computes, and a new op needs only its entry."""

import copy

import pytest
import test_supernet as ts
import torch
from torch import nn

from autodeeplab import ops, space
from autodeeplab.ops import Fusion, OpSpec, ReLUConvBN, SepConv
from autodeeplab.supernet import GroupBatchNorm, MixedEdges


def _conv_1x1(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(
        nn.ReLU(), nn.Conv2d(c, c, 1, stride, bias=False), nn.BatchNorm2d(c, affine=affine)
    )


# Operations added for these tests only, one per way of computing an op in the supernet.
EXTRA = (
    OpSpec("test_conv_1x1", _conv_1x1, parameter_free=False),  # no fusion: one module per edge
    OpSpec("test_max_pool_5x5", lambda c, s, a: nn.MaxPool2d(5, s, 2), True, Fusion("shared")),
    OpSpec("test_sep_conv_7x7", lambda c, s, a: SepConv(c, 7, s, a), False, Fusion("sep_conv", 7)),
    OpSpec(
        "test_atr_conv_3x3_d4",
        lambda c, s, a: ReLUConvBN(c, c, 3, s, 4, 4, a),
        False,
        Fusion("dilated_conv", 3, dilation=4),
    ),
)
ALL_OPS = (*space.PRIMITIVES, *(spec.name for spec in EXTRA))


def _conv_1x1_nd(c: int, stride: int, affine: bool, spatial_dims: int) -> nn.Module:
    layers = ops.layers(spatial_dims)
    return nn.Sequential(
        nn.ReLU(), layers.conv(c, c, 1, stride, bias=False), layers.batch_norm(c, affine=affine)
    )


# an unfused op for images and volumes: its factory takes spatial_dims
EXTRA_ND = OpSpec("test_conv_1x1_nd", _conv_1x1_nd, parameter_free=False, spatial_dims=(2, 3))
VOLUME_OPS = (
    *(n for n in space.BUILTIN_OPS if 3 in space.op_spatial_dims(n)),
    EXTRA_ND.name,
)
"""Every built-in operation that exists for volumes (the paper's eight, conv_3x3, pseudo-3D),
and one unfused test op."""
CONVS = (nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)


@pytest.fixture(autouse=True)
def extra_ops():
    for spec in EXTRA:
        ops.register_op(spec)
    yield
    for spec in EXTRA:
        ops.unregister_op(spec.name)


def _copy_edge(group: MixedEdges, name: str, k: int, g: int, op: nn.Module) -> None:
    """Copy edge ``k``'s parameters (and source ``g``'s BatchNorm statistics) of ``name`` from
    the fused edges into the discrete module ``op``."""
    if name in group.plain:
        op.load_state_dict(group.plain[name][k].state_dict())
        return
    fused: list[nn.Module] = []
    for kernels in (group.sep, group.atr, group.factorized):
        if name in kernels:
            fused = list(kernels[name])
    c = group.channels // group.partial
    rows = slice(k * c, (k + 1) * c)  # edge k's output channels in every fused convolution
    off = g * group.num_edges * c + k * c  # (source g, edge k) in the per-source statistics
    convs = [m for m in fused if isinstance(m, CONVS)]
    bns = [m for m in fused if isinstance(m, GroupBatchNorm)]
    op_convs = [m for m in op.modules() if isinstance(m, CONVS)]
    op_bns = [m for m in op.modules() if isinstance(m, BATCH_NORMS)]
    assert len(convs) == len(op_convs) and len(bns) == len(op_bns), name
    with torch.no_grad():
        for src, dst in zip(convs, op_convs, strict=True):
            assert src.kernel_size == dst.kernel_size and src.dilation == dst.dilation, name
            dst.weight.copy_(src.weight[rows])
        for src, dst in zip(bns, op_bns, strict=True):
            dst.running_mean.copy_(src.running_mean[off : off + c])
            dst.running_var.copy_(src.running_var[off : off + c])


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("name", ALL_OPS)
def test_one_hot_edge_equals_the_registry_op(name, groups):
    """One-hot weights on ``name``: every edge output of every source equals the registry's
    module (built as in a search cell: stride 1, no affine) with the edge's parameters, in
    training mode (batch statistics per source) and, after that step, in eval mode (running
    statistics)."""
    check_one_hot_edge(name, groups, ALL_OPS, (9, 11))


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("name", VOLUME_OPS)
def test_one_hot_edge_equals_the_registry_op_in_volumes(name, groups):
    """The same check on volumes ``(N, C, D, H, W)``: every op that exists for volumes, fused
    or not, equals its 3D module from the registry."""
    ops.register_op(EXTRA_ND)
    try:
        check_one_hot_edge(name, groups, VOLUME_OPS, (5, 7, 6), spatial_dims=3)
    finally:
        ops.unregister_op(EXTRA_ND.name)


def check_one_hot_edge(name, groups, op_names, size, spatial_dims=2):
    torch.manual_seed(0)
    c, e, n = 4, 3, 2
    group = MixedEdges(c, e, groups, op_names=op_names, spatial_dims=spatial_dims).double()
    with torch.no_grad():  # non-trivial running statistics
        for m in group.modules():
            if isinstance(m, GroupBatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    refs = {}
    for k in range(e):
        for g in range(groups):
            refs[k, g] = ops.build_op(name, c, 1, affine=False, spatial_dims=spatial_dims).double()
            _copy_edge(group, name, k, g, refs[k, g])
    x = torch.randn(n * groups, c, *size, dtype=torch.float64)
    by_source = x.view(n, groups, c, *size)
    weights = torch.zeros(e, len(op_names), dtype=torch.float64)
    weights[:, op_names.index(name)] = 1.0

    out = group(x, weights).view(n, groups, e, c, *size)
    for (k, g), ref in refs.items():
        torch.testing.assert_close(out[:, g, k], ref(by_source[:, g]), rtol=1e-10, atol=1e-12)

    # Unfused ops share running statistics between sources; compare them with one source.
    if name in group.plain and groups > 1:
        return
    group.eval()
    with torch.no_grad():
        out = group(x, weights).view(n, groups, e, c, *size)
    for (k, g), ref in refs.items():
        copied = copy.deepcopy(ref)
        _copy_edge(group, name, k, g, copied)  # the statistics after the training step
        for a, b in zip(ref.buffers(), copied.buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        ref.eval()
        with torch.no_grad():
            torch.testing.assert_close(out[:, g, k], ref(by_source[:, g]), rtol=1e-10, atol=1e-12)


_orig_ref_edge = ts.ref_edge


def _ref_edge_with_extra_ops(group, x, k, g, w, training, edge_scale=None, update=True, aux=0.0):
    """The plain reference edge of test_supernet (the eight built-in ops) plus, written out, the
    unfused extra ops: the edge's own module on this source's input."""
    n_builtin = len(space.PRIMITIVES)
    total = _orig_ref_edge(group, x, k, g, w[:n_builtin], training, edge_scale, update, aux)
    c = group.channels // group.partial
    extra = torch.zeros_like(x[:, :c])
    for col, name in enumerate(group.op_names[n_builtin:], start=n_builtin):
        module = group.plain[name][k]
        if update:
            extra = extra + w[col] * module(x[:, :c])
        else:  # input 0 is the same for every source: its statistics update once
            copied = copy.deepcopy(module)
            extra = extra + w[col] * torch.func.functional_call(
                copied, dict(module.named_parameters()), (x[:, :c],)
            )
    extra = torch.cat((extra, torch.zeros_like(x[:, c:])), dim=1)
    if group.partial > 1:
        nb, _, h, wd = extra.shape
        p = group.partial
        extra = extra.view(nb, p, group.channels // p, h, wd).transpose(1, 2).reshape(extra.shape)
    if edge_scale is not None:
        extra = extra * edge_scale
    return total + extra


@pytest.mark.parametrize(
    "options",
    [{}, {"partial_channels": 2, "checkpoint_cells": True}],
    ids=["exact", "pc+checkpoint"],
)
def test_supernet_with_an_unfused_op_matches_the_plain_reference(options, monkeypatch):
    """A search space with a new op that has no fusion: the supernet (fused built-in ops plus
    one module per edge for the new op) equals the plain reference in outputs, gradients and
    running statistics (updated once per forward, also under gradient checkpointing)."""
    model = ts._tiny(op_names=(*space.PRIMITIVES, "test_conv_1x1"), **options)
    assert model.alphas.shape == (space.num_edges(3), 9)
    assert len(model.nodes["2_1"].cell.edges[1].plain["test_conv_1x1"]) == 3  # one per edge
    ref = copy.deepcopy(model)
    monkeypatch.setattr(ts, "ref_edge", _ref_edge_with_extra_ops)
    x = torch.randn(2, 3, 37, 45, dtype=torch.float64)
    out = model(x)
    expected = ts.ref_forward(ref, x)
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-10)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-10, msg=name)
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-8, atol=1e-12, msg=name)
    model.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ts.ref_forward(ref, x), rtol=1e-8, atol=1e-10)


def test_registry_follows_primitives_and_describes_every_op():
    assert tuple(ops.OP_REGISTRY)[: len(space.PRIMITIVES)] == space.PRIMITIVES
    assert space.known_ops() == (*space.BUILTIN_OPS, *(spec.name for spec in EXTRA))
    for name in space.PRIMITIVES:
        spec = ops.get_op(name)
        module = spec.factory(4, 1, False)
        has_params = any(True for _ in module.parameters())
        assert spec.parameter_free == (not has_params), name
    for name in space.BUILTIN_OPS:  # every built-in op, in every dimensionality it exists for
        spec = ops.get_op(name)
        assert spec.spatial_dims == space.op_spatial_dims(name)
        for dims in spec.spatial_dims:
            module = spec.build(4, 1, False, dims)
            assert spec.parameter_free == (not any(True for _ in module.parameters())), name
    from autodeeplab.diagnostics import PARAMETER_FREE_OPS

    free = {n for n in space.PRIMITIVES if ops.get_op(n).parameter_free and n != "none"}
    assert free == PARAMETER_FREE_OPS


def test_registry_errors():
    with pytest.raises(ValueError, match="'test_conv_1x1' is already registered"):
        ops.register_op(EXTRA[0])
    with pytest.raises(ValueError, match="valid kinds: zero, shared, sep_conv, dilated_conv"):
        Fusion("grouped_conv")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        Fusion("sep_conv", 4)
    with pytest.raises(ValueError, match="needs a parameter-free operation"):
        OpSpec("conv", _conv_1x1, parameter_free=False, fusion=Fusion("shared"))
    with pytest.raises(ValueError, match="non-empty identifier"):
        OpSpec("conv 1x1", _conv_1x1, parameter_free=False)
    with pytest.raises(ValueError, match="built-in operation"):
        ops.unregister_op("skip_connect")
    with pytest.raises(ValueError, match=r"valid operations are: none, .*test_conv_1x1"):
        ops.build_op("conv_9x9", 4)
    with pytest.raises(ValueError, match=r"unknown operations \['conv_9x9'\]; registered"):
        space.SearchSpace(ops=("none", "conv_9x9"))
    # a 'shared' op whose module holds state cannot be shared by the edges
    ops.register_op(
        OpSpec("test_bn", lambda c, s, a: nn.BatchNorm2d(c, affine=a), True, Fusion("shared"))
    )
    try:
        with pytest.raises(ValueError, match="'test_bn' is registered with fusion 'shared'"):
            MixedEdges(4, 2, 1, op_names=("none", "test_bn"))
    finally:
        ops.unregister_op("test_bn")
    assert "test_bn" not in space.known_ops()
