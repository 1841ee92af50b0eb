"""Run reports: metrics logs, their curves, and a document written as HTML and Markdown.

* :func:`load_jsonl` — a ``metrics.jsonl`` log -> list of records (one JSON object a line).
* :func:`draw_search_curves` — losses, supernet mIoU, architecture entropies and the movement
  diagnostics of a search run; :func:`search_warning` — its warning when the architecture
  distribution has barely moved.
* :func:`draw_training_curves` — loss, learning rate and validation mIoU of a retraining run.
* :class:`Report` — headings, paragraphs, tables, images, figures and code blocks, written as a
  self-contained ``report.html`` (images embedded as base64 data URIs, inline CSS, no scripts or
  external resources) and a ``report.md`` that links its images by relative path.

Figures are drawn like those of :mod:`autodeeplab.draw`: matplotlib's object API on an Agg
canvas, no ``pyplot`` and no global figure state.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from autodeeplab.diagnostics import NOISE_Z_MEAN, STAGNANT_FRACTION, end_of_search_warning
from autodeeplab.draw import _new_figure

ASSET_DIR = "report_files"
"""Folder (inside the output folder) that holds the images :meth:`Report.write` links to."""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_WEIGHT_COLOUR = "#1f77b4"
_ARCH_COLOUR = "#d62728"
_MARK_COLOUR = "#7f8c8d"
_NO_DATA_COLOUR = "#95a5a6"


# ----------------------------------------------------------------------------- metrics logs


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, in file order; blank lines are skipped.

    Every non-blank line must hold one JSON object; anything else raises :class:`ValueError`
    naming the file and the (1-based) line number.
    """
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"metrics log not found: {path}") from None
    records = []
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}, line {lineno}: not valid JSON ({err.msg}, column {err.colno})"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}"
                )
            records.append(record)
    return records


# ----------------------------------------------------------------------------- record fields


def _latest(records: Iterable[Mapping[str, Any]], kind: str, key: str) -> list[Mapping[str, Any]]:
    """Records of type ``kind`` with an integer ``key``, sorted by it, one per value.

    A later record for the same ``key`` replaces an earlier one: a resumed run appends to the
    same log and repeats the steps after its last checkpoint. Records without ``key`` (absent
    or null) cannot be placed on the axis and are left out.
    """
    by_key: dict[int, Mapping[str, Any]] = {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {i + 1} is a {type(record).__name__}, not a mapping")
        if record.get("type") != kind or record.get(key) is None:
            continue
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"record {i + 1} ({kind!r}): {key!r} must be an integer, got {value!r}"
            )
        by_key[value] = record
    return [by_key[k] for k in sorted(by_key)]


def _number(record: Mapping[str, Any], key: str, where: str = "") -> float | None:
    """``record[key]`` as a float; None when absent or null, NaN when not finite."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"{record.get('type')!r} record{where}: {key!r} must be a number or null, got {value!r}"
        )
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _series(
    records: Sequence[Mapping[str, Any]],
    x_key: str,
    y_key: str,
    *,
    scale: float = 1.0,
    x_at: Mapping[int, float] | None = None,
) -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of the records where ``y_key`` is present (non-finite values become NaN).

    ``x`` is ``record[x_key]``, or ``x_at[record[x_key]]`` when ``x_at`` is given (records
    whose key it lacks are left out).
    """
    xs, ys = [], []
    for record in records:
        y = _number(record, y_key, f" at {x_key} {record[x_key]}")
        x = record[x_key] if x_at is None else x_at.get(record[x_key])
        if y is not None and x is not None:
            xs.append(float(x))
            ys.append(scale * y)
    return xs, ys


def _plot_lines(ax: Axes, lines: Sequence[tuple[tuple[list[float], list[float]], dict]]) -> None:
    """``ax.plot(xs, ys, **style)`` for every series that has points (a lone point gets a
    marker: a line through one point draws nothing)."""
    for (xs, ys), style in lines:
        if xs:
            ax.plot(xs, ys, **({"marker": "o"} if len(xs) == 1 else {}) | style)


def moving_average(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values, ``(N,)`` -> ``(N,)``.

    Entry ``i`` averages the finite values among ``values[max(0, i - window + 1) : i + 1]``
    (fewer at the start); it is NaN when none of them is finite, so a NaN only leaves a gap.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(v)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, v, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    hi = np.arange(1, len(v) + 1)
    lo = np.maximum(0, hi - window)
    n = counts[hi] - counts[lo]
    return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def _no_data(ax: Axes, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color=_NO_DATA_COLOUR,
        gid="no-data",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _tidy(ax: Axes, xlabel: str, ylabel: str, title: str, *, integer_x: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#e5e5e5", lw=0.6)
    ax.set_axisbelow(True)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


# ----------------------------------------------------------------------------- search curves


def draw_search_curves(records: Iterable[Mapping[str, Any]]) -> Figure:
    """Curves of a search run from the records of its ``metrics.jsonl``.

    Panels (axes labels in quotes):

    * ``"loss"``: losses against the global step: the logged ``step`` records as thin lines
      (weight loss, and architecture loss where present) and the ``epoch`` means as markers at
      the middle of their epoch (``global_step * (epoch - 0.5) / epoch``, assuming equal-length
      epochs);
    * ``"miou"``: supernet validation mIoU (%) per epoch, where one was evaluated;
    * ``"entropy"``: mean entropy (nats) of the alpha (operation) and beta (transition)
      distributions per epoch; for DiNTS the path entropy (mean binary entropy of the
      transitions) in place of the beta entropy;
    * ``"movement"``: the same entropies as a share (%) of their maximum, with the 99 % line
      below which the distribution counts as having moved;
    * ``"free"``: share (%) of parameter-free operations (pooling, skip) in the decoded cell;
    * ``"path"``: log probability of the decoded network path (DiNTS: of the decoded
      topology);
    * ``"arch_steps"``: architecture steps taken so far;
    * ``"signal"``: ``alpha_grad_z`` (and ``beta_grad_z``, the network level) per epoch, the
      signal in the architecture gradients, with the level pure noise gives
      (:data:`autodeeplab.diagnostics.NOISE_Z_MEAN`).

    A dashed line marks where the architecture steps begin when warm-up epochs precede them.
    Missing or null values leave the point out; unknown keys and record types are ignored.
    Raises :class:`ValueError` when no record has anything to plot.
    """
    records = list(records)
    steps = _latest(records, "step", "global_step")
    epochs = _latest(records, "epoch", "epoch")
    if any(r["epoch"] < 1 for r in epochs):
        raise ValueError("'epoch' records count epochs from 1, found an epoch < 1")
    # Global step at the end of each epoch. With equal-length epochs, epoch e spans
    # (end * (e - 1) / e, end] and its mean sits at the middle of that span.
    ends = {r["epoch"]: g for r in epochs if (g := _number(r, "global_step")) is not None}
    mid = {e: end * (e - 0.5) / e for e, end in ends.items()}
    thin = {"lw": 0.8, "alpha": 0.55}  # every logged step
    marked = {"lw": 1.2, "markersize": 5}  # one point per epoch
    w, r = {"color": _WEIGHT_COLOUR}, {"color": _ARCH_COLOUR}
    losses = [
        (
            _series(steps, "global_step", "loss"),
            dict(thin, **w, gid="step-loss", label="weight loss (logged steps)"),
        ),
        (
            _series(steps, "global_step", "arch_loss"),
            dict(thin, **r, gid="step-arch-loss", label="architecture loss (logged steps)"),
        ),
        (
            _series(epochs, "epoch", "loss", x_at=mid),
            dict(marked, **w, marker="o", gid="epoch-loss", label="weight loss (epoch mean)"),
        ),
        (
            _series(epochs, "epoch", "arch_loss", x_at=mid),
            dict(
                marked,
                **r,
                marker="s",
                gid="epoch-arch-loss",
                label="architecture loss (epoch mean)",
            ),
        ),
    ]
    miou = _series(epochs, "epoch", "mIoU", scale=100.0)
    entropies = [
        (
            _series(epochs, "epoch", "alpha_entropy"),
            dict(
                marked, color="#9467bd", marker="o", gid="alpha-entropy", label="alpha (operations)"
            ),
        ),
        (
            _series(epochs, "epoch", "beta_entropy"),
            dict(
                marked, color="#ff7f0e", marker="s", gid="beta-entropy", label="beta (transitions)"
            ),
        ),
        (
            _series(epochs, "epoch", "path_entropy"),
            dict(
                marked,
                color="#ff7f0e",
                marker="^",
                gid="path-entropy",
                label="path (transitions on/off, DiNTS)",
            ),
        ),
    ]
    movement = [
        (
            _series(epochs, "epoch", "alpha_entropy_fraction", scale=100.0),
            dict(marked, color="#9467bd", marker="o", gid="alpha-entropy-fraction", label="alpha"),
        ),
        (
            _series(epochs, "epoch", "beta_entropy_fraction", scale=100.0),
            dict(marked, color="#ff7f0e", marker="s", gid="beta-entropy-fraction", label="beta"),
        ),
        (
            _series(epochs, "epoch", "path_entropy_fraction", scale=100.0),
            dict(marked, color="#ff7f0e", marker="^", gid="path-entropy-fraction", label="path"),
        ),
    ]
    free = _series(epochs, "epoch", "parameter_free_share", scale=100.0)
    path = _series(epochs, "epoch", "path_log_prob")
    path_title = "decoded path probability"
    if not path[0]:  # DiNTS: the decoded multi-path topology
        path = _series(epochs, "epoch", "topology_log_prob")
        path_title = "decoded topology probability"
    arch_steps = _series(epochs, "epoch", "arch_steps")
    signal = _series(epochs, "epoch", "alpha_grad_z")
    beta_signal = _series(epochs, "epoch", "beta_grad_z")
    has_loss = any(xs for (xs, _), _ in losses)
    has_entropy = any(xs for (xs, _), _ in entropies)
    has_movement = any(xs for (xs, _), _ in movement)
    if not (has_loss or miou[0] or has_entropy or has_movement):
        raise ValueError(
            f"nothing to plot in {len(records)} records: expected 'step' records with "
            "'global_step' and 'loss', or 'epoch' records with 'epoch' and metrics "
            "(the metrics.jsonl of a search run)"
        )

    fig = _new_figure((9.0, 14.0))
    axes = fig.subplot_mosaic(
        [
            ["loss", "loss"],
            ["miou", "entropy"],
            ["movement", "free"],
            ["path", "arch_steps"],
            ["signal", "signal"],
        ]
    )
    start = _arch_start(epochs)
    ax = axes["loss"]
    if has_loss:
        _plot_lines(ax, losses)
        if start is not None and start in ends:
            ax.axvline(
                ends[start] * (start - 1) / start,
                color=_MARK_COLOUR,
                ls="--",
                lw=1,
                gid="arch-start",
                label="architecture steps begin",
            )
        ax.legend(fontsize=8, frameon=False)
        _tidy(ax, "global step", "loss", "training losses")
    else:
        _no_data(ax, "no loss records")

    ax = axes["miou"]
    if miou[0]:
        ax.plot(*miou, color="#2ca02c", marker="o", lw=1.4, gid="mIoU")
        _tidy(ax, "epoch", "mIoU (%)", "supernet validation mIoU", integer_x=True)
    else:
        _no_data(ax, "no mIoU evaluated")

    ax = axes["entropy"]
    if has_entropy:
        _plot_lines(ax, entropies)
        ax.legend(fontsize=8, frameon=False)
        _tidy(ax, "epoch", "mean entropy (nats)", "architecture entropy", integer_x=True)
    else:
        _no_data(ax, "no entropy records")

    ax = axes["movement"]
    if has_movement:
        _plot_lines(ax, movement)
        _reference_level(
            ax,
            100 * STAGNANT_FRACTION,
            "stagnation-threshold",
            f"{100 * STAGNANT_FRACTION:.0f} % (barely moved above)",
        )
        _tidy(ax, "epoch", "% of maximum entropy", "movement of the distributions", integer_x=True)
    else:
        _no_data(ax, "no entropy-fraction records")

    single = {"lw": 1.4, "marker": "o"}
    panels = (
        ("free", free, "#8c564b", "parameter-free ops (%)", "decoded cell: pooling and skip"),
        ("path", path, "#17becf", "log probability", path_title),
        ("arch_steps", arch_steps, _ARCH_COLOUR, "steps", "architecture steps so far"),
    )
    for name, series, colour, ylabel, title in panels:
        ax = axes[name]
        if series[0]:
            _plot_lines(ax, [(series, dict(single, color=colour, gid=name.replace("_", "-")))])
            _tidy(ax, "epoch", ylabel, title, integer_x=True)
        else:
            _no_data(ax, f"no {name.replace('_', ' ')} records")

    ax = axes["signal"]
    if signal[0]:
        ax.plot(*signal, color=_ARCH_COLOUR, lw=1.4, marker="o", gid="alpha-grad-z", label="alpha")
        if beta_signal[0]:  # the network level (a DiNTS search has no betas)
            ax.plot(
                *beta_signal, color="#ff7f0e", lw=1.4, marker="s", gid="beta-grad-z", label="beta"
            )
        _reference_level(
            ax, NOISE_Z_MEAN, "noise-level", f"{NOISE_Z_MEAN:.2f}: what zero-mean noise gives"
        )
        _tidy(
            ax,
            "epoch",
            "mean |z| of the gradients",
            "signal in the architecture gradients (mean over standard error)",
            integer_x=True,
        )
    else:
        _no_data(ax, "no gradient-signal records")

    if start is not None:  # between the last warm-up epoch and the first with arch steps
        for name in ("miou", "entropy", "movement", "free", "path", "arch_steps"):
            if axes[name].lines:
                axes[name].axvline(start - 0.5, color=_MARK_COLOUR, ls="--", lw=1, gid="arch-start")
    return fig


def _reference_level(ax: Axes, y: float, gid: str, label: str) -> None:
    """A dotted horizontal line that the curves of ``ax`` are read against, and the legend."""
    ax.axhline(y, color=_MARK_COLOUR, ls=":", lw=1, gid=gid, label=label)
    ax.legend(fontsize=8, frameon=False)


def search_warning(records: Iterable[Mapping[str, Any]]) -> str | None:
    """The warning of :func:`autodeeplab.diagnostics.end_of_search_warning` for the ``epoch``
    records of a search log (None when it moved with a signal, or without epoch records)."""
    return end_of_search_warning(_latest(list(records), "epoch", "epoch"))


def _arch_start(epochs: Sequence[Mapping[str, Any]]) -> int | None:
    """The first epoch with architecture steps, when an epoch without them precedes it."""
    warm = [r["epoch"] for r in epochs if r.get("arch_search") is False]
    arch = [r["epoch"] for r in epochs if r.get("arch_search") is True]
    if not warm or not arch or min(arch) < min(warm):
        return None
    return min(arch)


# ----------------------------------------------------------------------------- training curves


def draw_training_curves(
    records: Iterable[Mapping[str, Any]], *, smooth: int | None = None
) -> Figure:
    """Curves of a retraining run from the records of its ``metrics.jsonl``.

    Panels (axes labels ``"loss"``, ``"lr"``, ``"miou"``):

    * training loss against the iteration: the logged ``step`` records as a thin line and their
      :func:`moving_average` over ``smooth`` records (default: a tenth of them, at most 50; no
      average line when that is 1);
    * learning rate against the iteration;
    * validation mIoU (%) of the ``eval`` records against the iteration, the best one starred.

    Missing or null values leave the point out; unknown keys and record types are ignored.
    Raises :class:`ValueError` when no record has anything to plot.
    """
    records = list(records)
    steps = _latest(records, "step", "iteration")
    evals = _latest(records, "eval", "iteration")
    loss = _series(steps, "iteration", "loss")
    lr = _series(steps, "iteration", "lr")
    miou = _series(evals, "iteration", "mIoU", scale=100.0)
    if not (loss[0] or lr[0] or miou[0]):
        raise ValueError(
            f"nothing to plot in {len(records)} records: expected 'step' records with "
            "'iteration' and 'loss' or 'lr', or 'eval' records with 'iteration' and 'mIoU' "
            "(the metrics.jsonl of a training run)"
        )
    if smooth is not None and smooth < 1:
        raise ValueError(f"smooth must be >= 1 (records in the moving average), got {smooth}")

    fig = _new_figure((9.0, 6.4))
    axes = fig.subplot_mosaic([["loss", "loss"], ["lr", "miou"]])
    ax = axes["loss"]
    if loss[0]:
        window = smooth if smooth is not None else min(50, max(1, len(loss[0]) // 10))
        average = (loss[0], list(moving_average(loss[1], window))) if window > 1 else ([], [])
        raw = dict(color=_WEIGHT_COLOUR, lw=0.7, alpha=0.45, gid="loss", label="logged steps")
        smoothed = dict(color=_WEIGHT_COLOUR, lw=1.8, gid="loss-average")
        smoothed["label"] = f"moving average ({window} records)"
        _plot_lines(ax, [(loss, raw), (average, smoothed)])
        ax.legend(fontsize=8, frameon=False)
        _tidy(ax, "iteration", "loss", "training loss")
    else:
        _no_data(ax, "no loss records")

    ax = axes["lr"]
    if lr[0]:
        _plot_lines(ax, [(lr, {"color": "#8c564b", "lw": 1.4, "gid": "lr"})])
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        _tidy(ax, "iteration", "learning rate", "learning rate")
    else:
        _no_data(ax, "no learning-rate records")

    ax = axes["miou"]
    if miou[0]:
        ax.plot(*miou, color="#2ca02c", marker="o", lw=1.4, gid="mIoU")
        ys = np.asarray(miou[1])
        if np.isfinite(ys).any():
            best = int(np.nanargmax(ys))  # the first of equal bests
            bx, by = miou[0][best], miou[1][best]
            ax.plot(
                [bx],
                [by],
                ls="none",
                marker="*",
                markersize=15,
                color="#f1c40f",
                markeredgecolor="#7d6608",
                zorder=3,
                gid="best-mIoU",
                label=f"best {by:.2f}% at iteration {bx:g}",
            )
            ax.legend(fontsize=8, frameon=False)
        _tidy(ax, "iteration", "mIoU (%)", "validation mIoU")
    else:
        _no_data(ax, "no evaluation records")
    return fig


# ----------------------------------------------------------------------------- report document


@dataclass(frozen=True)
class _Heading:
    text: str
    level: int


@dataclass(frozen=True)
class _Paragraph:
    text: str


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: tuple[str, ...]


@dataclass(frozen=True)
class _Image:
    data: bytes  # PNG file contents
    caption: str
    width: int | None
    filename: str  # name in the asset folder (when the image is copied or rendered there)
    source: Path | None  # the file given to Report.image; None for a rendered figure


@dataclass(frozen=True)
class _Code:
    text: str


_Block = _Heading | _Paragraph | _Table | _Image | _Code

ALIGNMENTS: tuple[str, ...] = ("left", "right", "center")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NUMERIC = re.compile(
    r"[+-]?(\d[\d,]*\.?\d*|\.\d+)([eE][+-]?\d+)?\s*(%|[A-Za-zµ×/]{1,3})?|[+-]?(nan|inf)"
)


def _cell_text(value: Any) -> str:
    """How a table cell reads: None as an em dash, floats with 6 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value).replace("\n", " ")


def _looks_numeric(value: Any) -> bool:
    if isinstance(value, str):
        return _NUMERIC.fullmatch(value.strip()) is not None
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


class Report:
    """A document built block by block and written as ``report.html`` and ``report.md``.

    Text is plain: it is escaped in both outputs, except that a span between backticks is set
    as inline code. Images are PNG; the HTML embeds them as base64 data URIs (the file stands
    alone), the Markdown links them by a path relative to its folder.

    >>> report = Report("Auto-DeepLab demo")
    >>> report.heading("Search")
    >>> report.paragraph("Decoded with `autodeeplab decode`.")
    >>> report.table(["epoch", "mIoU (%)"], [[1, 12.5], [2, 20.25]])
    >>> html_path, md_path = report.write("runs/demo")  # doctest: +SKIP
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[_Block] = []

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading; ``level`` 1..6 (the title is the only level-1 heading by habit)."""
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 6:
            raise ValueError(f"heading level must be an integer in 1..6, got {level!r}")
        self.blocks.append(_Heading(" ".join(text.split()), level))

    def paragraph(self, text: str) -> None:
        """A paragraph of plain text; `backticks` mark inline code."""
        self.blocks.append(_Paragraph(text))

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[Any]],
        align: Sequence[str] | None = None,
    ) -> None:
        """A table of ``len(headers)`` columns; every row must have one cell per column.

        Cells are shown with ``str`` (floats with 6 significant digits, None as an em dash).
        ``align`` gives ``"left"``, ``"right"`` or ``"center"`` per column; by default a column
        whose cells are all numbers (or strings that read as a number with an optional short
        unit, such as ``"63.2%"``) is right-aligned and any other column left-aligned.
        """
        head = tuple(str(h) for h in headers)
        if not head:
            raise ValueError("a table needs at least one column")
        body = [tuple(row) for row in rows]
        for i, row in enumerate(body):
            if len(row) != len(head):
                raise ValueError(
                    f"table row {i} has {len(row)} cells, expected {len(head)} (one per header)"
                )
        if align is None:
            align = [
                "right"
                if (cells := [row[c] for row in body if row[c] is not None])
                and all(_looks_numeric(v) for v in cells)
                else "left"
                for c in range(len(head))
            ]
        sides = tuple(align)
        if len(sides) != len(head) or any(a not in ALIGNMENTS for a in sides):
            raise ValueError(
                f"align must give one of {ALIGNMENTS} for each of the {len(head)} columns, "
                f"got {sides!r}"
            )
        text_rows = tuple(tuple(_cell_text(v) for v in row) for row in body)
        self.blocks.append(_Table(head, text_rows, sides))

    def image(self, path: str | Path, caption: str, width: int | None = None) -> None:
        """A PNG file with a caption; ``width`` in CSS pixels (HTML only; at most the page width).

        The file is read now. Raises :class:`FileNotFoundError` when it does not exist and
        :class:`ValueError` when it is not a PNG file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        data = path.read_bytes()
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError(f"{path} is not a PNG file (reports embed PNG images only)")
        self.blocks.append(_Image(data, caption, _check_width(width), path.name, path))

    def figure(
        self, fig: Figure, name: str, caption: str, width: int | None = None, *, dpi: int = 150
    ) -> None:
        """A matplotlib figure, rendered now as PNG and written as ``report_files/<name>.png``.

        ``name`` is a file stem (letters, digits, ``.``, ``_``, ``-``), unique in the report.
        """
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"figure name {name!r} must be a file stem of letters, digits, '.', '_' and '-' "
                "that starts with a letter or digit"
            )
        filename = f"{name}.png"
        taken = [b.filename for b in self.blocks if isinstance(b, _Image) and b.source is None]
        if filename in taken:
            raise ValueError(f"the report already has a figure named {name!r}")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        self.blocks.append(_Image(buf.getvalue(), caption, _check_width(width), filename, None))

    def code(self, text: str) -> None:
        """A preformatted block (a command, a genotype, a config), shown verbatim."""
        self.blocks.append(_Code(text.rstrip("\n")))

    # ------------------------------------------------------------------------- output

    def write(self, out_dir: str | Path, name: str = "report") -> tuple[Path, Path]:
        """Write ``out_dir/<name>.html`` and ``out_dir/<name>.md``; returns their paths.

        Figures, and images that are not already under ``out_dir``, are written into
        ``out_dir/report_files/`` (a copied image whose name is taken gets a ``-2``, ``-3`` ...
        suffix). All files are first written in full to temporary siblings, then moved into place
        with ``os.replace`` (atomic), the two documents last: no file is ever seen half-written,
        a failure while writing leaves the earlier files as they were, and no temporary file is
        left behind.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        links, assets = self._place_images(out_dir)
        if assets:
            (out_dir / ASSET_DIR).mkdir(exist_ok=True)
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"report name {name!r} must be a file stem of letters, digits, '.', '_' and '-'"
            )
        html_path, md_path = out_dir / f"{name}.html", out_dir / f"{name}.md"
        documents = [
            (md_path, self._markdown(links).encode("utf-8")),
            (html_path, self._html().encode("utf-8")),
        ]
        _write_files(assets + documents)
        return html_path, md_path

    def _place_images(self, out_dir: Path) -> tuple[dict[int, str], list[tuple[Path, bytes]]]:
        """``block index -> link`` (relative to ``out_dir``) for every image, and the files to
        write into the asset folder: the figures and the images from outside ``out_dir``."""
        root = out_dir.resolve()
        assets = out_dir / ASSET_DIR
        images = [(i, b) for i, b in enumerate(self.blocks) if isinstance(b, _Image)]
        links: dict[int, str] = {}
        shown: set[Path] = set()  # files under out_dir that the report links to where they are
        for i, block in images:
            if block.source is not None and (src := block.source.resolve()).is_relative_to(root):
                links[i] = src.relative_to(root).as_posix()
                shown.add(src)
        taken = {b.filename for _, b in images if b.source is None}  # figures keep their name
        taken |= {p.name for p in shown if p.parent == assets.resolve()}
        copies: dict[Path, str] = {}  # outside file -> its name in the asset folder
        writes: list[tuple[Path, bytes]] = []
        for i, block in images:
            if i in links:
                continue
            if block.source is None:
                filename = block.filename
                if (assets / filename).resolve() in shown:
                    raise ValueError(
                        f"figure {filename!r} would overwrite {assets / filename}, an image the "
                        "report shows; give the figure another name"
                    )
            else:
                src = block.source.resolve()
                if src in copies:
                    links[i] = f"{ASSET_DIR}/{copies[src]}"
                    continue
                filename = copies[src] = _unique_name(block.filename, taken)
                taken.add(filename)
            writes.append((assets / filename, block.data))
            links[i] = f"{ASSET_DIR}/{filename}"
        return links, writes

    def _html(self) -> str:
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(self.title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            "<main>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        parts += [_block_html(block) for block in self.blocks]
        parts += ["</main>", "</body>", "</html>", ""]
        return "\n".join(parts)

    def _markdown(self, links: Mapping[int, str]) -> str:
        parts = [f"# {_md_text(self.title)}"]
        parts += [_block_markdown(block, links.get(i, "")) for i, block in enumerate(self.blocks)]
        return "\n\n".join(parts) + "\n"


def _check_width(width: int | None) -> int | None:
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"width must be a positive number of pixels or None, got {width!r}")
    return width


def _unique_name(filename: str, taken: set[str]) -> str:
    stem, suffix = os.path.splitext(filename)
    candidate, k = filename, 1
    while candidate in taken:
        k += 1
        candidate = f"{stem}-{k}{suffix}"
    return candidate


def _write_files(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write every file to a temporary sibling, then move them all into place.

    Sibling temp files share the target's file system, so each ``os.replace`` is atomic; they
    are opened with ``"x"`` rather than ``mkstemp`` so results get the usual umask permissions.
    """
    temps: list[Path] = []
    try:
        for path, data in files:
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            with open(tmp, "xb") as fh:
                temps.append(tmp)
                fh.write(data)
        for tmp, (path, _) in zip(temps, files, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- rendering

_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~&])")
# Line starts that Markdown reads as a list item ("- a", "+ a", "1. a"), a rule or a heading
# underline ("---", "==="); the first character (or the number's dot) is escaped.
_MD_LINE_START = re.compile(r"^(\s*)([-+=])(?=[\s=-]|$)", re.MULTILINE)
_MD_ORDERED = re.compile(r"^(\s*\d+)([.)])(?=\s|$)", re.MULTILINE)


def _inline_html(text: str) -> str:
    """Escaped text with `backtick` spans as ``<code>``."""
    parts = _CODE_SPAN.split(text)  # even: text, odd: code
    return "".join(
        f"<code>{html.escape(p)}</code>" if k % 2 else html.escape(p) for k, p in enumerate(parts)
    )


def _md_text(text: str) -> str:
    """Plain text that Markdown shows as written (punctuation escaped, no list or heading)."""
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_LINE_START.sub(r"\1\\\2", text)


def _inline_md(text: str, *, in_table: bool = False) -> str:
    """Markdown for text with `backtick` spans; in a table, ``|`` is escaped inside code too."""
    parts = _CODE_SPAN.split(text)
    out = []
    for k, p in enumerate(parts):
        if k % 2:
            out.append("`" + (p.replace("|", "\\|") if in_table else p) + "`")
        else:
            out.append(_md_text(p))
    return _MD_ORDERED.sub(r"\1\\\2", "".join(out))


def _block_html(block: _Block) -> str:
    if isinstance(block, _Heading):
        return f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>"
    if isinstance(block, _Paragraph):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, _Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, _Table):
        cls = {"left": "l", "right": "r", "center": "c"}
        head = "".join(
            f'<th class="{cls[a]}">{_inline_html(h)}</th>'
            for h, a in zip(block.headers, block.align, strict=True)
        )
        body = "\n".join(
            "<tr>"
            + "".join(
                f'<td class="{cls[a]}">{_inline_html(c)}</td>'
                for c, a in zip(row, block.align, strict=True)
            )
            + "</tr>"
            for row in block.rows
        )
        return (
            f'<div class="table"><table>\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table></div>"
        )
    assert isinstance(block, _Image)
    uri = "data:image/png;base64," + base64.b64encode(block.data).decode("ascii")
    width = f' width="{block.width}"' if block.width is not None else ""
    alt = html.escape(block.caption.replace("`", ""), quote=True)
    caption = f"\n<figcaption>{_inline_html(block.caption)}</figcaption>" if block.caption else ""
    return f'<figure>\n<img src="{uri}" alt="{alt}"{width}>{caption}\n</figure>'


def _block_markdown(block: _Block, link: str) -> str:
    if isinstance(block, _Heading):
        return f"{'#' * block.level} {_inline_md(block.text)}"
    if isinstance(block, _Paragraph):
        return _inline_md(block.text)
    if isinstance(block, _Code):
        runs = [len(r) for r in re.findall(r"`+", block.text)]
        fence = "`" * max(3, max(runs, default=0) + 1)
        return f"{fence}\n{block.text}\n{fence}"
    if isinstance(block, _Table):
        sep = {"left": ":---", "right": "---:", "center": ":---:"}
        lines = [
            "| " + " | ".join(_inline_md(h, in_table=True) for h in block.headers) + " |",
            "| " + " | ".join(sep[a] for a in block.align) + " |",
        ]
        lines += [
            "| " + " | ".join(_inline_md(c, in_table=True) for c in row) + " |"
            for row in block.rows
        ]
        return "\n".join(lines)
    assert isinstance(block, _Image)
    alt = re.sub(r"([\\\[\]])", r"\\\1", " ".join(block.caption.replace("`", "").split()))
    image = f"![{alt}]({quote(link, safe='/')})"
    return f"{image}\n\n*{_inline_md(block.caption)}*" if block.caption else image


_CSS = """
body { margin: 0; background: #fff; color: #1f2328;
  font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    sans-serif; }
main { max-width: 52rem; margin: 0 auto; padding: 2rem 1.25rem 4rem; }
h1, h2, h3, h4, h5, h6 { line-height: 1.25; margin: 1.6em 0 0.6em; }
h1 { font-size: 1.9rem; margin-top: 0; padding-bottom: 0.3em; border-bottom: 1px solid #d0d7de; }
h2 { font-size: 1.4rem; padding-bottom: 0.25em; border-bottom: 1px solid #eaeef2; }
h3 { font-size: 1.15rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono",
  monospace; font-size: 0.875em; }
code { background: #f3f4f6; padding: 0.1em 0.3em; border-radius: 4px; }
pre { background: #f6f8fa; border: 1px solid #e5e7eb; border-radius: 6px; padding: 0.8em 1em;
  overflow-x: auto; line-height: 1.45; }
pre code { background: none; padding: 0; font-size: inherit; }
.table { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 0.35em 0.75em; }
th { background: #f6f8fa; font-weight: 600; }
tbody tr:nth-child(even) { background: #fafbfc; }
.l { text-align: left; } .r { text-align: right; } .c { text-align: center; }
figure { margin: 1.5em 0; text-align: center; }
img { max-width: 100%; height: auto; }
figcaption { color: #57606a; font-size: 0.9em; margin-top: 0.5em; }
"""
