import itertools
import math

import numpy as np
import pytest

from autodeeplab import decode, space
from autodeeplab.genotype import RELEASED


def _brute_force_best_path(beta):
    """Enumerate all valid paths; probabilities from an explicit per-node softmax."""
    layers = beta.shape[0]
    best, best_p = None, -1.0
    for path in itertools.product(range(4), repeat=layers):
        prev, p = 0, 1.0
        for layer, s in enumerate(path):
            if abs(s - prev) > 1:
                p = -1.0
                break
            moves = [m for m in range(3) if 0 <= prev + m - 1 <= 3]
            exps = {
                m: math.exp(beta[layer, prev, m] - max(beta[layer, prev, k] for k in moves))
                for m in moves
            }
            p *= exps[s - prev + 1] / sum(exps.values())
            prev = s
        if p > best_p:
            best, best_p = path, p
    return best, best_p


@pytest.mark.parametrize("seed", range(40))
def test_viterbi_equals_enumeration(seed):
    rng = np.random.default_rng(seed)
    layers = int(rng.integers(1, 9))
    beta = rng.normal(scale=2.0, size=(layers, 4, 3))
    if seed % 2:  # plant huge values on invalid entries: they must have no influence
        beta[:, 0, 0] = 1e6
        beta[:, 3, 2] = 1e6
    path, p = _brute_force_best_path(beta)
    assert decode.decode_path(beta) == path
    assert math.isclose(decode.path_log_prob(beta, path), math.log(p), rel_tol=1e-9, abs_tol=1e-9)


def test_invalid_entries_have_no_influence():
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(8, 4, 3))
    poisoned = beta.copy()
    poisoned[:, 0, 0] = -1e9
    poisoned[:, 3, 2] = 1e9
    np.testing.assert_allclose(decode.transition_probs(beta), decode.transition_probs(poisoned))
    assert decode.decode_path(beta) == decode.decode_path(poisoned)


def test_transition_probs_normalised_per_node():
    probs = decode.transition_probs(np.random.default_rng(1).normal(size=(5, 4, 3)))
    np.testing.assert_allclose(probs.sum(axis=2), 1.0)
    assert np.all(probs[:, 0, 0] == 0) and np.all(probs[:, 3, 2] == 0)


def test_planted_released_path_decodes():
    beta = np.random.default_rng(2).normal(scale=1e-3, size=(12, 4, 3))
    prev = 0
    for layer, s in enumerate(RELEASED.path):
        beta[layer, prev, space.move_between(prev, s)] += 10.0
        prev = s
    assert decode.decode_path(beta) == RELEASED.path


def test_path_log_prob_sums_to_one_over_all_paths():
    beta = np.random.default_rng(3).normal(size=(5, 4, 3))
    total = sum(
        math.exp(decode.path_log_prob(beta, p))
        for p in itertools.product(range(4), repeat=5)
        if all(abs(a - b) <= 1 for a, b in zip((0, *p[:-1]), p, strict=True))
    )
    assert math.isclose(total, 1.0, rel_tol=1e-9)


def _brute_force_best_ratio_path(beta):
    """Enumerate all valid paths; score each by its probability over its probability under
    uniform moves (1 / number of valid moves at every node it leaves)."""
    layers, best, best_r = beta.shape[0], None, -1.0
    for path in itertools.product(range(4), repeat=layers):
        if not all(abs(a - b) <= 1 for a, b in zip((0, *path[:-1]), path, strict=True)):
            continue
        p = math.exp(decode.path_log_prob(beta, path))
        uniform = 1.0
        for prev in (0, *path[:-1]):
            uniform /= 2 if prev in (0, 3) else 3  # the finest and coarsest levels: 2 moves
        if p / uniform > best_r:
            best, best_r = path, p / uniform
    return best, best_r


@pytest.mark.parametrize("seed", range(30))
def test_ratio_rule_equals_enumeration(seed):
    rng = np.random.default_rng(100 + seed)
    layers = int(rng.integers(1, 8))
    beta = rng.normal(scale=0.5, size=(layers, 4, 3))
    path, ratio = _brute_force_best_ratio_path(beta)
    assert decode.decode_path(beta, "ratio") == path
    assert math.isclose(decode.path_log_ratio(beta, path), math.log(ratio), abs_tol=1e-9)


def test_untrained_betas_favour_the_finest_level_only_under_the_probability_rule():
    beta = np.zeros((4, 4, 3))
    # every node has 2 or 3 moves: keeping to level 0 (2 moves at each node) is the most
    # probable path, (1/2)^4, against (1/2)(1/3)^3 for keeping to level 1
    assert decode.decode_path(beta) == (0, 0, 0, 0)
    assert math.isclose(decode.path_log_prob(beta, (0, 0, 0, 0)), 4 * math.log(1 / 2))
    assert math.isclose(decode.path_log_prob(beta, (1, 1, 1, 1)), math.log(1 / 2 / 27))
    # under the ratio rule every path of untrained betas scores 0 (a tie)
    for path in [(0, 0, 0, 0), (1, 1, 1, 1), (1, 2, 3, 3), decode.decode_path(beta, "ratio")]:
        assert decode.path_log_ratio(beta, path) == pytest.approx(0.0, abs=1e-12)
    # a slight push towards level 1 decides the ratio rule, not the probability rule
    pushed = beta.copy()
    prev = 0
    for layer, level in enumerate((1, 1, 1, 1)):
        pushed[layer, prev, space.move_between(prev, level)] += 0.2
        prev = level
    assert decode.decode_path(pushed) == (0, 0, 0, 0)
    assert decode.decode_path(pushed, "ratio") == (1, 1, 1, 1)


def test_move_log_priors():
    priors = decode.move_log_priors()
    mask = np.array(space.valid_move_mask())
    assert np.all(np.isneginf(priors[~mask]))
    np.testing.assert_allclose(np.exp(priors).sum(axis=1), 1.0)
    p = np.exp(priors[mask])
    assert np.isclose(p, 0.5).sum() == 4 and np.isclose(p, 1 / 3).sum() == 6  # 2 + 2 + 3 + 3


def test_unknown_path_rule():
    with pytest.raises(ValueError, match="valid: probability, ratio"):
        decode.decode_path(np.zeros((2, 4, 3)), "viterbi")


def _brute_force_cell(alpha):
    blocks = decode.blocks_from_edges(alpha.shape[0])
    w = np.exp(alpha) / np.exp(alpha).sum(axis=1, keepdims=True)
    cell = []
    for b in range(blocks):
        best = None
        for i, j in itertools.combinations(range(b + 2), 2):
            ei, ej = space.edge_index(b, i), space.edge_index(b, j)
            score = max(w[ei, 1:]) + max(w[ej, 1:])
            if best is None or score > best[0]:
                best = (score, i, j)
        _, i, j = best
        ops = tuple(
            space.PRIMITIVES[1 + int(np.argmax(w[space.edge_index(b, k), 1:]))] for k in (i, j)
        )
        cell.append(((i, ops[0]), (j, ops[1])))
    return tuple(cell)


@pytest.mark.parametrize("seed", range(30))
def test_decode_cell_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    blocks = int(rng.integers(1, 6))
    alpha = rng.normal(scale=3.0, size=(space.num_edges(blocks), 8))
    if seed % 3 == 0:
        alpha[:, 0] += 50.0  # `none` dominates everywhere: still never chosen
    cell = decode.decode_cell(alpha)
    assert cell == _brute_force_cell(alpha)
    for b, block in enumerate(cell):
        assert len({i for i, _ in block}) == 2
        assert all(0 <= i < b + 2 and op != "none" for i, op in block)


def test_planted_released_cell_decodes():
    alpha = np.random.default_rng(4).normal(scale=1e-3, size=(20, 8))
    for b, block in enumerate(RELEASED.cell):
        for i, op in block:
            alpha[space.edge_index(b, i), space.op_index(op)] += 5.0
    assert decode.decode_cell(alpha) == RELEASED.cell
    assert decode.decode_genotype(alpha, np.zeros((12, 4, 3))).cell == RELEASED.cell


@pytest.mark.parametrize(
    ("alpha", "message"),
    [
        (np.zeros((19, 8)), "does not match"),
        (np.zeros((20, 7)), "8 columns"),
        (np.zeros(20), "2-d"),
    ],
)
def test_decode_cell_bad_shapes(alpha, message):
    with pytest.raises(ValueError, match=message):
        decode.decode_cell(alpha)


def test_decode_path_bad_input():
    with pytest.raises(ValueError, match="shape"):
        decode.decode_path(np.zeros((12, 3, 3)))
    bad = np.zeros((3, 4, 3))
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        decode.decode_path(bad)
