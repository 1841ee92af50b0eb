"""Architecture study: config validation, statistics, end-to-end run, resume, refusal."""

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from autodeeplab import space
from autodeeplab.checkpoint import load_checkpoint
from autodeeplab.cli import main
from autodeeplab.config import ConfigError
from autodeeplab.engine import search as search_engine
from autodeeplab.engine.search import NonFiniteLossError
from autodeeplab.engine.train import TrainEngine
from autodeeplab.genotype import Genotype
from autodeeplab.network import AutoDeepLab
from autodeeplab.report import PNG_SIGNATURE
from autodeeplab.runfolder import dumps_json
from autodeeplab.sample import sample_genotypes
from autodeeplab.study import (
    CONSENSUS,
    CandidateResult,
    Study,
    StudyError,
    architecture_signal,
    competition_ranks,
    draw_study,
    load_study_config,
    mean_std,
    pooled_std,
    run_study,
    summarize,
    z_score,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = {
    "options": {"length": 8, "size": 32, "seed": 0},
    "crop_size": 32,
    "batch_size": 2,
    "eval_batch_size": 4,
    "max_eval_samples": 4,
}
TRAIN = {
    "config": str(ROOT / "configs" / "train" / "synthetic.yaml"),
    "overrides": {
        "iterations": 2,
        "data": DATA,
        "model": {
            "filter_multiplier": 2,
            "aspp_channels": 8,
            "decoder_channels": 8,
            "low_level_reduced": 4,
        },
        "eval_interval": 0,
        "checkpoint_interval": 1,
        "progress": False,
        "tensorboard": False,
        "threads": 1,
    },
}
SEARCH = {
    "config": str(ROOT / "configs" / "search" / "synthetic.yaml"),
    "overrides": {
        "epochs": 1,
        "arch_start_epoch": 0,
        "data": DATA,
        "model": {"layers": 3, "blocks": 2, "filter_multiplier": 2, "stem_channels": [8, 8, 8]},
        "progress": False,
        "tensorboard": False,
        "threads": 1,
    },
    "trials": 1,
}  # 4 + 4 samples, batch 2: two steps


def study_data(tmp_path: Path, name: str = "study", **changes) -> dict:
    """A tiny study without search trials: 3 layers, 2 blocks, 2 random candidates."""
    data = {
        "output": str(tmp_path / name),
        "layers": 3,
        "blocks": 2,
        "train": json.loads(json.dumps(TRAIN)),
        "train_seeds": [0, 1],
        "random": {"num": 2, "seed": 0},
    }
    data.update(changes)
    return data


def write_study(tmp_path: Path, data: dict, file: str = "study.yaml") -> Path:
    path = tmp_path / file
    path.write_text(yaml.safe_dump(data))
    return path


def load(tmp_path: Path, data: dict):
    return load_study_config(write_study(tmp_path, data))


def genotype_file(tmp_path: Path, path=(0, 1, 1), name: str = "mine.json", blocks: int = 2):
    cell = (((0, "sep_conv_3x3"), (1, "skip_connect")), ((0, "atr_conv_3x3"), (2, "max_pool_3x3")))
    cell += tuple(((0, "sep_conv_5x5"), (1, "avg_pool_3x3")) for _ in range(blocks - 2))
    file = tmp_path / name
    Genotype(cell=cell, path=path).save(file)
    return file


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------------------- validation
def test_shipped_study_config_plans_without_running(tmp_path):
    cfg = load_study_config(ROOT / "configs" / "study" / "synthetic.yaml")
    cfg.output = str(tmp_path / "s")
    study = Study(cfg)
    kinds = [c.kind for c in study.candidates]
    assert kinds.count("searched") == 3 and kinds.count("random") >= 5
    assert kinds.count("consensus") == 1
    assert (study.layers, study.blocks) == (study.search.model.layers, study.search.model.blocks)
    fitting = space.hand_designed_paths(study.layers)
    assert [c.name for c in study.candidates if c.kind == "hand-designed"] == [
        f"hand-{f}" for f in fitting
    ]
    assert len(study.train_seeds) >= 2
    assert not (tmp_path / "s").exists()  # planning writes nothing


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"random": {"nmu": 3}}, ConfigError, r"random\.nmu.*valid keys under random: num"),
        ({"train_seeds": []}, ConfigError, "train_seeds: give at least one seed"),
        ({"train_seeds": [0, 0]}, ConfigError, "distinct"),
        ({"train": {"config": "missing.yaml"}}, FileNotFoundError, r"train\.config.*missing"),
        (
            {"train": {"overrides": {"optim": {"learning_rate": 1}}}},
            ConfigError,
            r"train\.overrides.*optim\.learning_rate",
        ),
        (
            {"train": {"overrides": {"data": {**DATA, "name": "cityscapes"}}}},
            ConfigError,
            "'cityscapes' needs a root folder; set data.root",
        ),
        ({"genotypes": ["nowhere.json"]}, FileNotFoundError, "genotypes: .*nowhere.json"),
        ({"search": {"config": SEARCH["config"]}}, ConfigError, "search.trials"),
        (
            {"search": {**SEARCH, "trials": 2, "seeds": [4]}},
            ConfigError,
            "search.trials = 2 but search.seeds has 1",
        ),
        (
            {"search": {**SEARCH, "overrides": {"model": {"layers": 5}}}},
            ConfigError,
            "model.layers=5.*same space",
        ),
        ({"hand_designed": {"cell": "released"}}, ConfigError, "released cell has 5 blocks"),
        ({"hand_designed": {"cell": "searched"}}, ConfigError, "needs search trials"),
        (
            {"hand_designed": {"cell": "released", "families": ["spiral"]}},
            ConfigError,
            "valid families: constant-4",
        ),
        ({"random": {"num": 2, "largest_by": "depth"}}, ConfigError, "largest_by must be one of"),
        ({"random": {"num": 2, "params": [2, 1]}}, ConfigError, "random: params range is empty"),
        ({"random": {"num": -1}}, ConfigError, "num >= 0"),
        ({"random": None}, ConfigError, "no candidates"),
        ({"layers": None, "random": {"num": 2}}, ConfigError, "set layers and blocks"),
    ],
)
def test_invalid_study_configs_are_refused_with_the_key(tmp_path, change, error, message):
    data = study_data(tmp_path)
    for key, value in change.items():
        if key == "train" and "config" not in value:
            data["train"]["overrides"].update(value["overrides"])
        else:
            data[key] = value
    with pytest.raises(error, match=message):
        Study(load(tmp_path, data))


def test_study_refuses_what_would_fail_mid_study(tmp_path):
    data = study_data(tmp_path)
    data["train"]["overrides"]["model"]["preset"] = "autodeeplab-s"
    with pytest.raises(ConfigError, match=r"model\.genotype and model\.preset must be null"):
        Study(load(tmp_path, data))
    data = study_data(tmp_path)
    data["train"]["overrides"]["max_steps"] = 1
    with pytest.raises(ConfigError, match="max_steps must be null"):
        Study(load(tmp_path, data))
    # a crop the deepest level of a candidate cannot take (constant-32 reaches stride 32)
    cell = str(genotype_file(tmp_path))
    data = study_data(
        tmp_path, random=None, hand_designed={"cell": cell, "families": ["constant-32"]}
    )
    data["train"]["overrides"]["data"] = {**DATA, "crop_size": 24}
    with pytest.raises(ConfigError, match="crop_size 24 is too small for candidate hand-constant"):
        Study(load(tmp_path, data))
    # a genotype file from another space
    other = genotype_file(tmp_path, path=(0, 1, 1, 2), name="deep.json")
    data = study_data(tmp_path, genotypes=[str(other)])
    with pytest.raises(ConfigError, match=r"deep\.json has 4 layers"):
        Study(load(tmp_path, data))


def test_random_candidates_are_the_sampler_draws_with_the_training_width(tmp_path):
    data = study_data(tmp_path, random={"num": 3, "seed": 7, "params": [0, 1e9]})
    study = Study(load(tmp_path, data))
    expected = sample_genotypes(
        3,
        7,
        layers=3,
        blocks=2,
        params=(0, 1e9),
        num_classes=study.num_classes,
        filter_multiplier=2,
        network_options={"aspp_channels": 8, "decoder_channels": 8, "low_level_reduced": 4},
        input_size=(32, 32),
    )
    assert [c.genotype for c in study.candidates] == expected
    assert [c.name for c in study.candidates] == ["random-0", "random-1", "random-2"]


# ---------------------------------------------------------------------------- statistics
def planted(name, kind, values, params=1_000_000, supernet=None):
    return CandidateResult(
        name=name,
        kind=kind,
        genotype=f"g-{name}",
        source={},
        params=params,
        multiply_adds=10 * params,
        seeds=tuple(range(len(values))),
        miou=tuple(values),
        best_miou=tuple(values),
        errors=(None,) * len(values),
        supernet_miou=supernet,
    )


def test_statistics_match_hand_computation():
    # random means 0.10 .. 0.50 (mean 0.30, sample std sqrt(0.025)); two seeds each, +-d
    rows = [
        planted(f"random-{i}", "random", [m - d, m + d])
        for i, (m, d) in enumerate(
            [(0.1, 0.01), (0.2, 0.02), (0.3, 0.01), (0.4, 0.03), (0.5, 0.01)]
        )
    ]
    rows += [
        planted("search-s0", "searched", [0.44, 0.46], supernet=0.2),  # mean 0.45
        # mean 0.06, below every random one, but the better supernet: the paper's rule picks it
        planted("search-s1", "searched", [0.05, 0.07], supernet=0.3),
        planted("hand-a", "hand-designed", [0.33, 0.37]),  # mean 0.35
        planted("hand-b", "hand-designed", [0.6, 0.6]),  # mean 0.60, the best overall
    ]
    s = summarize(rows)
    rand_sd = math.sqrt((0.2**2 + 0.1**2 + 0 + 0.1**2 + 0.2**2) / 4)
    assert s["random"]["n"] == 5
    assert s["random"]["mean"] == pytest.approx(0.3)
    assert s["random"]["std"] == pytest.approx(rand_sd)
    assert (s["random"]["min"], s["random"]["max"]) == pytest.approx((0.1, 0.5))
    # order of means: hand-b .60, random-4 .50, search-s0 .45, random-3 .40, hand-a .35, ...
    assert s["ranks"] == {
        "hand-b": 1,
        "random-4": 2,
        "search-s0": 3,
        "random-3": 4,
        "hand-a": 5,
        "random-2": 6,
        "random-1": 7,
        "random-0": 8,
        "search-s1": 9,
    }
    s0, s1 = s["searched"]
    assert s0["rank"] == 3 and s0["z_score"] == pytest.approx(0.15 / rand_sd)
    assert s0["random_beaten"] == 4 and s0["random_n"] == 5
    assert s1["z_score"] == pytest.approx(-0.24 / rand_sd) and s1["random_beaten"] == 0
    assert s0["std"] == pytest.approx(0.01 * math.sqrt(2))
    # pooled over 9 candidates with one degree of freedom each: s_i^2 = 2 d_i^2
    ds = [0.01, 0.02, 0.01, 0.03, 0.01, 0.01, 0.01, 0.02, 0.0]
    assert s["seed_noise"] == pytest.approx(math.sqrt(sum(2 * d * d for d in ds) / 9))
    # seed 0 is m - d and seed 1 is m + d for every candidate
    means = [0.1, 0.2, 0.3, 0.4, 0.5, 0.45, 0.06, 0.35, 0.6]
    assert s["seed_means"] == {
        "0": pytest.approx(np.mean(means) - np.mean(ds)),
        "1": pytest.approx(np.mean(means) + np.mean(ds)),
    }
    assert s["best_hand_designed"] == {"name": "hand-b", "mean": pytest.approx(0.6), "rank": 1}
    assert s["best"]["name"] == "hand-b"
    # random candidates only: MSB = 2 * var(means) = 0.05, MSW = sum(2 d^2) / 5 = 0.00064
    signal = s["architecture_signal"]
    assert signal["candidates"] == 5 and signal["runs"] == 10
    assert signal["f"] == pytest.approx(0.05 / 0.00064)
    assert signal["reliability"] == pytest.approx(1 - 0.00064 / 0.05)
    assert signal["architecture_std"] == pytest.approx(math.sqrt((0.05 - 0.00064) / 2))
    # Spearman-Brown: n seeds give 1 - 1/F_n with F_n = 1 + n var_a / var_e; 0.8 at n = 4 var_e /
    # var_a = 4 * 0.00064 / 0.02468 = 0.10: one seed is enough
    assert signal["seeds_for_reliability_0.8"] == 1
    # median of the searched means (0.45, 0.06) = 0.255, against random and hand-designed
    med = s["searched_median"]
    assert med["n"] == 2 and med["mean"] == pytest.approx(0.255)
    assert med["minus_random_mean"] == pytest.approx(0.255 - 0.3)
    assert med["random_stds_above_mean"] == pytest.approx(-0.045 / rand_sd)
    assert med["minus_best_hand_designed"] == pytest.approx(0.255 - 0.6)
    assert med["seed_noise"] == s["seed_noise"]
    assert s["selected_by_supernet"] == {
        "name": "search-s1",
        "supernet_mIoU": 0.3,
        "mean": pytest.approx(0.06),
        "rank": 9,
        "z_score": pytest.approx(-0.24 / rand_sd),
    }
    assert s["consensus"] is None
    # two consensus candidates (means 0.42 and 0.22): each against the random ones, and their
    # median 0.32; the searched median stays that of the searched candidates
    groups = [
        dataclasses.replace(
            planted(f"search-consensus-g{k}", "consensus", values), source={"search_seeds": seeds}
        )
        for k, (values, seeds) in enumerate((([0.41, 0.43], [0, 1]), ([0.22, 0.22], [2, 3])))
    ]
    c = summarize(rows + groups)
    assert c["searched_median"]["mean"] == pytest.approx(0.255)
    g0, g1 = c["consensus"]["groups"]
    assert c["consensus"]["size"] == 2 and g1["search_seeds"] == [2, 3]
    assert g0["rank"] == 4 and g1["rank"] == 8  # behind .60 .50 .45 / and .42 .40 .35 .30
    assert g0["z_score"] == pytest.approx(0.12 / rand_sd) and g0["random_beaten"] == 4
    assert g1["z_score"] == pytest.approx(-0.08 / rand_sd) and g1["random_beaten"] == 2
    assert g0["minus_best_hand_designed"] == pytest.approx(0.42 - 0.6)
    med = c["consensus"]["median"]
    assert med["n"] == 2 and med["mean"] == pytest.approx(0.32)
    assert med["random_stds_above_mean"] == pytest.approx(0.02 / rand_sd)
    assert med["minus_best_hand_designed"] == pytest.approx(0.32 - 0.6)
    assert summarize(rows + groups[:1])["consensus"]["median"] is None  # one: no median
    # without supernet scores (or searched candidates) there is nothing to select
    bare = summarize([dataclasses.replace(r, supernet_miou=None) for r in rows])
    assert bare["selected_by_supernet"] is None
    assert summarize(rows[:5])["searched_median"] is None


def test_selection_by_supernet_per_group_of_searches_against_hand_computation():
    # random means 0.10 .. 0.50 as above (mean 0.30); best hand-designed 0.35
    rows = [
        planted(f"random-{i}", "random", [m, m]) for i, m in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])
    ]
    rows.append(planted("hand-a", "hand-designed", [0.35, 0.35]))
    # (seed, retrained mean, supernet mIoU); groups {0, 1}, {2, 3}, {4, 5}: the rule picks
    # seed 1 (0.12 > 0.10), seed 2 (0.30 > 0.25) and seed 5 (0.20 > 0.19); the best retrained
    # trial of each group (0.45, 0.40, 0.33) is not what it picks in the first two
    trials = [(0, 0.45, 0.10), (1, 0.15, 0.12), (2, 0.38, 0.30), (3, 0.40, 0.25)]
    trials += [(4, 0.33, 0.19), (5, 0.25, 0.20)]
    rows += [
        dataclasses.replace(
            planted(f"search-s{k}", "searched", [m, m], supernet=sn), source={"search_seed": k}
        )
        for k, m, sn in trials
    ]
    rand_sd = math.sqrt((0.2**2 + 0.1**2 + 0 + 0.1**2 + 0.2**2) / 4)
    s = summarize(rows, [[0, 1], [2, 3], [4, 5]])
    sel = s["selected_by_supernet_groups"]
    assert sel["size"] == 2
    assert [g["name"] for g in sel["groups"]] == ["search-s1", "search-s2", "search-s5"]
    assert [g["search_seeds"] for g in sel["groups"]] == [[0, 1], [2, 3], [4, 5]]
    assert [g["supernet_mIoU"] for g in sel["groups"]] == [0.12, 0.30, 0.20]
    g0, g1, g2 = sel["groups"]
    # order of means: .50 .45 .40 .40 .38 .35 .33 .30 .25 .20 .15 .10
    assert (g0["rank"], g1["rank"], g2["rank"]) == (11, 5, 9)
    assert g1["z_score"] == pytest.approx(0.08 / rand_sd) and g1["random_beaten"] == 3
    assert g0["minus_best_hand_designed"] == pytest.approx(0.15 - 0.35)
    # the median of 0.15, 0.38, 0.25
    med = sel["median"]
    assert med["n"] == 3 and med["mean"] == pytest.approx(0.25)
    assert med["random_stds_above_mean"] == pytest.approx(-0.05 / rand_sd)
    assert med["minus_best_hand_designed"] == pytest.approx(0.25 - 0.35)
    # the overall rule still picks among all six
    assert s["selected_by_supernet"]["name"] == "search-s2"
    # one group (or none) is no replicate; a group without any supernet score selects nothing
    assert summarize(rows, [[0, 1, 2, 3, 4, 5]])["selected_by_supernet_groups"] is None
    assert summarize(rows)["selected_by_supernet_groups"] is None
    unscored = [
        dataclasses.replace(r, supernet_miou=None) if r.name in ("search-s4", "search-s5") else r
        for r in rows
    ]
    assert summarize(unscored, [[0, 1], [2, 3], [4, 5]])["selected_by_supernet_groups"] is None


def test_architecture_signal_against_hand_computation_and_a_regression():
    # the six random architectures of the README's first synthetic study (mIoU %, 2 seeds)
    runs = [[20.97, 21.12], [20.88, 20.19], [19.94, 19.84], [18.40, 19.03], [15.98, 20.55]]
    runs.append([20.66, 14.24])
    means = [sum(r) / 2 for r in runs]
    msb = 2 * np.var(means, ddof=1)  # 3.92: the means spread as seed noise alone would make
    msw = sum((a - b) ** 2 / 2 for a, b in runs) / 6  # 5.25
    signal = architecture_signal(runs)
    assert signal["f"] == pytest.approx(msb / msw) and signal["f"] < 1
    assert signal["reliability"] == 0.0 and signal["architecture_std"] == 0.0
    assert signal["seeds_for_reliability_0.8"] is None  # no number of seeds would do

    # unequal seed counts and a diverged run: the mean squares from a least-squares fit of
    # the group means (a second formula), n0 from its textbook definition
    groups = [[0.5, 0.6, 0.55], [0.2, math.nan], [0.3, 0.35], [0.9, 0.8, 0.85, 0.95], [math.nan]]
    kept = [[x for x in g if math.isfinite(x)] for g in groups if any(map(math.isfinite, g))]
    y = np.concatenate(kept)
    design = np.zeros((y.size, len(kept)))
    design[np.arange(y.size), np.repeat(np.arange(len(kept)), [len(g) for g in kept])] = 1
    fit = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    ss_within, ss_total = np.sum((y - fit) ** 2), np.sum((y - y.mean()) ** 2)
    k, n = len(kept), y.size
    msb, msw = (ss_total - ss_within) / (k - 1), ss_within / (n - k)
    n0 = (n - sum(len(g) ** 2 for g in kept) / n) / (k - 1)
    signal = architecture_signal(groups)
    assert (signal["candidates"], signal["runs"]) == (4, 10)
    assert signal["f"] == pytest.approx(msb / msw)
    assert signal["architecture_std"] == pytest.approx(math.sqrt((msb - msw) / n0))
    assert signal["reliability"] == pytest.approx(1 - msw / msb)

    assert architecture_signal([[0.5, 0.6]]) is None  # one candidate
    assert architecture_signal([[0.5], [0.6]]) is None  # no seed noise measurable
    exact = architecture_signal([[0.5, 0.5], [0.6, 0.6]])  # deterministic training
    assert exact["f"] is None and exact["reliability"] == 1.0


def test_architecture_signal_recovers_the_spread_of_planted_architectures():
    # true scores N(0, 2^2), seed noise N(0, 1), 3 seeds: the estimate is unbiased for the
    # variance, and the reliability is 4 / (4 + 1/3)
    rng = np.random.default_rng(0)
    true = rng.normal(0.0, 2.0, size=2000)
    runs = true[:, None] + rng.normal(0.0, 1.0, size=(2000, 3))
    signal = architecture_signal(runs.tolist())
    assert signal["architecture_std"] == pytest.approx(2.0, rel=0.05)
    assert signal["reliability"] == pytest.approx(4 / (4 + 1 / 3), abs=0.01)
    # var_a 4, var_e 1: a mean over n seeds is 80 % architecture when 4 / (4 + 1/n) = 0.8, n = 1
    assert signal["seeds_for_reliability_0.8"] == 1
    # var_a 0.25, var_e 1: 0.25 / (0.25 + 1/n) = 0.8 at n = 16
    weak = rng.normal(0.0, 0.5, size=4000)[:, None] + rng.normal(0.0, 1.0, size=(4000, 2))
    assert architecture_signal(weak.tolist())["seeds_for_reliability_0.8"] in range(13, 20)
    # no architecture effect at all: F near 1, reliability near 0
    null = architecture_signal(rng.normal(0.0, 1.0, size=(2000, 3)).tolist())
    assert null["f"] == pytest.approx(1.0, abs=0.1) and null["reliability"] < 0.1


def test_rank_z_and_pooled_std_edge_cases():
    assert competition_ranks([0.5, 0.7, 0.7, math.nan, 0.1]) == [3, 1, 1, 5, 4]
    assert competition_ranks([]) == []
    assert z_score(0.5, [0.4]) is None  # one reference: no spread
    assert z_score(0.5, [0.4, 0.4]) is None  # no spread
    assert z_score(0.5, [0.2, 0.4, math.nan]) == pytest.approx(0.2 / math.sqrt(0.02))
    assert mean_std([0.3]) == (0.3, None)
    assert pooled_std([[0.1], [0.2]]) is None
    # unequal group sizes: the pooled variance is the sum of squared deviations from each
    # group's own mean over (N - groups), a second formula
    groups = [[0.1, 0.2, 0.6], [0.3, 0.5], [0.9], [0.2, math.nan, 0.4, 0.3]]
    finite = [[x for x in g if math.isfinite(x)] for g in groups if sum(map(math.isfinite, g)) > 1]
    ss = sum(np.var(g) * len(g) for g in finite)
    dof = sum(len(g) for g in finite) - len(finite)
    assert pooled_std(groups) == pytest.approx(math.sqrt(ss / dof))


def test_study_figure_marks_the_kinds_and_merges_candidates_of_one_architecture():
    rows = [
        planted("random-0", "random", [0.2, 0.3], params=2_000_000),
        planted("random-1", "random", [0.4, 0.5], params=3_000_000),
        planted("search-s0", "searched", [0.35, 0.45], params=2_500_000),
        planted("hand-a", "hand-designed", [0.3, 0.3], params=1_500_000),
    ]
    cons = planted("search-consensus", "consensus", [0.5, 0.5], params=1_800_000)
    rows.append(CandidateResult(**{**cons.__dict__, "source": {"search_seeds": [0, 1]}}))
    twin = planted("hand-b", "hand-designed", [0.35, 0.45], params=2_500_000)
    rows.append(CandidateResult(**{**twin.__dict__, "same_as": "search-s0"}))
    fig = draw_study(rows, summarize(rows), (64, 64))
    left, right = fig.axes
    assert left.get_xlabel() == "parameters (M)"
    assert right.get_xlabel() == "Multi-Adds at 64x64 (M)"  # 10x params: 15..30M
    for ax in (left, right):
        labels = sorted(t.get_text() for t in ax.texts)
        assert labels == ["a", "search-consensus", "search-s0 = b"]  # random points unnamed
        markers = Counter(
            line.get_marker() for line in ax.lines for _ in line.get_xdata()
        )  # error-bar caps are the "_" markers, two per point
        assert {m: markers[m] for m in "o*sDP"} == {"o": 2, "*": 1, "s": 1, "D": 0, "P": 1}
        (band,) = [p for p in ax.patches if p.get_label() == "random mean ± std"]
        y = (band.get_y(), band.get_y() + band.get_height())
        sd = math.sqrt(2 * 0.1**2)  # random means 0.25 and 0.45
        assert y == pytest.approx((100 * (0.35 - sd), 100 * (0.35 + sd)))


def test_a_diverged_candidate_ranks_last_and_stays_out_of_the_random_statistics():
    rows = [
        planted("random-0", "random", [0.2, 0.3]),
        planted("random-1", "random", [0.4, 0.5]),
        planted("random-2", "random", [math.nan, 0.1]),
        planted("search-s0", "searched", [0.35, 0.35]),
    ]
    s = summarize(rows)
    assert s["random"]["n"] == 3 and s["random"]["mean"] == pytest.approx(0.35)
    assert s["ranks"]["random-2"] == 4 and s["ranks"]["search-s0"] == 2
    assert s["searched"][0]["z_score"] == pytest.approx(0.0)
    text = dumps_json(s)
    assert json.loads(text)["random"]["mean"] == pytest.approx(0.35)


# ---------------------------------------------------------------------------- end to end
def test_study_runs_every_candidate_and_writes_json_markdown_and_figure(tmp_path, capsys):
    mine = genotype_file(tmp_path)
    data = study_data(
        tmp_path,
        layers=None,  # layers and blocks from the search config
        blocks=None,
        search=SEARCH,
        hand_designed={"cell": "searched", "families": ["constant-8"]},
        genotypes=[str(mine)],
    )
    cfg = load(tmp_path, data)
    result = run_study(cfg)
    out = tmp_path / "study"
    assert load_study_config(out / "config.yaml") == cfg  # the rerun command of study.md
    assert f"--config {out / 'config.yaml'}" in (out / "study.md").read_text()
    names = ["search-s0", "random-0", "random-1", "hand-constant-8", "file-mine"]
    doc = strict_json(out / "study.json")
    assert sorted(c["name"] for c in doc["candidates"]) == sorted(names)
    architectures = {c["genotype"] for c in doc["candidates"]}
    assert result.ran == 1 + len(architectures) * 2

    searched = Genotype.load(out / "search" / "search-s0" / "genotype.json")
    by_name = {c["name"]: c for c in doc["candidates"]}
    assert by_name["search-s0"]["genotype"] == str(searched)
    assert by_name["hand-constant-8"]["genotype"] == str(
        Genotype(cell=searched.cell, path=space.hand_designed_paths(3)["constant-8"])
    )
    assert by_name["file-mine"]["genotype"] == str(Genotype.load(mine))
    for c in doc["candidates"]:
        # per-seed mIoU = the last eval record of each training run's own log
        for seed, miou in zip(c["seeds"], c["mIoU"], strict=True):
            run = out / "train" / c["name"] / f"seed{seed}"
            evals = [
                json.loads(line)
                for line in (run / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["type"] == "eval"
            ]
            assert evals[-1]["iteration"] == 2 and evals[-1]["mIoU"] == miou
            assert Genotype.load(run / "genotype.json") == Genotype.from_string(c["genotype"])
        assert c["seeds"] == [0, 1]
        assert c["mean"] == pytest.approx(np.mean(c["mIoU"]))
        assert c["std"] == pytest.approx(np.std(c["mIoU"], ddof=1))
        # parameters of the real network the candidate trains as
        model = AutoDeepLab(
            Genotype.from_string(c["genotype"]),
            num_classes=7,
            filter_multiplier=2,
            aspp_channels=8,
            decoder_channels=8,
            low_level_reduced=4,
        )
        assert c["params"] == sum(p.numel() for p in model.parameters())
        assert c["multiply_adds"] > 0
    # summary = the statistics recomputed from the table
    means = {c["name"]: np.mean(c["mIoU"]) for c in doc["candidates"]}
    random = [means["random-0"], means["random-1"]]
    s = doc["summary"]
    assert s["random"]["mean"] == pytest.approx(np.mean(random))
    assert s["searched"][0]["rank"] == 1 + sum(m > means["search-s0"] for m in means.values())
    expected_z = (means["search-s0"] - np.mean(random)) / np.std(random, ddof=1)
    assert s["searched"][0]["z_score"] == pytest.approx(expected_z)
    # the supernet mIoU of the search trial's own summary, and the trial it selects
    search_summary = json.loads((out / "search" / "search-s0" / "summary.json").read_text())
    assert by_name["search-s0"]["supernet_mIoU"] == search_summary["supernet_mIoU"]
    assert by_name["random-0"]["supernet_mIoU"] is None
    assert s["selected_by_supernet"]["name"] == "search-s0"
    # how settled the search ended: the figures of its own last epoch record
    epochs = [
        json.loads(line)
        for line in (out / "search" / "search-s0" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "epoch"
    ]
    settled = by_name["search-s0"]["search_convergence"]
    assert settled["alpha_entropy_fraction"] == epochs[-1]["alpha_entropy_fraction"]
    assert settled["path_probability"] == pytest.approx(math.exp(epochs[-1]["path_log_prob"]))
    assert settled["arch_epochs"] == sum(e["arch_steps"] > 0 for e in epochs) > 0
    assert 1 <= settled["stable_path_epochs"] <= settled["arch_epochs"]
    searched = [e for e in epochs if e["arch_steps"] > 0]
    beta_z = [e["beta_grad_z"] for e in searched if e["beta_grad_z"] is not None]
    assert beta_z  # epochs of two or more architecture steps: a standard error
    assert settled["beta_grad_z"] == pytest.approx(sum(beta_z) / len(beta_z))
    assert by_name["random-0"]["search_convergence"] is None
    assert "## Search trials" in (out / "study.md").read_text()
    assert "| beta signal | ratio-rule path | log P/P0 |" in (out / "study.md").read_text()
    assert settled["path_log_ratio"] == epochs[-1]["path_log_ratio"]
    p, q = epochs[-1]["probability_path"], epochs[-1]["ratio_path"]
    assert (settled["probability_path"], settled["ratio_path"]) == (p, q)
    trials = (out / "study.md").read_text().split("## Search trials")[1]
    row = next(x for x in trials.splitlines() if x.startswith("| search-s0 |"))
    cells = [x.strip() for x in row.strip().strip("|").split("|")]
    assert cells[-2:] == ["same" if p == q else q, f"{epochs[-1]['path_log_ratio']:.2f}"]
    assert s["searched_median"]["mean"] == pytest.approx(means["search-s0"])
    per_seed_var = [np.var(c["mIoU"], ddof=1) for c in doc["candidates"]]
    assert s["seed_noise"] == pytest.approx(math.sqrt(np.mean(per_seed_var)))
    assert [c["rank"] for c in doc["candidates"]] == sorted(c["rank"] for c in doc["candidates"])
    by_random = [by_name[n]["mIoU"] for n in ("random-0", "random-1")]
    assert s["architecture_signal"] == pytest.approx(architecture_signal(by_random))

    md = (out / "study.md").read_text()
    assert "Does this budget tell architectures apart? Between the 2 random" in md
    assert all(f"| {n} |" in md for n in names)
    assert "(study.png)" in md and (out / "study.html").is_file()
    assert (out / "study.png").read_bytes().startswith(PNG_SIGNATURE)
    log = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(log) == result.ran and log[0]["kind"] == "search"
    printed = capsys.readouterr().out
    assert f"[{result.ran}/{result.ran}] train file-mine/seed1: mIoU" in printed
    assert "ETA" in printed

    # a rerun redoes nothing and rewrites the same results
    stamps = {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name in ("last.pt", "trial.json")
    }
    again = run_study(load(tmp_path, data))
    assert again.ran == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert strict_json(out / "study.json") == doc

    # a search record written before the convergence figures existed: read from the run's log
    trial = out / "search" / "search-s0" / "trial.json"
    record = json.loads(trial.read_text())
    del record["convergence"]
    trial.write_text(json.dumps(record))
    assert run_study(load(tmp_path, data)).ran == 0
    assert strict_json(out / "study.json") == doc


def test_study_retrains_the_consensus_of_each_group_of_searches(tmp_path):
    from autodeeplab.consensus import consensus

    data = study_data(
        tmp_path,
        layers=None,
        blocks=None,
        search={**SEARCH, "trials": 4, "consensus": True, "group_size": 2},
        train_seeds=[0],
    )
    run_study(load(tmp_path, data))
    out = tmp_path / "study"
    doc = json.loads((out / "study.json").read_text())
    by_name = {c["name"]: c for c in doc["candidates"]}
    means = {c["name"]: c["mean"] for c in doc["candidates"]}
    random = [means["random-0"], means["random-1"]]
    s = doc["summary"]["consensus"]
    assert s["size"] == 2 and [g["name"] for g in s["groups"]] == [
        f"{CONSENSUS}-g0",
        f"{CONSENSUS}-g1",
    ]
    for group, seeds in zip(s["groups"], ([0, 1], [2, 3]), strict=True):
        name = group["name"]
        runs = [out / "search" / f"search-s{k}" for k in seeds]
        assert by_name[name]["kind"] == "consensus" and group["search_seeds"] == seeds
        assert Genotype.from_string(by_name[name]["genotype"]) == consensus(runs).genotype
        assert group["mean"] == pytest.approx(means[name])
        assert group["rank"] == 1 + sum(m > means[name] for m in means.values())
        assert group["random_beaten"] == sum(m < means[name] for m in random)
        if np.std(random) > 0:
            z = (means[name] - np.mean(random)) / np.std(random, ddof=1)
            assert group["z_score"] == pytest.approx(z)
    # the median of the two consensus architectures, apart from the searched median
    assert s["median"]["n"] == 2
    assert s["median"]["mean"] == pytest.approx(
        np.median([means[f"{CONSENSUS}-g{k}"] for k in (0, 1)])
    )
    assert doc["summary"]["searched_median"]["n"] == 4
    md = (out / "study.md").read_text()
    assert "Consensus of the 2 searches with seeds 2, 3 (`search-consensus-g1`" in md
    assert "Median of the 2 consensus architectures (of 2)" in md
    # per group, the trial whose search run's summary reports the best supernet mIoU
    selected = doc["summary"]["selected_by_supernet_groups"]
    for group, seeds in zip(selected["groups"], ([0, 1], [2, 3]), strict=True):
        scores = {
            k: json.loads((out / "search" / f"search-s{k}" / "summary.json").read_text())[
                "supernet_mIoU"
            ]
            for k in seeds
        }
        best = max(seeds, key=lambda k: scores[k])
        assert group["name"] == f"search-s{best}" and group["search_seeds"] == seeds
        assert group["supernet_mIoU"] == pytest.approx(scores[best])
        assert group["mean"] == pytest.approx(means[group["name"]])
    assert selected["median"]["mean"] == pytest.approx(
        np.median([g["mean"] for g in selected["groups"]])
    )
    assert "Selected by supernet mIoU among the 2 searches with seeds 0, 1: `search-s" in md
    assert "architectures selected by supernet mIoU (one per 2 searches)" in md


def test_consensus_candidates_are_planned_and_checked(tmp_path):
    plan = Study(
        load(tmp_path, study_data(tmp_path, search={**SEARCH, "trials": 3, "consensus": True}))
    )
    cons = [c for c in plan.candidates if c.kind == "consensus"]
    assert [(c.name, c.source["search_seeds"]) for c in cons] == [(CONSENSUS, [0, 1, 2])]
    # groups without the consensus: only the summary's per-group selection, no new candidate
    grouped = Study(
        load(
            tmp_path,
            study_data(tmp_path, name="g", search={**SEARCH, "trials": 4, "group_size": 2}),
        )
    )
    assert grouped.search_groups() == [[0, 1], [2, 3]] and grouped.consensus_groups() == []
    assert not [c for c in grouped.candidates if c.kind == "consensus"]
    assert plan.search_groups() == [[0, 1, 2]]
    for search, message in (
        ({"consensus": True}, "the consensus of one search trial"),  # one trial
        ({"trials": 3, "consensus": True, "group_size": 2}, "number of trials it divides"),
        ({"trials": 3, "group_size": 2}, "number of trials it divides"),
        ({"trials": 4, "consensus": True, "group_size": 1}, "at least 2"),
    ):
        data = study_data(tmp_path, name="bad", search={**SEARCH, **search})
        with pytest.raises(ConfigError, match=message):
            Study(load(tmp_path, data))


def test_a_dints_search_trial_gives_a_multi_path_candidate(tmp_path):
    """A study whose search config is a DiNTS one retrains the decoded multi-path network and
    builds the hand-designed candidates from its cell."""
    search = json.loads(json.dumps(SEARCH))
    search["config"] = str(ROOT / "configs" / "search" / "synthetic-dints.yaml")
    # two architecture steps leave every transition near p = 1/2, where the decoded topology
    # (seed 0) keeps several paths; without a memory target nothing pushes it to one path
    search["overrides"]["relaxation"] = {"memory_target": None}
    search["overrides"]["data"] = {
        **DATA,
        "crop_size": 48,
        "options": {**DATA["options"], "size": 48},
    }
    train = json.loads(json.dumps(TRAIN))
    train["overrides"]["data"] = {
        **DATA,
        "crop_size": 48,
        "options": {**DATA["options"], "size": 48},
    }
    data = study_data(
        tmp_path,
        layers=None,
        blocks=None,
        search=search,
        train=train,
        train_seeds=[0],
        random=None,
        hand_designed={"cell": "searched", "families": ["constant-4"]},
    )
    result = run_study(load(tmp_path, data))
    out = tmp_path / "study"
    searched = Genotype.load(out / "search" / "search-s0" / "genotype.json")
    assert searched.is_multi_path, searched
    doc = strict_json(out / "study.json")
    by_name = {c["name"]: c for c in doc["candidates"]}
    assert by_name["search-s0"]["genotype"] == str(searched)
    assert by_name["hand-constant-4"]["genotype"] == str(
        Genotype(cell=searched.cell, path=space.hand_designed_paths(3)["constant-4"])
    )
    assert result.ran == 1 + 2
    for name, c in by_name.items():
        run = out / "train" / name / "seed0"
        assert Genotype.load(run / "genotype.json") == Genotype.from_string(c["genotype"])
        model = AutoDeepLab(
            Genotype.from_string(c["genotype"]),
            num_classes=7,
            filter_multiplier=2,
            aspp_channels=8,
            decoder_channels=8,
            low_level_reduced=4,
        )
        assert c["params"] == sum(p.numel() for p in model.parameters())
        assert c["mIoU"][0] is not None


def test_killed_study_resumes_without_redoing_finished_trials(tmp_path, monkeypatch):
    data = study_data(tmp_path, name="split")
    data["train"]["overrides"]["iterations"] = 3
    cfg = load(tmp_path, data)
    original = TrainEngine.train_step
    calls = {"steps": 0, "engines": 0}

    def killed_in_second_run(self, images, masks):
        calls["steps"] += 1
        if calls["steps"] == 5:  # second step of the second training run (3 + 2)
            raise KeyboardInterrupt
        return original(self, images, masks)

    monkeypatch.setattr(TrainEngine, "train_step", killed_in_second_run)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg)
    out = tmp_path / "split"
    first = out / "train" / "random-0" / "seed0"
    second = out / "train" / "random-0" / "seed1"
    assert (first / "trial.json").is_file() and not (second / "trial.json").exists()
    assert load_checkpoint(second / "last.pt")["iteration"] == 1
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    monkeypatch.setattr(TrainEngine, "train_step", original)
    init = TrainEngine.__init__

    def counting(self, *args, **kwargs):
        calls["engines"] += 1
        init(self, *args, **kwargs)

    monkeypatch.setattr(TrainEngine, "__init__", counting)
    resumed = run_study(cfg)
    assert resumed.ran == 3 and calls["engines"] == 3  # 2 of 4 runs left + the resumed one
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == stamps
    log = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["name"] for r in log] == [
        "random-0/seed0",
        "random-0/seed1",
        "random-1/seed0",
        "random-1/seed1",
    ]
    assert [r["resumed"] for r in log] == [False, True, False, False]

    full = run_study(load(tmp_path, study_data(tmp_path, name="full") | {"train": data["train"]}))
    a, b = strict_json(out / "study.json"), strict_json(tmp_path / "full" / "study.json")
    assert a["candidates"] == b["candidates"] and a["summary"] == b["summary"]
    assert resumed.summary == full.summary


def test_ctrl_c_stops_the_study_after_a_checkpoint(tmp_path, monkeypatch, capsys):
    data = study_data(tmp_path, random={"num": 1, "seed": 0}, train_seeds=[0])
    data["train"]["overrides"]["iterations"] = 3
    original = TrainEngine.train_step

    def step_then_ctrl_c(self, images, masks):
        value = original(self, images, masks)
        if self.iteration == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return value

    monkeypatch.setattr(TrainEngine, "train_step", step_then_ctrl_c)
    path = write_study(tmp_path, data)
    assert main(["study", "--config", str(path)]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    run = tmp_path / "study" / "train" / "random-0" / "seed0"
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    monkeypatch.setattr(TrainEngine, "train_step", original)
    assert main(["study", "--config", str(path)]) == 0
    assert json.loads((run / "trial.json").read_text())["resumed"] is True


def test_changed_study_config_is_refused_with_the_differing_keys(tmp_path):
    data = study_data(tmp_path, random={"num": 1, "seed": 0}, train_seeds=[0])
    data["train"]["overrides"]["iterations"] = 1
    run_study(load(tmp_path, data))
    changed = json.loads(json.dumps(data))
    changed["train"]["overrides"]["iterations"] = 2
    changed["train_seeds"] = [0, 1]
    with pytest.raises(StudyError) as err:
        run_study(load(tmp_path, changed))
    msg = str(err.value)
    assert "train.iterations: 1 -> 2" in msg and "train_seeds: [0] -> [0, 1]" in msg
    changed = json.loads(json.dumps(data))
    changed["random"]["seed"] = 3
    with pytest.raises(StudyError, match=r"random\.seed: 0 -> 3") as err:
        run_study(load(tmp_path, changed))
    assert "candidates.random-0" in str(err.value)  # another architecture was drawn
    # where and how fast trials run may change: nothing is redone
    same = json.loads(json.dumps(data))
    same["train"]["overrides"]["threads"] = 2
    same["train"]["overrides"]["log_interval"] = 7
    assert run_study(load(tmp_path, same)).ran == 0
    # a non-empty folder that holds no study
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(StudyError, match=r"holds no study\.yaml"):
        run_study(load(tmp_path, study_data(tmp_path, name="other")))


def test_a_study_written_before_a_key_existed_continues(tmp_path):
    """Keys added later (e.g. the search config's ``relaxation`` section, ``random.multi_path``)
    missing from an older study.yaml count as their neutral values; a real change does not."""
    data = study_data(
        tmp_path, search=SEARCH, layers=None, blocks=None, random={"num": 1, "seed": 0}
    )
    data["train_seeds"] = [0]
    study = Study(load(tmp_path, data))
    study.prepare()
    path = tmp_path / "study" / "study.yaml"
    record = yaml.safe_load(path.read_text())
    assert record["search"]["relaxation"]["name"] == "softmax"
    del record["search"]["relaxation"]  # as written before the section existed
    del record["random"]["multi_path"]
    del record["random"]["path"]
    del record["train"]["data"]["repeat"]
    path.write_text(yaml.safe_dump(record))
    Study(load(tmp_path, data)).prepare()  # continues
    changed = json.loads(json.dumps(data))
    changed["search"]["overrides"]["relaxation"] = {"name": "dints"}
    changed["search"]["overrides"]["data"] = {**DATA, "crop_size": 48}
    with pytest.raises(StudyError, match=r"search\.relaxation\.name: 'softmax' -> 'dints'"):
        Study(load(tmp_path, changed)).prepare()


def test_random_multi_path_candidates_are_the_samplers_draws(tmp_path):
    data = study_data(tmp_path, random={"num": 3, "seed": 5, "multi_path": True})
    data["train"]["overrides"]["data"] = {**DATA, "crop_size": 48}  # /32 nodes need > 32 px
    study = Study(load(tmp_path, data))
    drawn = [c.genotype for c in study.candidates if c.kind == "random"]
    assert drawn == sample_genotypes(3, 5, layers=3, blocks=2, multi_path=True)
    assert any(g.is_multi_path for g in drawn)


def test_hand_designed_paths_with_every_searched_cell_by_hand():
    """``hand_designed.cell: each``: per family the median over the cells, the paired
    differences searched minus family, and the best family as the hand-designed reference."""

    def row(name, kind, mean, **source):
        return dataclasses.replace(planted(name, kind, [mean - 0.01, mean + 0.01]), source=source)

    searched = {0: 0.50, 1: 0.40, 2: 0.30}
    rows = [row(f"search-s{k}", "searched", m, search_seed=k) for k, m in searched.items()]
    hand = {"a": [0.45, 0.42, 0.20], "b": [0.60, 0.10, 0.35]}
    for family, means in hand.items():
        rows += [
            row(
                f"hand-{family}-s{k}",
                "hand-designed",
                m,
                family=family,
                cell="each",
                search_seed=k,
                path=[0, 0, 0],
            )
            for k, m in enumerate(means)
        ]
    rows += [row(f"random-{i}", "random", m) for i, m in enumerate([0.2, 0.3])]
    s = summarize(rows)
    by_family = {f["family"]: f for f in s["hand_designed_paths"]}
    a, b = by_family["a"], by_family["b"]
    assert (a["n"], a["paired_n"], b["n"]) == (3, 3, 3)
    assert a["median"] == pytest.approx(0.42) and b["median"] == pytest.approx(0.35)
    assert a["mean"] == pytest.approx((0.45 + 0.42 + 0.20) / 3)
    d = [0.05, -0.02, 0.10]  # searched minus family a, trial by trial
    mean_d = sum(d) / 3
    sd = math.sqrt(sum((x - mean_d) ** 2 for x in d) / 2)
    assert a["mean_difference"] == pytest.approx(mean_d)
    assert a["se"] == pytest.approx(sd / math.sqrt(3))
    assert (a["better"], a["worse"], b["better"], b["worse"]) == (2, 1, 1, 2)
    assert s["best_hand_designed"] == {
        "name": "hand-a",
        "family": "a",
        "mean": pytest.approx(0.42),
        "rank": None,
        "cells": 3,
    }
    # the searched median (0.40) against the best family's median
    assert s["searched_median"]["minus_best_hand_designed"] == pytest.approx(0.40 - 0.42)
    # a study without them keeps the best single hand-designed candidate
    plain = summarize([*rows[:3], planted("hand-c", "hand-designed", [0.3, 0.3])])
    assert plain["hand_designed_paths"] == []
    assert plain["best_hand_designed"]["name"] == "hand-c"


def test_hand_designed_candidates_with_every_searched_cell(tmp_path):
    data = study_data(
        tmp_path,
        search={**SEARCH, "trials": 2},
        hand_designed={"cell": "each", "families": ["constant-4", "constant-8"]},
    )
    study = Study(load(tmp_path, data))
    hand = [c for c in study.candidates if c.kind == "hand-designed"]
    assert [c.name for c in hand] == [
        "hand-constant-4-s0",
        "hand-constant-8-s0",
        "hand-constant-4-s1",
        "hand-constant-8-s1",
    ]
    g0 = Genotype.load(genotype_file(tmp_path))
    g1 = Genotype(cell=(((0, "skip_connect"), (1, "sep_conv_3x3")),) * 2, path=(0, 0, 1))
    filled = {c.name: c.genotype for c in study.with_searched({0: g0, 1: g1})}
    assert filled["hand-constant-8-s0"] == Genotype(cell=g0.cell, path=(1, 1, 1))
    assert filled["hand-constant-4-s1"] == Genotype(cell=g1.cell, path=(0, 0, 0))
    data["search"] = None
    with pytest.raises(ConfigError, match="'each' needs search trials"):
        Study(load(tmp_path, data))


def test_a_study_with_every_searched_cell_on_the_hand_designed_paths(tmp_path):
    data = study_data(
        tmp_path,
        layers=None,
        blocks=None,
        search={**SEARCH, "trials": 2},
        hand_designed={"cell": "each", "families": ["constant-4", "constant-8"]},
        train_seeds=[0],
    )
    run_study(load(tmp_path, data))
    out = tmp_path / "study"
    doc = strict_json(out / "study.json")
    means = {c["name"]: c["mean"] for c in doc["candidates"]}
    families = {f["family"]: f for f in doc["summary"]["hand_designed_paths"]}
    for family in ("constant-4", "constant-8"):
        cells = [means[f"hand-{family}-s{k}"] for k in (0, 1)]
        diffs = [means[f"search-s{k}"] - means[f"hand-{family}-s{k}"] for k in (0, 1)]
        assert families[family]["median"] == pytest.approx(np.median(cells))
        assert families[family]["mean_difference"] == pytest.approx(np.mean(diffs))
    best = max(families.values(), key=lambda f: f["median"])
    assert doc["summary"]["best_hand_designed"]["family"] == best["family"]
    text = (out / "study.md").read_text()
    assert "The searched paths against the hand-designed paths, cell by cell" in text
    assert f"Best hand-designed path: `{best['family']}` with the searched cells" in text


def test_a_finished_run_copied_under_another_name_counts_under_its_new_name(tmp_path):
    """A run folder of the same computation (same key) copied from another study or candidate
    is reused, and its record carries the trial's own name and candidate."""
    from types import SimpleNamespace

    from autodeeplab.study import Trial, run_trial

    out = tmp_path / "train" / "hand-constant-8-s0" / "seed0"
    out.mkdir(parents=True)
    stored = {"kind": "train", "name": "hand-constant-8/seed0", "candidate": "hand-constant-8"}
    stored |= {"seed": 0, "key": "k1", "mIoU": 0.5}
    (out / "trial.json").write_text(json.dumps(stored))
    trial = Trial("train", "hand-constant-8-s0/seed0", 0, SimpleNamespace(output=str(out)), "k1")
    trial = dataclasses.replace(trial, candidate="hand-constant-8-s0")
    record = run_trial(trial)
    assert record["candidate"] == "hand-constant-8-s0" and record["name"] == trial.name
    assert record["mIoU"] == 0.5
    with pytest.raises(StudyError, match="written for another configuration"):
        run_trial(dataclasses.replace(trial, key="k2"))


def test_random_cells_on_a_fixed_path_are_the_samplers_draws(tmp_path):
    data = study_data(tmp_path, random={"num": 3, "seed": 5, "path": "constant-8"})
    study = Study(load(tmp_path, data))
    drawn = [c.genotype for c in study.candidates if c.kind == "random"]
    assert drawn == sample_genotypes(3, 5, layers=3, blocks=2, path=(1, 1, 1))
    data["random"]["path"] = [0, 1]
    with pytest.raises(ConfigError, match=r"random\.path: the path 0-1 has 2 layers, not 3"):
        Study(load(tmp_path, data))


def test_a_candidate_with_the_architecture_of_another_is_trained_once(tmp_path, capsys):
    cell = genotype_file(tmp_path, name="cell.json")
    twin = genotype_file(tmp_path, path=(1, 1, 1), name="twin.json")  # = hand-constant-8
    data = study_data(
        tmp_path,
        random=None,
        hand_designed={"cell": str(cell), "families": ["constant-4", "constant-8"]},
        genotypes=[str(twin)],
    )
    assert main(["study", "--config", str(write_study(tmp_path, data)), "--dry-run"]) == 0
    assert "file-twin is the same architecture as hand-constant-8: trained once" in (
        capsys.readouterr().out
    )
    result = run_study(load(tmp_path, data))
    assert result.ran == 2 * 2  # two architectures, two seeds
    assert not (tmp_path / "study" / "train" / "file-twin").exists()
    doc = strict_json(tmp_path / "study" / "study.json")
    by_name = {c["name"]: c for c in doc["candidates"]}
    assert by_name["file-twin"]["same_as"] == "hand-constant-8"
    assert by_name["hand-constant-8"]["same_as"] is None
    assert by_name["file-twin"]["mIoU"] == by_name["hand-constant-8"]["mIoU"]
    assert by_name["file-twin"]["rank"] == by_name["hand-constant-8"]["rank"]
    assert "file-twin (= hand-constant-8)" in (tmp_path / "study" / "study.md").read_text()


def test_a_diverged_training_run_is_reported_not_dropped(tmp_path, monkeypatch):
    data = study_data(tmp_path, train_seeds=[0])
    original = TrainEngine.train_step

    def diverges_for_random_1(self, images, masks):
        if "random-1" in self.cfg.output:
            self._check_finite(math.nan)  # the engine's own check of a NaN loss
        return original(self, images, masks)

    monkeypatch.setattr(TrainEngine, "train_step", diverges_for_random_1)
    result = run_study(load(tmp_path, data))
    doc = strict_json(tmp_path / "study" / "study.json")
    last = doc["candidates"][-1]
    assert last["name"] == "random-1" and last["mIoU"] == [None] and last["rank"] == 2
    assert "loss became nan" in last["errors"][0]
    assert "diverged" in (tmp_path / "study" / "study.md").read_text()
    assert result.ran == 2 and run_study(load(tmp_path, data)).ran == 0  # recorded, not retried


def test_search_divergence_stops_the_study(tmp_path, monkeypatch):
    def nan_loss(model, batch, ignore_index=255):
        return model(batch[0]).sum() * math.nan

    monkeypatch.setattr(search_engine, "segmentation_loss", nan_loss)
    data = study_data(tmp_path, search=SEARCH, random=None, layers=None, blocks=None)
    with pytest.raises(NonFiniteLossError):
        run_study(load(tmp_path, data))


# ---------------------------------------------------------------------------- command line
def test_cli_dry_run_lists_every_candidate_and_bad_input_exits_2(tmp_path, capsys):
    path = write_study(tmp_path, study_data(tmp_path, search=SEARCH, layers=None, blocks=None))
    assert main(["study", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("search-s0", "random-0", "random-1"):
        assert name in out
    assert "7 trials: 1 search, 3 architectures x 2 seeds" in out
    assert not (tmp_path / "study").exists()
    assert main(["study", "--config", str(path), "random.nmu=1"]) == 2
    assert "random.nmu" in capsys.readouterr().err
    assert main(["study", "--config", str(tmp_path / "none.yaml")]) == 2


@pytest.mark.slow
def test_parallel_jobs_give_the_sequential_results(tmp_path):
    data = study_data(tmp_path, name="sequential", train_seeds=[0])
    run_study(load(tmp_path, data))
    parallel = run_study(
        load(tmp_path, {**data, "output": str(tmp_path / "parallel")}), jobs=2, devices=["cpu"]
    )
    assert parallel.ran == 2
    assert_same_results(tmp_path / "sequential", tmp_path / "parallel")


def assert_same_results(reference: Path, other: Path) -> None:
    """``other`` ran the two random trials of ``study_data(train_seeds=[0])`` itself and has
    ``reference``'s results."""
    a, b = strict_json(reference / "study.json"), strict_json(other / "study.json")
    assert a["candidates"] == b["candidates"] and a["summary"] == b["summary"]
    log = [json.loads(line) for line in (other / "trials.jsonl").open()]
    assert sorted(r["name"] for r in log) == ["random-0/seed0", "random-1/seed0"]


def test_sigterm_to_the_study_process_stops_its_workers_with_checkpoints(tmp_path):
    """A SIGTERM for the study process alone (what a scheduler's ``kill PID`` sends) reaches
    the trials running in its worker processes: each checkpoints and stops, no worker is left
    behind to start queued trials, and the same command continues the study."""
    data = study_data(tmp_path, random={"num": 3, "seed": 0}, train_seeds=[0])
    data["train"]["overrides"]["iterations"] = 400
    data["train"]["overrides"]["checkpoint_interval"] = 0
    data["train"]["overrides"]["log_interval"] = 1
    path = write_study(tmp_path, data)
    cmd = [sys.executable, "-m", "autodeeplab", "study", "--config", str(path), "--jobs", "2"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "study" / "train"
    deadline = time.monotonic() + 120

    def training(run: Path) -> bool:  # a step record: the engine and its handler are running
        return run.is_file() and '"type": "step"' in run.read_text()

    while sum(map(training, runs.glob("random-*/seed0/metrics.jsonl"))) < 2:
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.2)
    workers = _children(child.pid)
    assert len(workers) >= 2
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "run the same command again to continue" in err
    time.sleep(1.0)
    assert not [p for p in workers if _alive(p)], "a worker outlived the study"
    started = sorted(p.parent.parent.name for p in runs.glob("random-*/seed0/last.pt"))
    assert started == ["random-0", "random-1"]  # checkpointed; random-2 never started
    assert not list(runs.glob("random-*/seed0/trial.json"))


def test_sigterm_while_the_workers_start_stops_the_study_without_running_its_trials(tmp_path):
    """A SIGTERM that arrives while the pool's workers are still starting (before they told
    the study their pids, so none can be signalled) still stops the study: no worker takes a
    trial after it, and the study does not wait for whole trials to finish."""
    data = study_data(tmp_path, random={"num": 3, "seed": 0}, train_seeds=[0])
    data["train"]["overrides"]["iterations"] = 400
    data["train"]["overrides"]["checkpoint_interval"] = 0
    path = write_study(tmp_path, data)
    cmd = [sys.executable, "-m", "autodeeplab", "study", "--config", str(path), "--jobs", "2"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in child.stdout:  # both trials are handed to the pool: its workers are spawning
        if line.startswith("[2/"):
            break
    # the trials are in the pool's call queue (no longer cancellable) while the workers still
    # import: a signal now is what the study used to wait on whole trials after
    time.sleep(0.5)
    workers = _children(child.pid)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err
    time.sleep(1.0)
    assert not [p for p in workers if _alive(p)], "a worker outlived the study"
    runs = tmp_path / "study" / "train"
    assert not list(runs.glob("random-*/seed0/trial.json")), "a trial ran to its end"


def _children(pid: int) -> list[int]:
    """Pids of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields_ = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields_[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
