import random

import pytest
import torch

from autodeeplab import space
from autodeeplab.genotype import GENOTYPES, RELEASED, Genotype
from autodeeplab.heads import ASPP, DeepLabV3PlusDecoder, atrous_rates_for_stride
from autodeeplab.network import AutoDeepLab, NetworkConfig, drop_path, low_level_cell_index

OPS = [p for p in space.PRIMITIVES if p != "none"]


def random_genotype(rng: random.Random, max_layers: int = 6) -> Genotype:
    blocks = rng.randint(1, 5)
    cell = []
    for b in range(blocks):
        a, c = rng.sample(range(b + 2), 2)
        cell.append(((a, rng.choice(OPS)), (c, rng.choice(OPS))))
    path, level = [], space.STEM_LEVEL
    for _ in range(rng.randint(1, max_layers)):
        level = space.move_target(level, rng.choice(space.valid_moves(level)))
        path.append(level)
    return Genotype(cell=cell, path=path)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------ independent reference count
def _op_params(op: str, f: int, stride: int) -> int:
    bn = 2 * f
    return {
        "max_pool_3x3": 0,
        "avg_pool_3x3": 0,
        "skip_connect": 0 if stride == 1 else f * f + bn,
        "sep_conv_3x3": 2 * (9 * f + f * f + bn),
        "sep_conv_5x5": 2 * (25 * f + f * f + bn),
        "atr_conv_3x3": 9 * f * f + bn,
        "atr_conv_5x5": 25 * f * f + bn,
    }[op]


def reference_params(
    g: Genotype, F: int, classes: int, aspp: int = 256, decoder: int = 256, low: int = 48
) -> int:
    """Parameter count from the architecture description (the paper's retrained network), by hand; ``aspp``,
    ``decoder`` and ``low`` are the head widths (the paper's 256, 256, 48 by default)."""
    total = 3 * 64 * 9 + 128 + 64 * 64 * 9 + 128 + 64 * 128 * 9 + 256  # stem
    c_pp, c_p, prev_level = 64, 128, 0
    outs = []
    for level in g.path:
        f = F * 2**level
        if c_pp != f:  # prev-prev 1x1 only when channels differ
            total += c_pp * f + 2 * f
        total += c_p * f + 2 * f
        for block in g.cell:
            for inp, op in block:
                stride = 2 if level > prev_level and inp < 2 else 1
                total += _op_params(op, f, stride)
        c_pp, c_p, prev_level = c_p, g.blocks * f, level
        outs.append(c_p)
    aspp_in = c_p
    total += aspp_in * aspp + 2 * aspp  # 1x1
    total += 3 * (9 * aspp_in * aspp + 2 * aspp)  # atrous
    total += aspp_in * aspp + 2 * aspp  # image pooling
    total += 5 * aspp * aspp + 2 * aspp  # projection
    low_index = low_level_cell_index(g.path)
    low_in = 128 if low_index is None else outs[low_index]
    total += low_in * low + 2 * low
    total += (aspp + low) * 9 * decoder + 2 * decoder + decoder * 9 * decoder + 2 * decoder
    total += decoder * classes + classes
    return total


def test_released_small_matches_paper_table2():
    m = AutoDeepLab(RELEASED, num_classes=19, filter_multiplier=20)
    n = count(m)
    assert n == reference_params(RELEASED, 20, 19)
    assert abs(n - 10.15e6) / 10.15e6 < 0.005


@pytest.mark.parametrize("seed", range(6))
def test_random_genotype_param_count_matches_reference(seed):
    g = random_genotype(random.Random(seed), max_layers=8)
    assert count(AutoDeepLab(g, 7, filter_multiplier=4)) == reference_params(g, 4, 7)
    narrow = AutoDeepLab(
        g, 7, filter_multiplier=4, aspp_channels=24, decoder_channels=16, low_level_reduced=8
    )
    assert count(narrow) == reference_params(g, 4, 7, aspp=24, decoder=16, low=8)


# ------------------------------------------------------------------ forward shapes
@pytest.mark.parametrize("name", sorted(GENOTYPES))
def test_every_genotype_preset_forward(name):
    m = AutoDeepLab(GENOTYPES[name], num_classes=5, filter_multiplier=4).eval()
    with torch.no_grad():
        for h, w in [(65, 65), (64, 96)]:
            assert m(torch.randn(1, 3, h, w)).shape == (1, 5, h, w)


@pytest.mark.parametrize("seed", range(12))
def test_random_genotypes_forward(seed):
    g = random_genotype(random.Random(1000 + seed), max_layers=12)
    m = AutoDeepLab(g, num_classes=3, filter_multiplier=4).eval()
    feats_expected = 4 * 2 ** g.path[-1] * g.blocks
    assert m.encoder.out_channels["out"] == feats_expected
    with torch.no_grad():
        for h, w in [(65, 65), (64, 96)]:
            x = torch.randn(1, 3, h, w)
            feats = m.encoder(x)
            s = g.output_stride
            assert feats["out"].shape == (1, feats_expected, -(-h // s), -(-w // s))
            assert feats["stride4"].shape[-2:] == (-(-h // 4), -(-w // 4))
            assert m(x).shape == (1, 3, h, w)


def test_train_mode_forward_and_backward():
    m = AutoDeepLab(RELEASED, num_classes=4, filter_multiplier=4, drop_path_rate=0.3).train()
    y = m(torch.randn(2, 3, 64, 96))
    assert y.shape == (2, 4, 64, 96)
    y.mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_path_starting_at_level_1_uses_stem_low_level_features():
    g = Genotype(cell=RELEASED.cell, path=(1, 2, 1))
    assert low_level_cell_index(g.path) is None
    m = AutoDeepLab(g, num_classes=2, filter_multiplier=4)
    assert m.encoder.out_channels["stride4"] == 128
    assert m.decoder.reduce[0].in_channels == 128
    assert low_level_cell_index(RELEASED.path) == 2
    assert low_level_cell_index((0, 1, 0, 0)) == 0


# ------------------------------------------------------------------ heads
def test_atrous_rates_follow_output_stride():
    assert atrous_rates_for_stride(16) == (6, 12, 18)
    assert atrous_rates_for_stride(8) == (12, 24, 36)
    assert atrous_rates_for_stride(32) == (3, 6, 9)
    assert atrous_rates_for_stride(4) == (24, 48, 72)
    with pytest.raises(ValueError, match="one of"):
        atrous_rates_for_stride(12)
    assert AutoDeepLab(RELEASED, 2, 4).aspp.rates == (12, 24, 36)  # released path ends at /8
    assert AutoDeepLab(RELEASED, 2, 4, aspp_rates=(1, 2, 3)).aspp.rates == (1, 2, 3)


def test_head_contracts():
    aspp = ASPP(20, rates=(1, 2, 3), channels=16).eval()
    y = aspp(torch.randn(1, 20, 7, 9))
    assert y.shape == (1, 16, 7, 9)
    dec = DeepLabV3PlusDecoder(12, num_classes=5, aspp_channels=16, channels=8).eval()
    assert dec(y, torch.randn(1, 12, 25, 33)).shape == (1, 5, 25, 33)


# ------------------------------------------------------------------ errors
def test_bad_inputs_say_what_works():
    g = Genotype(cell=RELEASED.cell, path=(0, 1, 2, 3))
    m = AutoDeepLab(g, 2, 4).eval()
    with pytest.raises(ValueError, match=r"expected 3 input channels, got 1.*\(N, 3, H, W\)"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"stride 32.*at least 33 pixels"):
        m(torch.randn(1, 3, 32, 64))
    with pytest.raises(ValueError, match=r"shape \(N, 3, H, W\)"):
        m(torch.randn(3, 64, 64))
    # a shallower path accepts smaller inputs
    shallow = AutoDeepLab(Genotype(cell=RELEASED.cell, path=(0, 1)), 2, 4).eval()
    with torch.no_grad():
        assert shallow(torch.randn(1, 3, 9, 9)).shape == (1, 2, 9, 9)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Genotype"):
        AutoDeepLab({"path": [0]}, 2, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="filter_multiplier"):
        AutoDeepLab(RELEASED, 2, 0)
    with pytest.raises(ValueError, match="drop_path_rate"):
        AutoDeepLab(RELEASED, 2, 4, drop_path_rate=1.0)


def test_config_round_trip():
    m = AutoDeepLab(RELEASED, 7, 4, drop_path_rate=0.2)
    cfg = NetworkConfig.from_dict(m.config.to_dict())
    assert cfg == m.config
    assert count(AutoDeepLab.from_config(cfg)) == count(m)
    with pytest.raises(ValueError, match="unknown network config keys"):
        NetworkConfig.from_dict({**m.config.to_dict(), "depth": 3})


# ------------------------------------------------------------------ drop path
def test_drop_path_rates_grow_with_depth_and_progress():
    g = Genotype(cell=RELEASED.cell, path=(0, 0, 1, 1))
    m = AutoDeepLab(g, 2, 4, drop_path_rate=0.4)
    assert m.drop_path_rates() == pytest.approx((0.1, 0.2, 0.3, 0.4))  # full rate by default
    assert m.set_drop_path(0.5) == pytest.approx((0.05, 0.1, 0.15, 0.2))
    assert m.set_drop_path(0.0) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.set_drop_path(1.5)


def test_drop_path_function():
    x = torch.ones(20000, 1, 1, 1)
    assert torch.equal(drop_path(x, 0.3, training=False), x)
    torch.manual_seed(0)
    y = drop_path(x, 0.3, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.02


def test_drop_path_no_effect_in_eval_and_active_in_train():
    torch.manual_seed(0)
    g = Genotype(cell=RELEASED.cell, path=(0, 0, 1))
    ref = AutoDeepLab(g, 3, 4, drop_path_rate=0.0)
    dp = AutoDeepLab(g, 3, 4, drop_path_rate=0.9)
    dp.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 33, 33)
    ref.eval(), dp.eval()
    with torch.no_grad():
        assert torch.equal(ref(x), dp(x))
        ref.train(), dp.train()
        dp.set_drop_path(0.0)
        assert torch.equal(ref(x), dp(x))
        dp.set_drop_path(1.0)
        torch.manual_seed(1)
        assert not torch.allclose(ref(x), dp(x))
