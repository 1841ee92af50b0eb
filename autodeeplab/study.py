"""Does the search beat random architectures? Every candidate retrained under one budget.

A study retrains every candidate architecture with the identical training configuration (data,
iterations, schedule, F, crop, batch, evaluation; only the architecture and the training seed
differ) and reports every candidate's validation mIoU, favourable or not:

* ``searched``: search trials with different seeds (the search engine), each decoded genotype;
* ``random``: architectures drawn uniformly from the same space (:mod:`autodeeplab.sample`);
* ``hand-designed``: the hand-designed path families of the space with one cell;
* ``file``: genotype files named in the study config.

Study folder::

    config.yaml             the study config as given (``--config`` for a rerun)
    study.yaml              the resolved study, checked on every rerun
    candidates/<name>.json  the genotype of every candidate
    search/<name>/          one search run per trial (+ trial.json once finished)
    train/<name>/seed<k>/   one training run per candidate and training seed (+ trial.json)
    trials.jsonl            one record per trial finished, in the order they finished
    study.json              every candidate with its figures, and the summary statistics
    study.md, study.html    the same as a report: the table of every candidate, sorted
    study.png               mIoU against parameters and against Multi-Adds

Running the same study again resumes it: a finished trial (its ``trial.json`` exists and was
written for the same configuration) is never redone, an interrupted one continues from its
``last.pt`` through the engines' own resume, and a study folder written with a different
configuration is refused with the keys that differ.

The statistics (:func:`competition_ranks`, :func:`z_score`, :func:`pooled_std`,
:func:`architecture_signal`, :func:`summarize`) are pure functions of the per-seed results.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autodeeplab import diagnostics, space
from autodeeplab.config import (
    NEUTRAL_DEFAULTS,
    ConfigError,
    SearchConfig,
    TrainConfig,
    apply_overrides,
    config_diff,
    from_dict,
    identity,
    merge_overrides,
    read_config_file,
    to_dict,
)
from autodeeplab.engine.common import EARLY_STOP, record_early_stop_signals
from autodeeplab.engine.loop import print_flush
from autodeeplab.genotype import RELEASED, Genotype, path_string
from autodeeplab.ray_trials import RayOptions, run_on_ray
from autodeeplab.sample import LARGEST_BY

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
    **{f"{part}.{key}": v for part in ("train", "search") for key, v in NEUTRAL_DEFAULTS.items()},
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


def _base_config(section: StudyTrainConfig | StudySearchConfig, cls: type[Any], key: str) -> Any:
    """The train or search config of a study section: its file, then its overrides."""
    if section.config is not None and not Path(section.config).is_file():
        raise FileNotFoundError(f"{key}.config: file {section.config} does not exist")
    data = {} if section.config is None else read_config_file(section.config)
    where = f"{key}.config {section.config}" if section.config else f"{key} (defaults)"
    try:
        return from_dict(cls, merge_overrides(data, section.overrides))
    except ConfigError as err:
        raise ConfigError(f"{where} with {key}.overrides: {err}") from None


def _seeds(values: Sequence[int], key: str) -> tuple[int, ...]:
    if not values:
        raise ConfigError(f"{key}: give at least one seed")
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"{key}: seeds must be distinct non-negative integers, got {values}")
    return tuple(values)


# ---------------------------------------------------------------------------- candidates, trials
@dataclass(frozen=True)
class Candidate:
    """One architecture of the study. ``genotype`` is None for a searched candidate (and for
    hand-designed ones with the searched cell) until the search trials have run."""

    name: str
    kind: str
    genotype: Genotype | None
    source: dict[str, Any]
    """Where it comes from: ``search_seed``; ``seed``/``index``; ``family``/``cell``; ``file``."""


@dataclass(frozen=True)
class Trial:
    """One engine run: a search (``kind="search"``) or a retraining (``kind="train"``)."""

    kind: str
    name: str
    """``search-s0`` or ``<candidate>/seed<k>``."""
    seed: int
    config: Any
    """The run's :class:`SearchConfig` or :class:`TrainConfig`; ``output`` is the run folder."""
    key: str
    """Hash of what the run computes: its config without runtime keys, and its genotype."""
    candidate: str | None = None

    @property
    def output(self) -> Path:
        return Path(self.config.output)


def trial_key(config: Any, genotype: Genotype | None = None) -> str:
    """Short SHA-256 of a trial's identity: its config without :data:`TRIAL_RUNTIME_KEYS` and
    the architecture it trains."""
    blob = json.dumps(
        {"config": identity(config, TRIAL_RUNTIME_KEYS), "genotype": str(genotype)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def same_architecture(candidates: Sequence[Candidate]) -> dict[str, str]:
    """``{name: earlier name}`` for every candidate whose genotype equals an earlier
    candidate's: the architecture is trained once and reported under both names (e.g. a search
    that finds a hand-designed path with the cell the hand-designed candidates use)."""
    first: dict[Genotype, str] = {}
    twins = {}
    for c in candidates:
        if c.genotype is None:
            continue
        if c.genotype in first:
            twins[c.name] = first[c.genotype]
        else:
            first[c.genotype] = c.name
    return twins


def _file_stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).stem).strip("-.") or "genotype"


class Study:
    """A validated, planned study: the base configs, the space, the candidates and trials.

    Building one checks the whole configuration (files, ranges, the space of every candidate)
    and draws the random candidates, before anything runs.
    """

    def __init__(self, config: StudyConfig, *, device: str | None = None) -> None:
        self.cfg = config
        self.output = Path(config.output)
        self.device = device
        self.train = _base_config(config.train, TrainConfig, "train")
        self.search = _base_config(config.search, SearchConfig, "search") if config.search else None
        self.train_seeds = _seeds(config.train_seeds, "train_seeds")
        self.search_seeds = self._search_seeds()
        self._check_run_configs()
        self.files = {path: self._load_genotype(path, "genotypes") for path in config.genotypes}
        self.layers, self.blocks = self._space()
        self.crop = self.train.data.crop_size
        self.num_classes = self._num_classes()
        self.candidates = self._candidates()
        for c in self.candidates:
            self.check_crop(c.genotype, c.name)
        if not self.candidates:
            raise ConfigError(
                "the study has no candidates: add search trials (search.trials), random "
                "architectures (random.num), hand_designed families or genotypes files"
            )

    # -------------------------------------------------------------- validation
    def _search_seeds(self) -> tuple[int, ...]:
        s = self.cfg.search
        if s is None:
            return ()
        if s.trials is None and s.seeds is None:
            raise ConfigError("search: give the number of trials (search.trials) or their seeds")
        if s.trials is not None and s.trials < 1:
            raise ConfigError(f"search.trials must be >= 1, got {s.trials}")
        seeds = tuple(range(s.trials or 0)) if s.seeds is None else _seeds(s.seeds, "search.seeds")
        if s.trials is not None and s.trials != len(seeds):
            raise ConfigError(
                f"search.trials = {s.trials} but search.seeds has {len(seeds)} seeds; give one"
            )
        if s.consensus and len(seeds) < 2:
            raise ConfigError(
                "search.consensus: the consensus of one search trial is that trial's own "
                "architecture; give two trials or more"
            )
        k = s.group_size
        if k is not None and (k < 2 or len(seeds) % k):
            raise ConfigError(
                f"search.group_size = {k}: needs at least 2 searches per group and a number "
                f"of trials it divides ({len(seeds)} trials)"
            )
        return seeds

    def _check_run_configs(self) -> None:
        m = self.train.model
        if m.genotype is not None or m.preset is not None:
            raise ConfigError(
                "train: model.genotype and model.preset must be null; the study sets the "
                "architecture of every candidate (set model.filter_multiplier for the width)"
            )
        if self.train.iterations < 1:
            raise ConfigError(f"train: iterations must be >= 1, got {self.train.iterations}")
        for key, cfg in (("train", self.train), ("search", self.search)):
            if cfg is not None and cfg.data.name != "synthetic" and cfg.data.root is None:
                raise ConfigError(
                    f"{key}: data set {cfg.data.name!r} needs a root folder; set "
                    f"data.root in {key}.config or {key}.overrides"
                )
            if cfg is not None and cfg.max_steps is not None:
                raise ConfigError(
                    f"{key}: max_steps must be null in a study (every trial runs to its end; "
                    "stop a study with Ctrl-C and rerun it to continue)"
                )
        if self.search is not None and self.search.epochs < 1:
            raise ConfigError(f"search: epochs must be >= 1, got {self.search.epochs}")

    def _load_genotype(self, path: str, key: str) -> Genotype:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key}: genotype file {path} does not exist")
        return Genotype.load(path)

    def _space(self) -> tuple[int, int]:
        """``(layers, blocks)``: from the study, else the search config, else the files."""
        c, s = self.cfg, self.search
        first = next(iter(self.files.values()), None)
        layers = c.layers or (s.model.layers if s else None) or (first.layers if first else None)
        blocks = c.blocks or (s.model.blocks if s else None) or (first.blocks if first else None)
        if layers is None or blocks is None:
            raise ConfigError("set layers and blocks (the search space of every candidate)")
        if layers < 1 or blocks < 1:
            raise ConfigError(f"layers and blocks must be >= 1, got {layers} and {blocks}")
        where = "every candidate must come from the same space (study layers/blocks)"
        if s is not None and (s.model.layers, s.model.blocks) != (layers, blocks):
            raise ConfigError(
                f"search: model.layers={s.model.layers}, model.blocks={s.model.blocks} but the "
                f"study has layers={layers}, blocks={blocks}; {where}"
            )
        for path, g in self.files.items():
            if (g.layers, g.blocks) != (layers, blocks):
                raise ConfigError(
                    f"genotypes: {path} has {g.layers} layers and {g.blocks} blocks, the study "
                    f"{layers} and {blocks}; {where}"
                )
        return layers, blocks

    def _num_classes(self) -> int:
        from autodeeplab.data import dataset_class_names

        d = self.train.data
        try:
            return len(dataset_class_names(d.name, d.root, d.options))
        except ValueError as err:  # an unknown data set, a missing root
            raise ConfigError(f"train.data: {err}") from None

    def check_crop(self, genotype: Genotype | None, name: str) -> None:
        """Refuse a crop that the candidate's deepest level cannot take (before any trial)."""
        if genotype is not None and self.crop <= genotype.max_stride:
            raise ConfigError(
                f"train: data.crop_size {self.crop} is too small for candidate {name} ({genotype}),"
                f" which reaches stride {genotype.max_stride}; use a crop of at least "
                f"{genotype.max_stride + 1}"
            )

    # -------------------------------------------------------------- candidates
    def network(self, genotype: Genotype) -> Any:
        """The :class:`NetworkConfig` a candidate is retrained as (the study's train config)."""
        from autodeeplab.engine.train import resolve_network

        return resolve_network(
            self.train.model, self.num_classes, self.train.data.crop_size, genotype=genotype
        )

    def _candidates(self) -> list[Candidate]:
        out = [
            Candidate(f"search-s{s}", "searched", None, {"search_seed": s})
            for s in self.search_seeds
        ]
        if self.cfg.search is not None and self.cfg.search.consensus:
            groups = self.consensus_groups()
            for i, seeds in enumerate(groups):
                name = CONSENSUS if len(groups) == 1 else f"{CONSENSUS}-g{i}"
                out.append(Candidate(name, "consensus", None, {"search_seeds": seeds}))
        out += self._random()
        out += self._hand_designed()
        names = {c.name for c in out}
        for path, g in self.files.items():
            stem, k = _file_stem(path), 1
            name = f"file-{stem}"
            while name in names:
                k += 1
                name = f"file-{stem}-{k}"
            names.add(name)
            out.append(Candidate(name, "file", g, {"file": path}))
        return out

    def _random(self) -> list[Candidate]:
        from autodeeplab.sample import sample_genotypes

        r = self.cfg.random
        if r is None or r.num == 0:
            return []
        if r.num < 0 or r.seed < 0 or r.largest_of < 1:
            raise ConfigError(
                f"random: need num >= 0, seed >= 0 and largest_of >= 1, got num={r.num}, "
                f"seed={r.seed}, largest_of={r.largest_of}"
            )
        if r.largest_by not in LARGEST_BY:
            raise ConfigError(
                f"random.largest_by must be one of {', '.join(LARGEST_BY)}, got {r.largest_by!r}"
            )
        probe = self.network(RELEASED)  # the width and options of every candidate
        options = {
            f.name: getattr(probe, f.name)
            for f in fields(probe)
            if f.name not in ("genotype", "num_classes", "filter_multiplier")
        }
        try:
            drawn = sample_genotypes(
                r.num,
                r.seed,
                layers=self.layers,
                blocks=self.blocks,
                params=r.params,
                multiply_adds=r.multiply_adds,
                input_size=(self.crop, self.crop),
                num_classes=self.num_classes,
                filter_multiplier=probe.filter_multiplier,
                largest_of=r.largest_of,
                largest_by=r.largest_by,
                network_options=options,
                multi_path=r.multi_path,
                path=self._random_path(),
            )
        except ValueError as err:
            raise ConfigError(f"random: {err}") from None
        width = len(str(r.num - 1))
        return [
            Candidate(f"random-{i:0{width}d}", "random", g, {"seed": r.seed, "index": i})
            for i, g in enumerate(drawn)
        ]

    def _random_path(self) -> tuple[int, ...] | None:
        spec = self.cfg.random.path if self.cfg.random is not None else None
        if spec is None:
            return None
        try:
            return space.parse_path(spec, self.layers)
        except ValueError as err:
            raise ConfigError(f"random.path: {err}") from None

    def _hand_designed(self) -> list[Candidate]:
        h = self.cfg.hand_designed
        if h is None:
            return []
        try:
            paths = space.hand_designed_paths(self.layers, families=h.families)
        except ValueError as err:
            raise ConfigError(f"hand_designed.families: {err}") from None
        cell: Any
        if h.cell == "released":
            cell = RELEASED.cell
            if len(cell) != self.blocks:
                raise ConfigError(
                    f"hand_designed.cell: the released cell has {len(cell)} blocks, the study "
                    f"{self.blocks}; use cell: searched or a genotype file with {self.blocks} "
                    "blocks"
                )
        elif h.cell in ("searched", "each"):
            if not self.search_seeds:
                raise ConfigError(f"hand_designed.cell: {h.cell!r} needs search trials")
            if h.cell == "each":  # one candidate per family and search trial
                return [
                    Candidate(
                        f"hand-{family}-s{seed}",
                        "hand-designed",
                        None,
                        {"family": family, "cell": "each", "search_seed": seed, "path": list(path)},
                    )
                    for seed in self.search_seeds
                    for family, path in paths.items()
                ]
            cell = None  # known once the first search trial has run
        else:
            g = self._load_genotype(h.cell, "hand_designed.cell")
            if g.blocks != self.blocks:
                raise ConfigError(
                    f"hand_designed.cell: {h.cell} has {g.blocks} blocks, the study {self.blocks}"
                )
            cell = g.cell
        return [
            Candidate(
                f"hand-{family}",
                "hand-designed",
                None if cell is None else Genotype(cell=cell, path=path),
                {"family": family, "cell": h.cell, "path": list(path)},
            )
            for family, path in paths.items()
        ]

    def with_searched(
        self, genotypes: Mapping[int, Genotype], consensus: Mapping[str, Genotype] | None = None
    ) -> list[Candidate]:
        """The candidates with the genotypes of the search trials (by seed) and their
        consensus candidates (by name, :meth:`consensus`) filled in."""
        first = genotypes[self.search_seeds[0]] if self.search_seeds else None
        out = []
        for c in self.candidates:
            g = c.genotype
            if c.kind == "searched":
                g = genotypes[c.source["search_seed"]]
            elif c.kind == "consensus":
                if consensus is None or c.name not in consensus:
                    raise ValueError(f"the study has a {c.name} candidate: give its genotype")
                g = consensus[c.name]
            elif g is None:  # hand-designed path with the cell of a search trial
                donor = genotypes[c.source["search_seed"]] if "search_seed" in c.source else first
                assert donor is not None
                g = Genotype(cell=donor.cell, path=tuple(c.source["path"]))
            out.append(Candidate(c.name, c.kind, g, c.source))
        return out

    def search_groups(self) -> list[list[int]]:
        """The search seeds of every group of trials (``search.group_size``; one group of all
        trials when it is null, none without search trials)."""
        seeds = list(self.search_seeds)
        s = self.cfg.search
        if s is None or not seeds:
            return []
        k = s.group_size or len(seeds)
        return [seeds[i : i + k] for i in range(0, len(seeds), k)]

    def consensus_groups(self) -> list[list[int]]:
        """The search seeds of every consensus candidate (none without ``search.consensus``)."""
        s = self.cfg.search
        return self.search_groups() if s is not None and s.consensus else []

    def consensus(self, searches: Sequence[Trial]) -> dict[str, Genotype]:
        """The genotype of every consensus candidate, by name, from the finished search trials."""
        from autodeeplab.consensus import consensus

        runs = {t.seed: t.output for t in searches}
        return {
            c.name: consensus([runs[seed] for seed in c.source["search_seeds"]]).genotype
            for c in self.candidates
            if c.kind == "consensus"
        }

    # -------------------------------------------------------------- trials
    def _run_config(self, base: Any, seed: int, output: Path) -> Any:
        cfg = copy.deepcopy(base)
        cfg.seed, cfg.output = seed, str(output)
        if self.device is not None:
            cfg.device = self.device
        return cfg

    def search_trials(self) -> list[Trial]:
        trials = []
        for seed in self.search_seeds:
            name = f"search-s{seed}"
            cfg = self._run_config(self.search, seed, self.output / "search" / name)
            trials.append(Trial("search", name, seed, cfg, trial_key(cfg)))
        return trials

    def train_trials(self, candidates: Sequence[Candidate]) -> list[Trial]:
        """One retraining run per candidate and training seed; a candidate with the
        architecture of an earlier one is not trained again (:func:`same_architecture`)."""
        trials = []
        twins = same_architecture(candidates)
        for c in candidates:
            assert c.genotype is not None
            if c.name in twins:
                continue
            for seed in self.train_seeds:
                out = self.output / "train" / c.name / f"seed{seed}"
                cfg = self._run_config(self.train, seed, out)
                cfg.model.genotype = str(self.output / "candidates" / f"{c.name}.json")
                trials.append(
                    Trial(
                        "train",
                        f"{c.name}/seed{seed}",
                        seed,
                        cfg,
                        trial_key(cfg, c.genotype),
                        c.name,
                    )
                )
        return trials

    @property
    def trial_count(self) -> int:
        """Trials to run, counting the architectures known before the search once each (a
        searched architecture that equals another candidate lowers it later)."""
        known = {c.genotype for c in self.candidates if c.genotype is not None}
        unknown = sum(c.genotype is None for c in self.candidates)
        return len(self.search_seeds) + (len(known) + unknown) * len(self.train_seeds)

    # -------------------------------------------------------------- study folder
    def record(self) -> dict[str, Any]:
        """The resolved study as written to ``study.yaml``: what a rerun must match."""
        c = self.cfg
        return {
            "format_version": FORMAT_VERSION,
            "space": {"layers": self.layers, "blocks": self.blocks},
            "train_seeds": list(self.train_seeds),
            "search_seeds": list(self.search_seeds),
            "random": None if c.random is None else to_dict(c.random),
            "hand_designed": None if c.hand_designed is None else to_dict(c.hand_designed),
            "genotypes": list(c.genotypes),
            "train": to_dict(self.train),
            "search": None if self.search is None else to_dict(self.search),
            "candidates": {
                k.name: None if k.genotype is None else str(k.genotype) for k in self.candidates
            },
        }

    def prepare(self) -> None:
        """Create the study folder, or check that it holds this study."""
        path = self.output / "study.yaml"
        new = self.record()
        if path.is_file():
            old = yaml.safe_load(path.read_text())
            if not isinstance(old, dict):
                raise StudyError(f"{path} is not a study record; choose another output folder")
            diff = config_diff(old, new, STUDY_RUNTIME_KEYS, STUDY_NEUTRAL_DEFAULTS)
            if diff:
                raise StudyError(
                    f"{self.output} holds a study with another configuration; differing keys:\n  "
                    + "\n  ".join(diff)
                    + "\nRun it with its original configuration (only where and how fast trials "
                    "run may change: device, threads, workers, data.root, ...) or choose another "
                    "output folder."
                )
        elif self.output.exists() and any(self.output.iterdir()):
            raise StudyError(
                f"{self.output} exists, is not empty and holds no study.yaml; choose another "
                "output folder"
            )
        self.output.mkdir(parents=True, exist_ok=True)
        _write_text(path, yaml.safe_dump(new, sort_keys=False))
        # the study config as given: `autodeeplab study --config <output>/config.yaml` reruns it
        _write_text(self.output / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False))

    def write_candidates(self, candidates: Sequence[Candidate]) -> None:
        """``candidates/<name>.json`` for every candidate (refusing to change an existing one)."""
        folder = self.output / "candidates"
        folder.mkdir(parents=True, exist_ok=True)
        for c in candidates:
            assert c.genotype is not None
            path = folder / f"{c.name}.json"
            if path.is_file():
                old = Genotype.load(path)
                if old != c.genotype:
                    raise StudyError(
                        f"{path} holds {old}, but the study's candidate {c.name} is "
                        f"{c.genotype}; was the study folder altered? Choose another output "
                        "folder"
                    )
                continue
            _write_text(path, c.genotype.to_json(indent=2) + "\n")


def describe(study: Study) -> list[str]:
    """Lines that say what a study will run: budget, space, candidates (with their size when
    the genotype is known before the search), trials."""
    from autodeeplab.complexity import complexity

    t = study.train
    lines = [
        f"study {study.output}: {t.data.name}, {t.iterations} iterations per candidate and seed "
        f"(batch {t.data.batch_size}, crop {study.crop}, "
        f"F={study.network(RELEASED).filter_multiplier}), training seeds "
        f"{list(study.train_seeds)}; space: {study.layers} layers, {study.blocks} blocks",
    ]
    if study.search is not None:
        lines.append(
            f"search trials: seeds {list(study.search_seeds)}, {study.search.epochs} epochs each"
        )
    for c in study.candidates:
        if c.genotype is None:
            if c.kind == "searched":
                what = f"decoded by search trial seed {c.source['search_seed']}"
            elif c.kind == "consensus":
                what = (
                    "decoded from the mean distribution of the search trials with seeds "
                    f"{c.source['search_seeds']}"
                )
            elif "search_seed" in c.source:
                what = f"path {c.source['path']} with the cell of search trial seed {c.source['search_seed']}"
            else:
                what = f"path {c.source['path']} with the cell of the first search trial"
        else:
            size = complexity(study.network(c.genotype), (study.crop, study.crop))
            what = (
                f"{c.genotype} ({size.params / 1e6:.3f}M params, "
                f"{size.multiply_adds / 1e6:.1f}M Multi-Adds at {study.crop}x{study.crop})"
            )
        lines.append(f"  {c.name:20s} {c.kind:14s} {what}")
    twins = same_architecture(study.candidates)
    for name, earlier in twins.items():
        lines.append(f"{name} is the same architecture as {earlier}: trained once")
    lines.append(
        f"{study.trial_count} trials: {len(study.search_seeds)} search, "
        f"{len(study.candidates) - len(twins)} architectures x {len(study.train_seeds)} seeds"
        + (" (fewer if a search finds one of the other candidates)" if study.search_seeds else "")
    )
    return lines


def _write_text(path: Path, text: str) -> None:
    from autodeeplab.report import _write_files

    _write_files([(path, text.encode("utf-8"))])


# ---------------------------------------------------------------------------- running trials
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finished_record(trial: Trial) -> dict[str, Any] | None:
    """The ``trial.json`` of a finished trial, or None; a record for another configuration is
    an error (the study-level check makes this a sign of an altered folder). The record is
    returned under the trial's own name and candidate: a run folder copied from another study
    (or another candidate of the same architecture) computed the same thing, whatever it was
    called there."""
    path = trial.output / "trial.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("key") != trial.key:
        raise StudyError(
            f"{path} was written for another configuration of this trial (key "
            f"{record.get('key')} vs {trial.key}); was the study folder altered? Delete that run "
            "folder to redo the trial, or choose another output folder"
        )
    labels = {"name": trial.name, "candidate": trial.candidate}
    return {**record, **{k: v for k, v in labels.items() if k in record}}


def run_trial(trial: Trial, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one trial to its end (resuming from its ``last.pt``), write its ``trial.json`` and
    return that record; a finished trial is not run again (its record is returned).

    Raises :class:`StudyInterrupted` when the engine stopped early (Ctrl-C).
    """
    from autodeeplab.engine.search import NonFiniteLossError, run_search
    from autodeeplab.engine.train import run_train

    done = _finished_record(trial)
    if done is not None:
        return done
    out = trial.output
    resume = (out / "last.pt").is_file()
    if not resume and out.exists():
        shutil.rmtree(out)  # stopped before its first checkpoint: nothing to continue from
    start = time.perf_counter()
    record: dict[str, Any] = {"kind": trial.kind, "name": trial.name, "seed": trial.seed}
    if trial.kind == "search":
        s = run_search(trial.config, resume=resume, log=log)
        if not s.finished:
            raise StudyInterrupted(f"search trial {trial.name} stopped at epoch {s.epoch}")
        last = s.history[-1] if s.history else {}
        record |= {
            "genotype": str(s.genotype),
            "epochs": s.epoch,
            "supernet_mIoU": last.get("mIoU"),
            "convergence": diagnostics.convergence(s.history),
        }
    else:
        record |= {
            "candidate": trial.candidate,
            "genotype": str(Genotype.load(trial.config.model.genotype)),
        }
        try:
            t = run_train(trial.config, resume=resume, log=log)
        except NonFiniteLossError as err:
            # A candidate that diverges under the shared budget is a result, not a crash: it
            # is reported without an mIoU (and ranked last) rather than left out.
            record |= {"mIoU": None, "best_mIoU": None, "best_iteration": None, "error": str(err)}
        else:
            if not t.finished:
                raise StudyInterrupted(
                    f"training trial {trial.name} stopped at iteration {t.iteration}"
                )
            record |= {
                "mIoU": t.final_miou,
                "best_mIoU": t.best_miou,
                "best_iteration": t.best_iteration,
                "iterations": t.iteration,
                "error": None,
            }
    record |= {
        "key": trial.key,
        "resumed": resume,
        "time_s": time.perf_counter() - start,
        "finished_at": _now(),
    }
    _write_text(out / "trial.json", _dumps(record))
    return record


_WORKER_DEVICE: str | None = None
_STUDY_PID: int | None = None
_STUDY_STOP: Any = None  # the study's stop event (a multiprocessing Event)


def _init_worker(devices: Any, pids: Any, study_pid: int, stop: Any) -> None:
    """Pool worker set-up: take a device for the worker's life, tell the study process this
    worker's pid (to pass a SIGTERM on), keep the study's stop event, and record Ctrl-C and
    SIGTERM while no run listens (a run installs its own handler: finish the step,
    checkpoint, stop; one recorded before stops the next run at its first step)."""
    global _WORKER_DEVICE, _STUDY_PID, _STUDY_STOP
    record_early_stop_signals()
    _WORKER_DEVICE = devices.get()
    _STUDY_PID, _STUDY_STOP = study_pid, stop
    pids.put(os.getpid())


def _worker_run(trial: Trial) -> dict[str, Any]:
    if _STUDY_PID is not None and os.getppid() != _STUDY_PID:
        # the study process is gone (killed): a trial queued before it died must not start
        raise StudyInterrupted(f"the study process {_STUDY_PID} is gone; {trial.name} not started")
    if EARLY_STOP() or (_STUDY_STOP is not None and _STUDY_STOP.is_set()):
        # the study was stopped before this worker took the trial (possibly before the worker
        # had told the study its pid, so no signal reached it): the trial must not start
        raise StudyInterrupted(f"the study was stopped; {trial.name} not started")
    config = copy.deepcopy(trial.config)
    if _WORKER_DEVICE is not None:
        config.device = _WORKER_DEVICE
    prefix = f"    [{trial.name}] "
    return run_trial(
        Trial(trial.kind, trial.name, trial.seed, config, trial.key, trial.candidate),
        log=lambda text: print_flush(prefix + text),
    )


class _Progress:
    """One line per trial with the study's position and an ETA from the trials run so far."""

    def __init__(
        self, searches: int, trains: int, jobs: int, log: Callable[[str], None] | None
    ) -> None:
        self.total, self.jobs, self.log = searches + trains, jobs, log
        self.done = self.started = 0
        self.seconds: dict[str, list[float]] = {"search": [], "train": []}
        self.remaining = {"search": searches, "train": trains}

    def set_trains(self, count: int) -> None:
        """The number of training trials, once the searched architectures are known."""
        self.total += count - self.remaining["train"]
        self.remaining["train"] = count

    def say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def start(self, trial: Trial) -> None:
        self.started = max(self.started, self.done) + 1
        self.say(f"[{self.started}/{self.total}] {trial.kind} {trial.name} ...")

    def finish(self, trial: Trial, record: dict[str, Any], ran: bool) -> None:
        self.done += 1
        self.remaining[trial.kind] -= 1
        what = (
            f"{record['genotype']}"
            if trial.kind == "search"
            else f"mIoU {_pct(record.get('mIoU'))} (best {_pct(record.get('best_mIoU'))})"
        )
        if not ran:
            self.say(
                f"[{self.done}/{self.total}] {trial.kind} {trial.name}: finished earlier, {what}"
            )
            return
        self.seconds[trial.kind].append(record["time_s"])
        self.say(
            f"[{self.done}/{self.total}] {trial.kind} {trial.name}: {what} in "
            f"{record['time_s']:.0f}s; {self.eta()}"
        )

    def eta(self) -> str:
        total = 0.0
        for kind, left in self.remaining.items():
            if left == 0:
                continue
            if not self.seconds[kind]:
                return f"ETA after the first {kind} trial"
            total += left * float(np.mean(self.seconds[kind]))
        # trials of one kind run side by side with --jobs (searches finish before retraining)
        return f"ETA {_duration(total / self.jobs)}" if total else "last trial done"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(_dumps(record, indent=None) + "\n")


def _run_trials(
    study: Study,
    trials: Sequence[Trial],
    progress: _Progress,
    jobs: int,
    devices: Sequence[str] | None,
    log: Callable[[str], None] | None,
    ray: RayOptions | None = None,
) -> list[dict[str, Any]]:
    """Run (or skip, when finished) every trial; records in the order of ``trials``."""
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for t in trials:
        done = _finished_record(t)
        if done is not None:
            records[t.name] = done
            progress.finish(t, done, ran=False)
        else:
            todo.append(t)
    log_path = study.output / "trials.jsonl"

    def finished(t: Trial, record: dict[str, Any]) -> None:
        records[t.name] = record
        _append_jsonl(log_path, record)
        progress.finish(t, record, ran=True)

    if ray is not None:
        for t, record in run_on_ray(todo, ray, started=progress.start):
            finished(t, record)
    elif jobs <= 1 or len(todo) <= 1:
        for t in todo:
            progress.start(t)
            engine_log = None if log is None else (lambda text, _log=log: _log("    " + text))
            finished(t, run_trial(t, engine_log))
    else:
        for t, record in _pool(todo, jobs, devices, progress):
            finished(t, record)
    return [records[t.name] for t in trials]


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[Callable[[], bool]]:
    """In the main thread, turn SIGTERM into :class:`KeyboardInterrupt`, as Ctrl-C is, so that
    the study stops the same way; yields a function telling whether a SIGTERM came."""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL

    def handler(signum: int, frame: Any) -> None:
        came.append(signum)
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM: what it did before
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    try:
        yield lambda: bool(came)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_workers(pids: Any, jobs: int, signum: int) -> None:
    """Send ``signum`` to every pool worker started so far (their pids, from ``pids``)."""
    import queue as queue_module

    for _ in range(jobs):
        try:
            pid = pids.get(timeout=0.5)
        except queue_module.Empty:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _pool(
    trials: Sequence[Trial], jobs: int, devices: Sequence[str] | None, progress: _Progress
) -> Iterator[tuple[Trial, dict[str, Any]]]:
    """Run trials in ``jobs`` worker processes, each holding one of ``devices`` for its life;
    yields ``(trial, record)`` as they finish. Ctrl-C lets the running trials checkpoint."""
    ctx = multiprocessing.get_context("spawn")
    queue, pids, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    for i in range(jobs):
        queue.put(devices[i % len(devices)] if devices else None)
    interrupted: list[str] = []
    with (
        ProcessPoolExecutor(
            jobs,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(queue, pids, os.getpid(), stop),
        ) as pool,
        _terminate_as_interrupt() as terminated,
    ):
        pending: dict[Future, Trial] = {}
        waiting = list(trials)
        try:
            while waiting or pending:
                while waiting and len(pending) < jobs:
                    t = waiting.pop(0)
                    progress.start(t)
                    pending[pool.submit(_worker_run, t)] = t
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    t = pending.pop(future)
                    try:
                        yield t, future.result()
                    except StudyInterrupted as err:
                        interrupted.append(str(err))
                        waiting.clear()
        except KeyboardInterrupt:
            waiting.clear()
            # first: a worker still starting (its pid not yet known, so no signal reaches it)
            # takes no trial once it is up
            stop.set()
            for future in pending:
                future.cancel()
            if terminated():  # a SIGTERM for the study process alone: the trials get it too
                _signal_workers(pids, jobs, signal.SIGTERM)
            wait(pending)  # the running engines checkpoint and stop
            raise StudyInterrupted("the study was interrupted") from None
    if interrupted:
        raise StudyInterrupted("; ".join(interrupted))


# ---------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``ddof=1``; None for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def competition_ranks(scores: Sequence[float]) -> list[int]:
    """Rank 1 = highest score; tied scores share the better rank (``1 + number of strictly
    higher scores``); NaN scores share the place after every finite one."""
    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    return [int(1 + np.sum(finite > x)) if math.isfinite(x) else int(finite.size + 1) for x in s]


def z_score(value: float, reference: Sequence[float]) -> float | None:
    """``(value - mean(reference)) / std(reference)`` with the sample standard deviation; None
    with fewer than two finite references or none of them different."""
    r = np.asarray([x for x in reference if math.isfinite(x)], dtype=np.float64)
    if r.size < 2 or not math.isfinite(value):
        return None
    sd = float(r.std(ddof=1))
    return None if sd == 0 else (value - float(r.mean())) / sd


def pooled_std(groups: Sequence[Sequence[float]]) -> float | None:
    """Pooled within-group standard deviation ``sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))``
    over the groups with two or more finite values: here the spread of one candidate's mIoU
    over training seeds, the noise floor of any comparison. None when no group has two."""
    ss, dof = 0.0, 0
    for g in groups:
        v = np.asarray([x for x in g if math.isfinite(x)], dtype=np.float64)
        if v.size > 1:
            ss += float(np.sum((v - v.mean()) ** 2))
            dof += v.size - 1
    return math.sqrt(ss / dof) if dof else None


def architecture_signal(groups: Sequence[Sequence[float]]) -> dict[str, Any] | None:
    """Whether a retraining budget tells architectures apart: one-way analysis of variance of
    the per-seed scores of candidates drawn at random from the space (one group per candidate).

    ``f`` is the ratio of the between-candidate mean square ``sum n_i (m_i - m)^2 / (k - 1)``
    to the within-candidate one (the pooled seed variance): about 1 when the candidates' means
    differ only as much as training-seed noise alone makes them differ. ``architecture_std``
    estimates the spread of the true scores of the architectures, the random std with the
    seed noise taken out (``sqrt(max(0, MSB - MSW) / n0)``, ``n0`` the effective seeds per
    candidate); ``reliability`` (``max(0, 1 - 1/f)``, ICC(1, k)) is the share of the variance of
    a candidate's mean score that its architecture explains, the rest being seed noise. Near
    0, no study at this budget can show that one architecture of the space beats another; more
    training seeds or iterations are needed first; ``seeds_for_reliability_0.8`` says how many
    seeds per candidate would reach a reliability of 0.8 at this budget (None when the
    architectures' own spread is estimated at zero). Groups with no finite value are left out;
    None without two groups or without a group of two finite values."""
    vals = [np.asarray([x for x in g if math.isfinite(x)], dtype=np.float64) for g in groups]
    vals = [v for v in vals if v.size]
    noise = pooled_std(vals)  # the within-candidate mean square is its square
    if len(vals) < 2 or noise is None:
        return None
    k, n = len(vals), sum(v.size for v in vals)
    grand = float(np.concatenate(vals).mean())
    msb = sum(v.size * (float(v.mean()) - grand) ** 2 for v in vals) / (k - 1)
    msw = noise**2
    n0 = (n - sum(v.size**2 for v in vals) / n) / (k - 1)
    arch_var = max(0.0, msb - msw) / n0
    return {
        "candidates": k,
        "runs": n,
        "f": msb / msw if msw > 0 else None,  # None: every seed gave the same score
        "architecture_std": math.sqrt(arch_var),
        "reliability": max(0.0, 1.0 - msw / msb) if msb > 0 else 0.0,
        # Spearman-Brown: seeds per candidate for a reliability of 0.8, i.e. a seed-noise
        # variance of the mean a quarter of the architectures' own variance
        "seeds_for_reliability_0.8": (
            None if arch_var == 0 else max(1, math.ceil(4 * msw / arch_var - 1e-9))
        ),
    }


def seed_means(results: Sequence[CandidateResult]) -> dict[str, float]:
    """``{seed: mean mIoU over the candidates}`` (finite values only). Every candidate trains
    with the same seeds, so a seed that is easier for all of them shifts every score alike: it
    shows here, and it cancels when two candidates are compared."""
    by_seed: dict[int, list[float]] = {}
    for r in results:
        for seed, miou in zip(r.seeds, r.miou, strict=True):
            if math.isfinite(miou):
                by_seed.setdefault(seed, []).append(miou)
    return {str(seed): float(np.mean(v)) for seed, v in by_seed.items()}


@dataclass(frozen=True)
class CandidateResult:
    """A candidate's figures: per-seed final mIoU (0..1), their mean and std, its size."""

    name: str
    kind: str
    genotype: str
    source: dict[str, Any]
    params: int
    multiply_adds: int
    seeds: tuple[int, ...]
    miou: tuple[float, ...]
    """Validation mIoU at the end of the budget, one per training seed."""
    best_miou: tuple[float, ...]
    """Best of the periodic evaluations, one per seed (selected on the validation split)."""
    errors: tuple[str | None, ...] = ()
    """Why a seed has no mIoU (its training diverged), one per seed; None where it has one."""
    same_as: str | None = None
    """The earlier candidate with the same architecture, whose training runs these are."""
    supernet_miou: float | None = None
    """Searched candidates: the supernet's validation mIoU at the end of its search trial."""
    convergence: Mapping[str, Any] | None = None
    """Searched candidates: how settled their search ended (:func:`diagnostics.convergence`)."""

    @property
    def mean(self) -> float:
        return mean_std(self.miou)[0]

    @property
    def std(self) -> float | None:
        return mean_std(self.miou)[1]


def summarize(
    results: Sequence[CandidateResult], groups: Sequence[Sequence[int]] = ()
) -> dict[str, Any]:
    """Ranks, the random distribution, each searched candidate against it, the training-seed
    noise and the best hand-designed candidate (every mIoU as a fraction, 0..1). ``groups``:
    the search seeds of each group of trials (:meth:`Study.search_groups`), each one replicate
    of choosing one of its trials by supernet mIoU."""
    means = [r.mean for r in results]
    ranks = competition_ranks(means)
    rank_of = {r.name: k for r, k in zip(results, ranks, strict=True)}
    random_means = [r.mean for r in results if r.kind == "random"]
    finite_random = [m for m in random_means if math.isfinite(m)]
    rand_mean, rand_std = mean_std(finite_random)
    summary: dict[str, Any] = {
        "candidates": len(results),
        "ranks": rank_of,
        "random": (
            {
                "n": len(random_means),
                "mean": rand_mean,
                "std": rand_std,
                "min": min(finite_random),
                "max": max(finite_random),
            }
            if finite_random
            else None
        ),
        "searched": [
            _against_random(r, rank_of, random_means) for r in results if r.kind == "searched"
        ],
        # each training run once: a candidate that shares another's runs adds nothing new
        "seed_noise": pooled_std([r.miou for r in results if r.same_as is None]),
        "seed_means": seed_means([r for r in results if r.same_as is None]),
        "architecture_signal": architecture_signal(
            [r.miou for r in results if r.kind == "random" and r.same_as is None]
        ),
    }
    summary["hand_designed_paths"] = hand_designed_paths(results)
    if summary["hand_designed_paths"]:
        # every searched cell on every family: the best family, by its median over the cells
        best_path = max(summary["hand_designed_paths"], key=lambda f: f["median"])
        summary["best_hand_designed"] = {
            "name": f"hand-{best_path['family']}",
            "family": best_path["family"],
            "mean": best_path["median"],
            "rank": None,
            "cells": best_path["n"],
        }
    else:
        hand = [r for r in results if r.kind == "hand-designed" and math.isfinite(r.mean)]
        best_hand = max(hand, key=lambda r: r.mean, default=None)
        summary["best_hand_designed"] = (
            None
            if best_hand is None
            else {"name": best_hand.name, "mean": best_hand.mean, "rank": rank_of[best_hand.name]}
        )
    summary["searched_median"] = _searched_median(results, summary)
    # The paper ran several searches and kept the one whose supernet scored best on held-out
    # data: that choice needs no retraining, so it is what a user of the search would get.
    chosen = _best_by_supernet([r for r in results if r.kind == "searched"])
    summary["selected_by_supernet"] = (
        None
        if chosen is None
        else {
            "name": chosen.name,
            "supernet_mIoU": chosen.supernet_miou,
            "mean": chosen.mean,
            "rank": rank_of[chosen.name],
            "z_score": z_score(chosen.mean, random_means),
        }
    )
    summary["selected_by_supernet_groups"] = _selected_groups_summary(results, summary, groups)
    summary["consensus"] = _consensus_summary(results, summary)
    finite = [r for r in results if math.isfinite(r.mean)]
    best = max(finite, key=lambda r: r.mean, default=None)
    summary["best"] = (
        None if best is None else {"name": best.name, "kind": best.kind, "mean": best.mean}
    )
    return summary


def hand_designed_paths(results: Sequence[CandidateResult]) -> list[dict[str, Any]]:
    """For the hand-designed candidates with every search trial's cell
    (``hand_designed.cell: each``), one record per family: its path, the median and mean of its
    candidates' means over the cells, and the paired difference searched minus family over the
    trials where both have a score (``mean_difference``, its standard error ``se``, and how many
    times the searched architecture was ``better`` and ``worse``). Empty for other studies."""
    families: dict[str, list[CandidateResult]] = {}
    for r in results:
        if r.kind == "hand-designed" and r.source.get("cell") == "each":
            families.setdefault(r.source["family"], []).append(r)
    searched = {
        r.source["search_seed"]: r.mean
        for r in results
        if r.kind == "searched" and "search_seed" in r.source and math.isfinite(r.mean)
    }
    out = []
    for family, group in families.items():
        means = [r.mean for r in group if math.isfinite(r.mean)]
        if not means:
            continue
        diffs = [
            searched[r.source["search_seed"]] - r.mean
            for r in group
            if math.isfinite(r.mean) and r.source["search_seed"] in searched
        ]
        mean_diff, std_diff = mean_std(diffs) if diffs else (None, None)
        out.append(
            {
                "family": family,
                "path": group[0].source["path"],
                "n": len(means),
                "median": float(np.median(means)),
                "mean": float(np.mean(means)),
                "paired_n": len(diffs),
                "mean_difference": mean_diff,
                "se": None if std_diff is None else std_diff / math.sqrt(len(diffs)),
                "better": sum(d > 0 for d in diffs),
                "worse": sum(d < 0 for d in diffs),
            }
        )
    return out


def _against_random(
    r: CandidateResult, ranks: Mapping[str, int], random_means: Sequence[float]
) -> dict[str, Any]:
    """A candidate's mean, std and rank, its z-score against the random candidates' means and
    how many of them (the finite ones) it beats."""
    return {
        "name": r.name,
        "mean": r.mean,
        "std": r.std,
        "rank": ranks[r.name],
        "z_score": z_score(r.mean, random_means),
        "random_beaten": sum(m < r.mean for m in random_means if math.isfinite(m)),
        "random_n": len(random_means),
    }


def _group_record(
    r: CandidateResult,
    summary: Mapping[str, Any],
    seeds: Sequence[int],
    random_means: Sequence[float],
) -> dict[str, Any]:
    """The architecture a group of search trials (``seeds``) delivered, against the random
    architectures and the best hand-designed candidate."""
    hand = summary["best_hand_designed"]
    return {
        **_against_random(r, summary["ranks"], random_means),
        "search_seeds": list(seeds),
        "minus_best_hand_designed": None if hand is None else r.mean - hand["mean"],
    }


def _groups_summary(
    chosen: Sequence[tuple[CandidateResult, Sequence[int], dict[str, Any]]],
    results: Sequence[CandidateResult],
    summary: Mapping[str, Any],
) -> dict[str, Any] | None:
    """Per group, its architecture's record (plus ``extra``), and with several groups the
    median of their architectures against the bar (None without groups)."""
    if not chosen:
        return None
    random_means = [x.mean for x in results if x.kind == "random"]
    return {
        "size": len(chosen[0][1]),
        "groups": [
            {**_group_record(r, summary, seeds, random_means), **extra}
            for r, seeds, extra in chosen
        ],
        "median": _median_against([r for r, _, _ in chosen], summary) if len(chosen) > 1 else None,
    }


def _selected_groups_summary(
    results: Sequence[CandidateResult],
    summary: Mapping[str, Any],
    groups: Sequence[Sequence[int]],
) -> dict[str, Any] | None:
    """The paper's rule as a method, replicated: in each of several groups of search trials, the
    trial with the best supernet mIoU (None with fewer than two groups, or a group without
    supernet scores)."""
    if len(groups) < 2:
        return None
    searched = {r.source["search_seed"]: r for r in results if r.kind == "searched"}
    chosen = []
    for seeds in groups:
        best = _best_by_supernet([searched[s] for s in seeds if s in searched])
        if best is None:
            return None
        chosen.append((best, seeds, {"supernet_mIoU": best.supernet_miou}))
    return _groups_summary(chosen, results, summary)


def _best_by_supernet(searched: Sequence[CandidateResult]) -> CandidateResult | None:
    """The paper's rule: of searched candidates, the one whose search trial's supernet scored
    best (the first of a tie; None when none has a score)."""
    scored = [r for r in searched if r.supernet_miou is not None]
    return max(scored, key=lambda r: r.supernet_miou or 0.0, default=None)


def _consensus_summary(
    results: Sequence[CandidateResult], summary: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Every consensus candidate against the random architectures and the best hand-designed
    candidate, and (several of them) their median (None without consensus candidates)."""
    cons = [r for r in results if r.kind == "consensus"]
    return _groups_summary([(r, r.source["search_seeds"], {}) for r in cons], results, summary)


def _searched_median(
    results: Sequence[CandidateResult], summary: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The median searched candidate's mean mIoU against the random mean (in random standard
    deviations), the best hand-designed candidate and the training-seed noise: the three
    comparisons that say whether the search bought anything."""
    return _median_against([r for r in results if r.kind == "searched"], summary)


def _median_against(
    results: Sequence[CandidateResult], summary: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The median of ``results``' mean mIoU against the random mean, the best hand-designed
    candidate and the training-seed noise (:func:`_searched_median`)."""
    values = [r.mean for r in results if math.isfinite(r.mean)]
    if not values:
        return None
    median = float(np.median(values))
    rand, hand, noise = summary["random"], summary["best_hand_designed"], summary["seed_noise"]
    above_random = None if rand is None else median - rand["mean"]
    return {
        "n": len(values),
        "mean": median,
        "minus_random_mean": above_random,
        "random_stds_above_mean": (
            None if rand is None or not rand["std"] else above_random / rand["std"]
        ),
        "minus_best_hand_designed": None if hand is None else median - hand["mean"],
        "seed_noise": noise,
    }


# ---------------------------------------------------------------------------- outputs
def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as None and tuples as lists (strict JSON)."""
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def _sorted(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    """Best mean first; NaN last; ties by kind order, then name."""
    return sorted(
        results,
        key=lambda r: (
            -r.mean if math.isfinite(r.mean) else math.inf,
            KINDS.index(r.kind),
            r.name,
        ),
    )


def _macs_unit(results: Sequence[CandidateResult]) -> tuple[float, str]:
    """Giga Multi-Adds for full-size inputs, mega for the small crops of quick studies."""
    return (1e9, "G") if max(r.multiply_adds for r in results) >= 1e9 else (1e6, "M")


_STYLE = {
    "random": {"marker": "o", "color": "#7f8c8d", "ms": 6, "label": "random"},
    "searched": {"marker": "*", "color": "#d62728", "ms": 15, "label": "searched"},
    "hand-designed": {"marker": "s", "color": "#1f77b4", "ms": 7, "label": "hand-designed"},
    "consensus": {"marker": "P", "color": "#ff7f0e", "ms": 11, "label": "consensus of searches"},
    "file": {"marker": "D", "color": "#2ca02c", "ms": 6, "label": "genotype file"},
}


def draw_study(
    results: Sequence[CandidateResult], summary: Mapping[str, Any], input_size: tuple[int, int]
) -> Any:
    """Two panels, mIoU (%) against parameters and against Multi-Adds at ``input_size``: one
    point per architecture with error bars over the training seeds, the searched candidates
    highlighted, the others but random ones named (candidates that share an architecture
    share its point and label), the random mean +- std as a band."""
    from autodeeplab.draw import _new_figure

    twins: dict[str, list[str]] = {}
    for r in results:
        if r.same_as is not None:
            twins.setdefault(r.same_as, []).append(r.name)

    macs_scale, macs_unit = _macs_unit(results)
    axes_spec = (
        ("params", 1e6, "parameters (M)"),
        (
            "multiply_adds",
            macs_scale,
            f"Multi-Adds at {input_size[0]}x{input_size[1]} ({macs_unit})",
        ),
    )
    fig = _new_figure((11.0, 4.8))
    axes = fig.subplots(1, 2, sharey=True)
    rand = summary.get("random")
    for ax, (attr, scale, label) in zip(axes, axes_spec, strict=True):
        if rand is not None and rand["mean"] is not None:
            m, s = 100 * rand["mean"], 100 * (rand["std"] or 0.0)
            ax.axhspan(m - s, m + s, color="#bdc3c7", alpha=0.35, lw=0, label="random mean ± std")
            ax.axhline(m, color="#7f8c8d", lw=1.0, ls="--")
        for kind in KINDS:
            group = [
                r for r in results if r.kind == kind and r.same_as is None and math.isfinite(r.mean)
            ]
            if not group:
                continue
            style = dict(_STYLE[kind])
            ax.errorbar(
                [getattr(r, attr) / scale for r in group],
                [100 * r.mean for r in group],
                yerr=[100 * (r.std or 0.0) for r in group],
                fmt=style.pop("marker"),
                capsize=2,
                lw=1.0,
                mec="black" if kind in ("searched", "consensus") else style["color"],
                zorder=4 if kind in ("searched", "consensus") else 3,
                **style,
            )
            for r in group:
                each = r.source.get("cell") == "each"  # one point per cell: too many to name
                if (kind != "random" and not each) or r.name in twins:
                    ax.annotate(
                        " = ".join(
                            n.removeprefix("hand-") for n in [r.name, *twins.get(r.name, [])]
                        ),
                        (getattr(r, attr) / scale, 100 * r.mean),
                        textcoords="offset points",
                        xytext=(5, 4),
                        fontsize=7,
                        color=_STYLE[kind]["color"],
                    )
        ax.set_xlabel(label)
        ax.margins(x=0.1)  # room for the names of the outermost points
        ax.grid(True, color="#e5e5e5", lw=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].set_ylabel("validation mIoU (%)")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Every candidate under the same retraining budget (error bars: std over seeds)")
    return fig


def _protocol(study: Study) -> dict[str, Any]:
    t = study.train
    return {
        "data": t.data.name,
        "train_split": t.data.train_split,
        "eval_split": t.data.eval_split,
        "max_eval_samples": t.data.max_eval_samples,
        "crop_size": t.data.crop_size,
        "batch_size": t.data.batch_size,
        "iterations": t.iterations,
        "lr": t.optim.lr,
        "filter_multiplier": study.network(RELEASED).filter_multiplier,
        "num_classes": study.num_classes,
        "layers": study.layers,
        "blocks": study.blocks,
        "train_seeds": list(study.train_seeds),
        "search_seeds": list(study.search_seeds),
        "search_epochs": None if study.search is None else study.search.epochs,
        "metric": "validation mIoU after the last iteration, averaged over the training seeds",
        "multiply_adds_input_size": [study.crop, study.crop],
    }


def _candidate_json(r: CandidateResult, rank: int) -> dict[str, Any]:
    return {
        "name": r.name,
        "kind": r.kind,
        "rank": rank,
        "genotype": r.genotype,
        "source": r.source,
        "params": r.params,
        "multiply_adds": r.multiply_adds,
        "seeds": list(r.seeds),
        "mIoU": list(r.miou),
        "mean": r.mean,
        "std": r.std,
        "best_mIoU": list(r.best_miou),
        "errors": list(r.errors),
        "same_as": r.same_as,
        "supernet_mIoU": r.supernet_miou,
        "search_convergence": None if r.convergence is None else dict(r.convergence),
    }


def _write_report(
    study: Study, results: Sequence[CandidateResult], summary: Mapping[str, Any], protocol: dict
) -> None:
    from autodeeplab.report import Report

    p = protocol
    rows = _sorted(results)
    report = Report(f"Architecture study on {p['data']}: {len(rows)} candidates")
    report.paragraph(
        f"Every candidate was retrained from scratch with the same configuration: "
        f"{p['iterations']} iterations, batch {p['batch_size']}, crop {p['crop_size']}, "
        f"F = {p['filter_multiplier']}, learning rate {p['lr']} (poly), once per training "
        f"seed {p['train_seeds']}. The score is the {p['eval_split']} mIoU after the last "
        "iteration, averaged over the seeds; nothing is selected on the validation split and "
        f"no candidate is left out. Search space: {p['layers']} layers, {p['blocks']} blocks."
    )
    lines = []
    rand = summary["random"]
    if rand is not None:
        lines.append(
            f"Random architectures ({rand['n']}): mean {_pct(rand['mean'])} %, std "
            f"{_pct(rand['std'])} %, range {_pct(rand['min'])} to {_pct(rand['max'])} %."
        )
    for s in summary["searched"]:
        z = "n/a" if s["z_score"] is None else f"{s['z_score']:+.2f}"
        lines.append(
            f"Searched `{s['name']}`: {_pct(s['mean'])} %, rank {s['rank']} of "
            f"{summary['candidates']}, z = {z} against the random architectures, better than "
            f"{s['random_beaten']} of {s['random_n']} of them."
        )
    hand = summary["best_hand_designed"]
    if hand is not None and hand["rank"] is None:
        lines.append(
            f"Best hand-designed path: `{hand['family']}` with the searched cells, median "
            f"{_pct(hand['mean'])} % over its {hand['cells']} cells (every family: below)."
        )
    elif hand is not None:
        lines.append(
            f"Best hand-designed: `{hand['name']}`, {_pct(hand['mean'])} % (rank {hand['rank']})."
        )
    med = summary["searched_median"]
    if med is not None:
        lines.append(_median_line(med, "searched"))
    lines += _groups_lines(
        summary["consensus"],
        summary,
        lambda c: (
            f"Consensus of the {len(c['search_seeds'])} searches with seeds "
            f"{', '.join(map(str, c['search_seeds']))} (`{c['name']}`, decoded from the mean of "
            "their distributions)"
        ),
        "consensus architectures (of {size})",
    )
    chosen = summary["selected_by_supernet"]
    if chosen is not None:
        lines.append(
            f"Selected by supernet mIoU (the paper's rule, no retraining needed): "
            f"`{chosen['name']}` (supernet {_pct(chosen['supernet_mIoU'])} %), "
            f"{_pct(chosen['mean'])} % retrained, rank {chosen['rank']}."
        )
    lines += _groups_lines(
        summary["selected_by_supernet_groups"],
        summary,
        lambda c: (
            f"Selected by supernet mIoU among the {len(c['search_seeds'])} searches with seeds "
            f"{', '.join(map(str, c['search_seeds']))}: `{c['name']}` (supernet "
            f"{_pct(c['supernet_mIoU'])} %)"
        ),
        "architectures selected by supernet mIoU (one per {size} searches)",
    )
    per_seed = ", ".join(f"seed {k} {_pct(v)} %" for k, v in summary["seed_means"].items())
    lines.append(
        f"Training-seed noise (pooled within-candidate std): {_pct(summary['seed_noise'])} %. "
        f"Mean over the candidates per seed: {per_seed} (a shift common to every candidate "
        "cancels when two candidates are compared)."
    )
    signal = summary["architecture_signal"]
    if signal is not None:
        more_seeds = signal["seeds_for_reliability_0.8"]
        f = "n/a (no seed noise)" if signal["f"] is None else f"{signal['f']:.2f}"
        lines.append(
            f"Does this budget tell architectures apart? Between the {signal['candidates']} "
            f"random architectures, F = {f} (about 1 when their means differ only as much as "
            f"seed noise makes them differ); the spread of their true scores, seed noise taken "
            f"out: {_pct(signal['architecture_std'])} %; share of the variance of a candidate's "
            f"mean score that its architecture explains: {100 * signal['reliability']:.0f} %"
            + (
                f" (about {more_seeds} training seeds per candidate would make it 80 %)."
                if more_seeds is not None and more_seeds > len(study.train_seeds)
                else "."
            )
            + (
                " Below half, differences between candidates here are mostly training noise: "
                "add training seeds or iterations before reading the ranks."
                if signal["reliability"] < 0.5
                else ""
            )
        )
    report.heading("Summary")
    for line in lines:
        report.paragraph(line)
    report.image(
        study.output / "study.png",
        "mIoU against parameters and Multi-Adds; error bars: std over training seeds",
    )
    _search_trials_table(report, rows, ranks=summary["ranks"])
    _hand_designed_paths_table(report, summary["hand_designed_paths"])
    report.heading("Every candidate")
    ranks = summary["ranks"]
    scale, unit = _macs_unit(rows)
    report.table(
        [
            "rank",
            "candidate",
            "kind",
            "mIoU %",
            "std",
            "per seed",
            "params (M)",
            f"Multi-Adds ({unit})",
            "genotype",
        ],
        [
            [
                ranks[r.name],
                r.name if r.same_as is None else f"{r.name} (= {r.same_as})",
                r.kind,
                _pct(r.mean),
                _pct(r.std),
                " / ".join(
                    "diverged" if e else _pct(x)
                    for x, e in zip(r.miou, r.errors or [None] * len(r.miou), strict=True)
                ),
                f"{r.params / 1e6:.3f}",
                f"{r.multiply_adds / scale:.1f}",
                f"`{r.genotype}`",
            ]
            for r in rows
        ],
    )
    report.heading("Reproduce")
    report.code(
        f"autodeeplab study --config {study.output / 'config.yaml'}   # finds every trial done\n"
        f"autodeeplab study --config {study.output / 'config.yaml'} --output NEW_FOLDER"
    )
    report.write(study.output, name="study")


def _hand_designed_paths_table(report: Any, families: Sequence[Mapping[str, Any]]) -> None:
    """The searched paths against each hand-designed path with the same cells (a study with
    ``hand_designed.cell: each``); nothing for other studies."""
    if not families:
        return
    report.heading("The searched paths against the hand-designed paths, cell by cell")
    report.paragraph(
        "Every search trial's cell retrained on every hand-designed path: the median and mean "
        "of each path over the cells, and the searched architecture (its cell on its own "
        "path) minus the same cell on the hand-designed path, over the trials (mean, its "
        "standard error, and in how many trials the searched path was better and worse)."
    )

    def points(x: Any) -> str:
        return "-" if x is None else f"{100 * x:+.2f}"

    report.table(
        [
            "path",
            "levels",
            "cells",
            "median %",
            "mean %",
            "searched minus path",
            "SE",
            "better",
            "worse",
        ],
        [
            [
                f"`{f['family']}`",
                f"`{path_string(f['path'])}`",
                f["n"],
                _pct(f["median"]),
                _pct(f["mean"]),
                points(f["mean_difference"]),
                "-" if f["se"] is None else f"{100 * f['se']:.2f}",
                f["better"],
                f["worse"],
            ]
            for f in families
        ],
    )


def _groups_lines(
    record: Mapping[str, Any] | None,
    summary: Mapping[str, Any],
    describe: Callable[[Mapping[str, Any]], str],
    what: str,
) -> list[str]:
    """A line per group of a :func:`_groups_summary` record (``describe`` names the group's
    architecture), and the line of their median (``what``, formatted with the group size)."""
    if record is None:
        return []
    lines = []
    for c in record["groups"]:
        z = "n/a" if c["z_score"] is None else f"{c['z_score']:+.2f}"
        hand = (
            ""
            if c["minus_best_hand_designed"] is None
            else f", {100 * c['minus_best_hand_designed']:+.2f} points from the best hand-designed"
        )
        lines.append(
            f"{describe(c)}: {_pct(c['mean'])} %, rank {c['rank']} of {summary['candidates']}, "
            f"z = {z} against the random architectures, better than {c['random_beaten']} of "
            f"{c['random_n']} of them{hand}."
        )
    if record["median"] is not None:
        lines.append(_median_line(record["median"], what.format(size=record["size"])))
    return lines


def _median_line(med: Mapping[str, Any], what: str) -> str:
    """``Median of the N <what>: ...`` of a :func:`_median_against` record."""
    parts = [f"Median of the {med['n']} {what}: {_pct(med['mean'])} %"]
    if med["minus_random_mean"] is not None:
        k = med["random_stds_above_mean"]
        parts.append(
            f"{100 * med['minus_random_mean']:+.2f} points from the random mean"
            + ("" if k is None else f" ({k:+.2f} random stds)")
        )
    if med["minus_best_hand_designed"] is not None:
        parts.append(
            f"{100 * med['minus_best_hand_designed']:+.2f} points from the best hand-designed"
        )
    return ", ".join(parts) + "."


def _other_path(convergence: Mapping[str, Any]) -> str:
    """The ratio rule's path where it differs from the probability rule's, ``same``, or ``-``
    (a search without the figures: DiNTS, records written before them)."""
    p, q = convergence.get("probability_path"), convergence.get("ratio_path")
    if p is None or q is None:
        return "-"
    return "same" if p == q else q


def _search_trials_table(report: Any, rows: Sequence[CandidateResult], ranks: Mapping) -> None:
    """How settled each search trial ended, next to what its architecture scored."""
    searched = [r for r in rows if r.kind == "searched" and r.convergence is not None]
    if not searched:
        return

    def pct(x: Any, digits: int = 0) -> str:
        return "-" if x is None else f"{100 * x:.{digits}f}"

    def run(count: Any, total: Any) -> str:
        return "-" if count is None else f"{count} of {total}"

    def z(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"

    report.heading("Search trials")
    report.paragraph(
        "How far each search had settled its result at its last epoch: the entropy of the op "
        "and of the network-level distributions (share of their maximum), the probability of "
        "the decoded path (or multi-path topology) under the final distribution, the share of "
        "parameter-free operations in the decoded cell, and for how many of the epochs with "
        "architecture steps, counted back from the last, the decoded cell and path had stayed "
        "the final ones (1: it changed at the last epoch), the share of the final cell's "
        "branches (input and operation) that the cell of the epoch before already had, and "
        "the signal in the op (alpha) and path (beta) gradients: the mean over the epochs "
        "with architecture steps of |mean| / standard error per logit, where noise alone "
        "gives 0.80. Ratio-rule path: the path whose probability rose most over uniform "
        "moves, where it differs from the decoded one (the decoded path then owes its place "
        "to the trellis, whose finest and coarsest nodes have fewer moves, more than to the "
        "search), and log P/P0: what the search added to the decoded path's log probability."
    )
    report.table(
        [
            "trial",
            "rank",
            "mIoU %",
            "supernet mIoU %",
            "alpha entropy %",
            "path entropy %",
            "P(path) %",
            "parameter-free %",
            "cell unchanged",
            "path unchanged",
            "branches kept %",
            "alpha signal",
            "beta signal",
            "ratio-rule path",
            "log P/P0",
        ],
        [
            [
                r.name,
                ranks[r.name],
                _pct(r.mean),
                _pct(r.supernet_miou),
                pct(c.get("alpha_entropy_fraction"), 1),
                pct(c.get("path_entropy_fraction"), 1),
                pct(c.get("path_probability"), 1),
                pct(c.get("parameter_free_share")),
                run(c.get("stable_cell_epochs"), c.get("arch_epochs")),
                "fixed"
                if c.get("fixed_path")
                else run(c.get("stable_path_epochs"), c.get("arch_epochs")),
                pct(c.get("previous_cell_agreement")),
                z(c.get("alpha_grad_z")),
                z(c.get("beta_grad_z")),
                _other_path(c),
                z(c.get("path_log_ratio")),
            ]
            for r in searched
            for c in (r.convergence or {},)
        ],
    )


@dataclass(frozen=True)
class StudyResult:
    """What a finished study wrote."""

    output: Path
    results: list[CandidateResult]
    summary: dict[str, Any]
    ran: int
    """Trials run by this call (the others had finished earlier)."""


def collect(
    study: Study,
    candidates: Sequence[Candidate],
    records: Sequence[dict[str, Any]],
    search_records: Sequence[dict[str, Any]] = (),
) -> list[CandidateResult]:
    """Per-candidate results from the training trial records, with params and Multi-Adds (and,
    for searched candidates, the supernet mIoU of their search trial's record)."""
    from autodeeplab.complexity import complexity

    supernet = {r["seed"]: r.get("supernet_mIoU") for r in search_records}
    settled = {r["seed"]: _search_convergence(study, r) for r in search_records}

    by_candidate: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_candidate.setdefault(r["candidate"], []).append(r)
    twins = same_architecture(candidates)
    out = []
    for c in candidates:
        assert c.genotype is not None
        runs = sorted(
            by_candidate[twins.get(c.name, c.name)],
            key=lambda r: study.train_seeds.index(r["seed"]),
        )
        size = complexity(study.network(c.genotype), (study.crop, study.crop))
        out.append(
            CandidateResult(
                name=c.name,
                kind=c.kind,
                genotype=str(c.genotype),
                source=dict(c.source),
                params=size.params,
                multiply_adds=size.multiply_adds,
                seeds=tuple(r["seed"] for r in runs),
                miou=tuple(math.nan if r["mIoU"] is None else r["mIoU"] for r in runs),
                best_miou=tuple(
                    math.nan if r["best_mIoU"] is None else r["best_mIoU"] for r in runs
                ),
                errors=tuple(r.get("error") for r in runs),
                same_as=twins.get(c.name),
                supernet_miou=(
                    supernet.get(c.source["search_seed"]) if c.kind == "searched" else None
                ),
                convergence=(
                    settled.get(c.source["search_seed"]) if c.kind == "searched" else None
                ),
            )
        )
    return out


def _search_convergence(study: Study, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The search trial's convergence figures: from its record, or (a record written before
    they were recorded) from the epoch records of its run folder; None when neither has them."""
    if "convergence" in record:
        return record["convergence"]
    from autodeeplab.report import load_jsonl

    metrics = study.output / "search" / record["name"] / "metrics.jsonl"
    if not metrics.is_file():
        return None
    return diagnostics.convergence([r for r in load_jsonl(metrics) if r.get("type") == "epoch"])


def write_outputs(study: Study, results: Sequence[CandidateResult]) -> dict[str, Any]:
    """``study.json``, ``study.png``, ``study.md`` and ``study.html``; returns the summary."""
    from autodeeplab.draw import save_figure

    summary = summarize(results, study.search_groups())
    protocol = _protocol(study)
    ranks = summary["ranks"]
    document = {
        "format_version": FORMAT_VERSION,
        "protocol": protocol,
        "candidates": [_candidate_json(r, ranks[r.name]) for r in _sorted(results)],
        "summary": summary,
    }
    _write_text(study.output / "study.json", _dumps(document) + "\n")
    save_figure(draw_study(results, summary, (study.crop, study.crop)), study.output / "study.png")
    _write_report(study, results, summary, protocol)
    return summary


def run_study(
    config: StudyConfig,
    *,
    device: str | None = None,
    jobs: int = 1,
    devices: Sequence[str] | None = None,
    log: Callable[[str], None] | None = print_flush,
    ray: RayOptions | None = None,
) -> StudyResult:
    """Run (or continue) a study: search trials, then every candidate once per training seed,
    then ``study.json`` / ``.md`` / ``.html`` / ``.png``.

    ``jobs > 1`` runs that many trials at once in worker processes, each worker on one of
    ``devices`` (e.g. ``["cuda:0", "cuda:1"]``; default: every worker on the configs' device).
    ``ray`` hands the trials to a Ray cluster instead (:mod:`autodeeplab.ray_trials`); the
    study's ``output`` must then be a folder every node mounts at the same path.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if devices is not None and not devices:
        raise ValueError("devices: give at least one device or leave it out")
    if ray is not None and (jobs > 1 or devices or device):
        raise ValueError(
            "with Ray the cluster's resources decide where and how many trials run: leave out "
            "jobs, devices and device (set cpus/gpus per trial instead)"
        )
    study = Study(config, device=device)
    existed = (study.output / "study.yaml").is_file()
    study.prepare()
    n_cand, n_seeds = len(study.candidates), len(study.train_seeds)
    n_search = len(study.search_seeds)
    progress = _Progress(n_search, study.trial_count - n_search, jobs, log)
    progress.say(
        f"study {study.output}{' (continued)' if existed else ''}: "
        f"{n_search} search trial(s), {n_cand} candidates x {n_seeds} training seed(s): "
        f"{study.trial_count} trials"
    )
    searches = study.search_trials()
    search_records = _run_trials(study, searches, progress, jobs, devices, log, ray)
    genotypes = {r["seed"]: Genotype.from_string(r["genotype"]) for r in search_records}
    candidates = study.with_searched(genotypes, study.consensus(searches))
    for c in candidates:
        study.check_crop(c.genotype, c.name)
    study.write_candidates(candidates)
    trains = study.train_trials(candidates)
    for name, earlier in same_architecture(candidates).items():
        progress.say(f"{name} is the same architecture as {earlier}: trained once, reported twice")
    progress.set_trains(len(trains))
    train_records = _run_trials(study, trains, progress, jobs, devices, log, ray)
    results = collect(study, candidates, train_records, search_records)
    summary = write_outputs(study, results)
    ran = sum(len(v) for v in progress.seconds.values())
    progress.say(
        f"wrote {study.output / 'study.json'}, study.md, study.html and study.png "
        f"({ran} trial(s) run now, {progress.total - ran} finished earlier)"
    )
    return StudyResult(study.output, list(results), summary, ran)
