"""The multi-path (DiNTS) discrete network against independent references: a hand-written
forward pass, the reference realisation of tests/multipath.py, hand counts of parameters and
Multi-Adds; drop path, atrous rates and the single-path special case."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from multipath import MultiPathNet, random_topology

from autodeeplab.complexity import complexity
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.heads import ASPP, atrous_rates_for_stride
from autodeeplab.network import AutoDeepLab, MultiASPP, head_rates
from autodeeplab.sample import random_genotype
from autodeeplab.topology import Topology

HEAD_KW = {"aspp_channels": 8, "decoder_channels": 8, "low_level_reduced": 4}
CELL = (((0, "sep_conv_3x3"), (1, "atr_conv_3x3")), ((1, "skip_connect"), (2, "max_pool_3x3")))
# Two paths from layer 0 on; the last layer has nodes at levels 1 and 2.
TWO_PATHS = Genotype(
    cell=CELL,
    topology=Topology((((0, 0), (0, 1)), ((0, 0), (0, 1), (1, 1)), ((0, 1), (1, 1), (1, 2)))),
)


def exact(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("train", [False, True])
def test_hand_written_forward_of_a_two_path_network(train):
    torch.manual_seed(0)
    m = AutoDeepLab(TWO_PATHS, 5, 4, **HEAD_KW).train(train)
    c = m.encoder.cells
    assert len(c) == 8  # one cell per active transition
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        stem = m.encoder.stem(x)
        s2, s4 = stem["stride2"], stem["stride4"]
        z = [(10, 9), (5, 5), (3, 3)]  # ceil(40 / 4 / 2^k) x ceil(36 / 4 / 2^k)
        # layer 0: both cells read the stem (stride 2 as H^{l-2}, stride 4 as H^{l-1})
        n00, n01 = c[0](s2, s4, z[0]), c[1](s2, s4, z[1])
        # layer 1: H^{l-2} is the stem's stride-4 output; node 1 sums two cells
        n10 = c[2](s4, n00, z[0])
        n11 = c[3](s4, n00, z[1]) + c[4](s4, n01, z[1])
        # layer 2: H^{l-2} of the level-1 cells is node (0, 1); the level-2 cell has no node
        # at level 2 in layer 0 and reads the nearest, level 1
        n21 = c[5](n01, n10, z[1]) + c[6](n01, n11, z[1])
        n22 = c[7](n01, n11, z[2])
        # one ASPP per last-layer node, resized to the finest and summed
        heads = m.aspp.heads
        y = heads[0](n21) + F.interpolate(heads[1](n22), size=z[1], mode="bilinear")
        # layer 0 has two active nodes: the low-level feature is the stem's stride 4
        y = m.decoder(y, s4)
        expected = F.interpolate(y, size=(40, 36), mode="bilinear")
        exact(m(x), expected)
    assert heads[0].rates == atrous_rates_for_stride(8)
    assert heads[1].rates == atrous_rates_for_stride(16)
    assert m.encoder.out_channels == {"stride4": 128, "out": 2 * 8, "out16": 2 * 16}
    assert m.encoder.strides == {"stride4": 4, "out": 8, "out16": 16}
    assert m.output_stride == 8


def copy_reference(ref: MultiPathNet, net: AutoDeepLab) -> None:
    """Load the reference's weights into ``net`` (same modules, other names)."""
    state = {}
    for k, v in ref.state_dict().items():
        head, _, rest = k.partition(".")
        if head == "cells":
            key, _, rest = rest.partition(".")
            layer, s, t = (int(x) for x in key.split("_"))
            i = [(p.layer, p.src, p.dst) for p in net.encoder.plan].index((layer, s, t))
            state[f"encoder.cells.{i}.{rest}"] = v
        elif head == "aspp":
            level, _, rest = rest.partition(".")
            j = net.encoder.output_levels.index(int(level))
            multi = isinstance(net.aspp, MultiASPP)
            state[f"aspp.heads.{j}.{rest}" if multi else f"aspp.{rest}"] = v
        elif head == "stem":
            state[f"encoder.{k}"] = v
        else:
            state[k] = v
    net.load_state_dict(state, strict=True)


@pytest.mark.parametrize("seed", range(6))
def test_network_equals_the_reference_realisation(seed):
    rng = np.random.default_rng(seed)
    g = random_topology(rng, random_genotype(rng, layers=1, blocks=2).cell, 2 + seed % 4)
    torch.manual_seed(seed)
    ref = MultiPathNet(g, 2)
    net = AutoDeepLab(g, 5, 2, **HEAD_KW)
    copy_reference(ref, net)
    x = torch.randn(2, 3, 65, 66)
    for train in (False, True):
        with torch.no_grad():
            exact(net.train(train)(x), ref.train(train)(x))


def test_drop_path_is_scheduled_by_layer():
    m = AutoDeepLab(TWO_PATHS, 5, 4, drop_path_rate=0.3, **HEAD_KW)
    layers = [p.layer for p in m.encoder.plan]
    assert layers == [0, 0, 1, 1, 1, 2, 2, 2]
    rates = m.set_drop_path(0.5)
    assert rates == pytest.approx([0.3 * (k + 1) / 3 * 0.5 for k in layers])


def test_head_rates():
    assert head_rates(TWO_PATHS) == (atrous_rates_for_stride(8), atrous_rates_for_stride(16))
    # explicit rates are the output stride's; a node twice as coarse halves them, half up
    assert head_rates(TWO_PATHS, (12, 5, 1)) == ((12, 5, 1), (6, 3, 1))
    assert head_rates(RELEASED, (3, 6)) == ((3, 6),)
    m = AutoDeepLab(TWO_PATHS, 5, 4, aspp_rates=(4, 8, 12), **HEAD_KW)
    assert [h.rates for h in m.aspp.heads] == [(4, 8, 12), (2, 4, 6)]
    assert m.config.aspp_rates == (4, 8, 12)


def test_a_single_path_topology_is_the_path_network():
    g = Genotype(cell=RELEASED.cell, topology=Topology.from_path(RELEASED.path))
    assert g == RELEASED
    m = AutoDeepLab(g, 5, 4, **HEAD_KW)
    assert isinstance(m.aspp, ASPP) and len(m.encoder.cells) == 12
    assert m.encoder.output_keys == ("out",)
    keys = set(m.state_dict())
    assert "encoder.cells.11.preprocess1.1.weight" in keys
    assert "aspp.project.0.weight" in keys and not any(".heads." in k for k in keys)
    assert m.encoder.low_level_index == 2


# ----------------------------------------------------------------------------- complexity


def _cell_counts(cell, c_pp, c_p, f, move, h, w) -> tuple[int, int]:
    """Parameters and Multi-Adds of one cell at output size ``h x w``, by hand, for the ops of
    :data:`CELL`."""
    hi, wi = (2 * h, 2 * w) if move == 1 else (h, w)  # the input size (even sizes here)
    params = c_p * f + 2 * f
    macs = c_p * f * hi * wi
    if c_pp != f:
        params += c_pp * f + 2 * f
        macs += c_pp * f * hi * wi
    for block in cell:
        for inp, op in block:
            stride = 2 if move == 1 and inp < 2 else 1
            if op == "sep_conv_3x3":  # 2 x [depthwise 3x3, pointwise 1x1, BN]
                params += 2 * (9 * f + f * f + 2 * f)
                macs += 2 * (9 * f + f * f) * h * w
            elif op == "atr_conv_3x3":  # dense 3x3, BN
                params += 9 * f * f + 2 * f
                macs += 9 * f * f * h * w
            elif op == "skip_connect" and stride == 2:  # 1x1 stride 2, BN
                params += f * f + 2 * f
                macs += f * f * h * w
            else:
                assert op in ("skip_connect", "max_pool_3x3"), op
    return params, macs


def hand_count(g: Genotype, F_: int, classes: int, size: int, a: int = 8, d: int = 8, r: int = 4):
    """Parameters and Multi-Adds of the multi-path network, by hand from the rules."""
    s2, s4 = size // 2, size // 4
    params = 3 * 64 * 9 + 128 + 64 * 64 * 9 + 128 + 64 * 128 * 9 + 256
    macs = 3 * 64 * 9 * s2 * s2 + 64 * 64 * 9 * s2 * s2 + 64 * 128 * 9 * s4 * s4
    topo = g.topology
    width = {(-2, -1): 64, (-1, 0): 128}
    for layer, s, t in topo.transitions():
        if layer < 2:
            pp = (layer - 2, -1 if layer == 0 else 0)
        else:
            active = topo.active_levels(layer - 2)
            pp = (layer - 2, min(active, key=lambda k: (abs(k - t), k)))
        side = size // 4 // 2**t
        p, m = _cell_counts(g.cell, width[pp], width[(layer - 1, s)], F_ * 2**t, t - s, side, side)
        params, macs = params + p, macs + m
        width[(layer, t)] = g.blocks * F_ * 2**t
    for k in g.output_levels:
        c, side = width[(g.layers - 1, k)], size // 4 // 2**k
        params += c * a + 3 * 9 * c * a + c * a + 5 * a * a + 6 * 2 * a  # 6 BNs
        macs += (c * a + 3 * 9 * c * a + 5 * a * a) * side * side + c * a
    low = 128  # layer 0 of the tested topologies has two nodes: the stem's stride 4
    params += low * r + 2 * r + 9 * (a + r) * d + 2 * d + 9 * d * d + 2 * d + d * classes + classes
    macs += (low * r + 9 * (a + r) * d + 9 * d * d + d * classes) * s4 * s4
    return params, macs


def test_complexity_of_a_multi_path_network_by_hand():
    model = AutoDeepLab(TWO_PATHS, 5, 4, **HEAD_KW)
    c = complexity(model, (64, 64))
    assert (c.params, c.multiply_adds) == hand_count(TWO_PATHS, 4, 5, 64)
    assert c.params == sum(p.numel() for p in model.parameters())
    cells = sum(p.numel() for cell in model.encoder.cells for p in cell.parameters())
    assert c.params_by_part["cells"] == cells
    assert c.params_by_part["aspp"] == sum(
        sum(p.numel() for p in h.parameters()) for h in model.aspp.heads
    )
    # a wider topology on the same cell costs more
    wide = Genotype(
        cell=CELL,
        topology=Topology(
            (((0, 0), (0, 1)), ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2)), ((0, 1), (1, 1), (2, 2)))
        ),
    )
    c = complexity(AutoDeepLab(wide, 5, 4, **HEAD_KW), (64, 64))
    assert (c.params, c.multiply_adds) == hand_count(wide, 4, 5, 64)
