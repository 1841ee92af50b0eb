"""`autodeeplab info` on train configs, run folders and model folders (autodeeplab.info)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from autodeeplab import checkpoint
from autodeeplab.cli import main
from autodeeplab.complexity import complexity
from autodeeplab.config import SearchConfig, TrainConfig, load_config, save_config
from autodeeplab.data import dataset_class_names, write_metadata
from autodeeplab.engine.train import run_train
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.memory import training_memory
from autodeeplab.network import NetworkConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "train"
HEADS = {"aspp_channels": 8, "decoder_channels": 8, "low_level_reduced": 4}


def info_json(capsys, *argv: str) -> dict:
    assert main(["info", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_counts(info: dict, config: NetworkConfig, size: tuple[int, int]) -> None:
    ref = complexity(config, size)
    assert info["params"] == ref.params
    assert info["multiply_adds"] == ref.multiply_adds
    assert info["input_size"] == list(size)
    assert info["num_classes"] == config.num_classes
    assert info["filter_multiplier"] == config.filter_multiplier


def assert_memory(info: dict, config: NetworkConfig, size: tuple[int, int], batch: int) -> None:
    assert info["training_memory"] == training_memory(config, size, batch).to_dict()
    assert info["training_memory"]["batch_size"] == batch


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything tries to read a pickled checkpoint."""

    def refuse(*args, **kwargs):
        raise AssertionError("info must not unpickle anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(checkpoint, "load_checkpoint", refuse)


def test_dataset_class_names():
    assert len(dataset_class_names("cityscapes")) == 19
    assert len(dataset_class_names("voc")) == 21
    assert len(dataset_class_names("ade20k")) == 150
    assert dataset_class_names("synthetic")[0] == "background"
    with pytest.raises(ValueError, match="needs a root folder"):
        dataset_class_names("folder")
    with pytest.raises(ValueError, match="valid names"):
        dataset_class_names("kitti")


def test_config_with_preset_takes_classes_f_and_crop(capsys):
    info = info_json(
        capsys, "--config", str(CONFIGS / "cityscapes.yaml"), "--preset", "autodeeplab-s"
    )
    net = NetworkConfig(genotype=RELEASED, num_classes=19, filter_multiplier=20)
    assert_counts(info, net, (769, 769))
    assert info["input_size_from"] == "crop_size" and info["source"] == "train config"
    assert info["network"]["drop_path_rate"] == 0.2
    assert info["paper"]["params"] == 10.15e6  # the published network: the paper's figures apply
    assert_memory(info, replace(net, drop_path_rate=0.2), (769, 769), 8)
    assert info["batch_size_from"] == "batch_size"


def test_config_with_genotype_and_overrides(tmp_path, capsys):
    g = Genotype(cell=RELEASED.cell, path=(0, 1, 2, 2))
    g.save(tmp_path / "g.json")
    argv = ["--config", str(CONFIGS / "voc.yaml"), "--genotype", str(tmp_path / "g.json")]
    info = info_json(capsys, *argv, "--filter-multiplier", "8")
    assert_counts(info, NetworkConfig(genotype=g, num_classes=21, filter_multiplier=8), (513, 513))
    assert "paper" not in info
    info = info_json(capsys, *argv, "--num-classes", "5", "--input-size", "65x97")
    assert_counts(info, NetworkConfig(genotype=g, num_classes=5, filter_multiplier=20), (65, 97))
    info = info_json(capsys, *argv, "--input-size", "65x97", "--batch-size", "3")
    net = NetworkConfig(genotype=g, num_classes=21, filter_multiplier=20, drop_path_rate=0.2)
    assert_memory(info, net, (65, 97), 3)
    assert info["batch_size_from"] == "given"


def test_config_of_a_folder_data_set_reads_its_classes(tmp_path, capsys):
    write_metadata(tmp_path / "classes.yaml", ["sky", "road", "car"])
    g = Genotype(cell=RELEASED.cell, path=(0, 0, 1))
    g.save(tmp_path / "g.json")
    cfg = {
        "data": {"name": "folder", "root": str(tmp_path), "crop_size": 48},
        "model": {"genotype": str(tmp_path / "g.json"), "filter_multiplier": 4, **HEADS},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    info = info_json(capsys, "--config", str(tmp_path / "train.yaml"))
    net = NetworkConfig(genotype=g, num_classes=3, filter_multiplier=4, **HEADS)
    assert_counts(info, net, (48, 48))
    cfg["data"]["root"] = None
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["info", "--config", str(tmp_path / "train.yaml")]) == 2
    assert "needs a root folder" in capsys.readouterr().err
    # as with search and train, --data-root sets the config's data.root
    argv = ["--config", str(tmp_path / "train.yaml"), "--data-root", str(tmp_path)]
    assert info_json(capsys, *argv) == info
    assert main(["info", "--preset", "autodeeplab-s", "--data-root", str(tmp_path)]) == 2
    assert "--data-root goes with --config" in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A real (one-iteration) retraining run on the synthetic data set."""
    tmp = tmp_path_factory.mktemp("info-run")
    genotype = tmp / "arch.json"
    Genotype(cell=RELEASED.cell, path=(0, 1, 1)).save(genotype)
    cfg = load_config(
        CONFIGS / "synthetic.yaml",
        [
            "iterations=1",
            "data.options={length: 8, size: 40, seed: 0}",
            "data.crop_size=40",
            "data.batch_size=2",
            "data.eval_batch_size=2",
            "data.max_eval_samples=2",
            "model.filter_multiplier=2",
            *(f"model.{k}={v}" for k, v in HEADS.items()),
            "eval_interval=0",
            "checkpoint_interval=0",
            "progress=false",
            "tensorboard=false",
            f"output={tmp / 'run'}",
        ],
        cls=TrainConfig,
    )
    cfg.model.genotype = str(genotype)
    run_train(cfg)
    return tmp / "run"


def run_network() -> NetworkConfig:
    g = Genotype(cell=RELEASED.cell, path=(0, 1, 1))
    return NetworkConfig(genotype=g, num_classes=7, filter_multiplier=2, **HEADS)


def test_run_folder(run_folder, capsys, no_unpickling):
    assert (run_folder / "model" / "config.json").is_file() and (run_folder / "last.pt").is_file()
    for argv in ([str(run_folder)], ["--run", str(run_folder)]):
        info = info_json(capsys, *argv)
        assert_counts(info, run_network(), (40, 40))
        assert info["source"] == "run folder"
        assert info["network"]["drop_path_rate"] == 0.0
        assert_memory(info, run_network(), (40, 40), 2)
    info = info_json(capsys, str(run_folder / "model"), "--input-size", "64", "96")
    assert_counts(info, run_network(), (64, 96))
    assert info["source"] == "model folder"
    info = info_json(capsys, str(run_folder / "best"))  # crop size from the config it recorded
    assert_counts(info, run_network(), (40, 40))
    assert_memory(info, run_network(), (40, 40), 2)  # and its batch


def test_interrupted_run_folder_is_rebuilt_from_its_config(
    run_folder, tmp_path, capsys, no_unpickling
):
    partial = tmp_path / "partial"
    shutil.copytree(run_folder, partial, ignore=shutil.ignore_patterns("model", "best"))
    # the run's own genotype.json counts, not the (moved) file named in config.yaml
    cfg = yaml.safe_load((partial / "config.yaml").read_text())
    cfg["model"]["genotype"] = str(tmp_path / "moved-away.json")
    (partial / "config.yaml").write_text(yaml.safe_dump(cfg))
    info = info_json(capsys, str(partial))
    assert_counts(info, run_network(), (40, 40))
    assert_memory(info, run_network(), (40, 40), 2)


def test_run_folder_errors(run_folder, tmp_path, capsys):
    assert main(["info", str(run_folder), "--num-classes", "3"]) == 2
    assert "a run folder defines its network" in capsys.readouterr().err
    assert main(["info", str(run_folder), "--data-root", str(tmp_path)]) == 2
    assert "a run folder defines its network" in capsys.readouterr().err
    assert main(["info", str(run_folder), "--run", str(run_folder)]) == 2
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    search = tmp_path / "search"
    search.mkdir()
    save_config(SearchConfig(), search / "config.yaml")
    assert main(["info", str(search)]) == 2
    assert "is a search run folder" in capsys.readouterr().err
    assert main(["info"]) == 2
    assert "name a network" in capsys.readouterr().err
    assert main(["info", "--config", str(CONFIGS / "synthetic.yaml")]) == 2
    assert "--genotype FILE or --preset NAME" in capsys.readouterr().err
    assert main(["info", "--preset", "autodeeplab-s", "--input-size", "12x"]) == 2
    assert "HxW" in capsys.readouterr().err


def test_text_shows_the_training_memory_and_its_assumptions(capsys):
    argv = ["info", "--preset", "autodeeplab-s", "--input-size", "65x65", "--batch-size", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    mem = training_memory(NetworkConfig(genotype=RELEASED), (65, 65), 4)
    assert "training memory    batch 4 x 65x65, float32" in out
    assert f"activations      {mem.activations.total / 2**30:.3f} GiB" in out
    assert f"step peak        {mem.peak_bytes / 2**30:.3f} GiB" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "--preset", "autodeeplab-s", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size: must be >= 1, got 0" in capsys.readouterr().err


def test_multi_path_genotype_file_and_train_config(tmp_path, capsys):
    from autodeeplab.topology import Topology

    g = Genotype(
        cell=RELEASED.cell,
        topology=Topology((((0, 0), (0, 1)), ((0, 1), (1, 1), (1, 2)), ((1, 1), (2, 2)))),
    )
    g.save(tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text())["format_version"] == 2
    argv = ["--genotype", str(tmp_path / "g.json"), "--input-size", "65x65"]
    info = info_json(capsys, *argv, "--filter-multiplier", "4", "--num-classes", "3")
    net = NetworkConfig(genotype=g, num_classes=3, filter_multiplier=4)
    assert_counts(info, net, (65, 65))
    assert_memory(info, net, (65, 65), 1)
    assert info["path"] is None and info["transitions"] == [
        [[0, 0], [0, 1]],
        [[0, 1], [1, 1], [1, 2]],
        [[1, 1], [2, 2]],
    ]
    assert info["output_strides"] == [8, 16] and info["output_stride"] == 8
    assert info["aspp_rates_by_output"] == [[12, 24, 36], [6, 12, 18]]
    assert main(["info", *argv]) == 0
    assert "ASPP per output stride 8: [12, 24, 36], 16: [6, 12, 18]" in capsys.readouterr().out
    # a train config whose model.genotype is the multi-path file
    info = info_json(capsys, "--config", str(CONFIGS / "voc.yaml"), *argv[:2])
    net = NetworkConfig(genotype=g, num_classes=21, filter_multiplier=20, drop_path_rate=0.2)
    assert_counts(info, net, (513, 513))
    assert_memory(info, net, (513, 513), info["training_memory"]["batch_size"])
