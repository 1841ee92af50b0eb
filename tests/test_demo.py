"""The one-command demo on a shrunken configuration: every stage, the report, the baseline."""

import json
import os
import signal
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from autodeeplab import demo
from autodeeplab.cli import main
from autodeeplab.data import build_dataset, eval_transform
from autodeeplab.demo import STAGES, DemoStopped, majority_baseline, resource_config, run_demo
from autodeeplab.engine.search import SearchEngine
from autodeeplab.genotype import Genotype
from autodeeplab.inference import evaluate
from autodeeplab.runfolder import RunFolderLockedError
from autodeeplab.sample import sample_genotypes
from autodeeplab.saved_model import load_model
from autodeeplab.space import hand_designed_paths

from runs import hold_lock

ROOT = Path(__file__).resolve().parents[1]
DATA = "data.options={length: 24, size: 32, seed: 0}"
SEARCH = ["epochs=1", "arch_start_epoch=0", DATA, "data.crop_size=32", "data.batch_size=2"]
SEARCH += ["model.layers=3", "model.blocks=2", "model.filter_multiplier=2", "progress=false"]
TRAIN = ["iterations=8", "eval_interval=4", DATA, "data.crop_size=32", "data.batch_size=4"]
TRAIN += ["model.filter_multiplier=2", "progress=false", "tensorboard=false"]


class _Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k == "src":
                self.srcs.append(v)
            if k == "href":
                self.hrefs.append(v)


def test_demo_runs_every_stage_and_writes_a_self_contained_report(tmp_path, capsys):
    out = tmp_path / "demo"
    result = run_demo(out, search_overrides=SEARCH, train_overrides=TRAIN, samples=3)
    assert set(result.timings) == {*STAGES, "total"}
    assert result.timings["total"] >= sum(result.timings[s] for s in STAGES[:-1])
    for name in ("genotype.json", "architecture.png", "eval.json", "demo.json"):
        assert (out / name).is_file(), name
    assert (out / "train" / "best" / "model.safetensors").is_file()
    assert len(list((out / "predictions").glob("*_overlay.png"))) == 3
    # the trained architecture is the decoded one
    assert json.loads((out / "train" / "genotype.json").read_text()) == json.loads(
        (out / "genotype.json").read_text()
    )
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["model"]["mIoU"] == pytest.approx(result.miou)
    summary = json.loads((out / "demo.json").read_text())
    assert summary["mIoU"] == pytest.approx(result.miou)

    html = result.report_html.read_text()
    parser = _Sources()
    parser.feed(html)
    # architecture, search curves, comparison, training curves, predictions
    assert len(parser.srcs) == 5
    assert all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    assert not parser.hrefs
    md = result.report_md.read_text()
    links = [line.split("](", 1)[1].rstrip(")") for line in md.splitlines() if "](" in line]
    assert len(links) == 5 and all((out / link).is_file() for link in links)
    assert f"{100 * result.miou:.2f}" in md and f"{100 * result.baseline_miou:.2f}" in md

    # the baselines: a uniform draw (the sampler with the training seed) and a hand-designed
    # path with the searched cell, retrained with the searched one's config but for the output
    searched = Genotype.load(out / "genotype.json")
    (drawn,) = sample_genotypes(1, 0, layers=3, blocks=2)
    assert hand_designed_paths(3)["constant-8"] == (1, 1, 1)  # no deeplabv3 path in 3 layers
    expected = {"searched": searched, "random": drawn}
    expected["hand-constant-8"] = Genotype(cell=searched.cell, path=(1, 1, 1))
    archs = evaluation["architectures"]
    assert [a["name"] for a in archs] == list(expected)
    assert [a["kind"] for a in archs] == ["searched", "random", "hand-designed"]
    assert archs[0]["mIoU"] == pytest.approx(result.miou)
    for a in archs:
        assert a["genotype"] == str(expected[a["name"]])
        assert a["params"] > 0 and a["multiply_adds"] > 0 and 0 <= a["mIoU"] <= 1
        if a["name"] != "searched" and expected[a["name"]] != searched:
            run = out / "baselines" / a["name"]
            assert Genotype.load(run / "genotype.json") == expected[a["name"]]
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            searched_cfg = yaml.safe_load((out / "train" / "config.yaml").read_text())
            assert cfg["model"].pop("genotype") != searched_cfg["model"].pop("genotype")
            assert cfg.pop("output") != searched_cfg.pop("output")
            assert cfg == searched_cfg
            # its mIoU is that of its best model, evaluated like the searched one
            loaded = load_model(run / "best")
            val = build_dataset(
                "synthetic",
                None,
                "val",
                eval_transform(mean=loaded.config.mean, std=loaded.config.std),
                length=24,
                size=32,
                seed=0,
            )
            cm = evaluate(loaded.model, val, loaded.config.num_classes, batch_size=4)
            assert a["mIoU"] == pytest.approx(cm.mean_iou(), nan_ok=True)
    assert "Searched vs baselines" in md
    # how settled the search ended, as its summary says
    settled = json.loads((out / "search" / "summary.json").read_text())["convergence"]
    n = settled["arch_epochs"]
    assert f"| epochs the final cell had held | {settled['stable_cell_epochs']} of {n} |" in md

    printed = capsys.readouterr().out
    for stage in STAGES:
        assert f"{stage} done in" in printed
    assert "stage timings:" in printed


def test_majority_baseline_matches_a_direct_count():
    train = build_dataset("synthetic", None, "train", length=12, size=24, seed=1)
    val = build_dataset("synthetic", None, "val", length=5, size=24, seed=1)
    train_masks = np.stack([train.load(i)[1] for i in range(len(train))])
    val_masks = np.stack([val.load(i)[1] for i in range(len(val))])
    majority = np.bincount(train_masks.ravel()).argmax()
    cls, cm = majority_baseline(train, val)
    assert cls == majority
    # IoU of the predicted class = its share of the pixels; every other class present in the
    # ground truth has IoU 0; absent classes do not count
    present = np.unique(val_masks)
    expected = (val_masks == majority).mean() / len(present)
    assert cm.mean_iou() == pytest.approx(expected)


def test_demo_refuses_a_non_empty_folder_unless_told(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["demo", "--output", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").exists()


def test_packaged_demo_configs_are_the_synthetic_configs():
    for kind, name in (("search", "demo_search.yaml"), ("train", "demo_train.yaml")):
        packaged = resource_config(name).read_text()
        assert packaged == (ROOT / "configs" / kind / "synthetic.yaml").read_text()
    for kind in ("search", "train"):
        packaged = resource_config(f"demo3d_{kind}.yaml").read_text()
        assert packaged == (ROOT / "configs" / kind / "synthetic3d.yaml").read_text()


def test_majority_baseline_on_volumes_matches_a_direct_count():
    pytest.importorskip("monai")
    train = build_dataset("synthetic3d", None, "train", length=4, size=16, seed=1)
    val = build_dataset("synthetic3d", None, "val", length=3, size=16, seed=1)
    train_labels = np.stack([train.load(i).label for i in range(len(train))])
    val_labels = np.stack([val.load(i).label for i in range(len(val))])
    majority = np.bincount(train_labels.ravel()).argmax()
    cls, cm = majority_baseline(train, val)
    assert cls == majority == 0
    present = np.unique(val_labels)
    assert cm.mean_iou() == pytest.approx((val_labels == majority).mean() / len(present))
    # Dice of the predicted class: 2 |truth| / (|truth| + all voxels); 0 for the others
    share = (val_labels == majority).mean()
    assert cm.mean_dice() == pytest.approx(2 * share / (share + 1) / len(present))


VOLUME_DATA = "data.options={length: 6, size: 32, seed: 0}"


def test_volume_demo_runs_every_stage_and_reports_slices(tmp_path, capsys):
    """``demo --3d`` on a shrunken schedule: NIfTI predictions that are the model's argmax
    over the whole volume with the volume's affine, the evaluation of the best model, the
    report with its slices figure."""
    nib = pytest.importorskip("nibabel")
    import torch

    from autodeeplab.volume_inference import evaluate_volumes, predict_volume_logits

    out = tmp_path / "demo3d"
    search = ["epochs=1", "arch_start_epoch=0", VOLUME_DATA, "model.layers=2", "progress=false"]
    search += ["tensorboard=false", "threads=1", "data.max_eval_samples=1"]
    train = ["iterations=4", "eval_interval=2", VOLUME_DATA, "progress=false"]
    train += ["tensorboard=false", "threads=1", "data.max_eval_samples=2"]
    args = ["demo", "--3d", "--output", str(out), "--samples", "2", "--search", *search]
    code = main([*args, "--train", *train])
    assert code == 0
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["timings_s"]) == {*demo.VOLUME_STAGES, "total"}
    loaded = load_model(out / "train" / "best")
    assert loaded.config.network.spatial_dims == 3
    val = build_dataset("synthetic3d", None, "val", length=6, size=32, seed=0)
    cm = evaluate_volumes(loaded.model, val, 32).matrix
    assert summary["mIoU"] == pytest.approx(cm.mean_iou(), abs=1e-12)
    assert summary["mDice"] == pytest.approx(cm.mean_dice(), abs=1e-12)
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["volumes"] == 6 and len(evaluation["model"]["case_dice"]) == 6
    files = sorted((out / "predictions").iterdir())
    assert [f.name for f in files] == ["val_000.nii.gz", "val_001.nii.gz"]
    for i, f in enumerate(files):
        volume = val.load(i)
        written = nib.load(f)
        np.testing.assert_allclose(written.affine, volume.affine, atol=1e-6)  # float32 in NIfTI
        logits = predict_volume_logits(loaded.model, torch.from_numpy(volume.image), 32)
        np.testing.assert_array_equal(
            np.asarray(written.dataobj).transpose(2, 1, 0), logits.argmax(dim=0).numpy()
        )
    html = (out / "report.html").read_text()
    assert "Predictions" in html and "mean Dice" in html and "majority-class baseline" in html
    parser = _Sources()
    parser.feed(html)
    assert parser.srcs and all(src.startswith("data:image/png;base64,") for src in parser.srcs)
    assert (out / "report_files" / "predictions.png").is_file()


def test_a_demo_folder_in_use_is_refused_even_with_overwrite(tmp_path):
    out = tmp_path / "demo"
    (out / "search").mkdir(parents=True)
    (out / "notes.txt").write_text("keep")
    child = hold_lock(out)
    try:
        for overwrite in (False, True):
            with pytest.raises(RunFolderLockedError, match=f"pid {child.pid}"):
                run_demo(out, overwrite=overwrite, search_overrides=SEARCH, log=None)
    finally:
        child.kill()
        child.wait()
    # a search still writing into the demo's search folder: --overwrite removes nothing
    child = hold_lock(out / "search")
    try:
        with pytest.raises(RunFolderLockedError, match=f"pid {child.pid}"):
            run_demo(out, overwrite=True, search_overrides=SEARCH, log=None)
    finally:
        child.kill()
        child.wait()
    assert (out / "notes.txt").read_text() == "keep" and (out / "search").is_dir()


def test_a_stop_signal_during_the_search_stops_the_demo(tmp_path, monkeypatch, capsys):
    original = SearchEngine.weight_step

    def step_then_sigterm(self, batch):
        value = original(self, batch)
        os.kill(os.getpid(), signal.SIGTERM)
        return value

    monkeypatch.setattr(SearchEngine, "weight_step", step_then_sigterm)
    with pytest.raises(DemoStopped, match="SIGTERM during the search stage"):
        run_demo(tmp_path / "a", search_overrides=SEARCH, train_overrides=TRAIN, log=None)
    assert (tmp_path / "a" / "search" / "last.pt").is_file()
    assert not (tmp_path / "a" / "train").exists()  # it did not go on to train
    args = ["demo", "--output", str(tmp_path / "b"), "--search", *SEARCH, "--train", *TRAIN]
    assert main(args) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM during the search stage" in capsys.readouterr().err
