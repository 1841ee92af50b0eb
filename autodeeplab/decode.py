"""Decoding a discrete architecture from architecture logits: plain numpy, no torch.

* :func:`decode_cell` keeps, for every block, the two incoming edges with the strongest
  non-``none`` operation and, on each, the argmax operation excluding ``none``.
* :func:`decode_path` runs Viterbi over the per-node normalised betas (softmax over each node's
  valid outgoing moves) and returns the maximum-probability path from the stem (the paper's
  rule), or with ``rule="ratio"`` the path whose probability most exceeds its probability under
  uniform moves (:func:`move_log_priors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autodeeplab import space
from autodeeplab.genotype import Block, Genotype


def _as_array(x: object, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def blocks_from_edges(edges: int) -> int:
    """Number of blocks ``B`` with ``B (B + 3) / 2 == edges``."""
    for b in range(1, edges + 1):
        if space.num_edges(b) == edges:
            return b
        if space.num_edges(b) > edges:
            break
    raise ValueError(f"{edges} edges does not match any number of blocks (2+3+...+(B+1) edges)")


# ---------------------------------------------------------------------------- cell


def cell_weights(alpha_logits: np.ndarray, num_ops: int = space.NUM_OPS) -> np.ndarray:
    """Softmax over operations of every edge: ``(E, O)``."""
    alpha = _as_array(alpha_logits, "alpha logits", 2)
    if alpha.shape[1] != num_ops:
        raise ValueError(f"alpha logits must have {num_ops} columns, got {alpha.shape}")
    return softmax(alpha, axis=1)


def decode_cell(
    alpha_logits: np.ndarray, op_names: Sequence[str] = space.PRIMITIVES
) -> tuple[Block, ...]:
    """Decode a cell from alpha logits of shape ``(E, O)`` (``E = 20`` for five blocks) whose
    columns are the operations ``op_names`` (default the paper's eight)."""
    return decode_cell_weights(cell_weights(alpha_logits, len(op_names)), op_names)


def decode_cell_weights(
    weights: np.ndarray, op_names: Sequence[str] = space.PRIMITIVES
) -> tuple[Block, ...]:
    """Decode a cell from op mixing weights ``(E, O)`` (any non-negative weights, e.g. the
    softmax of the alphas, or weights with decided edges set one-hot and removed edges zeroed):
    per block the two incoming edges with the largest non-``none`` weight, on each its largest
    non-``none`` operation; ties go to the lower index."""
    weights = _as_array(weights, "op weights", 2)
    if weights.shape[1] != len(op_names):
        raise ValueError(f"op weights must have {len(op_names)} columns, got {weights.shape}")
    blocks = blocks_from_edges(weights.shape[0])
    ops = np.array([i for i, name in enumerate(op_names) if name != "none"])
    if ops.size == 0:
        raise ValueError("decoding needs at least one operation other than 'none'")
    cell = []
    for b in range(blocks):
        start = space.block_edge_offset(b)
        w = weights[start : start + b + 2][:, ops]  # (inputs, ops without `none`)
        best_op = ops[np.argmax(w, axis=1)]
        strength = w.max(axis=1)
        # Stable sort: ties go to the lower input index.
        keep = np.argsort(-strength, kind="stable")[:2]
        cell.append(tuple((int(j), op_names[best_op[j]]) for j in keep))
    return Genotype(cell=tuple(cell), path=(0,)).cell


# ---------------------------------------------------------------------------- network


def transition_log_probs(beta_logits: np.ndarray) -> np.ndarray:
    """Log transition probabilities ``(L, 4, 3)``; invalid moves are ``-inf``.

    Each node's logits are normalised by a softmax over its valid outgoing moves only, so values
    stored at invalid entries have no influence at all.
    """
    beta = _as_array(beta_logits, "beta logits", 3)
    if beta.shape[1:] != (space.NUM_LEVELS, space.NUM_MOVES):
        raise ValueError(
            f"beta logits must have shape (L, {space.NUM_LEVELS}, {space.NUM_MOVES}), got {beta.shape}"
        )
    mask = np.array(space.valid_move_mask())  # (4, 3)
    masked = np.where(mask, beta, -np.inf)
    top = masked.max(axis=2, keepdims=True)
    lse = top + np.log(np.exp(masked - top).sum(axis=2, keepdims=True))
    return np.where(mask, masked - lse, -np.inf)


def transition_probs(beta_logits: np.ndarray) -> np.ndarray:
    """Transition probabilities ``(L, 4, 3)``; each node's valid moves sum to one, invalid are 0."""
    return np.exp(transition_log_probs(beta_logits))


def path_log_prob(beta_logits: np.ndarray, path: tuple[int, ...] | list[int]) -> float:
    """Log probability of ``path`` (one level per layer, starting from the stem at level 0)."""
    logp = transition_log_probs(beta_logits)
    if len(path) != logp.shape[0]:
        raise ValueError(f"path has {len(path)} layers, betas have {logp.shape[0]}")
    total, prev = 0.0, space.STEM_LEVEL
    for layer, level in enumerate(path):
        total += float(logp[layer, prev, space.move_between(prev, int(level))])
        prev = int(level)
    return total


PATH_RULES: tuple[str, ...] = ("probability", "ratio")
"""How :func:`decode_path` scores a path: ``probability``, its probability under the betas (the
paper); ``ratio``, that probability over its probability under uniform moves."""


def move_log_priors() -> np.ndarray:
    """Log probability of every move under uniform moves ``(4, 3)``: ``-log k`` for a node with
    ``k`` valid moves (2 at the finest and coarsest levels, 3 between), ``-inf`` for invalid
    moves. Betas that learned nothing give every path the sum of these along it, so the
    maximum-probability path of untrained betas is the one that keeps to the levels with the
    fewest moves."""
    mask = np.array(space.valid_move_mask())
    return np.where(mask, -np.log(mask.sum(axis=1, keepdims=True)), -np.inf)


def path_log_ratio(beta_logits: np.ndarray, path: tuple[int, ...] | list[int]) -> float:
    """``log P(path) - log P0(path)``: the log probability of ``path`` under the betas minus its
    log probability under uniform moves, i.e. how far the search moved the betas towards it (0
    for betas that learned nothing)."""
    uniform = np.zeros_like(_as_array(beta_logits, "beta logits", 3))
    return path_log_prob(beta_logits, path) - path_log_prob(uniform, path)


def check_path_rule(rule: str) -> None:
    """``ValueError`` naming the valid rules unless ``rule`` is one of :data:`PATH_RULES`."""
    if rule not in PATH_RULES:
        raise ValueError(f"unknown path rule {rule!r}; valid: {', '.join(PATH_RULES)}")


def decode_path(beta_logits: np.ndarray, rule: str = "probability") -> tuple[int, ...]:
    """The network path (Viterbi) for beta logits of shape ``(L, 4, 3)`` that maximises its
    probability (``rule="probability"``, the paper) or its probability over its probability
    under uniform moves (``rule="ratio"``: the sum along the path of ``log p(move) + log k``,
    ``k`` the number of valid moves of the node; every path scores 0 for untrained betas).
    Ties go to the lower final level, then to the move from the coarser source."""
    check_path_rule(rule)
    logp = transition_log_probs(beta_logits)
    if rule == "ratio":
        logp = logp - np.where(np.isfinite(logp), move_log_priors(), 0.0)
    layers = logp.shape[0]
    if layers == 0:
        raise ValueError("beta logits have zero layers")
    score = np.full(space.NUM_LEVELS, -np.inf)
    score[space.STEM_LEVEL] = 0.0
    back = np.zeros((layers, space.NUM_LEVELS), dtype=np.int64)
    for layer in range(layers):
        new = np.full(space.NUM_LEVELS, -np.inf)
        for dst in range(space.NUM_LEVELS):
            for src in (dst + 1, dst, dst - 1):  # moves finer, same, coarser into dst
                if not 0 <= src < space.NUM_LEVELS or score[src] == -np.inf:
                    continue
                cand = score[src] + logp[layer, src, space.move_between(src, dst)]
                if cand > new[dst]:
                    new[dst], back[layer, dst] = cand, src
        score = new
    level = int(np.argmax(score))
    path = [level]
    for layer in range(layers - 1, 0, -1):
        level = int(back[layer, level])
        path.append(level)
    return tuple(reversed(path))


def decode_genotype(alpha_logits: np.ndarray, beta_logits: np.ndarray) -> Genotype:
    """Cell and path decoded together."""
    return Genotype(cell=decode_cell(alpha_logits), path=decode_path(beta_logits))


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) along ``axis``; zero probabilities contribute nothing."""
    p = np.asarray(probs, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=axis)
