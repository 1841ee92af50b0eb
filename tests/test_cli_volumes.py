"""A volume task through the command line: a Decathlon-layout task written to disk goes through
search -> decode -> draw -> train -> info -> eval -> predict (NIfTI) -> export (ONNX), each
output checked against an independent computation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autodeeplab.cli import main
from autodeeplab.data import Decathlon, write_synthetic_decathlon
from autodeeplab.genotype import Genotype
from autodeeplab.saved_model import load_model
from autodeeplab.volume_inference import evaluate_volumes, predict_volume_logits

nib = pytest.importorskip("nibabel")
pytest.importorskip("monai")

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ["progress=false", "tensorboard=false", "threads=1"]
DATA = ["data.crop_size=32", "data.options={val_fraction: 0.25}"]


@pytest.mark.slow
def test_a_decathlon_task_through_the_command_line(tmp_path, capsys):
    task = write_synthetic_decathlon(tmp_path / "Task00_Synthetic", 8, 2, size=32)
    search, train = tmp_path / "search", tmp_path / "train"
    assert (
        main(
            [
                "search",
                "--config",
                str(ROOT / "configs" / "search" / "decathlon.yaml"),
                "--data-root",
                str(task),
                "--output",
                str(search),
                *DATA,
                *RUNTIME,
                "epochs=2",
                "arch_start_epoch=1",
                "model.layers=2",
                "model.blocks=2",
                "model.filter_multiplier=2",
                "model.stem_channels=[4, 4, 8]",
                "model.checkpoint_cells=false",
                "model.aspp_rates=auto",
            ]
        )
        == 0
    )
    genotype_file = tmp_path / "genotype.json"
    assert main(["decode", str(search), "--out", str(genotype_file)]) == 0
    genotype = Genotype.load(genotype_file)
    assert genotype == Genotype.load(search / "genotype.json")
    assert main(["draw", str(search / "last.pt"), "--out", str(tmp_path / "arch.png")]) == 0
    assert (tmp_path / "arch.png").stat().st_size > 0

    assert (
        main(
            [
                "train",
                "--config",
                str(ROOT / "configs" / "train" / "decathlon.yaml"),
                "--genotype",
                str(genotype_file),
                "--data-root",
                str(task),
                "--output",
                str(train),
                *DATA,
                *RUNTIME,
                "iterations=4",
                "eval_interval=2",
                "checkpoint_interval=0",
                "model.filter_multiplier=2",
                "model.aspp_channels=8",
                "model.decoder_channels=8",
                "model.low_level_reduced=4",
                "optim.warmup_iters=1",
            ]
        )
        == 0
    )
    model_dir = train / "best"
    loaded = load_model(model_dir)
    assert loaded.config.network.spatial_dims == 3 and loaded.config.network.in_channels == 1
    capsys.readouterr()

    assert main(["info", str(model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["spatial_dims"] == 3 and info["input_size"] == [32, 32, 32]
    assert info["params"] == sum(p.numel() for p in loaded.model.parameters())
    assert info["training_memory"] is None
    assert main(["info", str(model_dir)]) == 0
    assert "Multi-Adds 32x32x32 (crop size)" in capsys.readouterr().out

    # eval: the model's val split of the task, windows of the training crop
    report_file = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--data-root",
                str(task),
                "--json",
                str(report_file),
            ]
        )
        == 0
    )
    report = json.loads(report_file.read_text())
    val = Decathlon(task, "val", val_fraction=0.25)
    want = evaluate_volumes(loaded.model, val, 32)
    assert report["volumes"] == len(val) == 2
    assert report["mIoU"] == pytest.approx(want.matrix.mean_iou(), abs=1e-12)
    assert report["mDice"] == pytest.approx(want.matrix.mean_dice(), abs=1e-12)
    assert set(report["case_dice"]) == set(want.cases)
    assert main(["eval", "--model", str(model_dir), "--data-root", str(task), "--flip"]) == 2
    assert "--flip: image options" in capsys.readouterr().err

    # predict: NIfTI labels of the test cases, voxel for voxel the model's argmax, the input's affine
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                str(task),
                "--out",
                str(out),
                "--overlap",
                "0.25",
            ]
        )
        == 0
    )
    test = Decathlon(task, "test", val_fraction=0.25)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{test.load(i).name}.nii.gz" for i in range(len(test))
    )
    for i in range(len(test)):
        volume = test.load(i)
        written = nib.load(out / f"{volume.name}.nii.gz")
        source = nib.load(task / "imagesTs" / f"{volume.name}.nii.gz")
        np.testing.assert_array_equal(written.affine, source.affine)
        logits = predict_volume_logits(
            loaded.model, torch.from_numpy(volume.image), 32, overlap=0.25
        )
        labels = logits.argmax(dim=0).numpy()  # (D, H, W)
        np.testing.assert_array_equal(np.asarray(written.dataobj).transpose(2, 1, 0), labels)

    # export: ONNX Runtime against PyTorch on volumes of other sizes than the traced one
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--model", str(model_dir), "--onnx", str(onnx_file), "--verify"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 35, 33, 40)
    with torch.no_grad():
        ref = loaded.model(x).numpy()
    (got,) = session.run(["logits"], {"image": x.numpy()})
    assert got.shape == (2, 4, 35, 33, 40)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
