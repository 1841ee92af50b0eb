import dataclasses
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from autodeeplab.config import (
    RANGE,
    ConfigError,
    DataConfig,
    Range,
    SearchConfig,
    TrainConfig,
    apply_overrides,
    check_ranges,
    config_diff,
    config_hash,
    describe_ranges,
    flatten,
    from_dict,
    identity,
    load_config,
    merge_overrides,
    save_config,
    to_dict,
)
from autodeeplab.engine.schedule import ArchSchedule

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs", "search").glob("*.yaml"))


def test_defaults_are_the_paper_settings():
    cfg = SearchConfig()
    assert (cfg.epochs, cfg.arch_start_epoch, cfg.unrolled) == (40, 20, False)
    assert (cfg.model.layers, cfg.model.blocks, cfg.model.filter_multiplier) == (12, 5, 8)
    o = cfg.optim
    assert (o.w_lr, o.w_lr_min, o.w_momentum, o.w_weight_decay) == (0.025, 0.001, 0.9, 3e-4)
    assert (o.arch_lr, o.arch_betas, o.arch_weight_decay) == (3e-3, (0.5, 0.999), 1e-3)


def test_new_search_options_default_to_the_paper():
    cfg = SearchConfig()
    assert (cfg.arch_start_fraction, cfg.arch_steps_per_step) == (None, 1)
    assert (cfg.relaxation.name, cfg.relaxation.memory_target) == ("softmax", None)
    assert cfg.arch_regularizer.name == "none" and cfg.aux_skip.schedule == "none"
    for path in CONFIGS:
        if path.stem.startswith("synthetic"):
            continue
        full = load_config(path)  # full-scale searches keep the paper's schedule, no guards
        assert (full.epochs, full.arch_start_epoch, full.arch_start_fraction) == (40, 20, None)
        assert full.arch_steps_per_step == 1
        # DiNTS states its own architecture learning rate (1e-3), the paper's is 3e-3
        arch_lr = 1e-3 if full.relaxation.name == "dints" else 3e-3
        assert (full.optim.arch_lr, full.optim.arch_weight_decay) == (arch_lr, 1e-3)
        assert (full.arch_regularizer.name, full.aux_skip.schedule) == ("none", "none"), path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, SearchConfig)
    names = ("cityscapes", "voc", "ade20k", "folder", "synthetic", "decathlon", "synthetic3d")
    assert cfg.data.name in names


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
    overrides = ["optim.w_lr=0.01", "epochs=3", "arch_start_epoch=1", "data.scale=[1, 1]"]
    cfg = load_config(None, [*overrides, "threads=null"])
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


def test_neutral_defaults_belong_to_their_config():
    """A key added to the search config with a neutral value leaves its hash as it was; the
    train config's key of the same name (``amp``, there since the first train runs) stays in
    the train config's identity with every value, so old train runs keep their hash too."""
    assert "amp" not in identity(SearchConfig())
    assert identity(load_config(None, ["amp=true"]))["amp"] is True
    for amp in (True, False):
        train = load_config(None, [f"amp={str(amp).lower()}"], cls=TrainConfig)
        assert identity(train)["amp"] is amp
    # the keys both configs share with the same neutral value are dropped from both
    for cls in (SearchConfig, TrainConfig):
        assert "data.repeat" not in identity(cls()) and "model.aspp_rates" not in identity(cls())


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


# ---------------------------------------------------------------------------- value ranges
# Valid and invalid examples of every numeric key, written out by hand from what the code
# that reads each value can take: a numeric field added without an entry here (and a range
# next to it) fails test_every_numeric_field_has_a_range.
NAN, INF = float("nan"), float("inf")
DATA_CASES: dict[str, tuple[list, list]] = {
    "data.scale": ([[0.5, 0.5], [0.1, 3]], [[0, 1], [2, 1], [-1, 1], [0.5, INF]]),
    "data.max_eval_samples": ([None, 1], [0, -2]),
    "data.batch_size": ([1, 16], [0, -1]),
    "data.eval_batch_size": ([1], [0]),
    "data.workers": ([0, 3], [-1]),
    "data.repeat": ([1, 20], [0, -1]),
}
COMMON_CASES: dict[str, tuple[list, list]] = {
    "seed": ([0, 2**32 - 1], [-1, 2**32]),
    "threads": ([None, 1], [0, -4]),
    "eval_interval": ([0, 1, 7], [-1]),
    "checkpoint_interval": ([0, 1, 5], [-1]),
    "log_interval": ([1, 50], [0, -1]),
    "max_steps": ([None, 1], [0, -1]),
}
SEARCH_CASES: dict[str, tuple[list, list]] = {
    **COMMON_CASES,
    **DATA_CASES,
    "checkpoint_steps": ([0, 1, 500], [-1]),
    "arch_start_fraction": ([None, 0, 0.5, 0.99], [-0.1, 1, 1.5]),
    "arch_steps_per_step": ([1, 4], [0, -1]),
    "arch_regularizer.weight": ([0, 1, 10], [-1]),
    "aux_skip.start": ([0, 1.0, 2.5], [-0.5]),
    "relaxation.memory_target": ([None, 0.01, 0.5, 1], [0, -0.2, 1.01, NAN]),
    "relaxation.memory_weight": ([0, 1, 20], [-1, INF]),
    "relaxation.path_entropy_weight": ([0, 1], [-0.1]),
    "relaxation.op_entropy_weight": ([0, 1], [-0.1]),
    "relaxation.topology_weight": ([0, 0.001, 1], [-1e-3]),
    "relaxation.warmup": ([0, 0.5, 0.99], [-0.1, 1, 1.5]),
    "relaxation.tau_max": ([0.5, 10], [0, -1]),
    "relaxation.tau_min": ([0.01, 0.1], [0, -0.1]),
    "selection.eval_samples": ([1, 64, 1000], [0, -3]),
    "selection.tune_epochs": ([0, 0.5, 1, 10], [-0.5, -1]),
    "epochs": ([20, 100], [0, -3]),  # at least arch_start_epoch (20)
    "arch_start_epoch": ([0, 40], [-1, 41]),  # epochs = 40 by default
    "data.crop_size": ([32, 321], [31, 0]),  # the supernet reaches stride 32
    "data.eval_size": ([None, [32, 48]], [[31, 64], [0, 0]]),
    "data.split_fraction": ([0.01, 0.5, 0.99], [0, 1, 1.5, NAN]),
    "model.layers": ([1, 12], [0]),
    "model.blocks": ([1, 5], [0]),
    "model.filter_multiplier": ([1, 8], [0, -8]),
    "model.stem_channels": ([[1, 1, 1]], [[0, 8, 8], [8, 8, -1]]),
    "model.partial_channels": ([1, 4], [0]),
    "optim.w_lr": ([0.001, 0.025], [0, -0.1, NAN, INF]),  # at least w_lr_min (0.001)
    "optim.w_lr_min": ([0, 0.025], [-1e-3, 0.03]),  # at most w_lr (0.025)
    "optim.w_momentum": ([0, 0.99], [1, -0.1]),
    "optim.w_weight_decay": ([0, 1e-3], [-1e-4]),
    "optim.grad_clip": ([None, 0.1], [0, -1, INF]),
    "optim.arch_lr": ([1e-5], [0, -1e-3]),
    "optim.arch_betas": ([[0, 0.5], [0.9, 0.999]], [[0.5, 1], [-0.1, 0.9]]),
    "optim.arch_weight_decay": ([0, 1e-3], [-1]),
    "optim.ignore_index": ([0, 255], [-1, 256]),
}
TRAIN_CASES: dict[str, tuple[list, list]] = {
    **COMMON_CASES,
    **DATA_CASES,
    "iterations": ([1, 1000], [0, -1]),
    "data.crop_size": ([5, 769], [4, 0]),  # more than the shallowest deepest stride (4)
    "data.eval_size": ([None, [1, 1]], [[0, 4]]),  # evaluation pads small images
    "model.filter_multiplier": ([None, 1], [0]),
    "model.aspp_channels": ([1], [0]),
    "model.decoder_channels": ([1], [0]),
    "model.low_level_reduced": ([1], [0]),
    "model.drop_path_rate": ([0, 0.99], [1, -0.1]),
    "optim.lr": ([1e-4], [0, -0.05]),
    "optim.momentum": ([0, 0.9], [1, 1.5]),
    "optim.weight_decay": ([0], [-1e-4]),
    "optim.poly_power": ([0, 0.9, 2], [-0.5]),
    "optim.min_lr": ([0, 0.05], [-1e-3, 0.06]),  # at most lr (0.05)
    "optim.warmup_iters": ([0, 10], [-1]),
    "optim.warmup_ratio": ([0, 1], [-0.1, 1.1]),
    "optim.grad_clip": ([None, 1.0], [0, -1]),
    "optim.ignore_index": ([0, 255], [-1, 256]),
}
CASES = {SearchConfig: SEARCH_CASES, TrainConfig: TRAIN_CASES}


def _is_numeric(tp) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    if tp in (int, float):
        return True
    return bool(args) and all(_is_numeric(a) for a in args)


def _leaf_fields(cls, prefix=""):
    """``(dotted key, field, type)`` of every non-dataclass field under ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, hints[f.name]


NUMERIC = [
    pytest.param(cls, key, f, id=f"{cls.__name__}.{key}")
    for cls in CASES
    for key, f, tp in _leaf_fields(cls)
    if _is_numeric(tp)
]


def _nested(key: str, value) -> dict:
    out: dict = {}
    node = out
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_numeric_field_detection():
    # the walk finds the fields these tests are about, and only numeric ones
    keys = {(p.values[0], p.values[1]) for p in NUMERIC}
    assert (SearchConfig, "optim.grad_clip") in keys and (TrainConfig, "data.scale") in keys
    assert (SearchConfig, "unrolled") not in keys and (TrainConfig, "data.name") not in keys
    assert (SearchConfig, "data.options") not in keys


@pytest.mark.parametrize(("cls", "key", "f"), NUMERIC)
def test_every_numeric_field_has_a_range(cls, key, f):
    assert isinstance(f.metadata.get(RANGE), Range), f"{key} has no declared range"
    assert key in CASES[cls], f"add valid and invalid examples of {key} to the tests"
    valid, invalid = CASES[cls][key]
    assert valid and invalid


@pytest.mark.parametrize(("cls", "key", "f"), NUMERIC)
def test_numeric_ranges_accept_and_reject(cls, key, f):
    valid, invalid = CASES[cls][key]
    for value in valid:
        cfg = from_dict(cls, _nested(key, value))
        expected = tuple(value) if isinstance(value, list) else value
        assert _get(cfg, key) == expected
    for value in invalid:
        with pytest.raises(ConfigError) as err:
            from_dict(cls, _nested(key, value))
        msg = str(err.value)
        assert msg.startswith(f"config key {key} = "), msg
        assert " is out of range: " in msg and "must be" in msg, msg
        assert "\n" not in msg


@pytest.mark.parametrize("cls", list(CASES))
def test_defaults_are_in_range(cls):
    check_ranges(cls())  # does not raise


def test_range_messages_name_key_value_and_what_is_valid():
    def message(*overrides, cls=SearchConfig):
        with pytest.raises(ConfigError) as err:
            load_config(None, list(overrides), cls=cls)
        return str(err.value)

    assert message("optim.grad_clip=-1") == (
        "config key optim.grad_clip = -1 is out of range: must be > 0 (or null to disable)"
    )
    assert message("max_steps=0") == (
        "config key max_steps = 0 is out of range: must be >= 1 (or null for no limit)"
    )
    assert message("epochs=6", "arch_start_epoch=7") == (
        "config key arch_start_epoch = 7 is out of range: must be in [0, epochs = 6]"
    )
    assert message("data.scale=[2.0, 0.5]") == (
        "config key data.scale = [2, 0.5] is out of range: every value must be > 0, smallest first"
    )
    assert message("optim.momentum=1.0", cls=TrainConfig) == (
        "config key optim.momentum = 1 is out of range: must be in [0, 1)"
    )
    assert message("eval_interval=-5", cls=TrainConfig) == (
        "config key eval_interval = -5 is out of range: must be >= 1 "
        "(or 0 to evaluate only at the end)"
    )
    assert message("optim.w_lr=.inf") == (
        "config key optim.w_lr = inf is out of range: must be finite and > 0"
    )


def test_sibling_bound_follows_the_sibling():
    # arch_start_epoch may reach epochs (no architecture step at all), not pass it
    assert load_config(None, ["epochs=3", "arch_start_epoch=3"]).arch_start_epoch == 3
    cfg = load_config(None, ["optim.w_lr=0.5", "optim.w_lr_min=0.5"])
    assert cfg.optim.w_lr_min == 0.5
    with pytest.raises(ConfigError, match=r"optim\.w_lr_min = 0\.001 .* w_lr = 0\.0005\]"):
        load_config(None, ["optim.w_lr=0.0005"])  # the default w_lr_min is now above w_lr


def test_arch_start_epoch_is_not_bounded_by_epochs_when_a_fraction_replaces_it():
    # the default arch_start_epoch (20) is not used by a 10-epoch run that starts by fraction
    cfg = load_config(None, ["epochs=10", "arch_start_fraction=0.5"])
    assert (cfg.arch_start_epoch, ArchSchedule.from_config(cfg, 4).start_step) == (20, 20)
    with pytest.raises(ConfigError, match=r"arch_start_epoch = 20 .* \[0, epochs = 10\]$"):
        load_config(None, ["epochs=10"])
    with pytest.raises(ConfigError, match=r"arch_start_epoch = -1 .*: must be >= 0$"):
        load_config(None, ["epochs=10", "arch_start_fraction=0.5", "arch_start_epoch=-1"])
    cfg.arch_start_fraction = None  # a config changed in code is checked again
    with pytest.raises(ConfigError, match=r"arch_start_epoch = 20"):
        check_ranges(cfg)


def test_configs_built_in_code_are_checked_by_check_ranges():
    cfg = SearchConfig()
    cfg.optim.grad_clip = -1.0
    with pytest.raises(ConfigError, match=r"optim\.grad_clip = -1 "):
        check_ranges(cfg)
    cfg = TrainConfig()
    cfg.data.eval_size = (8, 0)
    with pytest.raises(ConfigError, match=r"data\.eval_size = \[8, 0\] .*every value must be >= 1"):
        check_ranges(cfg)


@pytest.mark.parametrize(("cls", "doc"), [(SearchConfig, "search.md"), (TrainConfig, "train.md")])
def test_docs_list_every_range(cls, doc):
    text = (Path(__file__).resolve().parents[1] / "docs" / doc).read_text()
    for key, valid in describe_ranges(cls).items():
        assert f"| `{key}` | {valid.replace('must be ', '')} |" in text, key


# ---------------------------------------------------------------------------- properties
PROPERTY = settings(max_examples=200, deadline=None)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300)  # beyond the float range
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10)
    | st.sampled_from(["1e-5", "-3", ".nan", "0x1f", "[1", "{a: 1}"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


numbers = (
    st.integers(-3, 300)
    | st.integers(min_value=2**32 - 2)
    | st.floats()
    | st.lists(st.integers(-1, 100) | st.floats(), max_size=4)
)
leaves = numbers | values


def _config_dicts(cls) -> st.SearchStrategy:
    """Mappings over the real keys of ``cls`` (and some unknown ones) with arbitrary values."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        fields[f.name] = _config_dicts(tp) | values if dataclasses.is_dataclass(tp) else leaves
    known = st.fixed_dictionaries({}, optional=fields)
    return known | st.dictionaries(st.sampled_from([*fields, "nope"]), values, max_size=4)


@PROPERTY
@given(
    st.sampled_from([SearchConfig, TrainConfig]).flatmap(
        lambda c: st.tuples(st.just(c), _config_dicts(c))
    )
)
@example((SearchConfig, {"optim": {"w_lr": 10**400}}))  # float(int) overflows
@example((TrainConfig, {"iterations": 10**400}))  # math.isfinite(int) overflows
def test_from_dict_of_arbitrary_values_raises_only_config_errors(case):
    cls, data = case
    try:
        cfg = from_dict(cls, data)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
    else:
        check_ranges(cfg)  # whatever is accepted is in range
        assert from_dict(cls, to_dict(cfg)) == cfg


def _number(f, tp, rng: Range, siblings: dict, draw):
    """A value of numeric type ``tp`` inside ``rng`` (sibling bounds from ``siblings``)."""

    def bound(b):
        return siblings[b] if isinstance(b, str) else b

    lo = bound(rng.ge if rng.ge is not None else rng.gt)
    hi = bound(rng.le if rng.le is not None else rng.lt)
    if tp is int:
        lo = -(10**6) if lo is None else lo + (rng.gt is not None)
        hi = lo + 10**6 if hi is None else hi - (rng.lt is not None)
        return draw(st.integers(lo, hi))
    return draw(
        st.floats(
            min_value=lo,
            max_value=hi if hi is not None else (lo or 0) + 1e6,
            exclude_min=rng.gt is not None,
            exclude_max=rng.lt is not None,
            allow_nan=False,
        )
    )


@st.composite
def valid_configs(draw, cls):
    """A valid config dict for ``cls``, every numeric value drawn inside its declared range."""
    hints = typing.get_type_hints(cls)
    out: dict = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out[f.name] = draw(valid_configs(tp))
            continue
        rng = f.metadata.get(RANGE)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = type(None) in typing.get_args(tp)
        if optional and draw(st.booleans()):
            out[f.name] = None
        elif rng is not None:
            base = args[0] if optional else tp
            if not optional and typing.get_origin(tp) in (typing.Union, types.UnionType):
                # one of several forms (one side, or [D, H, W])
                base = draw(st.sampled_from(args))
            if rng.zero is not None and draw(st.booleans()):
                out[f.name] = 0
            elif typing.get_origin(base) is tuple:
                items = [_number(f, a, rng, out, draw) for a in typing.get_args(base)]
                out[f.name] = sorted(items) if rng.increasing else items
            else:
                out[f.name] = _number(f, base, rng, out, draw)
        elif tp is bool:
            out[f.name] = draw(st.booleans())
        elif f.name == "aspp_rates":  # a rule's name or explicit rates
            out[f.name] = draw(st.sampled_from(["paper", "auto"]))
        elif f.name == "path":  # a fixed path: levels or a name (checked when it is built)
            levels = st.lists(st.integers(0, 3), min_size=1, max_size=4)
            out[f.name] = draw(st.one_of(st.text(max_size=12), levels))
        elif tp in (str, str | None):
            out[f.name] = draw(st.text(max_size=12))
        else:  # data.options (without NaN, which equals nothing, itself included)
            values = scalars.filter(lambda v: v == v)
            out[f.name] = draw(st.dictionaries(st.text(max_size=6), values, max_size=3))
    return out


@settings(max_examples=100, deadline=None)  # YAML of a whole config is slow to write
@given(
    st.sampled_from([SearchConfig, TrainConfig]).flatmap(
        lambda c: st.tuples(st.just(c), valid_configs(c))
    )
)
def test_valid_configs_round_trip_through_dicts_and_yaml(case):
    cls, data = case
    cfg = from_dict(cls, data)
    assert from_dict(cls, to_dict(cfg)) == cfg
    assert from_dict(cls, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg


override_like = st.text(max_size=30) | st.builds(
    "{}={}".format,
    st.sampled_from(["epochs", "optim.w_lr", "data.scale", "data", "a.b", "", ".x", "seed.x"])
    | st.text(max_size=8),
    st.text(max_size=20) | st.sampled_from(["[1", "{a: [", "!!python/name:os.system", "&a [*a]"]),
)


@PROPERTY
@given(st.lists(override_like, max_size=3))
@example(["0\n0="])  # an unknown key with a line break
def test_arbitrary_overrides_raise_only_config_errors(overrides):
    try:
        apply_overrides({}, overrides)
    except ConfigError as err:
        assert str(err)
    try:
        load_config(None, overrides)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)


identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


def _yaml(value) -> str:
    """One-line YAML of ``value`` as a user would type it after ``key=``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    return text.removesuffix("\n...\n").removesuffix("\n")


@PROPERTY
@given(st.lists(identifiers, min_size=1, max_size=3), yaml_values)
def test_generated_overrides_set_exactly_that_key(parts, value):
    key = ".".join(parts)
    assert apply_overrides({}, [f"{key}={_yaml(value)}"]) == _nested(key, value)
    # on a real config dict: that key changes, no other
    base = to_dict(SearchConfig())
    real = sorted(flatten(base))
    chosen = real[len(key) % len(real)]
    out = flatten(apply_overrides(to_dict(SearchConfig()), [f"{chosen}={_yaml(value)}"]))
    assert out == {**flatten(base), chosen: value}


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
