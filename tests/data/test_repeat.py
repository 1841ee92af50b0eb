"""``data.repeat``: the wrapper, the search split over distinct samples, steps per epoch, every
sample ``repeat`` times per epoch with its own augmentation, and exact resume."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from autodeeplab.checkpoint import load_checkpoint
from autodeeplab.config import (
    SearchConfig,
    TrainConfig,
    config_diff,
    config_hash,
    load_config,
    to_dict,
)
from autodeeplab.data import (
    RepeatDataset,
    SyntheticSegmentation,
    repeat_dataset,
    search_split,
    split_indices,
    train_transform,
)
from autodeeplab.engine.common import build_datasets
from autodeeplab.engine.search import KeyedSamples, SearchEngine, run_search
from autodeeplab.engine.train import TrainEngine, run_train
from autodeeplab.genotype import RELEASED, Genotype

ROOT = Path(__file__).resolve().parents[2]
SEARCH_TINY = [
    "epochs=2",
    "arch_start_epoch=1",
    "data.options={length: 8, size: 32, seed: 0}",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.max_eval_samples=4",
    "model.layers=3",
    "model.blocks=2",
    "model.filter_multiplier=2",
    "model.stem_channels=[8, 8, 8]",
    "progress=false",
    "tensorboard=false",
    "log_interval=1",
]  # 4 + 4 distinct samples, twice each -> 4 steps per epoch
TRAIN_TINY = [
    "iterations=6",
    "data.options={length: 4, size: 32, seed: 0}",
    "data.crop_size=32",
    "data.scale=[0.75, 1.5]",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.max_eval_samples=4",
    "model.filter_multiplier=2",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "model.low_level_reduced=4",
    "model.drop_path_rate=0.3",
    "optim.lr=0.02",
    "eval_interval=0",
    "checkpoint_interval=0",
    "log_interval=1",
    "progress=false",
    "tensorboard=false",
]  # 4 samples, twice each -> 4 steps per epoch, so 6 iterations cross an epoch boundary


def search_cfg(tmp_path: Path, *extra: str, name: str = "run") -> SearchConfig:
    return load_config(
        ROOT / "configs" / "search" / "synthetic.yaml",
        [*SEARCH_TINY, f"output={tmp_path / name}", *extra],
    )


def train_cfg(tmp_path: Path, *extra: str, name: str = "run") -> TrainConfig:
    cfg = load_config(
        ROOT / "configs" / "train" / "synthetic.yaml",
        [*TRAIN_TINY, f"output={tmp_path / name}", *extra],
        cls=TrainConfig,
    )
    genotype = tmp_path / "genotype.json"
    Genotype(cell=RELEASED.cell, path=(0, 1)).save(genotype)
    cfg.model.genotype = str(genotype)
    return cfg


# ---------------------------------------------------------------------------- the wrapper
def test_repeat_dataset_maps_every_pass_to_the_wrapped_samples():
    base = SyntheticSegmentation(length=5, size=16)
    rep = RepeatDataset(base, 3)
    assert len(rep) == 15 and rep.base_length == 5
    for i in range(15):
        assert rep.base_index(i) == i % 5
        for a, b in zip(rep.load(i), base.load(i % 5), strict=True):
            np.testing.assert_array_equal(a, b)
    assert rep.expand([1, 3]) == [1, 3, 6, 8, 11, 13]
    assert (rep.num_classes, rep.class_names, rep.name) == (7, base.class_names, "synthetic")
    assert rep.palette is base.palette and rep.ignore_index == 255
    with pytest.raises(IndexError, match="out of range"):
        rep.load(15)
    with pytest.raises(IndexError, match=r"0\.\.4"):
        rep.expand([5])
    assert repeat_dataset(base, 1) is base
    assert isinstance(repeat_dataset(base, 2), RepeatDataset)


@pytest.mark.parametrize("times", [0, -2, 1.5, True, "2"])
def test_bad_repeat_names_the_key(times):
    base = SyntheticSegmentation(length=5, size=16)
    with pytest.raises(ValueError, match=r"data\.repeat must be an integer >= 1, got"):
        repeat_dataset(base, times)


def test_build_datasets_repeats_the_training_split_only():
    cfg = load_config(None, ["data.options={length: 6, size: 16}", "data.repeat=4"])
    train, evaluation = build_datasets(cfg.data)
    assert isinstance(train, RepeatDataset) and len(train) == 24
    assert len(evaluation) == 6
    cfg.data.repeat = 0
    with pytest.raises(ValueError, match=r"data\.repeat must be an integer >= 1, got 0"):
        build_datasets(cfg.data)


def test_search_split_is_over_distinct_samples():
    rep = RepeatDataset(SyntheticSegmentation(length=9, size=16), 3)
    a, b = search_split(rep, seed=4)
    ref_a, ref_b = split_indices(9, seed=4)
    base_a = Counter(rep.base_index(i) for i in a.indices)
    base_b = Counter(rep.base_index(i) for i in b.indices)
    assert base_a == {int(i): 3 for i in ref_a} and base_b == {int(i): 3 for i in ref_b}
    assert not set(base_a) & set(base_b)
    assert len(set(a.indices)) == len(a.indices) == 3 * len(ref_a)


def test_each_pass_draws_its_own_augmentation_reproducibly():
    base = SyntheticSegmentation(length=4, size=48, transform=train_transform(32, (0.75, 1.5)))
    keyed = KeyedSamples(RepeatDataset(base, 2), seed=0)
    for i in range(4):
        first, second = keyed[(0, i)], keyed[(0, i + 4)]
        again = keyed[(0, i)]
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        assert not torch.equal(first[0], second[0])  # another crop / scale / flip


# ---------------------------------------------------------------------------- search
def test_search_epochs_show_every_sample_repeat_times(tmp_path):
    plain = SearchEngine(search_cfg(tmp_path, name="plain"), log=None)
    engine = SearchEngine(search_cfg(tmp_path, "data.repeat=2"), log=None)
    try:
        assert (plain.steps_per_epoch, engine.steps_per_epoch) == (2, 4)
        rep = engine.train_set
        assert isinstance(rep, RepeatDataset)
        base_a = sorted({rep.base_index(i) for i in engine.train_a})
        base_b = sorted({rep.base_index(i) for i in engine.train_b})
        assert base_a == plain.train_a and base_b == plain.train_b  # the same split
        for epoch in range(3):
            for stream, base in ((0, base_a), (1, base_b)):
                keys = [k for batch in engine.batches(stream, epoch) for k in batch]
                assert len(set(keys)) == len(keys) == 8 and {e for e, _ in keys} == {epoch}
                assert Counter(rep.base_index(i) for _, i in keys) == {i: 2 for i in base}
    finally:
        plain.close()
        engine.close()


def test_search_with_repeat_resumes_bit_identically(tmp_path):
    full = run_search(search_cfg(tmp_path, "data.repeat=2", name="full"), log=None)
    assert full.global_step == 8
    part = run_search(search_cfg(tmp_path, "data.repeat=2", "max_steps=6", name="part"), log=None)
    assert not part.finished and (part.epoch, part.global_step) == (1, 6)
    resumed = run_search(search_cfg(tmp_path, "data.repeat=2", name="part"), resume=True, log=None)
    assert resumed.finished and resumed.genotype == full.genotype
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_changing_repeat_is_a_config_change(tmp_path):
    cfg, more = search_cfg(tmp_path), search_cfg(tmp_path, "data.repeat=3")
    assert config_hash(cfg) != config_hash(more)
    assert config_diff(to_dict(cfg), to_dict(more)) == ["data.repeat: 1 -> 3"]


# ---------------------------------------------------------------------------- training
def test_train_epochs_show_every_sample_repeat_times(tmp_path):
    engine = TrainEngine(train_cfg(tmp_path, "data.repeat=3"), log=None)
    try:
        assert engine.steps_per_epoch == 3 * 4 // 2
        for epoch in range(2):
            keys = [k for batch in engine._batches(epoch) for k in batch]
            assert len(set(keys)) == len(keys) == 12
            assert Counter(i % 4 for _, i in keys) == {0: 3, 1: 3, 2: 3, 3: 3}
    finally:
        engine.close()


def test_train_with_repeat_resumes_bit_identically(tmp_path):
    full = run_train(train_cfg(tmp_path, "data.repeat=2", name="full"), log=None)
    first = run_train(train_cfg(tmp_path, "data.repeat=2", "max_steps=3", name="split"), log=None)
    assert not first.finished and first.iteration == 3
    resumed = run_train(train_cfg(tmp_path, "data.repeat=2", name="split"), resume=True, log=None)
    assert resumed.finished and resumed.iteration == 6
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert full.final_miou == resumed.final_miou


def test_train_start_line_counts_distinct_samples_and_passes(tmp_path):
    lines: list[str] = []
    run_train(train_cfg(tmp_path, "data.repeat=3", "iterations=1"), log=lines.append)
    assert "on synthetic (4 samples x 3 passes per epoch, global batch 2," in lines[0]
    lines.clear()
    run_train(train_cfg(tmp_path, "iterations=1", name="once"), log=lines.append)
    assert "on synthetic (4 samples, global batch 2," in lines[0]
