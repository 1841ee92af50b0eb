"""Activation-memory model (autodeeplab.memory) against the tensors autograd really keeps."""

import numpy as np
import pytest
import torch
from multipath import MultiPathNet, random_topology
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from autodeeplab import space
from autodeeplab.complexity import count_parameters, meta_model
from autodeeplab.engine.common import global_batch_loss
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.memory import (
    Heads,
    SupernetMemory,
    activation_memory,
    all_on,
    all_transitions,
    network_activation_memory,
    training_memory,
    transition_mask,
)
from autodeeplab.network import AutoDeepLab, low_level_cell_index
from autodeeplab.sample import random_genotype
from autodeeplab.topology import decode_topology

HEADS = Heads(num_classes=5, aspp_channels=8, decoder_channels=8, low_level_reduced=4)
HEAD_KW = {"aspp_channels": 8, "decoder_channels": 8, "low_level_reduced": 4}


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward over forward + loss
    (the training engine's loss), parameters and buffers left out."""
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        loss, _ = global_batch_loss(model(x), y, 255, 1)
    loss.backward()  # what was kept is enough for a backward pass
    return sum(kept.values())


def batch(size: tuple[int, int], n: int = 2, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 3, *size), torch.randint(0, classes, (n, *size))


# ----------------------------------------------------------------------------- single path

POOL_ON_PREV_PREV = Genotype(  # pools read H^{l-2} directly when it needs no 1x1 projection
    cell=(((0, "max_pool_3x3"), (1, "skip_connect")), ((0, "avg_pool_3x3"), (2, "max_pool_3x3"))),
    path=(0, 0, 1, 1, 0),
)


@pytest.mark.parametrize(
    ("genotype", "f", "size", "drop"),
    [
        *[
            (
                random_genotype(np.random.default_rng(seed), layers=5, blocks=3),
                4,
                (65, 47),
                seed % 2,
            )
            for seed in range(5)
        ],
        (Genotype(cell=RELEASED.cell, path=(0, 1, 2, 3)), 2, (66, 70), 0),
        # B = 2: a node of level k has 2F 2^k channels, the width of a cell one level coarser,
        # so a cell's H^{l-2} is used as it is and its pooling branches keep the node tensor.
        (POOL_ON_PREV_PREV, 4, (33, 40), 0),
        # F = 64: the stem's 64 / 128-channel outputs need no projection either.
        (Genotype(cell=POOL_ON_PREV_PREV.cell, path=(1, 1, 0)), 64, (17, 17), 0),
    ],
)
def test_estimate_equals_saved_tensors(genotype, f, size, drop):
    torch.manual_seed(0)
    model = AutoDeepLab(genotype, 5, f, drop_path_rate=0.3 * drop, **HEAD_KW).train()
    x, y = batch(size)
    est = network_activation_memory(model.config, size, 2)
    assert est.total == saved_bytes(model, x, y)
    assert sum(est.by_part.values()) == est.total
    assert est.by_part["loss"] == 2 * size[0] * size[1] * (5 * 4 + 8) + 2 * 4


def test_estimate_scales_with_dtype_and_batch():
    torch.manual_seed(0)
    model = AutoDeepLab(RELEASED, 5, 2, **HEAD_KW).double().train()
    x, y = batch((40, 40), n=3)
    est64 = network_activation_memory(model.config, (40, 40), 3, dtype=torch.float64)
    assert est64.total == saved_bytes(model, x.double(), y)
    est32 = network_activation_memory(model.config, (40, 40), 3)
    labels = 3 * 40 * 40 * 8  # int64 whatever the dtype
    assert est64.total - labels == 2 * (est32.total - labels)
    by_batch = [network_activation_memory(model.config, (40, 40), n).total for n in (1, 2, 3)]
    # affine in the batch: BatchNorm statistics and the loss scalars do not grow with it
    assert by_batch[2] - by_batch[1] == by_batch[1] - by_batch[0] > 0


def test_estimate_errors():
    with pytest.raises(ValueError, match="at least 17"):
        activation_memory(
            Genotype(RELEASED.cell, (1, 2)), filter_multiplier=2, input_size=(16, 64), batch_size=2
        )
    with pytest.raises(ValueError, match="batch_size"):
        activation_memory(RELEASED, filter_multiplier=2, input_size=(65, 65), batch_size=0)
    with pytest.raises(ValueError, match="floating-point"):
        activation_memory(
            RELEASED, filter_multiplier=2, input_size=(65, 65), batch_size=1, dtype=torch.int64
        )


def test_training_memory_adds_weights_gradients_and_momentum():
    config = AutoDeepLab(RELEASED, 5, 2, **HEAD_KW).config
    mem = training_memory(config, (65, 65), 2)
    n = count_parameters(meta_model(config))["total"]
    assert mem.weight_bytes == mem.gradient_bytes == mem.optimizer_bytes == 4 * n
    assert mem.logits_bytes == 2 * 5 * 65 * 65 * 4
    assert mem.peak_bytes == mem.activations.total + 12 * n + mem.logits_bytes


# ----------------------------------------------------------------------------- topologies


def test_all_on_is_every_transition():
    g = all_on(RELEASED.cell, 4)
    assert g.is_multi_path and g.cell == RELEASED.cell
    assert g.topology.transitions() == all_transitions(4)


def test_all_transitions_match_the_trellis():
    # a brute-force list: from every node reachable at layer l-1, every move that stays inside
    brute = {
        (layer, s, t)
        for layer in range(4)
        for s in ((0,) if layer == 0 else range(min(layer + 1, 4)))
        for t in (s - 1, s, s + 1)
        if 0 <= t < 4
    }
    assert set(all_transitions(4)) == brute
    mask = transition_mask(4)
    assert int(mask.sum()) == len(brute)
    assert mask[0, 0, 1] and mask[0, 0, 2] and not mask[0, 1].any() and not mask[0, 0, 0]


@pytest.mark.parametrize("seed", range(4))
def test_multi_path_estimate_equals_saved_tensors(seed):
    rng = np.random.default_rng(seed)
    cell = random_genotype(rng, layers=1, blocks=2).cell
    topo = random_topology(rng, cell, 4)
    torch.manual_seed(seed)
    model = MultiPathNet(topo, 2).train()
    x, y = batch((65, 65))
    est = activation_memory(
        topo, filter_multiplier=2, input_size=(65, 65), batch_size=2, heads=HEADS
    )
    assert est.total == saved_bytes(model, x, y)
    net = AutoDeepLab(topo, 5, 2, **HEAD_KW).train()
    assert est.total == saved_bytes(net, x, y)


def test_single_path_reference_is_the_network():
    # the multi-path reference built on a single path keeps what AutoDeepLab keeps
    g = Genotype(
        cell=random_genotype(np.random.default_rng(3), layers=1, blocks=2).cell, path=(1, 1, 0, 0)
    )
    torch.manual_seed(0)
    x, y = batch((33, 33))
    net = AutoDeepLab(g, 5, 2, **HEAD_KW).train()
    ref = MultiPathNet(g, 2).train()
    assert saved_bytes(ref, x, y) == saved_bytes(net, x, y)


@pytest.mark.parametrize("path", [(0, 0, 0, 1), (1, 0, 0), (0, 1, 0, 0), (0, 0, 0)])
def test_low_level_rule_matches_the_network(path):
    g = Genotype(cell=RELEASED.cell, path=path)
    assert g.topology.low_level_layer() == low_level_cell_index(path)


# ----------------------------------------------------------------------------- supernet


def supernet(cell, layers: int = 4, **kw) -> SupernetMemory:
    kw = {"filter_multiplier": 2, "input_size": (65, 65), "batch_size": 2, "heads": HEADS, **kw}
    return SupernetMemory(cell, layers, **kw)


def one_hot(genotype: Genotype) -> torch.Tensor:
    p = torch.zeros(genotype.layers, 4, 3, dtype=torch.float64)
    for layer, s, t in genotype.topology.transitions():
        p[layer, s, space.move_between(s, t)] = 1.0
    return p


def discrete(topo: Genotype) -> int:
    return activation_memory(
        topo, filter_multiplier=2, input_size=(65, 65), batch_size=2, heads=HEADS
    ).total


@pytest.mark.parametrize("seed", range(3))
def test_supernet_vertices_equal_the_discrete_estimate(seed):
    rng = np.random.default_rng(seed)
    g = random_genotype(rng, layers=4, blocks=3)
    sm = supernet(g.cell)
    assert sm.usage(one_hot(g)).item() == discrete(g)
    multi = random_topology(rng, g.cell, 4)
    assert sm.usage(one_hot(multi)).item() == discrete(multi)
    assert sm.usage_all_on == discrete(all_on(g.cell, 4))


def test_supernet_counts_a_shared_tensor_twice():
    # one-block cell: node (1, 0) is the decoder's low-level input and, unprojected and
    # unresized, the input of a pooling branch of cell 3; the expectation counts it per piece
    g = Genotype(cell=(((0, "max_pool_3x3"), (1, "skip_connect")),), path=(0, 0, 1, 0))
    sm = supernet(g.cell)
    node = 2 * 2 * 17 * 17 * 4  # batch x B F x 65/4 x 65/4 x float32
    assert sm.usage(one_hot(g)).item() == discrete(g) + node
    torch.manual_seed(0)
    model = AutoDeepLab(g, 5, 2, **HEAD_KW).train()
    assert discrete(g) == saved_bytes(model, *batch((65, 65)))


def test_supernet_usage_is_differentiable_and_ignores_invalid_entries():
    sm = supernet(RELEASED.cell, layers=3)
    torch.manual_seed(0)
    p = (0.05 + 0.9 * torch.rand(3, 4, 3, dtype=torch.float64)).requires_grad_()
    scale = 1.0 / sm.usage_all_on  # gradcheck works best on O(1) values
    assert torch.autograd.gradcheck(lambda q: sm.usage(q) * scale, (p,))
    sm.usage(p).backward()
    mask = transition_mask(3)
    assert (p.grad[~mask] == 0).all() and (p.grad[mask] > 0).all()
    noisy = p.detach().clone()
    noisy[~mask] = 7.0
    assert sm.usage(noisy).item() == pytest.approx(sm.usage(p.detach()).item(), rel=1e-12)


def test_supernet_usage_is_affine_in_each_transition():
    # independent transitions: the expectation is linear in each probability
    sm = supernet(RELEASED.cell, layers=3)
    torch.manual_seed(1)
    p = torch.rand(3, 4, 3, dtype=torch.float64)
    for layer, s, t in all_transitions(3):
        idx = (layer, s, space.move_between(s, t))
        lo, hi, mid = p.clone(), p.clone(), p.clone()
        lo[idx], hi[idx], mid[idx] = 0.0, 1.0, 0.3
        expect = 0.7 * sm.usage(lo) + 0.3 * sm.usage(hi)
        assert sm.usage(mid).item() == pytest.approx(expect.item(), rel=1e-12)


def test_budget_loss():
    sm = supernet(RELEASED.cell, layers=3)
    mask = transition_mask(3).double()
    assert sm.budget_loss(mask, 1.0).item() == pytest.approx(0.0, abs=1e-12)
    half = sm.usage_fraction(0.5 * mask).item()
    assert 0 < half < 1
    assert sm.budget_loss(0.5 * mask, 0.2).item() == pytest.approx(abs(0.2 - half))
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\]"):
        sm.budget_loss(mask, 1.5)
    with pytest.raises(ValueError, match="beta layout"):
        sm.usage(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="floating-point tensor"):
        sm.usage([[0.5]])


def test_a_decoded_dints_topology_has_a_memory_estimate():
    # the expectation at the decoded topology's 0/1 probabilities is its discrete estimate
    rng = np.random.default_rng(0)
    sm = supernet(RELEASED.cell, layers=5)
    for _ in range(5):
        g = Genotype(cell=RELEASED.cell, topology=decode_topology(rng.normal(0, 2, (5, 4, 3))))
        assert sm.usage(one_hot(g)).item() == discrete(g)
