"""What a study runs: its candidates, its trials and the study folder that holds them."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from autodeeplab import space
from autodeeplab.config import (
    ConfigError,
    SearchConfig,
    TrainConfig,
    config_diff,
    identity,
    to_dict,
)
from autodeeplab.genotype import RELEASED, Genotype
from autodeeplab.runfolder import atomic_write_text
from autodeeplab.sample import LARGEST_BY
from autodeeplab.study.config import (
    CONSENSUS,
    FORMAT_VERSION,
    STUDY_NEUTRAL_DEFAULTS,
    STUDY_RUNTIME_KEYS,
    TRIAL_RUNTIME_KEYS,
    StudyConfig,
    StudyError,
    base_config,
    checked_seeds,
)


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
        self.train = base_config(config.train, TrainConfig, "train")
        self.search = base_config(config.search, SearchConfig, "search") if config.search else None
        self.train_seeds = checked_seeds(config.train_seeds, "train_seeds")
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
        seeds = (
            tuple(range(s.trials or 0))
            if s.seeds is None
            else checked_seeds(s.seeds, "search.seeds")
        )
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
        atomic_write_text(path, yaml.safe_dump(new, sort_keys=False))
        # the study config as given: `autodeeplab study --config <output>/config.yaml` reruns it
        atomic_write_text(
            self.output / "config.yaml", yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
        )

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
            atomic_write_text(path, c.genotype.to_json(indent=2) + "\n")


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
