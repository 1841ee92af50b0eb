"""The memory budget of a DiNTS search: the expected memory of the searched network as a share
of the memory with every transition on, and the architecture-loss term that pulls it to a target.

:class:`MemoryBudget` wraps :class:`autodeeplab.memory.SupernetMemory`, built once for the
search's setting: its layers, filter multiplier ``F``, crop and batch, the data set's classes and
the retrained network's default heads (ASPP and decoder). ``fraction(p)`` is
``usage(p) / usage_all_on`` for the relaxation's independent transition probabilities ``p``;
the term is ``weight * |target - fraction(p)|``.

The cost of a cell
    The memory model walks a discrete cell (two ``(input, op)`` branches per block), while the
    supernet's cell mixes every operation on every edge and its decoded cell is known only at
    the end. The budget therefore prices every transition with one fixed *reference cell*
    (:func:`reference_cell`: every block reads both cell inputs through ``sep_conv_3x3``), for
    three reasons:

    * what the budget steers is *which* transitions to turn off, and that depends little on
      the cell: a cell's memory scales with its node's channels times its area, which the
      trellis fixes, so the gradient of the fraction with respect to the transition
      probabilities points nearly the same way for every cell (cosine similarity at least 0.86
      between the reference cell and each single-operation cell at 12 layers, 0.91 at 4
      layers, F = 8, 128 px; ``tests/test_budget.py``). The *level* of the fraction does depend on the cell:
      with cheap cells the fixed parts (stem, heads, decoder, loss) weigh more, so at 12
      layers a topology's fraction reads up to about 13 points higher with ``skip_connect``
      cells than with the reference cell. The decoded network's memory is reported with its
      own cell (:meth:`MemoryBudget.decoded_bytes`);
    * weighting each operation's memory by its probability, as DiNTS does, would let the
      budget be met by moving the operation probabilities towards the cheapest operations,
      which are ``skip_connect`` and pooling: the collapse to parameter-free operations that
      differentiable search is prone to. With a fixed cell the budget acts on the topology
      (the path logits) only, and the operations are chosen by the data and the entropy term;
    * the term is a fixed function of the path logits, so a resumed run computes exactly what
      an uninterrupted one does.

    The decoded network's own memory (:meth:`MemoryBudget.decoded_bytes`) uses the decoded cell.
"""

from __future__ import annotations

import torch

from autodeeplab.genotype import Block, Genotype
from autodeeplab.memory import Heads, SupernetMemory, activation_memory

REFERENCE_OP = "sep_conv_3x3"
"""Operation of both branches of every block of the reference cell."""


def reference_cell(blocks: int) -> tuple[Block, ...]:
    """The cell whose memory prices every transition of the budget: ``blocks`` blocks, each
    reading both cell inputs (``H^{l-2}``, ``H^{l-1}``) through :data:`REFERENCE_OP`."""
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
    return tuple(((0, REFERENCE_OP), (1, REFERENCE_OP)) for _ in range(blocks))


class MemoryBudget:
    """Expected-memory fraction and budget term of one search setting.

    Args:
        layers, blocks, filter_multiplier: the supernet's ``L``, ``B`` and ``F``.
        input_size: the crop ``(H, W)``; its sides must exceed 32 (the deepest stride).
        batch_size: images per step.
        num_classes: classes of the data set (the size of the logits and the loss).
        target: the target fraction in ``(0, 1]``, or ``None`` for no budget term (the
            fraction is still reported).
        weight: weight of the term.
    """

    def __init__(
        self,
        layers: int,
        blocks: int,
        *,
        filter_multiplier: int,
        input_size: tuple[int, int],
        batch_size: int,
        num_classes: int,
        target: float | None = None,
        weight: float = 1.0,
    ) -> None:
        if target is not None and not 0.0 < target <= 1.0:
            raise ValueError(f"memory target must be a fraction in (0, 1], got {target!r}")
        self.target, self.weight = target, float(weight)
        self.filter_multiplier, self.batch_size = filter_multiplier, batch_size
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heads = Heads(num_classes=num_classes)
        self.memory = SupernetMemory(
            reference_cell(blocks),
            layers,
            filter_multiplier=filter_multiplier,
            input_size=self.input_size,
            batch_size=batch_size,
            heads=self.heads,
        )

    def fraction(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected memory over the all-on memory for transition probabilities ``probs``
        ``(L, 4, 3)`` (differentiable)."""
        # the memory model holds its masks on the CPU; 144 numbers travel, gradients follow
        return self.memory.usage_fraction(probs.cpu()).to(probs.device)

    def terms(self, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``memory_fraction`` and, with a target, ``memory_budget = |target - fraction|``
        (unweighted)."""
        fraction = self.fraction(probs)
        out = {"memory_fraction": fraction}
        if self.target is not None:
            out["memory_budget"] = (self.target - fraction).abs()
        return out

    def loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``weight * memory_budget`` of :meth:`terms`; ``None`` without a target."""
        if self.target is None:
            return None
        return self.weight * terms["memory_budget"]

    def decoded_bytes(self, genotype: Genotype) -> int:
        """Activation memory of one training step of ``genotype`` (its own cell, single or
        multi-path) at this setting (:func:`autodeeplab.memory.activation_memory`)."""
        return activation_memory(
            genotype,
            filter_multiplier=self.filter_multiplier,
            input_size=self.input_size,
            batch_size=self.batch_size,
            heads=self.heads,
        ).total
