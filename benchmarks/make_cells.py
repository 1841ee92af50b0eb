"""Write a small microscopy-like folder data set, for studies on data that is not the built-in set.

    .venv/bin/python benchmarks/make_cells.py data/cells            # 96 train, 48 val, 64x64

Fluorescence-like grey images of cells: ``background``, ``cytoplasm`` and ``nucleus``. The
cytoplasm is dim, textured and often barely brighter than the background under the uneven
illumination, so shape and context decide more than brightness; cells touch and overlap, the
images are blurred and noisy. The set is small on purpose (an epoch of a search is a handful of
steps), like the data sets of one's own that the folder layout is for. Sample ``i`` of a split
is a pure function of ``(seed, split, i)``; the files are written in the folder layout that
``data.name: folder`` reads (``classes.yaml``, ``images/<split>/``, ``masks/<split>/``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from autodeeplab.data.folder import write_metadata

CLASS_NAMES = ("background", "cytoplasm", "nucleus")
PALETTE = np.array([[0, 0, 0], [60, 180, 75], [230, 25, 75]], dtype=np.uint8)
SPLITS = ("train", "val")


def _blur(x: np.ndarray, passes: int = 2) -> np.ndarray:
    """Repeated 3x3 box filter (about a Gaussian of sigma ~ 0.8 * sqrt(passes))."""
    for _ in range(passes):
        p = np.pad(x, 1, mode="edge")
        x = sum(p[i : i + x.shape[0], j : j + x.shape[1]] for i in range(3) for j in range(3)) / 9
    return x


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image (H, W, 3) uint8, mask (H, W) uint8)`` of one sample."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    mask = np.zeros((size, size), np.uint8)
    signal = np.zeros((size, size))
    for _ in range(rng.integers(2, 7)):
        cx, cy = rng.uniform(0, size, 2)
        a, b = rng.uniform(0.09, 0.2, 2) * size
        t = rng.uniform(0, np.pi)
        u = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / a
        v = (-(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)) / b
        cell = u**2 + v**2 <= 1
        # the nucleus: a smaller ellipse off the centre, inside the cell
        s = rng.uniform(0.35, 0.55)
        du, dv = rng.uniform(-0.25, 0.25, 2)
        nucleus = ((u - du) / s) ** 2 + ((v - dv) / (s * rng.uniform(0.7, 1.0))) ** 2 <= 1
        texture = _blur(rng.normal(0, 1, (size, size)), 1)
        brightness = rng.uniform(0.12, 0.3)
        signal = np.where(cell, brightness * (1 + 0.5 * texture), signal)
        spots = _blur(rng.random((size, size)) > 0.9, 1)
        signal = np.where(nucleus & cell, rng.uniform(0.5, 0.9) * (0.8 + spots), signal)
        mask[cell] = 1
        mask[nucleus & cell] = 2
    gx, gy = rng.normal(0, 0.2, 2)
    illumination = 1 + gx * (xx / size - 0.5) + gy * (yy / size - 0.5)
    background = rng.uniform(0.05, 0.15)
    image = _blur(signal * illumination + background, 1)
    image = image + rng.normal(0, 0.04, image.shape)
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2), mask


def write(root: Path, lengths: dict[str, int], size: int, seed: int) -> dict[str, object]:
    root.mkdir(parents=True, exist_ok=True)
    write_metadata(root / "classes.yaml", CLASS_NAMES, PALETTE)
    counts = np.zeros(len(CLASS_NAMES), np.int64)
    for split, length in lengths.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(length):
            image, mask = render(np.random.default_rng([seed, SPLITS.index(split), i]), size)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{i:04d}.png")
            counts += np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
    return {
        "root": str(root),
        "lengths": lengths,
        "size": size,
        "seed": seed,
        "class_share": {
            n: float(c / counts.sum()) for n, c in zip(CLASS_NAMES, counts, strict=True)
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="folder to write (created)")
    p.add_argument("--train", type=int, default=96, help="training images (default 96)")
    p.add_argument("--val", type=int, default=48, help="validation images (default 48)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    info = write(args.root, {"train": args.train, "val": args.val}, args.size, args.seed)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
