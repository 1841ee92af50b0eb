"""Builders of tiny data set trees in each real on-disk layout."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def save_rgb(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="RGB").save(path, format=fmt)


def save_gray(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)


def save_palette(path: Path, array: np.ndarray, palette: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array.astype(np.uint8), mode="P")
    im.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    im.save(path)


def voc_colormap_reference(n: int = 256) -> np.ndarray:
    """The colour map of the VOC development kit (``VOClabelcolormap.m``), written out again."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        cid = i
        for j in range(7, -1, -1):
            r |= ((cid >> 0) & 1) << j
            g |= ((cid >> 1) & 1) << j
            b |= ((cid >> 2) & 1) << j
            cid >>= 3
        cmap[i] = (r, g, b)
    return cmap


def make_cityscapes(
    root: Path, rng: np.random.Generator, split: str = "train", n: int = 3
) -> list[np.ndarray]:
    """Cityscapes tree with random label ids 0..33; returns the label-id masks."""
    masks = []
    for i in range(n):
        city = ["aachen", "bremen"][i % 2]
        stem = f"{city}_{i:06d}_000019"
        h, w = 12, 20
        save_rgb(
            root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            rng.integers(0, 256, (h, w, 3)),
        )
        labels = rng.integers(0, 34, (h, w))
        save_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", labels)
        masks.append(labels)
    return masks


def make_voc(
    root: Path, rng: np.random.Generator, ids: dict[str, list[str]] | None = None
) -> dict[str, np.ndarray]:
    """VOC2012 tree: JPEG images, palette PNG masks with the VOC colour map and 255 borders."""
    ids = ids or {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    cmap = voc_colormap_reference()
    masks = {}
    for split, names in ids.items():
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        list_file.parent.mkdir(parents=True, exist_ok=True)
        list_file.write_text("".join(f"{n}\n" for n in names))
        for name in names:
            h, w = 10, 14
            save_rgb(
                root / "JPEGImages" / f"{name}.jpg", rng.integers(0, 256, (h, w, 3)), fmt="JPEG"
            )
            mask = rng.integers(0, 21, (h, w))
            mask[0, :] = 255  # object border
            save_palette(root / "SegmentationClass" / f"{name}.png", mask, cmap)
            masks[name] = mask
    return masks


def make_ade(
    root: Path, rng: np.random.Generator, folder: str = "training", n: int = 2
) -> list[np.ndarray]:
    masks = []
    base = root / "ADEChallengeData2016"
    for i in range(n):
        stem = f"ADE_{folder[:5] if folder == 'training' else 'val'}_{i + 1:08d}"
        save_rgb(
            base / "images" / folder / f"{stem}.jpg", rng.integers(0, 256, (9, 11, 3)), fmt="JPEG"
        )
        mask = rng.integers(0, 151, (9, 11))
        save_gray(base / "annotations" / folder / f"{stem}.png", mask)
        masks.append(mask)
    return masks


def make_folder(
    root: Path, rng: np.random.Generator, split: str = "train", n: int = 3, classes: int = 4
) -> list[np.ndarray]:
    (root / "classes.yaml").parent.mkdir(parents=True, exist_ok=True)
    names = "".join(f"  - c{i}\n" for i in range(classes))
    (root / "classes.yaml").write_text(f"class_names:\n{names}")
    masks = []
    for i in range(n):
        save_rgb(root / "images" / split / f"s{i}.png", rng.integers(0, 256, (8, 10, 3)))
        mask = rng.integers(0, classes, (8, 10))
        mask[-1, -1] = 255
        save_gray(root / "masks" / split / f"s{i}.png", mask)
        masks.append(mask)
    return masks


def save_png16_rgb(path: Path, array: np.ndarray) -> None:
    """A 48-bit colour PNG (16 bits per channel) written by hand: Pillow cannot write one."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    h, w, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))  # filter 0
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16-bit depth, colour type RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
