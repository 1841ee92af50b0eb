"""Perturbation-based selection of the cell (DARTS-PT, Wang et al., ICLR 2021).

The paper reads the cell off the supernet by the largest op weight of every edge. That assumes
the weight of an operation measures what it contributes to the supernet, and Wang et al. show
that it need not: in DARTS-style supernets the weight of ``skip_connect`` keeps growing whatever
the identity adds, which is one face of the collapse to parameter-free operations. DARTS-PT
measures the contribution directly, as the loss of supernet accuracy when an operation is taken
out, and discretises the cell one decision at a time:

1. **Operations.** For one edge at a time, in a seeded random order, every operation other than
   ``none`` is removed in turn (its mixing weight set to 0, the other weights unchanged, no
   renormalisation) and the supernet is evaluated. The edge keeps the operation whose removal
   hurts most; from then on its weights are one-hot on it.
2. **Topology.** For one block with more than two inputs at a time (seeded random order), the
   input edge whose removal hurts least is dropped (weights 0), again and again until two
   remain.

After every decision the supernet is tuned for a few steps, so that it can adapt to the
discretised part before the next measurement. The network-level path (or DiNTS topology) is
decoded by the relaxation as before; only the cell is selected here.

"Hurts" is measured by ``criterion``: ``miou`` (the supernet's mIoU on the selection batches,
ties broken by the loss; DARTS-PT uses accuracy) or ``loss`` (the cross-entropy on them).
:class:`CellProjection` holds the decisions and applies them to the op weights of the supernet
(:attr:`autodeeplab.supernet.SearchNetwork.projection`); the engine evaluates and tunes
(:mod:`autodeeplab.engine.search`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from autodeeplab import space
from autodeeplab.decode import decode_cell_weights
from autodeeplab.genotype import Block, Genotype

SELECTIONS: tuple[str, ...] = ("argmax", "perturbation")
"""``selection.name`` values: the paper's argmax of the op weights, or DARTS-PT."""

CRITERIA: tuple[str, ...] = ("miou", "loss")
"""``selection.criterion`` values."""


@dataclass(frozen=True)
class Score:
    """The supernet's quality on the selection batches under one perturbation."""

    miou: float
    loss: float

    def key(self, criterion: str) -> tuple[float, ...]:
        """Larger is a better supernet: higher mIoU (ties: lower loss), or lower loss."""
        if criterion == "miou":
            return (_finite(self.miou, -np.inf), -_finite(self.loss, np.inf))
        return (-_finite(self.loss, np.inf),)


def _finite(x: float, default: float) -> float:
    return x if np.isfinite(x) else default


def edge_position(edge: int) -> tuple[int, int]:
    """``(block, input index)`` of cell edge ``edge`` (edges are numbered block by block)."""
    block = 0
    while space.block_edge_offset(block + 1) <= edge:
        block += 1
    return block, edge - space.block_edge_offset(block)


@dataclass(frozen=True)
class Decision:
    """One step of the selection: the operation of ``edge`` (``kind="op"``) or the two kept
    inputs of ``block`` (``kind="edges"``)."""

    kind: str
    target: int


def plan(blocks: int, seed: int) -> tuple[Decision, ...]:
    """Every decision of a ``blocks``-block cell in order: each edge's operation (a random
    order seeded by ``seed``), then the inputs of each block with more than two (random order)."""
    rng = np.random.default_rng([seed, 0x5E1EC7])
    edges = rng.permutation(space.num_edges(blocks))
    nodes = rng.permutation(np.arange(1, blocks))  # block 0 has exactly two inputs
    return tuple(Decision("op", int(e)) for e in edges) + tuple(
        Decision("edges", int(b)) for b in nodes
    )


@dataclass
class CellProjection:
    """The decisions taken so far and a perturbation under evaluation, as a transformation of
    the op weights ``(E, O)`` of the supernet.

    ``ops[e] = o``: edge ``e`` is one-hot on operation ``o``. ``kept[b] = (e1, e2)``: of block
    ``b``'s input edges only ``e1`` and ``e2`` remain (the others have weight 0). While
    :meth:`removing` is active, one operation or one set of edges is removed on top.
    """

    blocks: int
    op_names: tuple[str, ...]
    ops: dict[int, int] = field(default_factory=dict)
    kept: dict[int, tuple[int, int]] = field(default_factory=dict)
    _removed_op: tuple[int, int] | None = None
    _removed_edges: frozenset[int] = frozenset()

    @property
    def num_edges(self) -> int:
        return space.num_edges(self.blocks)

    def block_edges(self, block: int) -> list[int]:
        """The global indices of the input edges of ``block``."""
        start = space.block_edge_offset(block)
        return list(range(start, start + block + 2))

    def candidates(self) -> list[int]:
        """The operations an edge may keep (every one but ``none``)."""
        return [i for i, name in enumerate(self.op_names) if name != "none"]

    def dropped_edges(self) -> set[int]:
        """Edges removed by the topology decisions."""
        return {e for b, keep in self.kept.items() for e in self.block_edges(b) if e not in keep}

    def is_identity(self) -> bool:
        return not (self.ops or self.kept or self._removed_op or self._removed_edges)

    def apply(self, weights: torch.Tensor) -> torch.Tensor:
        """``weights * keep + fixed``: decided edges one-hot, dropped and removed edges 0, the
        removed operation 0, every other weight unchanged (the gradient flows to those only)."""
        if self.is_identity():
            return weights
        e_count, o_count = weights.shape
        if (e_count, o_count) != (self.num_edges, len(self.op_names)):
            raise ValueError(
                f"op weights of shape {tuple(weights.shape)} do not match a {self.blocks}-block "
                f"cell with {len(self.op_names)} operations"
            )
        keep = torch.ones(e_count, o_count, dtype=weights.dtype, device=weights.device)
        fixed = torch.zeros_like(keep)
        for e, o in self.ops.items():
            keep[e] = 0.0
            fixed[e, o] = 1.0
        for e in self.dropped_edges() | set(self._removed_edges):
            keep[e] = 0.0
            fixed[e] = 0.0
        if self._removed_op is not None:
            e, o = self._removed_op
            keep[e, o] = 0.0
            fixed[e, o] = 0.0
        return weights * keep + fixed

    @contextlib.contextmanager
    def removing(
        self, op: tuple[int, int] | None = None, edges: frozenset[int] = frozenset()
    ) -> Iterator[None]:
        """Remove operation ``op = (edge, op index)`` or the edges ``edges`` while inside."""
        self._removed_op, self._removed_edges = op, frozenset(edges)
        try:
            yield
        finally:
            self._removed_op, self._removed_edges = None, frozenset()

    def decide(
        self, decision: Decision, evaluate: Callable[[], Score], criterion: str
    ) -> dict[str, Any]:
        """Take ``decision`` by evaluating perturbations (``evaluate()`` scores the supernet
        under the current perturbation) and record it; returns the decision's record (what was
        measured and chosen, JSON-compatible), which :meth:`replay` takes back."""
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
        record: dict[str, Any] = {"kind": decision.kind, "target": decision.target}
        if decision.kind == "op":
            e = decision.target
            scores = {}
            for o in self.candidates():
                with self.removing(op=(e, o)):
                    scores[o] = evaluate()
            # the operation whose removal leaves the worst supernet (ties: the lower index)
            choice = min(scores, key=lambda o: (scores[o].key(criterion), o))
            record["removed"] = [
                {"op": self.op_names[o], "mIoU": s.miou, "loss": s.loss} for o, s in scores.items()
            ]
            record["op"] = self.op_names[choice]
        elif decision.kind == "edges":
            remaining = self.block_edges(decision.target)
            offset = remaining[0]
            rounds = []
            while len(remaining) > 2:
                scores = {}
                for e in remaining:
                    with self.removing(edges=frozenset({e})):
                        scores[e] = evaluate()
                # the edge whose removal leaves the best supernet (ties: the lower index)
                drop = max(scores, key=lambda e: (scores[e].key(criterion), -e))
                rounds.append(
                    {
                        "removed": [
                            {"edge": e, "input": e - offset, "mIoU": s.miou, "loss": s.loss}
                            for e, s in scores.items()
                        ],
                        "dropped": drop,
                    }
                )
                remaining = [e for e in remaining if e != drop]
            record["rounds"] = rounds
            record["kept"] = remaining
        else:
            raise ValueError(f"unknown decision kind {decision.kind!r}; valid: op, edges")
        self.replay(record)
        return record

    def replay(self, record: dict[str, Any]) -> None:
        """Apply a decision recorded by :meth:`decide` (e.g. from a checkpoint)."""
        if record["kind"] == "op":
            self.ops[int(record["target"])] = self.op_names.index(record["op"])
        else:
            first, second = (int(e) for e in record["kept"])
            self.kept[int(record["target"])] = (first, second)

    @classmethod
    def from_records(
        cls, blocks: int, op_names: tuple[str, ...], records: list[dict[str, Any]]
    ) -> CellProjection:
        """The projection after the decisions ``records`` (of :meth:`decide`)."""
        projection = cls(blocks, op_names)
        for record in records:
            projection.replay(record)
        return projection

    def genotype(self, decoded: Genotype, weights: torch.Tensor) -> Genotype:
        """``decoded`` (the relaxation's genotype) with this projection's :meth:`cell` of the
        op weights ``weights``."""
        with torch.no_grad():
            cell = self.cell(weights)
        return Genotype(cell=cell, path=decoded.path, topology=decoded.topology)

    def cell(self, weights: torch.Tensor | np.ndarray) -> tuple[Block, ...]:
        """The cell the decisions give, the undecided part by the largest projected weights
        (:func:`autodeeplab.decode.decode_cell_weights`)."""
        w = torch.as_tensor(weights).detach().cpu().double()
        return decode_cell_weights(self.apply(w).numpy(), self.op_names)


def check_selection(cfg: Any) -> None:
    """Refuse ``selection.*`` values of a search config that name no method, with the valid
    ones."""
    from autodeeplab.config import ConfigError

    sel = cfg.selection
    if sel.name not in SELECTIONS:
        raise ConfigError(
            f"selection.name: unknown method {sel.name!r}; valid: {', '.join(SELECTIONS)}"
        )
    if sel.criterion not in CRITERIA:
        raise ConfigError(
            f"selection.criterion: unknown criterion {sel.criterion!r}; valid: {', '.join(CRITERIA)}"
        )
