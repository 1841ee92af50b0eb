"""The relaxation interface: the softmax relaxation against independent formulas, the supernet
taking its weights from the relaxation, parameters and checkpoint keys, decoding."""

import copy

import numpy as np
import pytest
import test_supernet as ts
import torch
import torch.nn.functional as F
from torch import nn

from autodeeplab import decode, ops, space
from autodeeplab.collapse import beta_decay
from autodeeplab.genotype import Genotype
from autodeeplab.network import AutoDeepLab
from autodeeplab.relaxation import Relaxation, SoftmaxRelaxation
from autodeeplab.supernet import SearchNetwork

TINY = dict(num_classes=3, layers=4, blocks=3, filter_multiplier=4, stem_channels=(8, 8, 16))


def _params(relax: Relaxation) -> dict:
    """Fresh parameters of ``relax``, drawn N(0, 1) so that the weights differ visibly."""
    params = relax.init_parameters()
    with torch.no_grad():
        for p in params.values():
            if p is not None:
                p.normal_()
    return params


def test_softmax_weights_match_independent_formulas():
    torch.manual_seed(0)
    sp = space.SearchSpace(layers=5, blocks=3)
    relax = SoftmaxRelaxation(sp, edge_normalisation=True)
    params = _params(relax)
    assert {k: tuple(v.shape) for k, v in params.items()} == {
        "alphas": (9, 8),
        "betas": (5, 4, 3),
        "edge_logits": (9,),
    }
    a = params["alphas"].detach().double().numpy()
    e = np.exp(a - a.max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        relax.op_weights(params).detach(), e / e.sum(1, keepdims=True), rtol=1e-6
    )
    torch.testing.assert_close(
        relax.transition_weights(params), ts.ref_beta_weights(params["betas"])
    )
    # edge normalisation by hand: the incoming edges of block b are b + 2 consecutive numbers
    logits = params["edge_logits"].detach()
    expected, start = [], 0
    for b in range(3):
        expected.append(torch.softmax(logits[start : start + b + 2], 0))
        start += b + 2
    torch.testing.assert_close(relax.edge_weights(params), torch.cat(expected))
    plain = SoftmaxRelaxation(sp)
    assert plain.init_parameters()["edge_logits"] is None
    assert plain.edge_weights(params) is None
    with pytest.raises(ValueError, match="architecture parameter 'betas' is missing"):
        relax.transition_weights({"alphas": params["alphas"]})


def test_decode_matches_the_decoders_and_regularizer_names():
    torch.manual_seed(1)
    relax = SoftmaxRelaxation(space.SearchSpace(layers=6, blocks=4))
    params = _params(relax)
    a, b = params["alphas"].detach().numpy(), params["betas"].detach().numpy()
    assert relax.decode(params) == decode.decode_genotype(a, b)
    assert relax.regularizers == ("beta_decay",)
    with pytest.raises(ValueError, match="no regularizer 'entropy'; valid: beta_decay"):
        relax.regularizer("entropy", params)


def test_the_path_rule_of_the_relaxation():
    torch.manual_seed(2)
    sp = space.SearchSpace(layers=6, blocks=2)
    relax = SoftmaxRelaxation(sp, path_decoding="ratio")
    params = _params(relax)
    a, b = params["alphas"].detach().numpy(), params["betas"].detach().numpy()
    assert relax.decode(params) == Genotype(decode.decode_cell(a), decode.decode_path(b, "ratio"))
    assert SoftmaxRelaxation(sp).decode(params).path == decode.decode_path(b)
    with pytest.raises(ValueError, match="unknown path rule 'viterbi'; valid: probability, ratio"):
        SoftmaxRelaxation(sp, path_decoding="viterbi")


class TemperatureRelaxation(SoftmaxRelaxation):
    """Softmax at temperature ``t``: the paper's weights for logits divided by ``t``."""

    def __init__(self, search_space, t, **kw):
        super().__init__(search_space, **kw)
        self.t = t

    def op_weights(self, params):
        return F.softmax(params["alphas"] / self.t, dim=-1)

    def transition_weights(self, params):
        return super().transition_weights({"betas": params["betas"] / self.t})


@pytest.mark.parametrize("partial", [1, 2])
def test_the_supernet_mixes_with_the_relaxation_weights(partial):
    """A relaxation at temperature 0.5 with logits ``x`` computes what the default relaxation
    computes with logits ``2 x``: the supernet takes every weight from its relaxation."""
    torch.manual_seed(0)
    plain = SearchNetwork(**TINY, partial_channels=partial).double()
    with torch.no_grad():
        for p in plain.arch_parameters():
            p.normal_()
    hot = SearchNetwork(
        **TINY,
        partial_channels=partial,
        relaxation=TemperatureRelaxation(plain.search_space, 0.5, edge_normalisation=partial > 1),
    ).double()
    hot.load_state_dict(plain.state_dict())
    with torch.no_grad():
        hot.alphas.mul_(0.5)
        hot.betas.mul_(0.5)
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    torch.testing.assert_close(hot(x), plain(x), rtol=1e-9, atol=1e-10)


def test_parameters_are_registered_under_the_checkpoint_keys(tmp_path):
    torch.manual_seed(0)
    model = SearchNetwork(**TINY, partial_channels=2)
    names = [n for n, _ in model.named_parameters()][:3]
    assert names == ["alphas", "betas", "edge_logits"]
    assert model.arch_parameters() == [model.alphas, model.betas, model.edge_logits]
    assert SearchNetwork(**TINY).edge_logits is None
    assert SearchNetwork(**TINY).arch_state()["edge_logits"] is None

    # a checkpoint round trip (plain tensors, read back with weights_only) restores the decode
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_()
    torch.save(model.state_dict(), tmp_path / "search.pt")
    fresh = SearchNetwork(**TINY, partial_channels=2)
    fresh.load_state_dict(torch.load(tmp_path / "search.pt", weights_only=True))
    assert fresh.genotype() == model.genotype()
    torch.testing.assert_close(fresh.edge_weights(), model.edge_weights())


def test_functional_call_substitutes_the_architecture_parameters():
    """Weights computed in forward come from the module's attributes at call time: a
    functional call with other alphas and betas gives the logits of a model holding them."""
    torch.manual_seed(0)
    model = SearchNetwork(**TINY).double()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.arch_parameters():
            p.normal_()
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    subs = {"alphas": other.alphas, "betas": other.betas}
    out = torch.func.functional_call(model, subs, (x,))
    torch.testing.assert_close(out, other(x), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(out, model(x))


def test_relaxation_for_another_space_is_refused():
    relax = SoftmaxRelaxation(space.SearchSpace(layers=3, blocks=3))
    with pytest.raises(ValueError, match=r"built for SearchSpace\(layers=3"):
        SearchNetwork(**TINY, relaxation=relax)


def test_beta_decay_is_the_relaxation_regularizer():
    torch.manual_seed(2)
    model = SearchNetwork(**TINY)
    with torch.no_grad():
        model.alphas.normal_()
    expected = model.relaxation.regularizer("beta_decay", model.arch_state())
    assert torch.equal(beta_decay(model), expected)


def _conv_1x1(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(
        nn.ReLU(), nn.Conv2d(c, c, 1, stride, bias=False), nn.BatchNorm2d(c, affine=affine)
    )


def test_a_registered_op_goes_from_search_to_the_discrete_network():
    """Adding an operation takes its registry entry only: searched over, decoded, saved as a
    genotype and built into the retrained network."""
    ops.register_op(ops.OpSpec("test_conv_1x1", _conv_1x1, parameter_free=False))
    try:
        torch.manual_seed(0)
        model = SearchNetwork(**TINY, op_names=(*space.PRIMITIVES, "test_conv_1x1"))
        x = torch.randn(2, 3, 32, 32)
        F.cross_entropy(model(x), torch.zeros(2, 32, 32, dtype=torch.long)).backward()
        assert model.alphas.grad[:, 8].abs().min() > 0
        with torch.no_grad():
            model.alphas[:, 8] = 5.0
        genotype = model.genotype()
        assert {op for block in genotype.cell for _, op in block} == {"test_conv_1x1"}
        assert Genotype.from_json(genotype.to_json()) == genotype
        net = AutoDeepLab(genotype, num_classes=3, filter_multiplier=4).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    finally:
        ops.unregister_op("test_conv_1x1")
    with pytest.raises(ValueError, match="unknown operation 'test_conv_1x1'"):
        Genotype.from_json(genotype.to_json())
