"""When the architecture steps of a search run, and how far a run has got.

The paper alternates one weight step and one architecture step, the architecture steps starting
after half the epochs (20 of 40 on Cityscapes: about 14,900 architecture steps). Adam moves a
logit by at most about its learning rate per step, so the number of architecture steps bounds
how far the architecture distribution can move (3e-3 x 200 steps: about 0.6). Short runs on
small data sets make few steps; :class:`ArchSchedule` lets them start earlier
(``arch_start_fraction``) or take several architecture steps per weight step
(``arch_steps_per_step``) without changing the paper's defaults.

Everything here is a pure function of the global step, so a resumed run follows the same
schedule without storing any state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ArchSchedule:
    """Positions of the architecture steps in a run of ``epochs x steps_per_epoch`` weight steps.

    The weight step with 0-based global index ``g`` is followed by ``per_step`` architecture
    steps when ``g >= start_step``.
    """

    epochs: int
    steps_per_epoch: int
    start_step: int
    per_step: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.per_step < 1 or self.start_step < 0:
            raise ValueError(
                "need epochs, steps_per_epoch, per_step >= 1 and start_step >= 0, got "
                f"{self.epochs}, {self.steps_per_epoch}, {self.per_step}, {self.start_step}"
            )

    @classmethod
    def from_config(cls, cfg: Any, steps_per_epoch: int) -> ArchSchedule:
        """The schedule of a :class:`~autodeeplab.config.SearchConfig` (whose ``epochs`` and
        ``arch_start_epoch`` the engine has checked); bad values of the keys read here raise
        ``ValueError`` naming the key."""
        if cfg.arch_steps_per_step < 1:
            raise ValueError(f"arch_steps_per_step must be >= 1, got {cfg.arch_steps_per_step}")
        total = cfg.epochs * steps_per_epoch
        fraction = cfg.arch_start_fraction
        if fraction is None:
            start = cfg.arch_start_epoch * steps_per_epoch
        elif not (math.isfinite(fraction) and 0.0 <= fraction < 1.0):
            raise ValueError(
                f"arch_start_fraction must be in [0, 1) (the share of the weight steps before the "
                f"first architecture step) or null, got {fraction}"
            )
        else:
            start = round(fraction * total)
        return cls(cfg.epochs, steps_per_epoch, start, cfg.arch_steps_per_step)

    @property
    def total_steps(self) -> int:
        """Weight steps in the whole run."""
        return self.epochs * self.steps_per_epoch

    @property
    def total_arch_steps(self) -> int:
        """Architecture steps in the whole run."""
        return max(0, self.total_steps - self.start_step) * self.per_step

    def active(self, global_step: int) -> bool:
        """Whether weight step ``global_step`` (0-based) is followed by architecture steps."""
        return global_step >= self.start_step

    def first_arch_position(self, epoch: int, position: int = 0) -> int:
        """The first step at or after ``position`` inside ``epoch`` (0-based) that has
        architecture steps; ``steps_per_epoch`` when there is none (they never stop once
        started)."""
        first = max(position, self.start_step - epoch * self.steps_per_epoch)
        return min(first, self.steps_per_epoch)

    def run_progress(self, global_step: int) -> float:
        """``global_step / total_steps`` in [0, 1]: 0 at the first step, 1 after the last."""
        return min(1.0, max(0.0, global_step / self.total_steps))

    def arch_progress(self, global_step: int) -> float:
        """Share of the architecture phase done before weight step ``global_step``, in [0, 1]:
        0 at the first architecture step, 1 after the last."""
        span = self.total_steps - self.start_step
        if span <= 0:
            return 0.0
        return min(1.0, max(0.0, (global_step - self.start_step) / span))
