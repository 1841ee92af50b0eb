"""Figures of an architecture: the network path, the cell graph and the beta transition maps.

Everything is drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, so no global
figure state): every function returns a :class:`matplotlib.figure.Figure` that the caller saves
with :func:`save_figure` or discards.

* :func:`draw_path` — the decoded path over the four-level trellis (stem, then layers ``0..L-1``);
  every active transition of a multi-path (DiNTS) genotype.
* :func:`draw_cell` — the cell as a directed graph laid out left to right by dependency depth.
* :func:`draw_beta_heatmap` — transition probabilities, one panel per move (finer/same/coarser).
* :func:`draw_architecture` — the three combined in one figure.
* :func:`load_architecture` — a genotype JSON file or a search checkpoint -> genotype (+ betas).
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from autodeeplab import decode, space
from autodeeplab.genotype import Genotype
from autodeeplab.topology import Topology

SAVE_FORMATS: tuple[str, ...] = (".png", ".svg")
"""File suffixes :func:`save_figure` can write."""

LEVEL_LABELS: tuple[str, ...] = tuple(f"/{s}" for s in space.LEVEL_STRIDES)
INPUT_LABELS: tuple[str, str] = ("H(l-2)", "H(l-1)")

_PATH_COLOUR = "#c0392b"
_NODE_COLOUR = "#bdc3c7"
_INPUT_COLOUR = "#d6eaf8"
_BLOCK_COLOUR = "#fdebd0"
_OUTPUT_COLOUR = "#d5f5e3"
_MASK_COLOUR = "#d0d0d0"
_CMAP = "viridis"
_BOX_W, _BOX_H = 1.5, 0.7  # input and concat boxes, in cell-layout units
_BLOCK_RADIUS = 0.42

Canvas = Figure | SubFigure


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure attached to its own Agg canvas (independent of any pyplot backend)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ----------------------------------------------------------------------------- network path


def _plot_path(ax: Axes, genotype: Genotype) -> None:
    layers = genotype.layers
    trellis = space.SearchSpace(layers, genotype.blocks)
    stem_x = -1
    # Light trellis: every reachable node and every transition between them.
    for layer, src, dst in trellis.transitions():
        ax.plot([layer - 1, layer], [src, dst], color=_NODE_COLOUR, lw=0.8, zorder=1)
    nodes = trellis.all_nodes()
    xs = [stem_x] + [n.layer for n in nodes]
    ys = [space.STEM_LEVEL] + [n.level for n in nodes]
    ax.scatter(xs, ys, s=36, color=_NODE_COLOUR, zorder=2, gid="trellis-nodes")

    path_x = [stem_x, *range(layers)]
    if genotype.path is not None:
        ax.plot(
            path_x,
            [space.STEM_LEVEL, *genotype.path],
            color=_PATH_COLOUR,
            lw=3,
            marker="o",
            markersize=9,
            markerfacecolor="white",
            markeredgewidth=2.5,
            zorder=3,
            gid="path",
        )
        title = f"network path: {layers} layers, output stride {genotype.output_stride}"
    else:
        _plot_topology(ax, genotype)
        strides = ", ".join(str(space.LEVEL_STRIDES[k]) for k in genotype.output_levels)
        title = (
            f"multi-path network: {layers} layers, {len(genotype.topology.transitions())} "
            f"cells, output strides {strides}"
        )
    ax.set_xticks(path_x, ["stem", *(str(layer) for layer in range(layers))])
    ax.set_yticks(range(space.NUM_LEVELS), LEVEL_LABELS)
    ax.set_xlim(stem_x - 0.5, layers - 0.5)
    ax.set_ylim(space.NUM_LEVELS - 0.5, -0.5)  # finer (/4) on top
    ax.set_xlabel("layer")
    ax.set_ylabel("downsample rate")
    ax.set_title(f"{title}, deepest /{genotype.max_stride}")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _plot_topology(ax: Axes, genotype: Genotype) -> None:
    """Every active transition of a multi-path topology (one cell each) and the active nodes."""
    for layer, src, dst in genotype.topology.transitions():
        ax.plot(
            [layer - 1, layer], [src, dst], color=_PATH_COLOUR, lw=3, zorder=3, gid="transition"
        )
    topo = genotype.topology
    active = [(-1, space.STEM_LEVEL)] + [
        (layer, level) for layer in range(topo.num_layers) for level in topo.active_levels(layer)
    ]
    ax.scatter(
        [x for x, _ in active],
        [y for _, y in active],
        s=81,
        facecolor="white",
        edgecolor=_PATH_COLOUR,
        linewidths=2.5,
        zorder=4,
        gid="active-nodes",
    )


def draw_path(genotype: Genotype) -> Figure:
    """The network path (bold) over the trellis of reachable nodes (light); for a multi-path
    genotype every active transition (one cell each) and every active node."""
    fig = _new_figure((max(6.0, 0.55 * genotype.layers + 2.5), 3.2))
    _plot_path(fig.add_subplot(), genotype)
    return fig


# ----------------------------------------------------------------------------- cell graph


def _cell_layout(genotype: Genotype) -> dict[int, tuple[float, float]]:
    """``node -> (x, y)``: inputs ``0, 1``, blocks ``2..B+1``, concat ``B+2``.

    Columns are dependency depths; within a column, nodes are ordered by the mean height of
    their inputs, which keeps most edges from crossing.
    """
    blocks = genotype.blocks
    depth = {0: 0, 1: 0}
    for b, block in enumerate(genotype.cell):
        depth[b + 2] = 1 + max(depth[i] for i, _ in block)
    out = blocks + 2
    depth[out] = 1 + max(depth.values())
    columns: dict[int, list[int]] = {}
    for node in sorted(depth):
        columns.setdefault(depth[node], []).append(node)
    parents = {b + 2: [i for i, _ in block] for b, block in enumerate(genotype.cell)}
    parents[out] = list(range(2, blocks + 2))
    dx, dy = 3.4, 1.5
    pos: dict[int, tuple[float, float]] = {}
    for d in sorted(columns):
        nodes = columns[d]
        if d > 0:
            nodes.sort(key=lambda n: (np.mean([pos[p][1] for p in parents[n]]), n))
        top = (len(nodes) - 1) / 2
        for k, node in enumerate(nodes):
            pos[node] = (d * dx, (top - k) * dy)
    return pos


def _cell_node_label(node: int, blocks: int) -> str:
    if node < 2:
        return INPUT_LABELS[node]
    return "concat" if node == blocks + 2 else str(node - 2)


def _bezier(p0: np.ndarray, p1: np.ndarray, rad: float, t: float | np.ndarray) -> np.ndarray:
    """Point(s) at ``t`` on matplotlib's ``arc3,rad=rad`` curve (valid with equal aspect):
    ``(2,)`` for a scalar ``t``, ``(T, 2)`` for ``T`` values."""
    d = p1 - p0
    ctrl = (p0 + p1) / 2 + rad * np.array([d[1], -d[0]])
    t = np.asarray(t, dtype=float)[..., None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t**2 * p1


def _clearance(q: np.ndarray, centre: np.ndarray, is_box: bool) -> np.ndarray:
    """Distance from points ``q`` ``(..., 2)`` to the outline of a node (negative inside it)."""
    d = np.abs(np.asarray(q) - centre)
    if is_box:
        return np.maximum(d[..., 0] - _BOX_W / 2, d[..., 1] - _BOX_H / 2)
    return np.hypot(d[..., 0], d[..., 1]) - _BLOCK_RADIUS


_RADS: tuple[float, ...] = (0.0, 0.15, -0.15, 0.25, -0.25, 0.35, -0.35, 0.5, -0.5)
_SAMPLES = np.linspace(0.1, 0.9, 41)


def _route_edges(
    edges: Sequence[tuple[int, int]], xy: Mapping[int, np.ndarray], boxes: set[int]
) -> list[float]:
    """Curvature (``arc3`` rad) of every edge, chosen in order.

    An edge must keep clear of every node it does not touch; among the curvatures that do, it
    takes the straightest one that runs least along edges routed before it.
    """
    routed: list[np.ndarray] = []
    rads = []
    for a, b in edges:
        obstacles = [(xy[n], n in boxes) for n in xy if n not in (a, b)]
        best_rad, best_cost = _RADS[0], math.inf
        for rad in _RADS:
            pts = _bezier(xy[a], xy[b], rad, _SAMPLES)
            gap = min([float(_clearance(pts, c, box).min()) for c, box in obstacles] + [math.inf])
            cost = abs(rad) + (10.0 if gap < 0.2 else 0.0)
            if routed:
                inner = pts[8:-8]  # near the end points edges meet anyway
                near = np.linalg.norm(inner[:, None] - np.concatenate(routed)[None], axis=2)
                cost += 0.6 * float((near.min(axis=1) < 0.25).mean())
            if cost < best_cost:
                best_rad, best_cost = rad, cost
        rads.append(best_rad)
        routed.append(_bezier(xy[a], xy[b], best_rad, _SAMPLES))
    return rads


_LABEL_FONTSIZE = 7.5
_CHAR_WIDTH = 0.07  # approximate width of one label character, in cell-layout units


def _label_extent(
    p0: np.ndarray, p1: np.ndarray, rad: float, t: float, text: str
) -> tuple[np.ndarray, float, np.ndarray]:
    """Centre, upright angle (degrees) and sample points of an edge label placed at ``t``."""
    centre = _bezier(p0, p1, rad, t)
    tangent = _bezier(p0, p1, rad, t + 1e-3) - _bezier(p0, p1, rad, t - 1e-3)
    unit = tangent / max(float(np.linalg.norm(tangent)), 1e-12)
    half = 0.5 * _CHAR_WIDTH * len(text)
    extent = centre + np.linspace(-half, half, 7)[:, None] * unit
    angle = (math.degrees(math.atan2(unit[1], unit[0])) + 90) % 180 - 90  # keep text upright
    return centre, angle, extent


def _plot_cell(ax: Axes, genotype: Genotype) -> None:
    blocks = genotype.blocks
    out = blocks + 2
    xy, edges, rads = _cell_geometry(genotype)
    boxes = {0, 1, out}

    # Nodes. Inputs and concat are boxes, blocks are circles.
    patches: dict[int, FancyBboxPatch | Circle] = {}
    for node, (x, y) in xy.items():
        label = _cell_node_label(node, blocks)
        if node in boxes:
            patch: FancyBboxPatch | Circle = FancyBboxPatch(
                (x - _BOX_W / 2, y - _BOX_H / 2),
                _BOX_W,
                _BOX_H,
                boxstyle="round,pad=0.02,rounding_size=0.15",
                fc=_INPUT_COLOUR if node < 2 else _OUTPUT_COLOUR,
                ec="#34495e",
                lw=1.2,
                zorder=3,
                gid=f"node-{label}",
            )
        else:
            patch = Circle(
                (x, y),
                _BLOCK_RADIUS,
                fc=_BLOCK_COLOUR,
                ec="#34495e",
                lw=1.2,
                zorder=3,
                gid=f"node-{label}",
            )
        patches[node] = ax.add_patch(patch)
        ax.text(x, y, label, ha="center", va="center", fontsize=10, zorder=4, weight="bold")

    # Edges: the two branches of every block (labelled) and every block into concat.
    curves = [
        _bezier(xy[a], xy[b], rad, _SAMPLES) for (a, b, _), rad in zip(edges, rads, strict=True)
    ]
    for (src, dst, op), rad in zip(edges, rads, strict=True):
        ax.add_patch(
            FancyArrowPatch(
                tuple(xy[src]),
                tuple(xy[dst]),
                connectionstyle=f"arc3,rad={rad}",
                arrowstyle="-|>",
                mutation_scale=12,
                lw=1.3 if op else 0.9,
                color="#2c3e50" if op else "#95a5a6",
                patchA=patches[src],
                patchB=patches[dst],
                shrinkA=1,
                shrinkB=1,
                zorder=2,
                gid="branch" if op else "concat",
            )
        )

    # Labels follow their edge; each sits where it is furthest from the other edges (so a label
    # is never read as belonging to a crossing edge), from labels already placed and from nodes.
    placed: list[np.ndarray] = []
    for k, ((src, dst, op), rad) in enumerate(zip(edges, rads, strict=True)):
        if op is None:
            continue
        others = np.concatenate([c for j, c in enumerate(curves) if j != k])
        best, best_score = (np.zeros(2), 0.0, np.zeros((1, 2))), -math.inf
        for t in np.linspace(0.25, 0.75, 21):
            centre, angle, extent = _label_extent(xy[src], xy[dst], rad, float(t), op)
            d_edges = float(np.linalg.norm(others[:, None] - extent[None], axis=2).min())
            d_nodes = min(float(_clearance(extent, xy[n], n in boxes).min()) for n in xy)
            d_labels = min(
                [float(np.linalg.norm(p[:, None] - extent[None], axis=2).min()) for p in placed]
                + [2.0]
            )
            score = (
                min(d_edges, 0.3)
                + 2 * min(d_labels, 0.3)
                + 2 * min(d_nodes, 0.2)
                - 0.3 * abs(t - 0.5)
            )
            if score > best_score:
                best, best_score = (centre, angle, extent), score
        centre, angle, extent = best
        placed.append(extent)
        ax.text(
            centre[0],
            centre[1],
            op,
            ha="center",
            va="center",
            rotation=angle,
            rotation_mode="anchor",
            fontsize=_LABEL_FONTSIZE,
            zorder=5,
            gid="op-label",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.9},
        )

    x0, x1, y0, y1 = _cell_extent(xy, edges, rads)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"cell: {blocks} blocks, output = concat of all blocks")


def _cell_geometry(
    genotype: Genotype,
) -> tuple[dict[int, np.ndarray], list[tuple[int, int, str | None]], list[float]]:
    """Node positions, edges ``(src, dst, op or None for concat)`` and their curvatures."""
    out = genotype.blocks + 2
    xy = {n: np.array(p, dtype=float) for n, p in _cell_layout(genotype).items()}
    edges: list[tuple[int, int, str | None]] = [
        (i, b + 2, op) for b, block in enumerate(genotype.cell) for i, op in block
    ]
    edges += [(b + 2, out, None) for b in range(genotype.blocks)]
    rads = _route_edges([(a, b) for a, b, _ in edges], xy, {0, 1, out})
    return xy, edges, rads


def _cell_extent(
    xy: Mapping[int, np.ndarray], edges: Sequence[tuple[int, int, Any]], rads: Sequence[float]
) -> tuple[float, float, float, float]:
    """``(xmin, xmax, ymin, ymax)`` of nodes and routed edges, with a margin."""
    pts = np.concatenate(
        [np.array(list(xy.values()))]
        + [_bezier(xy[a], xy[b], r, _SAMPLES) for (a, b, _), r in zip(edges, rads, strict=True)]
    )
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return float(lo[0] - 0.9), float(hi[0] + 0.9), float(lo[1] - 0.5), float(hi[1] + 0.5)


_CELL_INCHES_PER_UNIT = 0.85


def _cell_figsize(genotype: Genotype) -> tuple[float, float]:
    x0, x1, y0, y1 = _cell_extent(*_cell_geometry(genotype))
    k = _CELL_INCHES_PER_UNIT
    return max(5.0, k * (x1 - x0)), max(2.6, k * (y1 - y0) + 0.4)


def draw_cell(genotype: Genotype) -> Figure:
    """The cell as a directed graph: inputs, blocks ``0..B-1`` and the concat output."""
    fig = _new_figure(_cell_figsize(genotype))
    _plot_cell(fig.add_subplot(), genotype)
    return fig


# ----------------------------------------------------------------------------- beta heat map


def used_transitions(layers: int) -> np.ndarray:
    """``(L, 4, 3)`` bool: True where ``beta[l, s, m]`` is an edge of the trellis.

    An entry is used when the move is valid from level ``s`` and node ``(l - 1, s)`` exists
    (layer 0 reads only the stem, at level 0). All other entries carry no probability.
    """
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    return np.array(space.SearchSpace(layers).used_transition_mask(), dtype=bool)


def _plot_betas(canvas: Canvas, probs: np.ndarray, active: np.ndarray | None) -> list[Axes]:
    """Heat maps of transition probabilities ``probs (L, 4, 3)``; ``active``: a boolean mask of
    the same shape whose entries are circled (the transitions of the drawn topology)."""
    layers = probs.shape[0]
    used = used_transitions(layers)
    if active is not None and active.shape != probs.shape:
        raise ValueError(f"the topology has {active.shape[0]} layers, the probabilities {layers}")
    axes = canvas.subplots(1, space.NUM_MOVES, sharey=True)
    cmap = colormaps[_CMAP].with_extremes(bad=_MASK_COLOUR)
    image = None
    for m, ax in enumerate(axes):
        data = np.ma.masked_array(probs[:, :, m].T, mask=~used[:, :, m].T)  # (4, L)
        image = ax.imshow(
            data, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
        )
        image.set_gid(f"beta-{space.MOVE_NAMES[m]}")
        if active is not None:
            hits = [(layer, s) for layer, s in zip(*np.nonzero(active[:, :, m]), strict=True)]
            if hits:
                hx, hy = zip(*hits, strict=True)
                ax.scatter(
                    hx,
                    hy,
                    s=46,
                    facecolors="none",
                    edgecolors=_PATH_COLOUR,
                    linewidths=2,
                    zorder=3,
                    gid="path-overlay",
                )
        ax.set_title(f"move: {space.MOVE_NAMES[m]}", fontsize=10)
        step = 1 if layers <= 12 else math.ceil(layers / 12)
        ax.set_xticks(range(0, layers, step))
        ax.set_xlabel("layer")
        ax.set_yticks(range(space.NUM_LEVELS), LEVEL_LABELS)
    axes[0].set_ylabel("from level")
    assert image is not None
    cbar = canvas.colorbar(image, ax=list(axes), shrink=0.9, pad=0.02)
    cbar.set_label("transition probability")
    note = "; circles: transitions of the architecture" if active is not None else ""
    canvas.suptitle(f"transition probabilities (grey: not a trellis edge{note})", fontsize=11)
    return list(axes)


def draw_beta_heatmap(
    beta_logits: Any, path: Sequence[int] | None = None, *, show_path: bool = True
) -> Figure:
    """Transition probabilities of ``beta_logits`` ``(L, 4, 3)``: one panel per move.

    Layers run along x and the source level along y; entries that are not trellis edges are
    masked (grey). With ``show_path`` the moves taken by ``path`` (by default the Viterbi path
    of the betas) are circled.
    """
    beta = np.asarray(beta_logits, dtype=np.float64)
    probs = decode.transition_probs(beta)  # also checks the shape
    layers = probs.shape[0]
    if show_path and path is None:
        path = decode.decode_path(beta)
    active = Topology.from_path(path).mask() if show_path else None
    fig = _new_figure((max(8.0, 0.3 * space.NUM_MOVES * layers + 2.0), 2.8))
    _plot_betas(fig, probs, active)
    return fig


# ----------------------------------------------------------------------------- combined


def draw_architecture(genotype: Genotype, transition_probs: Any | None = None) -> Figure:
    """Topology and cell, and with ``transition_probs`` ``(L, 4, 3)`` (what the supernet
    mixed each trellis transition with, e.g. from :func:`load_architecture`) their heat maps
    with the genotype's transitions circled, in one figure."""
    cell_w, cell_h = _cell_figsize(genotype)
    width = max(10.0, 0.55 * genotype.layers + 2.5, cell_w)
    heights = [3.2, cell_h]
    if transition_probs is not None:
        heights.append(2.7)
    fig = _new_figure((width, sum(heights)))
    subs = fig.subfigures(len(heights), 1, height_ratios=heights)
    _plot_path(subs[0].add_subplot(), genotype)
    _plot_cell(subs[1].add_subplot(), genotype)
    if transition_probs is not None:
        probs = np.asarray(transition_probs, dtype=np.float64)
        _plot_betas(subs[2], probs, genotype.topology.mask())
    return fig


def check_figure_path(path: str | Path) -> Path:
    """``path`` as a :class:`Path` if its suffix is one :func:`save_figure` writes, else raise."""
    path = Path(path)
    if path.suffix.lower() not in SAVE_FORMATS:
        raise ValueError(
            f"cannot save a figure as {path.name!r}: the file suffix must be one of "
            f"{', '.join(SAVE_FORMATS)}"
        )
    return path


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (``.png`` or ``.svg``) atomically; returns the path."""
    path = check_figure_path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    # A sibling temp file (same file system, so os.replace is atomic); opened with "x" rather
    # than mkstemp so that the result gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fig.savefig(fh, format=suffix[1:], dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------- loading


def load_architecture(path: str | Path) -> tuple[Genotype, np.ndarray | None]:
    """Read a genotype JSON file, or decode a search checkpoint.

    A ``.json`` file is read with :meth:`Genotype.load` (no probabilities). Any other file is
    loaded with ``torch.load(weights_only=True)``, which never executes code from it. A search
    checkpoint (``last.pt``, holding its config) is decoded with the relaxation it was searched
    with (:func:`autodeeplab.search_model.checkpoint_genotype`: a single path for the
    paper's softmax, a multi-path topology for DiNTS, the cell of a perturbation-based
    selection when it holds one). A bare ``{"model": state_dict}`` or
    state_dict needs ``alphas`` ``(E, 8)`` and ``betas`` ``(L, 4, 3)`` and is decoded as the
    paper's relaxation. Returns the genotype and the transition probabilities ``(L, 4, 3)`` the
    supernet mixed with (the relaxation's transition weights).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return Genotype.load(path), None
    if not path.is_file():
        raise FileNotFoundError(f"architecture file not found: {path}")
    expected = (
        "expected a genotype .json file or a checkpoint holding {'model': state_dict} or a "
        "state_dict with 'alphas' and 'betas'"
    )
    obj = _torch_load(path, expected)
    if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping):
        from autodeeplab.search_model import checkpoint_architecture, checkpoint_genotype

        relaxation, params = checkpoint_architecture(obj, path)
        probs = relaxation.transition_weights(params)
        return checkpoint_genotype(obj, path), _to_numpy(probs)
    state = obj.get("model") if isinstance(obj, Mapping) and "model" in obj else obj
    if not isinstance(state, Mapping) or not {"alphas", "betas"} <= set(state):
        found = sorted(map(str, state))[:8] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{path} has no architecture parameters (found {found}); {expected}")
    alphas, betas = _to_numpy(state["alphas"]), _to_numpy(state["betas"])
    try:
        genotype = Genotype(cell=decode.decode_cell(alphas), path=decode.decode_path(betas))
    except ValueError as err:
        raise ValueError(f"cannot decode the architecture in {path}: {err}") from None
    return genotype, decode.transition_probs(betas)


def _torch_load(path: Path, expected: str) -> Any:
    from autodeeplab.checkpoint import CheckpointError, safe_torch_load

    try:
        return safe_torch_load(path, what="architecture file")
    except CheckpointError as err:
        raise ValueError(f"{err}; {expected}") from None


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
