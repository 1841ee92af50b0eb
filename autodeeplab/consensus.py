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

:func:`select_by_supernet` is the paper's rule for the same checkpoints: keep the search whose
supernet scored best (the mIoU of its last evaluation on the validation split). Its
scores only compare when every search was evaluated on the same data, which it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autodeeplab.checkpoint import load_checkpoint
from autodeeplab.genotype import Genotype
from autodeeplab.relaxation import Relaxation


class _Trials:
    """What :class:`Consensus` and :class:`Selection` share: each search's own architecture and
    how far it got."""

    genotypes: tuple[Genotype, ...]
    epochs: tuple[tuple[int, int], ...]

    def unfinished(self) -> list[int]:
        """Indices of the searches whose checkpoint is from before their last epoch."""
        return [i for i, (done, total) in enumerate(self.epochs) if done < total]

    @property
    def trials(self) -> int:
        return len(self.genotypes)


@dataclass(frozen=True)
class Consensus(_Trials):
    """The consensus architecture of ``trials`` search checkpoints and what it was decoded from."""

    genotype: Genotype
    distribution: dict[str, np.ndarray]
    """The mean distribution, by the names of :meth:`Relaxation.distribution`."""
    genotypes: tuple[Genotype, ...]
    """Each search's own architecture, in the order given."""
    epochs: tuple[tuple[int, int], ...] = ()
    """Each search's finished epochs and the epochs of its config: a search stopped early
    contributes the distribution it had then."""

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


@dataclass(frozen=True)
class Selection(_Trials):
    """The search the paper's rule keeps among ``trials`` search checkpoints."""

    index: int
    """The chosen search, in the order given."""
    genotype: Genotype
    """Its architecture."""
    supernet_miou: tuple[float | None, ...]
    """Each search's supernet mIoU at its last evaluation (None: never evaluated)."""
    genotypes: tuple[Genotype, ...]
    """Each search's own architecture, in the order given."""
    epochs: tuple[tuple[int, int], ...] = ()
    """Each search's finished epochs and the epochs of its config."""


@dataclass(frozen=True)
class _Read:
    """One search checkpoint, read."""

    path: Path
    relaxation: Relaxation
    distribution: dict[str, np.ndarray]
    epochs: tuple[int, int]
    supernet_miou: float | None
    evaluation: dict[str, object]
    """The data keys its supernet mIoU depends on."""

    @property
    def genotype(self) -> Genotype:
        """The search's own architecture."""
        return self.relaxation.decode_distribution(self.distribution)


_EVALUATION_KEYS = ("name", "root", "eval_split", "eval_size", "max_eval_samples", "options")


def _read(checkpoints: Sequence[str | Path], path_decoding: str | None = None) -> list[_Read]:
    """Every checkpoint (a ``last.pt`` or a run folder holding one), read without executing
    code from it; all of one space and kind of distribution (else ``ValueError`` naming the
    file). ``path_decoding`` (not None) replaces the path rule of their configs."""
    from autodeeplab.diagnostics import last_miou
    from autodeeplab.search_model import checkpoint_distribution

    if not checkpoints:
        raise ValueError("give at least one search checkpoint")
    out: list[_Read] = []
    for c in checkpoints:
        path = Path(c) / "last.pt" if Path(c).is_dir() else Path(c)
        state = load_checkpoint(path)
        relaxation, dist = checkpoint_distribution(state, path, path_decoding)
        config = state["config"]
        data = config.get("data", {})
        read = _Read(
            path,
            relaxation,
            dist,
            (int(state.get("epoch", 0)), int(config.get("epochs", 0))),
            last_miou(state.get("history", ())),
            {k: data.get(k) for k in _EVALUATION_KEYS},
        )
        if out:
            _check_compatible(out[0], read)
        out.append(read)
    return out


def consensus(checkpoints: Sequence[str | Path], path_decoding: str | None = None) -> Consensus:
    """The consensus of the search checkpoints (``last.pt`` files or run folders holding one),
    read without executing code from them, decoded with the first one's relaxation
    (``path_decoding``, not None: with that path rule instead of the configs'). Raises
    ``ValueError`` naming the file that does not fit: not a search checkpoint, another space,
    another kind of distribution."""
    reads = _read(checkpoints, path_decoding)
    first = reads[0]
    mean = {k: np.mean([r.distribution[k] for r in reads], axis=0) for k in first.distribution}
    return Consensus(
        first.relaxation.decode_distribution(mean),
        mean,
        tuple(r.genotype for r in reads),
        tuple(r.epochs for r in reads),
    )


def select_by_supernet(
    checkpoints: Sequence[str | Path], path_decoding: str | None = None
) -> Selection:
    """The paper's rule: of the search checkpoints, the one whose supernet mIoU at its last
    evaluation is the best (the first of a tie); ``path_decoding`` as in :func:`consensus`.
    Raises ``ValueError`` naming the file for what :func:`consensus` refuses, for a search
    evaluated on other data than the first (their scores would not compare), and when no
    search was ever evaluated."""
    reads = _read(checkpoints, path_decoding)
    first = reads[0]
    for r in reads[1:]:
        if r.evaluation != first.evaluation:
            diff = [k for k in _EVALUATION_KEYS if r.evaluation[k] != first.evaluation[k]]
            raise ValueError(
                f"{r.path} was evaluated on other data than {first.path} (data keys differ: "
                f"{', '.join(diff)}); their supernet scores do not compare"
            )
    scores = tuple(r.supernet_miou for r in reads)
    scored = [i for i, v in enumerate(scores) if v is not None]
    if not scored:
        raise ValueError(
            "none of the searches has evaluated its supernet yet (no epoch with an mIoU): "
            "there is nothing to select by"
        )
    best = max(scored, key=lambda i: (scores[i], -i))
    genotypes = tuple(r.genotype for r in reads)
    return Selection(best, genotypes[best], scores, genotypes, tuple(r.epochs for r in reads))


def _check_compatible(first: _Read, other: _Read) -> None:
    p0, r0, d0 = first.path, first.relaxation, first.distribution
    p1, r1, d1 = other.path, other.relaxation, other.distribution
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
