"""A whole study: search trials, then every candidate once per training seed, then the outputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autodeeplab import diagnostics
from autodeeplab.engine.loop import print_flush
from autodeeplab.genotype import Genotype
from autodeeplab.ray_trials import RayOptions
from autodeeplab.study.config import StudyConfig
from autodeeplab.study.outputs import write_outputs
from autodeeplab.study.plan import Candidate, Study, same_architecture
from autodeeplab.study.stats import CandidateResult
from autodeeplab.study.trials import Progress, run_trials


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
    progress = Progress(n_search, study.trial_count - n_search, jobs, log)
    progress.say(
        f"study {study.output}{' (continued)' if existed else ''}: "
        f"{n_search} search trial(s), {n_cand} candidates x {n_seeds} training seed(s): "
        f"{study.trial_count} trials"
    )
    searches = study.search_trials()
    search_records = run_trials(study, searches, progress, jobs, devices, log, ray)
    genotypes = {r["seed"]: Genotype.from_string(r["genotype"]) for r in search_records}
    candidates = study.with_searched(genotypes, study.consensus(searches))
    for c in candidates:
        study.check_crop(c.genotype, c.name)
    study.write_candidates(candidates)
    trains = study.train_trials(candidates)
    for name, earlier in same_architecture(candidates).items():
        progress.say(f"{name} is the same architecture as {earlier}: trained once, reported twice")
    progress.set_trains(len(trains))
    train_records = run_trials(study, trains, progress, jobs, devices, log, ray)
    results = collect(study, candidates, train_records, search_records)
    summary = write_outputs(study, results)
    ran = sum(len(v) for v in progress.seconds.values())
    progress.say(
        f"wrote {study.output / 'study.json'}, study.md, study.html and study.png "
        f"({ran} trial(s) run now, {progress.total - ran} finished earlier)"
    )
    return StudyResult(study.output, list(results), summary, ran)
