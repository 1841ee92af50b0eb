"""The study config: the data set, the retraining budget and the candidates, as YAML."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autodeeplab.config import (
    NEUTRAL_DEFAULTS,
    TRAIN_NEUTRAL_DEFAULTS,
    ConfigError,
    apply_overrides,
    from_dict,
    merge_overrides,
    read_config_file,
)

FORMAT_VERSION = 1
KINDS: tuple[str, ...] = ("searched", "consensus", "random", "hand-designed", "file")
"""Candidate kinds, in the order candidates are listed before sorting."""
CONSENSUS = "search-consensus"
"""Name of the candidate decoded from the mean distribution of the search trials."""

# A subset of the engines' runtime keys: epochs, max_steps, eval_interval and max_eval_samples
# may change when a single run is resumed, but they change what a study trial reports.
_RUN_KEYS = (
    "output",
    "device",
    "threads",
    "progress",
    "tensorboard",
    "log_interval",
    "checkpoint_interval",
    "data.root",
    "data.workers",
    "data.eval_batch_size",
)
TRIAL_RUNTIME_KEYS: frozenset[str] = frozenset({*_RUN_KEYS, "model.genotype", "model.preset"})
"""Keys of a trial's config that may change between runs of a study: where and how fast a
trial runs, not what it computes (the genotype is compared by content, not by file name)."""
STUDY_RUNTIME_KEYS: frozenset[str] = frozenset(
    {f"{part}.{key}" for part in ("train", "search") for key in (*_RUN_KEYS, "seed")}
)
"""Keys of the resolved study (``study.yaml``) that may change between runs. The ``seed``
of the base configs is replaced by every trial's own seed."""
STUDY_NEUTRAL_DEFAULTS: dict[str, Any] = {
    **{f"train.{key}": v for key, v in TRAIN_NEUTRAL_DEFAULTS.items()},
    **{f"search.{key}": v for key, v in NEUTRAL_DEFAULTS.items()},
    "random.multi_path": False,
    "random.path": None,
}
"""Keys added to the resolved study after study folders were first written, with the value
under which a study behaves as before (the base configs' :data:`NEUTRAL_DEFAULTS`): a study
folder written before them still continues."""


class StudyError(ValueError):
    """A study folder cannot be used with this configuration (another study, altered files)."""


class StudyInterrupted(RuntimeError):
    """A trial stopped early (Ctrl-C); what finished is kept and a rerun continues the study."""


# ---------------------------------------------------------------------------- configuration
@dataclass
class StudyTrainConfig:
    """The retraining budget every candidate shares."""

    config: str | None = None
    """Train config YAML (e.g. ``configs/train/synthetic.yaml``); null = TrainConfig defaults."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Train config keys set on top of it (nested or dotted keys: ``{iterations: 300}``)."""


@dataclass
class StudySearchConfig:
    """Search trials: the search engine run once per seed, each decoded genotype retrained."""

    config: str | None = None
    """Search config YAML (e.g. ``configs/search/synthetic.yaml``); null = the defaults."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Search config keys set on top of it."""
    trials: int | None = None
    """Number of search trials; their seeds are ``0..trials-1`` unless ``seeds`` are given."""
    seeds: list[int] | None = None
    """The search seeds, one trial each."""
    consensus: bool = False
    """Also retrain ``search-consensus``, the architecture decoded from the mean of the
    trials' final distributions (:mod:`autodeeplab.consensus`); needs two trials or more."""
    group_size: int | None = None
    """Searches per replicate of the method: the trials, in the order of their seeds, form
    groups of this many, each one run of "search k times, keep one architecture". The summary
    then gives, per group, the trial its supernet mIoU selects (the paper's rule, no retraining
    needed) and, with ``consensus: true``, retrains each group's consensus
    (``search-consensus-g0``, ``-g1``, ...), with the median of each rule over the groups;
    null = one group of all trials. At least 2, and a number of trials it divides."""


@dataclass
class StudyRandomConfig:
    """Architectures drawn uniformly from the search space (:func:`sample_genotypes`)."""

    num: int = 0
    seed: int = 0
    params: tuple[float | None, float | None] | None = None
    """Keep draws whose parameter count is in ``[min, max]`` (null for an open end)."""
    multiply_adds: tuple[float | None, float | None] | None = None
    """Keep draws whose Multi-Adds at the crop size are in ``[min, max]``."""
    largest_of: int = 1
    """Each candidate is the largest of this many draws (by ``largest_by``)."""
    largest_by: str = "params"
    multi_path: bool = False
    """Draw multi-path (DiNTS) topologies uniformly over the feasible ones instead of single
    paths: the baseline of a DiNTS search."""
    path: str | list[int] | None = None
    """Draw random cells on this one path (levels, ``"0-0-1-2"`` or a hand-designed family):
    the control of a search of the cell alone (the search's ``model.path``); null draws the
    path too."""


@dataclass
class StudyHandDesignedConfig:
    """The hand-designed path families of the space with one cell."""

    cell: str = "released"
    """``released`` (the published cell; needs 5 blocks), ``searched`` (the cell decoded by the
    first search trial), ``each`` (every search trial's cell on every family: the searched
    path against the hand-designed ones for the same cell) or a genotype JSON file whose cell
    is used."""
    families: list[str] | None = None
    """Path families (``constant-4``, ``deeplabv3``, ...); null = every family that fits."""


@dataclass
class StudyConfig:
    """Everything that defines a study (see ``docs/study.md`` for the schema)."""

    output: str = "runs/study"
    layers: int | None = None
    """Layers of the search space; null = the search config's ``model.layers``."""
    blocks: int | None = None
    """Blocks per cell; null = the search config's ``model.blocks``."""
    train: StudyTrainConfig = field(default_factory=StudyTrainConfig)
    train_seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Every candidate is retrained once per seed."""
    search: StudySearchConfig | None = None
    random: StudyRandomConfig | None = None
    hand_designed: StudyHandDesignedConfig | None = None
    genotypes: list[str] = field(default_factory=list)
    """Genotype JSON files retrained as further candidates."""


def load_study_config(path: str | Path | None, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read a study YAML (or start from the defaults), apply ``key=value`` overrides, check
    types and unknown keys. The rest of the validation happens in :class:`Study`."""
    data = {} if path is None else read_config_file(path)
    return from_dict(StudyConfig, apply_overrides(data, overrides))


def base_config(section: StudyTrainConfig | StudySearchConfig, cls: type[Any], key: str) -> Any:
    """The train or search config of a study section: its file, then its overrides."""
    if section.config is not None and not Path(section.config).is_file():
        raise FileNotFoundError(f"{key}.config: file {section.config} does not exist")
    data = {} if section.config is None else read_config_file(section.config)
    where = f"{key}.config {section.config}" if section.config else f"{key} (defaults)"
    try:
        return from_dict(cls, merge_overrides(data, section.overrides))
    except ConfigError as err:
        raise ConfigError(f"{where} with {key}.overrides: {err}") from None


def checked_seeds(values: Sequence[int], key: str) -> tuple[int, ...]:
    if not values:
        raise ConfigError(f"{key}: give at least one seed")
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"{key}: seeds must be distinct non-negative integers, got {values}")
    return tuple(values)
