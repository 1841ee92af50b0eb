"""The DiNTS relaxation: weights and loss terms against hand formulas and enumeration, the
supernet running on it, decoding."""

import itertools
import math

import numpy as np
import pytest
import torch

from autodeeplab import space
from autodeeplab import topology as T
from autodeeplab.dints import DintsRelaxation
from autodeeplab.genotype import Genotype
from autodeeplab.relaxation import SoftmaxRelaxation
from autodeeplab.supernet import SearchNetwork

TINY = dict(num_classes=3, layers=4, blocks=2, filter_multiplier=2, stem_channels=(4, 4, 8))


def _params(relax: DintsRelaxation, scale: float = 1.0, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    params = relax.init_parameters()
    with torch.no_grad():
        for p in params.values():
            p.normal_(std=scale)
    return {k: v.double() for k, v in params.items()}


def _used(layers: int) -> np.ndarray:
    return np.array(space.SearchSpace(layers=layers).used_transition_mask())


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_parameters_and_validation():
    relax = DintsRelaxation(space.SearchSpace(layers=5, blocks=3))
    params = relax.init_parameters()
    assert {k: tuple(v.shape) for k, v in params.items()} == {
        "alphas": (9, 8),
        "path_logits": (5, 4, 3),
    }
    assert all(v.abs().max() < 1e-2 for v in params.values())
    assert relax.regularizers == ("path_entropy", "op_entropy", "topology")
    with pytest.raises(ValueError, match="no regularizer 'beta_decay'; valid: path_entropy"):
        relax.regularizer("beta_decay", params)
    with pytest.raises(ValueError, match="warmup must be in"):
        DintsRelaxation(space.SearchSpace(), warmup=1.0)
    with pytest.raises(ValueError, match="topology_weight must be a finite number >= 0"):
        DintsRelaxation(space.SearchSpace(), topology_weight=-1.0)
    with pytest.raises(ValueError, match="'path_logits' is missing"):
        relax.transition_weights({"alphas": params["alphas"], "betas": params["path_logits"]})


def test_transition_weights_are_the_enumerated_marginals():
    relax = DintsRelaxation(space.SearchSpace(layers=5, blocks=2))
    params = _params(relax, scale=2.0)
    logits = params["path_logits"].detach().numpy()
    weights = relax.transition_weights(params).detach().numpy()
    for layer in range(5):
        trans = T.layer_transitions(layer)
        p = _sigmoid(np.array([logits[layer, s, d - s + 1] for s, d in trans]))
        on_prob = np.zeros(len(trans))
        for on in itertools.product([0, 1], repeat=len(trans)):
            if any(on):
                on = np.array(on)
                on_prob += on * np.prod(np.where(on, p, 1 - p)) / (1 - np.prod(1 - p))
        for k, (s, d) in enumerate(trans):
            assert weights[layer, s, d - s + 1] == pytest.approx(on_prob[k], rel=1e-10)
    assert np.all(weights[~_used(5)] == 0)
    np.testing.assert_allclose(weights, T.transition_marginals(logits), rtol=1e-12)
    # extreme logits stay finite; all nearly off -> exactly one on, uniformly
    far = {
        "alphas": params["alphas"],
        "path_logits": torch.full((5, 4, 3), -800.0, dtype=torch.float64),
    }
    w = relax.transition_weights(far)
    assert w[0, 0, 1].item() == pytest.approx(0.5) and w[4, 1, 1].item() == pytest.approx(0.1)


def test_pattern_log_probs_match_numpy():
    relax = DintsRelaxation(space.SearchSpace(layers=4, blocks=2))
    params = _params(relax, scale=1.5)
    logits = params["path_logits"].detach().numpy()
    for layer, lp in enumerate(relax.pattern_log_probs(params)):
        np.testing.assert_allclose(lp.detach().numpy(), T.pattern_log_probs(logits, layer))
        assert lp.exp().sum().item() == pytest.approx(1.0)


def test_entropy_terms_match_hand_formulas():
    relax = DintsRelaxation(space.SearchSpace(layers=4, blocks=3))
    params = _params(relax, scale=3.0)
    a = params["path_logits"].detach().numpy()[_used(4)]  # the 2 + 5 + 8 + 10 transitions
    assert a.size == 25
    p = _sigmoid(a)
    expected = np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
    assert relax.regularizer("path_entropy", params).item() == pytest.approx(expected, rel=1e-10)
    al = params["alphas"].detach().numpy()
    q = np.exp(al) / np.exp(al).sum(axis=1, keepdims=True)
    expected = np.mean(-(q * np.log(q)).sum(axis=1))
    assert relax.regularizer("op_entropy", params).item() == pytest.approx(expected, rel=1e-10)
    # maxima: every transition at 1/2 -> log 2; uniform ops -> log O
    zero = {k: torch.zeros_like(v) for k, v in params.items()}
    assert relax.regularizer("path_entropy", zero).item() == pytest.approx(math.log(2))
    assert relax.regularizer("op_entropy", zero).item() == pytest.approx(math.log(8))
    # decided edges carry (almost) no entropy, and the value stays finite far out
    far = {"alphas": params["alphas"], "path_logits": torch.full((4, 4, 3), 500.0)}
    assert relax.regularizer("path_entropy", far).item() == pytest.approx(0.0, abs=1e-12)


def test_topology_term_by_hand_for_two_layers():
    """Two layers, all logits 0. Layer 0 (2 transitions from the stem) activates {0}, {1} or
    {0, 1} with 1/3 each. Layer 1 has 31 equally likely patterns; 2 transitions leave level 0
    and 3 leave level 1, so it reads {0} in 3, {1} in 7 and {0, 1} in 21 of them."""
    relax = DintsRelaxation(space.SearchSpace(layers=2, blocks=2))
    params = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in _params(relax).items()}
    expected = 0.0
    for r in (3 / 31, 7 / 31, 21 / 31):
        expected -= 1 / 3 * math.log(r) + 2 / 3 * math.log(1 - r)
    assert relax.regularizer("topology", params).item() == pytest.approx(expected, rel=1e-12)


def _ref_topology_term(logits: np.ndarray) -> float:
    """Sum over consecutive layers and node sets of the binary cross-entropy between 'layer l
    activates exactly N' and 'layer l + 1 reads exactly N', by enumeration."""
    layers = logits.shape[0]

    def patterns(layer):
        trans = T.layer_transitions(layer)
        p = _sigmoid(np.array([logits[layer, s, d - s + 1] for s, d in trans]))
        z = 1 - np.prod(1 - p)
        for on in itertools.product([False, True], repeat=len(trans)):
            if any(on):
                chosen = [t for t, o in zip(trans, on, strict=True) if o]
                yield chosen, np.prod(np.where(on, p, 1 - p)) / z

    total = 0.0
    for layer in range(layers - 1):
        q, r = {}, {}
        for chosen, prob in patterns(layer):
            key = frozenset(d for _, d in chosen)
            q[key] = q.get(key, 0.0) + prob
        for chosen, prob in patterns(layer + 1):
            key = frozenset(s for s, _ in chosen)
            r[key] = r.get(key, 0.0) + prob
        assert set(q) == set(r)
        for key in q:
            total -= q[key] * np.log(r[key]) + (1 - q[key]) * np.log(1 - r[key])
    return total


def test_topology_term_matches_enumeration_and_rewards_consistency():
    relax = DintsRelaxation(space.SearchSpace(layers=5, blocks=2))
    params = _params(relax, scale=2.0)
    value = relax.regularizer("topology", params)
    assert value.item() == pytest.approx(
        _ref_topology_term(params["path_logits"].detach().numpy()), rel=1e-10
    )
    # a decided, consistent single path (the stem's level 0 straight on) costs almost nothing;
    # the same path with layer 3 instead reading level 1 (inconsistent) costs a lot
    consistent = torch.full((5, 4, 3), -30.0, dtype=torch.float64)
    consistent[:, 0, 1] = 30.0
    broken = consistent.clone()
    broken[3, 0, 1], broken[3, 1, 1] = -30.0, 30.0
    alphas = params["alphas"]
    low = relax.regularizer("topology", {"alphas": alphas, "path_logits": consistent}).item()
    high = relax.regularizer("topology", {"alphas": alphas, "path_logits": broken}).item()
    assert 0 <= low < 1e-6 and high > 20


def test_ramp_and_search_loss():
    relax = DintsRelaxation(
        space.SearchSpace(layers=3, blocks=2),
        path_entropy_weight=2.0,
        op_entropy_weight=0.5,
        topology_weight=0.1,
        warmup=0.4,
    )
    params = _params(relax)
    assert [relax.ramp(p) for p in (0.0, 0.4, 0.7, 1.0)] == pytest.approx([0, 0, 0.5, 1])
    with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
        relax.ramp(1.5)
    assert relax.search_loss(params, 0.2).item() == 0.0
    full = (
        2.0 * relax.regularizer("path_entropy", params)
        + 0.5 * relax.regularizer("op_entropy", params)
        + 0.1 * relax.regularizer("topology", params)
    )
    torch.testing.assert_close(relax.search_loss(params, 0.7), 0.5 * full)
    torch.testing.assert_close(relax.search_loss(params, 1.0), full)


def test_decoding():
    relax = DintsRelaxation(space.SearchSpace(layers=6, blocks=3))
    params = _params(relax, scale=2.0, seed=4)
    logits = params["path_logits"].detach().numpy()
    top = relax.decode_topology(params)
    assert top == T.decode_topology(logits) and top.num_layers == 6
    genotype = relax.decode(params)
    assert genotype.topology == top and genotype.is_multi_path == (not top.is_single_path())
    # the genotype file holds the decoded topology (format 2 for a multi-path one)
    assert Genotype.from_json(genotype.to_json()) == genotype
    # a decoded topology with one node per layer is a single-path genotype (format 1)
    single = np.full_like(logits, -8.0)
    for layer, level in enumerate((0, 1, 1, 2, 2, 1)):
        source = 0 if layer == 0 else (0, 1, 1, 2, 2, 1)[layer - 1]
        single[layer, source, space.move_between(source, level)] = 8.0
    one = relax.decode({"alphas": params["alphas"], "path_logits": torch.tensor(single)})
    assert one.path == (0, 1, 1, 2, 2, 1) and one.to_dict()["format_version"] == 1
    soft = SoftmaxRelaxation(relax.space)
    assert (
        genotype.cell
        == soft.decode({"alphas": params["alphas"], "betas": params["path_logits"]}).cell
    )


class FixedTransitions(SoftmaxRelaxation):
    """The paper's relaxation, but with the transition weights given."""

    def __init__(self, search_space, weights):
        super().__init__(search_space)
        self.weights = weights

    def transition_weights(self, params):
        return self.weights


def test_supernet_runs_on_dints_and_mixes_with_the_marginals():
    torch.manual_seed(0)
    sp = space.SearchSpace(layers=TINY["layers"], blocks=TINY["blocks"])
    net = SearchNetwork(**TINY, relaxation=DintsRelaxation(sp)).double()
    with torch.no_grad():
        net.path_logits.normal_(std=2.0)
        net.alphas.normal_()
    assert [n for n, _ in net.named_parameters()][:2] == ["alphas", "path_logits"]
    assert "betas" not in net.state_dict()
    assert net.arch_parameters() == [net.alphas, net.path_logits]

    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = net(x)
    loss = out.square().mean() + net.relaxation.search_loss(net.arch_state(), 1.0)
    loss.backward()
    for p in (net.alphas, net.path_logits):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    used = torch.tensor(sp.used_transition_mask())
    assert (net.path_logits.grad[used] != 0).all()
    assert (net.path_logits.grad[~used] == 0).all()

    # the same weights mixed with the marginals by the paper's supernet give the same logits
    ref = SearchNetwork(
        **TINY, relaxation=FixedTransitions(sp, net.beta_weights().detach())
    ).double()
    state = {k: v for k, v in net.state_dict().items() if k != "path_logits"}
    ref.load_state_dict(state, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), net(x), rtol=1e-10, atol=1e-12)

    assert net.genotype().topology == T.decode_topology(net.path_logits.detach().numpy())
    assert net.relaxation.decode_topology(net.arch_state()).num_layers == TINY["layers"]


def test_extreme_logits_keep_every_term_finite_in_float32():
    """Logits of size 100 saturate every sigmoid and softmax in float32; the weights, the three
    terms and their gradients stay finite (log-sigmoids and log-sum-exps throughout)."""
    relax = DintsRelaxation(space.SearchSpace(layers=5, blocks=2))
    torch.manual_seed(0)
    params = relax.init_parameters()
    with torch.no_grad():
        for p in params.values():
            p.normal_(std=100.0)
    probs = relax.edge_probs(params)
    used = torch.tensor(relax.space.used_transition_mask())
    torch.testing.assert_close(probs[used], torch.sigmoid(params["path_logits"])[used])
    assert (probs[~used] == 0).all()
    loss = relax.search_loss(params, 1.0) + relax.transition_weights(params).sum()
    loss.backward()
    assert torch.isfinite(loss)
    for p in params.values():
        assert torch.isfinite(p.grad).all()
