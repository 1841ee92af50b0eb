"""A procedural segmentation data set that needs both context and detail.

Sample ``i`` of split ``s`` is a pure function of ``(seed, s, i)``: nothing is stored and
nothing depends on the order in which samples are drawn. Every object's colours come from the
same distribution, so colour alone never tells the class:

======  ===========  ==================================================================
 id      name         how to recognise it
======  ===========  ==================================================================
 0       background   smooth colour field with clutter (specks, thin lines)
 1       disc         plain ellipse (shape)
 2       box          plain rotated rectangle (shape)
 3       striped      ellipse or rectangle filled with stripes (texture)
 4       checkered    ellipse or rectangle filled with a checkerboard (texture)
 5       ring         thin elliptic ring, hollow inside (shape, fine detail)
 6       window       a plain disc whose centre lies on a box (context)
======  ===========  ==================================================================

Objects range from a few pixels to larger than the image, occlude each other, and clutter is
painted over everything without changing any label.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from autodeeplab.data.base import JointTransform, SegmentationDataset, check_split, identity_lut
from autodeeplab.data.folder import write_metadata

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "disc",
    "box",
    "striped",
    "checkered",
    "ring",
    "window",
)
BACKGROUND, DISC, BOX, STRIPED, CHECKERED, RING, WINDOW = range(len(CLASS_NAMES))
PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
    ],
    dtype=np.uint8,
)  # (7, 3)
SPLITS: tuple[str, ...] = ("train", "val", "test")


@cache
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx  # (H, W) each


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


class _Frame:
    """A rotated coordinate frame centred on an object: ``u`` along its axis, ``v`` across."""

    def __init__(
        self, rng: np.random.Generator, h: int, w: int, radius: float, cx: float, cy: float
    ) -> None:
        yy, xx = _grid(h, w)
        theta = rng.uniform(0, np.pi)
        c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        dx, dy = xx - np.float32(cx), yy - np.float32(cy)
        self.u = c * dx + s * dy  # (H, W)
        self.v = -s * dx + c * dy  # (H, W)
        aspect = rng.uniform(0.5, 1.0)
        self.a, self.b = radius, radius * aspect  # half-axes along u, v

    def ellipse(self) -> np.ndarray:
        return (self.u / self.a) ** 2 + (self.v / self.b) ** 2 <= 1.0

    def rectangle(self) -> np.ndarray:
        return (np.abs(self.u) <= self.a) & (np.abs(self.v) <= self.b)

    def ring(self, thickness: float) -> np.ndarray:
        r = np.sqrt((self.u / self.a) ** 2 + (self.v / self.b) ** 2)  # normalised radius
        return np.abs(r - 1.0) * self.b <= thickness / 2


def _texture(rng: np.random.Generator, frame: _Frame, kind: int) -> np.ndarray:
    """Boolean ``(H, W)`` pattern: stripes or a checkerboard with a random period."""
    period = rng.uniform(3.0, 8.0)
    if kind == STRIPED:
        return (frame.u / period) % 1.0 < 0.5
    return ((np.floor(frame.u / period) + np.floor(frame.v / period)) % 2) == 0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour field ``(H, W, 3)`` float32: a coarse random grid, upsampled."""
    coarse = rng.uniform(0, 255, size=(3, 3, 3)).astype(np.uint8)
    field = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(field, dtype=np.float32)


def render(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: ``(image (H, W, 3) uint8, mask (H, W) uint8)``."""
    h, w = height, width
    side = float(min(h, w))
    image = _background(rng, h, w)
    mask = np.zeros((h, w), dtype=np.uint8)

    def paint(
        region: np.ndarray, label: int, colour: np.ndarray, pattern: np.ndarray | None = None
    ) -> None:
        if pattern is None:
            image[region] = colour
        else:
            image[region] = np.where(pattern[region, None], colour, _colour(rng))
        mask[region] = label

    def place(radius: float) -> tuple[float, float]:
        return rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)

    def disc_or_window(frame: _Frame, cx: float, cy: float) -> None:
        iy, ix = int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))
        label = WINDOW if mask[iy, ix] == BOX and 0 <= cy < h and 0 <= cx < w else DISC
        paint(frame.ellipse(), label, _colour(rng))

    # Sometimes a region larger than the image: context must come from far away.
    if rng.random() < 0.35:
        kind = int(rng.choice([BOX, STRIPED, CHECKERED]))
        radius = side * rng.uniform(0.6, 1.2)
        frame = _Frame(
            rng, h, w, radius, rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
        )
        region = frame.rectangle() if rng.random() < 0.5 else frame.ellipse()
        paint(region, kind, _colour(rng), None if kind == BOX else _texture(rng, frame, kind))

    for _ in range(int(rng.integers(2, 7))):
        kind = int(
            rng.choice([DISC, BOX, STRIPED, CHECKERED, RING], p=[0.2, 0.25, 0.15, 0.15, 0.25])
        )
        radius = side * float(np.exp(rng.uniform(np.log(0.05), np.log(0.45))))  # log-uniform size
        radius = max(radius, 2.5)
        cx, cy = place(radius)
        frame = _Frame(rng, h, w, radius, cx, cy)
        if kind == DISC:
            disc_or_window(frame, cx, cy)
        elif kind == BOX:
            paint(frame.rectangle(), BOX, _colour(rng))
            for _ in range(int(rng.integers(0, 4))):  # windows on the box
                r = max(2.0, radius * rng.uniform(0.15, 0.35))
                wx = cx + frame.a * 0.6 * rng.uniform(-1, 1)
                wy = cy + frame.b * 0.6 * rng.uniform(-1, 1)
                disc_or_window(_Frame(rng, h, w, r, wx, wy), wx, wy)
        elif kind == RING:
            paint(frame.ring(rng.uniform(1.2, 3.0)), RING, _colour(rng))
        else:
            region = frame.rectangle() if rng.random() < 0.5 else frame.ellipse()
            paint(region, kind, _colour(rng), _texture(rng, frame, kind))

    # Clutter: specks and thin lines in random colours; labels stay as they are.
    yy, xx = _grid(h, w)
    for _ in range(int(rng.integers(3, 10))):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        k = int(rng.integers(1, 3))
        image[y0 : y0 + k, x0 : x0 + k] = _colour(rng)
    for _ in range(int(rng.integers(0, 3))):
        theta = rng.uniform(0, np.pi)
        d = np.cos(theta) * (xx - rng.uniform(0, w)) + np.sin(theta) * (yy - rng.uniform(0, h))
        image[np.abs(d) < 0.5] = _colour(rng)

    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)  # sensor noise
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask


class SyntheticSegmentation(SegmentationDataset):
    """Procedural scenes of ``CLASS_NAMES``; sample ``i`` is a pure function of ``(seed, split, i)``."""

    name = "synthetic"
    splits = SPLITS

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: JointTransform | None = None,
        *,
        length: int = 512,
        size: int | tuple[int, int] = 64,
        seed: int = 0,
    ) -> None:
        check_split(self.name, split, self.splits)
        if root is not None:
            raise ValueError(
                "the synthetic data set is generated on the fly and takes no root folder"
            )
        height, width = (size, size) if isinstance(size, int) else size
        if length < 0 or height < 8 or width < 8:
            raise ValueError(
                f"need length >= 0 and a size of at least 8x8, got length={length}, size={size}"
            )
        super().__init__((), CLASS_NAMES, PALETTE, identity_lut(len(CLASS_NAMES)), transform)
        self.split, self.length, self.height, self.width, self.seed = (
            split,
            length,
            height,
            width,
            seed,
        )

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image (H, W, 3) uint8, mask (H, W) uint8)`` of sample ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        return render(rng, self.height, self.width)

    def write_folder(self, root: str | Path) -> Path:
        """Write this split in the generic folder layout (lossless PNGs) plus ``classes.yaml``."""
        root = Path(root)
        image_dir, mask_dir = root / "images" / self.split, root / "masks" / self.split
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        write_metadata(root / "classes.yaml", self.class_names, self.palette)
        for i in range(self.length):
            image, mask = self.load(i)
            Image.fromarray(image).save(image_dir / f"{i:06d}.png")
            Image.fromarray(mask, mode="L").save(mask_dir / f"{i:06d}.png")
        return root

    def __repr__(self) -> str:
        return (
            f"SyntheticSegmentation(split={self.split!r}, length={self.length}, "
            f"size=({self.height}, {self.width}), seed={self.seed})"
        )


def write_synthetic_folder(
    root: str | Path, lengths: Mapping[str, int], size: int | tuple[int, int] = 64, seed: int = 0
) -> Path:
    """Write several synthetic splits (e.g. ``{"train": 200, "val": 50}``) as a folder data set."""
    for split, length in lengths.items():
        SyntheticSegmentation(split=split, length=length, size=size, seed=seed).write_folder(root)
    return Path(root)
