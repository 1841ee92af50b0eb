"""The study's statistics: pure functions of the per-seed results of every candidate."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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


def pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"
