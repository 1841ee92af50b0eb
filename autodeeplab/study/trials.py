"""Running trials: one at a time, in worker processes (one per device) or on Ray."""

from __future__ import annotations

import contextlib
import copy
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from autodeeplab import diagnostics
from autodeeplab.engine.common import EARLY_STOP, record_early_stop_signals
from autodeeplab.engine.loop import print_flush
from autodeeplab.genotype import Genotype
from autodeeplab.ray_trials import RayOptions, run_on_ray
from autodeeplab.runfolder import atomic_write_text, dumps_json
from autodeeplab.study.config import StudyError, StudyInterrupted
from autodeeplab.study.plan import Study, Trial
from autodeeplab.study.stats import pct


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _finished_record(trial: Trial) -> dict[str, Any] | None:
    """The ``trial.json`` of a finished trial, or None; a record for another configuration is
    an error (the study-level check makes this a sign of an altered folder). The record is
    returned under the trial's own name and candidate: a run folder copied from another study
    (or another candidate of the same architecture) computed the same thing, whatever it was
    called there."""
    path = trial.output / "trial.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("key") != trial.key:
        raise StudyError(
            f"{path} was written for another configuration of this trial (key "
            f"{record.get('key')} vs {trial.key}); was the study folder altered? Delete that run "
            "folder to redo the trial, or choose another output folder"
        )
    labels = {"name": trial.name, "candidate": trial.candidate}
    return {**record, **{k: v for k, v in labels.items() if k in record}}


def run_trial(trial: Trial, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one trial to its end (resuming from its ``last.pt``), write its ``trial.json`` and
    return that record; a finished trial is not run again (its record is returned).

    Raises :class:`StudyInterrupted` when the engine stopped early (Ctrl-C).
    """
    from autodeeplab.engine.search import NonFiniteLossError, run_search
    from autodeeplab.engine.train import run_train

    done = _finished_record(trial)
    if done is not None:
        return done
    out = trial.output
    resume = (out / "last.pt").is_file()
    if not resume and out.exists():
        shutil.rmtree(out)  # stopped before its first checkpoint: nothing to continue from
    start = time.perf_counter()
    record: dict[str, Any] = {"kind": trial.kind, "name": trial.name, "seed": trial.seed}
    if trial.kind == "search":
        s = run_search(trial.config, resume=resume, log=log)
        if not s.finished:
            raise StudyInterrupted(f"search trial {trial.name} stopped at epoch {s.epoch}")
        last = s.history[-1] if s.history else {}
        record |= {
            "genotype": str(s.genotype),
            "epochs": s.epoch,
            "supernet_mIoU": last.get("mIoU"),
            "convergence": diagnostics.convergence(s.history),
        }
    else:
        record |= {
            "candidate": trial.candidate,
            "genotype": str(Genotype.load(trial.config.model.genotype)),
        }
        try:
            t = run_train(trial.config, resume=resume, log=log)
        except NonFiniteLossError as err:
            # A candidate that diverges under the shared budget is a result, not a crash: it
            # is reported without an mIoU (and ranked last) rather than left out.
            record |= {"mIoU": None, "best_mIoU": None, "best_iteration": None, "error": str(err)}
        else:
            if not t.finished:
                raise StudyInterrupted(
                    f"training trial {trial.name} stopped at iteration {t.iteration}"
                )
            record |= {
                "mIoU": t.final_miou,
                "best_mIoU": t.best_miou,
                "best_iteration": t.best_iteration,
                "iterations": t.iteration,
                "error": None,
            }
    record |= {
        "key": trial.key,
        "resumed": resume,
        "time_s": time.perf_counter() - start,
        "finished_at": _now(),
    }
    atomic_write_text(out / "trial.json", dumps_json(record, indent=2))
    return record


_WORKER_DEVICE: str | None = None
_STUDY_PID: int | None = None
_STUDY_STOP: Any = None  # the study's stop event (a multiprocessing Event)


def _init_worker(devices: Any, pids: Any, study_pid: int, stop: Any) -> None:
    """Pool worker set-up: take a device for the worker's life, tell the study process this
    worker's pid (to pass a SIGTERM on), keep the study's stop event, and record Ctrl-C and
    SIGTERM while no run listens (a run installs its own handler: finish the step,
    checkpoint, stop; one recorded before stops the next run at its first step)."""
    global _WORKER_DEVICE, _STUDY_PID, _STUDY_STOP
    record_early_stop_signals()
    _WORKER_DEVICE = devices.get()
    _STUDY_PID, _STUDY_STOP = study_pid, stop
    pids.put(os.getpid())


def _worker_run(trial: Trial) -> dict[str, Any]:
    if _STUDY_PID is not None and os.getppid() != _STUDY_PID:
        # the study process is gone (killed): a trial queued before it died must not start
        raise StudyInterrupted(f"the study process {_STUDY_PID} is gone; {trial.name} not started")
    if EARLY_STOP() or (_STUDY_STOP is not None and _STUDY_STOP.is_set()):
        # the study was stopped before this worker took the trial (possibly before the worker
        # had told the study its pid, so no signal reached it): the trial must not start
        raise StudyInterrupted(f"the study was stopped; {trial.name} not started")
    config = copy.deepcopy(trial.config)
    if _WORKER_DEVICE is not None:
        config.device = _WORKER_DEVICE
    prefix = f"    [{trial.name}] "
    return run_trial(
        Trial(trial.kind, trial.name, trial.seed, config, trial.key, trial.candidate),
        log=lambda text: print_flush(prefix + text),
    )


class Progress:
    """One line per trial with the study's position and an ETA from the trials run so far."""

    def __init__(
        self, searches: int, trains: int, jobs: int, log: Callable[[str], None] | None
    ) -> None:
        self.total, self.jobs, self.log = searches + trains, jobs, log
        self.done = self.started = 0
        self.seconds: dict[str, list[float]] = {"search": [], "train": []}
        self.remaining = {"search": searches, "train": trains}

    def set_trains(self, count: int) -> None:
        """The number of training trials, once the searched architectures are known."""
        self.total += count - self.remaining["train"]
        self.remaining["train"] = count

    def say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def start(self, trial: Trial) -> None:
        self.started = max(self.started, self.done) + 1
        self.say(f"[{self.started}/{self.total}] {trial.kind} {trial.name} ...")

    def finish(self, trial: Trial, record: dict[str, Any], ran: bool) -> None:
        self.done += 1
        self.remaining[trial.kind] -= 1
        what = (
            f"{record['genotype']}"
            if trial.kind == "search"
            else f"mIoU {pct(record.get('mIoU'))} (best {pct(record.get('best_mIoU'))})"
        )
        if not ran:
            self.say(
                f"[{self.done}/{self.total}] {trial.kind} {trial.name}: finished earlier, {what}"
            )
            return
        self.seconds[trial.kind].append(record["time_s"])
        self.say(
            f"[{self.done}/{self.total}] {trial.kind} {trial.name}: {what} in "
            f"{record['time_s']:.0f}s; {self.eta()}"
        )

    def eta(self) -> str:
        total = 0.0
        for kind, left in self.remaining.items():
            if left == 0:
                continue
            if not self.seconds[kind]:
                return f"ETA after the first {kind} trial"
            total += left * float(np.mean(self.seconds[kind]))
        # trials of one kind run side by side with --jobs (searches finish before retraining)
        return f"ETA {_duration(total / self.jobs)}" if total else "last trial done"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(dumps_json(record) + "\n")


def run_trials(
    study: Study,
    trials: Sequence[Trial],
    progress: Progress,
    jobs: int,
    devices: Sequence[str] | None,
    log: Callable[[str], None] | None,
    ray: RayOptions | None = None,
) -> list[dict[str, Any]]:
    """Run (or skip, when finished) every trial; records in the order of ``trials``."""
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for t in trials:
        done = _finished_record(t)
        if done is not None:
            records[t.name] = done
            progress.finish(t, done, ran=False)
        else:
            todo.append(t)
    log_path = study.output / "trials.jsonl"

    def finished(t: Trial, record: dict[str, Any]) -> None:
        records[t.name] = record
        _append_jsonl(log_path, record)
        progress.finish(t, record, ran=True)

    if ray is not None:
        for t, record in run_on_ray(todo, ray, started=progress.start):
            finished(t, record)
    elif jobs <= 1 or len(todo) <= 1:
        for t in todo:
            progress.start(t)
            engine_log = None if log is None else (lambda text, _log=log: _log("    " + text))
            finished(t, run_trial(t, engine_log))
    else:
        for t, record in _pool(todo, jobs, devices, progress):
            finished(t, record)
    return [records[t.name] for t in trials]


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[Callable[[], bool]]:
    """In the main thread, turn SIGTERM into :class:`KeyboardInterrupt`, as Ctrl-C is, so that
    the study stops the same way; yields a function telling whether a SIGTERM came."""
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGTERM) or signal.SIG_DFL

    def handler(signum: int, frame: Any) -> None:
        came.append(signum)
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM: what it did before
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    try:
        yield lambda: bool(came)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_workers(pids: Any, jobs: int, signum: int) -> None:
    """Send ``signum`` to every pool worker started so far (their pids, from ``pids``)."""
    import queue as queue_module

    for _ in range(jobs):
        try:
            pid = pids.get(timeout=0.5)
        except queue_module.Empty:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _pool(
    trials: Sequence[Trial], jobs: int, devices: Sequence[str] | None, progress: Progress
) -> Iterator[tuple[Trial, dict[str, Any]]]:
    """Run trials in ``jobs`` worker processes, each holding one of ``devices`` for its life;
    yields ``(trial, record)`` as they finish. Ctrl-C lets the running trials checkpoint."""
    ctx = multiprocessing.get_context("spawn")
    queue, pids, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    for i in range(jobs):
        queue.put(devices[i % len(devices)] if devices else None)
    interrupted: list[str] = []
    with (
        ProcessPoolExecutor(
            jobs,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(queue, pids, os.getpid(), stop),
        ) as pool,
        _terminate_as_interrupt() as terminated,
    ):
        pending: dict[Future, Trial] = {}
        waiting = list(trials)
        try:
            while waiting or pending:
                while waiting and len(pending) < jobs:
                    t = waiting.pop(0)
                    progress.start(t)
                    pending[pool.submit(_worker_run, t)] = t
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    t = pending.pop(future)
                    try:
                        yield t, future.result()
                    except StudyInterrupted as err:
                        interrupted.append(str(err))
                        waiting.clear()
        except KeyboardInterrupt:
            waiting.clear()
            # first: a worker still starting (its pid not yet known, so no signal reaches it)
            # takes no trial once it is up
            stop.set()
            for future in pending:
                future.cancel()
            if terminated():  # a SIGTERM for the study process alone: the trials get it too
                _signal_workers(pids, jobs, signal.SIGTERM)
            wait(pending)  # the running engines checkpoint and stop
            raise StudyInterrupted("the study was interrupted") from None
    if interrupted:
        raise StudyInterrupted("; ".join(interrupted))
