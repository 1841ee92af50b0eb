"""Heads: atrous-rate rules (paper / auto / explicit), head widths, and how configs reach them."""

import hashlib
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autodeeplab import space
from autodeeplab.complexity import complexity
from autodeeplab.config import (
    RUNTIME_KEYS,
    TRAIN_RUNTIME_KEYS,
    SearchConfig,
    TrainConfig,
    config_diff,
    config_hash,
    flatten,
    load_config,
    neutral_defaults,
    to_dict,
)
from autodeeplab.engine.search import SearchEngine
from autodeeplab.engine.train import TrainEngine, resolve_network
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.heads import (
    ASPP,
    DeepLabV3PlusDecoder,
    atrous_rates_for_stride,
    auto_atrous_rates,
    feature_size,
    resolve_atrous_rates,
    search_head_rates,
)
from autodeeplab.network import AutoDeepLab, NetworkConfig

ROOT = Path(__file__).resolve().parents[1]
STRIDES = space.LEVEL_STRIDES


def reaches_off_centre(rate: int, size: int) -> bool:
    """Whether a dilated 3x3 conv on a ``size`` x ``size`` map reads any off-centre tap inside
    the map (zero padding elsewhere): False means it is a 1x1 convolution in disguise."""
    kernel = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    kernel[0, 0, 1, 1] = 0.0
    x = torch.ones(1, 1, size, size, dtype=torch.float64)
    return bool(F.conv2d(x, kernel, padding=rate, dilation=rate).sum() > 0)


def reference_auto(base: int, crop: int, stride: int) -> int:
    """``auto`` from its definition, with exact fractions and a map size from repeated halving."""
    size = crop
    for _ in range(int(math.log2(stride))):
        size = (size + 1) // 2  # a stride-2 conv with "same" padding
    scaled = Fraction(base) * Fraction(crop, stride) / Fraction(513, 16)
    rounded = math.floor(scaled + Fraction(1, 2))
    return min(max(1, size - 1), max(1, rounded))


# ---------------------------------------------------------------------------- rate rules
def test_auto_rates_hand_computed():
    # 513 crop: DeepLab's rates exactly, at every output stride (factor (513/s)/(513/16) = 16/s)
    for s in STRIDES:
        assert auto_atrous_rates(s, 513) == atrous_rates_for_stride(s)
    assert auto_atrous_rates(16, 513) == (6, 12, 18)
    # 64 crop, OS 4 (16x16 map): 6 * 16 / 32.0625 = 2.994 -> 3, 5.988 -> 6, 8.982 -> 9
    assert auto_atrous_rates(4, 64) == (3, 6, 9)
    assert auto_atrous_rates(8, 64) == (1, 3, 4)  # 1.497, 2.994, 4.491 on an 8x8 map
    assert auto_atrous_rates(16, 64) == (1, 1, 2)  # 0.748, 1.497, 2.246 on 4x4
    assert auto_atrous_rates(32, 64) == (1, 1, 1)  # 0.374 -> 0 -> clamped to 1, on 2x2
    assert auto_atrous_rates(16, 321) == (4, 8, 11)  # 3.754, 7.509, 11.263
    assert auto_atrous_rates(8, 769) == (18, 36, 54)  # 17.99, 35.98, 53.96
    assert auto_atrous_rates(32, 20) == (1, 1, 1)  # a 1x1 map: 1 is the least rate


def test_auto_rates_match_the_definition_and_never_reach_past_the_map():
    for crop in range(1, 1101):
        for s in STRIDES:
            rates = auto_atrous_rates(s, crop)
            assert rates == tuple(reference_auto(b, crop, s) for b in (6, 12, 18)), (crop, s)
            size = feature_size(crop, s)
            assert all(1 <= r < max(2, size) for r in rates)
            # the proportional rule alone already stays inside: the upper clamp never acts
            unclamped = [
                max(1, math.floor(Fraction(16 * b * crop, 513 * s) + Fraction(1, 2)))
                for b in (6, 12, 18)
            ]
            assert tuple(unclamped) == rates
            if size >= 2 and crop % 5 == 0:  # every branch still reads beyond its centre tap
                assert all(reaches_off_centre(r, size) for r in rates), (crop, s, rates)


def test_paper_rates_degenerate_on_small_maps_and_auto_does_not():
    # the motivating case: a 64 crop at output stride 4 gives a 16x16 map
    assert feature_size(64, 4) == 16
    assert not any(reaches_off_centre(r, 16) for r in atrous_rates_for_stride(4))  # 24, 48, 72
    assert all(reaches_off_centre(r, 16) for r in auto_atrous_rates(4, 64))


def test_auto_rates_grow_with_the_crop():
    for s in STRIDES:
        previous = (1, 1, 1)
        for crop in range(8, 1200, 5):
            rates = auto_atrous_rates(s, crop)
            assert all(a >= b for a, b in zip(rates, previous, strict=True))
            previous = rates


def test_resolve_atrous_rates():
    assert resolve_atrous_rates("paper", 8, None) == (12, 24, 36)
    assert resolve_atrous_rates("auto", 4, 64) == (3, 6, 9)
    assert resolve_atrous_rates((2, 4), 4, None) == (2, 4)
    with pytest.raises(ValueError, match=r"model\.aspp_rates=auto needs .*data\.crop_size"):
        resolve_atrous_rates("auto", 4, None)
    with pytest.raises(ValueError, match=r"one of paper, auto or a list .* got 'dense'"):
        resolve_atrous_rates("dense", 4, 64)
    for bad in ((), (0, 2), (1.5,), (True,)):
        with pytest.raises(ValueError, match="positive integers"):
            resolve_atrous_rates(bad, 4, 64)
    with pytest.raises(ValueError, match="output stride must be one of"):
        resolve_atrous_rates("paper", 12, None)
    with pytest.raises(ValueError, match="crop size"):
        auto_atrous_rates(4, 0)


def test_search_head_rates():
    assert search_head_rates("paper", None) == tuple(96 // s for s in STRIDES) == (24, 12, 6, 3)
    assert search_head_rates("paper", 64) == (24, 12, 6, 3)
    assert search_head_rates("auto", 513) == (24, 12, 6, 3)
    assert search_head_rates("auto", 64) == tuple(reference_auto(6, 64, s) for s in STRIDES)
    assert search_head_rates("auto", 64) == (3, 1, 1, 1)
    assert search_head_rates("auto", 321) == (15, 8, 4, 2)
    assert search_head_rates((5, 4, 3, 2), None) == (5, 4, 3, 2)
    with pytest.raises(ValueError, match="one rate per level"):
        search_head_rates((5, 4, 3), None)
    with pytest.raises(ValueError, match="needs the training crop size"):
        search_head_rates("auto", None)


# ---------------------------------------------------------------------------- head widths
def test_head_parameters_by_hand_for_a_tiny_network():
    """Path (0, 1), released cell (B = 5), F = 2: the ASPP reads 5 * 4 = 20 channels, the
    decoder the 10-channel stride-4 output of cell 0; 3 classes."""
    g = Genotype(cell=RELEASED.cell, path=(0, 1))
    narrow = NetworkConfig(
        genotype=g,
        num_classes=3,
        filter_multiplier=2,
        aspp_channels=8,
        decoder_channels=8,
        low_level_reduced=4,
    )
    parts = complexity(narrow, (33, 33)).params_by_part
    # ASPP: 1x1 (20*8 + BN 16) + 3 atrous (9*20*8 + 16) + pooling (20*8 + 16) + projection
    # (5*8*8 + 16)
    assert parts["aspp"] == 176 + 3 * 1456 + 176 + 336 == 5056
    # decoder: reduce (10*4 + 8), fuse 3x3 (12*9*8 + 16), 3x3 (8*9*8 + 16), classifier (8*3 + 3)
    assert parts["decoder"] == 48 + 880 + 592 + 27 == 1547
    paper = complexity(NetworkConfig(genotype=g, num_classes=3, filter_multiplier=2), (33, 33))
    assert paper.params_by_part["aspp"] == 5632 + 3 * 46592 + 5632 + 328192 == 479232
    assert paper.params_by_part["decoder"] == 576 + 700928 + 590336 + 771 == 1292611
    # the encoder does not depend on the head widths
    for part in ("stem", "cells"):
        assert parts[part] == paper.params_by_part[part]
    model = AutoDeepLab.from_config(narrow).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 33)).shape == (1, 3, 33, 33)


# ---------------------------------------------------------------------------- configs
PAPER_PARAMS = {
    "autodeeplab-s": 10_147_427,
    "autodeeplab-m": 21_622_451,
    "autodeeplab-l": 44_424_691,
}


@pytest.mark.parametrize("name", ["cityscapes", "voc", "ade20k"])
def test_full_scale_train_configs_build_the_paper_network(name):
    cfg = load_config(ROOT / "configs" / "train" / f"{name}.yaml", cls=TrainConfig)
    assert cfg.model.aspp_rates == "paper"
    assert (cfg.model.aspp_channels, cfg.model.decoder_channels) == (256, 256)
    for preset, params in PAPER_PARAMS.items():
        cfg.model.preset = preset
        network = resolve_network(cfg.model, 19, cfg.data.crop_size)
        assert network.aspp_rates is None  # DeepLab's rule, applied by the network
        with torch.device("meta"):
            model = AutoDeepLab.from_config(network)
        assert model.aspp.rates == (12, 24, 36)  # the released path ends at stride 8
        assert sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("name", ["cityscapes", "voc", "ade20k"])
def test_full_scale_search_configs_use_the_paper_head(name):
    cfg = load_config(ROOT / "configs" / "search" / f"{name}.yaml")
    assert cfg.model.aspp_rates == "paper"
    assert search_head_rates(cfg.model.aspp_rates, cfg.data.crop_size) == (24, 12, 6, 3)


def test_auto_rates_are_resolved_into_the_network_config():
    cfg = load_config(None, ["model.aspp_rates=auto", "data.crop_size=64"], cls=TrainConfig)
    cfg.model.preset = "conv-deconv"  # ends at stride 4
    network = resolve_network(cfg.model, 7, cfg.data.crop_size)
    assert network.aspp_rates == (3, 6, 9)
    assert NetworkConfig.from_dict(network.to_dict()) == network  # saved with the model
    explicit = load_config(None, ["model.aspp_rates=[2, 3]"], cls=TrainConfig).model
    explicit.preset = "conv-deconv"
    assert resolve_network(explicit, 7).aspp_rates == (2, 3)
    with pytest.raises(ValueError, match="needs the training crop size"):
        resolve_network(cfg.model, 7)
    bad = load_config(None, ["model.aspp_rates=wide"], cls=TrainConfig).model
    bad.preset = "conv-deconv"
    with pytest.raises(ValueError, match=r"model\.aspp_rates must be one of paper, auto"):
        resolve_network(bad, 7, 64)


def test_engines_build_the_requested_head_rates(tmp_path):
    from tests.test_search import TINY as SEARCH_TINY
    from tests.test_train import TINY as TRAIN_TINY
    from tests.test_train import genotype_file

    cfg = load_config(
        ROOT / "configs" / "train" / "synthetic.yaml",
        [*TRAIN_TINY, "model.aspp_rates=auto", "data.crop_size=64", f"output={tmp_path / 't'}"],
        cls=TrainConfig,
    )
    cfg.model.genotype = str(genotype_file(tmp_path, path=(0, 0, 0)))
    engine = TrainEngine(cfg, log=None)
    assert engine.model.aspp.rates == (3, 6, 9)
    assert engine.state_dict()["network"]["aspp_rates"] == [3, 6, 9]
    engine.close()

    search = load_config(
        ROOT / "configs" / "search" / "synthetic.yaml",
        [*SEARCH_TINY, "model.aspp_rates=[5, 4, 3, 2]", f"output={tmp_path / 's'}"],
        cls=SearchConfig,
    )
    engine = SearchEngine(search, log=None)
    levels = space.levels_at_layer(search.model.layers - 1)
    assert len(levels) == len(engine.model.heads) >= 2
    for level, head in zip(levels, engine.model.heads, strict=True):
        rate = (5, 4, 3, 2)[level]
        assert head.atrous[0].dilation == (rate, rate) and head.atrous[0].padding == (rate, rate)
    engine.close()


def old_hash(old: dict, ignore: frozenset[str]) -> str:
    """The hash as written before new keys existed: SHA-256 of the flattened config."""
    flat = {k: v for k, v in flatten(old).items() if k not in ignore}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("cls", "ignore"), [(SearchConfig, RUNTIME_KEYS), (TrainConfig, TRAIN_RUNTIME_KEYS)]
)
def test_new_head_key_at_its_paper_value_keeps_old_run_hashes(cls, ignore):
    """A checkpoint written before ``model.aspp_rates`` existed holds a config without it; at
    ``paper`` the key leaves the config hash alone, so such a run still resumes."""
    cfg = load_config(None, cls=cls)
    old = to_dict(cfg)
    del old["model"]["aspp_rates"], old["data"]["repeat"]
    if cls is SearchConfig:  # the schedule, collapse guards and relaxation came later too
        for key in (
            "arch_start_fraction",
            "arch_steps_per_step",
            "arch_regularizer",
            "aux_skip",
            "relaxation",
            "selection",
            "amp",
        ):
            del old[key]
        del old["model"]["selective_checkpoint"], old["model"]["path"]
    else:  # the layout option came later to the train config
        del old["channels_last"]
    assert config_hash(cfg, ignore) == old_hash(old, ignore)
    neutral = neutral_defaults(cfg)  # what the resume check compares with
    assert config_diff(old, to_dict(cfg), ignore, neutral) == []
    changed = load_config(None, ["model.aspp_rates=auto"], cls=cls)
    assert config_hash(changed, ignore) != config_hash(cfg, ignore)
    assert config_diff(old, to_dict(changed), ignore, neutral) == [
        "model.aspp_rates: 'paper' -> 'auto'"
    ]


@pytest.mark.parametrize(
    "config",
    # study configs point at these search and train configs
    [p for kind in ("search", "train") for p in sorted((ROOT / "configs" / kind).glob("*.yaml"))],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_no_shipped_config_has_an_atrous_branch_outside_its_map(config):
    """Whatever the searched path, every atrous branch of every shipped config reads more than
    its centre tap at the training crop (the ``paper`` rates at small crops do not)."""
    kind = config.parent.name
    cfg = load_config(config, cls=TrainConfig if kind == "train" else SearchConfig)
    crop = cfg.data.crop_size
    if kind == "train":
        rates = {s: resolve_atrous_rates(cfg.model.aspp_rates, s, crop) for s in STRIDES}
    else:
        per_level = search_head_rates(cfg.model.aspp_rates, crop)
        rates = {s: (r,) for s, r in zip(STRIDES, per_level, strict=True)}
    for s, rs in rates.items():
        size = feature_size(crop, s)
        if size >= 2:
            assert all(reaches_off_centre(r, size) for r in rs), (s, size, rs)


# ---------------------------------------------------------------------------- volumes
def test_volume_heads_on_one_slice_equal_the_image_heads():
    """ASPP and decoder built for volumes, on volumes of depth 1, equal the image heads whose
    kernels are the central depth slices of the 3D ones (off-centre depth taps read zero
    padding; pooling, BatchNorm and trilinear resizing reduce to their 2D forms)."""
    torch.manual_seed(0)
    heads = {
        dims: (
            ASPP(6, (1, 2), channels=8, spatial_dims=dims),
            DeepLabV3PlusDecoder(5, 3, aspp_channels=8, channels=8, spatial_dims=dims),
        )
        for dims in (2, 3)
    }
    with torch.no_grad():
        for m3, m2 in zip(
            nn.ModuleList(heads[3]).modules(), nn.ModuleList(heads[2]).modules(), strict=True
        ):
            if isinstance(m3, nn.Conv3d):
                m2.weight.copy_(m3.weight[:, :, m3.kernel_size[0] // 2])
                if m3.bias is not None:
                    m2.bias.copy_(m3.bias)
            elif isinstance(m3, nn.BatchNorm3d):
                m2.load_state_dict(m3.state_dict())
    x = torch.randn(2, 6, 5, 7)
    low = torch.randn(2, 5, 9, 13)
    for training in (True, False):
        out = {}
        for dims, (aspp, decoder) in heads.items():
            aspp.train(training)
            decoder.train(training)
            xd, lowd = (x, low) if dims == 2 else (x.unsqueeze(2), low.unsqueeze(2))
            out[dims] = decoder(aspp(xd), lowd)
        assert out[3].shape == (2, 3, 1, 9, 13)
        torch.testing.assert_close(out[3].squeeze(2), out[2], rtol=1e-5, atol=1e-6)
    volume = heads[3][1](heads[3][0](torch.randn(2, 6, 3, 5, 7)), torch.randn(2, 5, 6, 9, 13))
    assert volume.shape == (2, 3, 6, 9, 13)
