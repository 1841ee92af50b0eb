"""A search of the cell alone on a fixed network path (``model.path``): the trellis of a path
against the retrained network's own wiring (:class:`Topology`), the supernet on a constant path
against the full supernet with one-hot betas and the other heads silenced, the relaxation
without betas, the config key and its refusals, and a tiny search end to end (decode, draw,
consensus)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from autodeeplab import space
from autodeeplab.cli import main
from autodeeplab.config import ConfigError, config_hash, to_dict
from autodeeplab.consensus import consensus
from autodeeplab.draw import load_architecture
from autodeeplab.engine.search import run_search
from autodeeplab.genotype import Genotype
from autodeeplab.relaxation import GumbelRelaxation, SoftmaxRelaxation
from autodeeplab.search_model import build_relaxation, check_relaxation, search_space
from autodeeplab.supernet import SearchNetwork
from autodeeplab.topology import Topology

from runs import tiny_search


def valid_paths(layers: int):
    for path in itertools.product(range(space.NUM_LEVELS), repeat=layers):
        levels = (space.STEM_LEVEL, *path)
        if all(abs(a - b) <= 1 for a, b in itertools.pairwise(levels)):
            yield path


# ---------------------------------------------------------------------------- the trellis
def test_the_trellis_of_a_path_by_hand():
    nodes = space.SearchSpace(4, 2, path=(0, 1, 1, 2)).all_nodes()
    assert [(n.layer, n.level, n.sources, n.prev_prev) for n in nodes] == [
        (0, 0, (0,), -1),  # reads the stem: its stride-4 output, and its stride-2 one as l-2
        (1, 1, (0,), 0),  # l-2 is the stem's stride-4 output
        (2, 1, (1,), 0),
        (3, 2, (1,), 1),
    ]


@pytest.mark.parametrize("layers", [1, 2, 4])
def test_every_path_is_wired_as_the_network_retrained_on_it(layers):
    for path in valid_paths(layers):
        sp = space.SearchSpace(layers, 2, path=path)
        topo = Topology.from_path(path)
        want = [
            (layer, (src,), dst, topo.prev_prev_level(layer, dst))
            for layer, src, dst in topo.transitions()
        ]
        got = [(n.layer, n.sources, n.level, n.prev_prev) for n in sp.all_nodes()]
        assert got == want, path
        mask = np.asarray(sp.used_transition_mask())
        assert mask.sum() == layers
        for layer, level in enumerate(path):
            src = space.STEM_LEVEL if layer == 0 else path[layer - 1]
            assert mask[layer, src, space.move_between(src, level)]
        assert sp.levels_at(layers - 1) == (path[-1],)


def test_paths_are_checked_and_parsed():
    with pytest.raises(ValueError, match="the path 0-1-1 has 3 layers, not 4"):
        space.SearchSpace(4, 2, path=(0, 1, 1))
    with pytest.raises(ValueError, match=r"path\[1\] = 2 jumps more than one level"):
        space.SearchSpace(3, 2, path=(0, 2, 2))
    with pytest.raises(ValueError, match=r"path\[0\] = 2 jumps"):
        space.validate_path([2])
    assert space.SearchSpace(2, 2, path=[0, 1]).path == (0, 1)
    assert space.SearchSpace(2, 2, path=(0, 1)) != space.SearchSpace(2, 2)
    assert space.parse_path("0-1-1-2", 4) == (0, 1, 1, 2)
    assert space.parse_path([0, 0], 2) == (0, 0)
    for name, path in space.hand_designed_paths(12).items():
        assert space.parse_path(name, 12) == path
    assert space.parse_path("deeplabv3", 5) == (0, 0, 1, 2, 2)
    with pytest.raises(ValueError, match="neither a path of levels joined by '-'"):
        space.parse_path("resnet", 4)
    with pytest.raises(ValueError, match="has 3 layers, not 4"):
        space.parse_path("0-0-1", 4)


# ---------------------------------------------------------------------------- the supernet
def _one_hot_betas(path: tuple[int, ...]) -> torch.Tensor:
    """Betas whose transition weights are exactly one-hot: the path's nodes move along the
    path, every other node to a level off the path (so nothing else reaches a path node)."""
    betas = torch.full((len(path), space.NUM_LEVELS, space.NUM_MOVES), -1e9)
    for layer, target in enumerate(path):
        for src in space.levels_at_layer(layer - 1) if layer else (space.STEM_LEVEL,):
            on_path = src == (space.STEM_LEVEL if layer == 0 else path[layer - 1])
            moves = space.valid_moves(src)
            if on_path:
                move = space.move_between(src, target)
            else:
                move = next(m for m in moves if space.move_target(src, m) != target)
            betas[layer, src, move] = 0.0
    return betas


@pytest.mark.parametrize("path", [(0, 0, 0), (1, 1, 1)])
def test_a_constant_path_supernet_is_the_full_supernet_routed_along_it(path):
    """On a constant path the full trellis reads the same ``H^{l-2}`` as the path, so the full
    supernet with one-hot betas, the path's weights and the other heads silenced computes the
    fixed-path supernet's logits and gradients."""
    torch.manual_seed(0)
    kw = dict(num_classes=3, layers=3, blocks=2, filter_multiplier=2, stem_channels=(4, 4, 8))
    fixed = SearchNetwork(**kw, path=path)
    full = SearchNetwork(**kw)
    state = full.state_dict()
    for key, value in fixed.state_dict().items():
        if key.startswith("nodes."):
            _, node, rest = key.split(".", 2)
            layer, level = map(int, node.split("_"))
            if rest.startswith("pre_prev."):  # the path's single source among the trellis's
                src = space.STEM_LEVEL if layer == 0 else path[layer - 1]
                _, _, tail = rest.split(".", 2)
                index = space.SearchSpace(3, 2).node(layer, level).sources.index(src)
                rest = f"pre_prev.{index}.{tail}"
            target = f"nodes.{node}.{rest}"
        elif key.startswith("heads."):
            _, _, tail = key.split(".", 2)
            target = f"heads.{space.levels_at_layer(2).index(path[-1])}.{tail}"
        else:
            target = key
        if key.endswith(("running_mean", "running_var")) and state[target].shape != value.shape:
            continue  # per-source statistics of the trellis's mixed edges; training mode below
        assert state[target].shape == value.shape, key
        state[target] = value.clone()
    with torch.no_grad():
        state["betas"].copy_(_one_hot_betas(path))
    full.load_state_dict(state)
    for level, head in zip(space.levels_at_layer(2), full.heads, strict=True):
        if level != path[-1]:
            torch.nn.init.zeros_(head.project.weight)
            torch.nn.init.zeros_(head.project.bias)
    x = torch.randn(2, 3, 64, 64)
    y_fixed, y_full = fixed(x), full(x)
    torch.testing.assert_close(y_fixed, y_full, rtol=1e-4, atol=1e-5)
    y_fixed.square().sum().backward()
    y_full.square().sum().backward()
    torch.testing.assert_close(fixed.alphas.grad, full.alphas.grad, rtol=1e-3, atol=1e-6)
    assert fixed.alphas.grad.abs().sum() > 0


def test_the_fixed_path_relaxation_has_no_betas():
    torch.manual_seed(0)
    sp = space.SearchSpace(3, 2, path=(0, 1, 2))
    relax = SoftmaxRelaxation(sp)
    params = relax.init_parameters()
    assert params["betas"] is None and params["edge_logits"] is None
    alphas = torch.randn(sp.num_edges, sp.num_ops)
    p = {"alphas": alphas, "betas": None, "edge_logits": None}
    weights = relax.transition_weights(p)
    want = torch.zeros(3, 4, 3)
    want[0, 0, 1] = want[1, 0, 2] = want[2, 1, 2] = 1.0
    assert torch.equal(weights, want)
    # beta-DARTS: the alpha term alone, mean over edges of logsumexp over the ops
    lse = [math.log(sum(math.exp(v) for v in row)) for row in alphas.tolist()]
    assert relax.regularizer("beta_decay", p).item() == pytest.approx(sum(lse) / len(lse))
    g = relax.decode(p)
    assert g.path == (0, 1, 2)
    dist = relax.distribution(p)
    assert relax.decode_distribution(dist) == g
    with pytest.raises(ValueError, match="not those of the fixed path 0-1-2"):
        relax.decode_distribution({**dist, "moves": np.roll(dist["moves"], 1, axis=1)})
    diag = relax.diagnostics(p, g)
    assert set(diag) == {
        "alpha_entropy",
        "alpha_entropy_fraction",
        "parameter_free_share",
        "fixed_path",
    }
    assert diag["fixed_path"] == "0-1-2"
    probs = torch.softmax(alphas.double(), -1)
    h = float(-(probs * probs.log()).sum(-1).mean())
    assert diag["alpha_entropy"] == pytest.approx(h)
    assert diag["alpha_entropy_fraction"] == pytest.approx(h / math.log(8))
    with pytest.raises(ValueError, match="a search space with a fixed path has none"):
        GumbelRelaxation(sp, path_decoding="ratio")


# ---------------------------------------------------------------------------- the config
def test_model_path_in_the_config(tmp_path):
    cfg = tiny_search(tmp_path, "model.path=constant-8")
    assert search_space(cfg).path == (1, 1, 1)
    assert build_relaxation(cfg).space.path == (1, 1, 1)
    assert tiny_search(tmp_path, "model.path=[0, 1, 1]").model.path == (0, 1, 1)
    # a run written before the key existed keeps its identity
    old = tiny_search(tmp_path)
    assert config_hash(old) == config_hash(tiny_search(tmp_path, "model.path=null"))
    assert "path" in to_dict(old)["model"]
    assert config_hash(old) != config_hash(tiny_search(tmp_path, "model.path=0-0-0"))
    for overrides, match in [
        (["model.path=0-0"], r"model.path: the path 0-0 has 2 layers, not 3"),
        (["model.path=0-2-1"], r"model.path: path\[1\] = 2 jumps"),
        (["model.path=hourglass"], r"model.path: 'hourglass' is neither"),
        (["model.path=deeplabv3"], r"model.path: path family 'deeplabv3' needs at least 4"),
        (["model.path=0-0-0", "relaxation.name=dints"], "searches a multi-path topology"),
        (["model.path=0-0-0", "relaxation.path_decoding=ratio"], "there are none"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_relaxation(tiny_search(tmp_path, *overrides))


# ---------------------------------------------------------------------------- a search
def test_a_fixed_path_search_end_to_end(tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        cfg = tiny_search(tmp_path, "model.path=0-1-1", f"seed={seed}", name=f"run{seed}")
        result = run_search(cfg)
        assert result.genotype.path == (0, 1, 1)
        runs.append(tmp_path / f"run{seed}")
    out = capsys.readouterr().out
    assert "the path is fixed (model.path: 0-1-1)" in out
    ckpt = torch.load(runs[0] / "last.pt", weights_only=True)
    assert "betas" not in ckpt["model"] and "alphas" in ckpt["model"]
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert Genotype.from_string(summary["genotype"]).path == (0, 1, 1)
    assert summary["beta_entropy_fraction"] is None and summary["path_log_ratio"] is None
    assert 0 < summary["alpha_entropy_fraction"] < 1 and summary["fixed_path"] == "0-1-1"
    assert summary["convergence"]["fixed_path"] == "0-1-1"
    assert summary["convergence"]["stable_path_epochs"] is None
    records = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("type") == "epoch"]
    assert epochs and all("beta_entropy" not in r for r in epochs)
    # the decoded architecture of the checkpoint, its drawing, the consensus of both
    genotype, probs = load_architecture(runs[0] / "last.pt")
    assert genotype == Genotype.load(runs[0] / "genotype.json")
    assert probs is not None and probs.sum() == 3
    assert consensus([str(r) for r in runs]).genotype.path == (0, 1, 1)
    target = tmp_path / "consensus.json"
    assert main(["decode", str(runs[0]), str(runs[1]), "--out", str(target)]) == 0
    assert Genotype.load(target).path == (0, 1, 1)
    assert main(["decode", str(runs[0]), "--path-decoding", "ratio", "--out", str(target)]) == 2
    assert "there are none" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        ["selection.name=perturbation", "selection.eval_samples=2", "selection.tune_epochs=0"],
        ["aux_skip.schedule=linear"],
        ["model.partial_channels=2"],
        ["unrolled=true"],
        ["model.selective_checkpoint=true"],
    ],
    ids=["perturbation", "aux-skip", "pc-darts", "unrolled", "selective-checkpoint"],
)
def test_the_search_options_run_on_a_fixed_path(tmp_path, extra):
    result = run_search(tiny_search(tmp_path, "model.path=1-1-2", *extra), log=lambda *a: None)
    assert result.finished and result.genotype.path == (1, 1, 2)
    model = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert "betas" not in model
    assert ("edge_logits" in model) == ("model.partial_channels=2" in extra)
