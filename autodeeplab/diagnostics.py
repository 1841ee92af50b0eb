"""How far a search has moved its architecture distribution, and what the decoded cell holds.

A supernet starts from nearly uniform op and move distributions (logits ``N(0, 1) x 1e-3``),
and the genotype decoded from them is an argmax over noise. These figures tell how much of the
decoded architecture the search has actually decided:

* ``alpha_entropy`` / ``alpha_entropy_fraction``: mean entropy (nats) of the op distribution of
  the cell edges, and that mean over its maximum ``log(8)``;
* ``beta_entropy`` / ``beta_entropy_fraction``: mean entropy of the move distributions of the
  trellis nodes that take part in the forward pass, and that mean over its maximum (the mean
  of ``log(number of valid moves)`` over the same nodes);
* ``path_log_prob``: log probability of the decoded (Viterbi) path under the betas;
* ``path_log_ratio``: that log probability minus the path's log probability under uniform
  moves (:func:`autodeeplab.decode.path_log_ratio`): how far the search moved the betas
  towards the decoded path (0 for betas that learned nothing);
* ``probability_path`` / ``ratio_path``: the paths the two decoding rules of
  :func:`autodeeplab.decode.decode_path` give (levels joined by ``-``). Where they differ, the
  trellis's uneven number of moves per node decided the maximum-probability path, not the
  betas alone (:func:`path_rule_warning`);
* a search of the cell alone on a fixed path (:func:`cell_diagnostics`) has no betas and
  records only the alpha figures, ``parameter_free_share`` and ``fixed_path`` (its levels
  joined by ``-``);
* DiNTS (:func:`dints_diagnostics`) has no betas: ``path_entropy`` / ``path_entropy_fraction``
  are the mean binary entropy of the independent transitions and that mean over ``log 2``,
  ``topology_log_prob`` the log probability of the decoded topology and
  ``active_transitions`` its number of transitions;
* ``parameter_free_share``: share of the decoded cell's operations that have no weights
  (pooling and ``skip_connect``; ``none`` is never decoded), the mark of the DARTS collapse;
* ``alpha_grad_z`` / ``alpha_grad_z_above_2`` (:func:`gradient_signal`): whether the
  architecture steps of an epoch pushed the alphas consistently (a signal) or at random.

:func:`convergence` sums up a finished search from its epoch records: the final figures and
for how many epochs in a row the decoded cell and the decoded path had stayed what they
finally were (a path that still changes at the last epoch was not settled by the search).

The computations are plain numpy on the logits; :func:`model_diagnostics` reads them from a
supernet through its relaxation (:meth:`autodeeplab.relaxation.Relaxation.diagnostics`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from autodeeplab import decode, space, topology
from autodeeplab.genotype import Genotype, path_string

PARAMETER_FREE_OPS: frozenset[str] = frozenset({"max_pool_3x3", "avg_pool_3x3", "skip_connect"})
"""Decodable operations without weights."""

STAGNANT_FRACTION = 0.99
"""An entropy above this share of its maximum means the distribution has barely moved: for
logits with spread ``s`` within a row, the entropy falls short of its maximum by about
``s**2 / 2`` nats, so 99 % of ``log(8)`` is a spread of about 0.2."""


@dataclass(frozen=True)
class ArchDiagnostics:
    """Movement of the architecture distribution and content of the decoded architecture."""

    alpha_entropy: float
    alpha_entropy_fraction: float
    beta_entropy: float
    beta_entropy_fraction: float
    path_log_prob: float
    path_log_ratio: float
    probability_path: str
    ratio_path: str
    parameter_free_share: float

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class CellDiagnostics:
    """Movement of the op distribution and content of the decoded cell (a search of the cell
    alone, on a fixed path)."""

    alpha_entropy: float
    alpha_entropy_fraction: float
    parameter_free_share: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def parameter_free_share(genotype: Genotype) -> float:
    """Share of the decoded cell's operations that are pooling or ``skip_connect``."""
    ops = [op for block in genotype.cell for _, op in block]
    return sum(op in PARAMETER_FREE_OPS for op in ops) / len(ops)


def arch_diagnostics(
    alpha_logits: np.ndarray,
    beta_logits: np.ndarray,
    used_nodes: np.ndarray,
    genotype: Genotype | None = None,
) -> ArchDiagnostics:
    """Diagnostics of alpha logits ``(E, 8)`` and beta logits ``(L, 4, 3)``.

    ``used_nodes: (L, 4)`` marks the trellis nodes whose move distribution takes part in the
    forward pass; ``genotype`` defaults to the one decoded from the logits.
    """
    probs = decode.transition_probs(beta_logits)  # (L, 4, 3), invalid moves 0
    used = np.asarray(used_nodes, dtype=bool)
    if used.shape != probs.shape[:2] or not used.any():
        raise ValueError(
            f"used_nodes must be a boolean (L, {space.NUM_LEVELS}) array with at least one True "
            f"entry matching betas {probs.shape}, got shape {used.shape}"
        )
    if genotype is None:
        genotype = decode.decode_genotype(alpha_logits, beta_logits)
    cell = cell_diagnostics(alpha_logits, genotype)
    valid = np.array(space.valid_move_mask()).sum(axis=1)  # (4,) valid moves per level
    h_beta = decode.entropy(probs)[used]
    h_beta_max = np.broadcast_to(np.log(valid), used.shape)[used]
    return ArchDiagnostics(
        alpha_entropy=cell.alpha_entropy,
        alpha_entropy_fraction=cell.alpha_entropy_fraction,
        beta_entropy=float(h_beta.mean()),
        beta_entropy_fraction=float(h_beta.mean() / h_beta_max.mean()),
        path_log_prob=decode.path_log_prob(beta_logits, genotype.path),
        path_log_ratio=decode.path_log_ratio(beta_logits, genotype.path),
        probability_path=path_string(decode.decode_path(beta_logits, "probability")),
        ratio_path=path_string(decode.decode_path(beta_logits, "ratio")),
        parameter_free_share=cell.parameter_free_share,
    )


def cell_diagnostics(alpha_logits: np.ndarray, genotype: Genotype) -> CellDiagnostics:
    """The alpha figures of alpha logits ``(E, O)`` (entropy over its maximum ``log O``) and
    the parameter-free share of ``genotype``'s cell."""
    alpha = decode.cell_weights(alpha_logits)  # (E, O)
    h_alpha = float(decode.entropy(alpha).mean())
    return CellDiagnostics(
        alpha_entropy=h_alpha,
        alpha_entropy_fraction=h_alpha / math.log(alpha.shape[-1]),
        parameter_free_share=parameter_free_share(genotype),
    )


@dataclass(frozen=True)
class DintsDiagnostics:
    """Movement of the DiNTS distributions and content of the decoded multi-path genotype."""

    alpha_entropy: float
    alpha_entropy_fraction: float
    path_entropy: float
    path_entropy_fraction: float
    topology_log_prob: float
    active_transitions: int
    parameter_free_share: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def binary_entropy(logits: np.ndarray) -> np.ndarray:
    """``-p log p - (1 - p) log(1 - p)`` of ``p = sigmoid(logits)``, finite at any logit."""
    a = np.asarray(logits, dtype=np.float64)
    log_p, log_q = -np.logaddexp(0.0, -a), -np.logaddexp(0.0, a)
    return -(np.exp(log_p) * log_p + np.exp(log_q) * log_q)


def dints_diagnostics(
    alpha_logits: np.ndarray, path_logits: np.ndarray, genotype: Genotype | None = None
) -> DintsDiagnostics:
    """Diagnostics of alpha logits ``(E, 8)`` and DiNTS transition logits ``(L, 4, 3)`` (only
    the entries that are transitions are read); ``genotype`` defaults to the decoded cell on
    the decoded topology."""
    path_logits = np.asarray(path_logits, dtype=np.float64)
    if genotype is None:
        genotype = Genotype(
            cell=decode.decode_cell(alpha_logits), topology=topology.decode_topology(path_logits)
        )
    used = np.asarray(space.SearchSpace(layers=path_logits.shape[0]).used_transition_mask())
    cell = cell_diagnostics(alpha_logits, genotype)
    h_path = float(binary_entropy(path_logits[used]).mean())
    return DintsDiagnostics(
        alpha_entropy=cell.alpha_entropy,
        alpha_entropy_fraction=cell.alpha_entropy_fraction,
        path_entropy=h_path,
        path_entropy_fraction=h_path / math.log(2.0),
        topology_log_prob=topology.topology_log_prob(path_logits, genotype.topology),
        active_transitions=sum(len(t) for t in genotype.topology.layers),
        parameter_free_share=cell.parameter_free_share,
    )


def model_diagnostics(model: Any) -> dict[str, float]:
    """The diagnostics of a :class:`~autodeeplab.supernet.SearchNetwork`'s relaxation
    (:func:`arch_diagnostics` for the paper's, :func:`dints_diagnostics` for DiNTS)."""
    return model.relaxation.diagnostics(model.arch_state(), model.genotype())


# ---------------------------------------------------------------------------- warnings
NOISE_Z_MEAN = math.sqrt(2.0 / math.pi)
"""Mean of ``|z|`` for zero-mean noise (half-normal): about 0.80; 4.6 % of entries exceed 2."""


def gradient_signal(
    total: np.ndarray | Any, total_sq: np.ndarray | Any, steps: int
) -> tuple[float, float] | None:
    """``(mean |z|, share of |z| > 2)`` of the alpha gradient over ``steps`` architecture steps.

    ``total`` and ``total_sq`` are the sums over the steps of the gradient and of its square,
    entry by entry, each gradient taken relative to the mean of its edge's row (only the
    differences between an edge's logits change its softmax). ``z = mean / standard error`` of
    an entry: ``|z|`` averages :data:`NOISE_Z_MEAN` (0.80) when the gradients are zero-mean
    noise, and Adam's steps then only random-walk the logits (about ``lr * sqrt(steps)``);
    well above it, the steps add up (about ``lr * steps``) in the direction the data favours.
    None with fewer than 2 steps; entries whose gradient never varied are left out.
    """
    if steps < 2:
        return None
    total = np.asarray(total, dtype=np.float64)
    mean = total / steps
    var = (np.asarray(total_sq, dtype=np.float64) - steps * mean**2) / (steps - 1)
    se = np.sqrt(np.clip(var, 0.0, None) / steps)
    ok = se > 0
    if not ok.any():
        return None
    z = np.abs(mean[ok]) / se[ok]
    return float(z.mean()), float((z > 2).mean())


def stagnation_warning(record: Mapping[str, Any]) -> str | None:
    """A warning for the final ``epoch`` record of a search (``metrics.jsonl``) whose
    architecture distribution has barely moved, saying what to try; None when it moved (or
    when the record predates these figures)."""
    steps = record.get("arch_steps")
    if steps == 0:
        return (
            "no architecture step was taken (the architecture phase starts after the last "
            "epoch), so the genotype is decoded from the random initial logits; lower "
            "arch_start_epoch or set arch_start_fraction"
        )
    flat = [
        f"{name} entropy {100 * value:.2f} %"
        for name, key in (
            ("alpha", "alpha_entropy_fraction"),
            ("beta", "beta_entropy_fraction"),
            ("path", "path_entropy_fraction"),
        )
        if isinstance(value := record.get(key), int | float) and value > STAGNANT_FRACTION
    ]
    if not flat:
        return None
    after = f"after {steps} architecture steps " if isinstance(steps, int) else ""
    if "path_entropy_fraction" in record:  # DiNTS: its own entropy terms sharpen the choice
        sharpen = (
            "raise optim.arch_lr or the entropy terms' weights (relaxation.path_entropy_weight, "
            "relaxation.op_entropy_weight)"
        )
    else:
        sharpen = (
            "raise optim.arch_lr together with a collapse guard (arch_regularizer.name="
            "beta_decay or aux_skip.schedule=linear)"
        )
    return (
        f"the architecture distribution has barely moved: {after}the "
        f"{' and '.join(flat)} of the maximum (above {100 * STAGNANT_FRACTION:.0f} %), so the "
        "decoded genotype rests largely on the random initial logits and batch noise. Give the "
        "search more architecture steps (more epochs, an earlier arch_start_fraction, "
        f"arch_steps_per_step > 1), or {sharpen} and check the share of parameter-free "
        f"operations of the result{_signal_advice(record.get('alpha_grad_z'))}"
    )


SIGNAL_Z_MEAN = 1.25
"""Mean ``|z|`` of the alpha gradient (:func:`gradient_signal`) above which the last epoch's
architecture gradients are read as signal rather than noise (noise gives
:data:`NOISE_Z_MEAN`, 0.80; the synthetic search measured 1.04 over 96 steps at the paper's
learning rate, where nothing moved, and 2.06 over 288 steps, where the distribution moved)."""


def _signal_advice(z: Any) -> str:
    """Which remedy the gradient signal of the last epoch supports ('' without the figure)."""
    if not isinstance(z, int | float) or not math.isfinite(z):
        return ""
    if z < SIGNAL_Z_MEAN:
        return (
            f". The alpha gradients of the last epoch are close to noise (mean |z| {z:.2f}; "
            f"zero-mean noise gives {NOISE_Z_MEAN:.2f}): a larger arch_lr alone would only make "
            "the logits random-walk faster, more architecture steps average the noise out"
        )
    return (
        f". The alpha gradients of the last epoch carry a signal (mean |z| {z:.2f}; zero-mean "
        f"noise gives {NOISE_Z_MEAN:.2f}): their steps add up, so a larger optim.arch_lr moves "
        "the distribution"
    )


def mean_gradient_signal(
    epochs: Sequence[Mapping[str, Any]], key: str = "alpha_grad_z"
) -> tuple[float, int] | None:
    """The mean of the epochs' ``key`` (``alpha_grad_z``, ``beta_grad_z``: the gradient signal
    of :func:`gradient_signal`) over the epochs that have a finite one (those with architecture
    steps), and their number; None when no epoch has one."""
    zs = [float(z) for e in epochs if isinstance(z := e.get(key), int | float) and math.isfinite(z)]
    return (sum(zs) / len(zs), len(zs)) if zs else None


def noise_warning(epochs: Sequence[Mapping[str, Any]]) -> str | None:
    """A warning for a search whose alpha gradients pushed the logits in no consistent
    direction: the mean over its epochs with architecture steps of their ``alpha_grad_z``
    (:func:`gradient_signal`) below :data:`SIGNAL_Z_MEAN`, however far the logits moved.

    Near :data:`NOISE_Z_MEAN` (0.80) the gradients behave like zero-mean noise and the logits
    random-walk; well below it successive gradients cancel (the logits swing around a balance
    of the mixture, where the gradient changes sign as they move). Either way the decoded
    genotype rests on small differences between logits. None when the figure is above the
    threshold or missing (records written before it existed)."""
    signal = mean_gradient_signal(epochs)
    if signal is None:
        return None
    mean, count = signal
    if mean >= SIGNAL_Z_MEAN:
        return None
    if mean < 0.7:
        reading = "below what zero-mean noise gives: the logits swung around a balance"
    else:
        reading = "about what zero-mean noise gives: the logits mostly random-walked"
    return (
        f"the architecture gradients pushed the logits in no consistent direction: their mean "
        f"|z| over the {count} epoch(s) with architecture steps was {mean:.2f} "
        f"(zero-mean noise gives {NOISE_Z_MEAN:.2f}, a consistent push about "
        f"{SIGNAL_Z_MEAN:.2f} or more), {reading}. The decoded genotype then rests on small "
        "differences between logits and on the relaxation's own leanings: check how many "
        "epochs it held (summary.json, convergence) and whether it beats random "
        "architectures (autodeeplab study). More architecture samples help against noise "
        "(more images per epoch, more epochs), perturbation-based selection "
        "(selection.name=perturbation) against a balanced mixture; a larger arch_lr helps "
        "against neither"
    )


def last_miou(epochs: Sequence[Mapping[str, Any]]) -> float | None:
    """The supernet mIoU of the last epoch record that has one (None: never evaluated): what
    the paper's rule compares between searches."""
    return next((float(h["mIoU"]) for h in reversed(epochs) if h.get("mIoU") is not None), None)


def end_of_search_warning(epochs: Sequence[Mapping[str, Any]]) -> str | None:
    """The warning a finished search gives from its ``epoch`` records: that its distribution
    barely moved (:func:`stagnation_warning`, from the last record), else that its gradients
    were mostly noise (:func:`noise_warning`); then, joined to it, that the two path rules
    disagree (:func:`path_rule_warning`). None without records or concerns."""
    if not epochs:
        return None
    distribution = stagnation_warning(epochs[-1]) or noise_warning(epochs)
    found = [w for w in (distribution, path_rule_warning(epochs[-1])) if w]
    return ". Also, ".join(found) or None


def path_rule_warning(record: Mapping[str, Any]) -> str | None:
    """A warning for the final ``epoch`` record of a single-path search whose two path rules
    (:func:`autodeeplab.decode.decode_path`) give different paths; None where they agree or
    the record predates these figures.

    A node at the finest or the coarsest level has two valid moves, the others three, so under
    betas that learned little the most probable path is one that keeps to those levels (under
    untrained betas, the finest level all the way). Where the most probable path differs from
    the one whose probability rose most over uniform moves, that geometry, not the search
    alone, chose between them."""
    p, q = record.get("probability_path"), record.get("ratio_path")
    if not isinstance(p, str) or not isinstance(q, str) or p == q:
        return None
    return (
        f"the network path rests on the trellis more than on the search: the most probable "
        f"path is {p}, the path whose probability rose most over uniform moves is {q}. Nodes "
        "at the finest and coarsest levels have two moves and the others three, so betas "
        "that learned little make paths along those levels the most probable. The run decodes "
        "with relaxation.path_decoding (probability: the paper's rule); `autodeeplab decode "
        "RUN --path-decoding ratio` (or probability) reads the other path, and a study "
        "(autodeeplab study) tells which retrains better on your data"
    )


def describe(diagnostics: Mapping[str, Any], arch_steps: int, genotype: Genotype) -> str:
    """The architecture part of a search's epoch line (the figures ``diagnostics`` has)."""
    d = diagnostics
    parts = [f"H(alpha) {d['alpha_entropy']:.4f} ({100 * d['alpha_entropy_fraction']:.2f}% of max)"]
    if "beta_entropy" in d:
        parts.append(f"H(beta) {d['beta_entropy']:.4f} ({100 * d['beta_entropy_fraction']:.2f}%)")
    if "path_entropy" in d:
        parts.append(f"H(path) {d['path_entropy']:.4f} ({100 * d['path_entropy_fraction']:.2f}%)")
    if "path_log_prob" in d:
        parts.append(f"log P(path) {d['path_log_prob']:.3f}")
    if d.get("path_log_ratio") is not None:
        parts.append(f"log P/P0 {d['path_log_ratio']:+.3f}")
    if "topology_log_prob" in d:
        parts.append(f"log P(topology) {d['topology_log_prob']:.3f}")
    if "active_transitions" in d:
        parts.append(f"transitions {d['active_transitions']}")
    if d.get("memory_fraction") is not None:
        parts.append(f"memory {100 * d['memory_fraction']:.1f}% of all-on")
    parts.append(f"parameter-free {100 * d['parameter_free_share']:.0f}%")
    note = (
        " (no architecture step yet: decoded from the initial random logits)"
        if arch_steps == 0
        else ""
    )
    return f"{' '.join(parts)} arch steps {arch_steps} {genotype}{note}"


# ---------------------------------------------------------------------------- convergence
def convergence(epochs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """How settled a finished search's result is, from its ``epoch`` records (``metrics.jsonl``
    or ``SearchResult.history``, in order); None without records.

    * ``arch_steps`` / ``arch_epochs``: architecture steps taken, epochs that took any;
    * ``alpha_entropy_fraction``, ``parameter_free_share``: the final record's;
    * ``path_entropy_fraction``: the final entropy of the network-level choice over its maximum
      (the betas' moves; DiNTS: its transitions);
    * ``path_probability``: the probability of the decoded path (DiNTS: topology) under the
      final distribution;
    * ``path_log_ratio``, ``probability_path``, ``ratio_path``: the final record's (single-path
      relaxations): what the search added to the decoded path's log probability, and the
      paths of the two path rules;
    * ``stable_cell_epochs`` / ``stable_path_epochs``: the number of epochs, counted back from
      the last, whose decoded cell / network-level path equals the final one (1: it changed at
      the last epoch), among the epochs with architecture steps (before the first step the
      decoded genotype is the initial logits' argmax); ``stable_path_epochs`` is None for a
      search on a fixed path;
    * ``fixed_path``: the path of a search of the cell alone (None for a path search);
    * ``previous_cell_agreement``: the share of the final cell's branches (input and operation)
      that the same block of the cell decoded one epoch earlier had too (None with fewer than two
      such epochs): a whole cell that changed in the last epoch may have changed in one branch
      or in all;
    * ``alpha_grad_z`` / ``beta_grad_z``: the mean over the epochs with architecture steps of
      their gradient signal (:func:`gradient_signal`; 0.80 is what noise gives): whether the
      decoded cell and path rest on a consistent push of the data or on a random walk.

    Figures a record lacks (records written before they existed) are None.
    """
    if not epochs:
        return None
    last = epochs[-1]

    def first(*keys: str) -> Any:
        return next((last[k] for k in keys if last.get(k) is not None), None)

    log_prob = first("path_log_prob", "topology_log_prob")
    searched = [e for e in epochs if e.get("arch_steps", 1) > 0 and e.get("genotype")]
    genotypes = [Genotype.from_string(e["genotype"]) for e in searched]

    def stable(part: Any) -> int | None:
        if not genotypes:
            return None
        final, count = part(genotypes[-1]), 0
        for g in reversed(genotypes):
            if part(g) != final:
                break
            count += 1
        return count

    agreement = None
    if len(genotypes) >= 2:
        final, before = genotypes[-1].cell, genotypes[-2].cell
        kept = sum((Counter(x) & Counter(y)).total() for x, y in zip(final, before, strict=True))
        agreement = kept / sum(len(x) for x in final)

    def mean_signal(key: str) -> float | None:
        signal = mean_gradient_signal(searched, key)
        return None if signal is None else signal[0]

    return {
        "arch_steps": last.get("arch_steps"),
        "arch_epochs": len(searched),
        "alpha_entropy_fraction": last.get("alpha_entropy_fraction"),
        "path_entropy_fraction": first("beta_entropy_fraction", "path_entropy_fraction"),
        "path_probability": None if log_prob is None else math.exp(log_prob),
        "path_log_ratio": last.get("path_log_ratio"),
        "probability_path": last.get("probability_path"),
        "ratio_path": last.get("ratio_path"),
        "parameter_free_share": last.get("parameter_free_share"),
        "stable_cell_epochs": stable(lambda g: g.cell),
        "stable_path_epochs": None if last.get("fixed_path") else stable(lambda g: g.topology),
        "fixed_path": last.get("fixed_path"),
        "previous_cell_agreement": agreement,
        "alpha_grad_z": mean_signal("alpha_grad_z"),
        "beta_grad_z": mean_signal("beta_grad_z"),
    }
