"""A procedural volume data set whose classes need 3D context.

Sample ``i`` of split ``s`` is a pure function of ``(seed, s, i)``. Every object is a solid of
one intensity drawn from the same distribution, placed in a noisy background:

======  ==========  ===============================================================
 id      name        shape (radius r in the (H, W) plane)
======  ==========  ===============================================================
 0       background  smooth intensity ramp plus noise
 1       ball        sphere of radius r
 2       rod         cylinder of radius r along the D axis, longer than 2 r
 3       disc        cylinder of radius r, at most 3 voxels thick along D
======  ==========  ===============================================================

Any one ``(H, W)`` slice through the middle of a ball, a rod or a disc is the same filled
circle: a 2D model sees three identical objects, and only the extent along ``D`` (the
neighbouring slices) tells them apart.

:func:`write_synthetic_decathlon` writes such volumes as a task in the Medical Segmentation
Decathlon layout (``dataset.json``, NIfTI files with an anisotropic, flipped, shifted affine).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from autodeeplab.data.base import check_split, default_palette
from autodeeplab.data.volume import (
    Volume,
    VolumeDataset,
    VolumeTransform,
    is_ct,
    write_image_nifti,
    write_label_nifti,
)

CLASS_NAMES: tuple[str, ...] = ("background", "ball", "rod", "disc")
BACKGROUND, BALL, ROD, DISC = range(len(CLASS_NAMES))
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPACING: tuple[float, float, float] = (2.5, 0.8, 0.8)
"""Voxel size along ``(D, H, W)`` of the written task (thick slices, as in many CT scans)."""
NOISE_STD = 0.08
MIN_RADIUS = 3.0  # a disc (<= 3 voxels thick) is then always thinner than a ball (>= 6)


@cache
def _grid(d: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    zz, yy, xx = np.mgrid[0:d, 0:h, 0:w].astype(np.float32)
    for a in (zz, yy, xx):
        a.flags.writeable = False
    return zz, yy, xx  # (D, H, W) each


def render(
    rng: np.random.Generator, size: tuple[int, int, int], channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one volume: ``(image (C, D, H, W) float32 in about [0, 1], label (D, H, W) int64)``."""
    d, h, w = size
    zz, yy, xx = _grid(d, h, w)
    ramp = rng.uniform(-0.1, 0.1, size=3).astype(np.float32)
    intensity = np.float32(rng.uniform(0.05, 0.25)) + (
        ramp[0] * zz / d + ramp[1] * yy / h + ramp[2] * xx / w
    )  # (D, H, W)
    label = np.zeros((d, h, w), dtype=np.int64)
    max_radius = max(MIN_RADIUS, min(h, w) / 5)
    for _ in range(int(rng.integers(2, 6))):
        kind = int(rng.integers(BALL, DISC + 1))
        r = float(rng.uniform(MIN_RADIUS, max_radius))
        cz, cy, cx = (rng.uniform(0, n) for n in (d, h, w))
        in_plane = (yy - cy) ** 2 + (xx - cx) ** 2
        if kind == BALL:
            region = in_plane + (zz - cz) ** 2 <= r * r
        elif kind == ROD:
            half = rng.uniform(1.5 * r, max(2.0 * r, d))  # longer than the ball's diameter
            region = (in_plane <= r * r) & (np.abs(zz - cz) <= half)
        else:
            half = rng.uniform(0.5, 1.5)  # 1 to 3 slices thick
            region = (in_plane <= r * r) & (np.abs(zz - cz) <= half)
        intensity[region] = rng.uniform(0.5, 1.0)
        label[region] = kind
    gains = 1.0 + 0.5 * np.arange(channels, dtype=np.float32)  # modalities differ in contrast
    image = gains[:, None, None, None] * intensity[None]
    image += rng.normal(0.0, NOISE_STD, size=image.shape).astype(np.float32)
    return image.astype(np.float32), label


def synthetic_affine(spacing: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """A non-trivial ``(4, 4)`` affine for ``(X, Y, Z)`` voxels with ``spacing`` along
    ``(D, H, W)``: X is flipped (as in LPS-stored scans) and the origin is off-centre."""
    sz, sy, sx = (float(v) for v in spacing)
    nx = shape[2]
    return np.array(
        [
            [-sx, 0.0, 0.0, sx * (nx - 1) - 12.5],
            [0.0, sy, 0.0, 30.0],
            [0.0, 0.0, sz, 7.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


class Synthetic3D(VolumeDataset):
    """Procedural volumes of ``CLASS_NAMES``; sample ``i`` is a pure function of ``(seed, split, i)``."""

    name = "synthetic3d"
    splits = SPLITS

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: VolumeTransform | None = None,
        *,
        length: int = 64,
        size: int | Sequence[int] = 32,
        channels: int = 1,
        seed: int = 0,
    ) -> None:
        check_split(self.name, split, self.splits)
        if root is not None:
            raise ValueError(
                "the synthetic3d data set is generated on the fly and takes no root folder"
            )
        shape = (size, size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        if len(shape) != 3 or min(shape) < 8 or length < 0 or channels < 1:
            raise ValueError(
                "need length >= 0, channels >= 1 and a size of at least 8 along each of "
                f"(D, H, W), got length={length}, channels={channels}, size={size}"
            )
        super().__init__(CLASS_NAMES, default_palette(len(CLASS_NAMES)), transform)
        self.split, self.length, self.size, self.channels, self.seed = (
            split,
            length,
            shape,
            channels,
            seed,
        )

    @property
    def in_channels(self) -> int:
        return self.channels

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> Volume:
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        image, label = render(rng, self.size, self.channels)  # type: ignore[arg-type]
        return Volume(
            image=image,
            label=label,
            spacing=DEFAULT_SPACING,
            affine=synthetic_affine(DEFAULT_SPACING, self.size),
            name=f"{self.split}_{index:03d}",
        )

    def __repr__(self) -> str:
        return (
            f"Synthetic3D(split={self.split!r}, length={self.length}, size={self.size}, "
            f"channels={self.channels}, seed={self.seed})"
        )


def _stored(image: np.ndarray, modalities: Sequence[str]) -> np.ndarray:
    """Intensities as a scanner would store them: CT in Hounsfield units, MR in arbitrary units."""
    out = np.empty(image.shape, dtype=np.float32)
    for c, modality in enumerate(modalities):
        out[c] = np.round(-400 + 800 * image[c]) if is_ct(modality) else 100 * image[c] + 20
    return out


def write_synthetic_decathlon(
    root: str | Path,
    num_training: int = 8,
    num_test: int = 2,
    *,
    size: int | Sequence[int] = 32,
    modalities: Sequence[str] = ("CT",),
    spacing: Sequence[float] = DEFAULT_SPACING,
    seed: int = 0,
) -> Path:
    """Write a synthetic task in the Decathlon layout under ``root`` and return ``root``.

    Training cases ``synth_000 ...`` are samples of the ``train`` split of :class:`Synthetic3D`
    (same seed and size), test cases ``synth_test_000 ...`` those of its ``test`` split.
    """
    root = Path(root)
    if num_training < 1 or num_test < 0:
        raise ValueError(
            f"need num_training >= 1 and num_test >= 0, got {num_training}, {num_test}"
        )
    modalities = tuple(modalities)
    channels = len(modalities)
    train = Synthetic3D(split="train", length=num_training, size=size, channels=channels, seed=seed)
    test = Synthetic3D(split="test", length=num_test, size=size, channels=channels, seed=seed)
    affine = synthetic_affine(spacing, train.size)
    stored_dtype = np.int16 if all(is_ct(m) for m in modalities) else np.float32
    training, testing = [], []
    for i in range(num_training):
        volume = train.load(i)
        name = f"synth_{i:03d}"
        write_image_nifti(
            root / "imagesTr" / f"{name}.nii.gz",
            _stored(volume.image, modalities),
            affine,
            stored_dtype,
        )
        write_label_nifti(root / "labelsTr" / f"{name}.nii.gz", volume.label, affine)  # type: ignore[arg-type]
        training.append(
            {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}
        )
    for i in range(num_test):
        name = f"synth_test_{i:03d}"
        write_image_nifti(
            root / "imagesTs" / f"{name}.nii.gz",
            _stored(test.load(i).image, modalities),
            affine,
            stored_dtype,
        )
        testing.append(f"./imagesTs/{name}.nii.gz")
    meta = {
        "name": "Synthetic3D",
        "description": "balls, rods and discs: classes that only 3D context tells apart",
        "tensorImageSize": "4D" if channels > 1 else "3D",
        "modality": {str(c): m for c, m in enumerate(modalities)},
        "labels": {str(k): n for k, n in enumerate(CLASS_NAMES)},
        "numTraining": num_training,
        "numTest": num_test,
        "training": training,
        "test": testing,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
