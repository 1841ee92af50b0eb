"""The Gumbel relaxation (GDAS): the sample and the straight-through gradient against a
hand-written Jacobian, the Gumbel-max frequencies against the softmax (chi-square), the
temperature schedule, the supernet mixing with the sampled one-hot weights, a search that
records the temperature and resumes bit-identically, and the refused combinations."""

import math

import numpy as np
import pytest
import torch
from test_sample import chi2_upper_quantile

from autodeeplab import space
from autodeeplab.cli import main
from autodeeplab.config import ConfigError
from autodeeplab.engine.search import run_search
from autodeeplab.relaxation import (
    GumbelRelaxation,
    SoftmaxRelaxation,
    gumbel_noise,
    straight_through_gumbel,
)
from autodeeplab.search_model import check_relaxation
from autodeeplab.supernet import SearchNetwork

from runs import assert_same_search_state, comparable_records, read_records, tiny_search

TINY = dict(num_classes=3, layers=3, blocks=2, filter_multiplier=2, stem_channels=(4, 4, 4))


def _softmax_jacobian(z: np.ndarray, tau: float) -> np.ndarray:
    """d softmax(z / tau)_i / d z_j written out entry by entry: y_i (delta_ij - y_j) / tau."""
    e = [math.exp(v / tau - max(z) / tau) for v in z]
    y = [v / sum(e) for v in e]
    n = len(z)
    return np.array(
        [[y[i] * ((1.0 if i == j else 0.0) - y[j]) / tau for j in range(n)] for i in range(n)]
    )


@pytest.mark.parametrize("tau", [0.1, 1.0, 10.0])
def test_straight_through_sample_and_gradient_match_the_hand_written_jacobian(tau):
    torch.manual_seed(0)
    logits = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    noise = gumbel_noise(logits.detach())
    upstream = torch.randn(5, 8, dtype=torch.float64)

    weights = straight_through_gumbel(logits, noise, tau)
    (weights * upstream).sum().backward()

    z = (logits.detach() + noise).numpy()
    for e in range(5):
        hot = np.zeros(8)
        hot[int(np.argmax(z[e]))] = 1.0
        assert weights[e].detach().numpy().tolist() == hot.tolist()  # exactly one-hot
        expected = _softmax_jacobian(z[e], tau).T @ upstream[e].numpy()
        np.testing.assert_allclose(logits.grad[e].numpy(), expected, rtol=1e-10, atol=1e-14)


def test_the_gumbel_max_sample_follows_the_softmax():
    """20,000 draws of one edge: the op frequencies against softmax(alpha) (chi-square)."""
    torch.manual_seed(0)
    alphas = torch.tensor([[1.5, 0.0, -1.0, 0.5, 2.0, -2.0, 0.0, 1.0]], dtype=torch.float64)
    relax = GumbelRelaxation(space.SearchSpace(1, 1))
    draws = 20_000
    counts = np.zeros(8)
    for _ in range(draws // 500):
        noise = gumbel_noise(alphas.expand(500, 8))
        picks = (alphas + noise).argmax(dim=-1)
        counts += np.bincount(picks.numpy(), minlength=8)
    probs = np.exp(alphas[0].numpy()) / np.exp(alphas[0].numpy()).sum()
    expected = draws * probs
    assert ((counts - expected) ** 2 / expected).sum() < chi2_upper_quantile(7)  # alpha 1e-4
    # and the relaxation's own draw is such a sample: one-hot rows
    weights = relax.forward_op_weights({"alphas": alphas.expand(4, 8)}, True, 0.5)
    assert weights.sum(dim=-1).tolist() == [1.0] * 4 and set(weights.flatten().tolist()) == {
        0.0,
        1.0,
    }


def test_the_noise_is_finite_at_the_ends_of_the_uniform_draw(monkeypatch):
    for value in (0.0, 1.0 - 2**-24):
        monkeypatch.setattr(torch, "rand", lambda shape, v=value, **kw: torch.full(shape, v, **kw))
        assert torch.isfinite(gumbel_noise(torch.zeros(3, 4))).all()


def test_temperature_falls_linearly_over_the_architecture_steps():
    relax = GumbelRelaxation(space.SearchSpace(1, 1), tau_max=10.0, tau_min=0.1)
    assert [relax.temperature(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([10.0, 5.05, 0.1])
    assert relax.temperature(-1.0) == 10.0 and relax.temperature(2.0) == pytest.approx(0.1)
    assert relax.schedule_state(0.5) == {"gumbel_tau": pytest.approx(5.05)}
    with pytest.raises(ValueError, match="tau_min <= tau_max"):
        GumbelRelaxation(space.SearchSpace(1, 1), tau_max=0.1, tau_min=1.0)


class FixedWeights(SoftmaxRelaxation):
    """A relaxation whose op weights are a given tensor (to compare the Gumbel supernet with)."""

    def __init__(self, search_space, weights):
        super().__init__(search_space)
        self.weights = weights

    def op_weights(self, params):
        return self.weights


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    gumbel = SearchNetwork(
        **TINY, relaxation=GumbelRelaxation(space.SearchSpace(3, 2), 4.0, 0.5)
    ).double()
    with torch.no_grad():
        for p in gumbel.arch_parameters():
            p.normal_()
    return gumbel


def test_training_forward_mixes_one_sampled_op_per_edge_and_eval_the_argmax():
    gumbel = _pair()
    sp = gumbel.search_space
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)

    torch.manual_seed(7)
    out = gumbel(x, arch_progress=0.25)
    torch.manual_seed(7)  # the same draw, by hand
    noise = gumbel_noise(gumbel.alphas.detach())
    hot = torch.nn.functional.one_hot((gumbel.alphas.detach() + noise).argmax(-1), sp.num_ops)
    fixed = SearchNetwork(**TINY, relaxation=FixedWeights(sp, hot.double())).double()
    fixed.load_state_dict(gumbel.state_dict())
    torch.testing.assert_close(out, fixed(x), rtol=1e-12, atol=1e-12)
    # another draw is another architecture
    assert not torch.allclose(gumbel(x, arch_progress=0.25), out)

    # the arch gradient is the straight-through one: d/d(hot) of the same loss through the
    # hand-written Jacobian of softmax((alpha + g) / tau) at tau(0.25) = 4 - 3.5 / 4
    tau = 4.0 - 3.5 * 0.25
    torch.manual_seed(7)
    (gumbel(x, arch_progress=0.25) ** 2).mean().backward()
    leaf = hot.double().requires_grad_(True)
    fixed.relaxation.weights = leaf
    (fixed(x) ** 2).mean().backward()
    z = (gumbel.alphas.detach() + noise).numpy()
    expected = np.stack(
        [_softmax_jacobian(z[e], tau).T @ leaf.grad[e].numpy() for e in range(sp.num_edges)]
    )
    np.testing.assert_allclose(gumbel.alphas.grad.numpy(), expected, rtol=1e-8, atol=1e-12)

    gumbel.eval()
    argmax = torch.nn.functional.one_hot(gumbel.alphas.detach().argmax(-1), sp.num_ops).double()
    fixed.relaxation.weights = argmax
    fixed.load_state_dict(gumbel.state_dict())  # the running statistics of the training passes
    fixed.eval()
    with torch.no_grad():
        torch.testing.assert_close(gumbel(x), fixed(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gumbel(x), gumbel(x))  # no noise in evaluation


GUMBEL = ["relaxation.name=gumbel", "relaxation.tau_max=5", "relaxation.tau_min=1"]


def test_a_gumbel_search_records_its_temperature_and_resumes_bit_identically(tmp_path):
    full = run_search(tiny_search(tmp_path, *GUMBEL, name="full"), log=None)
    # 2 epochs of 4 steps, architecture steps in epoch 2: after epoch 1 none is done (tau_max),
    # after epoch 2 all (tau_min)
    assert [h["gumbel_tau"] for h in full.history] == [5.0, 1.0]
    part = run_search(tiny_search(tmp_path, *GUMBEL, "max_steps=6", name="part"), log=None)
    assert not part.finished
    resumed = run_search(tiny_search(tmp_path, *GUMBEL, name="part"), resume=True, log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    assert_same_search_state(tmp_path / "full" / "last.pt", tmp_path / "part" / "last.pt")
    assert comparable_records(tmp_path / "part") == comparable_records(tmp_path / "full")
    assert any("gumbel_tau" in r for r in read_records(tmp_path / "full" / "metrics.jsonl"))


def test_the_search_feeds_its_architecture_progress_to_every_forward(tmp_path, monkeypatch):
    """Weight step g (and its architecture step, from epoch 2 on) sees the share of the
    architecture steps done before it: 0 in epoch 1, (g - 4) / 4 in epoch 2."""
    seen = []
    original = SearchNetwork.forward

    def forward(self, x, aux_skip=0.0, arch_progress=0.0):
        seen.append((self.training, arch_progress))
        return original(self, x, aux_skip, arch_progress)

    monkeypatch.setattr(SearchNetwork, "forward", forward)
    run_search(tiny_search(tmp_path, *GUMBEL), log=None)
    expected = []
    for g in range(8):
        expected += [(True, max(0.0, (g - 4) / 4))] * (1 if g < 4 else 2)
        if g in (3, 7):  # the evaluation after each epoch
            expected.append((False, max(0.0, (g + 1 - 4) / 4)))
    assert seen == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["relaxation.tau_max=0.5", "relaxation.tau_min=1"], r"tau_min = 1\.0 is above"),
        (["unrolled=true"], r"unrolled = true with relaxation\.name='gumbel'"),
        (["selection.name=perturbation"], r"selection\.name = 'perturbation' with"),
        (["relaxation.memory_target=0.5"], r"needs independent transition"),
    ],
)
def test_refused_combinations_name_the_keys(tmp_path, overrides, message):
    cfg = tiny_search(tmp_path, "relaxation.name=gumbel", *overrides)
    with pytest.raises(ConfigError, match=message):
        check_relaxation(cfg)


def test_cli_refuses_a_bad_gumbel_config_with_exit_2(tmp_path, capsys):
    from runs import SEARCH_CONFIG, SEARCH_TINY

    argv = ["search", "--config", str(SEARCH_CONFIG), "--output", str(tmp_path / "r")]
    argv += [*SEARCH_TINY, "relaxation.name=gumbel", "unrolled=true"]
    assert main(argv) == 2
    assert "GDAS is first-order" in capsys.readouterr().err
