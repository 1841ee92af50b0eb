"""Continuous relaxations of the search space: how architecture parameters become the weights
the supernet mixes with, which extra loss terms they carry, and how a discrete architecture is
read back from them.

A :class:`Relaxation` defines the architecture parameters of one
:class:`~autodeeplab.space.SearchSpace` (names, shapes, initialisation) and everything computed
from them; it holds no tensors itself. The supernet creates the parameters once with
:meth:`Relaxation.init_parameters` and registers them under those names (so they live in its
``state_dict`` under those keys, and ``torch.func.functional_call``, ``.to()``, copies and
distributed wrappers treat them like any other parameter). In every forward pass it hands the
current tensors, by name, to :meth:`Relaxation.op_weights`, :meth:`Relaxation.edge_weights` and
:meth:`Relaxation.transition_weights`; it decodes with :meth:`Relaxation.decode`, and the search
engine adds :meth:`Relaxation.regularizer` terms through :mod:`autodeeplab.collapse`. Nothing
outside this module knows how the weights are normalised.

:class:`SoftmaxRelaxation` is the paper's (the default): a softmax over the operations of every
edge, a softmax over the valid outgoing moves of every trellis node, Viterbi path decoding, and
optionally PC-DARTS edge normalisation. :class:`GumbelRelaxation` (GDAS) has the same
parameters and decoding but samples one operation per edge in every training forward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autodeeplab import decode, space
from autodeeplab.diagnostics import arch_diagnostics, cell_diagnostics
from autodeeplab.genotype import Genotype, path_string

ArchParams = Mapping[str, torch.Tensor | None]
"""The architecture tensors by parameter name (``None``: a disabled parameter)."""


class Relaxation(ABC):
    """How the architecture parameters of a search space weight the supernet and decode."""

    independent_transitions: bool = False
    """Whether the transitions are on or off independently of each other (:meth:`edge_probs`),
    which an expected-memory budget needs."""

    def __init__(self, search_space: space.SearchSpace) -> None:
        self.space = search_space

    @abstractmethod
    def init_parameters(self) -> dict[str, nn.Parameter | None]:
        """Fresh parameters by the name the supernet registers them under (``None``: a name
        that is registered empty, e.g. a disabled option, so that the attribute exists)."""

    @abstractmethod
    def op_weights(self, params: ArchParams) -> torch.Tensor:
        """Mixing weights of the operations on every cell edge, ``(E, O)``: the relaxation's
        deterministic weights (a sampling relaxation: the distribution it samples from)."""

    def forward_op_weights(
        self, params: ArchParams, training: bool, arch_progress: float
    ) -> torch.Tensor:
        """The op weights ``(E, O)`` one forward pass of the supernet mixes with.
        ``training``: the supernet is in training mode; ``arch_progress``: the share of the
        architecture steps done, in [0, 1]. :meth:`op_weights` unless the relaxation samples
        (:class:`GumbelRelaxation`)."""
        return self.op_weights(params)

    def schedule_state(self, arch_progress: float) -> dict[str, float]:
        """The relaxation's own schedule values at ``arch_progress``, for the search's epoch
        records (empty for a relaxation without a schedule)."""
        return {}

    def edge_weights(self, params: ArchParams) -> torch.Tensor | None:
        """Scale of every whole cell edge, ``(E,)``, or ``None`` (no edge weighting)."""
        return None

    @abstractmethod
    def transition_weights(self, params: ArchParams) -> torch.Tensor:
        """Weight of every trellis transition, ``(L, 4, 3)`` indexed like the betas; entries that
        are not transitions (see :meth:`SearchSpace.used_transition_mask`) are never read."""

    @property
    def regularizers(self) -> tuple[str, ...]:
        """Names accepted by :meth:`regularizer`."""
        return ()

    def regularizer(self, name: str, params: ArchParams) -> torch.Tensor:
        """The extra architecture-loss term ``name`` (unweighted, differentiable in the
        architecture parameters); an unknown name raises ``ValueError`` listing the valid ones."""
        raise ValueError(
            f"{type(self).__name__} has no regularizer {name!r}; valid: "
            f"{', '.join(self.regularizers) or 'none'}"
        )

    def search_terms(self, params: ArchParams) -> dict[str, torch.Tensor]:
        """The relaxation's own architecture-loss terms by name, unweighted (differentiable
        scalars); :meth:`search_loss` weights them. None by default."""
        return {}

    def term_weights(self, progress: float) -> dict[str, float]:
        """Weight of every term of :meth:`search_terms` when a share ``progress`` in [0, 1] of
        the architecture steps is done."""
        return {}

    def search_loss(self, params: ArchParams, progress: float) -> torch.Tensor | None:
        """``sum_k term_weights(progress)[k] * search_terms(params)[k]``, to add to the
        architecture loss; ``None`` for a relaxation without terms."""
        weights = self.term_weights(progress)
        if not weights:
            return None
        terms = self.search_terms(params)
        total = None
        for name, weight in weights.items():
            total = weight * terms[name] if total is None else total + weight * terms[name]
        return total

    def edge_probs(self, params: ArchParams) -> torch.Tensor | None:
        """Independent on-probabilities of the trellis transitions ``(L, 4, 3)`` (what a memory
        budget takes the expectation over), or ``None`` where the transitions are not
        independent of each other (a softmax over the moves of a node)."""
        return None

    def diagnostics(self, params: ArchParams, genotype: Genotype) -> dict[str, float]:
        """How far the distribution has moved and what ``genotype`` (decoded from ``params``)
        holds, for the search's epoch records (see :mod:`autodeeplab.diagnostics`)."""
        return {}

    @abstractmethod
    def decode(self, params: ArchParams) -> Genotype:
        """The discrete architecture the parameters stand for."""

    def distribution(self, params: ArchParams) -> dict[str, np.ndarray]:
        """The probabilities the parameters stand for, as float64 arrays by name: ``ops``, the
        op weights ``(E, O)`` of :meth:`op_weights`, and the relaxation's path probabilities.
        The element-wise mean of the distributions of several searches is again one
        (:mod:`autodeeplab.consensus`), which :meth:`decode_distribution` decodes. A relaxation
        that defines neither cannot take part in a consensus."""
        raise NotImplementedError(f"{type(self).__name__} defines no distribution()")

    def decode_distribution(self, dist: Mapping[str, np.ndarray]) -> Genotype:
        """The architecture a :meth:`distribution` (or a mean of several) stands for, by the
        rules of :meth:`decode`: the same genotype for the distribution of one search."""
        raise NotImplementedError(f"{type(self).__name__} defines no decode_distribution()")


class SoftmaxRelaxation(Relaxation):
    """The paper's relaxation.

    * ``alphas (E, O)``: ``softmax`` over the operations of every edge.
    * ``betas (L, 4, 3)``: ``softmax`` over the valid outgoing moves of every node; invalid
      entries are exactly 0 and receive no gradient.
    * ``edge_logits (E,)`` (``edge_normalisation=True``, PC-DARTS): ``softmax`` over the
      incoming edges of every block, scaling each whole edge.

    All initialised ``N(0, 1) x 1e-3``, in that order. Decoding: top-2 edges per block and the
    argmax op without ``none`` (:func:`decode.decode_cell`), the Viterbi path over the betas
    (:func:`decode.decode_path` with the rule ``path_decoding``: ``probability``, the paper's,
    or ``ratio``). Regularizer ``beta_decay`` (beta-DARTS): mean logsumexp of the
    op logits of every edge plus mean logsumexp over the valid moves of every node that feeds
    the next layer.

    In a search space with a fixed path (:attr:`SearchSpace.path`, a search of the cell alone)
    there are no betas: every transition of the path has weight 1, the path decodes as itself
    and ``beta_decay`` is the alpha term alone.
    """

    def __init__(
        self,
        search_space: space.SearchSpace,
        edge_normalisation: bool = False,
        path_decoding: str = "probability",
    ):
        super().__init__(search_space)
        decode.check_path_rule(path_decoding)
        if search_space.path is not None and path_decoding != "probability":
            raise ValueError(
                f"path_decoding={path_decoding!r} reads the path off the betas, and a search "
                "space with a fixed path has none"
            )
        self.edge_normalisation = edge_normalisation
        self.path_decoding = path_decoding

    def init_parameters(self) -> dict[str, nn.Parameter | None]:
        sp = self.space
        alphas = nn.Parameter(1e-3 * torch.randn(sp.num_edges, sp.num_ops))
        betas = (
            nn.Parameter(1e-3 * torch.randn(sp.layers, space.NUM_LEVELS, space.NUM_MOVES))
            if sp.path is None
            else None
        )
        edges = nn.Parameter(1e-3 * torch.randn(sp.num_edges)) if self.edge_normalisation else None
        return {"alphas": alphas, "betas": betas, "edge_logits": edges}

    def op_weights(self, params: ArchParams) -> torch.Tensor:
        return F.softmax(_get(params, "alphas"), dim=-1)

    @staticmethod
    def _masked_betas(params: ArchParams) -> tuple[torch.Tensor, torch.Tensor]:
        betas = _get(params, "betas")
        valid = torch.tensor(space.valid_move_mask(), device=betas.device)  # (4, 3)
        return betas.masked_fill(~valid, float("-inf")), valid  # invalid: no gradient

    def transition_weights(self, params: ArchParams) -> torch.Tensor:
        if self.space.path is not None:  # 1 on the path's transitions
            alphas = _get(params, "alphas")
            mask = self.space.used_transition_mask()
            return torch.tensor(mask, dtype=alphas.dtype, device=alphas.device)
        masked, valid = self._masked_betas(params)
        return F.softmax(masked, dim=-1).masked_fill(~valid, 0.0)

    def edge_weights(self, params: ArchParams) -> torch.Tensor | None:
        if not self.edge_normalisation:
            return None
        logits = _get(params, "edge_logits")
        parts = []
        for b in range(self.space.blocks):
            start = space.block_edge_offset(b)
            parts.append(F.softmax(logits[start : start + b + 2], dim=0))
        return torch.cat(parts)

    @property
    def regularizers(self) -> tuple[str, ...]:
        return ("beta_decay",)

    def regularizer(self, name: str, params: ArchParams) -> torch.Tensor:
        if name != "beta_decay":
            return super().regularizer(name, params)
        alpha_term = torch.logsumexp(_get(params, "alphas"), dim=-1).mean()
        if self.space.path is not None:
            return alpha_term
        masked, _ = self._masked_betas(params)
        mask = torch.tensor(self.space.used_transition_mask(), device=masked.device)
        used = mask.any(dim=-1)  # (L, 4): nodes with an outgoing transition
        beta_term = torch.logsumexp(masked, dim=-1)[used].mean()
        return alpha_term + beta_term

    def decode(self, params: ArchParams) -> Genotype:
        alphas = _get(params, "alphas").detach().cpu().double().numpy()
        return Genotype(cell=decode.decode_cell(alphas, self.space.ops), path=self._path(params))

    def _path(self, params: ArchParams) -> tuple[int, ...]:
        if self.space.path is not None:
            return self.space.path
        betas = _get(params, "betas").detach().cpu().double().numpy()
        return decode.decode_path(betas, self.path_decoding)

    def distribution(self, params: ArchParams) -> dict[str, np.ndarray]:
        """``ops``: the op softmax ``(E, O)``; ``moves``: the softmax over the valid moves of
        every node ``(L, 4, 3)`` (0 at invalid moves; with a fixed path, 1 on its transitions
        and 0 elsewhere)."""
        with torch.no_grad():
            return {
                "ops": _numpy(self.op_weights(params)),
                "moves": _numpy(self.transition_weights(params)),
            }

    def decode_distribution(self, dist: Mapping[str, np.ndarray]) -> Genotype:
        """The cell of the op weights (:func:`decode.decode_cell_weights`) and the Viterbi path
        of the move probabilities (:func:`decode.decode_path` of their logarithms, with the
        relaxation's rule); with a fixed path, that path."""
        moves = np.asarray(dist["moves"], dtype=np.float64)
        cell = decode.decode_cell_weights(dist["ops"], self.space.ops)
        if self.space.path is not None:
            if not np.array_equal(moves, np.asarray(self.space.used_transition_mask(), float)):
                raise ValueError(
                    f"the move probabilities are not those of the fixed path "
                    f"{path_string(self.space.path)}"
                )
            return Genotype(cell=cell, path=self.space.path)
        valid = np.asarray(space.valid_move_mask())
        if moves.ndim != 3 or moves.shape[1:] != valid.shape or (moves[:, valid] <= 0).any():
            raise ValueError(
                f"move probabilities must have shape (L, {valid.shape[0]}, {valid.shape[1]}) "
                "and be positive at every valid move"
            )
        logits = np.where(valid, np.log(np.where(valid, moves, 1.0)), 0.0)
        return Genotype(cell=cell, path=decode.decode_path(logits, self.path_decoding))

    def diagnostics(self, params: ArchParams, genotype: Genotype) -> dict[str, float]:
        """:func:`autodeeplab.diagnostics.arch_diagnostics` of the alphas and betas
        (:func:`~autodeeplab.diagnostics.cell_diagnostics` of the alphas and ``fixed_path``, the
        path's levels joined by ``-``, with a fixed path)."""
        if self.space.path is not None:
            alphas = _get(params, "alphas").detach().cpu().double().numpy()
            return {
                **cell_diagnostics(alphas, genotype).to_dict(),
                "fixed_path": path_string(self.space.path),
            }
        used = np.asarray(self.space.used_transition_mask()).any(axis=-1)
        return arch_diagnostics(
            _get(params, "alphas").detach().cpu().double().numpy(),
            _get(params, "betas").detach().cpu().double().numpy(),
            used,
            genotype,
        ).to_dict()


class GumbelRelaxation(SoftmaxRelaxation):
    """GDAS (Dong and Yang, CVPR 2019): every edge runs one sampled operation per training step.

    The parameters, the betas' softmax, the edge normalisation, the Beta-Decay regularizer and
    the decoding are the :class:`SoftmaxRelaxation`'s. Only the op weights of a forward pass in
    training mode differ: each edge ``e`` draws Gumbel noise ``g[e, o] = -log(-log u)``,
    ``u ~ U(0, 1)``, and uses the one-hot weights of ``argmax_o(alpha[e, o] + g[e, o])``, a
    sample of ``softmax(alpha[e])`` (the Gumbel-max trick). The alphas get their gradient from
    the straight-through estimator: the forward value is the one-hot sample, the backward pass
    that of ``softmax((alpha[e] + g[e]) / tau)``. The temperature ``tau`` falls linearly from
    ``tau_max`` to ``tau_min`` over the architecture steps (GDAS: 10 to 0.1).

    The weights see only the sampled operation of each edge (the others are multiplied by 0):
    the supernet trains one sampled cell per step instead of the mixture (GDAS' argument: the
    parameter-free operations gain weight by easing the optimisation of the mixture). In
    evaluation mode the supernet runs the most likely sample, the one-hot argmax of every edge
    (no noise: the supernet's validation mIoU is deterministic). The paths stay relaxed: GDAS
    samples operations, and the betas mix the sources of every node as in the paper.

    As in Jang et al. (2017), the straight-through gradient reaches every operation's alpha
    through the outputs of all operations; GDAS's code forms the same gradient from the sampled
    operation's output alone.
    """

    def __init__(
        self,
        search_space: space.SearchSpace,
        tau_max: float = 10.0,
        tau_min: float = 0.1,
        edge_normalisation: bool = False,
        path_decoding: str = "probability",
    ):
        super().__init__(
            search_space, edge_normalisation=edge_normalisation, path_decoding=path_decoding
        )
        if not 0 < tau_min <= tau_max:
            raise ValueError(
                f"the Gumbel temperatures need 0 < tau_min <= tau_max, got tau_min={tau_min}, "
                f"tau_max={tau_max}"
            )
        self.tau_max, self.tau_min = float(tau_max), float(tau_min)

    def temperature(self, arch_progress: float) -> float:
        """``tau = tau_max - (tau_max - tau_min) * p`` at the share ``p`` of the architecture
        steps done (clipped to [0, 1])."""
        p = min(max(float(arch_progress), 0.0), 1.0)
        return self.tau_max - (self.tau_max - self.tau_min) * p

    def forward_op_weights(
        self, params: ArchParams, training: bool, arch_progress: float
    ) -> torch.Tensor:
        alphas = _get(params, "alphas")
        if not training:
            return F.one_hot(alphas.argmax(dim=-1), alphas.shape[-1]).to(alphas.dtype)
        return straight_through_gumbel(
            alphas, gumbel_noise(alphas), self.temperature(arch_progress)
        )

    def schedule_state(self, arch_progress: float) -> dict[str, float]:
        return {"gumbel_tau": self.temperature(arch_progress)}


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise shaped like ``like``, ``-log(-log u)`` with ``u`` uniform in
    (0, 1), drawn from the global generator (saved in checkpoints, so a resumed search draws the
    same noise); ``u`` is kept above the smallest normal float, so the noise is always finite."""
    u = torch.rand(like.shape, dtype=like.dtype, device=like.device)
    u = u.clamp_(min=torch.finfo(like.dtype).tiny)
    return -torch.log(-torch.log(u))


def straight_through_gumbel(logits: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """One-hot ``argmax(logits + noise)`` along the last axis in the forward pass, with the
    gradient of ``softmax((logits + noise) / tau)`` in the backward pass."""
    perturbed = logits + noise.detach()
    soft = F.softmax(perturbed / tau, dim=-1)
    hard = F.one_hot(perturbed.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _get(params: ArchParams, name: str) -> torch.Tensor:
    value = params.get(name)
    if value is None:
        raise ValueError(f"architecture parameter {name!r} is missing; got {sorted(params)}")
    return value
