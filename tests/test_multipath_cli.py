"""A multi-path (version 2) genotype through the whole tool: train from a config whose
``model.genotype`` names it, the model folder, eval, predict and ONNX export checked with
onnxruntime; model folders of either genotype format load without unpickling."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from autodeeplab import checkpoint
from autodeeplab.cli import main
from autodeeplab.data import synthetic
from autodeeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from autodeeplab.export import INPUT_NAME, OUTPUT_NAME
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.network import AutoDeepLab, MultiASPP
from autodeeplab.saved_model import CONFIG_FILE, load_model, save_model
from autodeeplab.topology import Topology

from tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "configs" / "train" / "synthetic.yaml"
TINY = [
    "iterations=4",
    "data.options={length: 8, size: 32, seed: 0}",
    "data.crop_size=32",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.max_eval_samples=4",
    "model.filter_multiplier=2",
    "model.aspp_channels=8",
    "model.decoder_channels=8",
    "model.low_level_reduced=4",
    "model.drop_path_rate=0.3",
    "eval_interval=2",
    "checkpoint_interval=0",
    "log_interval=1",
    "progress=false",
    "tensorboard=false",
]
TWO_PATHS = Genotype(
    cell=(((0, "sep_conv_3x3"), (1, "skip_connect")), ((1, "atr_conv_3x3"), (2, "max_pool_3x3"))),
    topology=Topology((((0, 0),), ((0, 0), (0, 1)), ((0, 0), (1, 1), (1, 2)))),
)


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model folder must load without unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(checkpoint, "load_checkpoint", refuse)


@pytest.mark.slow  # the whole tool once: about 20 s on an idle core
def test_a_multi_path_genotype_retrains_and_serves(tmp_path, capsys):
    file = tmp_path / "two_paths.json"
    TWO_PATHS.save(file)
    assert json.loads(file.read_text())["format_version"] == 2
    run = tmp_path / "run"
    argv = ["train", "--config", str(SYNTHETIC), *TINY, f"output={run}", f"model.genotype={file}"]
    assert main(argv) == 0
    capsys.readouterr()
    assert Genotype.load(run / "genotype.json") == TWO_PATHS
    model_dir = run / "model"
    saved = json.loads((model_dir / CONFIG_FILE).read_text())["network"]["genotype"]
    assert saved["format_version"] == 2 and saved["transitions"][2] == [[0, 0], [1, 1], [1, 2]]

    # info on the run folder reads the saved network
    assert main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["transitions"] == saved["transitions"] and info["output_strides"] == [4, 8, 16]

    report = tmp_path / "eval.json"
    argv = ["eval", "--model", str(model_dir), "--max-samples", "3", "--json", str(report)]
    assert main(argv) == 0
    assert json.loads(report.read_text())["samples"] == 3

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(37, 50), (64, 41)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_dir), str(images), "--out", str(out)]) == 0
    with Image.open(out / "1_labels.png") as im:
        assert im.size == (41, 64)

    onnx_file = tmp_path / "m.onnx"
    argv = ["export", "--model", str(model_dir), "--onnx", str(onnx_file)]
    assert main([*argv, "--height", "48", "--width", "40", "--verify"]) == 0
    loaded = load_model(model_dir)
    assert loaded.model.genotype == TWO_PATHS and isinstance(loaded.model.aspp, MultiASPP)
    x = torch.randn(2, 3, 45, 67)  # another size and batch than the export's
    with torch.no_grad():
        ref = loaded.model(x).numpy()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    assert got.shape == ref.shape == (2, len(synthetic.CLASS_NAMES), 45, 67)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("version", [None, 1, 2])
def test_model_folders_of_every_genotype_format_load(tmp_path, version, no_unpickling):
    """Single-path folders hold a version-1 genotype (or, from the first releases, one without
    ``format_version``), multi-path folders a version-2 one; all load from JSON and
    safetensors alone."""
    model = make_tiny_model(num_classes=7)
    if version == 2:
        torch.manual_seed(0)
        model = AutoDeepLab(TWO_PATHS, 7, 2, aspp_channels=8, decoder_channels=8).eval()
    folder = save_model(
        model,
        tmp_path / "m",
        class_names=synthetic.CLASS_NAMES,
        palette=synthetic.PALETTE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    config = json.loads((folder / CONFIG_FILE).read_text())
    genotype = config["network"]["genotype"]
    assert genotype["format_version"] == (version or 1)
    if version is None:
        del genotype["format_version"]
        (folder / CONFIG_FILE).write_text(json.dumps(config))
    loaded = load_model(folder)
    assert loaded.model.genotype == model.genotype
    x = torch.randn(1, 3, 33, 35)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    if version != 2:
        assert model.genotype == Genotype(cell=RELEASED.cell, path=(0, 1))
