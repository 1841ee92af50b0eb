"""The supernet on volumes ``(N, C, D, H, W)``: against the plain reference, against the cells of
one path assembled by hand from registry ops, and its errors."""

import copy

import pytest
import test_supernet as ts
import torch
from test_op_registry import _copy_edge

from autodeeplab import ops, space
from autodeeplab.dints import DintsRelaxation
from autodeeplab.supernet import SearchNetwork

VOLUME_OPS = (*space.PRIMITIVES, "conv_3x3", *space.PSEUDO_3D_OPS)
BIG = 1e4  # exp(-2 * BIG) underflows to exactly 0 in float64: softmax weights exactly 0 or 1


def _tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(
        num_classes=3,
        layers=3,
        blocks=2,
        filter_multiplier=2,
        in_channels=1,
        stem_channels=(4, 4, 8),
        spatial_dims=3,
    )
    cfg.update(kw)
    model = SearchNetwork(**cfg).double()
    with torch.no_grad():  # larger arch logits than the 1e-3 init make mixing errors visible
        for p in model.arch_parameters():
            p.normal_()
    return model


@pytest.mark.parametrize(
    "options",
    [{}, {"partial_channels": 2, "checkpoint_cells": True}, {"selective_checkpoint": True}],
    ids=["exact", "pc+checkpoint", "selective"],
)
def test_volume_supernet_matches_plain_reference(options):
    """The fused 3D supernet equals the plain reference (loops over sources, edges and ops,
    F.conv3d, 3D pooling, trilinear resizing) in outputs, gradients and running statistics."""
    model = _tiny(**options)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 1, 33, 32, 34, dtype=torch.float64)
    out = model(x)
    expected = ts.ref_forward(ref, x)
    assert out.shape == (2, 3, 33, 32, 34)
    torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-10)
    probe = torch.randn_like(out)
    (out * probe).sum().backward()
    (expected * probe).sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert p.grad is not None or q.grad is None, name
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-10, msg=name)
    for (name, b), (_, c) in zip(model.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-8, atol=1e-12, msg=name)
    model.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ts.ref_forward(ref, x), rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- one path


def one_hot_betas(layers: int, path: tuple[int, ...]) -> torch.Tensor:
    """Beta logits whose per-node softmax puts weight exactly 1 on the moves of ``path`` and
    exactly 0 on every move into a path node from a node off the path."""
    betas = torch.zeros(layers, 4, 3, dtype=torch.float64)
    for layer in range(layers):
        for src in range(4):
            on_path = src == (0 if layer == 0 else path[layer - 1])
            for move in range(3):
                target = src + move - 1
                if on_path:
                    betas[layer, src, move] = BIG if target == path[layer] else -BIG
                elif target == path[layer]:
                    betas[layer, src, move] = -BIG  # other moves of this node keep logit 0
    return betas


def discrete_cell(node, s0, s1, source, edge_ops, training):
    """The node's cell with one op per edge, each built from the registry (3D, no affine) with
    the edge's parameters copied from the supernet; blocks sum their incoming edges."""
    cell = node.cell
    states = [s0, s1]
    for b in range(cell.blocks):
        acc = 0
        for j in range(b + 2):
            e = space.edge_index(b, j)
            op = ops.build_op(edge_ops[e], cell.channels, 1, affine=False, spatial_dims=3)
            op = op.double().train(training)
            k = space.edges_from_input(j, cell.blocks).index(e)
            _copy_edge(cell.edges[j], edge_ops[e], k, 0 if j == 0 else source, op)
            acc = acc + op(states[j])
        states.append(acc)
    return torch.cat(states[2:], dim=1)


def path_reference(model, x, path, edge_ops):
    """Stem, then the cells on ``path`` alone: every node reads its path predecessor (resized
    and preprocessed by the supernet's own modules) and the path node two layers back."""
    training = model.training
    half, quarter = model.stem(x)
    sizes = [tuple(quarter.shape[2:])]
    for _ in range(3):
        sizes.append(tuple((d + 1) // 2 for d in sizes[-1]))
    outputs = []
    prev_prev, prev, prev_level = half, quarter, 0
    for layer, level in enumerate(path):
        node = model.nodes[f"{layer}_{level}"]
        source = node.source_levels.index(prev_level)
        pp = (
            prev_prev if prev_prev.shape[2:] == sizes[level] else ts.resize(prev_prev, sizes[level])
        )
        h = prev if prev_level <= level else ts.resize(prev, sizes[level])
        s0 = node.pre_prev_prev(pp)
        s1 = node.pre_prev[source](h)
        out = discrete_cell(node, s0, s1, source, edge_ops, training)
        outputs.append(out)
        prev_prev, prev, prev_level = prev, out, level
    return outputs


def test_one_hot_path_equals_the_cells_on_the_path():
    """One-hot alphas (every edge one op, all twelve volume ops used) and one-hot betas on the
    path (1, 2, 3, 2) (down, down, down, up): every path node of the supernet equals the chain
    of discrete cells assembled from the registry, in training and in eval mode. On this path
    the supernet's ``H^{l-2}`` of every node is the path node two layers back, so the off-path
    nodes take no part."""
    path = (1, 2, 3, 2)
    blocks = 4  # 14 edges: room for every op
    torch.manual_seed(0)
    model = SearchNetwork(
        3,
        layers=len(path),
        blocks=blocks,
        filter_multiplier=2,
        in_channels=1,
        stem_channels=(4, 4, 8),
        op_names=VOLUME_OPS,
        spatial_dims=3,
    ).double()
    sp = model.search_space
    for layer in range(2, len(path)):  # the premise above, from the trellis itself
        assert sp.node(layer, path[layer]).prev_prev == path[layer - 2]
    edge_ops = tuple(VOLUME_OPS[(e + 1) % len(VOLUME_OPS)] for e in range(sp.num_edges))
    assert set(edge_ops) == set(VOLUME_OPS)
    with torch.no_grad():
        model.alphas.fill_(-BIG)
        for e, name in enumerate(edge_ops):
            model.alphas[e, sp.op_index(name)] = 0.0
        model.betas.copy_(one_hot_betas(len(path), path))
    assert torch.equal(model.alpha_weights().max(dim=1).values, torch.ones(sp.num_edges).double())

    captured = {}
    for layer, level in enumerate(path):
        model.nodes[f"{layer}_{level}"].register_forward_hook(
            lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out)
        )
    x = torch.randn(2, 1, 32, 36, 34, dtype=torch.float64)
    for training in (True, False):
        model.train(training)
        ref = copy.deepcopy(model)  # the reference's preprocessing updates its own statistics
        with torch.no_grad():
            model(x)
            expected = path_reference(ref, x, path, edge_ops)
        for layer, want in enumerate(expected):
            assert want.std() > 0.01  # a real signal, not zeros
            torch.testing.assert_close(captured[layer], want, rtol=1e-10, atol=1e-12)
        # stride 16 of 32 x 36 x 34 (ceil at every halving), B * F * 2**2 channels
        assert expected[-1].shape == (2, blocks * 2 * 2 ** path[-1], 2, 3, 3)


# --------------------------------------------------------------------------- other settings


@pytest.mark.parametrize(
    "options",
    [
        {"op_names": VOLUME_OPS},
        {"partial_channels": 2, "op_names": VOLUME_OPS},
        {"relaxation": "dints"},
    ],
    ids=["all-volume-ops", "pc", "dints"],
)
def test_volume_supernet_forward_backward_is_finite(options):
    """Both relaxations and PC-DARTS on volumes: logits at input size, finite, and a gradient
    that reaches every architecture parameter and every weight."""
    if options.get("relaxation") == "dints":
        options = {"relaxation": DintsRelaxation(space.SearchSpace(3, 2, spatial_dims=3))}
    torch.manual_seed(0)
    model = SearchNetwork(
        3,
        layers=3,
        blocks=2,
        filter_multiplier=2,
        in_channels=2,
        stem_channels=(4, 4, 8),
        spatial_dims=3,
        **options,
    )
    x = torch.randn(2, 2, 32, 32, 32)
    out = model(x, aux_skip=0.5)
    assert out.shape == (2, 3, 32, 32, 32) and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for p in model.arch_parameters():
        assert p.grad.abs().sum() > 0


def test_volume_errors():
    model = SearchNetwork(
        2,
        layers=2,
        blocks=1,
        filter_multiplier=2,
        in_channels=1,
        stem_channels=(4, 4, 8),
        spatial_dims=3,
    )
    with pytest.raises(ValueError, match=r"expected volumes of shape \(N, 1, D, H, W\)"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="D, H, W must be at least 32"):
        model(torch.zeros(1, 1, 16, 32, 32))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        SearchNetwork(2, layers=2, blocks=1, filter_multiplier=2)(torch.zeros(1, 3, 32, 32, 32))
    with pytest.raises(ValueError, match=r"spatial_dims must be 2 .* or 3 .*, got 1"):
        SearchNetwork(2, layers=2, blocks=1, spatial_dims=1)
    with pytest.raises(ValueError, match=r"\['p3d_conv_1x3x3'\] do not exist for spatial_dims=2"):
        SearchNetwork(2, layers=2, blocks=1, op_names=(*space.PRIMITIVES, "p3d_conv_1x3x3"))
    with pytest.raises(ValueError, match="the relaxation was built for"):
        SearchNetwork(
            2,
            layers=2,
            blocks=1,
            spatial_dims=3,
            relaxation=DintsRelaxation(space.SearchSpace(2, 1)),
        )
