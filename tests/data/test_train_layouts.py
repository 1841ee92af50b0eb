"""Retraining reads the real on-disk layouts, and a corrupt file stops it with its name."""

from pathlib import Path

from autodeeplab import load_model
from autodeeplab.cli import main
from autodeeplab.genotype import RELEASED, Genotype

from layouts import make_cityscapes

TINY = [
    "iterations=2",
    "eval_interval=2",
    "data.crop_size=16",
    "data.batch_size=2",
    "model.filter_multiplier=2",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "model.low_level_reduced=4",
    "device=cpu",
    "progress=false",
    "tensorboard=false",
]


def test_train_on_a_cityscapes_tree_then_a_corrupt_image(tmp_path, rng, capsys):
    root = tmp_path / "cityscapes"
    make_cityscapes(root, rng, "train", n=4)
    make_cityscapes(root, rng, "val", n=2)
    genotype = tmp_path / "genotype.json"
    Genotype(cell=RELEASED.cell, path=(0, 1, 1)).save(genotype)
    config = str(Path(__file__).parents[2] / "configs" / "train" / "cityscapes.yaml")
    args = ["train", "--config", config, "--genotype", str(genotype), "--data-root", str(root)]

    assert main([*args, "--output", str(tmp_path / "run"), *TINY]) == 0
    loaded = load_model(tmp_path / "run" / "best")
    assert loaded.config.dataset == "cityscapes"
    assert loaded.config.num_classes == 19 and loaded.config.class_names[0] == "road"

    victim = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[1]
    victim.write_bytes(b"not a png")
    assert main([*args, "--output", str(tmp_path / "bad"), *TINY]) == 2
    assert victim.name in capsys.readouterr().err
