"""Typed run configurations: nested dataclasses loaded from YAML with dotted overrides.

A config file mirrors the dataclass tree; every key must be a field (an unknown key raises an
error naming it and listing the valid ones) and every value must match the field's type::

    cfg = load_config("configs/search/synthetic.yaml", ["optim.w_lr=0.01", "epochs=2"])
    save_config(cfg, "runs/x/config.yaml")

The loader is generic over dataclasses, so a training config reuses it unchanged. Numeric
fields declare their valid values next to them (``lr: float = bounded(0.05, gt=0)``, see
:class:`Range`); :func:`from_dict` checks them, and so does :func:`check_ranges` for a config
built in code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import operator
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from autodeeplab import space

T = TypeVar("T")
_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A configuration file or override is not valid; the message says which key and why."""


# ---------------------------------------------------------------------------- value ranges
RANGE = "range"
"""Key of a dataclass field's ``metadata`` holding its :class:`Range`."""

Bound = float | str | None
"""A number, or the name of a sibling field whose value is the bound (``le="epochs"``)."""


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric config field (of every element, for a tuple field).

    ``ge``/``gt``/``le``/``lt`` are inclusive/exclusive bounds (a string names a sibling field,
    which must not be optional); ``increasing`` asks a tuple to be in non-decreasing order;
    ``zero`` accepts 0 as well and says what it means (``"to turn it off"``); ``null`` says
    what ``null`` means for an optional field; ``unless_set`` names an optional sibling field
    that replaces this one when set, and then the bounds naming sibling fields do not apply.
    Non-finite numbers are never valid. :func:`check_ranges` applies the ranges of a config
    object.
    """

    ge: Bound = None
    gt: Bound = None
    le: Bound = None
    lt: Bound = None
    increasing: bool = False
    zero: str | None = None
    null: str | None = None
    unless_set: str | None = None

    def _bound(self, bound: Bound, obj: Any, siblings: bool = True) -> tuple[float, str] | None:
        if bound is None:
            return None
        if isinstance(bound, str):
            if not siblings:
                return None
            if obj is None:  # describing the rule, not a value
                return math.nan, bound
            if self.unless_set is not None and getattr(obj, self.unless_set) is not None:
                return None  # the field is not used, so its relation to siblings is moot
            value = getattr(obj, bound)
            return value, f"{bound} = {_fmt(value)}"
        return bound, _fmt(bound)

    def _interval(self, obj: Any, siblings: bool = True) -> str:
        """``in [0, epochs = 40]``, ``> 0``, ...: the bounds, sibling ones read from ``obj``."""
        lo = self._bound(self.ge, obj, siblings) or self._bound(self.gt, obj, siblings)
        hi = self._bound(self.le, obj, siblings) or self._bound(self.lt, obj, siblings)
        if lo and hi:
            left = "[" if self.ge is not None else "("
            right = "]" if self.le is not None else ")"
            return f"in {left}{lo[1]}, {hi[1]}{right}"
        if lo:
            return f"{'>=' if self.ge is not None else '>'} {lo[1]}"
        if hi:
            return f"{'<=' if self.le is not None else '<'} {hi[1]}"
        return "a finite number"

    def describe(self, obj: Any = None, value: Any = None) -> str:
        """``must be in [0, epochs = 40] (or ...)``, sibling bounds read from ``obj`` (just
        named without it); worded for ``value`` (every element of a tuple; finite where it
        is not)."""
        text = self._interval(obj)
        values = value if isinstance(value, tuple | list) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            text = f"finite and {text}"
        many = isinstance(value, tuple | list) or self.increasing
        text = f"every value must be {text}" if many else f"must be {text}"
        if self.increasing:
            text += ", smallest first"
        if self.unless_set is not None and obj is None:
            text += f"; {self._interval(None, siblings=False)} while {self.unless_set} is set"
        notes = [
            f"{v} {meaning}" for v, meaning in (("0", self.zero), ("null", self.null)) if meaning
        ]
        return text + (f" (or {', or '.join(notes)})" if notes else "")

    def contains(self, value: float, obj: Any) -> bool:
        """Whether one number is within the bounds (sibling bounds read from ``obj``)."""
        if isinstance(value, float) and not math.isfinite(value):
            return False  # (an int is finite, and may be too large for math.isfinite)
        for bound, inside in (
            (self.ge, operator.ge),
            (self.gt, operator.gt),
            (self.le, operator.le),
            (self.lt, operator.lt),
        ):
            resolved = self._bound(bound, obj)
            if resolved is not None and not inside(value, resolved[0]):
                return False
        return True

    def allows(self, value: Any, obj: Any) -> bool:
        """Whether ``value`` (a number, a tuple of numbers or ``None``) is valid; sibling
        bounds are read from ``obj``, the config object holding the field."""
        if value is None or (self.zero is not None and value == 0):
            return True
        values = value if isinstance(value, tuple | list) else (value,)
        if not all(self.contains(v, obj) for v in values):
            return False
        return not (self.increasing and any(a > b for a, b in itertools.pairwise(values)))


def bounded(default: Any, **limits: Any) -> Any:
    """A dataclass field with ``default`` and the :class:`Range` ``Range(**limits)``."""
    return field(default=default, metadata={RANGE: Range(**limits)})


def _fmt(value: Any) -> str:
    """``-1.0 -> -1``, ``(0.5, 2.0) -> [0.5, 2]``: numbers as a user would type them."""
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def check_ranges(cfg: Any, prefix: str = "", *, recursive: bool = True) -> None:
    """Raise :class:`ConfigError` for the first field of ``cfg`` outside its :class:`Range`.

    Nested dataclasses are checked too unless ``recursive`` is false. The message names the
    dotted key, the value and what is valid, e.g. ``config key optim.grad_clip = -1 is out of
    range: must be > 0 (or null to disable)``.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if recursive and dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}{f.name}.")
        rng = f.metadata.get(RANGE)
        if rng is not None and not rng.allows(value, cfg):
            raise ConfigError(
                f"config key {prefix}{f.name} = {_fmt(value)} is out of range: {rng.describe(cfg, value)}"
            )


def describe_ranges(cls: type) -> dict[str, str]:
    """``{dotted key: what is valid}`` for every field with a :class:`Range` under the config
    dataclass ``cls`` (the tables of the config reference are made from it)."""
    out: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update({f"{f.name}.{k}": v for k, v in describe_ranges(hints[f.name]).items()})
        elif RANGE in f.metadata:
            tp = hints[f.name]
            many = typing.get_origin(tp) is tuple or any(
                typing.get_origin(a) is tuple for a in typing.get_args(tp)
            )
            out[f.name] = f.metadata[RANGE].describe(None, (0, 0) if many else 0)
    return out


# Smallest crops the networks accept: the supernet reaches the deepest level (stride 32) and
# needs at least that many pixels; a discrete network needs more than its deepest stride,
# which is at least the stride of level 0 (the train engine checks the actual genotype).
SEARCH_MIN_CROP = space.LEVEL_STRIDES[-1]
TRAIN_MIN_CROP = space.LEVEL_STRIDES[0] + 1
SEED_MAX = 2**32 - 1
"""Largest seed NumPy accepts."""


def crop_min_side(crop_size: int | Sequence[int]) -> int:
    """The smallest side of ``data.crop_size`` (one side, or ``[D, H, W]`` for volumes)."""
    return crop_size if isinstance(crop_size, int) else min(crop_size)


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
    crop_size: int | tuple[int, int, int] = bounded(321, ge=TRAIN_MIN_CROP)
    """Side of the square training crops; for volume data sets (``decathlon``,
    ``synthetic3d``) the region of interest of the training crops and of the sliding window
    at evaluation, one side for a cube or ``[D, H, W]``."""
    scale: tuple[float, float] = bounded((0.5, 2.0), gt=0, increasing=True)
    """Random rescale range before cropping; ``[0.5, 0.5]`` = fixed half resolution (images
    only: volumes are cropped at their voxel size)."""
    flip: bool = True
    repeat: int = bounded(1, ge=1)
    """Passes over the training split per epoch (each with its own augmentation draws); for
    small data sets, where an epoch would be a handful of steps."""
    eval_size: tuple[int, int] | None = bounded(None, ge=1, null="to keep the size")
    """Resize evaluation images to ``[height, width]``; ``null`` keeps their size."""
    max_eval_samples: int | None = bounded(None, ge=1, null="for all")
    """Evaluate on the first N samples of the evaluation split only (``null`` = all)."""
    batch_size: int = bounded(2, ge=1)
    """Batch per process; the global batch is ``batch_size x processes``."""
    eval_batch_size: int = bounded(1, ge=1)
    workers: int = bounded(0, ge=0)


@dataclass
class DataConfig(_DataFields):
    """Which data set to search on and how to turn it into batches."""

    # the supernet reaches stride 32 and evaluates without padding: larger minimums
    crop_size: int | tuple[int, int, int] = bounded(321, ge=SEARCH_MIN_CROP)
    eval_size: tuple[int, int] | None = bounded(None, ge=SEARCH_MIN_CROP, null="to keep the size")
    split_fraction: float = bounded(0.5, gt=0, lt=1)
    """Share of the training split that goes to trainA (weights); the rest is trainB."""


@dataclass
class SupernetConfig:
    """Arguments of :class:`autodeeplab.supernet.SearchNetwork` (``num_classes`` comes from data)."""

    layers: int = bounded(12, ge=1)
    blocks: int = bounded(5, ge=1)
    filter_multiplier: int = bounded(8, ge=1)
    stem_channels: tuple[int, int, int] = bounded((64, 64, 128), ge=1)
    partial_channels: int = bounded(1, ge=1)
    checkpoint_cells: bool = False
    selective_checkpoint: bool = False
    """Keep only the dense and pointwise convolution outputs for backward and recompute the
    cheap rest (same mathematics; about half the memory of the exact mode at 321x321, 1.4-1.8x
    its CPU time); excludes ``checkpoint_cells``."""
    aspp_rates: str | tuple[int, int, int, int] = "paper"
    """Atrous rate of the search head at each level (stride 4, 8, 16, 32): ``paper``
    (``96 / stride``), ``auto`` (scaled to ``data.crop_size``) or four integers."""
    path: str | tuple[int, ...] | None = None
    """A fixed network-level path, to search the cell alone on it: levels (``[0, 0, 1, 2]`` or
    ``"0-0-1-2"``, one per layer) or a hand-designed family (``deeplabv3``, ``constant-4``,
    ...); ``null`` (the paper): search the path over the whole trellis."""


@dataclass
class OptimConfig:
    """Weight optimiser (SGD + cosine), architecture optimiser (Adam), loss."""

    w_lr: float = bounded(0.025, gt=0)
    w_lr_min: float = bounded(0.001, ge=0, le="w_lr")
    w_momentum: float = bounded(0.9, ge=0, lt=1)
    w_weight_decay: float = bounded(3e-4, ge=0)
    grad_clip: float | None = bounded(5.0, gt=0, null="to disable")
    """Clip the weight gradient norm to this value (``null`` = no clipping)."""
    arch_lr: float = bounded(3e-3, gt=0)
    arch_betas: tuple[float, float] = bounded((0.5, 0.999), ge=0, lt=1)
    arch_weight_decay: float = bounded(1e-3, ge=0)
    ignore_index: int = bounded(255, ge=0, le=255)


@dataclass
class ArchRegularizerConfig:
    """An extra term of the architecture loss against the collapse to parameter-free operations
    (:mod:`autodeeplab.collapse`)."""

    name: str = "none"
    """``none`` (the paper) or ``beta_decay`` (beta-DARTS: mean logsumexp of the logits)."""
    weight: float = bounded(1.0, ge=0)
    """Largest weight ``lambda_max`` of the term."""
    ramp: str = "linear"
    """How the weight grows from 0 to ``weight`` over the architecture steps: ``linear``
    (beta-DARTS), ``cosine`` or ``constant``."""


@dataclass
class AuxSkipConfig:
    """DARTS- auxiliary skip connection on every mixed edge (:mod:`autodeeplab.collapse`)."""

    schedule: str = "none"
    """``none`` (the paper), ``linear`` or ``cosine`` decay of ``beta_aux`` to 0 over the run."""
    start: float = bounded(1.0, ge=0)
    """``beta_aux`` at the first step."""


@dataclass
class RelaxationConfig:
    """How the architecture parameters weight the supernet and which extra terms the
    architecture loss carries (docs/dints.md)."""

    name: str = "softmax"
    """``softmax`` (the paper: a softmax over the moves of every node, one decoded path),
    ``gumbel`` (GDAS: the softmax relaxation with one sampled operation per edge in every
    training step) or ``dints`` (an independent sigmoid per transition, a decoded multi-path
    topology)."""
    memory_target: float | None = bounded(None, gt=0, le=1, null="for no memory budget")
    """DiNTS: the expected memory of the searched network as a share of the memory with every
    transition on; the architecture loss gains ``memory_weight * |target - fraction|``."""
    memory_weight: float = bounded(1.0, ge=0)
    """DiNTS: weight of the memory-budget term (not ramped)."""
    path_entropy_weight: float = bounded(1.0, ge=0)
    """DiNTS: full weight of the mean binary entropy of the transitions."""
    op_entropy_weight: float = bounded(1.0, ge=0)
    """DiNTS: full weight of the mean entropy of the operation softmax."""
    topology_weight: float = bounded(0.001, ge=0)
    """DiNTS: full weight of the topology-consistency term (a sum of about 30 nats at 12
    layers, against at most 0.69 and 2.08 for the entropies)."""
    warmup: float = bounded(0.0, ge=0, lt=1)
    """DiNTS: share of the architecture steps before the three terms start; their weight then
    grows linearly to the full value at the last architecture step."""
    tau_max: float = bounded(10.0, gt=0)
    """Gumbel: the sampling temperature at the first architecture step (GDAS: 10)."""
    tau_min: float = bounded(0.1, gt=0)
    """Gumbel: the temperature at the last architecture step (GDAS: 0.1), reached linearly;
    at most ``tau_max``."""
    path_decoding: str = "probability"
    """Softmax and Gumbel: how the network path is read off the betas. ``probability`` (the
    paper): the path of maximum probability. ``ratio``: the path whose probability most exceeds
    its probability under uniform moves, so that the finest and coarsest levels (two moves per
    node, against three between) are not favoured by the trellis itself (docs/search.md)."""


@dataclass
class SelectionConfig:
    """How the cell is read off the supernet at the end of the search
    (:mod:`autodeeplab.projection`, docs/search.md)."""

    name: str = "argmax"
    """``argmax`` (the paper: the largest op weights) or ``perturbation`` (DARTS-PT: the
    operations and edges whose removal hurts the supernet most, one decision at a time)."""
    criterion: str = "miou"
    """Perturbation: what "hurts" measures, the supernet's ``miou`` (ties: the loss) or its
    ``loss`` on the selection batches."""
    eval_samples: int = bounded(64, ge=1)
    """Perturbation: trainB samples (with the search's augmentation, the same for every
    measurement) each perturbation is evaluated on."""
    tune_epochs: float = bounded(1.0, ge=0)
    """Perturbation: search steps (weight + architecture, at the final learning rate) after
    each decision but the last, in epochs of the search; 0 = no tuning."""


@dataclass
class SearchConfig:
    """Everything that defines an architecture search run."""

    seed: int = bounded(0, ge=0, le=SEED_MAX)
    epochs: int = bounded(40, ge=1)
    arch_start_epoch: int = bounded(20, ge=0, le="epochs", unless_set="arch_start_fraction")
    """Architecture steps run in epochs ``>= arch_start_epoch`` (0-based), i.e. after it; not
    used (nor bounded by ``epochs``) while ``arch_start_fraction`` is set."""
    arch_start_fraction: float | None = bounded(None, ge=0, lt=1, null="to use arch_start_epoch")
    """Architecture steps run from this fraction of all weight steps on (``0.5``: the second
    half, like the paper's 20 of 40 epochs), possibly from inside an epoch; replaces
    ``arch_start_epoch`` when set (``null`` = use ``arch_start_epoch``)."""
    arch_steps_per_step: int = bounded(1, ge=1)
    """Architecture steps after every weight step, each on its own trainB batch."""
    arch_regularizer: ArchRegularizerConfig = field(default_factory=ArchRegularizerConfig)
    aux_skip: AuxSkipConfig = field(default_factory=AuxSkipConfig)
    relaxation: RelaxationConfig = field(default_factory=RelaxationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    unrolled: bool = False
    """DARTS second-order architecture gradient (finite-difference Hessian-vector product)."""
    amp: bool = False
    """Run the supernet's forward passes (weight and architecture steps, evaluation, selection)
    under bfloat16 autocast, on any device. The parameters, their gradients and the optimizer
    states stay float32, and the loss is computed in float32. ``False`` (the default) keeps
    every computation in float32."""
    data: DataConfig = field(default_factory=DataConfig)
    model: SupernetConfig = field(default_factory=SupernetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: str = "runs/search"
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    threads: int | None = bounded(None, ge=1, null="for PyTorch's default")
    """``torch.set_num_threads`` value; ``null`` leaves PyTorch's default (or OMP_NUM_THREADS)."""
    eval_interval: int = bounded(1, ge=1, zero="to never evaluate")
    """Evaluate the supernet every N epochs and after the last one (0 = never)."""
    checkpoint_interval: int = bounded(0, ge=1, zero="to keep only last.pt")
    """Keep a copy ``checkpoints/epoch_NNN.pt`` every N epochs (0 = only ``last.pt``)."""
    checkpoint_steps: int = bounded(0, ge=1, zero="to write last.pt only at epoch ends")
    """Also write ``last.pt`` every N global steps inside an epoch (0 = only at epoch ends)."""
    log_interval: int = bounded(10, ge=1)
    """Write a step record to ``metrics.jsonl`` every N steps."""
    max_steps: int | None = bounded(None, ge=1, null="for no limit")
    """Stop (with a checkpoint) after this many steps in total (``null`` = no limit); resume
    continues the run."""
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
        "checkpoint_steps",
        "eval_interval",
        "data.root",
        "data.workers",
        "data.eval_batch_size",
        "data.max_eval_samples",
    }
)
"""Keys that may change between an interrupted run and its resumption."""

NEUTRAL_DEFAULTS: dict[str, Any] = {
    "data.repeat": 1,
    "model.aspp_rates": "paper",
    "model.selective_checkpoint": False,
    "model.path": None,
    "arch_start_fraction": None,
    "arch_steps_per_step": 1,
    "arch_regularizer.name": "none",
    "arch_regularizer.weight": 1.0,
    "arch_regularizer.ramp": "linear",
    "aux_skip.schedule": "none",
    "aux_skip.start": 1.0,
    "relaxation.name": "softmax",
    "relaxation.memory_target": None,
    "relaxation.memory_weight": 1.0,
    "relaxation.path_entropy_weight": 1.0,
    "relaxation.op_entropy_weight": 1.0,
    "relaxation.topology_weight": 0.001,
    "relaxation.warmup": 0.0,
    "relaxation.tau_max": 10.0,
    "relaxation.tau_min": 0.1,
    "relaxation.path_decoding": "probability",
    "selection.name": "argmax",
    "selection.criterion": "miou",
    "selection.eval_samples": 64,
    "selection.tune_epochs": 1.0,
    "amp": False,
}
"""Keys of the search config added after run folders were first written, with the value under
which a run behaves as runs did before the key existed. While a key holds that value it is left
out of the config identity and hash, so a checkpoint written before the key existed still
resumes."""
TRAIN_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "data.repeat": 1,
    "model.aspp_rates": "paper",
    "channels_last": False,
}
"""The same for the train config. Its own dict: a key both configs have may be new in one and
old in the other (``amp`` is new to the search, and the train config's ``amp: false`` has
always been part of its identity)."""


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
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(f"{key}: {value} is too large for a number") from None
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
        raise ConfigError(  # repr: a key with a line break stays on the message's one line
            f"unknown config key {prefix + str(unknown[0])!r}; valid keys"
            f"{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    # nested dataclasses were checked by their own from_dict; defaults are valid
    check_ranges(obj, prefix, recursive=False)
    return obj


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
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"override {item!r}: the value {raw!r} is not valid YAML ({_yaml_problem(err)})"
            ) from None
        set_key(data, key, value, where=f"override {item!r}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``line 3, column 7: mapping values are not allowed here`` (1-based)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


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
    """The nested mapping of a YAML config file (empty for an empty file); malformed YAML
    raises :class:`ConfigError` naming the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML at {_yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason})") from None
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


def neutral_defaults(cfg: Any) -> dict[str, Any]:
    """:data:`TRAIN_NEUTRAL_DEFAULTS` for a :class:`TrainConfig`, :data:`NEUTRAL_DEFAULTS`
    for a search config."""
    return TRAIN_NEUTRAL_DEFAULTS if isinstance(cfg, TrainConfig) else NEUTRAL_DEFAULTS


def identity(cfg: Any, ignore: frozenset[str] = RUNTIME_KEYS) -> dict[str, Any]:
    """The flattened config without the keys in ``ignore`` (and without the keys of its
    :func:`neutral_defaults` that hold their neutral value): what a resumed run must match."""
    neutral = neutral_defaults(cfg)
    return {
        k: v
        for k, v in flatten(to_dict(cfg)).items()
        if k not in ignore and (k not in neutral or v != neutral[k])
    }


def config_hash(cfg: Any, ignore: frozenset[str] = RUNTIME_KEYS) -> str:
    """Short SHA-256 of :func:`identity`."""
    blob = json.dumps(identity(cfg, ignore), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_diff(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    ignore: frozenset[str] = RUNTIME_KEYS,
    neutral: Mapping[str, Any] = NEUTRAL_DEFAULTS,
) -> list[str]:
    """Lines ``key: old -> new`` for every differing key of two nested config dicts (a key of
    ``neutral`` that a dict lacks counts as its neutral value: a key added after the dict was
    written)."""
    a, b = flatten(old), flatten(new)
    keys = sorted((set(a) | set(b)) - ignore)

    def shown(flat: dict[str, Any], k: str) -> Any:
        return flat.get(k, neutral.get(k, "<missing>"))

    return [
        f"{k}: {shown(a, k)!r} -> {shown(b, k)!r}"
        for k in keys
        if a.get(k, neutral.get(k)) != b.get(k, neutral.get(k))
    ]


# ---------------------------------------------------------------------------- train config
@dataclass
class TrainDataConfig(_DataFields):
    """Which data set to train on and how to turn it into batches (paper crop, batch 8)."""

    crop_size: int | tuple[int, int, int] = bounded(769, ge=TRAIN_MIN_CROP)
    batch_size: int = bounded(8, ge=1)
    """Batch per process; BatchNorm needs 2 samples or more (per process, or over all
    processes with ``model.sync_bn``)."""


@dataclass
class TrainModelConfig:
    """The network to retrain: a genotype (file or preset) and the :class:`AutoDeepLab` options."""

    genotype: str | None = None
    """Genotype JSON file (e.g. a search run's ``genotype.json``)."""
    preset: str | None = None
    """Model preset (``autodeeplab-s``, ...; see ``autodeeplab info --list``) instead of a file."""
    filter_multiplier: int | None = bounded(None, ge=1, null="for the preset's value")
    """F; ``null`` = the preset's value (20 for a genotype file)."""
    aspp_channels: int = bounded(256, ge=1)
    aspp_rates: str | tuple[int, ...] = "paper"
    """ASPP atrous rates: ``paper`` (DeepLab's ``(6, 12, 18) * 16 / output_stride``), ``auto``
    (scaled to ``data.crop_size``) or a list of integers."""
    decoder_channels: int = bounded(256, ge=1)
    low_level_reduced: int = bounded(48, ge=1)
    drop_path_rate: float = bounded(0.2, ge=0, lt=1)
    """Scheduled Drop Path: final drop probability of the last cell (0 = off)."""
    sync_bn: bool = True
    """BatchNorm statistics over the global batch when several processes train."""


@dataclass
class TrainOptimConfig:
    """SGD with the poly schedule ``lr * (1 - it / iterations) ** power`` and optional warm-up."""

    lr: float = bounded(0.05, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(1e-4, ge=0)
    nesterov: bool = False
    poly_power: float = bounded(0.9, ge=0)
    min_lr: float = bounded(0.0, ge=0, le="lr")
    warmup_iters: int = bounded(0, ge=0)
    """Linear warm-up from ``warmup_ratio * lr`` over the first N iterations (0 = none)."""
    warmup_ratio: float = bounded(0.1, ge=0, le=1)
    grad_clip: float | None = bounded(None, gt=0, null="to disable")
    """Clip the gradient norm to this value (``null`` = no clipping)."""
    ignore_index: int = bounded(255, ge=0, le=255)


@dataclass
class TrainConfig:
    """Everything that defines a retraining run."""

    seed: int = bounded(0, ge=0, le=SEED_MAX)
    iterations: int = bounded(1_500_000, ge=1)
    """Optimiser steps in total (the poly schedule and Scheduled Drop Path span them)."""
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    optim: TrainOptimConfig = field(default_factory=TrainOptimConfig)
    amp: bool = True
    """Mixed precision: on CUDA with either ``amp_dtype``, on the CPU with ``bfloat16`` only
    (with ``float16`` it is ignored there)."""
    amp_dtype: str = "float16"
    """``float16`` (with loss scaling) or ``bfloat16``."""
    channels_last: bool = False
    """Keep the network and the training batches in channels-last memory layout (``NHWC``;
    ``NDHWC`` for volumes): the same mathematics, often faster convolutions (oneDNN on the CPU,
    tensor cores on the GPU)."""
    output: str = "runs/train"
    device: str = "auto"
    threads: int | None = bounded(None, ge=1, null="for PyTorch's default")
    eval_interval: int = bounded(5000, ge=1, zero="to evaluate only at the end")
    """Evaluate (and update ``best/``) every N iterations and at the end (0 = only at the end)."""
    checkpoint_interval: int = bounded(1000, ge=1, zero="for no periodic checkpoint")
    """Write ``last.pt`` every N iterations (also after each evaluation and at the end;
    0 = only then)."""
    log_interval: int = bounded(20, ge=1)
    """Write a step record to ``metrics.jsonl`` every N iterations."""
    max_steps: int | None = bounded(None, ge=1, null="for no limit")
    """Stop (with a checkpoint) after this many iterations in total (``null`` = no limit);
    resume continues the run."""
    progress: bool = True
    tensorboard: bool = True


TRAIN_RUNTIME_KEYS: frozenset[str] = (RUNTIME_KEYS - {"epochs"}) | {
    "model.genotype",
    "model.preset",
}
"""Keys that may change between an interrupted training run and its resumption (the genotype
is compared by content, not by file name)."""
