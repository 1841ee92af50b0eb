"""Collapse guards: the Beta-Decay term and its gradient against numpy, the ramps, the auxiliary
skip schedule inside a search, config validation."""

import math

import numpy as np
import pytest
import torch

from autodeeplab.collapse import RAMPS, CollapseGuards, beta_decay
from autodeeplab.config import load_config
from autodeeplab.engine.search import SearchEngine, run_search
from autodeeplab.supernet import SearchNetwork

from runs import SEARCH_CONFIG, SEARCH_TINY

SYNTHETIC = SEARCH_CONFIG


def _model(layers=4, blocks=3, seed=0):
    torch.manual_seed(seed)
    model = SearchNetwork(3, layers, blocks, filter_multiplier=2, stem_channels=(4, 4, 4))
    with torch.no_grad():  # spread-out logits: a uniform row would hide mistakes in the term
        for p in model.arch_parameters():
            p.normal_(0.0, 2.0)
    return model.double()


def _numpy_beta_decay(alphas: np.ndarray, betas: np.ndarray, layers: int):
    """Value and gradient of the Beta-Decay term written out with loops over rows.

    Used trellis nodes: the stem (layer -1, level 0) and every node of layers 0..L-2; a node at
    level s moves to s-1 / s / s+1 where those levels exist (0..3).
    """
    e = alphas.shape[0]
    value = sum(math.log(sum(math.exp(a) for a in row)) for row in alphas) / e
    grad_a = np.zeros_like(alphas)
    for i, row in enumerate(alphas):
        z = sum(math.exp(a) for a in row)
        grad_a[i] = [math.exp(a) / z / e for a in row]
    nodes = [(0, 0)]  # (beta layer index, source level): the stem feeds layer 0
    for layer in range(1, layers):
        nodes += [(layer, s) for s in range(min(layer + 1, 4))]  # levels of layer - 1
    grad_b = np.zeros_like(betas)
    beta_value = 0.0
    for layer, s in nodes:
        moves = [m for m in range(3) if 0 <= s + m - 1 <= 3]
        z = sum(math.exp(betas[layer, s, m]) for m in moves)
        beta_value += math.log(z) / len(nodes)
        for m in moves:
            grad_b[layer, s, m] = math.exp(betas[layer, s, m]) / z / len(nodes)
    return value + beta_value, grad_a, grad_b


@pytest.mark.parametrize(("layers", "blocks"), [(4, 3), (6, 2), (2, 5)])
def test_beta_decay_value_and_gradient_match_numpy(layers, blocks):
    model = _model(layers, blocks)
    with torch.no_grad():  # invalid moves must have no influence at all
        model.betas[:, 0, 0] = 50.0
        model.betas[:, 3, 2] = -50.0
    term = beta_decay(model)
    term.backward()
    value, grad_a, grad_b = _numpy_beta_decay(
        model.alphas.detach().numpy(), model.betas.detach().numpy(), layers
    )
    assert float(term.detach()) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(model.alphas.grad.numpy(), grad_a, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(model.betas.grad.numpy(), grad_b, rtol=1e-10, atol=1e-15)
    # moves of nodes outside the forward pass and invalid moves get nothing
    used = model.used_beta_mask()
    assert torch.all(model.betas.grad[~used] == 0)


def test_ramps_and_schedules_follow_their_formulas():
    for p in np.linspace(0, 1, 11):
        assert RAMPS["linear"](p) == pytest.approx(p)
        assert RAMPS["cosine"](p) == pytest.approx((1 - math.cos(math.pi * p)) / 2)
        assert RAMPS["constant"](p) == 1.0
    guards = CollapseGuards(term=beta_decay, weight=50.0, aux_start=0.8, aux_ramp=RAMPS["cosine"])
    assert guards.regularizer_weight(0.0) == 0.0  # beta-DARTS starts from 0 ...
    assert guards.regularizer_weight(0.3) == pytest.approx(15.0)  # ... and grows linearly
    assert guards.aux_skip(0.0) == pytest.approx(0.8)
    assert guards.aux_skip(0.5) == pytest.approx(0.4)
    assert guards.aux_skip(1.0) == pytest.approx(0.0, abs=1e-15)
    off = CollapseGuards()
    assert off.aux_skip(0.3) == 0.0 and off.regularizer_weight(0.7) == 0.0
    assert off.state(0.2, 0.4) == {}
    assert off.add_regularizer_gradients(_model(), 0.5) is None


def test_add_regularizer_gradients_adds_lambda_times_the_gradient():
    model = _model()
    guards = CollapseGuards(term=beta_decay, weight=4.0, weight_ramp=RAMPS["linear"])
    base = [torch.randn_like(p) for p in model.arch_parameters()]
    for p, b in zip(model.arch_parameters(), base, strict=True):
        p.grad = b.clone()
        p.requires_grad_(False)  # as after the unrolled gradient: restored afterwards
    value = guards.add_regularizer_gradients(model, 0.25)  # lambda = 1
    _, grad_a, grad_b = _numpy_beta_decay(
        model.alphas.detach().numpy(), model.betas.detach().numpy(), model.layers
    )
    assert value == pytest.approx(float(beta_decay(model).detach()))
    np.testing.assert_allclose(model.alphas.grad.numpy(), base[0].numpy() + grad_a, rtol=1e-10)
    np.testing.assert_allclose(model.betas.grad.numpy(), base[1].numpy() + grad_b, rtol=1e-10)
    assert not any(p.requires_grad for p in model.arch_parameters())


TINY = SEARCH_TINY  # 8 + 8 samples -> 4 steps per epoch


def test_search_feeds_the_decaying_aux_skip_to_every_forward(tmp_path, monkeypatch):
    """Linear decay from 0.5: weight step g and its architecture steps see 0.5 (1 - g / 8);
    the evaluation after epoch e sees 0.5 (1 - 4 e / 8)."""
    seen = []
    original = SearchNetwork.forward

    def forward(self, x, aux_skip=0.0, **kwargs):
        seen.append((self.training, aux_skip))
        return original(self, x, aux_skip, **kwargs)

    monkeypatch.setattr(SearchNetwork, "forward", forward)
    cfg = load_config(
        SYNTHETIC,
        [*TINY, f"output={tmp_path / 'run'}", "aux_skip.schedule=linear", "aux_skip.start=0.5"],
    )
    result = run_search(cfg, log=None)
    expected = []
    for g in range(8):
        steps = 1 if g < 4 else 2  # weight step, then one architecture step from epoch 2
        expected += [(True, 0.5 * (1 - g / 8))] * steps
        if g in (3, 7):  # evaluation of the 4 samples in one batch
            expected.append((False, 0.5 * (1 - (g + 1) / 8)))
    assert [t for t, _ in seen] == [t for t, _ in expected]
    np.testing.assert_allclose([a for _, a in seen], [a for _, a in expected], atol=1e-15)
    assert [h["aux_skip"] for h in result.history] == pytest.approx([0.25, 0.0])


def test_search_with_beta_decay_moves_the_logits_by_the_regularised_gradient(tmp_path):
    """One architecture step: the Adam update equals the one of the cross-entropy gradient plus
    lambda times the numpy Beta-Decay gradient (a constant ramp makes lambda = weight)."""
    cfg = load_config(
        SYNTHETIC,
        [
            *TINY,
            f"output={tmp_path / 'run'}",
            "arch_regularizer.name=beta_decay",
            "arch_regularizer.weight=3.0",
            "arch_regularizer.ramp=constant",
        ],
    )
    engine = SearchEngine(cfg, log=None)
    batch = next(iter(engine._loader(engine.batches(1, 0)[:1], 0)))
    engine.arch_gradients(batch)
    ce = [p.grad.clone() for p in engine.arch]
    _, grad_a, grad_b = _numpy_beta_decay(
        engine.model.alphas.detach().double().numpy(),
        engine.model.betas.detach().double().numpy(),
        engine.model.layers,
    )
    engine.guards.add_regularizer_gradients(engine.model, engine.schedule.arch_progress(0))
    np.testing.assert_allclose(engine.arch[0].grad.numpy(), ce[0].numpy() + 3 * grad_a, rtol=1e-5)
    np.testing.assert_allclose(engine.arch[1].grad.numpy(), ce[1].numpy() + 3 * grad_b, rtol=1e-5)
    engine.close()
    history = run_search(cfg, log=None).history
    assert [h["arch_regularizer_weight"] for h in history] == [3.0, 3.0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "arch_regularizer.name=l2",
            r"arch_regularizer\.name: unknown regularizer 'l2'.*beta_decay",
        ),
        (
            "arch_regularizer.weight=-1",
            r"arch_regularizer\.weight = -1 is out of range: must be >= 0",
        ),
        ("arch_regularizer.ramp=step", r"arch_regularizer\.ramp: unknown ramp 'step'.*cosine"),
        ("aux_skip.schedule=constant", r"aux_skip\.schedule: unknown schedule.*none, linear"),
        ("aux_skip.start=-0.5", r"aux_skip\.start = -0\.5 is out of range: must be >= 0"),
    ],
)
def test_bad_guard_config_names_the_key(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):  # numbers: the config's declared ranges
        cfg = load_config(SYNTHETIC, [*TINY, f"output={tmp_path / 'run'}", override])
        CollapseGuards.from_config(cfg)


def test_defaults_are_off():
    guards = CollapseGuards.from_config(load_config(None))
    assert guards.term is None and guards.aux_ramp is None
