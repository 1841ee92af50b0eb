"""Joint image/mask transforms, reproducible through an explicit random generator.

Every transform is called as ``t(image, mask, rng) -> (image, mask)`` with a
``numpy.random.Generator``; the deterministic ones ignore ``rng``. Images are ``(H, W, 3)``
arrays (uint8 until :class:`Normalize`), masks ``(H, W)`` uint8 train ids. Masks are always
resampled with nearest neighbour, so they only ever hold values they held before, plus the
ignore value 255 where padding was added. :class:`ToTensor` ends a pipeline with
``image (3, H, W) float32`` and ``mask (H, W) int64`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from autodeeplab.data.base import IGNORE_INDEX, JointTransform

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"sizes must be positive (height, width), got {size}")
    return int(h), int(w)


def resize(
    image: np.ndarray, mask: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of the image, nearest-neighbour resize of the mask."""
    if image.shape[:2] == (height, width):
        return image, mask
    img = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    msk = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    return img, msk


class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[JointTransform]) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, image: Any, mask: Any, rng: np.random.Generator) -> tuple[Any, Any]:
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


class RandomScale:
    """Resize by a factor drawn uniformly from ``[min_scale, max_scale]``."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        scale = rng.uniform(self.min_scale, self.max_scale)
        h, w = mask.shape
        return resize(image, mask, max(1, round(h * scale)), max(1, round(w * scale)))

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class Resize:
    """Resize to a fixed ``(height, width)``."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.height, self.width = _pair(size)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return resize(image, mask, self.height, self.width)

    def __repr__(self) -> str:
        return f"Resize(({self.height}, {self.width}))"


class PadIfNeeded:
    """Pad bottom/right up to at least ``size``: the image with ``fill``, the mask with 255."""

    def __init__(
        self,
        size: int | Sequence[int],
        fill: Sequence[float] = (0, 0, 0),
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.height, self.width = _pair(size)
        self.fill = tuple(fill)
        self.ignore_index = ignore_index

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = mask.shape
        ph, pw = max(0, self.height - h), max(0, self.width - w)
        if ph == 0 and pw == 0:
            return image, mask
        out_img = np.empty((h + ph, w + pw, image.shape[2]), dtype=image.dtype)
        out_img[...] = (
            np.asarray(self.fill, dtype=np.float64).round()
            if image.dtype == np.uint8
            else self.fill
        )
        out_img[:h, :w] = image
        out_mask = np.full((h + ph, w + pw), self.ignore_index, dtype=mask.dtype)
        out_mask[:h, :w] = mask
        return out_img, out_mask

    def __repr__(self) -> str:
        return f"PadIfNeeded(({self.height}, {self.width}), fill={self.fill})"


class RandomCrop:
    """Crop a random ``size`` window; the input must be at least that large (pad first)."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.height, self.width = _pair(size)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = mask.shape
        if h < self.height or w < self.width:
            raise ValueError(
                f"RandomCrop to {self.height}x{self.width} got a {h}x{w} input; put PadIfNeeded before it"
            )
        y = int(rng.integers(0, h - self.height + 1))
        x = int(rng.integers(0, w - self.width + 1))
        return image[y : y + self.height, x : x + self.width], mask[
            y : y + self.height, x : x + self.width
        ]

    def __repr__(self) -> str:
        return f"RandomCrop(({self.height}, {self.width}))"


class RandomHorizontalFlip:
    """Mirror image and mask left-right together with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.p:
            return image[:, ::-1], mask[:, ::-1]
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.p})"


class Normalize:
    """``(image / 255 - mean) / std`` per channel, as float32; the mask is untouched."""

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.shape != (3,) or self.std.shape != (3,) or (self.std <= 0).any():
            raise ValueError(f"mean and std must be 3 values each, std > 0; got {mean}, {std}")

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return (image.astype(np.float32) / 255.0 - self.mean) / self.std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class ToTensor:
    """``image (H, W, 3) -> (3, H, W) float32`` tensor, ``mask (H, W) -> int64`` tensor."""

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return img, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))

    def __repr__(self) -> str:
        return "ToTensor()"


def mean_fill(mean: Sequence[float]) -> tuple[float, float, float]:
    """The uint8 colour that :class:`Normalize` maps to zero, used to pad images."""
    r, g, b = (255.0 * m for m in mean)
    return r, g, b


def train_transform(
    crop_size: int | Sequence[int],
    scale: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Random scale, pad (image with the mean colour, mask with 255), random crop, flip,
    normalise, to tensors: the usual DeepLab training pipeline."""
    steps: list[JointTransform] = []
    if scale != (1.0, 1.0):
        steps.append(RandomScale(*scale))
    steps += [PadIfNeeded(crop_size, fill=mean_fill(mean)), RandomCrop(crop_size)]
    if flip:
        steps.append(RandomHorizontalFlip(0.5))
    steps += [Normalize(mean, std), ToTensor()]
    return Compose(steps)


def eval_transform(
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Deterministic: optional resize to ``size`` (mask nearest), normalise, to tensors."""
    steps: list[JointTransform] = [] if size is None else [Resize(size)]
    return Compose([*steps, Normalize(mean, std), ToTensor()])
