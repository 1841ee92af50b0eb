"""The Auto-DeepLab search space as data: operations, edge numbering and trellis moves.

Everything else imports its conventions from here.

Cell level
    Inputs of a cell are indexed ``0 = H^{l-2}``, ``1 = H^{l-1}``, ``2 + j = block j``.
    Block ``i`` has ``i + 2`` incoming edges; edges are numbered block by block and, within a
    block, by input index. With ``B = 5`` blocks there are 20 edges.

Network level
    Levels ``0..3`` sit at downsample rates 4, 8, 16, 32. A move from layer ``l - 1`` to layer
    ``l`` is indexed ``m = 0`` (to the finer level ``s - 1``), ``1`` (same level) or ``2`` (to the
    coarser level ``s + 1``). ``beta[l, s, m]`` is the logit of the edge from node
    ``(l - 1, s)`` to node ``(l, s + m - 1)``; layer 0 reads the stem, which sits at level 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "atr_conv_3x3",
    "atr_conv_5x5",
)
"""Canonical operation order: the column order of the alpha matrix."""

NONE_INDEX = PRIMITIVES.index("none")
NUM_OPS = len(PRIMITIVES)

PSEUDO_3D_OPS: tuple[str, ...] = ("p3d_conv_3x3x1", "p3d_conv_3x1x3", "p3d_conv_1x3x3")
"""DiNTS' pseudo-3D convolutions (volumes only): ReLU, a ``k x k`` convolution in one plane of
the volume (kernel 1 along the remaining axis), a ``k``-tap convolution along that axis, BN. The
name gives the first kernel over the axes ``(D, H, W)``."""

BUILTIN_OPS: tuple[str, ...] = (*PRIMITIVES, "conv_3x3", *PSEUDO_3D_OPS)
"""Every operation the library ships: the paper's eight, then a dense ``3x3`` convolution
(``conv_3x3``: ReLU, conv, BN; DiNTS' ``3x3x3`` in volumes) and the pseudo-3D convolutions.
Only :data:`PRIMITIVES` are searched by default."""

SPATIAL_DIMS: tuple[int, ...] = (2, 3)
"""Supported spatial dimensionalities: images ``(N, C, H, W)`` and volumes ``(N, C, D, H, W)``."""

# Dimensionalities each operation exists for; ops.register_op records those of added ops.
_OP_DIMS: dict[str, tuple[int, ...]] = {
    **dict.fromkeys((*PRIMITIVES, "conv_3x3"), SPATIAL_DIMS),
    **dict.fromkeys(PSEUDO_3D_OPS, (3,)),
}

NUM_LEVELS = 4
STEM_LEVEL = 0
LEVEL_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
"""Downsample rate of each level."""

MOVE_FINER, MOVE_SAME, MOVE_COARSER = 0, 1, 2
MOVE_NAMES: tuple[str, ...] = ("finer", "same", "coarser")
NUM_MOVES = 3

DEFAULT_BLOCKS = 5
DEFAULT_LAYERS = 12

RELEASED_PATH: tuple[int, ...] = (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
RELEASED_CELL: tuple[tuple[tuple[int, str], tuple[int, str]], ...] = (
    ((0, "atr_conv_5x5"), (1, "sep_conv_3x3")),
    ((0, "sep_conv_3x3"), (1, "atr_conv_3x3")),
    ((3, "sep_conv_3x3"), (0, "sep_conv_3x3")),
    ((4, "sep_conv_5x5"), (2, "sep_conv_5x5")),
    ((3, "sep_conv_5x5"), (5, "atr_conv_5x5")),
)
"""The architecture released by the authors (found on Cityscapes)."""


_ADDED_OPS: list[str] = []  # names added to the operation registry (autodeeplab.ops)


def known_ops() -> tuple[str, ...]:
    """Names of every registered operation: :data:`BUILTIN_OPS`, then those added with
    :func:`autodeeplab.ops.register_op` (the registry keeps their definitions; this module only
    their names and dimensionalities, so that genotypes and search spaces can be checked without
    torch)."""
    return (*BUILTIN_OPS, *_ADDED_OPS)


def add_op_name(name: str, spatial_dims: tuple[int, ...] = (2,)) -> None:
    """Record an operation name added to the registry and the spatial dimensionalities it
    exists for (called by :func:`ops.register_op`)."""
    if name not in known_ops():
        _ADDED_OPS.append(name)
        _OP_DIMS[name] = tuple(spatial_dims)


def remove_op_name(name: str) -> None:
    if name in _ADDED_OPS:
        _ADDED_OPS.remove(name)
        del _OP_DIMS[name]


def op_spatial_dims(name: str) -> tuple[int, ...]:
    """Spatial dimensionalities operation ``name`` exists for (``(2, 3)``, ``(2,)`` or ``(3,)``)."""
    if name not in _OP_DIMS:
        raise ValueError(
            f"unknown operation {name!r}; registered operations: {', '.join(known_ops())}"
        )
    return _OP_DIMS[name]


def check_spatial_dims(spatial_dims: int) -> int:
    """``spatial_dims`` if it is one of :data:`SPATIAL_DIMS`, else ``ValueError``."""
    if (
        isinstance(spatial_dims, bool)
        or not isinstance(spatial_dims, int)
        or spatial_dims not in SPATIAL_DIMS
    ):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
    return spatial_dims


def op_index(name: str) -> int:
    """Column of ``name`` in the alpha matrix; raises ``ValueError`` listing valid names."""
    try:
        return PRIMITIVES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown operation {name!r}; valid operations are: {', '.join(PRIMITIVES)}"
        ) from None


# ----------------------------------------------------------------------------- cell edges


def num_edges(blocks: int = DEFAULT_BLOCKS) -> int:
    """Number of edges of a cell with ``blocks`` blocks: ``2 + 3 + ... + (blocks + 1)``."""
    _check_blocks(blocks)
    return blocks * (blocks + 3) // 2


def block_edge_offset(block: int) -> int:
    """Index of the first edge entering ``block``."""
    return block * (block + 3) // 2


def edge_index(block: int, input_index: int) -> int:
    """Edge number of the edge from cell input ``input_index`` into ``block``."""
    if not 0 <= input_index < block + 2:
        raise ValueError(
            f"block {block} reads inputs 0..{block + 1}, got input index {input_index}"
        )
    return block_edge_offset(block) + input_index


@cache
def cell_edges(blocks: int = DEFAULT_BLOCKS) -> tuple[tuple[int, int], ...]:
    """``(block, input_index)`` of every edge, in edge-number order."""
    _check_blocks(blocks)
    return tuple((b, j) for b in range(blocks) for j in range(b + 2))


@cache
def edges_from_input(input_index: int, blocks: int = DEFAULT_BLOCKS) -> tuple[int, ...]:
    """Edge numbers leaving cell input ``input_index`` (a cell input or a block output)."""
    return tuple(edge_index(b, input_index) for b in range(max(0, input_index - 1), blocks))


def _check_blocks(blocks: int) -> None:
    if blocks < 1:
        raise ValueError(f"a cell needs at least one block, got blocks={blocks}")


# ----------------------------------------------------------------------------- trellis


def check_level(level: int) -> None:
    if not 0 <= level < NUM_LEVELS:
        raise ValueError(f"level must be in 0..{NUM_LEVELS - 1}, got {level}")


def move_target(level: int, move: int) -> int:
    """Level reached from ``level`` by ``move`` (0 finer, 1 same, 2 coarser)."""
    return level + move - 1


@cache
def valid_moves(level: int) -> tuple[int, ...]:
    """Moves that stay inside the trellis from ``level``."""
    check_level(level)
    return tuple(m for m in range(NUM_MOVES) if 0 <= move_target(level, m) < NUM_LEVELS)


@cache
def valid_move_mask() -> tuple[tuple[bool, ...], ...]:
    """``mask[s][m]`` is True when move ``m`` is valid from level ``s``."""
    return tuple(tuple(m in valid_moves(s) for m in range(NUM_MOVES)) for s in range(NUM_LEVELS))


def move_between(src_level: int, dst_level: int) -> int:
    """Move index for ``src_level -> dst_level``; raises if the levels are not adjacent."""
    check_level(src_level)
    check_level(dst_level)
    move = dst_level - src_level + 1
    if move not in range(NUM_MOVES):
        raise ValueError(
            f"a move changes the level by at most one; {src_level} -> {dst_level} is not allowed"
        )
    return move


def levels_at_layer(layer: int) -> tuple[int, ...]:
    """Levels that a path starting from the stem can reach at ``layer`` (0-based)."""
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return tuple(range(min(layer + 2, NUM_LEVELS)))


def count_paths(layers: int = DEFAULT_LAYERS, *, reaching_level: int | None = None) -> int:
    """Number of network-level paths of ``layers`` layers from the stem (level 0).

    With ``reaching_level`` only paths that visit that level at least once are counted.
    """
    # counts[s][reached]: number of partial paths ending at level s
    counts = {(STEM_LEVEL, reaching_level == STEM_LEVEL): 1}
    for _ in range(layers):
        nxt: dict[tuple[int, bool], int] = {}
        for (s, reached), c in counts.items():
            for m in valid_moves(s):
                t = move_target(s, m)
                key = (t, reached or t == reaching_level)
                nxt[key] = nxt.get(key, 0) + c
        counts = nxt
    if reaching_level is None:
        return sum(counts.values())
    return sum(c for (_, reached), c in counts.items() if reached)


# ----------------------------------------------------------------------------- paths


def path_string(path: Sequence[int]) -> str:
    """A single path's levels joined by ``-``, as genotype strings write it (``0-0-1-2``)."""
    return "-".join(str(level) for level in path)


def validate_path(path: Any, layers: int | None = None) -> tuple[int, ...]:
    """``path`` as a tuple of levels, one per layer, starting from the stem (level 0) and moving
    by at most one level per layer, and ``layers`` long when given; raises ``ValueError``
    saying what is wrong."""
    if isinstance(path, (str, bytes)) or not hasattr(path, "__iter__"):
        raise ValueError(f"path must be a sequence of levels, got {path!r}")
    levels = tuple(path)
    if not levels:
        raise ValueError("path must have at least one layer")
    for layer, level in enumerate(levels):
        if isinstance(level, bool) or not isinstance(level, int):
            raise ValueError(f"path[{layer}] must be an integer level, got {level!r}")
        if not 0 <= level < NUM_LEVELS:
            raise ValueError(
                f"path[{layer}] = {level} is out of range; levels are 0..{NUM_LEVELS - 1} "
                f"(strides {LEVEL_STRIDES})"
            )
    prev = STEM_LEVEL
    for layer, level in enumerate(levels):
        if abs(level - prev) > 1:
            where = "the stem (level 0)" if layer == 0 else f"path[{layer - 1}] = {prev}"
            raise ValueError(
                f"path[{layer}] = {level} jumps more than one level from {where}; "
                "consecutive layers may move by at most one level"
            )
        prev = level
    if layers is not None and len(levels) != layers:
        raise ValueError(f"the path {path_string(levels)} has {len(levels)} layers, not {layers}")
    return levels


# ----------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class TrellisNode:
    """Node ``(layer, level)`` of the supernet and the tensors it reads.

    ``sources``: levels at ``layer - 1`` that feed it (layer 0 reads the stem, at level 0).
    ``prev_prev``: level of the tensor used as ``sH^{l-2}``: the same level if it exists at
    ``layer - 2``, else the existing tensor of nearest spatial size; the stem's 1/2 output counts
    as level -1 and its 1/4 output as level 0 of layer -1.
    """

    layer: int
    level: int
    sources: tuple[int, ...]
    prev_prev: int


@dataclass(frozen=True)
class SearchSpace:
    """The search space one supernet, decoder or figure works in: ``layers`` cell layers over the
    :data:`NUM_LEVELS`-level trellis, cells of ``blocks`` blocks, and the candidate operations
    ``ops`` in alpha-column order (names of the operation registry, see
    :mod:`autodeeplab.ops`; default :data:`PRIMITIVES`), on images (``spatial_dims=2``, the
    default) or volumes (``spatial_dims=3``). Every op must exist for ``spatial_dims``: the
    default eight do for both; the pseudo-3D ops (:data:`PSEUDO_3D_OPS`) are volume-only and
    opt-in, e.g. ``ops=(*PRIMITIVES, *PSEUDO_3D_OPS)``.

    The trellis (which nodes exist, what each reads, which beta entries are transitions of the
    supernet) is computed once here; every other module asks this value.
    """

    layers: int = DEFAULT_LAYERS
    blocks: int = DEFAULT_BLOCKS
    ops: tuple[str, ...] = PRIMITIVES
    spatial_dims: int = 2
    path: tuple[int, ...] | None = None
    """A fixed network-level path, one level per layer (``None``, the default: the whole
    trellis). With a path the trellis keeps only the path's nodes, each reading the path's
    previous node as ``H^{l-1}`` and the node two layers back as ``H^{l-2}``, as the network
    retrained on that path does: a search in it is a search of the cell alone."""
    _nodes: tuple[tuple[TrellisNode, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("layers", "blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        ops = tuple(self.ops)
        if not ops or len(set(ops)) != len(ops) or not all(isinstance(o, str) for o in ops):
            raise ValueError(f"ops must be distinct operation names, got {self.ops!r}")
        unknown = [o for o in ops if o not in known_ops()]
        if unknown:
            raise ValueError(
                f"unknown operations {unknown}; registered operations: {', '.join(known_ops())}"
            )
        check_spatial_dims(self.spatial_dims)
        wrong_dims = [o for o in ops if self.spatial_dims not in op_spatial_dims(o)]
        if wrong_dims:
            raise ValueError(
                f"operations {wrong_dims} do not exist for spatial_dims={self.spatial_dims}; "
                "operations for it: "
                + ", ".join(o for o in known_ops() if self.spatial_dims in op_spatial_dims(o))
            )
        object.__setattr__(self, "ops", ops)
        if self.path is None:
            nodes = tuple(
                tuple(
                    TrellisNode(
                        layer, level, _source_levels(layer, level), _prev_prev_level(layer, level)
                    )
                    for level in levels_at_layer(layer)
                )
                for layer in range(self.layers)
            )
        else:
            path = validate_path(self.path, self.layers)
            object.__setattr__(self, "path", path)
            nodes = tuple(
                (
                    TrellisNode(
                        layer, path[layer], _path_sources(path, layer), _path_prev_prev(path, layer)
                    ),
                )
                for layer in range(self.layers)
            )
        object.__setattr__(self, "_nodes", nodes)

    # ------------------------------------------------------------------ cell
    @property
    def num_edges(self) -> int:
        return num_edges(self.blocks)

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    @property
    def num_levels(self) -> int:
        return NUM_LEVELS

    def op_index(self, name: str) -> int:
        """Column of ``name`` in the alpha matrix; raises ``ValueError`` listing valid names."""
        if name not in self.ops:
            raise ValueError(
                f"unknown operation {name!r}; valid operations are: {', '.join(self.ops)}"
            )
        return self.ops.index(name)

    # ------------------------------------------------------------------ trellis
    @staticmethod
    def valid_moves(level: int) -> tuple[int, ...]:
        """Moves that stay inside the trellis from ``level``."""
        return valid_moves(level)

    def nodes(self, layer: int) -> tuple[TrellisNode, ...]:
        """Nodes of ``layer``, by increasing level."""
        if not 0 <= layer < self.layers:
            raise ValueError(f"layer must be in 0..{self.layers - 1}, got {layer}")
        return self._nodes[layer]

    def all_nodes(self) -> tuple[TrellisNode, ...]:
        """Every node, layer by layer, by increasing level."""
        return tuple(n for layer in self._nodes for n in layer)

    def node(self, layer: int, level: int) -> TrellisNode:
        for n in self.nodes(layer):
            if n.level == level:
                return n
        raise ValueError(
            f"layer {layer} has no node at level {level}; its levels are "
            f"{[n.level for n in self.nodes(layer)]}"
        )

    def levels_at(self, layer: int) -> tuple[int, ...]:
        """Levels of the nodes of ``layer``."""
        return tuple(n.level for n in self.nodes(layer))

    def transitions(self) -> tuple[tuple[int, int, int], ...]:
        """``(layer, src_level, dst_level)`` of every trellis edge into every node (the beta
        entries the supernet uses), layer by layer."""
        return tuple(
            (n.layer, src, n.level) for layers in self._nodes for n in layers for src in n.sources
        )

    def used_transition_mask(self) -> tuple[tuple[tuple[bool, ...], ...], ...]:
        """``mask[l][s][m]`` (shape ``(L, 4, 3)``): True where ``beta[l, s, m]`` is a trellis
        edge; all other entries carry no probability."""
        used = {(layer, src, move_between(src, dst)) for layer, src, dst in self.transitions()}
        return tuple(
            tuple(tuple((layer, s, m) in used for m in range(NUM_MOVES)) for s in range(NUM_LEVELS))
            for layer in range(self.layers)
        )


def _path_sources(path: tuple[int, ...], layer: int) -> tuple[int, ...]:
    return (STEM_LEVEL,) if layer == 0 else (path[layer - 1],)


def _path_prev_prev(path: tuple[int, ...], layer: int) -> int:
    if layer < 2:
        return _prev_prev_level(layer, path[layer])
    return path[layer - 2]


def _source_levels(layer: int, level: int) -> tuple[int, ...]:
    if layer == 0:
        return (STEM_LEVEL,)
    existing = levels_at_layer(layer - 1)
    return tuple(s for s in (level - 1, level, level + 1) if s in existing)


def _prev_prev_level(layer: int, level: int) -> int:
    if layer == 0:
        return -1
    if layer == 1:
        return STEM_LEVEL
    return min(level, max(levels_at_layer(layer - 2)))


# ----------------------------------------------------------------------------- hand-designed paths


@dataclass(frozen=True)
class PathFamily:
    """A hand-designed network-level path, defined for any number of layers.

    The path is ``ramp`` followed by the levels of ``segments``, the remaining layers shared out
    as evenly as possible over the segments, the earlier segments taking one more layer when
    the layers do not divide evenly (for 12 layers this reproduces the paper's examples).
    """

    name: str
    description: str
    segments: tuple[int, ...]
    ramp: tuple[int, ...] = ()

    @property
    def min_layers(self) -> int:
        """Fewest layers that hold the ramp and one layer per segment."""
        return len(self.ramp) + len(self.segments)

    def path(self, layers: int) -> tuple[int, ...]:
        if layers < self.min_layers:
            raise ValueError(
                f"path family {self.name!r} needs at least {self.min_layers} layers, got {layers}"
            )
        base, extra = divmod(layers - len(self.ramp), len(self.segments))
        stretched = (
            level
            for i, level in enumerate(self.segments)
            for _ in range(base + (1 if i < extra else 0))
        )
        return (*self.ramp, *stretched)


PATH_FAMILIES: dict[str, PathFamily] = {
    f.name: f
    for f in (
        PathFamily("constant-4", "every cell at stride 4", segments=(0,)),
        PathFamily("constant-8", "every cell at stride 8", segments=(1,)),
        PathFamily("constant-16", "one cell at stride 8, then stride 16", (2,), ramp=(1,)),
        PathFamily("constant-32", "strides 8 and 16, then stride 32", (3,), ramp=(1, 2)),
        PathFamily(
            "deeplabv3", "DeepLabv3-like: two cells at 4, one at 8, then 16", (2,), ramp=(0, 0, 1)
        ),
        PathFamily("conv-deconv", "Conv-Deconv: down to 32, back up to 4", (0, 1, 2, 3, 2, 1, 0)),
        PathFamily(
            "stacked-hourglass",
            "Stacked Hourglass: down to 32 and back up, twice",
            (0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1),
        ),
    )
}
"""Hand-designed path families by name (levels: 0..3 = strides 4..32)."""

HAND_DESIGNED_MIN_LAYERS = max(f.min_layers for f in PATH_FAMILIES.values())
"""Fewest layers for which every family in :data:`PATH_FAMILIES` exists (12)."""


def hand_designed_paths(
    layers: int = DEFAULT_LAYERS, *, families: Sequence[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """Paths of the hand-designed families for ``layers`` layers, by family name.

    ``families=None`` gives every family that fits in ``layers`` (all of them from
    :data:`HAND_DESIGNED_MIN_LAYERS` = 12 layers on; below that the longer patterns, e.g. the
    stacked hourglass, are left out). Naming a family that needs more layers raises
    ``ValueError``.
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    if families is None:
        return {n: f.path(layers) for n, f in PATH_FAMILIES.items() if f.min_layers <= layers}
    unknown = [n for n in families if n not in PATH_FAMILIES]
    if unknown:
        raise ValueError(
            f"unknown path families {unknown}; valid families: {', '.join(PATH_FAMILIES)}"
        )
    return {n: PATH_FAMILIES[n].path(layers) for n in families}


def parse_path(spec: Any, layers: int) -> tuple[int, ...]:
    """The ``layers``-layer path that ``spec`` names: a sequence of levels (``[0, 0, 1, 2]``),
    the same written as genotype strings write it (``"0-0-1-2"``), or the name of a
    hand-designed family (``"deeplabv3"``, see :data:`PATH_FAMILIES`); raises ``ValueError``
    saying what is wrong."""
    if isinstance(spec, str):
        if spec in PATH_FAMILIES:
            return PATH_FAMILIES[spec].path(layers)
        parts = spec.split("-")
        if not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                f"{spec!r} is neither a path of levels joined by '-' (e.g. "
                f"{'-'.join(['0'] * layers)}) nor a hand-designed family "
                f"({', '.join(PATH_FAMILIES)})"
            )
        spec = [int(p) for p in parts]
    return validate_path(spec, layers)
