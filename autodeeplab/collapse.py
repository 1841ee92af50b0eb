"""Guards against the collapse of differentiable search to parameter-free operations.

DARTS-style searches tend to drift towards ``skip_connect`` and pooling as the architecture
steps accumulate (Zela et al. 2020; Chu et al. 2021): the identity makes the supernet easier to
optimise, so its weight grows whether or not the discrete network gains from it. Two published
remedies are options here, both off by default (the paper's search):

* **Beta-Decay** (beta-DARTS, Ye et al., CVPR 2022), ``arch_regularizer.name: beta_decay``: the
  architecture loss gains ``lambda(t) * R`` with the smooth maximum of every logit row,

      R = mean over cell edges e of logsumexp_o(alpha[e, o])
        + mean over used trellis nodes n of logsumexp_m(beta[n, m])   (valid moves only),

  whose gradient is the softmax of each row divided by the number of rows: it pulls the
  largest logits down hardest and so keeps the softmax weights, and their spread, from
  running away. ``lambda`` grows from 0 to ``arch_regularizer.weight`` over the architecture
  steps (linearly in the reference implementation).
* **Auxiliary skip connection** (DARTS-, Chu et al., ICLR 2021), ``aux_skip.schedule``: every
  mixed edge gets an identity branch ``beta_aux * x`` outside the softmax. It gives the
  supernet the residual path it would otherwise obtain by raising ``skip_connect``;
  ``beta_aux`` decays from ``aux_skip.start`` to 0 over the run, so the supernet at the end is
  the paper's.

The engine asks one :class:`CollapseGuards` object built from the config; it never tests which
option is on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from autodeeplab.supernet import SearchNetwork

Ramp = Callable[[float], float]

RAMPS: dict[str, Ramp] = {
    "constant": lambda p: 1.0,
    "linear": lambda p: p,
    "cosine": lambda p: 0.5 * (1.0 - math.cos(math.pi * p)),
}
"""Maps progress ``p`` in [0, 1] to a share in [0, 1] (0 at ``p = 0`` except ``constant``)."""


def get_ramp(name: str, key: str) -> Ramp:
    """The ramp called ``name``; ``key`` names the config entry in the error."""
    if name not in RAMPS:
        raise ValueError(f"{key}: unknown ramp {name!r}; valid: {', '.join(RAMPS)}")
    return RAMPS[name]


# ---------------------------------------------------------------------------- loss terms
def beta_decay(model: SearchNetwork) -> torch.Tensor:
    """Beta-Decay term ``R`` (unweighted) of the model's relaxation: mean logsumexp over the op
    logits of every edge plus mean logsumexp over the valid moves of every trellis node that
    takes part in the forward pass (:meth:`SoftmaxRelaxation.regularizer`)."""
    return model.relaxation.regularizer("beta_decay", model.arch_state())


ARCH_REGULARIZERS: dict[str, Callable[[SearchNetwork], torch.Tensor] | None] = {
    "none": None,
    "beta_decay": beta_decay,
}
"""Extra architecture-loss terms by config name (``None``: no term, the paper)."""

AUX_SKIP_SCHEDULES: tuple[str, ...] = ("none", *(k for k in RAMPS if k != "constant"))
"""``aux_skip.schedule`` values: ``none`` or the decaying ramps."""


# ---------------------------------------------------------------------------- the guards
@dataclass(frozen=True)
class CollapseGuards:
    """The collapse guards of one search run, as functions of its progress.

    ``run_progress`` and ``arch_progress`` are the shares of the run and of its architecture
    phase done so far (see :class:`autodeeplab.engine.schedule.ArchSchedule`).
    """

    term: Callable[[SearchNetwork], torch.Tensor] | None = None
    weight: float = 0.0
    weight_ramp: Ramp = RAMPS["linear"]
    aux_start: float = 0.0
    aux_ramp: Ramp | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> CollapseGuards:
        """Guards of a :class:`~autodeeplab.config.SearchConfig`; an unknown name raises
        ``ValueError`` naming its key and the valid values (numbers are range-checked by the
        config)."""
        reg, aux = cfg.arch_regularizer, cfg.aux_skip
        if reg.name not in ARCH_REGULARIZERS:
            raise ValueError(
                f"arch_regularizer.name: unknown regularizer {reg.name!r}; valid: "
                f"{', '.join(ARCH_REGULARIZERS)}"
            )
        if aux.schedule not in AUX_SKIP_SCHEDULES:
            raise ValueError(
                f"aux_skip.schedule: unknown schedule {aux.schedule!r}; valid: "
                f"{', '.join(AUX_SKIP_SCHEDULES)}"
            )
        return cls(
            term=ARCH_REGULARIZERS[reg.name],
            weight=reg.weight,
            weight_ramp=get_ramp(reg.ramp, "arch_regularizer.ramp"),
            aux_start=aux.start,
            aux_ramp=None if aux.schedule == "none" else RAMPS[aux.schedule],
        )

    def aux_skip(self, run_progress: float) -> float:
        """``beta_aux = start * (1 - ramp(p))``: ``start`` at the first step, 0 at the end."""
        if self.aux_ramp is None:
            return 0.0
        return self.aux_start * (1.0 - self.aux_ramp(run_progress))

    def regularizer_weight(self, arch_progress: float) -> float:
        """``lambda = weight * ramp(p)`` (0 when no term is chosen)."""
        if self.term is None:
            return 0.0
        return self.weight * self.weight_ramp(arch_progress)

    def add_regularizer_gradients(self, model: SearchNetwork, arch_progress: float) -> float | None:
        """Add ``lambda * dR/d(arch)`` to the ``.grad`` of the architecture parameters (the
        term depends on them only, so every process adds the same value after averaging);
        returns ``lambda * R``, or None when no term is chosen."""
        if self.term is None:
            return None
        lam = self.regularizer_weight(arch_progress)
        params = model.arch_parameters()
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            value = lam * self.term(model)
            grads = torch.autograd.grad(value, params, allow_unused=True)
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
        for p, g in zip(params, grads, strict=True):
            if g is None:
                continue
            p.grad = g.detach().clone() if p.grad is None else p.grad + g
        return float(value.detach())

    def state(self, run_progress: float, arch_progress: float) -> dict[str, float]:
        """Current values of the active guards, for the logs (empty when all are off)."""
        out: dict[str, float] = {}
        if self.term is not None:
            out["arch_regularizer_weight"] = self.regularizer_weight(arch_progress)
        if self.aux_ramp is not None:
            out["aux_skip"] = self.aux_skip(run_progress)
        return out
