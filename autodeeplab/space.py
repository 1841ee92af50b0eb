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
