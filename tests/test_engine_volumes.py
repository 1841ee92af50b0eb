"""The search and training engines on volume data sets: the data set decides the
dimensionality, loaders crop regions of interest, evaluation runs over whole volumes by sliding
window, and the keys that do not apply to volumes are refused."""

from pathlib import Path

import pytest
import torch

from autodeeplab.config import ConfigError, SearchConfig, TrainConfig, load_config
from autodeeplab.data import Synthetic3D, dataset_spatial_dims, volume_eval_transform
from autodeeplab.data.volume_transforms import VolumeTrainTransform
from autodeeplab.engine.common import build_datasets
from autodeeplab.engine.search import SearchEngine
from autodeeplab.engine.train import TrainEngine
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.saved_model import load_model
from autodeeplab.search_model import build_memory_budget
from autodeeplab.supernet import SearchNetwork
from autodeeplab.volume_inference import evaluate_volumes

pytest.importorskip("monai")

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "configs" / "search" / "synthetic3d.yaml"
TRAIN = ROOT / "configs" / "train" / "synthetic3d.yaml"
DATA = ["data.options={length: 6, size: 32, channels: 2, seed: 0}", "data.max_eval_samples=2"]
RUNTIME = ["progress=false", "tensorboard=false", "threads=1"]


def test_the_data_set_decides_the_dimensionality():
    assert dataset_spatial_dims("synthetic3d") == dataset_spatial_dims("decathlon") == 3
    for name in ("synthetic", "cityscapes", "voc", "ade20k", "folder"):
        assert dataset_spatial_dims(name) == 2
    with pytest.raises(ValueError, match="valid names"):
        dataset_spatial_dims("nope")


def test_volume_loaders_crop_regions_of_interest():
    cfg = load_config(TRAIN, [*DATA, "data.crop_size=[16, 24, 20]"], TrainConfig)
    train, val = build_datasets(cfg.data)
    assert isinstance(train.transform, VolumeTrainTransform)
    assert train.transform.roi == (16, 24, 20)
    image, label = train[0]
    assert image.shape == (2, 16, 24, 20) and label.shape == (16, 24, 20)
    assert val.load(0).image.shape == (2, 32, 32, 32)
    assert isinstance(val.transform, type(volume_eval_transform()))


@pytest.mark.parametrize(
    ("cls", "path", "override", "message"),
    [
        (
            TrainConfig,
            TRAIN,
            "data.eval_size=[32, 32]",
            "data.eval_size .* set data.eval_size=null",
        ),
        (
            TrainConfig,
            ROOT / "configs" / "train" / "synthetic.yaml",
            "data.crop_size=[32, 32, 32]",
            "region of interest .* only volume data sets",
        ),
        (SearchConfig, SEARCH, "relaxation.memory_target=0.5", "memory model .* volumes"),
    ],
)
def test_keys_that_do_not_apply_are_refused(tmp_path, cls, path, override, message):
    cfg = load_config(path, [*DATA, *RUNTIME, f"output={tmp_path}", override], cls)
    if override.startswith("relaxation"):
        cfg.relaxation.name = "dints"
    engine = SearchEngine if cls is SearchConfig else TrainEngine
    with pytest.raises((ValueError, ConfigError), match=message):
        engine(cfg)


def test_volume_search_builds_a_3d_supernet_and_evaluates_whole_volumes(tmp_path):
    cfg = load_config(
        SEARCH,
        [*DATA, *RUNTIME, f"output={tmp_path}", "epochs=1", "arch_start_epoch=0"],
        SearchConfig,
    )
    cfg.relaxation.name = "dints"  # a DiNTS search on volumes runs without a memory budget
    assert build_memory_budget(cfg, 4) is None
    with SearchEngine(cfg, log=None) as engine:
        model = engine.model
        assert isinstance(model, SearchNetwork)
        assert model.spatial_dims == 3 and model.in_channels == 2
        assert model.search_space.spatial_dims == 3
        miou = engine.evaluate()
        # the engine's figure is evaluate_volumes' over the first max_eval_samples volumes
        val = Synthetic3D(None, "val", length=6, size=32, channels=2, seed=0)
        want = evaluate_volumes(engine.model, val, 32, indices=range(2)).matrix.mean_iou()
        assert miou == pytest.approx(want, abs=1e-12)
        result = engine.run()
    assert result.finished and result.history[-1]["mIoU"] is not None
    genotype = Genotype.load(tmp_path / "genotype.json")
    assert genotype.layers == 3


def test_volume_training_saves_a_3d_model_scored_by_sliding_window(tmp_path):
    genotype = tmp_path / "g.json"
    Genotype(cell=RELEASED.cell[:2], path=(0, 1)).save(genotype)
    cfg = load_config(
        TRAIN,
        [
            *DATA,
            *RUNTIME,
            f"output={tmp_path / 'run'}",
            f"model.genotype={genotype}",
            "iterations=4",
            "eval_interval=2",
            "model.filter_multiplier=2",
            "data.crop_size=[24, 32, 28]",
        ],
        TrainConfig,
    )
    result = TrainEngine(cfg, log=None).run()
    assert result.finished
    record = result.history[-1]
    assert 0.0 <= record["mDice"] <= 1.0
    loaded = load_model(tmp_path / "run" / "model")
    net = loaded.config.network
    assert net.spatial_dims == 3 and net.in_channels == 2
    assert loaded.config.mean == (0.0, 0.0) and loaded.config.std == (1.0, 1.0)
    # the recorded figures are those of the saved model over whole volumes, windows of the ROI
    val = Synthetic3D(None, "val", length=6, size=32, channels=2, seed=0)
    cm = evaluate_volumes(loaded.model, val, (24, 32, 28), indices=range(2)).matrix
    assert record["mIoU"] == pytest.approx(cm.mean_iou(), abs=1e-9)
    assert record["mDice"] == pytest.approx(cm.mean_dice(), abs=1e-9)
    with torch.no_grad():
        out = loaded.model(torch.zeros(1, 2, 24, 32, 28))
    assert out.shape == (1, 4, 24, 32, 28)
