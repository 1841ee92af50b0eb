"""Retraining a discrete architecture from scratch (as in the paper; see docs/train.md).

SGD with the poly schedule (power 0.9, optional linear warm-up), Scheduled Drop Path (the
drop probability grows linearly with training progress), periodic evaluation on the held-out
split, the best model by mIoU kept as a model folder, exact resume, mixed precision on CUDA,
and multi-process training under ``torchrun`` (DistributedDataParallel + BatchNorm over the
global batch).

The learning rate and the drop path rate are pure functions of the iteration; data order and
augmentation are pure functions of ``(seed, epoch, position)`` as in the search engine. A run
resumed from ``last.pt`` (which also holds the random number generator states) therefore
continues exactly as the uninterrupted run would have.

The loss of a step is the cross-entropy summed over the valid pixels of the *global* batch
divided by their number, so ``N`` processes compute the same gradient as one process on the
concatenated batch, whatever the share of ignored pixels on each rank.

Run folder::

    .autodeeplab.lock  the run's lock (autodeeplab.runfolder)
    config.yaml      the resolved config
    genotype.json    the architecture trained
    metrics.jsonl    step records (loss, lr, drop path) and eval records (mIoU, ...)
    tensorboard/     the same scalars for TensorBoard (when installed)
    last.pt          training state for --resume (atomic writes)
    best/            model folder of the best evaluation so far (load_model-ready)
    model/           model folder of the final weights
    curves.png       loss, learning rate and mIoU curves
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from autodeeplab.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from autodeeplab.config import (
    TRAIN_RUNTIME_KEYS,
    ConfigError,
    TrainConfig,
    TrainModelConfig,
    check_ranges,
    config_diff,
    config_hash,
    save_config,
    to_dict,
)
from autodeeplab.data import SegmentationDataset
from autodeeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from autodeeplab.engine.common import (
    EngineBase,
    RunLog,
    build_datasets,
    deferred_interrupt,
    global_batch_loss,
    process_device,
    resolve_device,
)
from autodeeplab.engine.distributed import convert_sync_batchnorm, dist_info, init_distributed
from autodeeplab.engine.search import (
    KeyedSamples,
    NonFiniteLossError,
    epoch_batches,
    print_flush,
)
from autodeeplab.genotype import Genotype
from autodeeplab.heads import resolve_atrous_rates
from autodeeplab.inference import evaluate
from autodeeplab.metrics import ConfusionMatrix
from autodeeplab.network import AutoDeepLab, NetworkConfig
from autodeeplab.runfolder import json_ready
from autodeeplab.saved_model import save_model

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class TrainResult:
    """What a training run leaves behind."""

    output: Path
    iteration: int
    """Completed iterations."""
    finished: bool
    """False when the run stopped early at ``max_steps``."""
    best_miou: float | None
    best_iteration: int | None
    final_miou: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    """The ``eval`` records of ``metrics.jsonl``."""
    rank: int = 0
    stop_signal: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run early with a checkpoint, else None."""


# ---------------------------------------------------------------------------- schedules
def poly_lr(
    iteration: int,
    iterations: int,
    base_lr: float,
    power: float = 0.9,
    min_lr: float = 0.0,
    warmup_iters: int = 0,
    warmup_ratio: float = 0.1,
) -> float:
    """Learning rate of (0-based) ``iteration``: ``(base - min) * (1 - it / iterations) ** power
    + min``, multiplied during warm-up by a factor rising linearly from ``warmup_ratio`` to 1."""
    if iterations < 1 or not 0 <= iteration <= iterations:
        raise ValueError(f"iteration {iteration} outside [0, {iterations}]")
    lr = (base_lr - min_lr) * (1.0 - iteration / iterations) ** power + min_lr
    if iteration < warmup_iters:
        lr *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return lr


# ---------------------------------------------------------------------------- model
def resolve_network(
    model: TrainModelConfig,
    num_classes: int,
    crop_size: int | None = None,
    genotype: Genotype | None = None,
) -> NetworkConfig:
    """The :class:`NetworkConfig` a train config asks for (genotype file or model preset).

    ``model.aspp_rates: auto`` is resolved here, from the training ``crop_size``, into explicit
    rates, so the saved network does not depend on the crop; ``paper`` stays ``None`` (the
    network applies DeepLab's rule for its output stride).

    ``genotype`` given: that architecture with the config's network options (``model.genotype``
    and ``model.preset`` must then be null), as if it were read from a genotype file.
    """
    from autodeeplab.models import get_model_spec

    multiplier = 20  # a genotype without a preset gets the S model's width
    if genotype is not None:
        if model.genotype is not None or model.preset is not None:
            raise ValueError(
                "an architecture is given, so model.genotype and model.preset must be null"
            )
    elif (model.genotype is None) == (model.preset is None):
        raise ValueError(
            "name exactly one architecture: --genotype FILE (model.genotype) or --preset NAME "
            "(model.preset)"
        )
    elif model.preset is not None:
        spec = get_model_spec(model.preset)
        genotype, multiplier = spec.genotype, spec.filter_multiplier
    else:
        genotype = Genotype.load(model.genotype)  # type: ignore[arg-type]
    if model.filter_multiplier is not None:
        multiplier = model.filter_multiplier
    rates = resolve_atrous_rates(model.aspp_rates, genotype.output_stride, crop_size)
    return NetworkConfig(
        genotype=genotype,
        num_classes=num_classes,
        filter_multiplier=multiplier,
        aspp_channels=model.aspp_channels,
        aspp_rates=None if model.aspp_rates == "paper" else rates,
        decoder_channels=model.decoder_channels,
        low_level_reduced=model.low_level_reduced,
        drop_path_rate=model.drop_path_rate,
    )


# ---------------------------------------------------------------------------- engine
class TrainEngine(EngineBase):
    """Holds the model, optimiser, data and position of one training run.

    ``TrainEngine(config, resume=True)`` continues from ``<output>/last.pt``; ``run()`` trains
    to ``iterations`` (or ``max_steps``) and returns a :class:`TrainResult`.
    """

    def __init__(
        self,
        config: TrainConfig,
        resume: bool = False,
        log: Callable[[str], None] | None = print_flush,
    ) -> None:
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

        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)

        self.train_set, self.eval_set = self._datasets()
        self.keyed = KeyedSamples(self.train_set, config.seed)
        self.global_batch = config.data.batch_size * self.world_size
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the {config.data.train_split!r} split has {len(self.train_set)} samples, fewer "
                f"than one global batch of {self.global_batch} (batch_size "
                f"{config.data.batch_size} x {self.world_size} processes)"
            )

        self.network = resolve_network(
            config.model, self.train_set.num_classes, config.data.crop_size
        )
        self._check_batch_and_crop()
        self.model = AutoDeepLab.from_config(self.network).to(self.device)
        if self.world_size > 1 and config.model.sync_bn:
            convert_sync_batchnorm(self.model, self.device)
        self.model.to(self.device)
        self.ddp: nn.Module = self.model
        if self.world_size > 1:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        o = config.optim
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
        )
        self.amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = AMP_DTYPES[config.amp_dtype]
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and self.amp_dtype == torch.float16
        )
        self.iteration = 0
        self.best_miou: float | None = None
        self.best_iteration: int | None = None
        self.history: list[dict[str, Any]] = []
        self.loss_sum, self.loss_steps = 0.0, 0
        self.run_log = RunLog(
            self.output,
            rank=self.rank,
            step_key="iteration",
            tensorboard=config.tensorboard,
            log=log,
        )
        self._claim_output()
        try:
            if resume:
                self._resume()
            elif self.last_path.exists():
                raise ValueError(
                    f"{self.output} already holds a training run ({self.last_path}); pass "
                    "--resume to continue it or choose another output folder"
                )
            self._rewind_log(self.iteration)
        except BaseException:
            self._release_output()
            raise

    # -------------------------------------------------------------- setup
    def _validate(self) -> None:
        c = self.cfg
        check_ranges(c)  # again: a config built in code has not been through from_dict
        if c.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got {c.amp_dtype!r}")
        if c.data.name != "synthetic" and c.data.root is None:
            raise ValueError(
                f"data set {c.data.name!r} needs a root folder: set data.root in the config or "
                "pass --data-root DIR"
            )
        if c.model.genotype is not None and not Path(c.model.genotype).is_file():
            raise FileNotFoundError(f"genotype file {c.model.genotype} does not exist")

    def _check_batch_and_crop(self) -> None:
        """What the config ranges cannot know: the process count and the genotype."""
        c = self.cfg
        bn_batch = c.data.batch_size * (self.world_size if c.model.sync_bn else 1)
        if bn_batch < 2:
            raise ConfigError(
                f"config key data.batch_size = {c.data.batch_size} is too small for training: "
                "BatchNorm (the image-pooling branch) needs 2 samples or more per batch, per "
                "process or over all processes with model.sync_bn; use data.batch_size >= 2"
            )
        need = self.network.genotype.max_stride + 1
        if c.data.crop_size < need:
            raise ConfigError(
                f"config key data.crop_size = {c.data.crop_size} is too small for this "
                f"genotype: its deepest level has stride {need - 1}; use data.crop_size >= {need}"
            )

    def _datasets(self) -> tuple[SegmentationDataset, SegmentationDataset]:
        train, evaluation = build_datasets(self.cfg.data)
        if len(evaluation) == 0:
            raise ValueError(
                f"the {self.cfg.data.eval_split!r} split of {self.cfg.data.name!r} has no samples"
            )
        return train, evaluation

    # -------------------------------------------------------------- steps
    def lr_at(self, iteration: int) -> float:
        o = self.cfg.optim
        return poly_lr(
            iteration,
            self.cfg.iterations,
            o.lr,
            o.poly_power,
            o.min_lr,
            o.warmup_iters,
            o.warmup_ratio,
        )

    def _check_finite(self, value: float) -> None:
        if math.isfinite(value):
            return
        where = self._checkpoint_note()
        raise NonFiniteLossError(
            f"the training loss became {value} at iteration {self.iteration + 1}; training "
            f"stopped and {where}. Lower the learning rate (optim.lr), add warm-up "
            "(optim.warmup_iters) or check the data."
        )

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        """One SGD step on a (per-process) batch; returns the global-batch mean loss."""
        lr = self.lr_at(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.set_drop_path(self.iteration / self.cfg.iterations)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits = self.ddp(images)  # (N, C, H, W)
        loss, value = global_batch_loss(logits, masks, self.cfg.optim.ignore_index, self.world_size)
        self._check_finite(value)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    # -------------------------------------------------------------- data
    def _batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        b = epoch_batches(
            range(len(self.train_set)),
            self.cfg.seed,
            0,
            epoch,
            self.cfg.data.batch_size,
            self.rank,
            self.world_size,
        )
        return b[: self.steps_per_epoch]

    def _data(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from the current iteration on, epoch after epoch."""
        epoch, position = divmod(self.iteration, self.steps_per_epoch)
        while True:
            loader = torch.utils.data.DataLoader(
                self.keyed,
                batch_sampler=self._batches(epoch)[position:],
                num_workers=self.cfg.data.workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch),
            )
            for images, masks in loader:
                yield (
                    images.to(self.device, non_blocking=True),
                    masks.to(self.device, non_blocking=True),
                )
            epoch, position = epoch + 1, 0

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> ConfusionMatrix:
        """Single-scale confusion matrix on the evaluation split (sharded over processes)."""
        n = len(self.eval_set)
        if self.cfg.data.max_eval_samples is not None:
            n = min(n, self.cfg.data.max_eval_samples)
        shard = torch.utils.data.Subset(self.eval_set, range(self.rank, n, self.world_size))
        # evaluation must not shift the training RNG (data loaders draw seeds from it)
        with (
            torch.random.fork_rng(devices=[]),
            torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp),
        ):
            cm = evaluate(
                self.model,
                shard,
                self.train_set.num_classes,
                batch_size=self.cfg.data.eval_batch_size,
                num_workers=self.cfg.data.workers,
                ignore_index=self.cfg.optim.ignore_index,
                device=self.device,
            )
        self.model.train()
        cm.matrix = cm.matrix.to(self.device)
        cm.all_reduce()
        cm.matrix = cm.matrix.cpu()
        return cm

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "train",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "iteration": self.iteration,
            "best_miou": self.best_miou,
            "best_iteration": self.best_iteration,
            "history": list(self.history),
            "loss_sum": self.loss_sum,
            "loss_steps": self.loss_steps,
            "world_size": self.world_size,
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg, TRAIN_RUNTIME_KEYS),
            "network": self.network.to_dict(),
        }

    def save(self) -> None:
        """Write ``last.pt`` (rank 0; every rank waits for it)."""
        if self.rank == 0:
            save_checkpoint(self.state_dict(), self.last_path)
        self._barrier()

    def _barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def _resume(self) -> None:
        if not self.last_path.exists():
            raise FileNotFoundError(
                f"cannot resume: {self.last_path} does not exist; run without --resume to start "
                "a new training run in this folder"
            )
        state = load_checkpoint(self.last_path, map_location=self.device)
        if state.get("kind") != "train":
            raise CheckpointError(
                f"{self.last_path} is not a training checkpoint (kind {state.get('kind')!r})"
            )
        problems = []
        if state["config_hash"] != config_hash(self.cfg, TRAIN_RUNTIME_KEYS):
            problems += config_diff(state["config"], to_dict(self.cfg), TRAIN_RUNTIME_KEYS)
        if state["network"] != self.network.to_dict():
            problems.append(
                f"network: {NetworkConfig.from_dict(state['network']).genotype} -> "
                f"{self.network.genotype} (or its options)"
            )
        if problems:
            raise CheckpointError(
                f"cannot resume from {self.last_path}: it was written with another "
                "configuration; differing keys:\n  "
                + "\n  ".join(problems)
                + "\nUse the same config and architecture (only runtime keys such as output, "
                "device, eval_interval may change) or start a new run in another output folder."
            )
        if state["world_size"] != self.world_size:
            raise CheckpointError(
                f"{self.last_path} was written by {state['world_size']} processes, this run has "
                f"{self.world_size}; resume with the same number of processes"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.iteration = state["iteration"]
        self.best_miou, self.best_iteration = state["best_miou"], state["best_iteration"]
        self.history = list(state["history"])
        self.loss_sum, self.loss_steps = state["loss_sum"], state["loss_steps"]

    def _save_model(self, name: str, miou: float | None) -> None:
        if self.rank != 0:
            return
        save_model(
            self.model,
            self.output / name,
            class_names=self.train_set.class_names,
            palette=self.train_set.palette,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            ignore_index=self.cfg.optim.ignore_index,
            dataset=self.cfg.data.name,
            extra=json_ready(
                {"iteration": self.iteration, "mIoU": miou, "train_config": to_dict(self.cfg)}
            ),
        )

    # -------------------------------------------------------------- logging
    def _bar(self) -> Any:
        from tqdm import tqdm

        enabled = self.cfg.progress and self.rank == 0 and sys.stderr.isatty()
        return tqdm(
            total=self.cfg.iterations,
            initial=self.iteration,
            desc="train",
            unit="it",
            disable=not enabled,
            dynamic_ncols=True,
        )

    # -------------------------------------------------------------- main loop
    def run(self) -> TrainResult:
        """Train to ``iterations`` (or ``max_steps``); evaluate, checkpoint, save models."""
        cfg = self.cfg
        if self.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.output / "config.yaml")
            self.network.genotype.save(self.output / "genotype.json")
        self.run_log.open()
        self.model.train()
        start_iteration, start = self.iteration, time.perf_counter()
        data = self._data()
        bar = self._bar()
        # one process: Ctrl-C or SIGTERM finishes the step and checkpoints (ranks could not
        # agree on it)
        stop = contextlib.ExitStack()
        interrupted = stop.enter_context(deferred_interrupt(self.world_size == 1))
        try:
            if self.iteration == 0:
                self._say(
                    f"training {self.network.genotype} F={self.network.filter_multiplier} on "
                    f"{cfg.data.name} ({len(self.train_set)} samples, global batch "
                    f"{self.global_batch}, {self.world_size} process(es), {self.device}"
                    f"{', AMP ' + cfg.amp_dtype if self.amp else ''}) for {cfg.iterations} "
                    "iterations"
                )
            while self.iteration < cfg.iterations:
                images, masks = next(data)
                loss = self.train_step(images, masks)
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
                self.iteration += 1
                self.loss_sum += loss
                self.loss_steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if self.iteration % max(1, cfg.log_interval) == 0:
                    self._record(
                        {
                            "type": "step",
                            "iteration": self.iteration,
                            "epoch": (self.iteration - 1) // self.steps_per_epoch + 1,
                            "loss": loss,
                            "lr": lr,
                            "drop_path": max(self.model.drop_path_rates(), default=0.0),
                        }
                    )
                done = self.iteration == cfg.iterations
                if done or (cfg.eval_interval > 0 and self.iteration % cfg.eval_interval == 0):
                    self._evaluate_and_report(start_iteration, start)
                    self.save()
                elif cfg.checkpoint_interval > 0 and self.iteration % cfg.checkpoint_interval == 0:
                    self.save()
                if not done and cfg.max_steps is not None and self.iteration >= cfg.max_steps:
                    self.save()
                    self._say(
                        f"stopped at max_steps={cfg.max_steps} (iteration {self.iteration}); "
                        "continue with --resume"
                    )
                    return self._result(finished=False)
                if not done and interrupted():
                    self.save()
                    self._say(
                        f"stopped by {signal.Signals(interrupted.signum).name} at iteration "
                        f"{self.iteration}; wrote {self.last_path}, continue with --resume"
                    )
                    return self._result(finished=False, stop_signal=interrupted.signum)
        finally:
            stop.close()
            bar.close()
            self.run_log.close()
        self._save_model("model", self.history[-1]["mIoU"] if self.history else None)
        if self.rank == 0:
            self._write_curves()
        self._barrier()
        return self._result(finished=True)

    def _evaluate_and_report(self, start_iteration: int, start: float) -> None:
        cm = self.evaluate()
        miou = cm.mean_iou()
        improved = math.isfinite(miou) and (self.best_miou is None or miou > self.best_miou)
        if improved:
            self.best_miou, self.best_iteration = miou, self.iteration
            self._save_model("best", miou)
        elapsed = time.perf_counter() - start
        done = self.iteration - start_iteration
        eta = elapsed / max(1, done) * (self.cfg.iterations - self.iteration)
        record = {
            "type": "eval",
            "iteration": self.iteration,
            "epoch": (self.iteration - 1) // self.steps_per_epoch + 1,
            "loss": self.loss_sum / max(1, self.loss_steps),
            "mIoU": miou,
            "pixel_accuracy": cm.pixel_accuracy(),
            "mean_accuracy": cm.mean_accuracy(),
            "best_mIoU": self.best_miou,
            "best_iteration": self.best_iteration,
            "time_s": elapsed,
        }
        self.history.append(record)
        self._record(record)
        self.loss_sum, self.loss_steps = 0.0, 0
        self._say(
            f"iteration {self.iteration}/{self.cfg.iterations} loss {record['loss']:.4f} "
            f"mIoU {100 * miou:.2f} (best {100 * (self.best_miou or 0):.2f} at "
            f"{self.best_iteration}) pixel acc {100 * record['pixel_accuracy']:.2f} "
            f"[{elapsed:.0f}s, eta {eta:.0f}s]"
        )

    def _write_curves(self) -> None:
        from autodeeplab.draw import save_figure
        from autodeeplab.report import draw_training_curves, load_jsonl

        records = load_jsonl(self.output / "metrics.jsonl")
        try:
            fig = draw_training_curves(records)
        except ValueError:  # too few records to draw
            return
        save_figure(fig, self.output / "curves.png")

    def _result(self, finished: bool, stop_signal: int | None = None) -> TrainResult:
        return TrainResult(
            output=self.output,
            iteration=self.iteration,
            finished=finished,
            best_miou=self.best_miou,
            best_iteration=self.best_iteration,
            final_miou=self.history[-1]["mIoU"] if self.history else None,
            history=list(self.history),
            rank=self.rank,
            stop_signal=stop_signal,
        )


def run_train(
    config: TrainConfig, resume: bool = False, log: Callable[[str], None] | None = print_flush
) -> TrainResult:
    """Run (or resume) a training run described by ``config``."""
    engine = TrainEngine(config, resume=resume, log=log)
    try:
        return engine.run()
    finally:
        engine.close()
