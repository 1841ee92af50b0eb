import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autodeeplab import inference
from autodeeplab import predict as predict_module
from autodeeplab.cli import main
from autodeeplab.data import cityscapes, synthetic
from autodeeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from autodeeplab.inference import DEFAULT_TILE_ABOVE, tile_window
from autodeeplab.predict import blend, collect_images, normalise, segment
from autodeeplab.saved_model import load_model, save_model

from tiny import make_tiny_model

KINDS = ("color", "labels", "overlay")


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


def test_eval_json_is_standard_json(synthetic_model, tmp_path, monkeypatch):
    """An undefined metric (NaN) is written as null: strict parsers refuse ``NaN``."""
    real = inference.evaluate_model_folder

    def with_undefined_metric(*args, **kwargs):
        result = real(*args, **kwargs)
        result.report["mIoU"] = float("nan")
        return result

    monkeypatch.setattr(inference, "evaluate_model_folder", with_undefined_metric)
    out = tmp_path / "m.json"
    argv = ["eval", "--model", str(synthetic_model), "--max-samples", "1", "--json", str(out)]
    assert main(argv) == 0

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    report = json.loads(out.read_text(), parse_constant=refuse)
    assert report["mIoU"] is None
    assert report["samples"] == 1


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


# ---------------------------------------------------------------------------- folders, tiles
def _image(path, h, w, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _expected_labels(model_dir, image_path, **kwargs):
    loaded = load_model(model_dir)
    image = np.asarray(Image.open(image_path).convert("RGB"))
    cfg = loaded.config
    return segment(loaded.model, image, cfg.mean, cfg.std, **kwargs)


def test_predict_recurses_into_folders_and_mirrors_them(synthetic_model, tmp_path):
    src = tmp_path / "leftImg8bit" / "test"
    layout = {
        "top.png": (20, 24),
        "berlin/berlin_000000_leftImg8bit.png": (33, 40),
        "berlin/night/b.jpg": (17, 26),
        "bonn/b.png": (24, 18),  # the same stem as berlin/night/b.jpg, in another folder
    }
    for i, (rel, (h, w)) in enumerate(layout.items()):
        _image(src / rel, h, w, seed=i)
    _image(src / ".cache" / "skipped.png", 16, 16, seed=9)  # hidden: not an input
    (src / "berlin" / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(synthetic_model), str(src), "--out", str(out)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    stems = ["berlin/berlin_000000_leftImg8bit", "berlin/night/b", "bonn/b", "top"]
    assert written == sorted(f"{s}_{kind}.png" for s in stems for kind in KINDS)
    for rel, (h, w) in layout.items():
        stem = (out / rel).with_suffix("")
        labels = np.asarray(Image.open(stem.with_name(stem.name + "_labels.png")))
        assert labels.shape == (h, w)
        assert (labels == _expected_labels(synthetic_model, src / rel)).all()


def test_predict_skips_its_own_output_folder_and_refuses_clashes(synthetic_model, tmp_path):
    src = tmp_path / "photos"
    _image(src / "a.png", 20, 20, seed=0)
    _image(src / "trip" / "b.png", 20, 20, seed=1)
    out = src / "pred"  # inside the input folder: a second run must not segment the outputs
    argv = ["predict", "--model", str(synthetic_model), str(src), "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 0
    assert len(list(out.rglob("*.png"))) == 2 * len(KINDS)
    _image(src / "trip" / "b.jpg", 20, 20, seed=2)
    with pytest.raises(
        ValueError, match=r"b\.jpg and .*b\.png would both write trip/b_\*\.png; rename"
    ):
        collect_images([src])


def test_predict_tiles_images_above_tile_above(synthetic_model, tmp_path, monkeypatch):
    image = tmp_path / "in" / "big.png"
    _image(image, 45, 52, seed=3)  # 2340 pixels
    calls = []
    real = inference.sliding_window_logits

    def counting(model, x, window):
        calls.append(window)
        return real(model, x, window)

    monkeypatch.setattr(inference, "sliding_window_logits", counting)
    base = ["predict", "--model", str(synthetic_model), str(image)]
    assert main([*base, "--out", str(tmp_path / "tiled"), "--tile-above", "0.001"]) == 0
    assert calls == [tile_window(1000)]
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "big_labels.png"))
    window = tile_window(1000)
    assert (tiled == _expected_labels(synthetic_model, image, sliding_window=window)).all()
    calls.clear()
    assert main([*base, "--out", str(tmp_path / "whole"), "--tile-above", "0"]) == 0
    assert main([*base, "--out", str(tmp_path / "default")]) == 0  # 4 megapixels: whole
    assert calls == []
    whole = np.asarray(Image.open(tmp_path / "whole" / "big_labels.png"))
    assert (whole == _expected_labels(synthetic_model, image)).all()


def test_eval_tiles_above_tile_above(synthetic_model, tmp_path, monkeypatch):
    calls = []
    real = inference.sliding_window_logits
    monkeypatch.setattr(
        inference, "sliding_window_logits", lambda m, x, w: calls.append(w) or real(m, x, w)
    )
    out = tmp_path / "m.json"
    argv = ["eval", "--model", str(synthetic_model), "--max-samples", "2", "--json", str(out)]
    assert main([*argv, "--tile-above", "0.002"]) == 0  # synthetic images: 64 x 64 = 4096 px
    assert calls == [tile_window(2000)] * 2
    assert json.loads(out.read_text())["tile_above"] == 2000


def test_default_tile_above_is_the_documented_one(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_TILE_ABOVE / 1e6:g}; 0 = never" in help_text


# ---------------------------------------------------------------------------- write errors
def test_predict_out_naming_an_existing_file(synthetic_model, tmp_path, capsys):
    image = write_images(tmp_path / "in", [(20, 20)]) / "im0.png"
    target = tmp_path / "taken.png"
    target.write_bytes(b"keep me")
    argv = ["predict", "--model", str(synthetic_model), str(image), "--out", str(target)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"output folder {target} is an existing file" in err and "Traceback" not in err
    assert target.read_bytes() == b"keep me"


def test_full_disk_names_the_file_and_keeps_finished_images(
    synthetic_model, tmp_path, capsys, monkeypatch
):
    images = write_images(tmp_path / "in", [(20, 20), (24, 24)])
    out = tmp_path / "out"
    real_save = Image.Image.save
    saved = []

    def save(self, fp, *args, **kwargs):
        if len(saved) == 3:  # the labels of the second image: a partial file, then ENOSPC
            Path(fp).write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    argv = ["predict", "--model", str(synthetic_model), str(images), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"autodeeplab predict: error: No space left on device: {out / 'im1_labels.png'}; free "
        "some space or write to another disk; files completed so far are kept"
    )
    assert sorted(p.name for p in out.iterdir()) == [f"im0_{kind}.png" for kind in KINDS]


@pytest.mark.parametrize(
    ("code", "strerror", "advice"),
    [
        (errno.EROFS, "Read-only file system", "choose an output folder on a writable one"),
        (errno.EACCES, "Permission denied", "choose a folder you may write to"),
    ],
)
def test_unwritable_output_folder(
    synthetic_model, tmp_path, capsys, monkeypatch, code, strerror, advice
):
    # simulated: the tests may run as root, which writes through permission bits
    image = write_images(tmp_path / "in", [(20, 20)]) / "im0.png"
    out = tmp_path / "ro" / "pred"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == out:
            raise OSError(code, strerror, str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["predict", "--model", str(synthetic_model), str(image), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"autodeeplab predict: error: {strerror}: {out}; ") and advice in err


def test_out_of_memory_suggests_tiling(synthetic_model, tmp_path, capsys, monkeypatch):
    image = write_images(tmp_path / "in", [(20, 20)]) / "im0.png"

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.30 GiB. GPU 0 has a total capacity of "
            "79.10 GiB of which 1.2 GiB is free. " + "Details. " * 40
        )

    monkeypatch.setattr(predict_module, "predict_logits", oom)
    argv = ["predict", "--model", str(synthetic_model), str(image), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "autodeeplab predict: error: out of memory (CUDA out of memory. Tried to allocate 2.30 GiB."
    )
    assert err.endswith(
        "lower --tile-above (e.g. --tile-above 1) to run large images in "
        "smaller tiles, or use fewer --scales"
    )
    assert "\n" not in err
