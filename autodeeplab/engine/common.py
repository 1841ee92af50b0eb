"""Pieces shared by the search and training engines: data sets from a config, the loss over
the valid pixels of the global batch, run logs, stop signals (the loop base that uses them is
:mod:`autodeeplab.engine.loop`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from autodeeplab.data import (
    VOLUME_DATASETS,
    AnyDataset,
    build_dataset,
    dataset_spatial_dims,
    eval_transform,
    train_transform,
    volume_eval_transform,
    volume_train_transform,
)
from autodeeplab.data.repeat import check_repeat, repeat_dataset
from autodeeplab.engine.distributed import all_reduce_sum
from autodeeplab.runfolder import atomic_write_text, dumps_json

POSITION_KEYS = frozenset({"epoch", "step", "global_step", "iteration"})
"""Record keys that say where a record was written rather than what was measured."""


def data_spatial_dims(data: Any) -> int:
    """2 (images) or 3 (volumes) for a data config, from its data set (``data.name``); refuses
    the keys that do not apply to that kind of data, naming the key and what is valid."""
    dims = dataset_spatial_dims(data.name)
    crop = data.crop_size
    if dims == 2 and not isinstance(crop, int):
        raise ValueError(
            f"data.crop_size = {list(crop)} is a region of interest [D, H, W], which only volume "
            f"data sets ({', '.join(VOLUME_DATASETS)}) take; {data.name!r} holds images: give "
            "one side, e.g. data.crop_size=321"
        )
    if dims == 3 and data.eval_size is not None:
        raise ValueError(
            f"data.eval_size = {list(data.eval_size)} does not apply to the volume data set "
            f"{data.name!r}: volumes are evaluated whole by sliding windows of data.crop_size; "
            "set data.eval_size=null"
        )
    return dims


def build_datasets(data: Any) -> tuple[AnyDataset, AnyDataset]:
    """``(training split with the training transform, evaluation split)`` for a data config
    (:class:`~autodeeplab.config.DataConfig` or :class:`~autodeeplab.config.TrainDataConfig`).

    Images: random scale, crop and flip for training, optionally resized for evaluation.
    Volumes: ``data.crop_size`` crops centred on foreground half of the time and random flips
    along every axis (``data.flip``) for training; whole volumes for evaluation (evaluated by
    sliding window). The training split makes ``data.repeat`` passes per epoch
    (:class:`~autodeeplab.data.RepeatDataset`); the evaluation split is used once.
    """

    def build(split: str, transform: Any) -> AnyDataset:
        try:
            return build_dataset(data.name, data.root, split, transform, **data.options)
        except TypeError as err:  # an option the data set class does not take
            raise ValueError(
                f"data.options {data.options} are not accepted by the {data.name!r} data set: {err}"
            ) from err

    check_repeat(data.repeat)  # before a possibly slow data set scan
    if data_spatial_dims(data) == 3:
        flip = 0.5 if data.flip else 0.0
        train_t: Any = volume_train_transform(data.crop_size, flip_prob=flip)
        eval_t: Any = volume_eval_transform()
    else:
        train_t = train_transform(data.crop_size, scale=data.scale, flip=data.flip)
        eval_t = eval_transform(data.eval_size)
    train = repeat_dataset(build(data.train_split, train_t), data.repeat)
    evaluation = build(data.eval_split, eval_t)
    return train, evaluation


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r} is not valid; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use auto or cpu")
    return device


def fused_optimizer(device: torch.device) -> bool:
    """Whether the optimizers run their fused kernel on ``device`` (CPU and CUDA): one kernel
    per step for all parameters instead of a few per parameter, the same update. A supernet
    has thousands of weight tensors; on one CPU core the fused SGD step of the 64x64 benchmark
    supernet takes half the time of the per-parameter one (docs/supernet.md)."""
    return device.type in ("cpu", "cuda")


def process_device(name: str, world_size: int) -> torch.device:
    """:func:`resolve_device`, with a bare ``cuda`` meaning this process's GPU (``LOCAL_RANK``)
    when several processes run."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def global_batch_loss(
    logits: torch.Tensor, masks: torch.Tensor, ignore_index: int, world_size: int
) -> tuple[torch.Tensor, float]:
    """``(loss to backpropagate, global mean loss)`` for logits ``(N, C, *spatial)`` and masks
    ``(N, *spatial)``: cross-entropy summed over this rank's valid pixels, divided by the valid
    pixels of the global batch and multiplied by ``world_size`` (gradients are averaged over
    processes afterwards). A global batch without a valid pixel gives zero, not NaN."""
    if logits.dtype in (torch.float16, torch.bfloat16):  # the loss of an autocast forward
        logits = logits.float()
    total = F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="sum")
    stats = torch.stack([total.detach(), (masks != ignore_index).sum().to(total.dtype)])
    all_reduce_sum(stats)
    valid = stats[1].clamp_min(1.0)
    return total * (world_size / valid), float(stats[0] / valid)


def global_valid_pixels(masks: torch.Tensor, ignore_index: int) -> int:
    """Pixels of the global batch (all processes) whose label is not ``ignore_index``."""
    count = (masks != ignore_index).sum().reshape(1)
    return int(all_reduce_sum(count).item())


class RunLog:
    """``metrics.jsonl`` records, TensorBoard scalars and printed lines of one run.

    Only rank 0 writes or prints. Each record has a ``type``; its numeric values (other than
    :data:`POSITION_KEYS`) become TensorBoard scalars ``<type>/<key>`` at ``record[step_key]``.
    Records are standard JSON: NaN and infinite values are written as ``null``.
    """

    def __init__(
        self,
        output: Path,
        *,
        rank: int,
        step_key: str,
        tensorboard: bool,
        log: Callable[[str], None] | None,
    ) -> None:
        self.output, self.rank, self.step_key = output, rank, step_key
        self.tensorboard, self.log = tensorboard, log
        self._jsonl: Any = None
        self._tb: Any = None
        self._purge_step: int | None = None

    @property
    def path(self) -> Path:
        return self.output / "metrics.jsonl"

    def rewind(self, position: int) -> int:
        """Drop the records written after ``position`` (``record[step_key] > position``) and
        any line a killed process left unfinished: a run that restarts from a checkpoint at
        ``position`` writes them again. TensorBoard events after ``position`` are discarded
        too (``purge_step``). Returns the number of lines dropped. Call before :meth:`open`."""
        if self.rank != 0:
            return 0
        self._purge_step = position + 1
        if not self.path.is_file():
            return 0
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if self._written_by(line, position)]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(kept))
        return len(lines) - len(kept)

    def _written_by(self, line: str, position: int) -> bool:
        """Whether ``line`` is a whole record written at or before ``position``."""
        if not line.endswith("\n"):
            return False  # cut off by a kill during the write
        try:
            record = json.loads(line)
        except ValueError:
            return False
        if not isinstance(record, dict):
            return False
        step = record.get(self.step_key)
        return not isinstance(step, int) or step <= position

    def open(self) -> None:
        """Start the TensorBoard writer (when enabled and installed)."""
        if self.rank != 0 or not self.tensorboard or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tb = SummaryWriter(str(self.output / "tensorboard"), purge_step=self._purge_step)

    def record(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` (and TensorBoard)."""
        if self.rank != 0:
            return
        if self._jsonl is None:
            self._jsonl = self.path.open("a", encoding="utf-8")
        self._jsonl.write(dumps_json(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in record.items():
                if (
                    isinstance(v, int | float)
                    and not isinstance(v, bool)
                    and k not in POSITION_KEYS
                ):
                    self._tb.add_scalar(f"{record['type']}/{k}", v, record[self.step_key])

    def say(self, text: str) -> None:
        if self.rank == 0 and self.log is not None:
            self.log(text)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
"""Signals that stop a run cleanly: Ctrl-C, and what ``kill``, batch schedulers and container
runtimes send first."""


class StopRequest:
    """Polled by the training loop between steps: true once a stop signal arrived."""

    def __init__(self) -> None:
        self.signum: int | None = None
        """The first stop signal received (``signal.SIGINT``, ``signal.SIGTERM``), else None."""

    def __call__(self) -> bool:
        return self.signum is not None


EARLY_STOP = StopRequest()
"""A stop signal this process received before any run listened for one (see
:func:`record_early_stop_signals`); every later :func:`deferred_interrupt` starts set."""


def record_early_stop_signals() -> None:
    """In a process that starts runs later (a study's pool worker): record the first stop
    signal in :data:`EARLY_STOP` instead of acting on it, so that a signal arriving between two
    runs, or while a run is being set up, stops the next run at its first step boundary (with a
    checkpoint) rather than being lost."""

    def handler(signum: int, frame: Any) -> None:
        if EARLY_STOP.signum is None:
            EARLY_STOP.signum = signum

    for s in STOP_SIGNALS:
        signal.signal(s, handler)


@contextlib.contextmanager
def deferred_interrupt(
    enabled: bool = True, signals: Sequence[int] = STOP_SIGNALS
) -> Iterator[StopRequest]:
    """Turn the first stop signal (Ctrl-C = SIGINT, or SIGTERM) into a flag the training loop
    polls between steps, so it can finish the step, write a checkpoint and stop cleanly; a
    second signal of either kind raises :class:`KeyboardInterrupt` at once. The handlers in
    place before are restored on exit. Yields the :class:`StopRequest`; it stays false when
    ``enabled`` is false or outside the main thread (where no handler can be installed), and
    starts set when the process recorded a stop signal before (:data:`EARLY_STOP`)."""
    stop = StopRequest()
    stop.signum = EARLY_STOP.signum if enabled else None
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    # getsignal gives None for a handler installed outside Python; SIG_DFL is then the best guess
    previous = {s: signal.getsignal(s) or signal.SIG_DFL for s in signals}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is not None:
            restore()
            raise KeyboardInterrupt
        stop.signum = signum

    for s in signals:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        restore()
