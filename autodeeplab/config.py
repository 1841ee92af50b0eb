"""Typed run configurations: nested dataclasses loaded from YAML with dotted overrides.

A config file mirrors the dataclass tree; every key must be a field (an unknown key raises an
error naming it and listing the valid ones) and every value must match the field's type::

    cfg = load_config("configs/search/synthetic.yaml", ["optim.w_lr=0.01", "epochs=2"])
    save_config(cfg, "runs/x/config.yaml")

The loader is generic over dataclasses, so a training config reuses it unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A configuration file or override is not valid; the message says which key and why."""


# ---------------------------------------------------------------------------- search config
@dataclass
class _DataFields:
    """Data set and batching keys shared by the search and training configs."""

    name: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    eval_split: str = "val"
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the data set class (e.g. ``length``, ``size`` for synthetic)."""
    crop_size: int = 321
    scale: tuple[float, float] = (0.5, 2.0)
    """Random rescale range before cropping; ``[0.5, 0.5]`` = fixed half resolution."""
    flip: bool = True
    eval_size: tuple[int, int] | None = None
    """Resize evaluation images to ``[height, width]``; ``null`` keeps their size."""
    max_eval_samples: int | None = None
    """Evaluate on the first N samples of the evaluation split only (``null`` = all)."""
    batch_size: int = 2
    """Batch per process; the global batch is ``batch_size x processes``."""
    eval_batch_size: int = 1
    workers: int = 0


@dataclass
class DataConfig(_DataFields):
    """Which data set to search on and how to turn it into batches."""

    split_fraction: float = 0.5
    """Share of the training split that goes to trainA (weights); the rest is trainB."""


@dataclass
class SupernetConfig:
    """Arguments of :class:`autodeeplab.supernet.SearchNetwork` (``num_classes`` comes from data)."""

    layers: int = 12
    blocks: int = 5
    filter_multiplier: int = 8
    stem_channels: tuple[int, int, int] = (64, 64, 128)
    partial_channels: int = 1
    checkpoint_cells: bool = False


@dataclass
class OptimConfig:
    """Weight optimiser (SGD + cosine), architecture optimiser (Adam), loss."""

    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float | None = 5.0
    """Clip the weight gradient norm to this value (``null`` = no clipping)."""
    arch_lr: float = 3e-3
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    ignore_index: int = 255


@dataclass
class SearchConfig:
    """Everything that defines an architecture search run."""

    seed: int = 0
    epochs: int = 40
    arch_start_epoch: int = 20
    """Architecture steps run in epochs ``>= arch_start_epoch`` (0-based), i.e. after it."""
    unrolled: bool = False
    """DARTS second-order architecture gradient (finite-difference Hessian-vector product)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: SupernetConfig = field(default_factory=SupernetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: str = "runs/search"
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    threads: int | None = None
    """``torch.set_num_threads`` value; ``null`` leaves PyTorch's default (or OMP_NUM_THREADS)."""
    eval_interval: int = 1
    checkpoint_interval: int = 0
    """Keep a copy ``checkpoints/epoch_NNN.pt`` every N epochs (0 = only ``last.pt``)."""
    log_interval: int = 10
    """Write a step record to ``metrics.jsonl`` every N steps."""
    max_steps: int | None = None
    """Stop (with a checkpoint) after this many steps in total; resume continues the run."""
    progress: bool = True
    tensorboard: bool = True


RUNTIME_KEYS: frozenset[str] = frozenset(
    {
        "output",
        "device",
        "threads",
        "progress",
        "tensorboard",
        "max_steps",
        "epochs",
        "log_interval",
        "checkpoint_interval",
        "eval_interval",
        "data.root",
        "data.workers",
        "data.eval_batch_size",
        "data.max_eval_samples",
    }
)
"""Keys that may change between an interrupted run and its resumption."""


# ---------------------------------------------------------------------------- generic loader
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples etc."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # ``X | None``: X's own message says more (e.g. an unknown key)
            return _convert(value, options[0], key)
        for arg in options:
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (tuple, list, Sequence):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list ({_type_name(tp)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(
                    f"{key}: expected {len(args)} values, got {len(value)}: {value!r}"
                )
            return tuple(
                _convert(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys and wrong types raise."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys"
            f"{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def set_key(data: dict[str, Any], key: str, value: Any, where: str | None = None) -> None:
    """Set the dotted ``key`` (``a.b.c``) of a nested dict to ``value``, creating sections;
    errors start with ``where`` (default: ``override 'a.b.c'``)."""
    where = where or f"override {key!r}"
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{where} has an empty key part")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries in a nested dict; values are parsed with ``yaml.safe_load``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.w_lr=0.01)")
        key, raw = item.split("=", 1)
        set_key(data, key, yaml.safe_load(raw), where=f"override {item!r}")
    return data


def merge_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a mapping of overrides into a nested dict: nested sections are merged key by key
    and dotted keys (``optim.lr: 0.01``) address nested entries, like ``apply_overrides``."""
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"override keys must be strings, got {key!r}")
        if isinstance(value, Mapping) and key != "options" and "." not in key:
            child = data.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: the config's {key!r} is not a section")
            merge_overrides(child, value)
        else:
            set_key(data, key, value)
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested mapping of a YAML config file (empty for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    loaded = yaml.safe_load(path.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return loaded or {}


def load_config(
    path: str | Path | None, overrides: Sequence[str] = (), cls: type[T] = SearchConfig
) -> T:
    """Read YAML ``path`` (or start from the defaults), apply overrides, validate."""
    data = {} if path is None else read_config_file(path)
    return from_dict(cls, apply_overrides(data, overrides))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (the ``options`` dicts stay values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and k != "options":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def identity(cfg: Any, ignore: frozenset[str] = RUNTIME_KEYS) -> dict[str, Any]:
    """The flattened config without the keys in ``ignore``: what a resumed run must match."""
    return {k: v for k, v in flatten(to_dict(cfg)).items() if k not in ignore}


def config_hash(cfg: Any, ignore: frozenset[str] = RUNTIME_KEYS) -> str:
    """Short SHA-256 of :func:`identity`."""
    blob = json.dumps(identity(cfg, ignore), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: frozenset[str] = RUNTIME_KEYS
) -> list[str]:
    """Lines ``key: old -> new`` for every differing key of two nested config dicts."""
    a, b = flatten(old), flatten(new)
    keys = sorted((set(a) | set(b)) - ignore)
    return [
        f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}"
        for k in keys
        if a.get(k) != b.get(k)
    ]


# ---------------------------------------------------------------------------- train config
@dataclass
class TrainDataConfig(_DataFields):
    """Which data set to train on and how to turn it into batches (paper crop, batch 8)."""

    crop_size: int = 769
    batch_size: int = 8


@dataclass
class TrainModelConfig:
    """The network to retrain: a genotype (file or preset) and the :class:`AutoDeepLab` options."""

    genotype: str | None = None
    """Genotype JSON file (e.g. a search run's ``genotype.json``)."""
    preset: str | None = None
    """Model preset (``autodeeplab-s``, ...; see ``autodeeplab info --list``) instead of a file."""
    filter_multiplier: int | None = None
    """F; ``null`` = the preset's value (20 for a genotype file)."""
    aspp_channels: int = 256
    decoder_channels: int = 256
    low_level_reduced: int = 48
    drop_path_rate: float = 0.2
    """Scheduled Drop Path: final drop probability of the last cell (0 = off)."""
    sync_bn: bool = True
    """BatchNorm statistics over the global batch when several processes train."""


@dataclass
class TrainOptimConfig:
    """SGD with the poly schedule ``lr * (1 - it / iterations) ** power`` and optional warm-up."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    poly_power: float = 0.9
    min_lr: float = 0.0
    warmup_iters: int = 0
    """Linear warm-up from ``warmup_ratio * lr`` over the first N iterations (0 = none)."""
    warmup_ratio: float = 0.1
    grad_clip: float | None = None
    """Clip the gradient norm to this value (``null`` = no clipping)."""
    ignore_index: int = 255


@dataclass
class TrainConfig:
    """Everything that defines a retraining run."""

    seed: int = 0
    iterations: int = 1_500_000
    """Optimiser steps in total (the poly schedule and Scheduled Drop Path span them)."""
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    optim: TrainOptimConfig = field(default_factory=TrainOptimConfig)
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    amp_dtype: str = "float16"
    """``float16`` (with loss scaling) or ``bfloat16``."""
    output: str = "runs/train"
    device: str = "auto"
    threads: int | None = None
    eval_interval: int = 5000
    """Evaluate (and update ``best/``) every N iterations and at the end (0 = only at the end)."""
    checkpoint_interval: int = 1000
    """Write ``last.pt`` every N iterations (also after each evaluation and at the end)."""
    log_interval: int = 20
    """Write a step record to ``metrics.jsonl`` every N iterations."""
    max_steps: int | None = None
    """Stop (with a checkpoint) after this many iterations in total; resume continues the run."""
    progress: bool = True
    tensorboard: bool = True


TRAIN_RUNTIME_KEYS: frozenset[str] = (RUNTIME_KEYS - {"epochs"}) | {
    "model.genotype",
    "model.preset",
}
"""Keys that may change between an interrupted training run and its resumption (the genotype
is compared by content, not by file name)."""
