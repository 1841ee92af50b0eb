"""The discrete network on volumes (``spatial_dims=3``) against independent references: a 3D
cell against the same computation assembled from the supernet's own node (preprocessing and
fused edges with one-hot weights), a cell against registry ops wired by hand for every move,
the whole network against the reference realisation of tests/multipath.py (single path and
multi-path), and a volume of depth 1 against the 2D network with the kernels' central slices.

Why not the whole supernet with one-hot weights: its cells differ from the discrete ones by
design (a stride-2 3x3 reduction of a finer source, an ``H^{l-2}`` projection even when the
channels match, BatchNorm without affine parameters, one cell per node, a logits head per
level; docs/network.md), so only the parts they share can be equal, and those are tested here.
"""

import copy

import numpy as np
import pytest
import torch
from multipath import MultiPathNet, random_topology
from test_network_multipath import HEAD_KW, TWO_PATHS, copy_reference
from test_op_registry import _copy_edge

from autodeeplab import ops, space
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.network import AutoDeepLab, Cell, NetworkConfig
from autodeeplab.sample import random_genotype
from autodeeplab.supernet import SearchNetwork

BIG = 1e4  # softmax weights of exactly 0 and 1 in float64


def _cell_reference(cell, genotype_cell, prev_prev, prev, out_size, modules):
    """``genotype_cell`` wired by hand from ``modules`` (the preprocessing and one registry
    op per branch, weights loaded from ``cell``): resize, preprocess, blocks add, concat."""
    pre0, pre1, branch_ops = modules
    if cell.move == -1:
        prev = ops.resize(prev, out_size)
    if tuple(prev_prev.shape[2:]) != tuple(prev.shape[2:]):
        prev_prev = ops.resize(prev_prev, prev.shape[2:])
    states = [pre0(prev_prev), pre1(prev)]
    i = 0
    for block in genotype_cell:
        total = 0
        for inp, _ in block:
            total = total + branch_ops[i](states[inp])
            i += 1
        states.append(total)
    return torch.cat(states[2:], dim=1)


@pytest.mark.parametrize("move", [-1, 0, 1])
def test_volume_cell_equals_registry_ops_wired_by_hand(move):
    """A 3D cell equals its genotype wired by hand from registry ops built for volumes (stride 2
    on the inputs when going coarser, trilinear upsampling when going finer), with the cell's
    weights, in training and eval mode."""
    torch.manual_seed(move + 1)
    f, c_pp, c_p = 3, 5, 6
    cell = Cell(RELEASED.cell, c_pp, c_p, f, move, spatial_dims=3).double()
    stride = 2 if move == 1 else 1
    pre0 = ops.ReLUConvBN(c_pp, f, 1, spatial_dims=3).double()
    pre1 = ops.ReLUConvBN(c_p, f, 1, spatial_dims=3).double()
    branch = [
        ops.build_op(op, f, stride if inp < 2 else 1, spatial_dims=3).double()
        for block in RELEASED.cell
        for inp, op in block
    ]
    pre0.load_state_dict(cell.preprocess0.state_dict())
    pre1.load_state_dict(cell.preprocess1.state_dict())
    for mine, theirs in zip(branch, cell.ops, strict=True):
        mine.load_state_dict(theirs.state_dict())
    in_size = {-1: (5, 6, 7), 0: (9, 10, 11), 1: (9, 10, 11)}[move]
    out_size = {-1: (9, 11, 13), 0: (9, 10, 11), 1: (5, 5, 6)}[move]
    prev = torch.randn(2, c_p, *in_size, dtype=torch.float64)
    prev_prev = torch.randn(2, c_pp, 17, 20, 21, dtype=torch.float64)
    for training in (True, False):
        cell.train(training)
        modules = (pre0.train(training), pre1.train(training), [m.train(training) for m in branch])
        with torch.no_grad():
            got = cell(prev_prev, prev, out_size)
            want = _cell_reference(cell, RELEASED.cell, prev_prev, prev, out_size, modules)
        assert got.shape == (2, 5 * f, *out_size)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_volume_cell_equals_the_supernet_node_with_one_hot_weights():
    """Where the two cells agree by design (same level, ``H^{l-2}`` with other channels, so both
    project it by 1x1), a 3D discrete cell with the supernet node's weights computes exactly
    what the node computes with one-hot alphas (the genotype's ops, ``none`` elsewhere) and a
    one-hot source weight: the supernet's fused 3D kernels and the discrete cell are the same
    function (training mode: batch statistics; affine BatchNorm at its initial 1, 0)."""
    torch.manual_seed(0)
    cell_ops = RELEASED.cell
    blocks = len(cell_ops)
    net = SearchNetwork(
        3,
        layers=3,
        blocks=blocks,
        filter_multiplier=2,
        in_channels=1,
        stem_channels=(4, 4, 8),
        spatial_dims=3,
    ).double()
    sp = net.search_space
    layer, level = 2, 1
    node = net.nodes[f"{layer}_{level}"]
    source = node.source_levels.index(level)  # the same-level transition: move 0
    with torch.no_grad():
        net.alphas.fill_(-BIG)
        kept = {}
        for b, block in enumerate(cell_ops):
            for inp, op in block:
                kept[space.edge_index(b, inp)] = op
        for e in range(sp.num_edges):
            net.alphas[e, sp.op_index(kept.get(e, "none"))] = 0.0
    alpha_w = net.alpha_weights()
    f = 2 * 2**level
    c_pp = blocks * 2 * 2 ** sp.node(layer, level).prev_prev
    c_src = [blocks * 2 * 2**s for s in node.source_levels]
    assert c_pp != f  # so that the discrete cell projects H^{l-2} too
    cell = Cell(cell_ops, c_pp, c_src[source], f, 0, spatial_dims=3).double()
    with torch.no_grad():
        cell.preprocess0[1].weight.copy_(node.pre_prev_prev[1].weight)
        cell.preprocess1[1].weight.copy_(node.pre_prev[source][1].weight)
    i = 0
    for b, block in enumerate(cell_ops):
        for inp, op in block:
            e = space.edge_index(b, inp)
            k = space.edges_from_input(inp, blocks).index(e)
            _copy_edge(node.cell.edges[inp], op, k, 0 if inp == 0 else source, cell.ops[i])
            i += 1
    size = (5, 6, 7)
    # each source at its level's size: finer (the node reduces it), same, coarser (resized up)
    sizes = {level - 1: (9, 11, 13), level: size, level + 1: (3, 3, 4)}
    prev = [
        torch.randn(2, c, *sizes[s], dtype=torch.float64)
        for c, s in zip(c_src, node.source_levels, strict=True)
    ]
    prev_prev = torch.randn(2, c_pp, *size, dtype=torch.float64)
    weights = torch.zeros(len(c_src), dtype=torch.float64)
    weights[source] = 1.0
    node.train()
    cell.train()
    with torch.no_grad():
        want = node(
            prev,
            prev_prev,
            weights,
            alpha_w,
            None,
            size,
        )
        got = cell(prev_prev, prev[source], size)
    assert want.std() > 0.01
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _volume_net(genotype: Genotype, seed: int = 0) -> AutoDeepLab:
    torch.manual_seed(seed)
    return AutoDeepLab(genotype, 5, 2, in_channels=2, spatial_dims=3, **HEAD_KW)


@pytest.mark.parametrize("seed", range(3))
def test_volume_network_equals_the_reference_realisation(seed):
    """Single paths and random multi-path topologies: the 3D network equals the reference
    realisation written from the wiring rules (tests/multipath.py) with the same weights, in
    eval and training mode, on an odd-sized volume."""
    rng = np.random.default_rng(seed)
    cell = random_genotype(rng, layers=1, blocks=2).cell
    genotypes = [
        Genotype(cell=cell, path=(0, 1, 2)[: 2 + seed % 2]),
        random_topology(rng, cell, 2 + seed % 2),
    ]
    if seed == 0:
        genotypes.append(TWO_PATHS)
    for g in genotypes:
        torch.manual_seed(seed)
        ref = MultiPathNet(g, 2, in_channels=2, spatial_dims=3)
        net = _volume_net(g, seed)
        copy_reference(ref, net)
        x = torch.randn(2, 2, 35, 33, 34)
        for train in (False, True):
            with torch.no_grad():
                got, want = net.train(train)(x), ref.train(train)(x)
            assert got.shape == (2, 5, 35, 33, 34)
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def _embed_weights(net2d: AutoDeepLab, net3d: AutoDeepLab) -> None:
    """Load ``net2d``'s weights into ``net3d``: every k x k kernel becomes the central slice of
    its k x k x k kernel; the other slices get noise (on a volume of depth 1 they only ever
    meet the zero padding)."""
    state3 = net3d.state_dict()
    assert set(state3) == set(net2d.state_dict())
    new = {}
    for key, w2 in net2d.state_dict().items():
        w3 = state3[key]
        if w3.dim() == 5:
            k = w3.shape[2]
            w = torch.randn_like(w3)
            w[:, :, k // 2] = w2
            new[key] = w
        else:
            assert w3.shape == w2.shape, key
            new[key] = w2
    net3d.load_state_dict(new)


@pytest.mark.parametrize("genotype", [Genotype(cell=RELEASED.cell, path=(0, 1, 2, 1)), TWO_PATHS])
def test_volume_of_depth_one_equals_the_image_network(genotype):
    """A second, dimension-independent reference: on a ``(N, C, 1, H, W)`` volume the 3D network
    whose kernels hold the 2D kernels as central slices computes the 2D network (3D
    convolutions, pooling, BatchNorm, trilinear resizing all reduce to 2D at depth 1)."""
    torch.manual_seed(0)
    net2d = AutoDeepLab(genotype, 4, 2, in_channels=2, **HEAD_KW).double()
    net3d = AutoDeepLab(genotype, 4, 2, in_channels=2, spatial_dims=3, **HEAD_KW).double()
    for m in net2d.modules():  # non-trivial statistics for eval mode
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    _embed_weights(net2d, net3d)
    net3d.encoder.check_input = lambda x: None  # depth 1 is below the deepest stride on purpose
    x = torch.randn(2, 2, 37, 41, dtype=torch.float64)
    for train in (False, True):
        with torch.no_grad():
            want = net2d.train(train)(x)
            got = net3d.train(train)(x[:, :, None])
        assert got.shape == (2, 4, 1, 37, 41)
        torch.testing.assert_close(got[:, :, 0], want, rtol=1e-9, atol=1e-10)


def test_volume_network_config_and_errors():
    g = Genotype(cell=RELEASED.cell, path=(0, 1))
    net = _volume_net(g)
    assert net.config.spatial_dims == 3 and net.config.in_channels == 2
    again = AutoDeepLab.from_config(NetworkConfig.from_dict(net.config.to_dict()))
    assert again.config == net.config
    assert list(again.state_dict()) == list(net.state_dict())
    # a config written before volumes existed is an image network
    old = {k: v for k, v in net.config.to_dict().items() if k != "spatial_dims"}
    assert NetworkConfig.from_dict(old).spatial_dims == 2
    with pytest.raises(ValueError, match=r"\(N, 2, D, H, W\)"):
        net(torch.randn(1, 2, 33, 33))
    with pytest.raises(ValueError, match="every side must be at least 9 voxels"):
        net(torch.randn(1, 2, 8, 33, 33))
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        AutoDeepLab(g, 3, 2, spatial_dims=1)
    # train mode: drop path on volumes keeps the shape and backpropagates
    net = AutoDeepLab(g, 3, 2, in_channels=2, spatial_dims=3, drop_path_rate=0.5, **HEAD_KW)
    out = net.train()(torch.randn(2, 2, 17, 18, 19))
    out.mean().backward()
    assert out.shape == (2, 3, 17, 18, 19)
    assert copy.deepcopy(net).spatial_dims == 3
