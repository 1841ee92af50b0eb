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
from dataclasses import dataclass
from functools import cache

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
