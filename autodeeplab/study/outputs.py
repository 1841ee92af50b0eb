"""What a finished study writes: ``study.json``, ``study.md``/``.html`` and ``study.png``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autodeeplab.genotype import RELEASED, path_string
from autodeeplab.runfolder import atomic_write_text, dumps_json
from autodeeplab.study.config import FORMAT_VERSION, KINDS
from autodeeplab.study.plan import Study
from autodeeplab.study.stats import CandidateResult, pct, summarize


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
            f"Random architectures ({rand['n']}): mean {pct(rand['mean'])} %, std "
            f"{pct(rand['std'])} %, range {pct(rand['min'])} to {pct(rand['max'])} %."
        )
    for s in summary["searched"]:
        z = "n/a" if s["z_score"] is None else f"{s['z_score']:+.2f}"
        lines.append(
            f"Searched `{s['name']}`: {pct(s['mean'])} %, rank {s['rank']} of "
            f"{summary['candidates']}, z = {z} against the random architectures, better than "
            f"{s['random_beaten']} of {s['random_n']} of them."
        )
    hand = summary["best_hand_designed"]
    if hand is not None and hand["rank"] is None:
        lines.append(
            f"Best hand-designed path: `{hand['family']}` with the searched cells, median "
            f"{pct(hand['mean'])} % over its {hand['cells']} cells (every family: below)."
        )
    elif hand is not None:
        lines.append(
            f"Best hand-designed: `{hand['name']}`, {pct(hand['mean'])} % (rank {hand['rank']})."
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
            f"`{chosen['name']}` (supernet {pct(chosen['supernet_mIoU'])} %), "
            f"{pct(chosen['mean'])} % retrained, rank {chosen['rank']}."
        )
    lines += _groups_lines(
        summary["selected_by_supernet_groups"],
        summary,
        lambda c: (
            f"Selected by supernet mIoU among the {len(c['search_seeds'])} searches with seeds "
            f"{', '.join(map(str, c['search_seeds']))}: `{c['name']}` (supernet "
            f"{pct(c['supernet_mIoU'])} %)"
        ),
        "architectures selected by supernet mIoU (one per {size} searches)",
    )
    per_seed = ", ".join(f"seed {k} {pct(v)} %" for k, v in summary["seed_means"].items())
    lines.append(
        f"Training-seed noise (pooled within-candidate std): {pct(summary['seed_noise'])} %. "
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
            f"out: {pct(signal['architecture_std'])} %; share of the variance of a candidate's "
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
                pct(r.mean),
                pct(r.std),
                " / ".join(
                    "diverged" if e else pct(x)
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
                pct(f["median"]),
                pct(f["mean"]),
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
            f"{describe(c)}: {pct(c['mean'])} %, rank {c['rank']} of {summary['candidates']}, "
            f"z = {z} against the random architectures, better than {c['random_beaten']} of "
            f"{c['random_n']} of them{hand}."
        )
    if record["median"] is not None:
        lines.append(_median_line(record["median"], what.format(size=record["size"])))
    return lines


def _median_line(med: Mapping[str, Any], what: str) -> str:
    """``Median of the N <what>: ...`` of a :func:`_median_against` record."""
    parts = [f"Median of the {med['n']} {what}: {pct(med['mean'])} %"]
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
                pct(r.mean),
                pct(r.supernet_miou),
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
    atomic_write_text(study.output / "study.json", dumps_json(document, indent=2) + "\n")
    save_figure(draw_study(results, summary, (study.crop, study.crop)), study.output / "study.png")
    _write_report(study, results, summary, protocol)
    return summary
