"""Random and hand-designed architectures of the search space: the baselines of a search.

Uniform means uniform over *distinct* architectures:

Paths
    Every level sequence that starts from the stem (level 0), puts the first cell at level 0 or
    1, moves at most one level per layer and stays in 0..3 is equally likely:
    ``space.count_paths(L)`` of them (75,025 for 12 layers). A random walk would not be uniform
    (paths through level 0 or 3, which have two moves instead of three, would be favoured), so
    :func:`random_path` draws one index below the count and decodes it with a table of
    completion counts.
Multi-path topologies (``multi_path=True``)
    Every feasible topology (DiNTS' rules, :class:`autodeeplab.topology.Topology`) is equally
    likely: :func:`random_topology` draws the layers' patterns weighted by their numbers of
    completions.
Cells
    Block ``i`` picks an unordered pair of distinct inputs among its ``i + 2`` inputs and one of
    the 7 operations other than ``none`` for each: ``C(i + 2, 2) * 7 ** 2`` choices, drawn
    independently per block (a block adds its two branches, so ``(a, x) + (b, y)`` and
    ``(b, y) + (a, x)`` are one cell). Five blocks give ``2,700 * 7 ** 10`` cells.

:func:`sample_genotypes` adds seeding, parameter / Multi-Add ranges (rejection sampling) and the
``largest_of`` control; complexity is counted on meta-device twins
(:mod:`autodeeplab.complexity`) and cached.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache, lru_cache
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autodeeplab import space
from autodeeplab.genotype import Block, Genotype
from autodeeplab.space import HAND_DESIGNED_MIN_LAYERS, PATH_FAMILIES, hand_designed_paths
from autodeeplab.topology import Topology, layer_patterns

if TYPE_CHECKING:
    from autodeeplab.network import NetworkConfig

__all__ = [
    "CELL_OPS",
    "DEFAULT_INPUT_SIZE",
    "DEFAULT_MAX_TRIES",
    "HAND_DESIGNED_MIN_LAYERS",
    "LARGEST_BY",
    "PATH_FAMILIES",
    "SampleError",
    "cell_count",
    "cell_from_index",
    "complexity_of",
    "describe",
    "format_table",
    "hand_designed_genotypes",
    "hand_designed_paths",
    "path_from_index",
    "path_index",
    "random_cell",
    "random_genotype",
    "random_names",
    "random_path",
    "random_topology",
    "sample_genotypes",
    "write_genotypes",
]

CELL_OPS: tuple[str, ...] = tuple(op for op in space.PRIMITIVES if op != "none")
"""Operations a discrete cell may use (every primitive but ``none``), in canonical order."""

DEFAULT_INPUT_SIZE: tuple[int, int] = (1024, 2048)
"""Input size of the Multi-Adds ranges by default: a full Cityscapes frame."""
DEFAULT_MAX_TRIES = 1000
LARGEST_BY: tuple[str, ...] = ("params", "multiply_adds")


class SampleError(ValueError):
    """No architecture satisfying the constraints was found within ``max_tries`` draws."""


# ----------------------------------------------------------------------------- helpers


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    return rng


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _randbelow(n: int, rng: np.random.Generator) -> int:
    """An integer drawn uniformly from ``0..n-1``, exact for any size of ``n``."""
    if n <= np.iinfo(np.int64).max:
        return int(rng.integers(n))
    bits = n.bit_length()
    words = -(-bits // 32)
    while True:  # rejection from the smallest power of two above n: accepts with p > 1/2
        x = 0
        for w in rng.integers(0, 2**32, size=words, dtype=np.uint64):
            x = (x << 32) | int(w)
        x >>= words * 32 - bits
        if x < n:
            return x


# ----------------------------------------------------------------------------- paths


@cache
def _completions(layers: int) -> tuple[tuple[int, ...], ...]:
    """``table[r][s]``: number of ways to place ``r`` more layers after a node at level ``s``."""
    table = [tuple([1] * space.NUM_LEVELS)]
    for _ in range(layers):
        prev = table[-1]
        table.append(
            tuple(
                sum(prev[space.move_target(s, m)] for m in space.valid_moves(s))
                for s in range(space.NUM_LEVELS)
            )
        )
    return tuple(table)


def _next_levels(level: int) -> tuple[int, ...]:
    return tuple(space.move_target(level, m) for m in space.valid_moves(level))


def path_from_index(layers: int, index: int) -> tuple[int, ...]:
    """The ``index``-th path of ``layers`` layers (lexicographic order), for ``index`` in
    ``0..space.count_paths(layers) - 1``; a bijection, so a uniform index gives a uniform path."""
    layers = _check_positive("layers", layers)
    table = _completions(layers)
    total = table[layers][space.STEM_LEVEL]
    if not 0 <= index < total:
        raise ValueError(f"path index must be in 0..{total - 1} for {layers} layers, got {index}")
    path: list[int] = []
    level = space.STEM_LEVEL
    for layer in range(layers):
        remaining = layers - layer - 1
        for nxt in _next_levels(level):
            if index < table[remaining][nxt]:
                level = nxt
                break
            index -= table[remaining][nxt]
        path.append(level)
    return tuple(path)


def path_index(path: tuple[int, ...]) -> int:
    """Inverse of :func:`path_from_index` (the path is validated like a genotype's)."""
    path = Genotype(cell=(((0, CELL_OPS[0]), (1, CELL_OPS[0])),), path=path).path
    table = _completions(len(path))
    index, level = 0, space.STEM_LEVEL
    for layer, target in enumerate(path):
        remaining = len(path) - layer - 1
        for nxt in _next_levels(level):
            if nxt == target:
                break
            index += table[remaining][nxt]
        level = target
    return index


def random_path(layers: int, rng: np.random.Generator) -> tuple[int, ...]:
    """A network-level path drawn uniformly from all ``space.count_paths(layers)`` paths."""
    layers = _check_positive("layers", layers)
    total = _completions(layers)[layers][space.STEM_LEVEL]
    return path_from_index(layers, _randbelow(total, _check_rng(rng)))


# ----------------------------------------------------------------------------- cells


@cache
def _input_pairs(block: int) -> tuple[tuple[int, int], ...]:
    return tuple(combinations(range(block + 2), 2))


def _block_choices(block: int) -> int:
    return len(_input_pairs(block)) * len(CELL_OPS) ** 2


def _block_from_index(block: int, index: int) -> Block:
    pair, ops = divmod(index, len(CELL_OPS) ** 2)
    (a, b), (op_a, op_b) = _input_pairs(block)[pair], divmod(ops, len(CELL_OPS))
    return ((a, CELL_OPS[op_a]), (b, CELL_OPS[op_b]))


def cell_count(blocks: int) -> int:
    """Number of distinct cells of ``blocks`` blocks: ``prod_i C(i + 2, 2) * 7 ** 2``."""
    blocks = _check_positive("blocks", blocks)
    return math.prod(_block_choices(i) for i in range(blocks))


def cell_from_index(blocks: int, index: int) -> tuple[Block, ...]:
    """The ``index``-th cell of ``blocks`` blocks (block 0 varies slowest), for ``index`` in
    ``0..cell_count(blocks) - 1``; a bijection onto the distinct cells."""
    total = cell_count(blocks)
    if not 0 <= index < total:
        raise ValueError(f"cell index must be in 0..{total - 1} for {blocks} blocks, got {index}")
    out: list[Block] = []
    for i in reversed(range(blocks)):
        index, k = divmod(index, _block_choices(i))
        out.append(_block_from_index(i, k))
    return tuple(reversed(out))


def random_cell(blocks: int, rng: np.random.Generator) -> tuple[Block, ...]:
    """A cell drawn uniformly from the ``cell_count(blocks)`` distinct valid cells.

    Branches come sorted by input index, as :class:`~autodeeplab.genotype.Genotype` keeps them.
    """
    blocks = _check_positive("blocks", blocks)
    rng = _check_rng(rng)
    return tuple(_block_from_index(i, int(rng.integers(_block_choices(i)))) for i in range(blocks))


@cache
def _topology_completions(layers: int) -> tuple[dict[int, int], ...]:
    """``table[l][S]``: feasible ways to choose the patterns of layers ``l..L-1`` when the
    active levels before layer ``l`` are the bit mask ``S`` (``table[L][S] = 1``)."""
    table: list[dict[int, int]] = [{s: 1 for s in range(1, 1 << space.NUM_LEVELS)}]
    for layer in range(layers - 1, -1, -1):
        pat = layer_patterns(layer)
        row: dict[int, int] = {}
        for src, dst in zip(pat.src_mask.tolist(), pat.dst_mask.tolist(), strict=True):
            row[src] = row.get(src, 0) + table[-1][dst]
        table.append(row)
    return tuple(reversed(table))


def random_topology(layers: int, rng: np.random.Generator) -> Topology:
    """A multi-path topology drawn uniformly from all ``topology.count_topologies(layers)``
    feasible ones (2.2e25 for 12 layers).

    Layer by layer, the pattern of active transitions is drawn among those that leave exactly
    the active levels, each weighted by the number of feasible completions it leaves (a table
    computed once per depth), which makes every complete topology equally likely; a random
    subset of moves per node would favour sparse topologies.
    """
    layers = _check_positive("layers", layers)
    rng = _check_rng(rng)
    table = _topology_completions(layers)
    state = 1 << space.STEM_LEVEL
    chosen = []
    for layer in range(layers):
        pat = layer_patterns(layer)
        idx = np.flatnonzero(pat.src_mask == state)
        weights = [table[layer + 1][int(pat.dst_mask[i])] for i in idx]
        # the pattern whose share of the completions holds a uniform draw below their total
        i = int(
            idx[
                np.searchsorted(
                    np.cumsum(weights, dtype=object), _randbelow(sum(weights), rng), side="right"
                )
            ]
        )
        chosen.append(tuple(t for t, on in zip(pat.transitions, pat.bits[i], strict=True) if on))
        state = int(pat.dst_mask[i])
    return Topology(tuple(chosen))


def random_genotype(
    rng: np.random.Generator,
    *,
    layers: int = space.DEFAULT_LAYERS,
    blocks: int = space.DEFAULT_BLOCKS,
    multi_path: bool = False,
    path: Sequence[int] | None = None,
) -> Genotype:
    """A uniformly random architecture: :func:`random_cell` first, then :func:`random_path`
    (or, with ``multi_path``, :func:`random_topology`) from the same generator (cell and
    network level are independent, so the genotype is uniform over the product space).
    ``path``: a random cell on this fixed path (the control of a search of the cell alone on
    it); excludes ``multi_path``."""
    if path is not None and multi_path:
        raise ValueError("path fixes a single path; it excludes multi_path")
    cell = random_cell(blocks, rng)
    if path is not None:
        return Genotype(cell=cell, path=tuple(path))
    if multi_path:
        return Genotype(cell=cell, topology=random_topology(layers, rng))
    return Genotype(cell=cell, path=random_path(layers, rng))


# ----------------------------------------------------------------------------- hand-designed


def hand_designed_genotypes(
    layers: int = space.DEFAULT_LAYERS,
    cell: tuple[Block, ...] | None = None,
    *,
    families: list[str] | tuple[str, ...] | None = None,
) -> dict[str, Genotype]:
    """The hand-designed path families (see :func:`hand_designed_paths`) with one cell, the
    released one by default."""
    cell = space.RELEASED_CELL if cell is None else cell
    paths = hand_designed_paths(layers, families=families)
    return {name: Genotype(cell=cell, path=path) for name, path in paths.items()}


# ----------------------------------------------------------------------------- complexity


@dataclass(frozen=True)
class _Counts:
    params: int
    multiply_adds: int | None


@lru_cache(maxsize=65536)
def _params(config: NetworkConfig) -> int:
    from autodeeplab.complexity import count_parameters, meta_model

    return count_parameters(meta_model(config))["total"]


@lru_cache(maxsize=65536)
def _multiply_adds(config: NetworkConfig, input_size: tuple[int, int]) -> int:
    from autodeeplab.complexity import complexity

    return complexity(config, input_size).multiply_adds


def _network_config(
    genotype: Genotype, num_classes: int, filter_multiplier: int, options: Mapping[str, Any]
) -> NetworkConfig:
    # Imported here: the samplers above need no torch.
    from autodeeplab.network import NetworkConfig

    return NetworkConfig(
        genotype=genotype, num_classes=num_classes, filter_multiplier=filter_multiplier, **options
    )


def complexity_of(
    genotype: Genotype,
    *,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    num_classes: int = 19,
    filter_multiplier: int = 20,
    network_options: Mapping[str, Any] | None = None,
    multiply_adds: bool = True,
) -> tuple[int, int | None]:
    """``(params, multiply_adds)`` of the :class:`~autodeeplab.network.AutoDeepLab` built from
    ``genotype`` (Multi-Adds at ``input_size``; ``None`` with ``multiply_adds=False``).

    Counted on meta-device twins and cached per network config, so repeated queries are free.
    ``network_options`` are further :class:`~autodeeplab.network.NetworkConfig` fields
    (``aspp_channels``, ``decoder_channels``, ``low_level_reduced``, ``in_channels``, ...).
    """
    options = _check_network_options(network_options)
    config = _network_config(genotype, num_classes, filter_multiplier, options)
    params = _params(config)
    if not multiply_adds:
        return params, None
    return params, _multiply_adds(config, _check_input_size(input_size))


def _check_network_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    from autodeeplab.network import NetworkConfig

    options = dict(options or {})
    allowed = {f.name for f in fields(NetworkConfig)} - {
        "genotype",
        "num_classes",
        "filter_multiplier",
    }
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"unknown network options {sorted(unknown)}; valid options: {', '.join(sorted(allowed))}"
        )
    if options.get("aspp_rates") is not None:
        options["aspp_rates"] = tuple(options["aspp_rates"])
    return options


def _check_input_size(input_size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (H, W), got {input_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"input_size must have positive sides, got {input_size!r}")
    return h, w


def _check_range(name: str, bounds: Any) -> tuple[float | None, float | None] | None:
    if bounds is None:
        return None
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a (min, max) pair (None for open), got {bounds!r}"
        ) from None
    for v in (lo, hi):
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
        ):
            raise ValueError(f"{name} bounds must be non-negative numbers or None, got {bounds!r}")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{name} range is empty: min {lo:.6g} > max {hi:.6g}")
    return lo, hi


def _within(value: int, bounds: tuple[float | None, float | None] | None) -> bool:
    if bounds is None:
        return True
    lo, hi = bounds
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _fmt_range(bounds: tuple[float | None, float | None]) -> str:
    lo, hi = bounds
    return f"[{'-inf' if lo is None else f'{lo:.6g}'}, {'inf' if hi is None else f'{hi:.6g}'}]"


# ----------------------------------------------------------------------------- sampling


def sample_genotypes(
    n: int,
    seed: int,
    *,
    layers: int = space.DEFAULT_LAYERS,
    blocks: int = space.DEFAULT_BLOCKS,
    params: tuple[float | None, float | None] | None = None,
    multiply_adds: tuple[float | None, float | None] | None = None,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    num_classes: int = 19,
    filter_multiplier: int = 20,
    largest_of: int = 1,
    largest_by: str = "params",
    max_tries: int = DEFAULT_MAX_TRIES,
    network_options: Mapping[str, Any] | None = None,
    multi_path: bool = False,
    path: Sequence[int] | None = None,
) -> list[Genotype]:
    """``n`` architectures drawn uniformly at random, reproducibly from ``seed``;
    ``multi_path``: multi-path topologies (:func:`random_topology`) instead of paths;
    ``path``: random cells on this one path of ``layers`` layers.

    ``params`` / ``multiply_adds``: optional ``(min, max)`` ranges (inclusive, ``None`` for an
    open end) for the network built with ``num_classes``, ``filter_multiplier`` and
    ``network_options``, Multi-Adds at ``input_size`` ``(H, W)``. Draws outside the ranges are
    rejected, so each accepted draw is uniform over the architectures within them; after
    ``max_tries`` consecutive rejections :class:`SampleError` says what the draws gave.

    ``largest_of=N``: each returned genotype is the largest, by ``largest_by`` (``"params"``,
    the default, or ``"multiply_adds"``), of ``N`` accepted draws (the first one on a tie): the
    "bigger random network" control. The draws are made in order with :func:`random_genotype`
    on ``numpy.random.default_rng(seed)``, so the result can be reproduced by hand.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    layers = _check_positive("layers", layers)
    blocks = _check_positive("blocks", blocks)
    largest_of = _check_positive("largest_of", largest_of)
    max_tries = _check_positive("max_tries", max_tries)
    num_classes = _check_positive("num_classes", num_classes)
    filter_multiplier = _check_positive("filter_multiplier", filter_multiplier)
    if path is not None:
        path = space.validate_path(path, layers)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if largest_by not in LARGEST_BY:
        raise ValueError(f"largest_by must be one of {', '.join(LARGEST_BY)}, got {largest_by!r}")
    params = _check_range("params", params)
    multiply_adds = _check_range("multiply_adds", multiply_adds)
    options = _check_network_options(network_options)
    need_macs = multiply_adds is not None or (largest_of > 1 and largest_by == "multiply_adds")
    size = _check_input_size(input_size)
    if need_macs:
        deepest = space.LEVEL_STRIDES[min(layers, space.NUM_LEVELS - 1)]
        if min(size) <= deepest:
            raise ValueError(
                f"input_size {size[0]}x{size[1]} is too small for Multi-Adds of {layers}-layer "
                f"paths: paths reach stride {deepest}, so both sides must exceed {deepest}"
            )
    need_counts = params is not None or need_macs or largest_of > 1

    def counts(g: Genotype) -> _Counts:
        config = _network_config(g, num_classes, filter_multiplier, options)
        p = _params(config)
        # Multi-Adds only when needed, and only for draws whose parameters already pass.
        m = _multiply_adds(config, size) if need_macs and _within(p, params) else None
        return _Counts(p, m)

    rng = np.random.default_rng(int(seed))

    def accepted_draw() -> tuple[Genotype, _Counts | None]:
        seen: list[_Counts] = []
        for _ in range(max_tries):
            g = random_genotype(rng, layers=layers, blocks=blocks, multi_path=multi_path, path=path)
            if not need_counts:
                return g, None
            c = counts(g)
            if _within(c.params, params) and (
                multiply_adds is None
                or (c.multiply_adds is not None and _within(c.multiply_adds, multiply_adds))
            ):
                return g, c
            seen.append(c)
        raise SampleError(_no_match_message(max_tries, seen, params, multiply_adds, size))

    def size_of(c: _Counts) -> int:
        # Accepted draws of a largest_by="multiply_adds" run always carry their Multi-Adds.
        value = c.params if largest_by == "params" else c.multiply_adds
        assert value is not None
        return value

    out: list[Genotype] = []
    for _ in range(n):
        best, best_c = accepted_draw()
        for _ in range(largest_of - 1):
            g, c = accepted_draw()
            assert c is not None and best_c is not None
            if size_of(c) > size_of(best_c):
                best, best_c = g, c
        out.append(best)
    return out


def _no_match_message(
    tries: int,
    seen: list[_Counts],
    params: tuple[float | None, float | None] | None,
    multiply_adds: tuple[float | None, float | None] | None,
    size: tuple[int, int],
) -> str:
    parts = [f"no architecture within the constraints after {tries} draws"]
    if params is not None:
        ps = [c.params for c in seen]
        parts.append(
            f"params wanted in {_fmt_range(params)}, drawn {min(ps) / 1e6:.3f}M..{max(ps) / 1e6:.3f}M"
        )
    if multiply_adds is not None:
        ms = [c.multiply_adds for c in seen if c.multiply_adds is not None]
        got = f"{min(ms) / 1e9:.3f}B..{max(ms) / 1e9:.3f}B" if ms else "none passed the params"
        parts.append(
            f"Multi-Adds at {size[0]}x{size[1]} wanted in {_fmt_range(multiply_adds)}, drawn {got}"
        )
    parts.append("widen the ranges or raise max_tries")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- output folders

SUMMARY_FILE = "summary.jsonl"
SETTINGS_FILE = "settings.json"


def random_names(n: int) -> list[str]:
    """File stems of ``n`` random architectures: ``random-000``, ``random-001``, ..."""
    width = max(3, len(str(n - 1)))
    return [f"random-{i:0{width}d}" for i in range(n)]


def describe(
    named: Mapping[str, Genotype],
    *,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    num_classes: int = 19,
    filter_multiplier: int = 20,
    network_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One summary record per architecture: name, parameters, Multi-Adds, strides, genotype."""
    size = _check_input_size(input_size)
    records = []
    for name, g in named.items():
        params, macs = complexity_of(
            g,
            input_size=size,
            num_classes=num_classes,
            filter_multiplier=filter_multiplier,
            network_options=network_options,
        )
        records.append(
            {
                "name": name,
                "params": params,
                "multiply_adds": macs,
                "input_size": list(size),
                "num_classes": num_classes,
                "filter_multiplier": filter_multiplier,
                "output_stride": g.output_stride,
                "max_stride": g.max_stride,
                "genotype": str(g),
            }
        )
    return records


def write_genotypes(
    out: str | Path,
    named: Mapping[str, Genotype],
    records: list[dict[str, Any]],
    settings: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``<name>.json`` per genotype, ``summary.jsonl`` (``records``) and ``settings.json``
    into ``out``; refuses to replace existing files unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    files = [out / f"{name}.json" for name in named]
    targets = [*files, out / SUMMARY_FILE, out / SETTINGS_FILE]
    clash = [str(p) for p in targets if p.exists()]
    if clash and not overwrite:
        shown = ", ".join(clash[:3]) + (f", ... ({len(clash)} in all)" if len(clash) > 3 else "")
        raise ValueError(
            f"{shown} already exist; choose another output folder or allow overwriting "
            "(--overwrite)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for file, g in zip(files, named.values(), strict=True):
        g.save(file)
    lines = [json.dumps({**r, "file": f.name}) for r, f in zip(records, files, strict=True)]
    (out / SUMMARY_FILE).write_text("".join(line + "\n" for line in lines))
    (out / SETTINGS_FILE).write_text(json.dumps(dict(settings), indent=2) + "\n")
    return files


def format_table(records: list[dict[str, Any]]) -> str:
    """A fixed-width table of :func:`describe` records."""
    if not records:
        return "(no architectures)"
    h, w = records[0]["input_size"]
    width = max(4, *(len(r["name"]) for r in records))
    head = f"{'name':{width}s}  {'params':>9s}  {f'Multi-Adds {h}x{w}':>20s}  {'OS':>3s}  path"
    rows = [head, "-" * len(head)]
    for r in records:
        path = r["genotype"].split("|")[0].removeprefix("path=")
        rows.append(
            f"{r['name']:{width}s}  {r['params'] / 1e6:8.2f}M  "
            f"{r['multiply_adds'] / 1e9:19.2f}B  {r['output_stride']:3d}  {path}"
        )
    return "\n".join(rows)
