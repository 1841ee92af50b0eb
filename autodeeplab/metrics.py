"""Segmentation metrics from a streaming confusion matrix.

``ConfusionMatrix.matrix[t, p]`` counts evaluated pixels of ground-truth class ``t`` predicted
as ``p``; pixels whose ground truth is ``ignore_index`` are skipped. With ``TP_c`` the diagonal,
``GT_c`` the row sums and ``P_c`` the column sums:

- IoU_c = TP_c / (GT_c + P_c - TP_c), mIoU = mean over classes present in GT or prediction
- Dice_c = 2 TP_c / (GT_c + P_c) = 2 TP / (2 TP + FP + FN), mean Dice over the same classes
  (per class, Dice = 2 IoU / (1 + IoU))
- accuracy_c = TP_c / GT_c (recall), mean accuracy = mean over classes present in GT
- pixel accuracy = sum TP / sum GT
- frequency-weighted IoU = sum_c (GT_c / sum GT) * IoU_c

A class absent from both ground truth and prediction has IoU and Dice NaN; a class absent from
the ground truth has accuracy NaN. NaN entries are left out of the means.

The counts are pooled over everything passed to ``update`` (any shape: ``(N, H, W)`` images or
``(N, D, H, W)`` volumes), so the Dice of several volumes is that of all their voxels together;
the mean of per-volume Dice scores, which medical benchmarks usually report, comes from one
matrix per volume (see :func:`autodeeplab.volume_inference.evaluate_volumes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates a ``(num_classes, num_classes)`` int64 confusion matrix on any device.

    The matrix lives on the device of the first ``update`` (CPU until then).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. ``pred`` holds class ids shaped like ``target`` (e.g. ``(N, H, W)``)
        or logits with a class dimension after the batch dimension (``(N, C, H, W)``)."""
        if pred.dim() == target.dim() + 1 and pred.is_floating_point():
            if pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits have {pred.shape[1]} classes, expected {self.num_classes}"
                )
            pred = pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape "
                "(or pred must be logits (N, C, ...) for target (N, ...))"
            )
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        pred, target = pred.to(target.device).reshape(-1).long(), target.reshape(-1).long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        n = self.num_classes
        lo = torch.minimum(pred.min(), target.min())
        hi = torch.maximum(pred.max(), target.max())
        if bool(lo < 0) or bool(hi >= n):
            bad_t = torch.unique(target[(target < 0) | (target >= n)]).tolist()
            bad_p = torch.unique(pred[(pred < 0) | (pred >= n)]).tolist()
            raise ValueError(
                f"values must be class ids 0..{n - 1} (targets may also be {self.ignore_index}); "
                f"got target values {bad_t[:10]} and prediction values {bad_p[:10]} out of range"
            )
        self.matrix += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of ``other`` (same number of classes) into this matrix."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the matrix over all processes when ``torch.distributed`` is initialised.

        The matrix must be on a device the backend supports (CUDA for NCCL). No-op otherwise.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM, group=group)
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    # -- metrics (float64 numpy; NaN marks undefined per-class values) --------------------

    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.matrix.detach().cpu().numpy().astype(np.float64)
        return np.diag(m), m.sum(axis=1), m.sum(axis=0)  # TP, GT, P

    def per_class_iou(self) -> np.ndarray:
        """``(C,)`` IoU per class; NaN for classes absent from both ground truth and prediction."""
        tp, gt, pr = self._counts()
        union = gt + pr - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def per_class_dice(self) -> np.ndarray:
        """``(C,)`` Dice ``2 TP / (GT + P)`` per class; NaN for classes absent from both."""
        tp, gt, pr = self._counts()
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gt + pr > 0, 2 * tp / (gt + pr), np.nan)

    def per_class_accuracy(self) -> np.ndarray:
        """``(C,)`` fraction of each class's pixels predicted correctly; NaN if absent in GT."""
        tp, gt, _ = self._counts()
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gt > 0, tp / gt, np.nan)

    def mean_iou(self) -> float:
        return _nanmean(self.per_class_iou())

    def mean_dice(self) -> float:
        return _nanmean(self.per_class_dice())

    def mean_accuracy(self) -> float:
        return _nanmean(self.per_class_accuracy())

    def pixel_accuracy(self) -> float:
        tp, gt, _ = self._counts()
        return float(tp.sum() / gt.sum()) if gt.sum() > 0 else math.nan

    def frequency_weighted_iou(self) -> float:
        _, gt, _ = self._counts()
        if gt.sum() == 0:
            return math.nan
        iou = self.per_class_iou()
        present = gt > 0  # a class present in GT always has a defined IoU
        return float((gt[present] / gt.sum() * iou[present]).sum())

    @property
    def total(self) -> int:
        """Number of evaluated (non-ignored) pixels."""
        return int(self.matrix.sum())

    def summary(self) -> dict[str, float]:
        """The scalar metrics."""
        return {
            "mIoU": self.mean_iou(),
            "mean_accuracy": self.mean_accuracy(),
            "pixel_accuracy": self.pixel_accuracy(),
            "fw_iou": self.frequency_weighted_iou(),
            "mDice": self.mean_dice(),
        }

    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(i) for i in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"got {len(class_names)} class names for {self.num_classes} classes")
        return list(class_names)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready metrics (NaN becomes ``None``), per class keyed by name."""
        names = self._names(class_names)
        iou, acc, dice = self.per_class_iou(), self.per_class_accuracy(), self.per_class_dice()
        return {
            **{k: _json(v) for k, v in self.summary().items()},
            "pixels": self.total,
            "per_class": {
                name: {"iou": _json(iou[i]), "accuracy": _json(acc[i]), "dice": _json(dice[i])}
                for i, name in enumerate(names)
            },
        }

    def format_table(self, class_names: Sequence[str] | None = None) -> str:
        """A per-class table of IoU and accuracy in percent (``n/a`` for undefined values)."""
        names = self._names(class_names)
        iou, acc = self.per_class_iou(), self.per_class_accuracy()
        _, gt, _ = self._counts()
        width = max(len("pixel accuracy"), *(len(n) for n in names))
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}  {'pixels':>10}", "-" * (width + 30)]
        for i, name in enumerate(names):
            lines.append(f"{name:<{width}}  {_pct(iou[i])}  {_pct(acc[i])}  {int(gt[i]):>10d}")
        lines.append("-" * (width + 30))
        for label, value in (
            ("mIoU", self.mean_iou()),
            ("mean accuracy", self.mean_accuracy()),
            ("pixel accuracy", self.pixel_accuracy()),
            ("fw IoU", self.frequency_weighted_iou()),
        ):
            lines.append(f"{label:<{width}}  {_pct(value)}")
        return "\n".join(lines)

    def absent_note(self, class_names: Sequence[str] | None = None, where: str = "") -> str | None:
        """A warning naming the classes without a single ground-truth pixel (``where`` says
        in what, e.g. ``"the 32 evaluated samples of the 'val' split"``), or None if every
        class has some. Such a class has no accuracy, is left out of the mIoU when it is never
        predicted either, and most often means masks that store it under another value."""
        names = self._names(class_names)
        _, gt, _ = self._counts()
        absent = [names[i] for i in np.flatnonzero(gt == 0)]
        if not absent:
            return None
        listed = ", ".join(repr(n) for n in absent[:8]) + (", ..." if len(absent) > 8 else "")
        return (
            f"{len(absent)} of {self.num_classes} classes have no ground-truth pixel"
            f"{' in ' + where if where else ''} ({listed}): the mIoU leaves them out where they "
            "are never predicted either. If the masks store them under other values (binary "
            "masks as 0 and 255, say, where 255 means ignore), map the values with mask_values "
            "in the data set's classes.yaml (docs/data.md)"
        )

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={self.total})"


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _json(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _pct(value: float) -> str:
    return f"{'n/a':>6}" if math.isnan(value) else f"{100 * value:6.2f}"
