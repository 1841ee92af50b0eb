"""No file a user is handed can run code when a command reads it.

A planted checkpoint whose pickle calls ``os.system`` (the classic attack on shared ``.pt``
files) is given to every command that reads checkpoints; each must refuse it with a message
and exit code 2, and the payload's marker file must never appear.
"""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autodeeplab import checkpoint
from autodeeplab.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    rng_state,
    safe_torch_load,
    save_checkpoint,
    set_rng_state,
)
from autodeeplab.cli import main
from autodeeplab.draw import load_architecture

from runs import SEARCH_TINY

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def plant(path: Path, marker: Path, *, zipped: bool = True) -> Path:
    """A file that looks like a search checkpoint (alphas, betas, format version) but whose
    pickle creates ``marker`` when it is unpickled without restrictions."""
    state = {
        "format_version": FORMAT_VERSION,
        "model": {"alphas": torch.zeros(5, 8), "betas": torch.zeros(3, 4, 3)},
        "note": Payload(f"touch {marker}"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if zipped:
        torch.save(state, path)
    else:  # the legacy, non-zip torch format: a bare pickle stream
        path.write_bytes(pickle.dumps(state))
    return path


def test_the_payload_is_real(tmp_path):
    """Control: loaded without restrictions, the planted file does run its command."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the legacy file's protocol
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy-pickle"])
def test_library_readers_refuse_and_never_execute(tmp_path, zipped):
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "evil.pt", marker, zipped=zipped)
    with pytest.raises(CheckpointError, match=r"refusing to load checkpoint .*system"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        safe_torch_load(evil)
    with pytest.raises(ValueError, match="architecture file"):
        load_architecture(evil)
    assert not marker.exists()


def _tiny_search_run(tmp_path: Path) -> Path:
    out = tmp_path / "search"
    config = ROOT / "configs" / "search" / "synthetic.yaml"
    assert (
        main(["search", "--config", str(config), "--output", str(out), *SEARCH_TINY, "max_steps=1"])
        == 0
    )
    return out


def test_every_command_that_reads_checkpoints_refuses_a_planted_one(tmp_path, capsys):
    from tests.test_train import TINY as TRAIN_TINY
    from tests.test_train import genotype_file

    marker = tmp_path / "pwned"
    search_run = _tiny_search_run(tmp_path)
    plant(search_run / "last.pt", marker)
    train_config = ROOT / "configs" / "train" / "synthetic.yaml"
    train_run = tmp_path / "train"
    genotype = str(genotype_file(tmp_path))
    train_args = ["train", "--config", str(train_config), "--genotype", genotype]
    train_args += ["--output", str(train_run), *TRAIN_TINY, "iterations=1"]
    assert main(train_args) == 0
    plant(train_run / "last.pt", marker)
    shutil.copy(search_run / "last.pt", tmp_path / "shared.pt")
    capsys.readouterr()

    search_config = ROOT / "configs" / "search" / "synthetic.yaml"
    commands = {
        "decode FILE": ["decode", str(tmp_path / "shared.pt")],
        "decode RUNDIR": ["decode", str(search_run)],
        "draw FILE": ["draw", str(tmp_path / "shared.pt"), "--out", str(tmp_path / "a.png")],
        "search --resume": [
            "search",
            "--config",
            str(search_config),
            "--output",
            str(search_run),
            "--resume",
            *SEARCH_TINY,
        ],
        "train --resume": [*train_args[:-1], "iterations=2", "--resume"],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "could run code" in err and ("last.pt" in err or "shared.pt" in err), (name, err)
        assert not marker.exists(), name
    assert not (tmp_path / "a.png").exists()


def test_checkpoints_written_by_the_engines_load_with_weights_only(tmp_path):
    """What the project writes holds only tensors, numbers, strings and containers."""
    run = _tiny_search_run(tmp_path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "last.pt") == []
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["format_version"] == FORMAT_VERSION == 2


def _version_1_rng_state() -> dict:
    """The random state as version-1 checkpoints stored it: numpy's tuple with an array."""
    import random

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def test_version_1_checkpoints_still_load_and_restore_the_numpy_state(tmp_path):
    np.random.seed(123)
    old = _version_1_rng_state()
    expected = np.random.rand(3)
    torch.save({"format_version": 1, "rng": old, "step": 7}, tmp_path / "v1.pt")
    names = torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "v1.pt")
    assert any("_reconstruct" in n for n in names)  # the file does need the numpy allow-list
    state = load_checkpoint(tmp_path / "v1.pt")
    np.random.seed(0)
    set_rng_state(state["rng"])
    assert np.array_equal(np.random.rand(3), expected)


def test_new_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    np.random.seed(5)
    np.random.randn()  # leaves a cached Gaussian in the state (has_gauss = 1)
    state = rng_state()
    expected = (np.random.randn(), np.random.rand(4))
    save_checkpoint({"rng": state}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)  # no allow-list needed
    np.random.seed(0)
    set_rng_state(loaded["rng"])
    assert np.random.randn() == expected[0]
    assert np.array_equal(np.random.rand(4), expected[1])


def test_other_objects_are_named_in_the_refusal(tmp_path):
    key = np.arange(3, dtype=np.uint32)  # what a version-1 generator state holds
    torch.save({"format_version": FORMAT_VERSION, "x": key}, tmp_path / "ok.pt")
    assert np.array_equal(load_checkpoint(tmp_path / "ok.pt")["x"], key)
    torch.save({"format_version": FORMAT_VERSION, "x": Path("a")}, tmp_path / "path.pt")
    with pytest.raises(CheckpointError, match=r"PosixPath|WindowsPath"):
        load_checkpoint(tmp_path / "path.pt")


def test_truncated_file_names_the_file(tmp_path):
    save_checkpoint({"w": torch.ones(100)}, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*c\.pt"):
        checkpoint.load_checkpoint(tmp_path / "c.pt")
