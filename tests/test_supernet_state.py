"""The supernet's state layout, seeded initialisation and forward pass, recorded from an earlier
version of the code (``supernet_state.json``): checkpoints written then must still load into the
model built now, and a seeded run must start from the same weights and compute the same logits.
"""

import json
from pathlib import Path

import pytest
import torch

from autodeeplab.supernet import SearchNetwork

RECORDED = json.loads((Path(__file__).with_name("supernet_state.json")).read_text())
OPTIONS = {"plain": {}, "pc": {"partial_channels": 2}}


def _build(name: str) -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(
        3, layers=2, blocks=1, filter_multiplier=4, stem_channels=(8, 8, 16), **OPTIONS[name]
    ).double()


@pytest.mark.parametrize("name", list(OPTIONS))
def test_state_keys_shapes_and_seeded_values_are_unchanged(name):
    recorded = RECORDED[name]["state"]
    state = _build(name).state_dict()
    assert list(state) == list(recorded)  # same keys in the same order
    for key, (shape, total, abs_total) in recorded.items():
        value = state[key].double()
        assert list(value.shape) == shape, key
        assert float(value.sum()) == pytest.approx(total, rel=1e-12, abs=1e-12), key
        assert float(value.abs().sum()) == pytest.approx(abs_total, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("name", list(OPTIONS))
def test_recorded_state_loads_strictly_and_forward_is_unchanged(name):
    model = _build(name)
    # a state dict in the recorded layout (values drawn from another seed) loads strictly
    gen = torch.Generator().manual_seed(5)
    other = {}
    for key, (shape, _, _) in RECORDED[name]["state"].items():
        if key.endswith("num_batches_tracked"):
            other[key] = torch.randint(0, 9, shape, generator=gen)
        else:  # variances must stay positive
            value = torch.randn(shape, generator=gen, dtype=torch.float64)
            other[key] = value.abs() + 0.5 if key.endswith("running_var") else value
    fresh = _build(name)
    fresh.load_state_dict(other, strict=True)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, other[key]), key
    torch.manual_seed(1)
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)
    total, abs_total = RECORDED[name]["train_logits"]
    assert float(y.sum()) == pytest.approx(total, rel=1e-9)
    assert float(y.abs().sum()) == pytest.approx(abs_total, rel=1e-9)
