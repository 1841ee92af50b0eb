"""Inference modes and streaming evaluation (see docs/inference.md).

``predict_logits(model, image, scales=..., flip=..., sliding_window=...)`` maps a normalised
``(N, 3, H, W)`` batch to class scores ``(N, C, H, W)``:

- single scale: the model's logits;
- multi-scale / flip: every view (each scale, and its mirror image when ``flip``) is resized
  bilinearly to ``round(H * s) x round(W * s)``, run, and its logits resized back to ``H x W``
  (and mirrored back); the result is the **mean of the logits** over all views. Averaging
  logits keeps the one-view case exact and uses one rule for views and windows; its argmax
  rarely differs from that of averaged probabilities;
- sliding window: each view is cut into ``crop`` windows ``stride`` apart, the last one
  aligned to the border, after zero-padding (the normalised mean colour) to at least ``crop``;
  the logits of overlapping windows are averaged.

Inputs smaller than the model's minimum (height and width must exceed the deepest stride) are
zero-padded at the bottom and right and the logits cropped back, so any size works.

Large views are tiled automatically when ``tile_above`` is set: a view of more than that many
pixels (per image) runs through the sliding window of :func:`tile_window`, so the memory of
the network's activations is bounded by one window; only the logits of the whole view are
held at full size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from autodeeplab.metrics import IGNORE_INDEX, ConfusionMatrix
from autodeeplab.network import AutoDeepLab

MULTI_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
"""The usual multi-scale evaluation scales (DeepLab)."""

DEFAULT_TILE_ABOVE = 4_000_000
"""Pixels of a view above which ``predict`` and ``eval`` tile it by default (4 megapixels).

Measured with ``benchmarks/inference_memory.py`` on the CPU, a no-grad forward pass grows the
process by about 0.45 GiB per megapixel for Auto-DeepLab-S (1.8 GiB at 2048 x 2048, 1.0 GiB
there in 1-megapixel tiles) and 0.6 GiB for Auto-DeepLab-L; so a view of 4 megapixels needs
about 2-2.5 GiB, a Cityscapes image (2.1 megapixels) still runs whole, and a 6000 x 6000
photograph (36 megapixels) runs in tiles instead of asking for some 16 GiB."""


@dataclass(frozen=True)
class SlidingWindow:
    """Window size and step, both ``(height, width)``; ``stride <= crop`` so windows overlap
    or touch and every pixel is covered."""

    crop: tuple[int, int]
    stride: tuple[int, int]

    def __post_init__(self) -> None:
        crop = tuple(int(v) for v in self.crop)
        stride = tuple(int(v) for v in self.stride)
        if len(crop) != 2 or len(stride) != 2 or min(*crop, *stride) < 1:
            raise ValueError(
                f"crop and stride must be (height, width) pairs of positive integers, got "
                f"crop={self.crop}, stride={self.stride}"
            )
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise ValueError(
                f"stride {stride} must not exceed crop {crop}, or some pixels fall between windows"
            )
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "stride", stride)


def default_stride(crop: Sequence[int]) -> tuple[int, int]:
    """Two thirds of the window, rounded up: neighbouring windows overlap by a third."""
    h, w = crop
    return -(-2 * h // 3), -(-2 * w // 3)


def tile_window(max_pixels: int) -> SlidingWindow:
    """The window of automatic tiling: the largest square of at most ``max_pixels`` pixels,
    with the default stride."""
    if max_pixels < 1:
        raise ValueError(f"tiling needs a positive number of pixels per tile, got {max_pixels}")
    side = math.isqrt(max_pixels)
    return SlidingWindow((side, side), default_stride((side, side)))


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of size ``crop`` along an axis of ``length`` (padded to at
    least ``crop``): ``0, stride, 2 * stride, ...`` and a last one ending at the border."""
    if length <= crop:
        return [0]
    n = -(-(length - crop) // stride) + 1  # ceil((length - crop) / stride) + 1
    return [min(i * stride, length - crop) for i in range(n)]


def window_boxes(height: int, width: int, window: SlidingWindow) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` of every window over an image padded to at least ``window.crop``."""
    ch, cw = window.crop
    sh, sw = window.stride
    ys = window_starts(height, ch, sh)
    xs = window_starts(width, cw, sw)
    return [(y, y + ch, x, x + cw) for y in ys for x in xs]


def min_input_size(model: nn.Module) -> int:
    """Smallest height/width the model accepts (an AutoDeepLab needs more than its deepest
    stride); 1 for other models."""
    return model.genotype.max_stride + 1 if isinstance(model, AutoDeepLab) else 1


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    ph, pw = max(0, height - x.shape[-2]), max(0, width - x.shape[-1])
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x  # zeros = mean colour after Normalize


def forward_padded(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for any ``(N, 3, H, W)``: pad small inputs to the model's minimum, crop back."""
    h, w = x.shape[-2:]
    m = min_input_size(model)
    logits = model(_pad_to(x, m, m))  # (N, C, max(H, m), max(W, m))
    return logits[..., :h, :w]


def sliding_window_logits(model: nn.Module, x: torch.Tensor, window: SlidingWindow) -> torch.Tensor:
    """Average the logits of overlapping windows: ``(N, 3, H, W) -> (N, C, H, W)``."""
    h, w = x.shape[-2:]
    xp = _pad_to(x, *window.crop)  # (N, 3, Hp, Wp)
    hp, wp = xp.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros((hp, wp), dtype=x.dtype, device=x.device)
    for y0, y1, x0, x1 in window_boxes(hp, wp, window):
        logits = forward_padded(model, xp[..., y0:y1, x0:x1])  # (N, C, ch, cw)
        if total is None:
            total = x.new_zeros((x.shape[0], logits.shape[1], hp, wp))
        total[..., y0:y1, x0:x1] += logits
        count[y0:y1, x0:x1] += 1
    assert total is not None and bool((count > 0).all())
    return (total / count)[..., :h, :w]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(round(H * s), round(W * s))``, at least 1 pixel."""
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _views(scales: Sequence[float], flip: bool) -> Iterator[tuple[float, bool]]:
    for s in scales:
        yield s, False
        if flip:
            yield s, True


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    sliding_window: SlidingWindow | None = None,
    tile_above: int | None = None,
) -> torch.Tensor:
    """Class scores ``(N, C, H, W)`` for a normalised batch ``(N, 3, H, W)``: the mean of the
    logits over all scales (and mirrored views when ``flip``). Put the model in eval mode.

    Without ``sliding_window``, a view of more than ``tile_above`` pixels (height x width) runs
    in the tiles of :func:`tile_window` instead of whole (``None``: never)."""
    if image.ndim != 4:
        raise ValueError(
            f"expected a normalised image batch (N, 3, H, W), got {tuple(image.shape)}"
        )
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    if tile_above is not None and tile_above < 1:
        raise ValueError(f"tile_above must be a positive number of pixels, got {tile_above}")
    h, w = image.shape[-2:]
    total: torch.Tensor | None = None
    n_views = 0
    for scale, mirrored in _views(scales, flip):
        x = _resize(image, scaled_size(h, w, scale))  # (N, 3, h_s, w_s)
        if mirrored:
            x = torch.flip(x, dims=[-1])
        window = sliding_window
        if window is None and tile_above is not None and x.shape[-2] * x.shape[-1] > tile_above:
            window = tile_window(tile_above)
        if window is None:
            logits = forward_padded(model, x)  # (N, C, h_s, w_s)
        else:
            logits = sliding_window_logits(model, x, window)
        if mirrored:
            logits = torch.flip(logits, dims=[-1])
        logits = _resize(logits, (h, w))  # (N, C, H, W)
        total = logits if total is None else total + logits
        n_views += 1
    assert total is not None
    return total / n_views


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    sliding_window: SlidingWindow | None = None,
    tile_above: int | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    ignore_index: int = IGNORE_INDEX,
    device: str | torch.device = "cpu",
) -> ConfusionMatrix:
    """Stream ``dataset`` (normalised ``(3, H, W)`` images, ``(H, W)`` train-id masks) through
    :func:`predict_logits` and accumulate a confusion matrix. ``batch_size > 1`` needs images
    of one size. The model is put in eval mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)  # (N, 3, H, W), (N, H, W)
        logits = predict_logits(
            model,
            images,
            scales=scales,
            flip=flip,
            sliding_window=sliding_window,
            tile_above=tile_above,
        )
        cm.update(logits.argmax(dim=1), masks)
    return cm


@dataclass(frozen=True)
class EvalResult:
    """The confusion matrix of an evaluation and a JSON-ready report of it."""

    matrix: ConfusionMatrix
    class_names: tuple[str, ...]
    report: dict[str, Any]

    def format_table(self) -> str:
        return self.matrix.format_table(self.class_names)


def evaluate_model_folder(
    model_dir: str | Path,
    *,
    data_root: str | Path | None,
    dataset: str | None = None,
    split: str = "val",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    sliding_window: SlidingWindow | None = None,
    tile_above: int | None = DEFAULT_TILE_ABOVE,
    batch_size: int = 1,
    max_samples: int | None = None,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Evaluate a saved model on a data set split (normalised with the model's mean/std).

    ``dataset`` defaults to the data set named in the model's ``config.json``; ``max_samples``
    evaluates only the first samples of the split; views larger than ``tile_above`` pixels run
    in tiles (:func:`predict_logits`).
    """
    from autodeeplab.data import build_dataset, eval_transform
    from autodeeplab.saved_model import load_model

    loaded = load_model(model_dir, device)
    cfg = loaded.config
    name = dataset or cfg.dataset
    if name is None:
        raise ValueError(
            f"the config.json of {model_dir} names no data set; pass one (e.g. --dataset cityscapes)"
        )
    ds = build_dataset(name, data_root, split, eval_transform(mean=cfg.mean, std=cfg.std))
    if ds.num_classes != cfg.num_classes:
        raise ValueError(
            f"data set {name!r} has {ds.num_classes} classes but the model predicts "
            f"{cfg.num_classes}; evaluate on the data set the model was trained for"
        )
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        ds = Subset(ds, range(min(max_samples, len(ds))))  # type: ignore[assignment]
    cm = evaluate(
        loaded.model,
        ds,
        cfg.num_classes,
        scales=scales,
        flip=flip,
        sliding_window=sliding_window,
        tile_above=tile_above,
        batch_size=batch_size,
        num_workers=num_workers,
        ignore_index=cfg.ignore_index,
        device=device,
    )
    report = {
        "model": str(model_dir),
        "dataset": name,
        "split": split,
        "samples": len(ds),
        "scales": [float(s) for s in scales],
        "flip": flip,
        "sliding_window": None
        if sliding_window is None
        else {"crop": list(sliding_window.crop), "stride": list(sliding_window.stride)},
        "tile_above": tile_above,
        **cm.to_dict(cfg.class_names),
    }
    return EvalResult(cm, cfg.class_names, report)
