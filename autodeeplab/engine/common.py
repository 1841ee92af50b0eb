"""Pieces shared by the search and training engines: data sets from a config, run logs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from autodeeplab.data import SegmentationDataset, build_dataset, eval_transform, train_transform
from autodeeplab.data.repeat import check_repeat, repeat_dataset

POSITION_KEYS = frozenset({"epoch", "step", "global_step", "iteration"})
"""Record keys that say where a record was written rather than what was measured."""


def build_datasets(data: Any) -> tuple[SegmentationDataset, SegmentationDataset]:
    """``(training split with the training transform, evaluation split)`` for a data config
    (:class:`~autodeeplab.config.DataConfig` or :class:`~autodeeplab.config.TrainDataConfig`).

    The training split makes ``data.repeat`` passes per epoch
    (:class:`~autodeeplab.data.RepeatDataset`); the evaluation split is used once.
    """

    def build(split: str, transform: Any) -> SegmentationDataset:
        try:
            return build_dataset(data.name, data.root, split, transform, **data.options)
        except TypeError as err:  # an option the data set class does not take
            raise ValueError(
                f"data.options {data.options} are not accepted by the {data.name!r} data set: {err}"
            ) from err

    check_repeat(data.repeat)  # before a possibly slow data set scan
    train = build(
        data.train_split, train_transform(data.crop_size, scale=data.scale, flip=data.flip)
    )
    train = repeat_dataset(train, data.repeat)
    evaluation = build(data.eval_split, eval_transform(data.eval_size))
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


def process_device(name: str, world_size: int) -> torch.device:
    """:func:`resolve_device`, with a bare ``cuda`` meaning this process's GPU (``LOCAL_RANK``)
    when several processes run."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


class RunLog:
    """``metrics.jsonl`` records, TensorBoard scalars and printed lines of one run.

    Only rank 0 writes or prints. Each record has a ``type``; its numeric values (other than
    :data:`POSITION_KEYS`) become TensorBoard scalars ``<type>/<key>`` at ``record[step_key]``.
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

    def open(self) -> None:
        """Start the TensorBoard writer (when enabled and installed)."""
        if self.rank != 0 or not self.tensorboard or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tb = SummaryWriter(str(self.output / "tensorboard"))

    def record(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``metrics.jsonl`` (and TensorBoard)."""
        if self.rank != 0:
            return
        if self._jsonl is None:
            self._jsonl = (self.output / "metrics.jsonl").open("a")
        self._jsonl.write(json.dumps(record) + "\n")
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


@contextlib.contextmanager
def deferred_interrupt(enabled: bool = True) -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C (SIGINT) into a flag the training loop polls between steps, so it
    can finish the step, write a checkpoint and stop cleanly; a second Ctrl-C interrupts at
    once. Yields the poll function. Inactive (never set) when ``enabled`` is false or outside
    the main thread."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hit = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if hit.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        hit.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


class EngineBase:
    """What the search and training engines share: the run log, the last checkpoint's path and
    the process group they may have created."""

    run_log: RunLog
    last_path: Path
    _owns_process_group: bool = False

    def _record(self, record: dict[str, Any]) -> None:
        self.run_log.record(record)

    def _say(self, text: str) -> None:
        self.run_log.say(text)

    def _checkpoint_note(self) -> str:
        """How a stop leaves the run folder: what a failure message should say."""
        if self.last_path.exists():
            return f"the last good checkpoint {self.last_path} is kept"
        return "no checkpoint was written yet"

    def close(self) -> None:
        """Close the logs and release the process group if this engine created it."""
        self.run_log.close()
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_process_group = False
