"""Multi-path network topologies (DiNTS) and their topology-guaranteed decoding: plain numpy.

A *topology* is, per cell layer, the set of active trellis transitions ``(src_level,
dst_level)`` entering that layer. It is *feasible* when

* layer 0 reads the stem (every transition leaves level 0),
* a transition of layer ``l > 0`` leaves a node that layer ``l - 1`` activates (a node is active
  when at least one active transition enters it), and every active node of layer ``l - 1`` feeds
  at least one active transition of layer ``l`` (no dead ends; the last layer's active nodes all
  feed the head),
* every layer has at least one active transition.

So the set of source levels of layer ``l``'s pattern equals the set of levels layer ``l - 1``'s
pattern activates. The probability model is DiNTS': every transition ``e`` is on with
``p_e = sigmoid(a_e)``, independently, and a layer's *pattern* (the subset of its transitions
that is on) has probability ``prod_on p_e * prod_off (1 - p_e) / (1 - prod (1 - p_e))``: the
all-off pattern is excluded. :func:`decode_topology` finds the most probable feasible topology
with a dynamic programme whose state is the set of active nodes (at most 15 non-empty sets of
the 4 levels), so it costs ``O(L * 2^T)`` for ``T <= 10`` transitions per layer, never a
(patterns x patterns) table.

The logits use the beta layout ``(L, 4, 3)``: ``a[l, s, m]`` belongs to the transition from
level ``s`` of layer ``l - 1`` to level ``s + m - 1`` of layer ``l`` (see
:mod:`autodeeplab.space`); entries that are no transition are ignored.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from autodeeplab import space

Transition = tuple[int, int]
"""``(src_level, dst_level)`` of a transition into a layer."""


# ----------------------------------------------------------------------------- the trellis


@cache
def layer_transitions(layer: int) -> tuple[Transition, ...]:
    """Transitions ``(src_level, dst_level)`` entering ``layer``, in the order of
    :meth:`SearchSpace.transitions` (by target level, then source level)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative integer, got {layer!r}")
    sp = space.SearchSpace(layers=layer + 1)
    return tuple((src, dst) for lay, src, dst in sp.transitions() if lay == layer)


def prev_prev_candidates(layer: int, level: int) -> tuple[int, ...]:
    """Levels that may provide ``H^{l-2}`` of a cell entering ``(layer, level)``, in order of
    preference: the same level, then nearer before farther, finer before coarser (the
    supernet's rule, which reads the same level when it exists, restricted to active nodes).
    Layers 0 and 1 have one candidate: ``-1``, the stem's stride-2 output (layer 0), and level
    0, the stem's stride-4 output (layer 1)."""
    if layer == 0:
        return (-1,)
    if layer == 1:
        return (space.STEM_LEVEL,)
    existing = space.levels_at_layer(layer - 2)
    return tuple(sorted(existing, key=lambda k: (abs(k - level), k)))


@dataclass(frozen=True)
class LayerPatterns:
    """Every non-empty activation pattern of one layer's ``T`` transitions.

    ``bits[p, t]``: transition ``t`` is on in pattern ``p`` (pattern ``p`` is the binary number
    ``p + 1``); ``src_mask[p]`` / ``dst_mask[p]``: bit ``s`` set when level ``s`` is a source /
    a target of an active transition.
    """

    transitions: tuple[Transition, ...]
    bits: np.ndarray  # (P, T) bool, P = 2^T - 1
    src_mask: np.ndarray  # (P,) int
    dst_mask: np.ndarray  # (P,) int

    @property
    def num_patterns(self) -> int:
        return self.bits.shape[0]


@cache
def layer_patterns(layer: int) -> LayerPatterns:
    """The patterns of ``layer`` (cached: layers 3 and later share one table of 1023)."""
    trans = layer_transitions(layer)
    return _patterns(trans)


@cache
def _patterns(trans: tuple[Transition, ...]) -> LayerPatterns:
    t = len(trans)
    codes = np.arange(1, 2**t, dtype=np.int64)
    bits = (codes[:, None] >> np.arange(t)) & 1 == 1  # (P, T)
    src_bit = np.array([1 << s for s, _ in trans], dtype=np.int64)
    dst_bit = np.array([1 << d for _, d in trans], dtype=np.int64)
    src_mask = np.bitwise_or.reduce(np.where(bits, src_bit, 0), axis=1)
    dst_mask = np.bitwise_or.reduce(np.where(bits, dst_bit, 0), axis=1)
    for arr in (bits, src_mask, dst_mask):
        arr.setflags(write=False)
    return LayerPatterns(trans, bits, src_mask, dst_mask)


# ----------------------------------------------------------------------------- the value


def _as_level(x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"a level is an integer, got {x!r}")
    return int(x)


@dataclass(frozen=True)
class Topology:
    """A feasible multi-path network topology: ``layers[l]`` is the sorted tuple of active
    transitions ``(src_level, dst_level)`` entering cell layer ``l``.

    ``__post_init__`` checks feasibility (see the module docstring) and raises ``ValueError``
    naming the layer and what is wrong. A single path is the special case of one transition per
    layer (:meth:`from_path`).
    """

    layers: tuple[tuple[Transition, ...], ...]

    def __post_init__(self) -> None:
        try:
            layers = tuple(
                tuple(sorted({(_as_level(s), _as_level(d)) for s, d in layer}))
                for layer in self.layers
            )
        except (TypeError, ValueError):
            raise ValueError(
                "a topology is a list of layers, each a list of [src_level, dst_level] pairs; "
                f"got {self.layers!r}"
            ) from None
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ValueError("a topology needs at least one layer")
        active = (space.STEM_LEVEL,)
        for layer, trans in enumerate(layers):
            if not trans:
                raise ValueError(f"layer {layer} has no active transition; every layer needs one")
            for src, dst in trans:
                for lv in (src, dst):
                    if not 0 <= lv < space.NUM_LEVELS:
                        raise ValueError(
                            f"layer {layer}: transition {src}->{dst} has a level outside "
                            f"0..{space.NUM_LEVELS - 1}"
                        )
                if abs(dst - src) > 1:
                    raise ValueError(
                        f"layer {layer}: transition {src}->{dst} changes the level by more than one"
                    )
            srcs = sorted({s for s, _ in trans})
            where = "the stem (level 0)" if layer == 0 else f"layer {layer - 1}"
            dead = [s for s in srcs if s not in active]
            if dead:
                raise ValueError(
                    f"layer {layer}: transitions leave levels {dead}, which are not active in "
                    f"{where}; active levels there: {list(active)}"
                )
            unused = [s for s in active if s not in srcs]
            if unused:
                raise ValueError(
                    f"layer {layer}: active levels {unused} of {where} feed no transition; every "
                    "active node must feed at least one"
                )
            active = tuple(sorted({d for _, d in trans}))

    # ------------------------------------------------------------------ views
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def active_levels(self, layer: int) -> tuple[int, ...]:
        """Levels of the active nodes of ``layer`` (the targets of its active transitions)."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in 0..{self.num_layers - 1}, got {layer}")
        return tuple(sorted({d for _, d in self.layers[layer]}))

    def is_single_path(self) -> bool:
        return all(len(t) == 1 for t in self.layers)

    def path(self) -> tuple[int, ...]:
        """The level per layer of a single-path topology; raises for a multi-path one."""
        if not self.is_single_path():
            raise ValueError("this topology has several paths; path() needs a single path")
        return tuple(t[0][1] for t in self.layers)

    def incoming(self, layer: int, level: int) -> tuple[Transition, ...]:
        """Active transitions entering node ``(layer, level)`` (empty for an inactive node)."""
        return tuple(t for t in self.layers[layer] if t[1] == level)

    def transitions(self) -> tuple[tuple[int, int, int], ...]:
        """Every active transition as ``(layer, src_level, dst_level)``, layer by layer, each
        layer in its sorted order: the order of the cells of the discrete network."""
        return tuple((layer, s, d) for layer, trans in enumerate(self.layers) for s, d in trans)

    def prev_prev_level(self, layer: int, level: int) -> int:
        """Level of the node whose output is ``H^{l-2}`` of a cell entering ``(layer, level)``:
        the first of :func:`prev_prev_candidates` that is active at ``layer - 2`` (layers 0 and
        1 read the stem: ``-1`` is its stride-2 output, level 0 at layer 1 its stride-4 one)."""
        cands = prev_prev_candidates(layer, level)
        if layer < 2:
            return cands[0]
        active = set(self.active_levels(layer - 2))
        return next(k for k in cands if k in active)

    def low_level_layer(self) -> int | None:
        """Layer of the node that gives the decoder its stride-4 low-level feature, ``None`` for
        the stem's stride-4 output: the last layer of the initial run of layers whose only
        active node is at level 0 (cell index 2 of the released path)."""
        index = None
        for layer in range(self.num_layers):
            if self.active_levels(layer) != (space.STEM_LEVEL,):
                break
            index = layer
        return index

    @classmethod
    def all_on(cls, layers: int) -> Topology:
        """Every transition of a ``layers``-layer trellis (the supernet as one topology)."""
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be a positive integer, got {layers!r}")
        return cls(tuple(layer_transitions(layer) for layer in range(layers)))

    @classmethod
    def from_path(cls, path: Sequence[int]) -> Topology:
        """The single-path topology of ``path`` (one level per layer, from the stem)."""
        levels = [space.STEM_LEVEL, *(int(x) for x in path)]
        return cls(tuple(((levels[i], levels[i + 1]),) for i in range(len(levels) - 1)))

    def mask(self) -> np.ndarray:
        """Boolean ``(L, 4, 3)`` array in the beta layout, True at the active transitions."""
        out = np.zeros((self.num_layers, space.NUM_LEVELS, space.NUM_MOVES), dtype=bool)
        for layer, trans in enumerate(self.layers):
            for src, dst in trans:
                out[layer, src, space.move_between(src, dst)] = True
        return out

    def __str__(self) -> str:
        return " | ".join(",".join(f"{s}>{d}" for s, d in t) for t in self.layers)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"transitions": [[[s, d] for s, d in t] for t in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topology:
        if not isinstance(data, Mapping) or set(data) != {"transitions"}:
            keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"a topology is an object with the one key 'transitions', got {keys}")
        layers = data["transitions"]
        if not isinstance(layers, list) or not all(
            isinstance(t, list)
            and all(
                isinstance(p, list)
                and len(p) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in p)
                for p in t
            )
            for t in layers
        ):
            raise ValueError(
                "'transitions' must be a list of layers, each a list of [src_level, dst_level] "
                f"integer pairs; got {layers!r}"
            )
        return cls(tuple(tuple((p[0], p[1]) for p in t) for t in layers))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Topology:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"topology JSON does not parse: {e}") from None
        return cls.from_dict(data)


# ----------------------------------------------------------------------------- probabilities


def _check_logits(logits: object) -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (space.NUM_LEVELS, space.NUM_MOVES) or arr.shape[0] < 1:
        raise ValueError(
            f"path logits must have shape (L, {space.NUM_LEVELS}, {space.NUM_MOVES}) with L >= 1, "
            f"got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("path logits contain NaN or infinite values")
    return arr


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


@cache
def _layer_index(layer: int) -> np.ndarray:
    """Flat indices into a layer's ``(4, 3)`` logits of its transitions, in pattern-bit order."""
    return np.array(
        [s * space.NUM_MOVES + space.move_between(s, d) for s, d in layer_transitions(layer)]
    )


def _layer_logits(logits: np.ndarray, layer: int) -> np.ndarray:
    return logits[layer].reshape(-1)[_layer_index(layer)]


def log_normaliser(a: np.ndarray) -> float:
    """``log(1 - prod(1 - sigmoid(a)))``: log probability that at least one of independent
    transitions with logits ``a`` is on.

    Computed as ``logsumexp_k [log p_k + sum_{j<k} log(1 - p_j)]`` (the first transition that is
    on is ``k``), which stays finite for any finite logits where ``1 - prod`` would round to 0.
    """
    a = np.asarray(a, dtype=np.float64)
    off = _log_sigmoid(-a)
    terms = _log_sigmoid(a) + np.concatenate(([0.0], np.cumsum(off)[:-1]))
    top = terms.max()
    return float(top + np.log(np.exp(terms - top).sum()))


def pattern_log_probs(logits: np.ndarray, layer: int) -> np.ndarray:
    """Log probability of every pattern of ``layer`` (order of :func:`layer_patterns`), ``(P,)``."""
    return _pattern_log_probs(_check_logits(logits), layer)


def _pattern_log_probs(logits: np.ndarray, layer: int) -> np.ndarray:
    a = _layer_logits(logits, layer)
    on, off = _log_sigmoid(a), _log_sigmoid(-a)
    return np.where(layer_patterns(layer).bits, on, off).sum(axis=1) - log_normaliser(a)


def transition_marginals(logits: np.ndarray) -> np.ndarray:
    """Probability that each transition is on under its layer's pattern distribution, ``(L, 4,
    3)`` (0 where there is no transition).

    "``e`` on" is contained in "not all off", so ``P(e on | not all off) = p_e / (1 - prod_f (1 -
    p_f))``.
    """
    arr = _check_logits(logits)
    out = np.zeros_like(arr)
    for layer in range(arr.shape[0]):
        a = _layer_logits(arr, layer)
        marg = np.exp(_log_sigmoid(a) - log_normaliser(a))
        for (s, d), m in zip(layer_transitions(layer), marg, strict=True):
            out[layer, s, space.move_between(s, d)] = m
    return out


def topology_log_prob(logits: np.ndarray, topology: Topology) -> float:
    """``sum over layers of log p(pattern)`` of ``topology`` under ``logits``."""
    arr = _check_logits(logits)
    if topology.num_layers != arr.shape[0]:
        raise ValueError(
            f"the topology has {topology.num_layers} layers, the logits {arr.shape[0]}"
        )
    total = 0.0
    for layer, trans in enumerate(topology.layers):
        a = _layer_logits(arr, layer)
        on = np.array([t in trans for t in layer_transitions(layer)])
        total += float(np.where(on, _log_sigmoid(a), _log_sigmoid(-a)).sum()) - log_normaliser(a)
    return total


def count_topologies(layers: int) -> int:
    """Number of feasible topologies of ``layers`` layers (exact integer), by the same
    recursion over sets of active levels as :func:`decode_topology` with counts for scores."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive integer, got {layers!r}")
    counts = {1 << space.STEM_LEVEL: 1}
    for layer in range(layers):
        pat = layer_patterns(layer)
        nxt: dict[int, int] = {}
        for src, dst in zip(pat.src_mask.tolist(), pat.dst_mask.tolist(), strict=True):
            if src in counts:
                nxt[dst] = nxt.get(dst, 0) + counts[src]
        counts = nxt
    return sum(counts.values())


# ----------------------------------------------------------------------------- decoding


def decode_topology(logits: np.ndarray) -> Topology:
    """The most probable feasible topology under ``logits`` ``(L, 4, 3)``.

    Dynamic programme over layers. The state after layer ``l`` is the set ``S`` of active
    levels (a 4-bit mask); ``best[S]`` is the highest log probability of a feasible prefix ending
    in ``S``. A pattern of layer ``l + 1`` continues ``S`` exactly when its set of source levels
    is ``S``, and leads to the set of its target levels. Each layer costs one pass over its
    ``2^T - 1`` patterns; ties go to the pattern with the smaller code.
    """
    arr = _check_logits(logits)
    num_states = 1 << space.NUM_LEVELS
    best = np.full(num_states, -np.inf)
    best[1 << space.STEM_LEVEL] = 0.0
    choice = []  # per layer: (num_states,) best pattern index reaching each state, -1 = none
    for layer in range(arr.shape[0]):
        pat = layer_patterns(layer)
        cand = best[pat.src_mask] + _pattern_log_probs(arr, layer)  # (P,)
        new = np.full(num_states, -np.inf)
        arg = np.full(num_states, -1, dtype=np.int64)
        for state, idx in _by_target(layer):
            k = int(np.argmax(cand[idx]))
            new[state], arg[state] = cand[idx[k]], idx[k]
        best = new
        choice.append(arg)
    state = int(np.argmax(best))
    layers = []
    for layer in range(arr.shape[0] - 1, -1, -1):
        p = int(choice[layer][state])
        pat = layer_patterns(layer)
        layers.append(tuple(t for t, on in zip(pat.transitions, pat.bits[p], strict=True) if on))
        state = int(pat.src_mask[p])
    return Topology(tuple(reversed(layers)))


@cache
def _by_target(layer: int) -> tuple[tuple[int, np.ndarray], ...]:
    """Pattern indices of ``layer`` grouped by their target set, ``(state, indices)``."""
    pat = layer_patterns(layer)
    return tuple(
        (int(state), np.flatnonzero(pat.dst_mask == state)) for state in np.unique(pat.dst_mask)
    )


def best_single_path(logits: np.ndarray) -> tuple[int, ...]:
    """The most probable *single-path* topology under ``logits``, as a level per layer.

    Within a layer, the pattern ``{e}`` has log probability ``a_e + sum_f log(1 - p_f) - log Z``
    (because ``log p_e - log(1 - p_e) = a_e``), and only ``a_e`` depends on the choice: the best
    single path is the path of largest summed logits (Viterbi on the raw logits).
    """
    arr = _check_logits(logits)
    score = np.full(space.NUM_LEVELS, -np.inf)
    score[space.STEM_LEVEL] = 0.0
    back = np.zeros((arr.shape[0], space.NUM_LEVELS), dtype=np.int64)
    for layer in range(arr.shape[0]):
        new = np.full(space.NUM_LEVELS, -np.inf)
        for src, dst in layer_transitions(layer):
            cand = score[src] + arr[layer, src, space.move_between(src, dst)]
            if cand > new[dst]:
                new[dst], back[layer, dst] = cand, src
        score = new
    level = int(np.argmax(score))
    path = [level]
    for layer in range(arr.shape[0] - 1, 0, -1):
        level = int(back[layer, level])
        path.append(level)
    return tuple(reversed(path))
