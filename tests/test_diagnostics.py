"""Architecture diagnostics against hand computations; the warning; the engine's epoch records,
epoch lines and summary."""

import json
import math

import numpy as np
import pytest
import torch

from autodeeplab import decode, space
from autodeeplab import topology as T
from autodeeplab.checkpoint import load_checkpoint
from autodeeplab.diagnostics import (
    NOISE_Z_MEAN,
    arch_diagnostics,
    binary_entropy,
    convergence,
    describe,
    dints_diagnostics,
    end_of_search_warning,
    gradient_signal,
    last_miou,
    model_diagnostics,
    noise_warning,
    parameter_free_share,
    path_rule_warning,
    stagnation_warning,
)
from autodeeplab.dints import DintsRelaxation
from autodeeplab.engine import search as search_engine
from autodeeplab.engine.search import run_search
from autodeeplab.genotype import Genotype
from autodeeplab.supernet import SearchNetwork

from runs import tiny_search


def _used(layers: int) -> np.ndarray:
    """Nodes with an outgoing move: the stem (level 0) for layer 0, then the levels of layer
    l - 1 for layer l (a plain list, independent of the supernet's mask)."""
    used = np.zeros((layers, 4), dtype=bool)
    used[0, 0] = True
    for layer in range(1, layers):
        used[layer, : min(layer + 1, 4)] = True
    return used


def test_uniform_logits_are_at_the_maximum():
    layers = 5
    d = arch_diagnostics(np.zeros((9, 8)), np.zeros((layers, 4, 3)), _used(layers))
    assert d.alpha_entropy == pytest.approx(math.log(8))
    assert d.alpha_entropy_fraction == pytest.approx(1.0)
    assert d.beta_entropy_fraction == pytest.approx(1.0)
    # ties decode to the path that stays at level 0: two moves (same, coarser) at every layer
    assert d.path_log_prob == pytest.approx(layers * math.log(1 / 2))


def test_diagnostics_by_hand():
    layers = 3
    alphas = np.zeros((5, 8))  # two blocks
    alphas[:, 4] = math.log(7.0)  # p(sep_conv_3x3) = 7/14, the other seven 1/14 each
    alphas[0, 3] = alphas[0, 4] + 1.0  # edge 0 prefers skip_connect
    betas = np.zeros((layers, 4, 3))
    betas[0, 0, 2] = math.log(3.0)  # from the stem: coarser 3/4, same 1/4
    used = _used(layers)
    d = arch_diagnostics(alphas, betas, used)

    p = np.full(8, 1 / 14)
    p[4] = 0.5
    h_row = -(p * np.log(p)).sum()
    q = np.exp(alphas[0]) / np.exp(alphas[0]).sum()
    h0 = -(q * np.log(q)).sum()
    assert d.alpha_entropy == pytest.approx((h0 + 4 * h_row) / 5)
    assert d.alpha_entropy_fraction == pytest.approx((h0 + 4 * h_row) / 5 / math.log(8))

    # nodes: stem (2 moves), layer 1 from levels 0 (2 moves) and 1 (3), layer 2 from 0, 1, 2
    h_stem = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h = [h_stem, math.log(2), math.log(3), math.log(2), math.log(3), math.log(3)]
    h_max = [math.log(2), math.log(2), math.log(3), math.log(2), math.log(3), math.log(3)]
    assert d.beta_entropy == pytest.approx(np.mean(h))
    assert d.beta_entropy_fraction == pytest.approx(np.mean(h) / np.mean(h_max))

    # Viterbi: stem -> level 1 (3/4), then level 1 -> any of 3 moves (1/3), then 1/3 again
    genotype = Genotype.from_string(
        "path=1-1-1|cell=0:skip_connect+1:sep_conv_3x3/0:skip_connect+2:sep_conv_3x3"
    )
    d = arch_diagnostics(alphas, betas, used, genotype)
    assert d.path_log_prob == pytest.approx(math.log(0.75) + 2 * math.log(1 / 3))
    assert d.parameter_free_share == pytest.approx(0.5)


def test_parameter_free_share_counts_pooling_and_skip():
    g = Genotype(
        cell=(
            ((0, "max_pool_3x3"), (1, "avg_pool_3x3")),
            ((0, "skip_connect"), (2, "sep_conv_5x5")),
            ((1, "atr_conv_3x3"), (3, "atr_conv_5x5")),
        ),
        path=(0, 1, 1),
    )
    assert parameter_free_share(g) == pytest.approx(3 / 6)


def test_model_diagnostics_read_the_supernet():
    model = SearchNetwork(3, layers=4, blocks=3, filter_multiplier=2, stem_channels=(4, 4, 4))
    d = model_diagnostics(model)
    np.testing.assert_array_equal(model.used_beta_mask().any(-1).numpy(), _used(4))
    assert (
        d
        == arch_diagnostics(
            model.alphas.detach().double().numpy(),
            model.betas.detach().double().numpy(),
            _used(4),
        ).to_dict()
    )
    assert d["alpha_entropy_fraction"] > 0.9999  # N(0, 1) x 1e-3 logits


def test_bad_used_nodes():
    with pytest.raises(ValueError, match="used_nodes"):
        arch_diagnostics(np.zeros((5, 8)), np.zeros((3, 4, 3)), np.zeros((3, 4), dtype=bool))


def test_stagnation_warning():
    moved = {"arch_steps": 900, "alpha_entropy_fraction": 0.93, "beta_entropy_fraction": 0.97}
    assert stagnation_warning(moved) is None
    flat = dict(moved, alpha_entropy_fraction=0.9986)
    text = stagnation_warning(flat)
    assert "after 900 architecture steps" in text and "alpha entropy 99.86 %" in text
    assert "beta" not in text.split("of the maximum")[0]  # only alpha stayed flat
    assert "arch_steps_per_step" in text and "arch_regularizer.name=beta_decay" in text
    none = stagnation_warning(dict(moved, arch_steps=0))
    assert "no architecture step" in none and "arch_start_fraction" in none
    assert stagnation_warning({"alpha_entropy": 2.07}) is None  # a log without the figures
    assert "|z|" not in text  # a record without the gradient signal gets no diagnosis
    noise = stagnation_warning(dict(flat, alpha_grad_z=0.95))
    assert "close to noise (mean |z| 0.95; zero-mean noise gives 0.80)" in noise
    assert "random-walk" in noise
    signal = stagnation_warning(dict(flat, alpha_grad_z=2.06))
    assert "carry a signal (mean |z| 2.06" in signal and "larger optim.arch_lr" in signal
    assert stagnation_warning(dict(moved, alpha_grad_z=0.9)) is None  # moved: no warning


def test_describe_says_when_no_architecture_step_was_taken():
    g = Genotype.from_string(
        "path=0-0-0|cell=0:skip_connect+1:sep_conv_3x3/0:sep_conv_3x3+2:skip_connect"
    )
    d = arch_diagnostics(np.zeros((5, 8)), np.zeros((3, 4, 3)), _used(3), g)
    text = describe(d.to_dict(), 0, g)
    assert text.endswith("(no architecture step yet: decoded from the initial random logits)")
    assert "100.00% of max" in text and "parameter-free 50%" in text and str(g) in text
    assert "log P(path) -2.079 log P/P0 +0.000" in text  # (1/2)^3 under uniform moves
    assert "no architecture step" not in describe(d.to_dict(), 3, g)


def test_gradient_signal_against_a_direct_computation():
    rng = np.random.default_rng(0)
    grads = rng.normal(0, 1, (7, 5, 8)) + np.linspace(-1, 1, 8)  # a steady push per op
    g = grads - grads.mean(-1, keepdims=True)
    z = np.abs(g.mean(0)) / (g.std(0, ddof=1) / np.sqrt(len(g)))
    got = gradient_signal(g.sum(0), (g * g).sum(0), len(g))
    assert got == pytest.approx((z.mean(), (z > 2).mean()))
    # two steps by hand, one entry: gradients 1 and 3 -> mean 2, std sqrt(2), se 1, z 2
    assert gradient_signal(np.array([4.0]), np.array([10.0]), 2) == pytest.approx((2.0, 0.0))
    # pure noise: |z| is half-normal, mean sqrt(2 / pi), 4.55 % above 2
    noise = rng.normal(0, 1, (50, 400, 8))
    z_mean, above = gradient_signal(noise.sum(0), (noise * noise).sum(0), 50)
    assert z_mean == pytest.approx(NOISE_Z_MEAN, abs=0.02)
    assert above == pytest.approx(0.0455, abs=0.01)
    assert gradient_signal(np.ones(3), np.ones(3), 1) is None  # no spread from one step
    assert gradient_signal(np.full(3, 2.0), np.full(3, 2.0), 2) is None  # constant: no noise


def test_search_logs_the_diagnostics_and_writes_a_summary(tmp_path, capsys, monkeypatch):
    seen: dict[int, list[np.ndarray]] = {}
    original = search_engine.SearchEngine.arch_gradients

    seen_betas: dict[int, list[np.ndarray]] = {}

    def recording(self, *args, **kwargs):
        value = original(self, *args, **kwargs)
        if value is not None:
            seen.setdefault(self.epoch + 1, []).append(self.model.alphas.grad.double().numpy())
            seen_betas.setdefault(self.epoch + 1, []).append(self.model.betas.grad.double().numpy())
        return value

    monkeypatch.setattr(search_engine.SearchEngine, "arch_gradients", recording)
    cfg = tiny_search(tmp_path, "optim.arch_lr=0.003")  # the paper's rate
    result = run_search(cfg)
    printed = capsys.readouterr().out
    lines = [x for x in printed.splitlines() if x.startswith("epoch ")]
    assert "(no architecture step yet" in lines[0] and "(no architecture step" not in lines[1]
    run = tmp_path / "run"
    epochs = [
        r
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if r["type"] == "epoch"
    ]
    assert [r["arch_steps"] for r in epochs] == [0, 4]
    # the gradient signal of each epoch, from the gradients its architecture steps used
    assert epochs[0]["alpha_grad_z"] is None and epochs[0]["alpha_grad_z_above_2"] is None
    g = np.stack(seen[2])
    g = g - g.mean(-1, keepdims=True)
    z = np.abs(g.mean(0)) / (g.std(0, ddof=1) / 2.0)
    assert epochs[1]["alpha_grad_z"] == pytest.approx(z.mean())
    assert epochs[1]["alpha_grad_z_above_2"] == pytest.approx((z > 2).mean())
    # the betas: node by node, relative to the mean over the moves its softmax spans (finer,
    # same, coarser, where that level exists); nodes outside the forward pass never have a
    # gradient and are left out (written out with loops, apart from the engine's masks)
    b = np.stack(seen_betas[2])  # (steps, L, 4, 3)
    zs = []
    for layer in range(b.shape[1]):
        for level in range(4):
            moves = [m for m in range(3) if 0 <= level + m - 1 <= 3]
            rel = b[:, layer, level, moves] - b[:, layer, level, moves].mean(-1, keepdims=True)
            for m in range(len(moves)):
                sd = rel[:, m].std(ddof=1)
                if sd > 0:
                    zs.append(abs(rel[:, m].mean()) / (sd / 2.0))
    assert len(zs) >= 6
    assert epochs[0]["beta_grad_z"] is None
    assert epochs[1]["beta_grad_z"] == pytest.approx(np.mean(zs))
    assert epochs[1]["beta_grad_z_above_2"] == pytest.approx(np.mean(np.array(zs) > 2))
    for r in epochs:
        genotype = Genotype.from_string(r["genotype"])
        assert r["parameter_free_share"] == parameter_free_share(genotype)
        assert r["alpha_entropy_fraction"] == pytest.approx(r["alpha_entropy"] / math.log(8))
        assert 0.99 < r["beta_entropy_fraction"] <= 1.0
        assert r["path_log_prob"] < 0
        # the paper's rule decodes; the log-ratio by hand: the decoded path's log-probability
        # minus log(1/2) or log(1/3) per node it leaves
        assert r["probability_path"] == "-".join(map(str, genotype.path))
        uniform = sum(
            math.log(1 / 2 if prev in (0, 3) else 1 / 3) for prev in (0, *genotype.path[:-1])
        )
        assert r["path_log_ratio"] == pytest.approx(r["path_log_prob"] - uniform)
    betas = load_checkpoint(run / "last.pt")["model"]["betas"].double().numpy()
    assert epochs[-1]["ratio_path"] == "-".join(map(str, decode.decode_path(betas, "ratio")))
    # four architecture steps at 3e-3 cannot move the logits: the run says so
    assert result.warning is not None and "barely moved" in result.warning
    assert result.supernet_miou == epochs[-1]["mIoU"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["supernet_mIoU"] == result.supernet_miou
    assert summary["genotype"] == str(result.genotype) == epochs[-1]["genotype"]
    assert summary["arch_steps"] == 4 and summary["warning"] == result.warning
    for key in ("path_log_ratio", "probability_path", "ratio_path"):
        assert summary[key] == epochs[-1][key]
    assert summary["convergence"] == convergence(epochs)
    assert summary["convergence"]["arch_epochs"] == 1
    assert "settled: the decoded cell was the same for the last 1 of 1 epochs" in printed


def test_dints_diagnostics_read_the_dints_supernet():
    """DiNTS' figures: the path entropy is the relaxation's own term over log 2, the topology's
    log probability the decoder's score, and model_diagnostics goes through the relaxation."""
    sp = space.SearchSpace(layers=4, blocks=3)
    model = SearchNetwork(
        3,
        layers=4,
        blocks=3,
        filter_multiplier=2,
        stem_channels=(4, 4, 4),
        relaxation=DintsRelaxation(sp),
    ).double()
    with torch.no_grad():
        model.path_logits.normal_(std=3.0)
        model.alphas.normal_()
    d = model_diagnostics(model)
    genotype = model.genotype()
    logits = model.path_logits.detach().numpy()
    expected = dints_diagnostics(model.alphas.detach().numpy(), logits).to_dict()
    assert d == expected
    assert "beta_entropy" not in d and "path_log_prob" not in d
    h = float(model.relaxation.regularizer("path_entropy", model.arch_state()).detach())
    assert d["path_entropy"] == pytest.approx(h, rel=1e-12)
    assert d["path_entropy_fraction"] == pytest.approx(h / math.log(2), rel=1e-12)
    assert d["topology_log_prob"] == pytest.approx(T.topology_log_prob(logits, genotype.topology))
    assert d["active_transitions"] == sum(len(t) for t in genotype.topology.layers)
    text = describe(d, 5, genotype)
    assert "H(path)" in text and "log P(topology)" in text and "H(beta)" not in text


def test_binary_entropy():
    x = np.array([-1000.0, -3.0, 0.0, 2.0, 1000.0])
    p = 1 / (1 + np.exp(-x[1:4]))
    np.testing.assert_allclose(
        binary_entropy(x)[1:4], -(p * np.log(p) + (1 - p) * np.log(1 - p)), rtol=1e-12
    )
    assert binary_entropy(x)[[0, 4]].tolist() == [0.0, 0.0]
    assert binary_entropy(np.zeros(1))[0] == pytest.approx(math.log(2))


def test_stagnation_warning_of_a_dints_search_names_its_own_remedies():
    flat = {"arch_steps": 40, "alpha_entropy_fraction": 0.5, "path_entropy_fraction": 0.995}
    text = stagnation_warning(flat)
    assert "path entropy 99.50 %" in text and "relaxation.path_entropy_weight" in text
    assert "beta_decay" not in text
    assert stagnation_warning(dict(flat, path_entropy_fraction=0.6)) is None


def test_convergence_counts_the_epochs_the_final_cell_and_path_held():
    a = "0:skip_connect+1:sep_conv_3x3/0:max_pool_3x3+2:sep_conv_5x5"
    b = "0:skip_connect+1:sep_conv_3x3/0:avg_pool_3x3+2:sep_conv_5x5"

    def epoch(arch_steps, path, cell, **more):
        return {"arch_steps": arch_steps, "genotype": f"path={path}|cell={cell}", **more}

    records = [
        epoch(0, "0-0-0", b),  # before the first architecture step: not counted
        epoch(4, "0-0-0", a, alpha_grad_z=1.0, beta_grad_z=0.5),
        epoch(8, "0-1-1", a, alpha_grad_z=2.0, beta_grad_z=None),
        epoch(12, "0-1-1", b, alpha_grad_z=float("nan"), beta_grad_z=0.9),
        epoch(
            16,
            "0-1-1",
            a,
            alpha_entropy_fraction=0.8,
            beta_entropy_fraction=0.7,
            path_log_prob=math.log(0.25),
            path_log_ratio=0.5,
            probability_path="0-1-1",
            ratio_path="1-1-1",
            parameter_free_share=0.5,
            alpha_grad_z=3.0,
            beta_grad_z=1.0,
        ),
    ]
    got = convergence(records)
    assert got == {
        "arch_steps": 16,
        "arch_epochs": 4,
        "alpha_entropy_fraction": 0.8,
        "path_entropy_fraction": 0.7,
        "path_probability": pytest.approx(0.25),
        "path_log_ratio": 0.5,
        "probability_path": "0-1-1",
        "ratio_path": "1-1-1",
        "parameter_free_share": 0.5,
        "stable_cell_epochs": 1,  # b at the third epoch
        "stable_path_epochs": 3,  # 0-0-0 at the first
        "fixed_path": None,  # a path search
        "previous_cell_agreement": 0.75,  # b differs from a in one of four branches
        "alpha_grad_z": pytest.approx(2.0),  # (1 + 2 + 3) / 3: NaN left out
        "beta_grad_z": pytest.approx(0.8),  # (0.5 + 0.9 + 1.0) / 3: null left out
    }
    # the initial argmax does not count even when it equals the final genotype
    assert convergence([epoch(0, "0-1-1", a), epoch(4, "0-1-1", a)])["stable_path_epochs"] == 1
    assert convergence([]) is None
    # records without the figures (written before them) and without architecture steps
    old = convergence([{"arch_steps": 0, "genotype": f"path=0-0-0|cell={a}"}])
    assert old["arch_epochs"] == 0 and old["stable_cell_epochs"] is None
    assert old["path_probability"] is None and old["alpha_entropy_fraction"] is None
    assert old["previous_cell_agreement"] is None
    assert old["alpha_grad_z"] is None and old["beta_grad_z"] is None
    assert old["path_log_ratio"] is None and old["ratio_path"] is None
    # a branch kept at another place in its block still counts as kept
    before = "0:skip_connect+1:sep_conv_3x3/0:max_pool_3x3+1:sep_conv_5x5"
    after = "0:skip_connect+1:sep_conv_3x3/1:sep_conv_5x5+2:avg_pool_3x3"
    moved = convergence([epoch(4, "0-0-0", before), epoch(8, "0-0-0", after)])
    assert moved["previous_cell_agreement"] == pytest.approx(3 / 4)


def test_convergence_of_a_dints_search_reads_its_path_figures():
    topo = "transitions=0>0;0>0,0>1;0>0,1>1"
    cell = "0:skip_connect+1:sep_conv_3x3/0:max_pool_3x3+2:sep_conv_5x5"
    record = {
        "arch_steps": 3,
        "genotype": f"{topo}|cell={cell}",
        "path_entropy_fraction": 0.3,
        "topology_log_prob": -2.0,
    }
    got = convergence([record, record])
    assert got["path_entropy_fraction"] == 0.3
    assert got["path_probability"] == pytest.approx(math.exp(-2.0))
    assert got["stable_path_epochs"] == got["stable_cell_epochs"] == 2


def test_noise_warning_reads_the_mean_gradient_signal_of_the_architecture_epochs():
    epochs = [{"alpha_grad_z": None}, {"alpha_grad_z": 0.9}, {"alpha_grad_z": 1.2}]
    text = noise_warning(epochs)
    assert "mean |z| over the 2 epoch(s) with architecture steps was 1.05" in text
    assert "zero-mean noise gives 0.80" in text and "mostly random-walked" in text
    assert "a larger arch_lr helps against neither" in text
    balance = noise_warning([{"alpha_grad_z": 0.6}, {"alpha_grad_z": 0.62}])
    assert "was 0.61" in balance and "swung around a balance" in balance
    assert noise_warning([*epochs, {"alpha_grad_z": 1.8}]) is None  # mean 1.30
    assert noise_warning([{"alpha_grad_z": None}, {"alpha_entropy": 2.0}]) is None
    assert noise_warning([{"alpha_grad_z": float("nan")}]) is None


def test_end_of_search_warning_puts_a_distribution_that_did_not_move_first():
    moved = {"arch_steps": 900, "alpha_entropy_fraction": 0.8, "beta_entropy_fraction": 0.8}
    noisy = [dict(moved, alpha_grad_z=0.85), dict(moved, alpha_grad_z=0.95)]
    assert end_of_search_warning(noisy).startswith("the architecture gradients pushed")
    flat = [*noisy[:1], dict(noisy[1], alpha_entropy_fraction=0.999)]
    assert end_of_search_warning(flat).startswith("the architecture distribution has barely")
    signal = [dict(moved, alpha_grad_z=1.6), dict(moved, alpha_grad_z=2.0)]
    assert end_of_search_warning(signal) is None
    assert end_of_search_warning([]) is None


def test_last_miou_is_that_of_the_last_evaluated_epoch():
    # the last evaluation counts, not the best; epochs without one (null or absent) are skipped
    assert last_miou([{"mIoU": 0.5}, {"mIoU": 0.2}, {"mIoU": None}, {"epoch": 4}]) == 0.2
    assert last_miou([{"mIoU": None}, {}]) is None
    assert last_miou([]) is None


def test_path_rule_warning_when_the_two_rules_disagree():
    record = {"probability_path": "0-0-0-1", "ratio_path": "1-2-1-2"}
    text = path_rule_warning(record)
    assert "the most probable path is 0-0-0-1" in text
    assert "rose most over uniform moves is 1-2-1-2" in text
    assert "--path-decoding ratio" in text
    assert path_rule_warning({"probability_path": "0-0", "ratio_path": "0-0"}) is None
    assert path_rule_warning({"path_log_prob": -1.0}) is None  # older records, DiNTS
    # joined to the warning about the distribution, which comes first
    moved = {"arch_steps": 900, "alpha_entropy_fraction": 0.8, "beta_entropy_fraction": 0.8}
    noisy = [dict(moved, alpha_grad_z=0.85), dict(moved, alpha_grad_z=0.95, **record)]
    joined = end_of_search_warning(noisy)
    assert joined.startswith("the architecture gradients pushed")
    assert joined.endswith(". Also, " + text)
    signal = [dict(moved, alpha_grad_z=1.6), dict(moved, alpha_grad_z=2.0, **record)]
    assert end_of_search_warning(signal) == text


def test_arch_diagnostics_of_both_path_rules_by_hand():
    """Two layers; level 0 leans to stay (logits 0.1 / 0), level 1 to stay strongly (1.0):
    probability rule 0-0 (0.525^2 = 0.276 against 0.475 x 0.576 = 0.274 for 1-1); ratio rule
    1-1 (0.95 x 1.73 = 1.64 against 1.05^2 = 1.10)."""
    betas = np.zeros((2, 4, 3))
    betas[:, 0, 1] = 0.1
    betas[:, 1, 1] = 1.0
    used = np.ones((2, 4), dtype=bool)
    d = arch_diagnostics(np.zeros((5, 8)), betas, used)
    assert (d.probability_path, d.ratio_path) == ("0-0", "1-1")
    p_stay0 = math.exp(0.1) / (1 + math.exp(0.1))
    assert d.path_log_prob == pytest.approx(2 * math.log(p_stay0))
    assert d.path_log_ratio == pytest.approx(2 * math.log(2 * p_stay0))
