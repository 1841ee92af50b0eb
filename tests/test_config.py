from pathlib import Path

import pytest

from autodeeplab.config import (
    ConfigError,
    DataConfig,
    SearchConfig,
    config_diff,
    config_hash,
    from_dict,
    load_config,
    merge_overrides,
    save_config,
    to_dict,
)

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs", "search").glob("*.yaml"))


def test_defaults_are_the_paper_settings():
    cfg = SearchConfig()
    assert (cfg.epochs, cfg.arch_start_epoch, cfg.unrolled) == (40, 20, False)
    assert (cfg.model.layers, cfg.model.blocks, cfg.model.filter_multiplier) == (12, 5, 8)
    o = cfg.optim
    assert (o.w_lr, o.w_lr_min, o.w_momentum, o.w_weight_decay) == (0.025, 0.001, 0.9, 3e-4)
    assert (o.arch_lr, o.arch_betas, o.arch_weight_decay) == (3e-3, (0.5, 0.999), 1e-3)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, SearchConfig)
    assert cfg.data.name in ("cityscapes", "voc", "ade20k", "synthetic")


def test_cityscapes_config_matches_spec():
    cfg = load_config(next(p for p in CONFIGS if p.stem == "cityscapes"))
    assert (cfg.data.crop_size, cfg.data.scale, cfg.data.batch_size) == (321, (0.5, 0.5), 2)
    assert (cfg.epochs, cfg.arch_start_epoch, cfg.model.filter_multiplier) == (40, 20, 8)
    assert cfg.optim.ignore_index == 255


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\noptim:\n  w_learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "optim.w_learning_rate" in msg and "w_lr" in msg and "arch_lr" in msg


def test_dotted_overrides_are_parsed_and_type_checked():
    cfg = load_config(None, ["optim.w_lr=0.01", "epochs=3", "data.scale=[1, 1]", "threads=null"])
    assert cfg.optim.w_lr == 0.01 and cfg.epochs == 3 and cfg.threads is None
    assert cfg.data.scale == (1.0, 1.0) and isinstance(cfg.data.scale[0], float)
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        load_config(None, ["epochs=many"])
    with pytest.raises(ConfigError, match="expected 2 values"):
        load_config(None, ["optim.arch_betas=[0.5]"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(None, ["unrolled=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.nope'"):
        load_config(None, ["data.nope=1"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("/nonexistent/search.yaml")


def test_save_load_round_trip(tmp_path):
    cfg = load_config(None, ["data.options={length: 8}", "data.eval_size=[32, 48]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert from_dict(DataConfig, to_dict(cfg)["data"]) == cfg.data


def test_hash_and_diff_ignore_runtime_keys():
    a = SearchConfig()
    b = load_config(None, ["epochs=50", "output=elsewhere", "max_steps=3", "data.root=/x"])
    assert config_hash(a) == config_hash(b)
    c = load_config(None, ["model.layers=6", "optim.w_lr=0.1"])
    assert config_hash(a) != config_hash(c)
    diff = config_diff(to_dict(a), to_dict(c))
    assert len(diff) == 2 and diff[0].startswith("model.layers: 12 -> 6")


def test_float_fields_accept_yaml_1_1_exponent_strings(tmp_path):
    # PyYAML reads "1e-5" (no dot) as a string; float fields still take it
    file = tmp_path / "c.yaml"
    file.write_text("optim:\n  w_lr: 1e-3\n  w_weight_decay: 3E-4\n")
    cfg = load_config(file, ["optim.arch_lr=+2e-4"])
    assert (cfg.optim.w_lr, cfg.optim.w_weight_decay, cfg.optim.arch_lr) == (1e-3, 3e-4, 2e-4)
    with pytest.raises(ConfigError, match=r"optim\.w_lr: expected a number"):
        load_config(None, ["optim.w_lr=1e-3x"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["epochs=1e3"])  # only float fields convert


def test_merge_overrides_merges_sections_and_takes_dotted_keys():
    data = {"epochs": 3, "optim": {"w_lr": 0.1, "arch_lr": 0.2}, "data": {"options": {"a": 1}}}
    merge_overrides(
        data, {"optim": {"w_lr": 0.5}, "data.batch_size": 4, "data": {"options": {"b": 2}}}
    )
    assert data == {
        "epochs": 3,
        "optim": {"w_lr": 0.5, "arch_lr": 0.2},  # merged key by key
        "data": {"options": {"b": 2}, "batch_size": 4},  # options replaced, like a=b overrides
    }
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        merge_overrides(data, {"epochs": {"x": 1}})
    with pytest.raises(ConfigError, match="empty key part"):
        merge_overrides(data, {"optim..w_lr": 1})


def test_optional_fields_report_the_inner_error():
    # ``X | None`` fields say what X needs rather than "expected X | None"
    with pytest.raises(ConfigError, match=r"optim\.grad_clip: expected a number, got 'big'"):
        load_config(None, ["optim.grad_clip=big"])
    with pytest.raises(ConfigError, match=r"data\.eval_size: expected 2 values"):
        load_config(None, ["data.eval_size=[1, 2, 3]"])
    assert load_config(None, ["optim.grad_clip=null"]).optim.grad_clip is None
