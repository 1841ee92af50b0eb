import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import make_tiny_model

from autodeeplab.cli import main
from autodeeplab.data import cityscapes, synthetic
from autodeeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from autodeeplab.predict import blend, normalise
from autodeeplab.saved_model import load_model, save_model


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "synthetic"
    return save_model(
        make_tiny_model(num_classes=7),
        path,
        class_names=synthetic.CLASS_NAMES,
        palette=synthetic.PALETTE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dataset="synthetic",
    )


@pytest.fixture(scope="module")
def cityscapes_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "cityscapes"
    return save_model(
        make_tiny_model(num_classes=19),
        path,
        class_names=cityscapes.CLASS_NAMES,
        palette=cityscapes.PALETTE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dataset="cityscapes",
    )


def write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_eval_synthetic_writes_json(synthetic_model, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    argv = ["eval", "--model", str(synthetic_model), "--split", "val", "--max-samples", "3"]
    assert main([*argv, "--scales", "0.75", "1.0", "--flip", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "checkered" in text and "flip" in text.splitlines()[0]
    report = json.loads(out.read_text())
    assert report["dataset"] == "synthetic" and report["samples"] == 3
    assert report["scales"] == [0.75, 1.0] and report["flip"] is True
    assert report["pixels"] == 3 * 64 * 64
    assert set(report["per_class"]) == set(synthetic.CLASS_NAMES)
    ious = [v["iou"] for v in report["per_class"].values() if v["iou"] is not None]
    assert report["mIoU"] == pytest.approx(np.mean(ious))


def test_eval_sliding_window(synthetic_model, tmp_path):
    out = tmp_path / "m.json"
    argv = ["eval", "--model", str(synthetic_model), "--max-samples", "1", "--json", str(out)]
    assert main([*argv, "--sliding-window", "--crop", "40", "40"]) == 0
    assert json.loads(out.read_text())["sliding_window"] == {"crop": [40, 40], "stride": [27, 27]}


def test_eval_errors(synthetic_model, cityscapes_model, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--model", str(synthetic_model), "--crop", "8", "8"]) == 2
    assert "--sliding-window" in capsys.readouterr().err
    assert main(["eval", "--model", str(cityscapes_model), "--data-root", str(tmp_path)]) == 2
    assert "leftImg8bit" in capsys.readouterr().err


def test_predict_odd_sizes(synthetic_model, tmp_path):
    sizes = [(37, 53), (5, 7), (64, 33)]
    images = write_images(tmp_path / "in", sizes)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(synthetic_model), str(images), "--out", str(out)]) == 0
    loaded = load_model(synthetic_model)
    for i, (h, w) in enumerate(sizes):
        labels = np.asarray(Image.open(out / f"im{i}_labels.png"))
        color = np.asarray(Image.open(out / f"im{i}_color.png"))
        overlay = np.asarray(Image.open(out / f"im{i}_overlay.png"))
        assert labels.shape == (h, w) and labels.dtype == np.uint8 and labels.max() < 7
        assert color.shape == overlay.shape == (h, w, 3)
        assert (color == synthetic.PALETTE[labels]).all()
        image = np.asarray(Image.open(images / f"im{i}.png"))
        assert (overlay == blend(image, color)).all()
        with torch.no_grad():  # labels are the argmax of the model's logits
            x = normalise(image, IMAGENET_MEAN, IMAGENET_STD, "cpu")
            if min(h, w) >= 9:
                assert (labels == loaded.model(x)[0].argmax(0).numpy()).all()


def test_predict_cityscapes_ids(cityscapes_model, tmp_path):
    image = write_images(tmp_path / "in", [(33, 45)]) / "im0.png"
    plain, ids = tmp_path / "plain", tmp_path / "ids"
    base = ["predict", "--model", str(cityscapes_model), str(image), "--flip"]
    assert main([*base, "--out", str(plain)]) == 0
    assert main([*base, "--out", str(ids), "--cityscapes-ids"]) == 0
    train = np.asarray(Image.open(plain / "im0_labels.png"))
    label = np.asarray(Image.open(ids / "im0_labels.png"))
    lut = {lab.train_id: lab.id for lab in cityscapes.LABELS if 0 <= lab.train_id < 255}
    assert (label == np.vectorize(lut.get)(train)).all()
    assert set(np.unique(label)) <= set(lut.values())


def test_predict_errors(synthetic_model, tmp_path, capsys):
    bad = tmp_path / "in" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG not really")
    model = ["predict", "--model", str(synthetic_model), "--out", str(tmp_path / "o")]
    assert main([*model, str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main([*model, str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main([*model, "--cityscapes-ids", str(bad)]) == 2
    assert "19-class" in capsys.readouterr().err


def test_export_cli(synthetic_model, tmp_path, capsys):
    onnx_file = tmp_path / "m.onnx"
    argv = ["export", "--model", str(synthetic_model), "--onnx", str(onnx_file)]
    assert main([*argv, "--height", "48", "--width", "40", "--verify"]) == 0
    out = capsys.readouterr().out
    diff = float(out.rsplit("difference", 1)[1])
    assert onnx_file.is_file() and diff < 1e-4
