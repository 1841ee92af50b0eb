"""DiNTS searches from the config and the CLI: end to end, exact resumption, the genotype file,
the memory budget's push, and the logged terms against a recomputation from saved parameters."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from autodeeplab import space
from autodeeplab import topology as T
from autodeeplab.budget import reference_cell
from autodeeplab.checkpoint import load_checkpoint, save_checkpoint
from autodeeplab.cli import main
from autodeeplab.config import SearchConfig, config_diff, identity, load_config, to_dict
from autodeeplab.dints import DintsRelaxation
from autodeeplab.engine.search import SearchEngine, run_search
from autodeeplab.genotype import Genotype
from autodeeplab.memory import Heads, SupernetMemory, activation_memory
from autodeeplab.report import draw_search_curves

from runs import (
    SEARCH_TINY,
    assert_same_search_state,
    comparable_records,
    read_records,
)

DINTS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "search" / "synthetic-dints.yaml"
DINTS_TINY = [
    *SEARCH_TINY,
    # the memory model needs crops above the deepest stride (32)
    "data.options={length: 16, size: 48, seed: 0}",
    "data.crop_size=48",
    "relaxation.memory_target=0.5",
    "optim.arch_lr=0.05",
]
"""The tiny search of ``runs.SEARCH_TINY`` with the DiNTS config: 4 steps per epoch, 2 epochs,
architecture steps in the second."""
CLASSES = 7  # the synthetic data set's


def tiny_dints(tmp_path: Path, *extra: str, name: str = "run"):
    return load_config(DINTS_CONFIG, [*DINTS_TINY, f"output={tmp_path / name}", *extra])


def _numpy_entropies(state: dict) -> tuple[float, float]:
    """Mean binary entropy of the used transitions and mean op-softmax entropy, in numpy."""
    a = state["alphas"].double().numpy()
    p_op = np.exp(a - a.max(axis=1, keepdims=True))
    p_op /= p_op.sum(axis=1, keepdims=True)
    h_op = float(-(p_op * np.log(p_op)).sum(axis=1).mean())
    logits = state["path_logits"].double().numpy()
    used = np.asarray(space.SearchSpace(layers=logits.shape[0]).used_transition_mask())
    p = 1.0 / (1.0 + np.exp(-logits[used]))
    h_path = float((-(p * np.log(p)) - (1 - p) * np.log(1 - p)).mean())
    return h_path, h_op


def _fraction(cfg, state: dict) -> float:
    """The expected memory fraction, from a SupernetMemory built here for the reference cell."""
    m = cfg.model
    memory = SupernetMemory(
        reference_cell(m.blocks),
        m.layers,
        filter_multiplier=m.filter_multiplier,
        input_size=(cfg.data.crop_size,) * 2,
        batch_size=cfg.data.batch_size,
        heads=Heads(num_classes=CLASSES),
    )
    used = torch.tensor(space.SearchSpace(layers=m.layers).used_transition_mask())
    probs = torch.sigmoid(state["path_logits"].double()) * used
    return float(memory.usage(probs) / memory.usage_all_on)


def _recomputed_terms(cfg, state: dict) -> dict[str, float]:
    h_path, h_op = _numpy_entropies(state)
    fraction = _fraction(cfg, state)
    relax = DintsRelaxation(space.SearchSpace(cfg.model.layers, cfg.model.blocks))
    params = {"alphas": state["alphas"].double(), "path_logits": state["path_logits"].double()}
    return {
        "path_entropy": h_path,
        "op_entropy": h_op,
        "topology": float(relax.regularizer("topology", params)),
        "memory_fraction": fraction,
        "memory_budget": abs(cfg.relaxation.memory_target - fraction),
    }


def test_dints_search_runs_through_the_cli_and_logs_what_the_parameters_give(tmp_path, capsys):
    run = tmp_path / "run"
    args = [f"--output={run}", "checkpoint_interval=1", *DINTS_TINY]
    assert main(["search", "--config", str(DINTS_CONFIG), *args]) == 0
    out = capsys.readouterr().out
    assert "H(path)" in out and "memory" in out and "H(beta)" not in out
    cfg = load_config(run / "config.yaml")
    assert cfg.relaxation.name == "dints"

    # the genotype file is the relaxation's decoding of the saved parameters (format 2 when
    # the decoded topology has several paths)
    state = load_checkpoint(run / "last.pt")["model"]
    assert "betas" not in state
    genotype = Genotype.load(run / "genotype.json")
    top = T.decode_topology(state["path_logits"].double().numpy())
    assert genotype.topology == top
    text = (run / "genotype.json").read_text()
    assert ('"transitions"' in text) == (not top.is_single_path())
    assert Genotype.from_json(text).to_dict()["format_version"] == (
        1 if top.is_single_path() else 2
    )

    records = read_records(run / "metrics.jsonl")  # strict JSON: no NaN
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for record in epochs:
        saved = load_checkpoint(run / "checkpoints" / f"epoch_{record['epoch']:03d}.pt")["model"]
        expected = _recomputed_terms(cfg, saved)
        for key, value in expected.items():
            assert record[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert record["path_entropy_fraction"] == pytest.approx(
            expected["path_entropy"] / math.log(2), rel=1e-9
        )
        assert record["alpha_entropy"] == pytest.approx(expected["op_entropy"], rel=1e-6)
        decoded = Genotype.from_string(record["genotype"])
        assert record["active_transitions"] == sum(len(t) for t in decoded.topology.layers)
        assert (
            record["decoded_memory_bytes"]
            == activation_memory(
                decoded,
                filter_multiplier=cfg.model.filter_multiplier,
                input_size=(48, 48),
                batch_size=cfg.data.batch_size,
                heads=Heads(num_classes=CLASSES),
            ).total
        )
        assert "beta_entropy" not in record
    # the architecture moved in the second epoch only
    assert epochs[0]["arch_steps"] == 0 and epochs[1]["arch_steps"] == 4

    steps = [r for r in records if r["type"] == "step"]
    assert all("memory_fraction" not in r for r in steps[:4])  # weight steps only
    for r in steps[4:]:
        # the ramp starts at the first architecture step (relaxation.warmup = 0)
        share = (r["global_step"] - 1 - 4) / 4
        assert r["path_entropy_weight"] == pytest.approx(share)
        assert r["topology_weight"] == pytest.approx(0.001 * share)
        weighted = share * (r["path_entropy"] + r["op_entropy"] + 0.001 * r["topology"])
        assert r["arch_objective"] == pytest.approx(
            r["arch_loss"] + weighted + r["memory_budget"], rel=1e-5
        )

    # `autodeeplab decode RUN` decodes with the run's relaxation
    out_file = tmp_path / "decoded.json"
    assert main(["decode", str(run), "--out", str(out_file)]) == 0
    assert Genotype.load(out_file) == genotype
    assert capsys.readouterr().out.strip() == str(genotype)

    # the report shows the path entropy where the paper's relaxation shows the beta entropy
    fig = draw_search_curves(records)
    entropy_axes = [ax for ax in fig.axes if ax.get_title() == "architecture entropy"]
    gids = [line.get_gid() for line in entropy_axes[0].lines]
    assert gids[:2] == ["alpha-entropy", "path-entropy"] and "beta-entropy" not in gids


def test_a_step_record_equals_the_terms_of_the_parameters_it_started_from(tmp_path):
    """The terms logged at step g are those of the parameters saved after step g - 1."""
    full = run_search(tiny_dints(tmp_path, name="full"), log=None)
    part = run_search(tiny_dints(tmp_path, "max_steps=6", name="part"), log=None)
    assert full.finished and not part.finished
    cfg = tiny_dints(tmp_path, name="part")
    saved = load_checkpoint(tmp_path / "part" / "last.pt")
    assert saved["global_step"] == 6
    (record,) = [
        r
        for r in read_records(tmp_path / "full" / "metrics.jsonl")
        if r["type"] == "step" and r["global_step"] == 7
    ]
    for key, value in _recomputed_terms(cfg, saved["model"]).items():
        assert record[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    # ... and the resumed run ends where the uninterrupted one did, bit for bit
    resumed = run_search(cfg, resume=True, log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    assert_same_search_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")
    assert comparable_records(tmp_path / "part") == comparable_records(tmp_path / "full")
    assert (tmp_path / "full" / "genotype.json").read_text() == (
        tmp_path / "part" / "genotype.json"
    ).read_text()


@pytest.mark.parametrize("target", [0.2, 0.8])
def test_the_budget_term_alone_moves_the_memory_fraction_towards_its_target(tmp_path, target):
    """A few Adam steps on the budget term only (no data, entropy terms off), from the same
    start (every logit 1.5 below its initial value: a fraction of about 0.52): the expected
    fraction falls for the target 0.2 and rises for 0.8, at every step."""
    cfg = tiny_dints(
        tmp_path,
        f"relaxation.memory_target={target}",
        "relaxation.path_entropy_weight=0",
        "relaxation.op_entropy_weight=0",
        "relaxation.topology_weight=0",
    )
    with SearchEngine(cfg, log=None) as engine:
        with torch.no_grad():
            engine.model.path_logits.sub_(1.5)
        start = engine.model.path_logits.detach().clone()
        alphas = engine.model.alphas.detach().clone()
        fractions = []
        for _ in range(10):
            engine.a_opt.zero_grad(set_to_none=True)
            terms = engine.add_search_term_gradients(progress=1.0)
            fractions.append(terms["memory_fraction"])
            engine.a_opt.step()
        # the budget acts on the transitions only (its cells are the fixed reference cell)
        assert engine.model.alphas.grad is None or not engine.model.alphas.grad.any()
        assert torch.equal(engine.model.alphas.detach(), alphas)
    assert fractions[0] == pytest.approx(_fraction(cfg, {"path_logits": start}), rel=1e-5)
    assert 0.45 < fractions[0] < 0.6
    moves = np.diff(fractions)
    assert (moves < 0).all() if target == 0.2 else (moves > 0).all()
    assert abs(fractions[-1] - target) < abs(fractions[0] - target) - 0.05


def test_decode_writes_a_multi_path_genotype_for_a_multi_path_checkpoint(tmp_path, capsys):
    run_search(tiny_dints(tmp_path, "epochs=1", "arch_start_epoch=0"), log=None)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    # logits that make every transition of layer 1 and 2 likely: a known multi-path topology
    logits = torch.full_like(state["model"]["path_logits"], -6.0)
    logits[0, 0, 1:] = 6.0  # layer 0: stem -> levels 0 and 1
    logits[1, 0:2, :] = 6.0  # layer 1: from levels 0 and 1, every move
    logits[2, 0:3, 1] = 6.0  # layer 2: levels 0, 1, 2 stay
    state["model"]["path_logits"] = logits
    save_checkpoint(state, tmp_path / "edited.pt")
    out_file = tmp_path / "g.json"
    assert main(["decode", str(tmp_path / "edited.pt"), "--out", str(out_file)]) == 0
    genotype = Genotype.load(out_file)
    expected = T.decode_topology(logits.double().numpy())
    assert genotype.topology == expected and genotype.is_multi_path
    assert expected.layers == (
        ((0, 0), (0, 1)),
        ((0, 0), (0, 1), (1, 0), (1, 1), (1, 2)),
        ((0, 0), (1, 1), (2, 2)),
    )
    assert '"format_version": 2' in out_file.read_text()
    assert capsys.readouterr().out.strip() == str(genotype)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "relaxation.name=darts",
            "relaxation.name: unknown relaxation 'darts'; valid: softmax, gumbel, dints",
        ),
        ("relaxation.memory_target=1.5", "relaxation.memory_target = 1.5 is out of range"),
        ("model.partial_channels=2", "model.partial_channels = 2 (PC-DARTS)"),
        ("data.crop_size=32", "data.crop_size = 32 is too small for relaxation.name='dints'"),
        ("arch_regularizer.name=beta_decay", "arch_regularizer.name = 'beta_decay'"),
        ("relaxation.path_decoding=ratio", "relaxation.path_decoding = 'ratio' reads one path"),
        (
            "relaxation.path_decoding=best",
            "relaxation.path_decoding: unknown path rule 'best'; valid: probability, ratio",
        ),
    ],
)
def test_invalid_dints_settings_are_refused_with_the_key(tmp_path, capsys, override, message):
    args = ["search", "--config", str(DINTS_CONFIG), f"--output={tmp_path / 'run'}"]
    assert main([*args, *DINTS_TINY, override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_memory_target_needs_the_dints_relaxation(tmp_path, capsys):
    args = ["search", "--config", str(DINTS_CONFIG), f"--output={tmp_path / 'run'}"]
    assert main([*args, *DINTS_TINY, "relaxation.name=softmax"]) == 2
    assert "relaxation.memory_target = 0.5 needs independent transition" in (
        capsys.readouterr().err
    )


def test_run_folders_written_before_the_relaxation_section_still_resume():
    """The new keys hold neutral defaults: a config without the section has the same identity
    (and hash), and a diff against it reports nothing."""
    cfg = SearchConfig()
    old = to_dict(cfg)
    del old["relaxation"]
    assert not any(k.startswith("relaxation.") for k in identity(cfg))
    assert config_diff(old, to_dict(cfg)) == []
    dints = load_config(DINTS_CONFIG)
    assert config_diff(old, to_dict(dints))  # a DiNTS config is another run
