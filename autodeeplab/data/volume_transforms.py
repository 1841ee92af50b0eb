"""Joint image/label transforms for volumes, built on MONAI.

Called like the 2D transforms, ``t(image, label, rng) -> (image, label)``, with a ``(C, D, H,
W)`` float32 image, a ``(D, H, W)`` int64 label and a ``numpy.random.Generator``; they return
``image (C, D, H, W) float32`` and ``label (D, H, W) int64`` tensors. The random ones reseed
MONAI's transforms from ``rng`` on every call, so a sample is reproducible from its generator
(see :func:`autodeeplab.data.base.sample_rng`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autodeeplab.data.base import IGNORE_INDEX
from autodeeplab.data.volume import require


def roi_triple(roi: int | Sequence[int]) -> tuple[int, int, int]:
    """``(D, H, W)`` of a region of interest given as one side or three."""
    sides = (roi, roi, roi) if isinstance(roi, int) else tuple(int(v) for v in roi)
    if len(sides) != 3 or min(sides) < 1:
        raise ValueError(
            f"a 3D region of interest needs 1 or 3 positive sizes (D, H, W), got {roi}"
        )
    return sides  # type: ignore[return-value]


def _as_tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    """A plain contiguous tensor: MONAI returns ``MetaTensor`` subclasses (or arrays), which
    carry metadata through collation and would reach the model otherwise."""
    if hasattr(value, "as_tensor"):
        value = value.as_tensor()
    return torch.as_tensor(value).to(dtype).contiguous()


class VolumeTrainTransform:
    """Random ``roi`` crop with foreground oversampling, then random flips along each axis.

    A crop is centred on a foreground voxel (label > 0) with probability
    ``foreground_fraction`` and on a background voxel otherwise (MONAI's
    ``RandCropByPosNegLabeld``). A volume smaller than ``roi`` along an axis is kept whole
    along it and padded at the end: the image with 0 (the normalised background) and the label
    with ``ignore_index`` (255), so padding takes no part in the loss. Each of the three axes
    is then flipped with probability ``flip_prob``.
    """

    def __init__(
        self,
        roi: int | Sequence[int],
        *,
        foreground_fraction: float = 0.5,
        flip_prob: float = 0.5,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.roi = roi_triple(roi)
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.foreground_fraction, self.flip_prob = foreground_fraction, flip_prob
        tr = require("monai.transforms")
        keys = ["image", "label"]
        self._compose = tr.Compose(
            [
                tr.RandCropByPosNegLabeld(
                    keys=keys,
                    label_key="label",
                    spatial_size=self.roi,
                    pos=foreground_fraction,
                    neg=1.0 - foreground_fraction,
                    num_samples=1,
                    allow_smaller=True,
                ),
                tr.SpatialPadd(keys=["image"], spatial_size=self.roi, method="end", value=0.0),
                tr.SpatialPadd(
                    keys=["label"], spatial_size=self.roi, method="end", value=ignore_index
                ),
                *(tr.RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(3)),
            ]
        )

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 4 or label.shape != image.shape[1:]:
            raise ValueError(
                f"expected image (C, D, H, W) and label (D, H, W) of the same size, got "
                f"{image.shape} and {label.shape}"
            )
        self._compose.set_random_state(seed=int(rng.integers(0, 2**31 - 1)))
        out = self._compose({"image": image, "label": label[None]})
        crop = out[0] if isinstance(out, list) else out  # the crop returns a list of samples
        return _as_tensor(crop["image"], torch.float32), _as_tensor(crop["label"][0], torch.int64)

    def __repr__(self) -> str:
        return (
            f"VolumeTrainTransform(roi={self.roi}, foreground_fraction={self.foreground_fraction}, "
            f"flip_prob={self.flip_prob})"
        )


class VolumeToTensor:
    """Whole volumes as tensors: evaluation and prediction run on them by sliding window."""

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(label, dtype=np.int64)
        )

    def __repr__(self) -> str:
        return "VolumeToTensor()"


def volume_train_transform(
    roi: int | Sequence[int], foreground_fraction: float = 0.5, flip_prob: float = 0.5
) -> VolumeTrainTransform:
    """The training pipeline: foreground-oversampled ``roi`` crops and random flips."""
    return VolumeTrainTransform(roi, foreground_fraction=foreground_fraction, flip_prob=flip_prob)


def volume_eval_transform() -> VolumeToTensor:
    """The evaluation pipeline: whole volumes as tensors."""
    return VolumeToTensor()
