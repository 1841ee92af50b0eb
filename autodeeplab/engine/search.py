"""The architecture search loop: alternating weight and architecture steps, as in the paper.

Every step is a weight step (SGD) on a trainA batch followed, from ``arch_start_epoch`` (or
``arch_start_fraction``) on, by ``arch_steps_per_step`` architecture steps (Adam on
alphas/betas) on trainB batches (:mod:`autodeeplab.engine.schedule`). During a weight step the
architecture parameters do not require gradients and vice versa, so neither step computes
gradients it does not use. Collapse guards (:mod:`autodeeplab.collapse`) add an auxiliary skip
connection to the supernet and a term to the architecture loss when the config asks for them.

Data order and augmentation are pure functions of ``(seed, epoch, position)``: the batches of
an epoch come from a seeded permutation, and sample ``i`` is augmented with a generator seeded
by ``(seed, epoch, i)``. A run resumed in the middle of an epoch therefore skips exactly the
batches already consumed and sees the same data as an uninterrupted run.

Multi-process runs (``torchrun``) give each rank its slice of every global batch; weight and
architecture gradients are averaged with ``all_reduce`` after each backward pass. Rank 0
writes checkpoints, logs and genotypes.
"""

from __future__ import annotations

import functools
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from autodeeplab.checkpoint import (
    CheckpointError,
    copy_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from autodeeplab.collapse import CollapseGuards
from autodeeplab.config import (
    SearchConfig,
    check_ranges,
    config_diff,
    config_hash,
    save_config,
    to_dict,
)
from autodeeplab.data import SegmentationDataset, search_split
from autodeeplab.diagnostics import describe, model_diagnostics, stagnation_warning
from autodeeplab.engine.common import (
    EngineBase,
    RunLog,
    StopRequest,
    build_datasets,
    deferred_interrupt,
    global_batch_loss,
    global_valid_pixels,
    process_device,
    resolve_device,
)
from autodeeplab.engine.distributed import dist_info, init_distributed
from autodeeplab.engine.schedule import ArchSchedule
from autodeeplab.genotype import Genotype
from autodeeplab.heads import search_head_rates
from autodeeplab.metrics import ConfusionMatrix
from autodeeplab.supernet import SearchNetwork

Batch = tuple[torch.Tensor, torch.Tensor]  # images (N, 3, H, W), masks (N, H, W)
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
ReduceFn = Callable[[Sequence[torch.Tensor]], None]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without overwriting the checkpoint."""


@dataclass
class SearchResult:
    """What a search run leaves behind."""

    output: Path
    genotype: Genotype
    epoch: int
    """Completed epochs."""
    global_step: int
    finished: bool
    """False when the run stopped early at ``max_steps``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One summary per completed epoch (the ``epoch`` records of ``metrics.jsonl``)."""
    rank: int = 0
    """Process rank in a multi-process run (0 writes the run folder)."""
    stop_signal: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run early with a checkpoint, else None."""
    supernet_miou: float | None = None
    """Supernet mIoU of the last evaluation (to rank the trials of a study), None if none ran."""
    warning: str | None = None
    """Set when the architecture distribution has barely moved by the end (see
    :func:`autodeeplab.diagnostics.stagnation_warning`)."""


# ---------------------------------------------------------------------------- data order
class KeyedSamples(torch.utils.data.Dataset):
    """Item ``(epoch, index)`` is sample ``index`` augmented with a generator seeded by
    ``(seed, epoch, index)``: the same on every rank, worker and resumption."""

    def __init__(self, dataset: SegmentationDataset, seed: int) -> None:
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


# ---------------------------------------------------------------------------- arch gradients
def segmentation_loss(model: nn.Module, batch: Batch, ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise cross-entropy of the model's logits over the valid pixels of the global
    batch (:func:`~autodeeplab.engine.common.global_batch_loss`): this process's share,
    scaled so that gradients averaged over the processes are those of the global mean."""
    images, masks = batch
    return global_batch_loss(model(images), masks, ignore_index, dist_info()[1])[0]


def _set_requires_grad(params: Sequence[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def _grads(loss: torch.Tensor, params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def unrolled_arch_gradients(
    model: SearchNetwork,
    loss_fn: LossFn,
    train_batch: Batch,
    val_batch: Batch,
    xi: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    momentum_buffers: Sequence[torch.Tensor | None] | None = None,
    reduce: ReduceFn | None = None,
    fd_scale: float = 0.01,
) -> list[torch.Tensor]:
    """DARTS second-order gradient of the validation loss w.r.t. the architecture parameters.

    With the virtual step ``w' = w - xi * (momentum * m + dL_train/dw + weight_decay * w)``::

        grad = dL_val(w', a)/da - xi * d2L_train(w, a)/(da dw) . dL_val(w', a)/dw'

    The Hessian-vector product is the central difference
    ``(dL_train(w + eps v)/da - dL_train(w - eps v)/da) / (2 eps)`` with
    ``v = dL_val/dw'`` and ``eps = fd_scale / |v|`` (DARTS: 0.01; in float64 a much smaller
    value gives the exact product, see the tests). Weights and BatchNorm buffers are restored
    afterwards; ``reduce`` averages gradient lists across processes (in place).
    """
    weights, arch = model.weight_parameters(), model.arch_parameters()
    buffers = [b.detach().clone() for b in model.buffers()]
    originals = [w.detach().clone() for w in weights]
    try:
        # 1. virtual weight step on the training batch
        _set_requires_grad(arch, False)
        _set_requires_grad(weights, True)
        g_train = _grads(loss_fn(model, train_batch), weights)
        if reduce is not None:
            reduce(g_train)
        bufs = momentum_buffers or [None] * len(weights)
        with torch.no_grad():
            for w, g, m in zip(weights, g_train, bufs, strict=True):
                d = g + weight_decay * w
                if m is not None:
                    d = d + momentum * m
                w.sub_(xi * d)
        # 2. validation gradients at w'
        _set_requires_grad(arch, True)
        val_grads = _grads(loss_fn(model, val_batch), [*arch, *weights])
        if reduce is not None:
            reduce(val_grads)
        d_arch, v = val_grads[: len(arch)], val_grads[len(arch) :]
        # 3. finite-difference Hessian-vector product around the original w
        eps = fd_scale / float(torch.sqrt(sum((x * x).sum() for x in v)).clamp_min(1e-12))
        _set_requires_grad(weights, False)
        hvp_parts = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, vi in zip(weights, originals, v, strict=True):
                    w.copy_(w0 + sign * eps * vi)
            hvp_parts.append(_grads(loss_fn(model, train_batch), arch))
        if reduce is not None:
            reduce(hvp_parts[0])
            reduce(hvp_parts[1])
        return [
            da - xi * (gp - gn) / (2 * eps)
            for da, gp, gn in zip(d_arch, hvp_parts[0], hvp_parts[1], strict=True)
        ]
    finally:
        with torch.no_grad():
            for w, w0 in zip(weights, originals, strict=True):
                w.copy_(w0)
            for b, b0 in zip(model.buffers(), buffers, strict=True):
                b.copy_(b0)


# ---------------------------------------------------------------------------- helpers
def _new_epoch_sums() -> dict[str, Any]:
    """Running sums of an epoch: losses and counts of the weight and architecture steps taken,
    and of the batches skipped because no pixel of them had a valid label."""
    return {
        "loss": 0.0,
        "steps": 0,
        "skipped": 0,
        "arch_loss": 0.0,
        "arch_steps": 0,
        "arch_skipped": 0,
    }


def _add_step(sums: dict[str, Any], prefix: str, loss: float | None) -> None:
    if loss is None:
        sums[prefix + "skipped"] += 1
    else:
        sums[prefix + "loss"] += loss
        sums[prefix + "steps"] += 1


def print_flush(text: str) -> None:
    """Default log sink: print and flush (epoch lines show up promptly in piped output)."""
    print(text, flush=True)


# ---------------------------------------------------------------------------- engine
class SearchEngine(EngineBase):
    """Holds the model, optimisers, data and position of one search run.

    ``SearchEngine(config, resume=True)`` continues from ``<output>/last.pt``. ``run()`` trains
    to the end (or to ``max_steps``) and returns a :class:`SearchResult`.
    """

    def __init__(
        self,
        config: SearchConfig,
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
        self.output = Path(config.output)
        self.last_path = self.output / "last.pt"

        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)

        self.train_set, self.eval_set = self._datasets()
        train_a, train_b = search_split(
            self.train_set, seed=config.seed, fraction=config.data.split_fraction
        )
        self.train_a: list[int] = list(train_a.indices)
        self.train_b: list[int] = list(train_b.indices)
        self.keyed = KeyedSamples(self.train_set, config.seed)
        self.global_batch = config.data.batch_size * self.world_size
        self.steps_per_epoch = min(len(self.train_a), len(self.train_b)) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"trainA/trainB have {len(self.train_a)}/{len(self.train_b)} samples, fewer than "
                f"one global batch of {self.global_batch} (batch_size {config.data.batch_size} x "
                f"{self.world_size} processes); use more samples or a smaller data.batch_size"
            )

        self.schedule = ArchSchedule.from_config(config, self.steps_per_epoch)
        self.guards = CollapseGuards.from_config(config)

        m = config.model
        self.model = SearchNetwork(
            self.train_set.num_classes,
            layers=m.layers,
            blocks=m.blocks,
            filter_multiplier=m.filter_multiplier,
            stem_channels=m.stem_channels,
            partial_channels=m.partial_channels,
            checkpoint_cells=m.checkpoint_cells,
            aspp_rates=search_head_rates(m.aspp_rates, config.data.crop_size),
        ).to(self.device)
        self.weights = self.model.weight_parameters()
        self.arch = self.model.arch_parameters()
        o = config.optim
        self.w_opt = torch.optim.SGD(
            self.weights, lr=o.w_lr, momentum=o.w_momentum, weight_decay=o.w_weight_decay
        )
        self.a_opt = torch.optim.Adam(
            self.arch, lr=o.arch_lr, betas=o.arch_betas, weight_decay=o.arch_weight_decay
        )
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_opt, T_max=max(1, config.epochs), eta_min=o.w_lr_min
        )
        self.epoch = 0  # current epoch (0-based)
        self.step = 0  # next step inside the epoch
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.epoch_sums = _new_epoch_sums()
        self._interrupted = StopRequest()  # replaced by the live one while run() runs
        self.run_log = RunLog(
            self.output,
            rank=self.rank,
            step_key="global_step",
            tensorboard=config.tensorboard,
            log=log,
        )
        self._claim_output()
        try:
            if resume:
                self._resume()
            elif self.last_path.exists():
                raise ValueError(
                    f"{self.output} already holds a search run ({self.last_path}); pass --resume "
                    "to continue it or choose another output folder"
                )
            self._rewind_log(self.global_step)
        except BaseException:
            self._release_output()
            raise

    # -------------------------------------------------------------- setup
    def _validate(self) -> None:
        c = self.cfg
        check_ranges(c)  # again: a config built in code has not been through from_dict
        if c.data.name != "synthetic" and c.data.root is None:
            raise ValueError(
                f"data set {c.data.name!r} needs a root folder: set data.root in the config or "
                "pass --data-root DIR"
            )

    def _datasets(self) -> tuple[SegmentationDataset, SegmentationDataset]:
        train, evaluation = build_datasets(self.cfg.data)
        if len(train) < 2:
            raise ValueError(
                f"the {self.cfg.data.train_split!r} split of {self.cfg.data.name!r} has "
                f"{len(train)} samples; need >= 2"
            )
        return train, evaluation

    # -------------------------------------------------------------- distributed helpers
    def _average(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average a list of tensors over all processes in place (one flat all_reduce)."""
        if self.world_size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def _average_grads(self, params: Sequence[nn.Parameter]) -> None:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._average([p.grad for p in params])  # type: ignore[misc]

    def _sync_buffers(self) -> None:
        """Average BatchNorm running statistics so every rank holds the same model."""
        floats = [b for b in self.model.buffers() if b.is_floating_point()]
        self._average(floats)

    def _mean_loss(self, loss: torch.Tensor) -> float:
        value = loss.detach().reshape(1).clone()
        self._average([value])
        return float(value)

    # -------------------------------------------------------------- steps
    def _loss(self, batch: Batch) -> torch.Tensor:
        return self._loss_fn(self.model, batch)

    def _loss_fn(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return segmentation_loss(self._supernet(model), batch, self.cfg.optim.ignore_index)

    def _supernet(self, model: nn.Module) -> Any:
        """The supernet's forward at this step (with the auxiliary skip weight, if any)."""
        aux = self.guards.aux_skip(self.schedule.run_progress(self.global_step))
        return functools.partial(model, aux_skip=aux) if aux else model

    def _to_device(self, batch: Sequence[torch.Tensor]) -> Batch:
        images, masks = batch
        return images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)

    def _check_finite(self, value: float, kind: str) -> None:
        if math.isfinite(value):
            return
        where = self._checkpoint_note()
        raise NonFiniteLossError(
            f"the {kind} loss became {value} at epoch {self.epoch + 1}, step {self.step + 1} "
            f"(global step {self.global_step + 1}); the search stopped and {where}. Lower the "
            "learning rate (optim.w_lr / optim.arch_lr) or check the data."
        )

    def _no_valid_pixel(self, batch: Batch) -> bool:
        """True for a global batch whose pixels all carry the ignore label. It is skipped (no
        forward pass, no optimiser step): it holds no information, and an optimiser step on
        its zero gradient would still move the parameters through weight decay and momentum."""
        return global_valid_pixels(batch[1], self.cfg.optim.ignore_index) == 0

    def weight_step(self, batch: Batch) -> float | None:
        """One SGD step on the weights; returns the loss (mean over the valid pixels of the
        global batch), or None without a step when the global batch has no valid pixel."""
        if self._no_valid_pixel(batch):
            return None
        _set_requires_grad(self.arch, False)
        _set_requires_grad(self.weights, True)
        loss = self._loss(batch)
        value = self._mean_loss(loss)
        self._check_finite(value, "weight")
        self.w_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._average_grads(self.weights)
        if self.cfg.optim.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.weights, self.cfg.optim.grad_clip)
        self.w_opt.step()
        return value

    def arch_gradients(self, val_batch: Batch, train_batch: Batch | None = None) -> float | None:
        """Fill ``.grad`` of the architecture parameters (averaged over processes); returns the
        loss of ``val_batch``, or None (no gradients) when it has no valid pixel."""
        self.a_opt.zero_grad(set_to_none=True)
        if self._no_valid_pixel(val_batch):
            return None
        if self.cfg.unrolled:
            if train_batch is None:
                raise ValueError("the unrolled architecture step needs the trainA batch too")
            o = self.cfg.optim
            value = self._mean_loss(self._loss(val_batch).detach())
            self._check_finite(value, "architecture")
            grads = unrolled_arch_gradients(
                self.model,
                self._loss_fn,
                train_batch,
                val_batch,
                xi=self.w_opt.param_groups[0]["lr"],
                momentum=o.w_momentum,
                weight_decay=o.w_weight_decay,
                momentum_buffers=[
                    self.w_opt.state.get(w, {}).get("momentum_buffer") for w in self.weights
                ],
                reduce=self._average,
            )
            for p, g in zip(self.arch, grads, strict=True):
                p.grad = g
            return value
        _set_requires_grad(self.weights, False)
        _set_requires_grad(self.arch, True)
        loss = self._loss(val_batch)
        value = self._mean_loss(loss)
        self._check_finite(value, "architecture")
        loss.backward()
        self._average_grads(self.arch)
        return value

    def arch_step(self, val_batch: Batch, train_batch: Batch | None = None) -> float | None:
        """One Adam step on alphas/betas using a trainB batch (plus the gradient of the
        collapse guard's loss term, if any); returns its cross-entropy, or None without a step
        when the batch has no valid pixel."""
        value = self.arch_gradients(val_batch, train_batch)
        if value is not None:
            progress = self.schedule.arch_progress(self.global_step)
            self.guards.add_regularizer_gradients(self.model, progress)
            self.a_opt.step()
        return value

    # -------------------------------------------------------------- data
    def _loader(self, batches: list[list[tuple[int, int]]], epoch: int) -> Iterator[Any]:
        if not batches:
            return iter(())
        workers = self.cfg.data.workers
        return iter(
            torch.utils.data.DataLoader(
                self.keyed,
                batch_sampler=batches,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=False,
                generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch),
            )
        )

    def batches(self, stream: int, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batch keys of trainA (stream 0) or trainB (stream 1) for ``epoch``.

        trainB gives ``arch_steps_per_step`` batches per step: that many passes over it, each
        with its own order; step ``s`` takes batches ``s * k .. s * k + k - 1``."""
        indices = self.train_a if stream == 0 else self.train_b
        out = []
        for repeat in range(1 if stream == 0 else self.schedule.per_step):
            b = epoch_batches(
                indices,
                self.cfg.seed,
                stream,
                epoch,
                self.cfg.data.batch_size,
                self.rank,
                self.world_size,
                repeat,
            )
            out += b[: self.steps_per_epoch]
        return out

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> float:
        """Supernet mIoU on the held-out split (this rank's share, summed over ranks)."""
        self.model.eval()
        n = len(self.eval_set)
        if self.cfg.data.max_eval_samples is not None:
            n = min(n, self.cfg.data.max_eval_samples)
        indices = list(range(self.rank, n, self.world_size))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.eval_set, indices),
            batch_size=self.cfg.data.eval_batch_size,
            num_workers=self.cfg.data.workers,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        cm = ConfusionMatrix(self.model.num_classes, self.cfg.optim.ignore_index)
        for batch in loader:
            images, masks = self._to_device(batch)
            cm.update(self._supernet(self.model)(images), masks)
        cm.matrix = cm.matrix.to(self.device)
        cm.all_reduce()
        self.model.train()
        return cm.mean_iou()

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "search",
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "w_sched": self.w_sched.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            "global_step": self.global_step,
            "epoch_sums": dict(self.epoch_sums),
            "history": list(self.history),
            "split": {"train_a": self.train_a, "train_b": self.train_b},
            "world_size": self.world_size,
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
            "genotype": self.model.genotype().to_dict(),
        }

    def save(self) -> None:
        """Write ``last.pt`` (rank 0; every rank waits for it)."""
        self._sync_buffers()
        if self.rank == 0:
            save_checkpoint(self.state_dict(), self.last_path)
            every = self.cfg.checkpoint_interval
            if every > 0 and self.step == 0 and self.epoch % every == 0:
                copy_checkpoint(
                    self.last_path, self.output / "checkpoints" / f"epoch_{self.epoch:03d}.pt"
                )
        if self.world_size > 1:
            dist.barrier()

    def _resume(self) -> None:
        if not self.last_path.exists():
            raise FileNotFoundError(
                f"cannot resume: {self.last_path} does not exist; run without --resume to start "
                "a new search in this folder"
            )
        state = load_checkpoint(self.last_path, map_location=self.device)
        if state.get("kind") != "search":
            raise CheckpointError(f"{self.last_path} is not a search checkpoint")
        if state["config_hash"] != config_hash(self.cfg):
            diff = config_diff(state["config"], to_dict(self.cfg))
            raise CheckpointError(
                f"cannot resume from {self.last_path}: it was written with another configuration "
                f"(hash {state['config_hash']} vs {config_hash(self.cfg)}); differing keys:\n  "
                + "\n  ".join(diff or ["<none reported>"])
                + "\nUse the same config (only runtime keys such as epochs, output, device may "
                "change) or start a new run in another output folder."
            )
        if state["world_size"] != self.world_size:
            raise CheckpointError(
                f"{self.last_path} was written by {state['world_size']} processes, this run has "
                f"{self.world_size}; resume with the same number of processes"
            )
        split = state["split"]
        if split["train_a"] != self.train_a or split["train_b"] != self.train_b:
            raise CheckpointError(
                f"the trainA/trainB split in {self.last_path} differs from the one of the data "
                "set now (was the data set changed?); start a new run"
            )
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        set_rng_state(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.global_step = state["global_step"]
        self.epoch_sums = {**_new_epoch_sums(), **state["epoch_sums"]}
        self.history = list(state["history"])
        if self.epoch > self.cfg.epochs:
            raise ValueError(
                f"the checkpoint is at epoch {self.epoch} but epochs={self.cfg.epochs}; raise epochs"
            )

    # -------------------------------------------------------------- main loop
    def run(self) -> SearchResult:
        """Search until ``epochs`` (or ``max_steps``); write genotypes, metrics, checkpoints."""
        if self.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "genotypes").mkdir(exist_ok=True)
            save_config(self.cfg, self.output / "config.yaml")
        self.run_log.open()
        # one process: Ctrl-C or SIGTERM finishes the step and checkpoints (ranks could not
        # agree on it)
        with deferred_interrupt(self.world_size == 1) as self._interrupted:
            try:
                while self.epoch < self.cfg.epochs:
                    if not self._run_epoch():
                        return self._result(finished=False)
                genotype = self.model.genotype()
                result = self._result(finished=True)
                if self.rank == 0:
                    genotype.save(self.output / "genotype.json")
                    self._write_summary(result)
                if result.warning is not None:
                    self._say(f"warning: {result.warning}")
                return result
            finally:
                self.run_log.close()

    def _result(self, finished: bool) -> SearchResult:
        return SearchResult(
            output=self.output,
            genotype=self.model.genotype(),
            epoch=self.epoch,
            global_step=self.global_step,
            finished=finished,
            history=list(self.history),
            rank=self.rank,
            stop_signal=None if finished else self._interrupted.signum,
            supernet_miou=next(
                (h["mIoU"] for h in reversed(self.history) if h.get("mIoU") is not None), None
            ),
            warning=stagnation_warning(self.history[-1]) if finished and self.history else None,
        )

    def _write_summary(self, result: SearchResult) -> None:
        """``summary.json``: what a study compares between trials."""
        last = self.history[-1] if self.history else {}
        keys = ("arch_steps", "alpha_entropy_fraction", "beta_entropy_fraction")
        keys += ("path_log_prob", "parameter_free_share")
        summary = {
            "genotype": str(result.genotype),
            "supernet_mIoU": result.supernet_miou,
            "epochs": result.epoch,
            "global_step": result.global_step,
            **{k: last.get(k) for k in keys},
            "warning": result.warning,
        }
        (self.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def _progress(self, epoch: int) -> Any:
        from tqdm import tqdm

        enabled = self.cfg.progress and self.rank == 0 and sys.stderr.isatty()
        return tqdm(
            total=self.steps_per_epoch,
            initial=self.step,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not enabled,
            leave=False,
            dynamic_ncols=True,
        )

    def _stop_reason(self) -> str | None:
        """Why the run should stop after this step (``max_steps`` or a stop signal), if so."""
        if self.cfg.max_steps is not None and self.global_step >= self.cfg.max_steps:
            return f"stopped at max_steps={self.cfg.max_steps}"
        if self._interrupted.signum is not None:
            return f"stopped by {signal.Signals(self._interrupted.signum).name}"
        return None

    def _run_epoch(self) -> bool:
        """Run the rest of the current epoch; False if it stopped early with a checkpoint.

        A stop at the last step of an epoch ends the epoch first, and periodic checkpoints
        skip that step: every checkpoint at global step G is thus written after every record
        of step G, which :meth:`RunLog.rewind` relies on when a run restarts from it.
        """
        epoch, cfg, k = self.epoch, self.cfg, self.schedule.per_step
        first_arch = self.schedule.first_arch_position(epoch, self.step)
        search_arch = self.schedule.first_arch_position(epoch) < self.steps_per_epoch
        start = time.perf_counter()
        it_a = self._loader(self.batches(0, epoch)[self.step :], epoch)
        it_b = self._loader(self.batches(1, epoch)[first_arch * k :], epoch)
        sums = self.epoch_sums
        bar = self._progress(epoch)
        stop: str | None = None
        try:
            for _ in range(self.step, self.steps_per_epoch):
                batch_a = self._to_device(next(it_a))
                record: dict[str, Any] = {"loss": self.weight_step(batch_a)}
                _add_step(sums, "", record["loss"])
                if self.schedule.active(self.global_step):
                    arch_losses = []
                    for _ in range(k):
                        value = self.arch_step(self._to_device(next(it_b)), batch_a)
                        _add_step(sums, "arch_", value)
                        if value is not None:
                            arch_losses.append(value)
                    record["arch_loss"] = (
                        sum(arch_losses) / len(arch_losses) if arch_losses else None
                    )
                self.step += 1
                self.global_step += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if v is not None})
                if self.global_step % max(1, cfg.log_interval) == 0:
                    self._record(
                        {
                            "type": "step",
                            "epoch": epoch + 1,
                            "step": self.step,
                            "global_step": self.global_step,
                            "lr": self.w_opt.param_groups[0]["lr"],
                            **record,
                        }
                    )
                stop = self._stop_reason()
                if self.step == self.steps_per_epoch:
                    break  # the end of the epoch writes the checkpoint
                if stop is not None:
                    self.save()
                    self._say(
                        f"{stop} at epoch {epoch + 1}, step {self.step}; wrote "
                        f"{self.last_path}, continue with --resume"
                    )
                    return False
                if cfg.checkpoint_steps > 0 and self.global_step % cfg.checkpoint_steps == 0:
                    self.save()
        finally:
            bar.close()
        self._end_epoch(epoch, start, search_arch)
        if stop is not None and self.epoch < cfg.epochs:
            self._say(
                f"{stop} at the end of epoch {self.epoch}; wrote {self.last_path}, continue "
                "with --resume"
            )
            return False
        return True

    def _end_epoch(self, epoch: int, start: float, search_arch: bool) -> None:
        cfg, sums = self.cfg, self.epoch_sums
        self.w_sched.step()
        self.epoch, self.step = epoch + 1, 0
        self._sync_buffers()
        miou = None
        if cfg.eval_interval > 0 and (
            self.epoch % cfg.eval_interval == 0 or self.epoch == cfg.epochs
        ):
            miou = self.evaluate()
        genotype = self.model.genotype()
        diagnostics = model_diagnostics(self.model)
        arch_steps = sums["arch_steps"] + (
            self.history[-1].get("arch_steps", 0) if self.history else 0
        )
        summary = {
            "type": "epoch",
            "epoch": self.epoch,
            "global_step": self.global_step,
            "loss": sums["loss"] / sums["steps"] if sums["steps"] else None,
            "arch_loss": sums["arch_loss"] / sums["arch_steps"] if sums["arch_steps"] else None,
            "skipped_batches": sums["skipped"],
            "skipped_arch_batches": sums["arch_skipped"],
            "mIoU": miou,
            **diagnostics.to_dict(),
            "arch_steps": arch_steps,
            **self.guards.state(
                self.schedule.run_progress(self.global_step),
                self.schedule.arch_progress(self.global_step),
            ),
            "arch_search": search_arch,
            "genotype": str(genotype),
            "time_s": time.perf_counter() - start,
        }
        self.history.append(summary)
        self.epoch_sums = _new_epoch_sums()
        if self.rank == 0:
            genotype.save(self.output / "genotypes" / f"epoch_{self.epoch:03d}.json")
        self._record(summary)
        loss_part = f" loss {summary['loss']:.4f}" if summary["loss"] is not None else ""
        arch_part = (
            f" arch_loss {summary['arch_loss']:.4f}" if summary["arch_loss"] is not None else ""
        )
        miou_part = f" mIoU {100 * miou:.2f}" if miou is not None and math.isfinite(miou) else ""
        skipped = sums["skipped"] + sums["arch_skipped"]
        skip_part = f" skipped {skipped} batch(es) without valid pixels" if skipped else ""
        self._say(
            f"epoch {self.epoch}/{cfg.epochs}{loss_part}{arch_part}{miou_part} "
            f"{describe(diagnostics, arch_steps, genotype)}{skip_part} ({summary['time_s']:.1f}s)"
        )
        self.save()


def run_search(
    config: SearchConfig, resume: bool = False, log: Callable[[str], None] | None = print_flush
) -> SearchResult:
    """Run (or resume) an architecture search described by ``config``."""
    engine = SearchEngine(config, resume=resume, log=log)
    try:
        return engine.run()
    finally:
        engine.close()
