"""The DiNTS relaxation (He et al., CVPR 2021): independent sigmoid transitions, multi-path
topologies.

Parameters (the supernet registers them under these names):

* ``alphas (E, O)``: cell operations, ``softmax`` over the operations of every edge (as in the
  paper's relaxation);
* ``path_logits (L, 4, 3)``: one logit ``a_e`` per trellis transition, in the beta layout
  (``a[l, s, m]``: from level ``s`` of layer ``l - 1`` to level ``s + m - 1`` of layer ``l``);
  entries that are no transition are never read and get no gradient. The name differs from
  ``betas`` on purpose: tools that read per-node softmax betas must not take these for them.

Both are initialised ``N(0, 1) x 1e-3`` (every transition starts at ``p = 1/2``).

The supernet mixes each transition with its *marginal* probability of being on under the
layer's pattern distribution (:func:`autodeeplab.topology.transition_marginals`):
``p_e / (1 - prod_f (1 - p_f))`` over the transitions ``f`` of the same layer. Decoding is
topology guaranteed (:func:`autodeeplab.topology.decode_topology`) and gives a multi-path
:class:`~autodeeplab.genotype.Genotype`. Extra loss terms
(:meth:`DintsRelaxation.regularizer`): ``path_entropy``, ``op_entropy``, ``topology``;
:meth:`DintsRelaxation.search_loss` weights them with a warm-up ramp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autodeeplab import decode, space, topology
from autodeeplab.diagnostics import dints_diagnostics
from autodeeplab.genotype import Genotype
from autodeeplab.relaxation import ArchParams, Relaxation, _get, _numpy


class DintsRelaxation(Relaxation):
    """DiNTS' path relaxation with the per-edge operation softmax.

    Args:
        search_space: the space the supernet searches.
        path_entropy_weight, op_entropy_weight, topology_weight: weights of the three extra
            loss terms in :meth:`search_loss` once fully ramped up.
        warmup: share of the search (progress in [0, 1]) before the extra terms start; their
            weight then grows linearly to its full value at progress 1.
    """

    independent_transitions = True

    def __init__(
        self,
        search_space: space.SearchSpace,
        *,
        path_entropy_weight: float = 1.0,
        op_entropy_weight: float = 1.0,
        topology_weight: float = 1.0,
        warmup: float = 0.5,
    ) -> None:
        super().__init__(search_space)
        for name, value in (
            ("path_entropy_weight", path_entropy_weight),
            ("op_entropy_weight", op_entropy_weight),
            ("topology_weight", topology_weight),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {warmup!r}")
        self.weights = {
            "path_entropy": float(path_entropy_weight),
            "op_entropy": float(op_entropy_weight),
            "topology": float(topology_weight),
        }
        self.warmup = float(warmup)

    # ------------------------------------------------------------------ parameters
    def init_parameters(self) -> dict[str, nn.Parameter | None]:
        sp = self.space
        alphas = nn.Parameter(1e-3 * torch.randn(sp.num_edges, sp.num_ops))
        logits = 1e-3 * torch.randn(sp.layers, space.NUM_LEVELS, space.NUM_MOVES)
        return {"alphas": alphas, "path_logits": nn.Parameter(logits)}

    @cached_property
    def _layer_index(self) -> tuple[torch.Tensor, ...]:
        """Flat indices into ``(L, 4, 3)`` of each layer's transitions, in pattern-bit order."""
        return tuple(
            torch.tensor(
                [
                    (layer * space.NUM_LEVELS + s) * space.NUM_MOVES + space.move_between(s, d)
                    for s, d in topology.layer_transitions(layer)
                ]
            )
            for layer in range(self.space.layers)
        )

    def _layer_logits(self, params: ArchParams) -> list[torch.Tensor]:
        flat = _get(params, "path_logits").reshape(-1)
        return [flat[idx.to(flat.device)] for idx in self._layer_index]

    @staticmethod
    def _log_normaliser(a: torch.Tensor) -> torch.Tensor:
        """``log(1 - prod(1 - sigmoid(a)))`` as ``logsumexp_k [log p_k + sum_{j<k} log(1 -
        p_j)]`` (first transition on is ``k``): finite for any finite logits."""
        off = F.logsigmoid(-a)
        before = torch.cumsum(off, 0) - off  # sum over j < k
        return torch.logsumexp(F.logsigmoid(a) + before, 0)

    # ------------------------------------------------------------------ weights
    def op_weights(self, params: ArchParams) -> torch.Tensor:
        return F.softmax(_get(params, "alphas"), dim=-1)

    def edge_probs(self, params: ArchParams) -> torch.Tensor:
        """Independent activation probabilities ``sigmoid(a)`` ``(L, 4, 3)`` (0 off the trellis)."""
        logits = _get(params, "path_logits")
        mask = torch.tensor(self.space.used_transition_mask(), device=logits.device)
        return torch.sigmoid(logits).masked_fill(~mask, 0.0)

    def transition_weights(self, params: ArchParams) -> torch.Tensor:
        """Marginal probability that each transition is on, excluding the all-off pattern of its
        layer: ``p_e / (1 - prod_f (1 - p_f))``, ``(L, 4, 3)``, 0 off the trellis."""
        logits = _get(params, "path_logits")
        flat = torch.zeros(logits.numel(), dtype=logits.dtype, device=logits.device)
        for a, idx in zip(self._layer_logits(params), self._layer_index, strict=True):
            marg = torch.exp(F.logsigmoid(a) - self._log_normaliser(a))
            flat = flat.index_put((idx.to(flat.device),), marg)
        return flat.view_as(logits)

    @cached_property
    def _pattern_bits(self) -> tuple[torch.Tensor, ...]:
        """Per layer, ``(2^T - 1, T)`` bool: which transitions each pattern turns on."""
        return tuple(
            torch.tensor(topology.layer_patterns(layer).bits.copy())
            for layer in range(self.space.layers)
        )

    def pattern_log_probs(self, params: ArchParams) -> list[torch.Tensor]:
        """Per layer, the log probability of every non-empty pattern (order of
        :func:`autodeeplab.topology.layer_patterns`), ``(2^T - 1,)``."""
        out = []
        for a, bits in zip(self._layer_logits(params), self._pattern_bits, strict=True):
            on, off = F.logsigmoid(a), F.logsigmoid(-a)
            out.append(torch.where(bits.to(a.device), on, off).sum(dim=1) - self._log_normaliser(a))
        return out

    # ------------------------------------------------------------------ loss terms
    @property
    def regularizers(self) -> tuple[str, ...]:
        return ("path_entropy", "op_entropy", "topology")

    def regularizer(self, name: str, params: ArchParams) -> torch.Tensor:
        """``path_entropy``: mean binary entropy ``-p log p - (1 - p) log(1 - p)`` of the
        transitions' ``p = sigmoid(a)``; ``op_entropy``: mean entropy of the operation softmax
        of every edge; ``topology``: the consistency term of :meth:`topology_term`. All in nats,
        0 when the architecture is decided."""
        if name == "path_entropy":
            a = torch.cat(self._layer_logits(params))
            p = torch.sigmoid(a)
            # -p log p - (1-p) log(1-p) with log(p) = logsigmoid(a): finite at any logit
            return -(p * F.logsigmoid(a) + (1 - p) * F.logsigmoid(-a)).mean()
        if name == "op_entropy":
            logp = F.log_softmax(_get(params, "alphas"), dim=-1)
            return -(logp.exp() * logp).sum(dim=-1).mean()
        if name == "topology":
            return self.topology_term(params)
        return super().regularizer(name, params)

    def topology_term(self, params: ArchParams) -> torch.Tensor:
        """Topology consistency, summed over consecutive layers ``(l, l + 1)`` and over every set
        ``N`` of levels: the binary cross-entropy ``-(q log r + (1 - q) log(1 - r))`` of ``q =
        P(layer l activates exactly N)`` against ``r = P(layer l + 1 reads exactly N)``. It is
        small when what a layer activates and what the next layer reads agree, which a decoded
        (feasible) topology requires. ``log r`` and ``log(1 - r)`` are log-sum-exps of pattern
        log probabilities, so no constant is added inside the logarithms."""
        logp = self.pattern_log_probs(params)
        total = _get(params, "path_logits").new_zeros(())
        for layer, groups in enumerate(self._consistency_groups):
            lp, lc = logp[layer], logp[layer + 1]
            for produced, read in groups:
                q = torch.exp(torch.logsumexp(lp[produced.to(lp.device)], 0))
                read = read.to(lc.device)
                log_r = torch.logsumexp(lc[read], 0)
                log_not_r = torch.logsumexp(lc[~read], 0)
                total = total - (q * log_r + (1 - q) * log_not_r)
        return total

    @cached_property
    def _consistency_groups(self) -> tuple[tuple[tuple[torch.Tensor, torch.Tensor], ...], ...]:
        """Per pair of layers ``(l, l + 1)`` and per set of levels ``N``: the patterns of ``l``
        that activate exactly ``N`` and those of ``l + 1`` that read exactly ``N`` (bool masks).
        """
        out = []
        for layer in range(self.space.layers - 1):
            produce, consume = topology.layer_patterns(layer), topology.layer_patterns(layer + 1)
            states = sorted(set(produce.dst_mask.tolist()))
            # every set a layer can activate is a set the next layer can read, and vice versa
            assert states == sorted(set(consume.src_mask.tolist())), layer
            out.append(
                tuple(
                    (
                        torch.tensor(produce.dst_mask == state),
                        torch.tensor(consume.src_mask == state),
                    )
                    for state in states
                )
            )
        return tuple(out)

    def ramp(self, progress: float) -> float:
        """Share of the full weights at ``progress`` in [0, 1]: 0 until ``warmup``, then linear
        to 1 at progress 1."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress!r}")
        return max(0.0, (progress - self.warmup) / (1.0 - self.warmup))

    def search_terms(self, params: ArchParams) -> dict[str, torch.Tensor]:
        """The three terms of :meth:`regularizer` by name, unweighted."""
        return {name: self.regularizer(name, params) for name in self.weights}

    def term_weights(self, progress: float) -> dict[str, float]:
        """``ramp(progress) * weight`` of every term."""
        share = self.ramp(progress)
        return {name: share * weight for name, weight in self.weights.items()}

    def search_loss(self, params: ArchParams, progress: float) -> torch.Tensor:
        """``ramp(progress) * sum_k weight_k * term_k`` over the three terms (to add to the
        architecture loss; the memory budget is a separate term, see
        :class:`autodeeplab.budget.MemoryBudget`)."""
        share = self.ramp(progress)
        total = _get(params, "path_logits").new_zeros(())
        if share == 0.0:
            return total
        for name, weight in self.weights.items():
            if weight:
                total = total + weight * self.regularizer(name, params)
        return share * total

    # ------------------------------------------------------------------ decoding
    def decode_topology(self, params: ArchParams) -> topology.Topology:
        """The most probable feasible multi-path topology
        (:func:`autodeeplab.topology.decode_topology`)."""
        return topology.decode_topology(_get(params, "path_logits").detach().cpu().double().numpy())

    def decode(self, params: ArchParams) -> Genotype:
        """The decoded cell on the most probable feasible topology (:meth:`decode_topology`):
        a multi-path :class:`Genotype` (``path`` is ``None``), or a single-path one when the
        decoded topology has one active node per layer."""
        alphas = _get(params, "alphas").detach().cpu().double().numpy()
        return Genotype(
            cell=decode.decode_cell(alphas, self.space.ops), topology=self.decode_topology(params)
        )

    def distribution(self, params: ArchParams) -> dict[str, np.ndarray]:
        """``ops``: the op softmax ``(E, O)``; ``transitions``: the independent on-probability
        of every transition ``(L, 4, 3)`` (:meth:`edge_probs`, 0 off the trellis)."""
        with torch.no_grad():
            return {
                "ops": _numpy(self.op_weights(params)),
                "transitions": _numpy(self.edge_probs(params)),
            }

    def decode_distribution(self, dist: Mapping[str, np.ndarray]) -> Genotype:
        """The cell of the op weights and the most probable feasible topology
        (:func:`topology.decode_topology`) of the logits of the on-probabilities."""
        p = np.asarray(dist["transitions"], dtype=np.float64)
        mask = np.asarray(self.space.used_transition_mask())
        if p.shape != mask.shape or ((p[mask] <= 0) | (p[mask] >= 1)).any():
            raise ValueError(
                f"transition probabilities must have shape {mask.shape} and lie strictly "
                "between 0 and 1 on the trellis"
            )
        on = np.where(mask, p, 0.5)
        logits = np.log(on) - np.log1p(-on)
        return Genotype(
            cell=decode.decode_cell_weights(dist["ops"], self.space.ops),
            topology=topology.decode_topology(logits),
        )

    def diagnostics(self, params: ArchParams, genotype: Genotype) -> dict[str, float]:
        """:func:`autodeeplab.diagnostics.dints_diagnostics` of the alphas and path logits."""
        return dints_diagnostics(
            _get(params, "alphas").detach().cpu().double().numpy(),
            _get(params, "path_logits").detach().cpu().double().numpy(),
            genotype,
        ).to_dict()
