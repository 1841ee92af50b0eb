"""Retraining a discrete architecture from scratch (as in the paper; see docs/train.md).

SGD with the poly schedule (power 0.9, optional linear warm-up), Scheduled Drop Path (the
drop probability grows linearly with training progress), periodic evaluation on the held-out
split, the best model by mIoU kept as a model folder, exact resume, mixed precision on CUDA,
and multi-process training under ``torchrun`` (DistributedDataParallel + BatchNorm over the
global batch).

The learning rate and the drop path rate are pure functions of the iteration; data order and
augmentation are pure functions of ``(seed, epoch, position)`` (:mod:`autodeeplab.engine.loop`). A run
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

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from autodeeplab.config import (
    TRAIN_RUNTIME_KEYS,
    ConfigError,
    TrainConfig,
    TrainModelConfig,
    crop_min_side,
    to_dict,
)
from autodeeplab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from autodeeplab.engine.common import fused_optimizer, global_batch_loss
from autodeeplab.engine.distributed import convert_sync_batchnorm
from autodeeplab.engine.loop import Batch, EngineBase, RunResult, print_flush
from autodeeplab.genotype import Genotype
from autodeeplab.heads import resolve_atrous_rates
from autodeeplab.inference import evaluate
from autodeeplab.metrics import ConfusionMatrix
from autodeeplab.network import AutoDeepLab, NetworkConfig
from autodeeplab.ops import layers
from autodeeplab.runfolder import json_ready
from autodeeplab.saved_model import identity_normalization, save_model

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(kw_only=True)
class TrainResult(RunResult):
    """What a training run leaves behind (``history``: the ``eval`` records of
    ``metrics.jsonl``)."""

    iteration: int
    """Completed iterations."""
    best_miou: float | None
    best_iteration: int | None
    final_miou: float | None


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
    crop_size: int | Sequence[int] | None = None,
    genotype: Genotype | None = None,
    *,
    in_channels: int = 3,
    spatial_dims: int = 2,
) -> NetworkConfig:
    """The :class:`NetworkConfig` a train config asks for (genotype file or model preset),
    with ``in_channels`` input channels (image channels, or the modalities of volumes), for
    images (``spatial_dims=2``) or volumes (3).

    ``model.aspp_rates: auto`` is resolved here, from the training ``crop_size`` (its smallest
    side), into explicit rates, so the saved network does not depend on the crop; ``paper``
    stays ``None`` (the network applies DeepLab's rule for its output stride).

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
    crop = None if crop_size is None else crop_min_side(crop_size)
    rates = resolve_atrous_rates(model.aspp_rates, genotype.output_stride, crop)
    return NetworkConfig(
        genotype=genotype,
        num_classes=num_classes,
        filter_multiplier=multiplier,
        in_channels=in_channels,
        spatial_dims=spatial_dims,
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

    kind = "train"
    noun = "training"
    runtime_keys = TRAIN_RUNTIME_KEYS
    position_key = "iteration"
    divergence_hint = (
        "Lower the learning rate (optim.lr), add warm-up (optim.warmup_iters) or check the data."
    )

    def __init__(
        self,
        config: TrainConfig,
        resume: bool = False,
        log: Callable[[str], None] | None = print_flush,
    ) -> None:
        self._set_up(config, log)
        self._load_data()
        if len(self.eval_set) == 0:
            raise ValueError(
                f"the {config.data.eval_split!r} split of {config.data.name!r} has no samples"
            )
        self._set_steps_per_epoch(
            len(self.train_set),
            f"the {config.data.train_split!r} split has {len(self.train_set)} samples",
        )

        self.network = resolve_network(
            config.model,
            self.train_set.num_classes,
            config.data.crop_size,
            in_channels=self.train_set.in_channels,
            spatial_dims=self.spatial_dims,
        )
        self._check_batch_and_crop()
        self.model = AutoDeepLab.from_config(self.network).to(self.device)
        if self.world_size > 1 and config.model.sync_bn:
            convert_sync_batchnorm(self.model, self.device)
        self.model.to(self.device)
        self.memory_format = torch.contiguous_format
        if config.channels_last:  # NHWC / NDHWC, parameters included
            self.memory_format = layers(self.spatial_dims).channels_last
            self.model.to(memory_format=self.memory_format)
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
            fused=fused_optimizer(self.device),
        )
        self.amp_dtype = AMP_DTYPES[config.amp_dtype]
        # on the CPU only bfloat16: float16 autocast there is slow and would need loss scaling
        self.amp = config.amp and (self.device.type == "cuda" or self.amp_dtype == torch.bfloat16)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp and self.amp_dtype == torch.float16
        )
        self.best_miou: float | None = None
        self.best_iteration: int | None = None
        self.loss_sum, self.loss_steps = 0.0, 0
        self.total_steps = config.iterations
        self.checkpoint_steps = config.checkpoint_interval
        self._open(resume)

    @property
    def iteration(self) -> int:
        """Iterations done (the run's global step)."""
        return self.global_step

    # -------------------------------------------------------------- setup
    def _validate(self) -> None:
        super()._validate()
        c = self.cfg
        if c.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got {c.amp_dtype!r}")
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
        if crop_min_side(c.data.crop_size) < need:
            raise ConfigError(
                f"config key data.crop_size = {c.data.crop_size} is too small for this "
                f"genotype: its deepest level has stride {need - 1}; use data.crop_size >= {need}"
            )

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

    def _step_name(self) -> str:
        return f"iteration {self.iteration + 1}"

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> float:
        """One SGD step on a (per-process) batch; returns the global-batch mean loss."""
        lr = self.lr_at(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.set_drop_path(self.iteration / self.cfg.iterations)
        images = images.contiguous(memory_format=self.memory_format)
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
        # free the gradients now, not at the next backward: the next forward pass runs
        # without them (one copy of the weights less at its peak)
        self.optimizer.zero_grad(set_to_none=True)
        return value

    # -------------------------------------------------------------- the loop's steps
    def _start(self) -> None:
        if self.rank == 0:
            self.network.genotype.save(self.output / "genotype.json")
        self.model.train()
        if self.iteration == 0:
            d = self.cfg.data
            # the training set holds every sample data.repeat times: say how many are distinct
            samples = f"{len(self.train_set) // d.repeat} samples"
            if d.repeat > 1:
                samples += f" x {d.repeat} passes per epoch"
            self._say(
                f"training {self.network.genotype} F={self.network.filter_multiplier} on "
                f"{d.name} ({samples}, global batch {self.global_batch}, {self.world_size} "
                f"process(es), {self.device}{', AMP ' + self.cfg.amp_dtype if self.amp else ''}) "
                f"for {self.total_steps} iterations"
            )

    def _batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batch keys for ``epoch``."""
        return self._epoch_keys(range(len(self.train_set)), 0, epoch)

    def _epoch_data(self, epoch: int, first: int) -> Iterator[Batch]:
        return self._loader(self._batches(epoch)[first:], epoch)

    def _step(self, data: Iterator[Batch]) -> dict[str, float | None]:
        loss = self.train_step(*next(data))
        self.loss_sum += loss
        self.loss_steps += 1
        return {
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],  # the rate this step used
            "drop_path": max(self.model.drop_path_rates(), default=0.0),
        }

    def _position(self) -> dict[str, int]:
        return {"iteration": self.iteration, "epoch": self._epoch()}

    def _epoch(self) -> int:
        """The (1-based) epoch of the last iteration done."""
        return (self.iteration - 1) // self.steps_per_epoch + 1

    def _step_done(self) -> bool:
        """Evaluate (and checkpoint) every ``eval_interval`` iterations and after the last."""
        every = self.cfg.eval_interval
        if self.iteration < self.total_steps and not (every > 0 and self.iteration % every == 0):
            return False
        self._evaluate_and_report()
        self.save()
        return True

    def _stop_point(self) -> str:
        return f"iteration {self.iteration}"

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> ConfusionMatrix:
        """Single-scale confusion matrix on the evaluation split (sharded over processes);
        volumes are evaluated whole, by sliding windows of ``data.crop_size``."""

        def confusion(shard: Dataset) -> ConfusionMatrix:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                if self.spatial_dims == 3:
                    return self._volume_confusion(self.model, shard)
                return evaluate(
                    self.model,
                    shard,
                    self.train_set.num_classes,
                    batch_size=self.cfg.data.eval_batch_size,
                    num_workers=self.cfg.data.workers,
                    ignore_index=self.cfg.optim.ignore_index,
                    device=self.device,
                )

        return self._evaluate(confusion)

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_miou": self.best_miou,
            "best_iteration": self.best_iteration,
            "loss_sum": self.loss_sum,
            "loss_steps": self.loss_steps,
            "network": self.network.to_dict(),
        }

    def _resume_problems(self, state: dict[str, Any]) -> list[str]:
        # compared as configs: a checkpoint written before a network key existed has its default
        old_network = NetworkConfig.from_dict(state["network"])
        if old_network == self.network:
            return []
        old = old_network.genotype
        return [f"network: {old} -> {self.network.genotype} (or its options)"]

    def _load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.best_miou, self.best_iteration = state["best_miou"], state["best_iteration"]
        self.loss_sum, self.loss_steps = state["loss_sum"], state["loss_steps"]

    def _save_model(self, name: str, miou: float | None) -> None:
        if self.rank != 0:
            return
        if self.spatial_dims == 3:  # volume data sets hand out normalised intensities
            mean, std = identity_normalization(self.network.in_channels)
        else:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        save_model(
            self.model,
            self.output / name,
            class_names=self.train_set.class_names,
            palette=self.train_set.palette,
            mean=mean,
            std=std,
            ignore_index=self.cfg.optim.ignore_index,
            dataset=self.cfg.data.name,
            extra=json_ready(
                {"iteration": self.iteration, "mIoU": miou, "train_config": to_dict(self.cfg)}
            ),
        )

    def _evaluate_and_report(self) -> None:
        cm = self.evaluate()
        miou = cm.mean_iou()
        improved = math.isfinite(miou) and (self.best_miou is None or miou > self.best_miou)
        if improved:
            self.best_miou, self.best_iteration = miou, self.iteration
            self._save_model("best", miou)
        elapsed, eta = self._timing()
        record = {
            "type": "eval",
            "iteration": self.iteration,
            "epoch": self._epoch(),
            "loss": self.loss_sum / max(1, self.loss_steps),
            "mIoU": miou,
            "mDice": cm.mean_dice(),
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

    def _finish(self, result: TrainResult) -> None:
        """The final model folder and the curves."""
        self._save_model("model", result.final_miou)
        if self.rank == 0:
            self._write_curves()
        self._barrier()

    def _write_curves(self) -> None:
        from autodeeplab.draw import save_figure
        from autodeeplab.report import draw_training_curves, load_jsonl

        records = load_jsonl(self.output / "metrics.jsonl")
        try:
            fig = draw_training_curves(records)
        except ValueError:  # too few records to draw
            return
        save_figure(fig, self.output / "curves.png")

    def _result(self, **run: Any) -> TrainResult:
        return TrainResult(
            **run,
            iteration=self.iteration,
            best_miou=self.best_miou,
            best_iteration=self.best_iteration,
            final_miou=self.history[-1]["mIoU"] if self.history else None,
        )


def run_train(
    config: TrainConfig, resume: bool = False, log: Callable[[str], None] | None = print_flush
) -> TrainResult:
    """Run (or resume) a training run described by ``config``."""
    with TrainEngine(config, resume=resume, log=log) as engine:
        return engine.run()
