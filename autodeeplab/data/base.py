"""The contract every segmentation data set follows, and the checks done while loading.

A data set yields ``(image, mask)`` pairs. Before any transform the image is a ``(H, W, 3)``
uint8 RGB array and the mask a ``(H, W)`` uint8 array of *train ids*: ``0 .. num_classes - 1``
for classes and ``ignore_index = 255`` for pixels that are not evaluated. Each adapter
translates its on-disk label encoding into train ids through a 256-entry lookup table, so
checking the values of a mask and translating them is one indexing operation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IGNORE_INDEX = 255
"""Train id of pixels that take no part in the loss or the metrics."""

INVALID = -1
"""Entry of a lookup table marking a raw mask value the data set does not define."""

JointTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[Any, Any]]
"""``transform(image, mask, rng) -> (image, mask)``; see :mod:`autodeeplab.data.transforms`."""


class DatasetError(ValueError):
    """A data set on disk is not usable; the message names the file or folder and the problem."""


class DatasetLayoutError(DatasetError, FileNotFoundError):
    """A root folder, split folder, list file or sample file is missing or empty."""


def layout_error(name: str, root: Path, problem: str, layout: str) -> DatasetLayoutError:
    """Build an error that shows the expected folder tree under ``root``."""
    return DatasetLayoutError(
        f"{name} data set at {root}: {problem}\nExpected layout:\n{layout.rstrip()}"
    )


IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes read as images (compared lower-cased), by the folder data set and `predict`."""

LABEL_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".bmp")
"""File suffixes read as masks: lossless formats only (JPEG compression changes label values)."""

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
"""Pillow modes of single-channel 16-bit images (16-bit PNG and TIFF; older Pillow versions
open 16-bit PNGs as 32-bit mode ``I``)."""


def _scale_16_to_8(values: np.ndarray, path: Path) -> np.ndarray:
    """``round(v * 255 / 65535)`` for 16-bit values, as uint8 (not clipped at 255)."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DatasetError(
            f"image {path} holds values outside 0..65535 (mode 'I'); only 8- and 16-bit "
            "images are supported"
        )
    wide = values.astype(np.uint32)
    return ((wide * 255 + 65535 // 2) // 65535).astype(np.uint8)  # integer rounding


def read_image(path: Path) -> np.ndarray:
    """Read an RGB image as a ``(H, W, 3)`` uint8 array; corrupt or truncated files raise.

    16-bit grayscale images are scaled to 0..255 (``round(v * 255 / 65535)``) rather than
    clipped; Pillow itself reduces 16-bit colour PNGs to 8 bits per channel.
    """
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            if im.mode in SIXTEEN_BIT_MODES:
                gray = _scale_16_to_8(np.asarray(im), path)  # (H, W)
                return np.repeat(gray[..., None], 3, axis=2)
            if im.mode == "F":
                raise DatasetError(
                    f"image {path} holds 32-bit floating-point values (mode 'F'); how they map "
                    "to 0..255 is not defined by the file: convert it to an 8- or 16-bit image "
                    "with the scaling that suits the data"
                )
            rgb = im.convert("RGB")
    except FileNotFoundError as err:
        raise DatasetLayoutError(f"image file {path} does not exist") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"cannot read image {path}: corrupt or truncated ({err})") from err
    return np.asarray(rgb, dtype=np.uint8)


def read_label(path: Path) -> np.ndarray:
    """Read a single-channel mask (8-bit grayscale ``L``, palette ``P``, 16-bit grayscale, or
    1-bit ``1``; PNG or TIFF) as ``(H, W)`` integer labels, unscaled: uint8, or int32 for a
    16-bit file. A 1-bit mask gives labels 0 and 1.

    A palette PNG yields its palette *indices*, which is how VOC stores class ids.
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode not in ("1", "L", "P", *SIXTEEN_BIT_MODES):
                raise DatasetError(
                    f"mask {path} has image mode {mode!r}; masks must be single-channel 1-, 8- "
                    "or 16-bit images (grayscale or palette) holding class ids, not colours"
                )
            arr = np.asarray(im)
            arr = arr.astype(np.uint8 if mode in ("1", "L", "P") else np.int32)
    except FileNotFoundError as err:
        raise DatasetLayoutError(f"mask file {path} does not exist") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"cannot read mask {path}: corrupt or truncated ({err})") from err
    return arr


def apply_lut(raw: np.ndarray, lut: np.ndarray, path: Path, valid: str) -> np.ndarray:
    """Translate raw mask values to train ids; values the table marks invalid raise.

    ``valid`` describes the accepted raw values for the error message. Values outside the table
    (from a 16-bit mask) are invalid too.
    """
    if raw.dtype == np.uint8:
        out = lut[raw]  # (H, W) int16
    else:
        out = np.full(raw.shape, INVALID, dtype=lut.dtype)
        inside = (raw >= 0) & (raw < len(lut))
        out[inside] = lut[raw[inside]]
    if (out == INVALID).any():
        bad = np.unique(raw[out == INVALID]).tolist()
        shown = ", ".join(map(str, bad[:12])) + (", ..." if len(bad) > 12 else "")
        raise DatasetError(
            f"mask {path} holds values [{shown}] that are neither a class nor ignore; "
            f"valid values are {valid}"
        )
    return out.astype(np.uint8)


def identity_lut(num_classes: int) -> np.ndarray:
    """Lookup table for masks that already hold train ids: ``0..num_classes-1`` and 255."""
    if not 1 <= num_classes <= IGNORE_INDEX:
        raise ValueError(f"num_classes must be in 1..{IGNORE_INDEX}, got {num_classes}")
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic colours ``(num_classes, 3)`` uint8 (the VOC bit-interleaving map)."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def sample_rng(index: int) -> np.random.Generator:
    """Per-sample generator for random transforms, drawn from torch's random stream.

    Inside a ``DataLoader`` worker torch's generator is seeded by the loader (from its
    ``generator=`` argument) for every worker and epoch, and in the main process it follows
    ``torch.manual_seed``; so augmentations differ from epoch to epoch and across workers, and
    a run is reproducible from its seed. Call ``dataset.get(index, rng)`` to pass one explicitly.
    """
    draw = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng([draw, index])


class SegmentationDataset(torch.utils.data.Dataset):
    """A list of ``(image_path, mask_path)`` pairs read from disk and checked on load.

    Subclasses set ``class_names``, ``palette`` and ``lut`` (256 entries: raw mask value ->
    train id, 255 = ignore, ``INVALID`` = not allowed) and fill ``samples``.
    """

    name: ClassVar[str] = "dataset"
    splits: ClassVar[tuple[str, ...]] = ()
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        class_names: Sequence[str],
        palette: np.ndarray,
        lut: np.ndarray,
        transform: JointTransform | None = None,
    ) -> None:
        self.samples: tuple[tuple[Path, Path], ...] = tuple(samples)
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.palette = np.asarray(palette, dtype=np.uint8)  # (C, 3)
        if self.palette.shape != (len(self.class_names), 3):
            raise ValueError(
                f"palette must have shape ({len(self.class_names)}, 3) to match the class "
                f"names, got {self.palette.shape}"
            )
        self.lut = lut
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """Channels of the images: RGB."""
        return 3

    def __len__(self) -> int:
        return len(self.samples)

    def _valid_values(self) -> str:
        values = np.flatnonzero(self.lut != INVALID)
        runs: list[str] = []
        start = prev = int(values[0])
        for v in [*values[1:].tolist(), None]:
            if v is not None and v == prev + 1:
                prev = v
                continue
            runs.append(str(start) if start == prev else f"{start}..{prev}")
            if v is not None:
                start = prev = v
        return "{" + ", ".join(runs) + "}"

    def load_image(self, index: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB image of sample ``index``."""
        return read_image(self.samples[index][0])

    def load_mask(self, index: int) -> np.ndarray:
        """``(H, W)`` uint8 train-id mask of sample ``index`` (values checked)."""
        path = self.samples[index][1]
        return apply_lut(read_label(path), self.lut, path, self._valid_values())

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed, checked ``(image (H, W, 3) uint8, mask (H, W) uint8)``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, mask = self.load_image(index), self.load_mask(index)
        if image.shape[:2] != mask.shape:
            img_path, mask_path = self.samples[index]
            raise DatasetError(
                f"image {img_path} is {image.shape[1]}x{image.shape[0]} (WxH) but mask "
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}; they must have the same size"
            )
        return image, mask

    def get(self, index: int, rng: np.random.Generator) -> tuple[Any, Any]:
        """Sample ``index`` with the transform applied using the explicit generator ``rng``."""
        image, mask = self.load(index)
        if self.transform is None:
            return image, mask
        return self.transform(image, mask, rng)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.get(index, sample_rng(index))

    def verify(self, max_errors: int = 20) -> int:
        """Load every sample and check it; raise one ``DatasetError`` listing all problems.

        Returns the number of samples checked.
        """
        return load_all(self.name, len(self), self.load, "samples", max_errors)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(samples={len(self)}, num_classes={self.num_classes})"


def load_all(
    name: str, count: int, load: Callable[[int], Any], what: str, max_errors: int = 20
) -> int:
    """Call ``load(i)`` for every index; raise one ``DatasetError`` listing every problem.

    Returns ``count``; ``what`` names the items in the message ("samples", "volumes").
    """
    problems: list[str] = []
    for i in range(count):
        try:
            load(i)
        except DatasetError as err:
            problems.append(str(err))
    if problems:
        shown = "\n  - ".join(problems[:max_errors])
        more = (
            f"\n  ... and {len(problems) - max_errors} more" if len(problems) > max_errors else ""
        )
        raise DatasetError(
            f"{name}: {len(problems)} of {count} {what} are unusable:\n  - {shown}{more}"
        )
    return count


def list_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files directly in ``folder`` whose suffix (lower-cased) is in ``suffixes``, sorted.

    Hidden files (names starting with ``.``, such as the ``._name.png`` companions that macOS
    writes on shared drives) are left out.
    """
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def check_split(name: str, split: str, splits: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the valid splits."""
    if split not in splits:
        raise ValueError(f"{name} has no split {split!r}; valid splits: {', '.join(splits)}")
