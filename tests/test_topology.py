"""Multi-path topologies and their decoding against brute-force enumeration.

The references here enumerate patterns and topologies on their own (itertools over the
space's transitions, direct products of sigmoids) rather than through the module's tables.
"""

import contextlib
import itertools
import json

import numpy as np
import pytest

from autodeeplab import decode, space
from autodeeplab import topology as T


def _transitions(layers: int, layer: int) -> list[tuple[int, int]]:
    return [(s, d) for lay, s, d in space.SearchSpace(layers=layers).transitions() if lay == layer]


def _logit(logits: np.ndarray, layer: int, src: int, dst: int) -> float:
    return float(logits[layer, src, dst - src + 1])


def _ref_patterns(layers: int, layer: int, logits: np.ndarray):
    """Every non-empty subset of the layer's transitions with its probability, by the direct
    formula ``prod p^on (1-p)^off / (1 - prod (1-p))``."""
    trans = _transitions(layers, layer)
    p = np.array([1 / (1 + np.exp(-_logit(logits, layer, s, d))) for s, d in trans])
    z = 1 - np.prod(1 - p)
    out = []
    for on in itertools.product([False, True], repeat=len(trans)):
        if not any(on):
            continue
        prob = np.prod(np.where(on, p, 1 - p)) / z
        chosen = tuple(t for t, o in zip(trans, on, strict=True) if o)
        out.append((chosen, prob))
    return out


def _ref_feasible(layers: int, logits: np.ndarray):
    """All feasible topologies (as tuples of per-layer transition tuples) with log probability,
    grown layer by layer: a pattern continues when its sources are exactly the active levels."""
    partial = [((), 0.0, frozenset({space.STEM_LEVEL}))]
    for layer in range(layers):
        pats = _ref_patterns(layers, layer, logits)
        nxt = []
        for trans, logp, active in partial:
            for chosen, prob in pats:
                if frozenset(s for s, _ in chosen) == active:
                    nxt.append(
                        ((*trans, chosen), logp + np.log(prob), frozenset(d for _, d in chosen))
                    )
        partial = nxt
    return [(trans, logp) for trans, logp, _ in partial]


def _random_logits(rng, layers: int, scale: float = 2.0) -> np.ndarray:
    return rng.normal(scale=scale, size=(layers, space.NUM_LEVELS, space.NUM_MOVES))


# ----------------------------------------------------------------------------- structure


def test_layer_transitions_follow_the_space():
    assert [len(T.layer_transitions(lay)) for lay in range(5)] == [2, 5, 8, 10, 10]
    for lay in range(5):
        assert list(T.layer_transitions(lay)) == _transitions(lay + 1, lay)
        pat = T.layer_patterns(lay)
        assert pat.num_patterns == 2 ** len(T.layer_transitions(lay)) - 1
    with pytest.raises(ValueError, match="non-negative integer"):
        T.layer_transitions(-1)


def test_feasible_counts_match_the_validator():
    """Over every combination of per-layer patterns of 3 layers, exactly those the reference
    grows are accepted by ``Topology``; every other is rejected with a reason."""
    pats = [[c for c, _ in _ref_patterns(3, lay, np.zeros((3, 4, 3)))] for lay in range(3)]
    accepted = set()
    for combo in itertools.product(*pats):
        with contextlib.suppress(ValueError):
            accepted.add(T.Topology(combo).layers)
    ref = {
        tuple(tuple(sorted(t)) for t in trans) for trans, _ in _ref_feasible(3, np.zeros((3, 4, 3)))
    }
    assert accepted == ref
    assert len(ref) == 1759


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ((), "at least one layer"),
        ((((0, 0),), ()), "layer 1 has no active transition"),
        ((((0, 1),), ((1, 3),)), "changes the level by more than one"),
        ((((0, 0),), ((0, -1),)), "outside 0..3"),
        ((((1, 1),),), r"layer 0: transitions leave levels \[1\].*the stem"),
        (
            (((0, 0),), ((1, 1),)),
            r"layer 1: transitions leave levels \[1\].*active levels there: \[0\]",
        ),
        (
            (((0, 0), (0, 1)), ((0, 0),)),
            r"layer 1: active levels \[1\] of layer 0 feed no transition",
        ),
        ((("a", 0),), "list of \\[src_level, dst_level\\] pairs"),
        ((((0, 0.5),),), "list of \\[src_level, dst_level\\] pairs"),
        ((((0, True),),), "list of \\[src_level, dst_level\\] pairs"),
    ],
)
def test_topology_rejects_infeasible(layers, match):
    with pytest.raises(ValueError, match=match):
        T.Topology(layers)


def test_topology_views_and_json_round_trip():
    top = T.Topology((((0, 1), (0, 0)), ((1, 2), (0, 0)), ((2, 2), (0, 1))))
    assert top.layers == (((0, 0), (0, 1)), ((0, 0), (1, 2)), ((0, 1), (2, 2)))  # sorted
    assert top.active_levels(1) == (0, 2)
    assert not top.is_single_path()
    assert str(top) == "0>0,0>1 | 0>0,1>2 | 0>1,2>2"
    assert T.Topology.from_json(top.to_json()) == top
    assert json.loads(top.to_json()) == {
        "transitions": [[[0, 0], [0, 1]], [[0, 0], [1, 2]], [[0, 1], [2, 2]]]
    }
    mask = top.mask()
    assert mask.shape == (3, 4, 3) and mask.sum() == 6
    assert mask[1, 1, 2] and mask[2, 2, 1] and not mask[2, 2, 2]
    with pytest.raises(ValueError, match="several paths"):
        top.path()
    single = T.Topology.from_path(space.RELEASED_PATH)
    assert single.is_single_path() and single.path() == space.RELEASED_PATH
    with pytest.raises(ValueError, match="more than one"):
        T.Topology.from_path((0, 2))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"layers": []}, "one key 'transitions'"),
        ([], "one key 'transitions'"),
        ({"transitions": [[[0, 1, 2]]]}, "integer pairs"),
        ({"transitions": [[[0, True]]]}, "integer pairs"),
        ({"transitions": [[[0, 2]]]}, "more than one"),
    ],
)
def test_topology_from_dict_errors(data, match):
    with pytest.raises(ValueError, match=match):
        T.Topology.from_dict(data)
    with pytest.raises(ValueError, match="does not parse"):
        T.Topology.from_json("{")


# ----------------------------------------------------------------------------- probabilities


def test_pattern_probabilities_and_marginals_match_enumeration():
    rng = np.random.default_rng(0)
    logits = _random_logits(rng, 5)
    marg = T.transition_marginals(logits)
    for layer in range(5):
        ref = _ref_patterns(5, layer, logits)
        probs = np.exp(T.pattern_log_probs(logits, layer))
        assert probs.sum() == pytest.approx(1.0)
        # pattern order of the table: bit t of (index + 1) is transition t
        by_set = {chosen: p for chosen, p in ref}
        trans = T.layer_transitions(layer)
        for idx, p in enumerate(probs):
            chosen = tuple(t for k, t in enumerate(trans) if (idx + 1) >> k & 1)
            assert p == pytest.approx(by_set[chosen], rel=1e-10)
        for s, d in trans:
            expected = sum(p for chosen, p in ref if (s, d) in chosen)
            assert marg[layer, s, d - s + 1] == pytest.approx(expected, rel=1e-10)
    used = np.array(space.SearchSpace(layers=5).used_transition_mask())
    assert np.all(marg[~used] == 0)


def test_marginals_in_the_limits():
    """All transitions nearly off: conditioned on one being on, it is exactly one, uniformly, so
    each marginal is 1/T; all nearly on: every marginal is 1. The stable normaliser keeps this
    where ``1 - prod(1 - p)`` would round to 0."""
    marg = T.transition_marginals(np.full((5, 4, 3), -800.0))
    for layer in range(5):
        trans = T.layer_transitions(layer)
        for s, d in trans:
            assert marg[layer, s, d - s + 1] == pytest.approx(1 / len(trans))
    assert np.allclose(
        T.transition_marginals(np.full((3, 4, 3), 40.0))[
            np.array(space.SearchSpace(layers=3).used_transition_mask())
        ],
        1.0,
    )
    assert T.log_normaliser(np.array([-800.0, -800.0])) == pytest.approx(-800 + np.log(2))
    with pytest.raises(ValueError, match=r"shape \(L, 4, 3\)"):
        T.transition_marginals(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        T.decode_topology(np.full((2, 4, 3), np.nan))


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_decode_equals_brute_force(layers):
    """Every feasible topology enumerated (333,663 of them for 4 layers) and scored by the
    direct formula; the decoder finds the best one."""
    rng = np.random.default_rng(layers)
    for trial in range(6 if layers < 4 else 1):
        logits = _random_logits(rng, layers, scale=[2.0, 0.5, 4.0][trial % 3])
        feasible = _ref_feasible(layers, logits)
        assert len(feasible) == T.count_topologies(layers)
        scores = np.array([lp for _, lp in feasible])
        best = feasible[int(np.argmax(scores))][0]
        top = T.decode_topology(logits)
        assert top.layers == tuple(tuple(sorted(t)) for t in best)
        assert T.topology_log_prob(logits, top) == pytest.approx(scores.max(), abs=1e-9)


def _all_paths(layers: int) -> np.ndarray:
    paths = [[]]
    for _ in range(layers):
        paths = [
            [*p, space.move_target(p[-1] if p else 0, m)]
            for p in paths
            for m in space.valid_moves(p[-1] if p else 0)
        ]
    return np.array(paths)


def test_best_single_path_is_the_best_path():
    rng = np.random.default_rng(3)
    paths = _all_paths(7)
    assert len(paths) == space.count_paths(7)
    for _ in range(5):
        logits = _random_logits(rng, 7)
        scores = [T.topology_log_prob(logits, T.Topology.from_path(p)) for p in paths]
        assert tuple(paths[int(np.argmax(scores))]) == T.best_single_path(logits)


def _feasible(top: T.Topology) -> bool:
    """Feasibility written out again, independently of the validator."""
    active = {0}
    for trans in top.layers:
        if not trans or {s for s, _ in trans} != active:
            return False
        if any(abs(s - d) > 1 or not 0 <= d < 4 for s, d in trans):
            return False
        active = {d for _, d in trans}
    return True


def test_twelve_layers_feasible_and_beats_every_single_path():
    """On 2000 random logits of the paper's 12 layers: the decoded topology is feasible, scores
    at least the best single path and Viterbi's path over the same logits; on a few of them, at
    least every one of the 75,025 single paths, enumerated."""
    rng = np.random.default_rng(12)
    paths = _all_paths(12)
    assert len(paths) == 75025
    prev = np.concatenate([np.zeros((len(paths), 1), dtype=int), paths[:, :-1]], axis=1)
    moves = paths - prev + 1
    for trial in range(2000):
        logits = _random_logits(rng, 12, scale=[0.3, 1.0, 3.0, 10.0][trial % 4])
        top = T.decode_topology(logits)
        assert _feasible(top)
        score = T.topology_log_prob(logits, top)
        assert (
            score
            >= T.topology_log_prob(logits, T.Topology.from_path(T.best_single_path(logits))) - 1e-9
        )
        viterbi = decode.decode_path(logits)
        assert score >= T.topology_log_prob(logits, T.Topology.from_path(viterbi)) - 1e-9
        if trial < 8:
            all_scores = _single_edge_log_probs(logits)[np.arange(12), prev, moves].sum(axis=1)
            assert all_scores[1234] == pytest.approx(
                T.topology_log_prob(logits, T.Topology.from_path(paths[1234]))
            )
            assert score >= all_scores.max() - 1e-9


def _single_edge_log_probs(logits: np.ndarray) -> np.ndarray:
    """``log P(layer pattern = {e})`` for every transition, by the direct formula, in the beta
    layout (``1 - p`` as ``1 / (1 + e^a)`` so that it does not round to 0)."""
    out = np.full(logits.shape, -np.inf)
    for layer in range(logits.shape[0]):
        trans = _transitions(logits.shape[0], layer)
        a = np.array([_logit(logits, layer, s, d) for s, d in trans])
        log_on, log_off = -np.log1p(np.exp(-a)), -np.log1p(np.exp(a))
        log_z = np.log1p(-np.exp(log_off.sum()))
        for k, (s, d) in enumerate(trans):
            out[layer, s, d - s + 1] = log_on[k] + log_off.sum() - log_off[k] - log_z
    return out


def test_network_rules_of_a_topology():
    # on the full trellis the H^{l-2} provider is the supernet's own choice for every node
    for layers in range(1, 7):
        full = T.Topology.all_on(layers)
        assert set(full.transitions()) == set(space.SearchSpace(layers=layers).transitions())
        for node in space.SearchSpace(layers=layers).all_nodes():
            assert full.prev_prev_level(node.layer, node.level) == node.prev_prev
    # on any topology: the active level of layer l - 2 nearest to the cell's, finer on a tie
    rng = np.random.default_rng(0)
    for _ in range(200):
        topo = T.decode_topology(rng.normal(0, 2, (6, 4, 3)))
        for layer, _, level in topo.transitions():
            if layer >= 2:
                active = topo.active_levels(layer - 2)
                best = min(active, key=lambda k, t=level: (abs(k - t), k))
                assert topo.prev_prev_level(layer, level) == best
        assert set(topo.transitions()) == {
            (layer, s, d)
            for layer in range(6)
            for level in range(4)
            for s, d in topo.incoming(layer, level)
        }
    assert T.prev_prev_candidates(0, 1) == (-1,) and T.prev_prev_candidates(1, 2) == (0,)
    assert T.prev_prev_candidates(5, 1) == (1, 0, 2, 3)
    # the decoder's low-level node: the last layer of the initial level-0-only run
    assert T.Topology.from_path((0, 0, 0, 1, 0)).low_level_layer() == 2
    assert T.Topology.from_path((1, 0, 0)).low_level_layer() is None
    assert T.Topology((((0, 0),), ((0, 0), (0, 1)), ((0, 0), (1, 1)))).low_level_layer() == 0
    with pytest.raises(ValueError, match="positive integer"):
        T.Topology.all_on(0)
