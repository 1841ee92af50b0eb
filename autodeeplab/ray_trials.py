"""Study trials on a Ray cluster (optional extra: ``pip install autodeeplab[ray]``).

A study's trials are independent runs in one study folder; a finished trial is recognised by
its ``trial.json`` and an interrupted one resumes from its ``last.pt``. So the study needs no
scheduler of its own across machines: :func:`run_on_ray` hands each trial to Ray as one task
that reserves ``cpus`` CPUs and ``gpus`` GPUs (Ray then sets ``CUDA_VISIBLE_DEVICES``), and
yields the trial records as the tasks finish. The study folder must be on a file system every
node mounts, at the same absolute path.

``address`` is passed to ``ray.init``: ``"auto"`` joins the cluster started on this machine with
``ray start``, ``"ray://host:10001"`` a remote one through Ray Client, and ``"local"`` starts a
private single-machine cluster for the study's life.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autodeeplab.engine.loop import print_flush
from autodeeplab.extras import require

if TYPE_CHECKING:
    from autodeeplab.study import Trial


@dataclass(frozen=True)
class RayOptions:
    """Where and with which resources each trial runs on Ray.

    Args:
        address: ``ray.init`` address (``"auto"``, ``"local"``, ``"ray://host:port"``).
        cpus: CPUs each trial reserves (and the ``threads`` it runs with when its config leaves
            ``threads`` unset).
        gpus: GPUs each trial reserves; trials run on ``cuda`` when > 0 (a fraction lets
            trials share a GPU), on ``cpu`` otherwise.
    """

    address: str = "auto"
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address:
            raise ValueError(f"ray address must be a non-empty string, got {self.address!r}")
        if not self.cpus > 0:
            raise ValueError(f"cpus per trial must be > 0, got {self.cpus}")
        if not self.gpus >= 0:
            raise ValueError(f"gpus per trial must be >= 0, got {self.gpus}")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`~autodeeplab.extras.MissingExtraError` saying how to
    install it."""
    return require("ray", "ray", "running a study on Ray")


def trial_on(trial: Trial, options: RayOptions) -> Trial:
    """``trial`` with the device (and, if unset, the thread count) of a Ray worker."""
    from autodeeplab.study import Trial

    config = copy.deepcopy(trial.config)
    config.device = options.device
    if config.threads is None:
        config.threads = max(1, int(options.cpus))
    return Trial(trial.kind, trial.name, trial.seed, config, trial.key, trial.candidate)


def _run_task(trial: Trial) -> dict[str, Any]:
    """The body of one Ray task (a top-level function, so Ray can ship it)."""
    from autodeeplab.study import run_trial

    prefix = f"    [{trial.name}] "
    return run_trial(trial, log=lambda text: print_flush(prefix + text))


def run_on_ray(
    trials: Sequence[Trial], options: RayOptions, started: Any = None
) -> Iterator[tuple[Trial, dict[str, Any]]]:
    """Run ``trials`` as Ray tasks; yields ``(trial, record)`` as they finish.

    ``started(trial)`` is called when a trial is submitted. Ctrl-C cancels the tasks (a
    running trial gets a ``KeyboardInterrupt`` and resumes from its last checkpoint next time)
    and raises ``StudyInterrupted``; a task that stopped early raises it too.
    """
    from autodeeplab.study import StudyInterrupted

    ray = import_ray()
    own = not ray.is_initialized()
    if own:
        ray.init(
            address=None if options.address == "local" else options.address,
            include_dashboard=False,
            logging_level="WARNING",
        )
    try:
        task = ray.remote(num_cpus=options.cpus, num_gpus=options.gpus, max_retries=0)(_run_task)
        pending: dict[Any, Trial] = {}
        for t in trials:
            if started is not None:
                started(t)
            pending[task.remote(trial_on(t, options))] = t
        interrupted: list[str] = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    t = pending.pop(ref)
                    try:
                        yield t, ray.get(ref)
                    except ray.exceptions.RayTaskError as err:
                        cause = err.as_instanceof_cause()
                        if isinstance(cause, StudyInterrupted):
                            interrupted.append(str(cause))
                            continue
                        raise cause from None
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            raise StudyInterrupted("the study was interrupted") from None
        if interrupted:
            raise StudyInterrupted("; ".join(interrupted))
    finally:
        if own:
            ray.shutdown()
