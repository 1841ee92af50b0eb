"""The consensus of several search trials: one architecture from the mean of their distributions.

A search ends with a distribution over architectures, the op weights of every cell edge and the
probabilities of the network-level moves (:meth:`Relaxation.distribution`), and decodes its
most probable architecture. Searches of the same space that differ only in their seed end with
different distributions: part of each is what the data favour, part is the noise of the
stochastic architecture gradients, and on small problems the noise can dominate (docs/search.md,
"Signal or noise"). The paper runs several searches and keeps the one whose supernet scores
best on held-out data. The consensus uses all of them instead: the element-wise mean of their
distributions, decoded with the rules of their relaxation (:meth:`Relaxation.decode_distribution`).
What the searches agree on adds up; noise that is independent between them averages out, its
standard deviation falling with the square root of the number of searches.

A search whose cell was chosen by perturbation (``selection.name: perturbation``) contributes
its projected op weights, one-hot on the operations it chose: it votes with its decisions.

The consensus of one search is that search's own architecture. Searches of different spaces
(layers, blocks, operations, images or volumes) or relaxations with different distributions
(a single path and a DiNTS topology) have no common mean and are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autodeeplab.checkpoint import load_checkpoint
from autodeeplab.genotype import Genotype
from autodeeplab.relaxation import Relaxation


@dataclass(frozen=True)
class Consensus:
    """The consensus architecture of ``trials`` search checkpoints and what it was decoded from."""

    genotype: Genotype
    distribution: dict[str, np.ndarray]
    """The mean distribution, by the names of :meth:`Relaxation.distribution`."""
    genotypes: tuple[Genotype, ...]
    """Each search's own architecture, in the order given."""
    epochs: tuple[tuple[int, int], ...] = ()
    """Each search's finished epochs and the epochs of its config: a search stopped early
    contributes the distribution it had then."""

    def unfinished(self) -> list[int]:
        """Indices of the searches whose checkpoint is from before their last epoch."""
        return [i for i, (done, total) in enumerate(self.epochs) if done < total]

    @property
    def trials(self) -> int:
        return len(self.genotypes)

    def agreement(self) -> tuple[float, float]:
        """Shares of the consensus cell's branches (input and operation of a block) and of its
        path's layers (level, or set of active transitions for a topology) that each search's own
        architecture has, averaged over the searches."""
        branches = {(b, branch) for b, block in enumerate(self.genotype.cell) for branch in block}
        cell = np.mean(
            [
                len(branches & {(b, x) for b, block in enumerate(g.cell) for x in block})
                / len(branches)
                for g in self.genotypes
            ]
        )
        mine = _layers(self.genotype)
        path = np.mean(
            [
                np.mean([a == b for a, b in zip(mine, _layers(g), strict=True)])
                for g in self.genotypes
            ]
        )
        return float(cell), float(path)


def _layers(genotype: Genotype) -> list[object]:
    if genotype.path is not None:
        return list(genotype.path)
    assert genotype.topology is not None
    return [frozenset(layer) for layer in genotype.topology.layers]


def consensus(checkpoints: Sequence[str | Path]) -> Consensus:
    """The consensus of the search checkpoints (``last.pt`` files or run folders holding one),
    read without executing code from them. Raises ``ValueError`` naming the file that does not
    fit: not a search checkpoint, another space, another kind of distribution."""
    from autodeeplab.search_model import checkpoint_distribution

    if not checkpoints:
        raise ValueError("give at least one search checkpoint")
    paths = [Path(p) / "last.pt" if Path(p).is_dir() else Path(p) for p in checkpoints]
    dists, genotypes, epochs, first = [], [], [], None
    for path in paths:
        state = load_checkpoint(path)
        relaxation, dist = checkpoint_distribution(state, path)
        epochs.append((int(state.get("epoch", 0)), int(state["config"].get("epochs", 0))))
        if first is None:
            first = (path, relaxation, dist)
        else:
            _check_compatible(first, (path, relaxation, dist))
        dists.append(dist)
        genotypes.append(relaxation.decode_distribution(dist))
    assert first is not None
    mean = {k: np.mean([d[k] for d in dists], axis=0) for k in first[2]}
    return Consensus(first[1].decode_distribution(mean), mean, tuple(genotypes), tuple(epochs))


_Search = tuple[Path, Relaxation, dict[str, np.ndarray]]
"""A checkpoint's path, relaxation and distribution."""


def _check_compatible(first: _Search, other: _Search) -> None:
    (p0, r0, d0), (p1, r1, d1) = first, other
    if r0.space != r1.space:
        raise ValueError(
            f"{p1} was searched in another space than {p0} ({r1.space} vs {r0.space}); a "
            "consensus needs searches of one space"
        )
    shapes0 = {k: v.shape for k, v in d0.items()}
    shapes1 = {k: v.shape for k, v in d1.items()}
    if shapes0 != shapes1:
        raise ValueError(
            f"{p1} holds a {type(r1).__name__} distribution ({_names(shapes1)}) and {p0} a "
            f"{type(r0).__name__} one ({_names(shapes0)}); a consensus needs searches whose "
            "relaxations decode the same kind of architecture"
        )


def _names(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
