"""Perturbation-based selection (DARTS-PT): the projected op weights against a loop that builds
them entry by entry, the decisions against the closed form of an additive supernet quality, the
plan, and the selection phase of a search (scores against a plain evaluation, running
statistics untouched, the genotype from the records, exact resume, config refusals)."""

import copy
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autodeeplab import space
from autodeeplab.checkpoint import load_checkpoint
from autodeeplab.cli import main
from autodeeplab.config import ConfigError
from autodeeplab.decode import decode_cell, decode_path
from autodeeplab.engine.search import SearchEngine, run_search
from autodeeplab.genotype import Genotype
from autodeeplab.metrics import ConfusionMatrix
from autodeeplab.projection import CellProjection, Decision, Score, edge_position, plan

from runs import SEARCH_CONFIG, SEARCH_TINY, assert_same_search_state, read_records, tiny_search

OPS = space.PRIMITIVES
SKIP = OPS.index("skip_connect")


def _expected_apply(weights, ops, kept, removed_op=None, removed_edges=()):
    """The projected weights built entry by entry."""
    out = weights.clone()
    blocks = {}
    for e in range(weights.shape[0]):
        blocks[e] = edge_position(e)[0]
    for e in range(weights.shape[0]):
        if e in ops:
            out[e] = 0.0
            out[e, ops[e]] = 1.0
        b = blocks[e]
        if (b in kept and e not in kept[b]) or e in removed_edges:
            out[e] = 0.0
    if removed_op is not None:
        out[removed_op] = 0.0
    return out


def test_edge_position_inverts_the_edge_numbering():
    for b in range(5):
        for i in range(b + 2):
            assert edge_position(space.edge_index(b, i)) == (b, i)


def test_apply_matches_an_entrywise_construction_and_passes_gradients_only_where_undecided():
    torch.manual_seed(0)
    logits = torch.randn(space.num_edges(4), len(OPS), dtype=torch.float64, requires_grad=True)
    weights = logits.softmax(-1)
    proj = CellProjection(4, OPS)
    assert proj.apply(weights) is weights  # nothing decided: the relaxation's weights
    proj.ops.update({0: 3, 5: SKIP, 9: 7})
    proj.kept[2] = (space.edge_index(2, 0), space.edge_index(2, 3))
    out = proj.apply(weights)
    torch.testing.assert_close(out, _expected_apply(weights.detach(), proj.ops, proj.kept))
    with proj.removing(op=(1, 4)):
        torch.testing.assert_close(
            proj.apply(weights), _expected_apply(weights.detach(), proj.ops, proj.kept, (1, 4))
        )
    with proj.removing(edges=frozenset({12})):
        torch.testing.assert_close(
            proj.apply(weights), _expected_apply(weights.detach(), proj.ops, proj.kept, None, {12})
        )
    torch.testing.assert_close(proj.apply(weights), out)  # the perturbation is gone
    out.sum().backward()  # a row sum of softmax weights is 1: look at a weighted sum instead
    logits.grad = None
    coeff = torch.randn_like(out)
    (proj.apply(logits.softmax(-1)) * coeff).sum().backward()
    decided = [0, 5, 9] + [e for e in range(5, 9) if e not in proj.kept[2]]
    for e in range(logits.shape[0]):
        if e in decided:
            assert torch.all(logits.grad[e] == 0), e
        else:
            assert torch.any(logits.grad[e] != 0), e


def test_plan_visits_every_edge_then_every_block_with_more_than_two_inputs():
    for blocks in (1, 3, 5):
        p = plan(blocks, seed=3)
        ops = [d.target for d in p if d.kind == "op"]
        nodes = [d.target for d in p if d.kind == "edges"]
        assert sorted(ops) == list(range(space.num_edges(blocks)))
        assert sorted(nodes) == list(range(1, blocks))
        assert [d.kind for d in p] == ["op"] * len(ops) + ["edges"] * len(nodes)
        assert plan(blocks, seed=3) == p  # seeded
    assert plan(5, seed=0) != plan(5, seed=1)


class AdditiveSupernet:
    """A stand-in supernet whose quality is ``sum(importance * projected weights)``: removing
    a term lowers it by exactly that term, so DARTS-PT's choices have a closed form."""

    def __init__(self, blocks, seed):
        rng = np.random.default_rng(seed)
        e = space.num_edges(blocks)
        self.importance = torch.tensor(rng.uniform(0.1, 1.0, (e, len(OPS))))
        self.importance[:, SKIP] = 0.01  # the identity adds almost nothing ...
        logits = torch.tensor(rng.normal(0, 0.3, (e, len(OPS))))
        logits[:, SKIP] += 3.0  # ... but has the largest weight everywhere (the collapse)
        self.weights = logits.softmax(-1)
        self.logits = logits
        self.proj = CellProjection(blocks, OPS)
        self.calls = 0

    def evaluate(self):
        self.calls += 1
        quality = float((self.importance * self.proj.apply(self.weights)).sum())
        return Score(miou=quality, loss=-quality)


@pytest.mark.parametrize("criterion", ["miou", "loss"])
@pytest.mark.parametrize(("blocks", "seed"), [(2, 0), (3, 1), (5, 2)])
def test_decisions_follow_the_closed_form_of_an_additive_supernet(blocks, seed, criterion):
    net = AdditiveSupernet(blocks, seed)
    w, imp = net.weights, net.importance
    records = [net.proj.decide(d, net.evaluate, criterion) for d in plan(blocks, seed)]
    candidates = [o for o in range(len(OPS)) if OPS[o] != "none"]
    # ops: the largest contribution importance * weight among the candidates
    for e in range(space.num_edges(blocks)):
        contrib = {o: float(imp[e, o] * w[e, o]) for o in candidates}
        assert net.proj.ops[e] == max(contrib, key=contrib.get), e
    # edges: once one-hot, an edge contributes importance[e, chosen]; keep the two largest
    for b in range(1, blocks):
        edges = net.proj.block_edges(b)
        contrib = {e: float(imp[e, net.proj.ops[e]]) for e in edges}
        assert set(net.proj.kept[b]) == set(sorted(edges, key=contrib.get)[-2:]), b
    # the argmax of the weights would have kept skip_connect on every edge
    assert all(op == "skip_connect" for block in decode_cell(net.logits.numpy()) for _, op in block)
    assert all(net.proj.ops[e] != SKIP for e in net.proj.ops)
    # evaluations: one per candidate op per edge, then (n, n-1, ..., 3) per block of n inputs
    n_edges = space.num_edges(blocks) * len(candidates)
    n_blocks = sum(sum(range(3, b + 3)) for b in range(1, blocks))
    assert net.calls == n_edges + n_blocks
    # the records replay to the same projection, through JSON
    again = CellProjection(blocks, OPS)
    for r in json.loads(json.dumps(records)):
        again.replay(r)
    assert again.ops == net.proj.ops and again.kept == net.proj.kept
    cell = net.proj.cell(net.weights)
    for b, block in enumerate(cell):
        inputs = {i for i, _ in block}
        if b > 0:
            assert inputs == {edge_position(e)[1] for e in net.proj.kept[b]}
        for i, op in block:
            assert op == OPS[net.proj.ops[space.edge_index(b, i)]]


def test_miou_ties_are_broken_by_the_loss_and_then_by_the_lower_index():
    proj = CellProjection(1, OPS)
    scores = iter(
        [Score(0.5, 1.0), Score(0.4, 2.0), Score(0.4, 3.0), Score(0.4, 3.0)] + [Score(0.9, 0.1)] * 3
    )
    record = proj.decide(Decision("op", 0), lambda: next(scores), "miou")
    assert record["op"] == OPS[3]  # mIoU 0.4 three times; loss 3.0 twice: the lower index
    scores = iter(
        [Score(0.5, 1.0), Score(0.4, 2.0), Score(0.4, 3.0), Score(0.4, 3.0)] + [Score(0.9, 0.1)] * 3
    )
    assert proj.decide(Decision("op", 1), lambda: next(scores), "loss")["op"] == OPS[3]


# ---------------------------------------------------------------------------- in a search
def _pt(tmp_path, *extra, name="run"):
    return tiny_search(
        tmp_path,
        "selection.name=perturbation",
        "selection.eval_samples=4",
        "selection.tune_epochs=0.5",
        *extra,
        name=name,
    )


def test_selection_score_is_a_plain_train_mode_evaluation_that_keeps_the_statistics(tmp_path):
    engine = SearchEngine(_pt(tmp_path))
    try:
        engine.run()
        model = engine.model
        model.projection = None  # the supernet before the first decision
        before = {k: v.clone() for k, v in model.state_dict().items()}
        proj = engine._projection()
        with proj.removing(op=(1, SKIP)):
            score = engine._selection_score()
            # independently: a copy of the model, train mode, mean cross-entropy per batch
            ref = copy.deepcopy(model).train()
            cm = ConfusionMatrix(model.num_classes, 255)
            losses, pixels = [], []
            with torch.no_grad():
                for images, masks in engine._loader(engine._selection_keys(), 0):
                    logits = ref(images)
                    cm.update(logits, masks)
                    valid = int((masks != 255).sum())
                    losses.append(float(F.cross_entropy(logits, masks.long(), ignore_index=255)))
                    pixels.append(valid)
        assert score.miou == pytest.approx(cm.mean_iou(), abs=1e-12)
        assert score.loss == pytest.approx(np.average(losses, weights=pixels), rel=1e-5)
        after = model.state_dict()
        for k in before:
            assert torch.equal(before[k], after[k]), k
        assert engine._selection_score() != score  # the perturbation changed the supernet
        assert len(engine._selection_keys()) == 2  # 4 samples at batch 2
    finally:
        engine.close()


def test_search_with_perturbation_selection_writes_its_decisions(tmp_path, capsys):
    result = run_search(_pt(tmp_path))
    out = capsys.readouterr().out
    run = tmp_path / "run"
    records = json.loads((run / "selection.json").read_text())["records"]
    decisions = plan(2, seed=0)
    assert [(r["kind"], r["target"]) for r in records] == [(d.kind, d.target) for d in decisions]
    assert f"selection {len(decisions)}/{len(decisions)}: block 1 keeps inputs" in out
    # the genotype is the records' cell on the path the relaxation decodes
    proj = CellProjection(2, OPS)
    for r in records:
        proj.replay(r)
    state = load_checkpoint(run / "last.pt")
    weights = state["model"]["alphas"].softmax(-1)
    path = decode_path(state["model"]["betas"].double().numpy())  # moved while tuning
    assert result.genotype == Genotype(cell=proj.cell(weights), path=path)
    assert Genotype.load(run / "genotype.json") == result.genotype
    for (b, i), op in ((edge_position(e), OPS[o]) for e, o in proj.ops.items()):
        if b == 0 or space.edge_index(b, i) in proj.kept[b]:
            assert (i, op) in result.genotype.cell[b]
    # every op record lists the supernet's score without each candidate
    for r in records[:-1]:
        assert [x["op"] for x in r["removed"]] == [o for o in OPS if o != "none"]
        chosen = next(x for x in r["removed"] if x["op"] == r["op"])
        assert all(chosen["mIoU"] <= x["mIoU"] for x in r["removed"])
    logged = read_records(run / "metrics.jsonl")
    assert [r["decision"] for r in logged if r["type"] == "selection"] == list(
        range(1, len(decisions) + 1)
    )
    tuning = [r for r in logged if r["type"] == "selection_step"]
    # half an epoch of 4 steps after each decision but the last
    assert len(tuning) == (len(decisions) - 1) * 2
    assert json.loads((run / "summary.json").read_text())["selection"] == "perturbation"


def test_selection_interrupted_while_tuning_resumes_exactly(tmp_path):
    full = run_search(_pt(tmp_path, name="full"), log=None)
    # 8 search steps, then decisions with 2 tuning steps each: stop after the 3rd tuning step
    part = run_search(_pt(tmp_path, "max_steps=11", name="part"), log=None)
    assert not part.finished
    state = load_checkpoint(tmp_path / "part" / "last.pt")
    assert (len(state["selection"]["records"]), state["selection"]["tuned"]) == (2, 1)
    resumed = run_search(_pt(tmp_path, name="part"), resume=True, log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    assert_same_search_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")
    a = json.loads((tmp_path / "full" / "selection.json").read_text())
    b = json.loads((tmp_path / "part" / "selection.json").read_text())
    assert a == b


def test_selection_config_is_validated(tmp_path, capsys):
    with pytest.raises(
        ConfigError,
        match=re.escape("selection.name: unknown method 'pt'; valid: argmax, perturbation"),
    ):
        SearchEngine(tiny_search(tmp_path, "selection.name=pt"))
    with pytest.raises(
        ConfigError,
        match=re.escape("selection.criterion: unknown criterion 'acc'; valid: miou, loss"),
    ):
        SearchEngine(tiny_search(tmp_path, "selection.criterion=acc"))
    with pytest.raises(ConfigError, match=r"selection\.tune_epochs"):
        tiny_search(tmp_path, "selection.tune_epochs=-1")
    base = ["search", "--config", str(SEARCH_CONFIG), "--output", str(tmp_path / "r")]
    assert main([*base, *SEARCH_TINY, "selection.name=darts-pt"]) == 2
    err = capsys.readouterr().err
    assert "selection.name: unknown method 'darts-pt'; valid: argmax, perturbation" in err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_decode_and_draw_read_the_selection_of_a_checkpoint(tmp_path, capsys):
    from autodeeplab.draw import load_architecture

    result = run_search(_pt(tmp_path), log=None)
    last = tmp_path / "run" / "last.pt"
    assert main(["decode", str(last), "--out", str(tmp_path / "g.json")]) == 0
    assert Genotype.load(tmp_path / "g.json") == result.genotype
    assert load_architecture(last)[0] == result.genotype
    # the argmax of the same alphas is another cell (the selection is not a no-op here)
    state = load_checkpoint(last)
    assert decode_cell(state["model"]["alphas"].double().numpy()) != result.genotype.cell


def test_selection_takes_the_cell_of_a_dints_search_onto_its_decoded_topology(tmp_path):
    cfg = _pt(
        tmp_path,
        "relaxation.name=dints",
        "data.options={length: 16, size: 64, seed: 0}",
        "data.crop_size=64",
    )
    result = run_search(cfg, log=None)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    proj = CellProjection(2, OPS)
    for r in json.loads((tmp_path / "run" / "selection.json").read_text())["records"]:
        proj.replay(r)
    assert result.genotype.cell == proj.cell(state["model"]["alphas"].softmax(-1))
    from autodeeplab.search_model import checkpoint_architecture

    relaxation, params = checkpoint_architecture(state, "last.pt")
    assert result.genotype.topology == relaxation.decode(params).topology
