"""The memory budget of a DiNTS search: its reference cell, why a fixed cell is enough, the
decoded genotype's memory, and its term."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autodeeplab import space
from autodeeplab.budget import MemoryBudget, reference_cell
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.memory import Heads, SupernetMemory, activation_memory
from autodeeplab.topology import Topology

SETTING = {"filter_multiplier": 8, "input_size": (128, 128), "batch_size": 2}


def test_reference_cell():
    assert reference_cell(2) == (
        ((0, "sep_conv_3x3"), (1, "sep_conv_3x3")),
        ((0, "sep_conv_3x3"), (1, "sep_conv_3x3")),
    )
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="blocks must be a positive integer"):
            reference_cell(bad)


def _fraction_gradient(cell, layers, probs):
    memory = SupernetMemory(cell, layers, heads=Heads(num_classes=19), **SETTING)
    p = probs.clone().requires_grad_(True)
    (memory.usage(p) / memory.usage_all_on).backward()
    return p.grad[memory.mask]


@pytest.mark.parametrize("layers", [4, 12])
def test_the_reference_cell_steers_the_transitions_like_any_cell(layers):
    """The budget prices every transition with the reference cell. Which transitions the
    budget's gradient pushes down hardest is nearly the same for every cell: the gradient of
    the fraction under each single-operation cell points within 32 degrees (cosine > 0.85) of
    the reference cell's at random transition probabilities (lowest: 0.91 at 4 layers, 0.86
    at 12, both for ``skip_connect`` cells, whose fixed parts weigh most)."""
    ref_cell = reference_cell(5)
    rng = torch.Generator().manual_seed(layers)
    for _ in range(3):
        probs = torch.sigmoid(2 * torch.randn(layers, 4, 3, generator=rng, dtype=torch.float64))
        ref = _fraction_gradient(ref_cell, layers, probs)
        for op in space.PRIMITIVES[1:]:
            cell = tuple(((0, op), (1, op)) for _ in range(5))
            cos = F.cosine_similarity(ref, _fraction_gradient(cell, layers, probs), dim=0)
            assert cos > 0.85, (op, float(cos))


def test_fraction_and_term():
    budget = MemoryBudget(3, 2, num_classes=5, target=0.3, weight=2.0, **SETTING)
    mem = SupernetMemory(reference_cell(2), 3, heads=Heads(num_classes=5), **SETTING)
    probs = torch.rand(3, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fraction = mem.usage(probs) / mem.usage_all_on
    terms = budget.terms(probs)
    torch.testing.assert_close(terms["memory_fraction"], fraction)
    torch.testing.assert_close(terms["memory_budget"], (0.3 - fraction).abs())
    torch.testing.assert_close(budget.loss(terms), 2.0 * (0.3 - fraction).abs())
    # every transition on: the whole memory
    torch.testing.assert_close(
        budget.fraction(mem.mask.double()), torch.tensor(1.0, dtype=torch.float64)
    )
    # without a target: the fraction is reported, there is no term
    free = MemoryBudget(3, 2, num_classes=5, **SETTING)
    assert set(free.terms(probs)) == {"memory_fraction"} and free.loss(free.terms(probs)) is None
    with pytest.raises(ValueError, match=r"memory target must be a fraction in \(0, 1\]"):
        MemoryBudget(3, 2, num_classes=5, target=0.0, **SETTING)


def test_decoded_bytes_use_the_decoded_cell():
    budget = MemoryBudget(12, 5, num_classes=19, **SETTING)
    # a single path: the same as the single-path estimate of the genotype itself
    assert budget.decoded_bytes(RELEASED) == (
        activation_memory(RELEASED, heads=Heads(num_classes=19), **SETTING).total
    )
    # a multi-path genotype costs more than either of its paths, with its own cell
    two = Topology((((0, 0), (0, 1)), *(((0, 0), (1, 1)),) * 11))
    multi = Genotype(cell=RELEASED.cell, topology=two)
    one = Genotype(cell=RELEASED.cell, path=(0,) * 12)
    assert budget.decoded_bytes(multi) > budget.decoded_bytes(one)
    cheap = Genotype(cell=reference_cell(5), path=(0,) * 12)
    assert budget.decoded_bytes(cheap) != budget.decoded_bytes(one)
    assert np.isfinite(budget.decoded_bytes(multi))
