"""Consensus of search trials: the mean distribution against a hand-computed case and a brute
force over every path, one search's consensus is that search's own architecture (every
relaxation, perturbation-based selection included), refusals, the ``decode`` command with
several checkpoints and the study's consensus candidate; the paper's rule (the search with the
best supernet mIoU) on the same checkpoints."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from autodeeplab import space
from autodeeplab.cli import main
from autodeeplab.config import load_config, to_dict
from autodeeplab.consensus import consensus, select_by_supernet
from autodeeplab.decode import decode_cell_weights, decode_path
from autodeeplab.genotype import Genotype
from autodeeplab.projection import CellProjection, Score, plan
from autodeeplab.search_model import build_relaxation, checkpoint_genotype

from runs import SEARCH_CONFIG, SEARCH_TINY

OPS = space.PRIMITIVES


def search_config(layers: int = 3, blocks: int = 2, *extra: str):
    sizes = ["data.options={length: 16, size: 64, seed: 0}", "data.crop_size=64"]  # DiNTS: > 32
    return load_config(
        SEARCH_CONFIG,
        [*SEARCH_TINY, *sizes, f"model.layers={layers}", f"model.blocks={blocks}", *extra],
    )


def write_search(path, params: dict, cfg=None, **state) -> str:
    """A search checkpoint holding ``params`` (architecture tensors by name) and ``cfg``."""
    cfg = cfg or search_config()
    body = {
        "format_version": 2,
        "kind": "search",
        "config": to_dict(cfg),
        "model": params,
        "epoch": cfg.epochs,  # finished
    }
    torch.save({**body, **state}, path)
    return str(path)


def random_params(cfg, seed: int, scale: float = 1.0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in build_relaxation(cfg).init_parameters().items():
        if p is not None:
            out[name] = scale * torch.randn(p.shape, generator=gen, dtype=torch.float64)
    return out


def all_paths(layers: int):
    """Every path of the trellis (one level per layer, from the stem, at most one level a move)."""
    for path in itertools.product(range(space.NUM_LEVELS), repeat=layers):
        prev, ok = space.STEM_LEVEL, True
        for level in path:
            ok = ok and abs(level - prev) <= 1
            prev = level
        if ok:
            yield path


# ---------------------------------------------------------------------------- distributions
@pytest.mark.parametrize(
    ("relaxation", "rule"),
    [
        ("softmax", "probability"),
        ("gumbel", "probability"),
        ("dints", "probability"),
        ("softmax", "ratio"),
        ("gumbel", "ratio"),
    ],
)
def test_one_distribution_decodes_to_the_relaxations_own_decode(relaxation, rule):
    cfg = search_config(4, 3, f"relaxation.name={relaxation}", f"relaxation.path_decoding={rule}")
    relax = build_relaxation(cfg)
    for seed in range(5):
        params = random_params(cfg, seed)
        assert relax.decode_distribution(relax.distribution(params)) == relax.decode(params)


def test_consensus_is_the_mean_of_the_probabilities_not_a_vote_nor_a_mean_of_logits(tmp_path):
    """One block (edges 0 and 1 both kept), hand-computed.

    Edge 0: search A puts 0.72 on skip_connect, B and C 0.30 on sep_conv_3x3 each; every other op
    shares the rest equally (B and C: 0.02 on skip). Mean: skip (0.72 + 2 * 0.02) / 3 = 0.2533
    against sep_conv_3x3 (0.04 + 2 * 0.30) / 3 = 0.2133, so skip_connect wins although two of
    three searches chose sep_conv_3x3; the mean of the log-probabilities would choose
    sep_conv_3x3 (-1.88 against -2.72). Edge 1: `none` has the largest mean (0.5) and is never decoded; of the others
    max_pool_3x3 (0.2, 0.2, 0.05: mean 0.15) beats avg_pool_3x3 (0.05, 0.05, 0.3: mean 0.1333).
    """
    skip, sep3, none = OPS.index("skip_connect"), OPS.index("sep_conv_3x3"), OPS.index("none")
    maxp, avgp = OPS.index("max_pool_3x3"), OPS.index("avg_pool_3x3")

    def probs(favoured: dict) -> list:
        rest = (1.0 - sum(favoured.values())) / (len(OPS) - len(favoured))
        return [favoured.get(o, rest) for o in range(len(OPS))]

    edge0 = [probs({skip: 0.72}), probs({sep3: 0.30, skip: 0.02}), probs({sep3: 0.30, skip: 0.02})]
    edge1 = [
        probs({none: 0.5, maxp: 0.2, avgp: 0.05}),
        probs({none: 0.5, maxp: 0.2, avgp: 0.05}),
        probs({none: 0.5, maxp: 0.05, avgp: 0.3}),
    ]
    assert edge0[0][sep3] == pytest.approx(0.04)
    cfg = search_config(2, 1)
    betas = torch.zeros(2, space.NUM_LEVELS, space.NUM_MOVES, dtype=torch.float64)
    files = []
    for k in range(3):
        alphas = torch.log(torch.tensor([edge0[k], edge1[k]], dtype=torch.float64))
        alphas += torch.tensor([[3.0], [-2.0]], dtype=torch.float64)  # logits up to a shift
        files.append(write_search(tmp_path / f"s{k}.pt", {"alphas": alphas, "betas": betas}, cfg))
    result = consensus(files)
    assert result.genotype.cell == (((0, "skip_connect"), (1, "max_pool_3x3")),)
    assert [g.cell[0][0][1] for g in result.genotypes] == ["skip_connect", *["sep_conv_3x3"] * 2]
    np.testing.assert_allclose(result.distribution["ops"][0, skip], (0.72 + 0.04) / 3)
    np.testing.assert_allclose(result.distribution["ops"][1, maxp], 0.15)
    # the mean of the logits would have chosen otherwise on edge 0
    logit_mean = np.mean([np.log(e) for e in edge0], axis=0)
    assert OPS[int(np.argmax(logit_mean))] == "sep_conv_3x3"
    # the consensus cell's branches each search has: A both, B the max pooling, C neither
    assert result.agreement()[0] == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_consensus_against_the_mean_by_loops_and_every_path_by_brute_force(tmp_path):
    layers, blocks = 4, 3
    cfg = search_config(layers, blocks)
    params = [random_params(cfg, seed, scale=0.7) for seed in range(4)]
    files = [write_search(tmp_path / f"s{k}.pt", p, cfg) for k, p in enumerate(params)]
    result = consensus(files)
    # op weights: softmax of every search, then the mean, entry by entry
    e_count = space.num_edges(blocks)
    mean_ops = np.zeros((e_count, len(OPS)))
    for p in params:
        a = p["alphas"].numpy()
        for e in range(e_count):
            ex = np.exp(a[e] - a[e].max())
            mean_ops[e] += ex / ex.sum() / len(params)
    np.testing.assert_allclose(result.distribution["ops"], mean_ops, rtol=1e-12)
    assert result.genotype.cell == decode_cell_weights(mean_ops)

    # path: the mean move probabilities of every node, then the best of all paths
    def move_prob(p, layer, src, dst):
        valid = [d for d in (src - 1, src, src + 1) if 0 <= d < space.NUM_LEVELS]
        logits = {d: float(p["betas"][layer, src, space.move_between(src, d)]) for d in valid}
        top = max(logits.values())
        return np.exp(logits[dst] - top) / sum(np.exp(v - top) for v in logits.values())

    def score(path):
        total, prev = 0.0, space.STEM_LEVEL
        for layer, level in enumerate(path):
            total += np.log(np.mean([move_prob(p, layer, prev, level) for p in params]))
            prev = level
        return total

    paths = list(all_paths(layers))
    best = max(paths, key=score)
    assert sorted(score(q) for q in paths)[-2] < score(best) - 1e-9  # no tie
    assert result.genotype.path == best
    # and one search alone gives its own genotype
    for f, g in zip(files, result.genotypes, strict=True):
        assert consensus([f]).genotype == g


def test_dints_consensus_averages_the_on_probabilities(tmp_path):
    cfg = search_config(3, 2, "relaxation.name=dints")
    relax = build_relaxation(cfg)
    params = [random_params(cfg, seed, scale=2.0) for seed in range(3)]
    files = [write_search(tmp_path / f"s{k}.pt", p, cfg) for k, p in enumerate(params)]
    result = consensus(files)
    mask = np.asarray(relax.space.used_transition_mask())
    expected = np.mean([1 / (1 + np.exp(-p["path_logits"].numpy())) for p in params], axis=0)
    np.testing.assert_allclose(result.distribution["transitions"][mask], expected[mask])
    # decoding the mean probabilities is decoding their logits
    logits = torch.tensor(np.log(expected) - np.log1p(-expected))
    mean_params = {"alphas": params[0]["alphas"], "path_logits": logits}
    assert result.genotype.topology == relax.decode(mean_params).topology


def test_a_perturbation_selected_search_votes_with_its_decisions(tmp_path):
    """Its op weights are the projected ones: one-hot on the chosen operations, 0 on the dropped
    edges; decoded alone they give the checkpoint's own (selected) genotype."""
    cfg = search_config(3, 3, "selection.name=perturbation")
    files, chosen = [], []
    for seed in range(3):
        params = random_params(cfg, seed)
        weights = torch.softmax(params["alphas"], -1)
        importance = torch.tensor(np.random.default_rng(seed).uniform(0.1, 1.0, weights.shape))
        proj = CellProjection(3, OPS)

        def evaluate(proj=proj, weights=weights, importance=importance):
            q = float((importance * proj.apply(weights)).sum())
            return Score(miou=q, loss=-q)

        records = [proj.decide(d, evaluate, "miou") for d in plan(3, seed)]
        path = tmp_path / f"s{seed}.pt"
        write_search(path, params, cfg, selection={"records": json.loads(json.dumps(records))})
        files.append(str(path))
        chosen.append(proj)
    result = consensus(files)
    for f, g in zip(files, result.genotypes, strict=True):
        assert g == checkpoint_genotype(torch.load(f, weights_only=True), f)
    # votes: the share of searches that chose each operation on each kept edge
    votes = np.zeros((space.num_edges(3), len(OPS)))
    for proj in chosen:
        dropped = proj.dropped_edges()
        for e, o in proj.ops.items():
            if e not in dropped:
                votes[e, o] += 1 / 3
    np.testing.assert_allclose(result.distribution["ops"], votes, atol=1e-12)


# ---------------------------------------------------------------------------- refusals
def test_searches_of_another_space_or_relaxation_or_no_search_are_refused(tmp_path):
    a = write_search(tmp_path / "a.pt", random_params(search_config(3, 2), 0))
    cfg3 = search_config(3, 3)
    b = write_search(tmp_path / "b.pt", random_params(cfg3, 1), cfg3)
    with pytest.raises(ValueError, match=r"b\.pt was searched in another space"):
        consensus([a, b])
    dints = search_config(3, 2, "relaxation.name=dints")
    c = write_search(tmp_path / "c.pt", random_params(dints, 2), dints)
    with pytest.raises(ValueError, match=r"c\.pt holds a DintsRelaxation distribution"):
        consensus([a, c])
    torch.save({"format_version": 2, "kind": "train", "model": {}}, tmp_path / "t.pt")
    with pytest.raises(ValueError, match=r"t\.pt is not a search checkpoint"):
        consensus([a, str(tmp_path / "t.pt")])
    with pytest.raises(ValueError, match="at least one"):
        consensus([])
    # softmax and GDAS searches share their distribution: one consensus
    gdas = search_config(3, 2, "relaxation.name=gumbel")
    d = write_search(tmp_path / "d.pt", random_params(gdas, 3), gdas)
    assert consensus([a, d]).trials == 2


def test_decode_command_writes_the_consensus_of_several_checkpoints(tmp_path, capsys):
    cfg = search_config(4, 3)
    runs = []
    for k in range(3):
        run = tmp_path / f"run{k}"
        run.mkdir()
        write_search(run / "last.pt", random_params(cfg, k), cfg)
        runs.append(str(run))
    out = tmp_path / "consensus.json"
    assert main(["decode", *runs, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert Genotype.load(out) == consensus(runs).genotype
    assert str(Genotype.load(out)) in captured.out
    assert "consensus of 3 searches" in captured.err and "warning" not in captured.err
    # a search stopped early is named, and still counted
    write_search(tmp_path / "run2" / "last.pt", random_params(cfg, 2), cfg, epoch=1)
    assert consensus(runs).unfinished() == [2]
    assert main(["decode", *runs, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"(stopped after epoch 1 of {cfg.epochs})" in err
    assert "warning: 1 of the 3 searches had not finished" in err
    assert main(["decode", *runs]) == 2
    assert "--out" in capsys.readouterr().err
    # one checkpoint: its own genotype, as before
    assert main(["decode", runs[0], "--out", str(tmp_path / "one.json")]) == 0
    assert Genotype.load(tmp_path / "one.json") == consensus(runs[:1]).genotype


# ---------------------------------------------------------------------------- the paper's rule
def history(*mious):
    """Epoch records as a search checkpoint stores them (None: an epoch without evaluation)."""
    return [{"epoch": k + 1, "mIoU": m} for k, m in enumerate(mious)]


def test_select_by_supernet_keeps_the_best_last_evaluation(tmp_path):
    cfg = search_config(4, 3)
    # the last evaluation counts, not the best one: search 0 peaked at 0.5 and ended at 0.2;
    # search 1 ends at 0.3 after an epoch without evaluation; search 2 ends at 0.25
    files = [
        write_search(tmp_path / f"s{k}.pt", random_params(cfg, k), cfg, history=h)
        for k, h in enumerate([history(0.1, 0.5, 0.2), history(0.2, 0.3, None), history(0.25)])
    ]
    result = select_by_supernet(files)
    assert result.index == 1 and result.supernet_miou == (0.2, 0.3, 0.25)
    own = [checkpoint_genotype(torch.load(f, weights_only=True), f) for f in files]
    assert result.genotype == own[1] and list(result.genotypes) == own
    assert result.trials == 3 and result.unfinished() == []
    # a search never evaluated takes no part; a tie goes to the first
    files.append(write_search(tmp_path / "s3.pt", random_params(cfg, 3), cfg, history=[]))
    files.append(write_search(tmp_path / "s4.pt", random_params(cfg, 4), cfg, history=history(0.3)))
    result = select_by_supernet(files)
    assert result.index == 1 and result.supernet_miou[3] is None
    with pytest.raises(ValueError, match="none of the searches has evaluated its supernet"):
        select_by_supernet([files[3]])


def test_select_by_supernet_refuses_scores_that_do_not_compare(tmp_path):
    cfg = search_config(4, 3)
    a = write_search(tmp_path / "a.pt", random_params(cfg, 0), cfg, history=history(0.2))
    other = search_config(4, 3, "data.max_eval_samples=8")
    b = write_search(tmp_path / "b.pt", random_params(other, 1), other, history=history(0.3))
    with pytest.raises(ValueError, match=r"b\.pt was evaluated on other data .*max_eval_samples"):
        select_by_supernet([a, b])
    cfg3 = search_config(4, 2)
    c = write_search(tmp_path / "c.pt", random_params(cfg3, 2), cfg3, history=history(0.3))
    with pytest.raises(ValueError, match=r"c\.pt was searched in another space"):
        select_by_supernet([a, c])


def test_decode_command_selects_by_supernet(tmp_path, capsys):
    cfg = search_config(4, 3)
    runs = []
    for k, m in enumerate([0.12, 0.31, 0.2]):
        run = tmp_path / f"run{k}"
        run.mkdir()
        write_search(run / "last.pt", random_params(cfg, k), cfg, history=history(m))
        runs.append(str(run))
    out = tmp_path / "selected.json"
    assert main(["decode", *runs, "--select", "supernet", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    own = checkpoint_genotype(torch.load(tmp_path / "run1" / "last.pt", weights_only=True), "x")
    assert Genotype.load(out) == own and str(own) in captured.out
    assert "supernet mIoU 31.00 % <- selected" in captured.err
    assert "supernet mIoU 12.00 %" in captured.err and "consensus" not in captured.err
    assert main(["decode", *runs, "--select", "supernet"]) == 2
    assert "--out: give the genotype file to write the supernet to" in capsys.readouterr().err


# ---------------------------------------------------------------------------- path rules
def _ratio_path_by_enumeration(move_probs: np.ndarray):
    """The path whose probability over its probability under uniform moves is largest, by
    enumerating every path (a node at the finest or coarsest level has 2 moves, others 3)."""

    def score(path):
        total, prev = 0.0, space.STEM_LEVEL
        for layer, level in enumerate(path):
            moves = 2 if prev in (0, space.NUM_LEVELS - 1) else 3
            total += math.log(move_probs[layer, prev, space.move_between(prev, level)] * moves)
            prev = level
        return total

    return max(all_paths(move_probs.shape[0]), key=score)


def test_the_path_rule_can_be_replaced_when_reading_checkpoints(tmp_path, capsys):
    """Level 0 leans slightly to stay (0.525), level 1 more (0.527 against 1/3): the most
    probable path keeps to level 0 (0.525^4 = 0.076 against 0.475 x 0.527^3 = 0.070 for level
    1, two moves per node at level 0 against three), the ratio rule follows the larger lean
    (1.05^4 = 1.22 against 0.95 x 1.58^3 = 3.75); the consensus of two such searches read with
    the ratio rule is the enumerated best of the mean probabilities."""
    cfg = search_config(4, 3)
    files = []
    for k in range(2):
        params = random_params(cfg, k, scale=1e-3)
        params["betas"][:, 0, 1] += 0.1  # logit of "stay" at level 0 ...
        params["betas"][:, 1, 1] += 0.8 + 0.02 * k  # ... and at level 1
        files.append(write_search(tmp_path / f"s{k}.pt", params, cfg))
    state = torch.load(files[0], weights_only=True)
    betas = state["model"]["betas"].numpy()
    assert checkpoint_genotype(state, "x").path == decode_path(betas) == (0, 0, 0, 0)
    ratio = checkpoint_genotype(state, "x", "ratio").path
    assert ratio == decode_path(betas, "ratio") == (1, 1, 1, 1)
    mean = consensus(files, "ratio")
    assert mean.genotype.path == _ratio_path_by_enumeration(mean.distribution["moves"])
    assert [g.path for g in mean.genotypes] == [(1, 1, 1, 1)] * 2
    assert consensus(files).genotype.path == (0, 0, 0, 0)
    out = tmp_path / "g.json"
    assert main(["decode", files[0], "--path-decoding", "ratio", "--out", str(out)]) == 0
    assert Genotype.load(out).path == (1, 1, 1, 1)
    capsys.readouterr()
    dints = search_config(4, 3, "relaxation.name=dints")
    file = write_search(tmp_path / "d.pt", random_params(dints, 0), dints)
    assert main(["decode", file, "--path-decoding", "ratio", "--out", str(out)]) == 2
    assert "relaxation.path_decoding = 'ratio' reads one path" in capsys.readouterr().err
