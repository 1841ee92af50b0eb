import argparse
import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autodeeplab import cli
from autodeeplab.cli import DEBUG_ENV, build_parser, error_report, main


def test_genotypes_json(capsys):
    assert main(["genotypes", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["autodeeplab"]["path"] == [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]


def test_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "autodeeplab", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("autodeeplab ")


# ---------------------------------------------------------------------------- error reports
SEARCH_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "search" / "synthetic.yaml"


def _fail(capsys, argv, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_malformed_yaml_config_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\noptim:\n  w_lr: [0.1\n  w_lr_min: 0.01\n")
    line = _fail(capsys, ["search", "--config", str(bad)])
    assert line.startswith("autodeeplab search: error: ")
    assert str(bad) in line and "invalid YAML at line 4" in line
    bad.write_bytes(b"epochs: \xff\xfe\n")
    assert "not a UTF-8 text file" in _fail(capsys, ["search", "--config", str(bad)])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("epochs=[1", "override 'epochs=[1': the value '[1' is not valid YAML (line 1"),
        ("foo", "override 'foo' must look like key=value"),
        ("=3", "empty key part"),
        ("optim.grad_clip=-1", "config key optim.grad_clip = -1 is out of range"),
        ("data.nope=1", "unknown config key 'data.nope'"),
    ],
)
def test_bad_overrides_are_one_line_errors(tmp_path, capsys, override, expected):
    argv = ["search", "--config", str(SEARCH_CONFIG), "--output", str(tmp_path / "r"), override]
    assert expected in _fail(capsys, argv)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("err", "status", "expected"),
    [
        (ValueError("bad value"), 2, "bad value"),
        (FileNotFoundError("config file x.yaml does not exist"), 2, "x.yaml does not exist"),
        (
            PermissionError(errno.EACCES, "Permission denied", "/out/last.pt"),
            2,
            "Permission denied: /out/last.pt; choose a folder you may write to",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"),
            2,
            "Read-only file system: /mnt/ro/run; the file system is read-only",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), 2, "No space left on device; free"),
        (FileExistsError(errno.EEXIST, "File exists", "out"), 2, "File exists: out; give a path"),
        (MemoryError(), 2, "out of memory (MemoryError); HINT"),
        (
            RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 bytes."),
            2,
            "out of memory (DefaultCPUAllocator: not enough memory",
        ),
        (torch.OutOfMemoryError("CUDA out of memory. " + "x. " * 100), 2, "; HINT"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (ZeroDivisionError("division by zero"), 1, "internal error: ZeroDivisionError"),
        (OSError(errno.EIO, "Input/output error"), 1, "internal error: OSError"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_error_report_maps_exceptions_to_status_and_message(err, status, expected):
    got_status, message = error_report(err, oom_hint="HINT")
    assert got_status == status and expected in message, message
    assert "\n" not in message and len(message) < 400


def _raise_in_genotypes(monkeypatch, err):
    def boom(args):
        raise err

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["genotypes"].set_defaults(func=boom)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)


def test_unexpected_errors_are_short_unless_debugging(monkeypatch, capsys):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    _raise_in_genotypes(monkeypatch, ZeroDivisionError("division by zero"))
    line = _fail(capsys, ["genotypes"], status=1)
    assert line == (
        "autodeeplab genotypes: error: internal error: ZeroDivisionError: division by zero "
        f"(run with --debug or {DEBUG_ENV}=1 for the traceback)"
    )
    assert main(["--debug", "genotypes"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert main(["genotypes"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_user_errors_keep_status_2_when_debugging(monkeypatch, capsys):
    _raise_in_genotypes(monkeypatch, ValueError("bad value"))
    assert main(["--debug", "genotypes"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("error: bad value")


def test_numeric_options_are_checked_by_the_parser(capsys):
    for argv, expected in [
        (["eval", "--model", "m", "--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
        (["eval", "--model", "m", "--workers", "-1"], "--workers: must be >= 0, got -1"),
        (["eval", "--model", "m", "--scales", "1", "0"], "--scales: must be > 0, got 0"),
        (["predict", "x", "--model", "m", "--out", "o", "--tile-above", "-1"], "must be >= 0"),
        (["predict", "x", "--model", "m", "--out", "o", "--tile-above", "nan"], "must be >= 0"),
        (["info", "--preset", "x", "--num-classes", "two"], "expected an integer, got 'two'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err


# ---------------------------------------------------------------------------- own data
def test_folder_templates_search_and_train_a_folder_of_ones_own(tmp_path):
    """configs/{search,train}/folder.yaml with nothing but --data-root and size overrides."""
    from autodeeplab.data import FolderDataset, write_synthetic_folder

    root = tmp_path / "mine"
    write_synthetic_folder(root, {"train": 8, "val": 2}, size=48)
    configs = Path(__file__).resolve().parents[1] / "configs"
    tiny = ["data.crop_size=48", "data.workers=0", "model.filter_multiplier=2"]
    search = ["search", "--config", str(configs / "search" / "folder.yaml"), "--data-root"]
    argv = [*search, str(root), "--output", str(tmp_path / "s"), *tiny]
    argv += ["epochs=2", "arch_start_epoch=1", "model.layers=2", "model.blocks=2"]
    argv += ["model.stem_channels=[4,4,8]"]
    assert main(argv) == 0
    genotype = tmp_path / "s" / "genotype.json"
    train = ["train", "--config", str(configs / "train" / "folder.yaml"), "--data-root"]
    argv = [*train, str(root), "--genotype", str(genotype), "--output", str(tmp_path / "t")]
    argv += [*tiny, "iterations=4", "eval_interval=4", "checkpoint_interval=4"]
    argv += ["data.batch_size=2", "model.aspp_channels=8", "model.decoder_channels=8"]
    assert main(argv) == 0
    metrics = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").open()]
    assert any("mIoU" in m for m in metrics)
    classes = FolderDataset(root, "val").class_names
    saved = json.loads((tmp_path / "t" / "model" / "config.json").read_text())
    assert tuple(saved["class_names"]) == classes


def test_a_split_smaller_than_a_batch_points_to_data_repeat(tmp_path, capsys):
    from autodeeplab.data import write_synthetic_folder

    root = tmp_path / "mine"
    write_synthetic_folder(root, {"train": 3, "val": 1}, size=48)  # trainA 1, trainB 2 images
    config = Path(__file__).resolve().parents[1] / "configs" / "search" / "folder.yaml"
    argv = ["search", "--config", str(config), "--data-root", str(root)]
    argv += ["--output", str(tmp_path / "s"), "data.crop_size=48", "data.workers=0"]
    line = _fail(capsys, argv)
    assert "trainA/trainB have 1/2 samples, fewer than one global batch of 2" in line
    assert "a larger data.repeat" in line
