"""The architecture search loop: alternating weight and architecture steps, as in the paper.

Every step is a weight step (SGD) on a trainA batch followed, from ``arch_start_epoch`` (or
``arch_start_fraction``) on, by ``arch_steps_per_step`` architecture steps (Adam on
alphas/betas) on trainB batches (:mod:`autodeeplab.engine.schedule`). During a weight step the
architecture parameters do not require gradients and vice versa, so neither step computes
gradients it does not use. Collapse guards (:mod:`autodeeplab.collapse`) add an auxiliary skip
connection to the supernet and a term to the architecture loss when the config asks for them.

The supernet, its relaxation (``relaxation.name``) and, for a relaxation with independent
transitions (DiNTS), the memory budget come from :mod:`autodeeplab.search_model`. The
architecture loss is the cross-entropy plus the relaxation's own terms, weighted by
:meth:`~autodeeplab.relaxation.Relaxation.term_weights` at the share of the architecture steps
done, plus the budget term (:class:`autodeeplab.budget.MemoryBudget`); every term is logged by
name in the step and epoch records.

Data order and augmentation are pure functions of ``(seed, epoch, position)``
(:mod:`autodeeplab.engine.loop`), so a run resumed in the middle of an epoch sees the same data
as an uninterrupted run.

Multi-process runs (``torchrun``) give each rank its slice of every global batch; weight and
architecture gradients are averaged with ``all_reduce`` after each backward pass. Rank 0
writes checkpoints, logs and genotypes.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from autodeeplab import space
from autodeeplab.checkpoint import CheckpointError
from autodeeplab.collapse import CollapseGuards
from autodeeplab.config import SearchConfig
from autodeeplab.data import search_split
from autodeeplab.diagnostics import (
    convergence,
    describe,
    end_of_search_warning,
    gradient_signal,
    last_miou,
    model_diagnostics,
)
from autodeeplab.engine.common import fused_optimizer, global_batch_loss, global_valid_pixels
from autodeeplab.engine.distributed import dist_info
from autodeeplab.engine.loop import Batch, EngineBase, RunResult, print_flush
from autodeeplab.engine.loop import KeyedSamples as KeyedSamples  # re-exported
from autodeeplab.engine.loop import NonFiniteLossError as NonFiniteLossError  # re-exported
from autodeeplab.engine.loop import epoch_batches as epoch_batches  # re-exported
from autodeeplab.engine.schedule import ArchSchedule
from autodeeplab.genotype import Genotype
from autodeeplab.metrics import ConfusionMatrix
from autodeeplab.projection import CellProjection, Score, check_selection, edge_position, plan
from autodeeplab.runfolder import dumps_json
from autodeeplab.search_model import build_memory_budget, build_supernet, check_relaxation
from autodeeplab.supernet import SearchNetwork

LossFn = Callable[[nn.Module, Batch], torch.Tensor]
ReduceFn = Callable[[Sequence[torch.Tensor]], None]


@dataclass(kw_only=True)
class SearchResult(RunResult):
    """What a search run leaves behind (``history``: the ``epoch`` records of
    ``metrics.jsonl``)."""

    genotype: Genotype
    epoch: int
    """Completed epochs."""
    global_step: int
    supernet_miou: float | None = None
    """Supernet mIoU of the last evaluation (to rank the trials of a study), None if none ran."""
    warning: str | None = None
    """Set when the architecture distribution has barely moved by the end, or moved with
    gradients that were mostly noise (:func:`autodeeplab.diagnostics.end_of_search_warning`)."""


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
    of the batches skipped because no pixel of them had a valid label, and of the alpha and
    beta gradients and their squares (:func:`autodeeplab.diagnostics.gradient_signal`)."""
    return {
        "loss": 0.0,
        "steps": 0,
        "skipped": 0,
        "arch_loss": 0.0,
        "arch_steps": 0,
        "arch_skipped": 0,
        "alpha_grad": None,
        "alpha_grad_sq": None,
        "beta_grad": None,
        "beta_grad_sq": None,
        "beta_grad_steps": 0,  # counted apart: a checkpoint from before it has no beta sums
    }


def _add_arch_gradient(
    sums: dict[str, Any], name: str, grad: torch.Tensor, valid: torch.Tensor | None = None
) -> None:
    """Add one step's gradient of the ``name`` logits (``alpha``, ``beta``) to the epoch's
    sums, in float64, each entry relative to the mean of its row over the ``valid`` entries
    (all without a mask): only those differences change a softmax. Entries outside ``valid``
    stay zero, and :func:`gradient_signal` leaves out what never varied."""
    g = grad.detach().double().cpu()
    if valid is None:
        g = g - g.mean(dim=-1, keepdim=True)
    else:
        mask = valid.to(g.dtype)
        row_mean = (g * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        g = (g - row_mean) * mask
    key = f"{name}_grad"
    if sums[key] is None:
        sums[key], sums[f"{key}_sq"] = torch.zeros_like(g), torch.zeros_like(g)
    sums[key] += g
    sums[f"{key}_sq"] += g * g
    if f"{key}_steps" in sums:
        sums[f"{key}_steps"] += 1


def _add_step(sums: dict[str, Any], prefix: str, loss: float | None) -> None:
    if loss is None:
        sums[prefix + "skipped"] += 1
    else:
        sums[prefix + "loss"] += loss
        sums[prefix + "steps"] += 1


SELECTION_EPOCH = 2**31 - 1
"""The ``epoch`` of the selection batches' keys: their augmentation differs from every epoch's."""


# ---------------------------------------------------------------------------- engine
class SearchEngine(EngineBase):
    """Holds the model, optimisers, data and position of one search run.

    ``SearchEngine(config, resume=True)`` continues from ``<output>/last.pt``. ``run()`` trains
    to the end (or to ``max_steps``) and returns a :class:`SearchResult`.
    """

    kind = "search"
    noun = "search"
    divergence_hint = "Lower the learning rate (optim.w_lr / optim.arch_lr) or check the data."

    def __init__(
        self,
        config: SearchConfig,
        resume: bool = False,
        log: Callable[[str], None] | None = print_flush,
    ) -> None:
        self._set_up(config, log)
        self._load_data()
        if len(self.train_set) < 2:
            raise ValueError(
                f"the {config.data.train_split!r} split of {config.data.name!r} has "
                f"{len(self.train_set)} samples; need >= 2"
            )
        train_a, train_b = search_split(
            self.train_set, seed=config.seed, fraction=config.data.split_fraction
        )
        self.train_a: list[int] = list(train_a.indices)
        self.train_b: list[int] = list(train_b.indices)
        self._set_steps_per_epoch(
            min(len(self.train_a), len(self.train_b)),
            f"trainA/trainB have {len(self.train_a)}/{len(self.train_b)} samples",
        )

        self.schedule = ArchSchedule.from_config(config, self.steps_per_epoch)
        self.guards = CollapseGuards.from_config(config)

        self.model = build_supernet(
            config, self.train_set.num_classes, self.train_set.in_channels
        ).to(self.device)
        self.relaxation = self.model.relaxation
        self.budget = build_memory_budget(config, self.train_set.num_classes)
        self.weights = self.model.weight_parameters()
        self.arch = self.model.arch_parameters()
        o = config.optim
        fused = fused_optimizer(self.device)
        self.w_opt = torch.optim.SGD(
            self.weights,
            lr=o.w_lr,
            momentum=o.w_momentum,
            weight_decay=o.w_weight_decay,
            fused=fused,
        )
        self.a_opt = torch.optim.Adam(
            self.arch,
            lr=o.arch_lr,
            betas=o.arch_betas,
            weight_decay=o.arch_weight_decay,
            fused=fused,
        )
        self.w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_opt, T_max=max(1, config.epochs), eta_min=o.w_lr_min
        )
        self.epoch = 0  # current epoch (0-based)
        self.step = 0  # next step inside the epoch
        self.epoch_sums = _new_epoch_sums()
        self.arch_terms: list[dict[str, float]] = []
        """The extra terms' values of each architecture step of the current step."""
        self.total_steps = self.schedule.total_steps
        self.checkpoint_steps = config.checkpoint_steps
        # perturbation-based selection after the last search step (autodeeplab.projection)
        sel = config.selection
        perturbation = sel.name == "perturbation"
        self.selection_plan = plan(config.model.blocks, config.seed) if perturbation else ()
        self.tune_steps = round(sel.tune_epochs * self.steps_per_epoch) if perturbation else 0
        self.selection_records: list[dict[str, Any]] = []
        self.tuned = 0  # tuning steps done after the latest decision
        self._open(resume)

    def _validate(self) -> None:
        super()._validate()
        check_relaxation(self.cfg)
        check_selection(self.cfg)

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
        with self._autocast():
            return segmentation_loss(self._supernet(model), batch, self.cfg.optim.ignore_index)

    def _autocast(self) -> torch.autocast:
        """bfloat16 autocast with ``amp``, a no-op without. bfloat16 has float32's exponent
        range, so neither optimizer needs loss scaling."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp)

    def _supernet(self, model: nn.Module) -> Any:
        """The supernet's forward at this step: with the auxiliary skip weight, if any, and the
        share of the architecture steps done (the schedule of a sampling relaxation)."""
        aux = self.guards.aux_skip(self.schedule.run_progress(self.global_step))
        progress = self.schedule.arch_progress(self.global_step)
        return functools.partial(model, aux_skip=aux, arch_progress=progress)

    def _step_name(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step + 1} (global step {self.global_step + 1})"

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
        # nothing reads them after the step: free them before the architecture step and the
        # next forward pass rather than at the next backward (one copy of the weights less)
        self.w_opt.zero_grad(set_to_none=True)
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
        """One Adam step on the architecture parameters using a trainB batch (plus the
        gradients of the relaxation's terms, the memory budget and the collapse guard's term,
        where there are any); returns its cross-entropy, or None without a step when the batch
        has no valid pixel. The values of the extra terms go to :attr:`arch_terms`."""
        value = self.arch_gradients(val_batch, train_batch)
        if value is not None:
            # the data's push on the alphas (and betas), before the extra terms add their own
            _add_arch_gradient(self.epoch_sums, "alpha", self.model.alphas.grad)
            betas = self.model.arch_state().get("betas")
            if betas is not None and betas.grad is not None:
                valid = torch.tensor(space.valid_move_mask())  # each node's softmax (4, 3)
                _add_arch_gradient(self.epoch_sums, "beta", betas.grad, valid)
            progress = self.schedule.arch_progress(self.global_step)
            terms = self.add_search_term_gradients(progress)
            if terms:
                terms["arch_objective"] = value + terms.pop("weighted_terms")
                self.arch_terms.append(terms)
            self.guards.add_regularizer_gradients(self.model, progress)
            self.a_opt.step()
        return value

    def search_terms(self, progress: float) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The relaxation's terms and the memory budget's (unweighted, by name) at the current
        architecture parameters, and their weighted sum at ``progress`` (the share of the
        architecture steps done), or None when nothing is weighted."""
        state = self.model.arch_state()
        terms = self.relaxation.search_terms(state)
        total = None
        for name, weight in self.relaxation.term_weights(progress).items():
            if weight:
                part = weight * terms[name]
                total = part if total is None else total + part
        if self.budget is not None:
            probs = self.relaxation.edge_probs(state)
            budget_terms = self.budget.terms(probs)
            terms.update(budget_terms)
            part = self.budget.loss(budget_terms)
            if part is not None and self.budget.weight:
                total = part if total is None else total + part
        return terms, total

    def add_search_term_gradients(self, progress: float) -> dict[str, float]:
        """Add the gradient of the weighted extra terms (:meth:`search_terms`) to the ``.grad``
        of the architecture parameters (they depend on them only, so every process adds the
        same value after averaging); returns every term's value, each term's current weight
        (``<name>_weight``) and the weighted sum (``weighted_terms``); empty for a relaxation
        without terms."""
        params = self.arch
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            terms, total = self.search_terms(progress)
            grads = (
                [None] * len(params)
                if total is None
                else torch.autograd.grad(total, params, allow_unused=True)
            )
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
        if not terms:
            return {}
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = g.detach().clone() if p.grad is None else p.grad + g
        values = {name: float(v.detach()) for name, v in terms.items()}
        for name, weight in self.relaxation.term_weights(progress).items():
            values[f"{name}_weight"] = weight
        values["weighted_terms"] = 0.0 if total is None else float(total.detach())
        return values

    # -------------------------------------------------------------- data
    def batches(self, stream: int, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batch keys of trainA (stream 0) or trainB (stream 1) for ``epoch``.

        trainB gives ``arch_steps_per_step`` batches per step: that many passes over it, each
        with its own order; step ``s`` takes batches ``s * k .. s * k + k - 1``."""
        indices = self.train_a if stream == 0 else self.train_b
        passes = 1 if stream == 0 else self.schedule.per_step
        return [b for r in range(passes) for b in self._epoch_keys(indices, stream, epoch, r)]

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> float:
        """Supernet mIoU on the held-out split (this rank's share, summed over ranks); volumes
        are evaluated whole, by sliding windows of ``data.crop_size``."""

        def confusion(shard: Dataset) -> ConfusionMatrix:
            if self.spatial_dims == 3:
                with self._autocast():
                    return self._volume_confusion(self._supernet(self.model), shard)
            loader = torch.utils.data.DataLoader(
                shard,
                batch_size=self.cfg.data.eval_batch_size,
                num_workers=self.cfg.data.workers,
                generator=torch.Generator().manual_seed(self.cfg.seed),
            )
            cm = ConfusionMatrix(self.model.num_classes, self.cfg.optim.ignore_index)
            for batch in loader:
                images, masks = self._to_device(batch)
                with self._autocast():
                    logits = self._supernet(self.model)(images)
                cm.update(logits, masks)
            return cm

        return self._evaluate(confusion).mean_iou()

    # -------------------------------------------------------------- selection
    def _projection(self) -> CellProjection:
        """The supernet's :class:`CellProjection` (created empty on first use)."""
        if self.model.projection is None:
            self.model.projection = CellProjection(
                self.cfg.model.blocks, tuple(self.model.search_space.ops)
            )
        return self.model.projection

    def _loop(self) -> bool:
        """The search's steps, then the perturbation-based selection when configured."""
        return super()._loop() and self._select()

    def _selection_position(self) -> int:
        """Tuning steps done since the search's last step."""
        done = len(self.selection_records)
        return max(0, done - 1) * self.tune_steps + (self.tuned if done else 0)

    def _select(self) -> bool:
        """Take the remaining decisions of :attr:`selection_plan`, each followed by
        ``tune_steps`` search steps (but the last), checkpointing after every decision; False
        when a stop signal or ``max_steps`` came first (resume continues from the checkpoint)."""
        if not self.selection_plan:
            return True
        projection = self._projection()
        total = len(self.selection_plan)
        while True:
            done = len(self.selection_records)
            if 0 < done < total and self.tuned < self.tune_steps and not self._tune(done - 1):
                return False
            if done == total:
                return True
            start = time.perf_counter()
            record = projection.decide(
                self.selection_plan[done], self._selection_score, self.cfg.selection.criterion
            )
            self.selection_records.append(record)
            self.tuned = 0
            self._record_decision(record, time.perf_counter() - start)
            self.save()
            if self._interrupted.signum is not None and done + 1 < total:
                self._say(
                    f"stopped by a signal after selection decision {done + 1}/{total}; wrote "
                    f"{self.last_path}, continue with --resume"
                )
                return False

    def _tune(self, decision: int) -> bool:
        """The remaining tuning steps after ``decision``: search steps (a weight step and the
        architecture steps) on a data order of their own; False (with a checkpoint) when a
        stop came first."""
        spe, per_step = self.steps_per_epoch, self.schedule.per_step
        passes = -(-self.tune_steps // spe)
        arch = self.schedule.total_arch_steps > 0
        while self.tuned < self.tune_steps:
            r, first = divmod(self.tuned, spe)
            epoch = self.cfg.epochs + decision * passes + r  # a fresh order per decision and pass
            count = min(spe, self.tune_steps - r * spe) - first
            it_a = self._loader(self.batches(0, epoch)[first : first + count], epoch)
            it_b = self._loader(
                self.batches(1, epoch)[first * per_step : (first + count) * per_step]
                if arch
                else [],
                epoch,
            )
            for _ in range(count):
                values = self._search_step(next(it_a), it_b, arch)
                self.tuned += 1
                position = self.global_step + self._selection_position()
                if position % max(1, self.cfg.log_interval) == 0:
                    self._record(
                        {
                            "type": "selection_step",
                            "global_step": position,
                            "decision": decision + 1,
                            "tune_step": self.tuned,
                            **values,
                        }
                    )
                stop = self._stop_reason()
                if stop is not None:
                    self.save()
                    self._say(
                        f"{stop} while tuning after selection decision {decision + 1}; wrote "
                        f"{self.last_path}, continue with --resume"
                    )
                    return False
        return True

    def _stop_reason(self) -> str | None:
        """Also stops inside the selection's tuning once the steps of the search and the
        tuning reach ``max_steps``."""
        limit = self.cfg.max_steps
        position = self.global_step + self._selection_position()
        if self.selection_records and limit is not None and position >= limit:
            return f"stopped at max_steps={limit}"
        return super()._stop_reason()

    def _selection_keys(self) -> list[list[tuple[int, int]]]:
        """This rank's selection batches: the first ``selection.eval_samples`` of trainB (at
        least one global batch) in a fixed order with a fixed augmentation."""
        d = self.cfg.data
        batches = epoch_batches(
            self.train_b,
            self.cfg.seed,
            2,
            SELECTION_EPOCH,
            d.batch_size,
            self.rank,
            self.world_size,
        )
        count = -(-self.cfg.selection.eval_samples // (d.batch_size * self.world_size))
        return batches[: max(1, count)]

    def _selection_score(self) -> Score:
        """The supernet's mIoU and mean cross-entropy on the selection batches under the
        current projection, over every process. BatchNorm uses the batch statistics, as in the
        search's steps (the running statistics were gathered under the unperturbed weights);
        its running statistics are left exactly as they were."""
        cfg = self.cfg
        buffers = [b.detach().clone() for b in self.model.buffers()]
        cm = ConfusionMatrix(self.model.num_classes, cfg.optim.ignore_index)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, pixels
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                for images, masks in self._loader(self._selection_keys(), SELECTION_EPOCH):
                    with self._autocast():
                        logits = self.model(images).float()
                    cm.update(logits, masks)
                    loss = F.cross_entropy(
                        logits, masks.long(), ignore_index=cfg.optim.ignore_index, reduction="sum"
                    )
                    sums += torch.stack(
                        [loss.double(), (masks != cfg.optim.ignore_index).sum().double()]
                    )
        finally:
            for b, saved in zip(self.model.buffers(), buffers, strict=True):
                b.copy_(saved)
        cm.matrix = cm.matrix.to(self.device)  # where the process group's backend runs
        cm.all_reduce()
        cm.matrix = cm.matrix.cpu()
        if self.world_size > 1:
            dist.all_reduce(sums)
        loss = float(sums[0] / sums[1]) if sums[1] > 0 else math.nan
        return Score(miou=cm.mean_iou(), loss=loss)

    def _record_decision(self, record: dict[str, Any], seconds: float) -> None:
        """A ``selection`` record and the decision's line."""
        done, total = len(self.selection_records), len(self.selection_plan)
        position = self.global_step + self._selection_position()
        self._record(
            {
                "type": "selection",
                "global_step": position,
                "decision": done,
                "decisions": total,
                **record,
            }
        )
        if record["kind"] == "op":
            e = record["target"]
            block, index = edge_position(e)
            chosen = next(r for r in record["removed"] if r["op"] == record["op"])
            self._say(
                f"selection {done}/{total}: edge {e} (block {block}, input {index}) keeps "
                f"{record['op']}; without it the supernet's mIoU is "
                f"{100 * chosen['mIoU']:.2f} and loss {chosen['loss']:.4f} ({seconds:.1f}s)"
            )
        else:
            inputs = [edge_position(e)[1] for e in record["kept"]]
            self._say(
                f"selection {done}/{total}: block {record['target']} keeps inputs "
                f"{inputs[0]} and {inputs[1]} ({seconds:.1f}s)"
            )

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "w_sched": self.w_sched.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_sums": dict(self.epoch_sums),
            "split": {"train_a": self.train_a, "train_b": self.train_b},
            "genotype": self.model.genotype().to_dict(),
            "selection": {"records": list(self.selection_records), "tuned": self.tuned},
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        split = state["split"]
        if split["train_a"] != self.train_a or split["train_b"] != self.train_b:
            raise CheckpointError(
                f"the trainA/trainB split in {self.last_path} differs from the one of the data "
                "set now (was the data set changed?); start a new run"
            )
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.epoch_sums = {**_new_epoch_sums(), **state["epoch_sums"]}
        selection = state.get("selection", {"records": [], "tuned": 0})  # older checkpoints
        self.selection_records = list(selection["records"])
        self.tuned = int(selection["tuned"])
        if self.selection_records:
            self.model.projection = CellProjection.from_records(
                self.cfg.model.blocks, tuple(self.model.search_space.ops), self.selection_records
            )
        if self.epoch > self.cfg.epochs:
            raise ValueError(
                f"the checkpoint is at epoch {self.epoch} but epochs={self.cfg.epochs}; raise epochs"
            )

    def save(self) -> None:
        """Write ``last.pt`` (and every ``checkpoint_interval`` epochs a kept copy) once the
        processes hold the same BatchNorm statistics."""
        self._sync_buffers()
        every = self.cfg.checkpoint_interval
        keep = every > 0 and self.step == 0 and self.epoch % every == 0
        super().save(self.output / "checkpoints" / f"epoch_{self.epoch:03d}.pt" if keep else None)

    # -------------------------------------------------------------- the loop's steps
    def _start(self) -> None:
        if self.rank == 0:
            (self.output / "genotypes").mkdir(exist_ok=True)

    def _epoch_data(self, epoch: int, first: int) -> tuple[Iterator[Batch], Iterator[Batch]]:
        """trainA batches from step ``first`` on, and the trainB batches of the steps from the
        first one with architecture steps on."""
        k = self.schedule.per_step
        first_arch = self.schedule.first_arch_position(epoch, first)
        self._epoch_start = time.perf_counter()
        self._epoch_arch = self.schedule.first_arch_position(epoch) < self.steps_per_epoch
        return (
            self._loader(self.batches(0, epoch)[first:], epoch),
            self._loader(self.batches(1, epoch)[first_arch * k :], epoch),
        )

    def _step(self, data: tuple[Iterator[Batch], Iterator[Batch]]) -> dict[str, float | None]:
        """A weight step, then (once the schedule says so) the architecture steps."""
        it_a, it_b = data
        values = {
            "lr": self.w_opt.param_groups[0]["lr"],
            **self._search_step(next(it_a), it_b, self.schedule.active(self.global_step)),
        }
        self.step += 1
        return values

    def _search_step(
        self, batch_a: Batch, it_b: Iterator[Batch], arch: bool
    ) -> dict[str, float | None]:
        """A weight step on ``batch_a`` and, with ``arch``, the architecture steps on the next
        trainB batches; returns the losses and the mean of every extra term."""
        values: dict[str, float | None] = {"loss": self.weight_step(batch_a)}
        _add_step(self.epoch_sums, "", values["loss"])
        if arch:
            arch_losses = []
            self.arch_terms = []
            for _ in range(self.schedule.per_step):
                value = self.arch_step(next(it_b), batch_a)
                _add_step(self.epoch_sums, "arch_", value)
                if value is not None:
                    arch_losses.append(value)
            values["arch_loss"] = sum(arch_losses) / len(arch_losses) if arch_losses else None
            # the mean over this step's architecture steps of every extra term
            terms = self.arch_terms
            for name in terms[0] if terms else ():
                values[name] = sum(t[name] for t in terms) / len(terms)
        return values

    def _position(self) -> dict[str, int]:
        return {"epoch": self.epoch + 1, "step": self.step, "global_step": self.global_step}

    def _step_done(self) -> bool:
        if self.step < self.steps_per_epoch:
            return False
        self._end_epoch()
        return True

    def _stop_point(self) -> str:
        if self.step == 0:
            return f"the end of epoch {self.epoch}"
        return f"epoch {self.epoch + 1}, step {self.step}"

    def _result(self, **run: Any) -> SearchResult:
        return SearchResult(
            **run,
            genotype=self.model.genotype(),
            epoch=self.epoch,
            global_step=self.global_step,
            supernet_miou=last_miou(self.history),
            warning=end_of_search_warning(self.history) if run["finished"] else None,
        )

    def _finish(self, result: SearchResult) -> None:
        """``genotype.json`` and ``summary.json`` (what a study compares between trials)."""
        if self.rank == 0:
            result.genotype.save(self.output / "genotype.json")
            last = self.history[-1] if self.history else {}
            keys = ("arch_steps", "alpha_entropy_fraction", "beta_entropy_fraction")
            keys += ("path_log_prob", "path_log_ratio", "probability_path", "ratio_path")
            keys += ("parameter_free_share", "fixed_path")
            # the figures of relaxations with a multi-path topology and a memory budget
            extra = ("path_entropy_fraction", "topology_log_prob", "active_transitions")
            extra += ("memory_fraction", "decoded_memory_fraction", "decoded_memory_bytes")
            summary = {
                "genotype": str(result.genotype),
                "supernet_mIoU": result.supernet_miou,
                "epochs": result.epoch,
                "global_step": result.global_step,
                **{k: last.get(k) for k in keys},
                **{k: last[k] for k in extra if k in last},
                "convergence": convergence(self.history),
                "warning": result.warning,
            }
            if self.selection_records:
                summary["selection"] = self.cfg.selection.name
                (self.output / "selection.json").write_text(
                    dumps_json({"records": self.selection_records}, indent=2) + "\n"
                )
            (self.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        settled = convergence(self.history)
        if result.finished and settled is not None and settled["arch_epochs"]:
            n = settled["arch_epochs"]
            path = (
                f"the decoded path for the last {settled['stable_path_epochs']}"
                if settled["fixed_path"] is None
                else f"the path is fixed (model.path: {settled['fixed_path']})"
            )
            self._say(
                f"settled: the decoded cell was the same for the last "
                f"{settled['stable_cell_epochs']} of {n} epochs with architecture steps, {path} "
                "(1: it changed in the last epoch; a longer search settles more)"
            )
        if result.warning is not None:
            self._say(f"warning: {result.warning}")

    def _term_values(self) -> dict[str, float]:
        """The extra terms of the architecture loss (:meth:`search_terms`) at the current
        parameters, unweighted."""
        with torch.no_grad():
            terms, _ = self.search_terms(self.schedule.arch_progress(self.global_step))
        return {name: float(v) for name, v in terms.items()}

    def _memory_diagnostics(self, genotype: Genotype) -> dict[str, float | int]:
        """The decoded genotype's activation memory at the search's crop and batch (with its
        own cell) and its memory fraction under the budget's reference cell; empty without a
        memory budget."""
        if self.budget is None:
            return {}
        mask = torch.tensor(genotype.topology.mask(), dtype=torch.float64)
        return {
            "decoded_memory_bytes": self.budget.decoded_bytes(genotype),
            "decoded_memory_fraction": float(self.budget.fraction(mask)),
        }

    def _end_epoch(self) -> None:
        """The cosine schedule's step, an evaluation when due, the epoch record, its genotype
        and line, and the checkpoint."""
        cfg, sums = self.cfg, self.epoch_sums
        self.w_sched.step()
        self.epoch, self.step = self.epoch + 1, 0
        self._sync_buffers()
        miou = None
        if cfg.eval_interval > 0 and (
            self.epoch % cfg.eval_interval == 0 or self.epoch == cfg.epochs
        ):
            miou = self.evaluate()
        genotype = self.model.genotype()
        diagnostics = {
            **self._term_values(),
            **model_diagnostics(self.model),
            **self._memory_diagnostics(genotype),
        }
        signal, beta_signal = (
            None
            if sums[f"{name}_grad"] is None
            else gradient_signal(sums[f"{name}_grad"], sums[f"{name}_grad_sq"], steps)
            for name, steps in (("alpha", sums["arch_steps"]), ("beta", sums["beta_grad_steps"]))
        )
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
            **diagnostics,
            "alpha_grad_z": None if signal is None else signal[0],
            "alpha_grad_z_above_2": None if signal is None else signal[1],
            "beta_grad_z": None if beta_signal is None else beta_signal[0],
            "beta_grad_z_above_2": None if beta_signal is None else beta_signal[1],
            "arch_steps": arch_steps,
            **self.guards.state(
                self.schedule.run_progress(self.global_step),
                self.schedule.arch_progress(self.global_step),
            ),
            **self.relaxation.schedule_state(self.schedule.arch_progress(self.global_step)),
            "arch_search": self._epoch_arch,
            "genotype": str(genotype),
            "time_s": time.perf_counter() - self._epoch_start,
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
    with SearchEngine(config, resume=resume, log=log) as engine:
        return engine.run()
