"""The run logistics the search and training engines share: one loop base.

:class:`EngineBase` owns what does not depend on what a step computes: the run folder (its
lock, the leftovers of interrupted writes), the run log, checkpoints and exact resumption,
the stop signals, and the order of the training data.

Data order and augmentation are pure functions of ``(seed, epoch, position)``: the batches of
an epoch come from a seeded permutation (:func:`epoch_batches`), and sample ``i`` is augmented
with a generator seeded by ``(seed, epoch, i)`` (:class:`KeyedSamples`). A run resumed in the
middle of an epoch therefore skips exactly the batches already consumed and sees the same data
as an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from autodeeplab.checkpoint import (
    CheckpointError,
    copy_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from autodeeplab.config import (
    RUNTIME_KEYS,
    check_ranges,
    config_diff,
    config_hash,
    neutral_defaults,
    save_config,
    to_dict,
)
from autodeeplab.data import GENERATED, AnyDataset, dataset_spatial_dims
from autodeeplab.engine.common import (
    RunLog,
    StopRequest,
    build_datasets,
    deferred_interrupt,
    process_device,
    resolve_device,
)
from autodeeplab.engine.distributed import all_reduce_sum, dist_info, init_distributed
from autodeeplab.metrics import ConfusionMatrix
from autodeeplab.runfolder import RunFolderLock, RunFolderLockedError, remove_interrupted_writes


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without overwriting the checkpoint."""


def print_flush(text: str) -> None:
    """Default log sink: print and flush (progress lines show up promptly in piped output)."""
    print(text, flush=True)


@dataclass(kw_only=True)
class RunResult:
    """What every run leaves behind; each engine's result adds its own fields."""

    output: Path
    finished: bool
    """False when the run stopped early (``max_steps`` or a stop signal) with a checkpoint."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The engine's summary records (search: one per epoch; training: one per evaluation)."""
    rank: int = 0
    """Process rank in a multi-process run (0 writes the run folder)."""
    stop_signal: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run early with a checkpoint, else None."""


# ---------------------------------------------------------------------------- data order
class KeyedSamples(torch.utils.data.Dataset):
    """Item ``(epoch, index)`` is sample ``index`` augmented with a generator seeded by
    ``(seed, epoch, index)``: the same on every rank, worker and resumption."""

    def __init__(self, dataset: AnyDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        return self.dataset.get(index, np.random.default_rng([self.seed, epoch, index]))


def epoch_batches(
    indices: Sequence[int],
    seed: int,
    stream: int,
    epoch: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    repeat: int = 0,
) -> list[list[tuple[int, int]]]:
    """This rank's batches of ``(epoch, index)`` keys for one epoch (last partial batch dropped).

    A global batch of ``batch_size * world_size`` samples is cut from a permutation seeded by
    ``(seed, stream, epoch)`` (``(seed, stream, epoch, repeat)`` for a further pass over the
    samples in the same epoch); rank ``r`` takes its ``r``-th slice.
    """
    key = [seed, stream, epoch] if repeat == 0 else [seed, stream, epoch, repeat]
    perm = np.random.default_rng(key).permutation(np.asarray(indices))
    g = batch_size * world_size
    lo, hi = rank * batch_size, (rank + 1) * batch_size
    return [
        [(epoch, int(i)) for i in perm[s * g : (s + 1) * g][lo:hi]] for s in range(len(perm) // g)
    ]


# ---------------------------------------------------------------------------- the base
Batch = tuple[torch.Tensor, torch.Tensor]  # images (N, C, *spatial), masks (N, *spatial)
Keys = list[list[tuple[int, int]]]  # batches of KeyedSamples keys
E = TypeVar("E", bound="EngineBase")


class EngineBase:
    """The logistics of one run, shared by the search and training engines.

    A subclass names its checkpoint ``kind``, the ``noun`` its messages use, the config keys
    that may change on resumption (``runtime_keys``) and the key of its position in records
    and checkpoints (``position_key``). Its ``__init__`` calls :meth:`_set_up`, builds its data
    (:meth:`_load_data`, :meth:`_set_steps_per_epoch`), model and optimisers, sets
    ``total_steps`` (and ``checkpoint_steps``), then calls :meth:`_open`. For the loop it
    provides :meth:`_epoch_data`, :meth:`_step` and :meth:`_result`, and where it has work
    there :meth:`_start`, :meth:`_step_done` and :meth:`_finish`; its own checkpoint entries
    come from :meth:`_state` and go back through :meth:`_load_state`.

    ``global_step`` counts the steps done in the whole run; ``steps_per_epoch`` steps make an
    epoch. An engine is a context manager: leaving it calls :meth:`close`.
    """

    kind: ClassVar[str]
    """Checkpoint kind (``search``, ``train``): a checkpoint of another kind is refused."""
    noun: ClassVar[str]
    """How messages name a run of this engine (``a search run``)."""
    runtime_keys: ClassVar[frozenset[str]] = RUNTIME_KEYS
    """Config keys that may change between an interrupted run and its resumption."""
    position_key: ClassVar[str] = "global_step"
    """Key of the position (``global_step``) in records and checkpoints."""
    divergence_hint: ClassVar[str] = "Lower the learning rate or check the data."
    """What a non-finite loss message advises."""

    model: nn.Module
    total_steps: int
    """Steps of the whole run."""
    checkpoint_steps: int = 0
    """Also write ``last.pt`` every N steps (0: only where the engine saves)."""
    _owns_process_group: bool = False
    _lock: RunFolderLock | None = None
    _absent_classes_checked: bool = False

    # -------------------------------------------------------------- set-up
    def _set_up(self, config: Any, log: Callable[[str], None] | None) -> None:
        """Check ``config``, join the process group ``torchrun`` describes, pick the threads
        and this process's device, and seed every generator with ``config.seed``."""
        self.cfg = config
        self._validate()
        self._owns_process_group = init_distributed(resolve_device(config.device).type == "cuda")
        self.rank, self.world_size = dist_info()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = process_device(config.device, self.world_size)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.output = Path(config.output)
        self.last_path = self.output / "last.pt"
        self.run_log = RunLog(
            self.output,
            rank=self.rank,
            step_key=self.position_key,
            tensorboard=config.tensorboard,
            log=log,
        )
        self.global_step = 0
        self.history: list[dict[str, Any]] = []  # what the engine records per epoch/evaluation
        self._interrupted = StopRequest()  # replaced by the live one while run() runs
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)

    def _validate(self) -> None:
        """Refuse a config the engine cannot run (before anything is built or written)."""
        c = self.cfg
        check_ranges(c)  # again: a config built in code has not been through from_dict
        # images or volumes, from the data set (its keys are checked when the data is built)
        self.spatial_dims = dataset_spatial_dims(c.data.name)
        if c.data.name not in GENERATED and c.data.root is None:
            raise ValueError(
                f"data set {c.data.name!r} needs a root folder: set data.root in the config or "
                "pass --data-root DIR"
            )

    def _load_data(self) -> None:
        """Build the training and evaluation splits of ``cfg.data``."""
        self.train_set, self.eval_set = build_datasets(self.cfg.data)
        self.keyed = KeyedSamples(self.train_set, self.cfg.seed)

    def _set_steps_per_epoch(self, samples: int, what: str) -> None:
        """Steps per epoch over ``samples`` training samples (``what`` says which, e.g.
        ``the 'train' split has 9 samples``): whole global batches, at least one."""
        bs = self.cfg.data.batch_size
        self.global_batch = bs * self.world_size
        self.steps_per_epoch = samples // self.global_batch
        if self.steps_per_epoch == 0:
            repeat = getattr(self.cfg.data, "repeat", None)  # configs of image and volume data
            more = "more samples" if repeat is None else "more samples, a larger data.repeat"
            raise ValueError(
                f"{what}, fewer than one global batch of {self.global_batch} (batch_size {bs} "
                f"x {self.world_size} processes); use {more} or a smaller data.batch_size"
            )

    def _open(self, resume: bool) -> None:
        """Lock the run folder, then continue from ``last.pt`` (``resume``) or refuse to
        overwrite the run it holds; drop the log records written after the start."""
        self._claim_output()
        try:
            if resume:
                self._resume()
            elif self.last_path.exists():
                raise ValueError(
                    f"{self.output} already holds a {self.noun} run ({self.last_path}); pass "
                    "--resume to continue it or choose another output folder"
                )
            self._rewind_log(self.global_step)
        except BaseException:
            self._release_output()
            raise

    def _claim_output(self) -> None:
        """Lock the run folder and remove what interrupted writes left in it. Rank 0 takes the
        lock for all processes of a multi-process run; every process raises
        :class:`~autodeeplab.runfolder.RunFolderLockedError` if it cannot."""
        error: Exception | None = None
        if self.rank == 0:
            lock = RunFolderLock(self.output)
            try:
                self._lock = lock.acquire()
            except (RunFolderLockedError, OSError) as err:
                error = err  # raised below, once the other ranks know
        if self.world_size > 1:  # the other ranks learn whether rank 0 got it
            refused = torch.tensor([float(error is not None)], device=self.device)
            if all_reduce_sum(refused).item() > 0 and error is None:
                error = RunFolderLockedError(
                    f"rank 0 could not lock the run folder {self.output}; its error says why "
                    "(another process holding it is named there)"
                )
        if error is not None:
            raise error
        if self.rank == 0:
            removed = remove_interrupted_writes(self.output)
            if removed:
                self._say(
                    f"removed {len(removed)} leftover(s) of interrupted writes: "
                    + ", ".join(str(p.relative_to(self.output)) for p in removed)
                )

    def _rewind_log(self, position: int) -> None:
        """Drop log records written after the checkpoint this run starts from."""
        dropped = self.run_log.rewind(position)
        if dropped:
            self._say(
                f"dropped {dropped} record(s) of {self.run_log.path.name} written after "
                f"{self.run_log.step_key} {position}, where this run starts"
            )

    def _release_output(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _record(self, record: dict[str, Any]) -> None:
        self.run_log.record(record)

    def _say(self, text: str) -> None:
        self.run_log.say(text)

    def _checkpoint_note(self) -> str:
        """How a stop leaves the run folder: what a failure message should say."""
        if self.last_path.exists():
            return f"the last good checkpoint {self.last_path} is kept"
        return "no checkpoint was written yet"

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        """The engine's own checkpoint entries (optimisers, counters, ...)."""
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`_state`'s entries (the model is loaded already)."""

    def _resume_problems(self, state: dict[str, Any]) -> list[str]:
        """Differences, besides the config keys, that make ``state`` another run."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resumption needs."""
        return {
            "kind": self.kind,
            "model": self.model.state_dict(),
            **self._state(),
            "rng": rng_state(),
            self.position_key: self.global_step,
            "history": list(self.history),
            "world_size": self.world_size,
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg, self.runtime_keys),
        }

    def save(self, copy_to: Path | None = None) -> None:
        """Write ``last.pt`` atomically (rank 0; also copied to ``copy_to`` when given); every
        rank waits for it."""
        if self.rank == 0:
            save_checkpoint(self.state_dict(), self.last_path)
            if copy_to is not None:
                copy_checkpoint(self.last_path, copy_to)
        self._barrier()

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _resume(self) -> None:
        if not self.last_path.exists():
            raise FileNotFoundError(
                f"cannot resume: {self.last_path} does not exist; run without --resume to start "
                f"a new {self.noun} run in this folder"
            )
        state = load_checkpoint(self.last_path, map_location=self.device)
        if state.get("kind") != self.kind:
            raise CheckpointError(
                f"{self.last_path} is not a {self.noun} checkpoint (kind {state.get('kind')!r})"
            )
        problems = []
        if state["config_hash"] != config_hash(self.cfg, self.runtime_keys):
            diff = config_diff(
                state["config"],
                to_dict(self.cfg),
                self.runtime_keys,
                neutral_defaults(self.cfg),
            )
            problems += diff or ["<none reported>"]
        problems += self._resume_problems(state)
        if problems:
            raise CheckpointError(
                f"cannot resume from {self.last_path}: it was written with another "
                "configuration; differing keys:\n  "
                + "\n  ".join(problems)
                + "\nUse the same config (only the runtime keys "
                + ", ".join(sorted(self.runtime_keys))
                + " may change) or start a new run in another output folder."
            )
        if state["world_size"] != self.world_size:
            raise CheckpointError(
                f"{self.last_path} was written by {state['world_size']} processes, this run has "
                f"{self.world_size}; resume with the same number of processes"
            )
        self.model.load_state_dict(state["model"])
        self._load_state(state)
        set_rng_state(state["rng"])
        self.global_step = state[self.position_key]
        self.history = list(state["history"])

    # -------------------------------------------------------------- data
    def _epoch_keys(self, indices: Sequence[int], stream: int, epoch: int, repeat: int = 0) -> Keys:
        """This rank's batches of ``indices`` for ``epoch`` (:func:`epoch_batches`), cut to
        ``steps_per_epoch``."""
        d = self.cfg.data
        keys = epoch_batches(
            indices, self.cfg.seed, stream, epoch, d.batch_size, self.rank, self.world_size, repeat
        )
        return keys[: self.steps_per_epoch]

    def _loader(self, batches: Keys, epoch: int) -> Iterator[Batch]:
        """The samples of ``batches`` (keys of ``epoch``), on this process's device."""
        if not batches:
            return iter(())
        loader = torch.utils.data.DataLoader(
            self.keyed,
            batch_sampler=batches,
            num_workers=self.cfg.data.workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch),
        )
        return map(self._to_device, iter(loader))

    def _to_device(self, batch: Sequence[torch.Tensor]) -> Batch:
        images, masks = batch
        return images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)

    # -------------------------------------------------------------- evaluation
    def _evaluate(self, confusion: Callable[[Dataset], ConfusionMatrix]) -> ConfusionMatrix:
        """``confusion(shard)`` on this process's share of the evaluation split (the first
        ``data.max_eval_samples``), summed over processes. The model is in eval mode, without
        gradients, and the training generators are left as they were."""
        n = len(self.eval_set)
        if self.cfg.data.max_eval_samples is not None:
            n = min(n, self.cfg.data.max_eval_samples)
        shard = torch.utils.data.Subset(self.eval_set, range(self.rank, n, self.world_size))
        self.model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                cm = confusion(shard)
        finally:
            self.model.train()
        cm.matrix = cm.matrix.to(self.device)  # where the process group's backend runs
        cm.all_reduce()
        cm.matrix = cm.matrix.cpu()
        if not self._absent_classes_checked:  # once per process: the split does not change
            self._absent_classes_checked = True
            split = f"the {n} evaluated samples of the {self.cfg.data.eval_split!r} split"
            note = cm.absent_note(self.eval_set.class_names, split)
            if note is not None:
                self._say(f"warning: {note}")
        return cm

    def _volume_confusion(
        self, model: Callable[[torch.Tensor], torch.Tensor], shard: Any
    ) -> ConfusionMatrix:
        """Confusion matrix of ``model`` over the whole volumes of ``shard`` (a ``Subset`` of
        the evaluation split), by Gaussian-blended sliding windows of ``data.crop_size``."""
        from autodeeplab.volume_inference import evaluate_volumes

        result = evaluate_volumes(
            model, shard.dataset, self.cfg.data.crop_size, indices=shard.indices, device=self.device
        )
        return result.matrix

    # -------------------------------------------------------------- the loop
    def run(self) -> Any:
        """Run to ``total_steps``, or until ``max_steps`` or a stop signal (then with a
        checkpoint to resume from); returns the engine's result."""
        if self.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.output / "config.yaml")
        self.run_log.open()
        # one process: Ctrl-C or SIGTERM finishes the step and checkpoints (ranks could not
        # agree on it)
        with deferred_interrupt(self.world_size == 1) as self._interrupted:
            try:
                self._start()
                finished = self._loop()
                result = self._result(
                    output=self.output,
                    finished=finished,
                    history=list(self.history),
                    rank=self.rank,
                    stop_signal=None if finished else self._interrupted.signum,
                )
                if finished:
                    self._finish(result)
                return result
            finally:
                self.run_log.close()

    def _loop(self) -> bool:
        """Steps from ``global_step`` to ``total_steps``, epoch by epoch; False when a stop
        came first.

        After each step: its record (every ``log_interval`` steps), the engine's own work
        (:meth:`_step_done`: epoch ends, evaluations), then either a stop with a checkpoint or
        a periodic checkpoint. Every checkpoint at step G is thus written after every record of
        step G, which :meth:`RunLog.rewind` relies on when a run restarts from it.
        """
        self._started = (self.global_step, time.perf_counter())
        spe = self.steps_per_epoch
        bar = self._progress_bar()
        try:
            while self.global_step < self.total_steps:
                epoch, first = divmod(self.global_step, spe)
                bar.set_description(f"epoch {epoch + 1}/{-(-self.total_steps // spe)}")
                data = self._epoch_data(epoch, first)
                for _ in range(first, min(spe, self.total_steps - epoch * spe)):
                    values = self._step(data)
                    self.global_step += 1
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if v is not None})
                    if self.global_step % max(1, self.cfg.log_interval) == 0:
                        self._record({"type": "step", **self._position(), **values})
                    saved = self._step_done()
                    stop = self._stop_reason()
                    if stop is not None and self.global_step < self.total_steps:
                        if not saved:
                            self.save()
                        self._say(
                            f"{stop} at {self._stop_point()}; wrote {self.last_path}, continue "
                            "with --resume"
                        )
                        return False
                    every = self.checkpoint_steps
                    if not saved and every > 0 and self.global_step % every == 0:
                        self.save()
        finally:
            bar.close()
        return True

    def _progress_bar(self) -> Any:
        """The run's progress bar with its ETA (rank 0, on a terminal, unless disabled)."""
        from tqdm import tqdm

        enabled = self.cfg.progress and self.rank == 0 and sys.stderr.isatty()
        return tqdm(
            total=self.total_steps,
            initial=self.global_step,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
        )

    def _stop_reason(self) -> str | None:
        """Why the run should stop after this step (``max_steps`` or a stop signal), if so."""
        if self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps:
            return f"stopped at max_steps={self.cfg.max_steps}"
        if self._interrupted.signum is not None:
            return f"stopped by {signal.Signals(self._interrupted.signum).name}"
        return None

    def _timing(self) -> tuple[float, float]:
        """Seconds since this process started its first step, and the estimated seconds to
        the end of the run."""
        first, start = self._started
        elapsed = time.perf_counter() - start
        return elapsed, elapsed / max(1, self.global_step - first) * (
            self.total_steps - self.global_step
        )

    # -------------------------------------------------------------- what an engine adds
    def _start(self) -> None:
        """Called once the run folder and log are open, before the first step."""

    def _epoch_data(self, epoch: int, first: int) -> Any:
        """What :meth:`_step` draws its batches from, for ``epoch`` from step ``first`` on."""
        raise NotImplementedError

    def _step(self, data: Any) -> dict[str, float | None]:
        """One step (``global_step`` steps done before it); returns the values to record."""
        raise NotImplementedError

    def _position(self) -> dict[str, int]:
        """The position keys of a step record."""
        return {self.position_key: self.global_step}

    def _step_done(self) -> bool:
        """Work after a step (an epoch's end, an evaluation); True if it wrote ``last.pt``."""
        return False

    def _stop_point(self) -> str:
        """Where the run stopped, as the stop message says it."""
        return f"step {self.global_step}"

    def _result(self, **run: Any) -> RunResult:
        """The engine's result, from the fields of :class:`RunResult` in ``run``."""
        raise NotImplementedError

    def _finish(self, result: Any) -> None:
        """Work after the last step (final outputs)."""

    # -------------------------------------------------------------- failures
    def _step_name(self) -> str:
        """The step being run, as messages name it."""
        return f"step {self.global_step + 1}"

    def _check_finite(self, value: float, what: str | None = None) -> None:
        """Raise :class:`NonFiniteLossError` for a NaN or infinite ``what`` loss (``noun`` by
        default: the training loss)."""
        if math.isfinite(value):
            return
        raise NonFiniteLossError(
            f"the {what or self.noun} loss became {value} at {self._step_name()}; the "
            f"{self.noun} stopped and {self._checkpoint_note()}. {self.divergence_hint}"
        )

    def __enter__(self: E) -> E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the logs, unlock the run folder and release the process group if this engine
        created it."""
        self.run_log.close()
        self._release_output()
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_process_group = False
