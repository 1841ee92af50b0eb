import json

import numpy as np
import pytest
import torch

import autodeeplab
from autodeeplab.saved_model import CONFIG_FILE, WEIGHTS_FILE, load_model, read_config, save_model

from tiny import make_tiny_model

NAMES = ("a", "b", "c")
PALETTE = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0)], dtype=np.uint8)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture
def tiny_model():
    return make_tiny_model()


def save(model, path, **kw):
    return save_model(
        model,
        path,
        class_names=NAMES,
        palette=PALETTE,
        mean=MEAN,
        std=STD,
        dataset="synthetic",
        **kw,
    )


def test_round_trip_identical_outputs(tmp_path, tiny_model):
    folder = save(tiny_model, tmp_path / "m", extra={"iterations": 10})
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = autodeeplab.load_model(folder)
    assert not loaded.model.training
    assert loaded.model.config == tiny_model.config
    cfg = loaded.config
    assert cfg.class_names == NAMES and cfg.mean == MEAN and cfg.std == STD
    assert cfg.palette_array().tolist() == PALETTE.tolist()
    assert (
        cfg.dataset == "synthetic" and cfg.extra == {"iterations": 10} and cfg.ignore_index == 255
    )
    for k, v in tiny_model.state_dict().items():  # BN buffers included
        assert torch.equal(loaded.model.state_dict()[k], v), k
    x = torch.randn(2, 3, 33, 41)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), tiny_model(x))


def test_save_replaces_existing_model_and_leaves_no_temp(tmp_path, tiny_model):
    save(tiny_model, tmp_path / "m")
    other = make_tiny_model(seed=1)
    save(other, tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    loaded = load_model(tmp_path / "m")
    for k, v in other.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_save_refuses_unrelated_folder(tmp_path, tiny_model):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a model folder"):
        save(tiny_model, tmp_path / "x")
    assert (tmp_path / "x" / "notes.txt").read_text() == "keep me"


def test_save_checks_metadata(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="class_names"):
        save_model(
            tiny_model, tmp_path / "m", class_names=["a"], palette=PALETTE, mean=MEAN, std=STD
        )
    assert not (tmp_path / "m").exists()


def test_missing_folder_and_files(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    folder = save(tiny_model, tmp_path / "m")
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_model(folder)
    (folder / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_model(folder)


def edit_config(folder, change):
    data = json.loads((folder / CONFIG_FILE).read_text())
    change(data)
    (folder / CONFIG_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("class_names"), "missing keys.*class_names"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.update(colours=1), "unknown keys.*colours"),
        (lambda d: d["network"]["genotype"].update(path=[0, 2]), "network"),
        (lambda d: d["network"]["genotype"]["cell"][0][0].__setitem__(1, "conv_9x9"), "conv_9x9"),
        (lambda d: d["normalization"].update(std=[1, 0, 1]), "std"),
        (lambda d: d.update(palette=[[0, 0, 0]]), "palette"),
    ],
)
def test_invalid_config_names_file_and_key(tmp_path, tiny_model, change, match):
    folder = save(tiny_model, tmp_path / "m")
    edit_config(folder, change)
    with pytest.raises(ValueError, match=match) as info:
        read_config(folder)
    assert str(folder / CONFIG_FILE) in str(info.value)


def test_invalid_json(tmp_path, tiny_model):
    folder = save(tiny_model, tmp_path / "m")
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        load_model(folder)
    assert CONFIG_FILE in str(info.value)


def test_weights_that_do_not_match_the_config(tmp_path, tiny_model):
    folder = save(tiny_model, tmp_path / "m")
    edit_config(folder, lambda d: d["network"].update(filter_multiplier=3))
    with pytest.raises(ValueError, match="shape mismatches") as info:
        load_model(folder)
    assert WEIGHTS_FILE in str(info.value)
    edit_config(folder, lambda d: d["network"]["genotype"].update(path=[0, 1, 1]))
    edit_config(folder, lambda d: d["network"].update(filter_multiplier=2))
    with pytest.raises(ValueError, match=r"missing keys: encoder\.cells\.2\."):
        load_model(folder)


def test_corrupt_weights(tmp_path, tiny_model):
    folder = save(tiny_model, tmp_path / "m")
    (folder / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read the weights"):
        load_model(folder)
