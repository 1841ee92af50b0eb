"""A generic folder data set: your own images and masks with matching file stems."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from autodeeplab.data.base import (
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    INVALID,
    LABEL_SUFFIXES,
    DatasetError,
    JointTransform,
    SegmentationDataset,
    default_palette,
    layout_error,
    list_files,
)

META_FILES = ("classes.yaml", "classes.yml", "classes.json")
META_KEYS = ("class_names", "palette", "mask_values", "ignore_values")

LAYOUT = """\
<root>/
  classes.yaml            (or classes.json: class_names: [...], optional palette: [[r, g, b], ...],
                           mask_values: [...], ignore_values: [...])
  images/{split}/<stem>.png|.jpg|.jpeg|.bmp|.tif|.tiff|.webp
  masks/{split}/<stem>.png|.tif|.tiff|.bmp  (1/8/16-bit grayscale or palette: 0..num_classes-1, 255 = ignore)"""


class ClassMetadata(NamedTuple):
    """What the class metadata file of a folder data set defines."""

    class_names: tuple[str, ...]
    palette: np.ndarray
    """``(C, 3)`` uint8 colours, one per class."""
    lut: np.ndarray
    """256-entry table from raw mask value to train id (``INVALID`` for undefined values)."""


def write_metadata(
    path: str | Path,
    class_names: Sequence[str],
    palette: np.ndarray | None = None,
    *,
    mask_values: Sequence[int] | None = None,
    ignore_values: Sequence[int] | None = None,
) -> None:
    """Write ``classes.yaml`` / ``classes.json`` (chosen by suffix) for a folder data set;
    ``mask_values`` and ``ignore_values`` as :func:`read_metadata` reads them."""
    path = Path(path)
    meta: dict[str, Any] = {"class_names": list(class_names)}
    if palette is not None:
        meta["palette"] = np.asarray(palette, dtype=np.uint8).tolist()
    if mask_values is not None:
        meta["mask_values"] = [int(v) for v in mask_values]
    if ignore_values is not None:
        meta["ignore_values"] = [int(v) for v in ignore_values]
    if path.suffix == ".json":
        path.write_text(json.dumps(meta, indent=2) + "\n")
    else:
        path.write_text(yaml.safe_dump(meta, sort_keys=False))


def read_metadata(path: Path) -> ClassMetadata:
    """Class names, palette and mask value table from a metadata file; every problem names
    the file.

    ``mask_values`` (optional) gives the raw mask value of each class, in class order (binary
    masks stored as 0 and 255: ``[0, 255]``); without it class ``i`` is stored as ``i``.
    ``ignore_values`` (optional) lists raw values whose pixels are ignored; without it 255 is
    ignored unless it is a class's value.
    """
    try:
        text = path.read_text()
        meta = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise DatasetError(f"cannot parse class metadata {path}: {err}") from err
    if not isinstance(meta, dict) or "class_names" not in meta:
        raise DatasetError(f"class metadata {path} must be a mapping with a 'class_names' list")
    unknown = sorted(set(meta) - set(META_KEYS), key=str)  # YAML keys may be numbers
    if unknown:
        raise DatasetError(
            f"class metadata {path} has unknown keys {unknown}; valid keys: {list(META_KEYS)}"
        )
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(
            f"class metadata {path}: 'class_names' must be a non-empty list of strings"
        )
    if len(names) >= IGNORE_INDEX:
        raise DatasetError(
            f"class metadata {path}: at most {IGNORE_INDEX - 1} classes, got {len(names)}"
        )
    if len(set(names)) != len(names):
        raise DatasetError(f"class metadata {path}: class names must be unique")
    palette = (
        default_palette(len(names))
        if meta.get("palette") is None
        else _parse_palette(meta["palette"], len(names), path)
    )
    return ClassMetadata(tuple(names), palette, _label_table(meta, len(names), path))


def _raw_values(meta: dict, key: str, path: Path, count: int | None) -> list[int] | None:
    """The list of distinct 8-bit values under ``key`` (``count`` of them if given)."""
    value = meta.get(key)
    if value is None:
        return None
    size = "" if count is None else f"{count} "
    expected = f"'{key}' must be a list of {size}distinct integers in 0..255"
    if (
        not isinstance(value, list)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not all(0 <= v <= 255 for v in value)
        or len(set(value)) != len(value)
        or (count is not None and len(value) != count)
    ):
        raise DatasetError(f"class metadata {path}: {expected}, got {value!r}")
    return value


def _label_table(meta: dict, num_classes: int, path: Path) -> np.ndarray:
    """Raw mask value -> train id, from ``mask_values`` and ``ignore_values``."""
    values = _raw_values(meta, "mask_values", path, num_classes)
    ignored = _raw_values(meta, "ignore_values", path, None)
    if values is None:
        values = list(range(num_classes))
    if ignored is None:
        ignored = [] if IGNORE_INDEX in values else [IGNORE_INDEX]
    both = sorted(set(values) & set(ignored))
    if both:
        raise DatasetError(
            f"class metadata {path}: values {both} are both a class's mask value and ignored"
        )
    lut = np.full(256, INVALID, dtype=np.int16)
    lut[values] = np.arange(num_classes)
    lut[ignored] = IGNORE_INDEX
    return lut


def _parse_palette(value: Any, num_classes: int, path: Path) -> np.ndarray:
    """``(C, 3)`` uint8 from a list of ``[r, g, b]`` integer triples."""
    expected = f"'palette' must be {num_classes} [r, g, b] triples"
    if (
        not isinstance(value, list)
        or len(value) != num_classes
        or not all(isinstance(rgb, list) and len(rgb) == 3 for rgb in value)
    ):
        raise DatasetError(f"class metadata {path}: {expected}, one per class, got {value!r}")
    flat = [v for rgb in value for v in rgb]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        raise DatasetError(f"class metadata {path}: {expected} of integers, got {value!r}")
    if not all(0 <= v <= 255 for v in flat):
        raise DatasetError(f"class metadata {path}: {expected} in 0..255, got {value!r}")
    return np.asarray(value, dtype=np.uint8)


def metadata_file(root: str | Path, metadata: str | Path | None = None) -> Path:
    """The class metadata file of the folder data set at ``root`` (``metadata`` if given)."""
    root = Path(root)
    if not root.is_dir():
        raise layout_error(FolderDataset.name, root, "root folder does not exist", LAYOUT)
    meta = (
        Path(metadata)
        if metadata is not None
        else next((root / m for m in META_FILES if (root / m).is_file()), None)
    )
    if meta is None or not meta.is_file():
        missing = meta if meta is not None else root / META_FILES[0]
        raise layout_error(FolderDataset.name, root, f"missing class metadata {missing}", LAYOUT)
    return meta


class FolderDataset(SegmentationDataset):
    """Images in ``images/{split}/`` and train-id masks in ``masks/{split}/`` with the same stems."""

    name = "folder"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: JointTransform | None = None,
        metadata: str | Path | None = None,
    ) -> None:
        self.root = root = Path(root)
        if not root.is_dir():
            raise layout_error(self.name, root, "root folder does not exist", LAYOUT)
        classes = read_metadata(metadata_file(root, metadata))
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        for path in (image_dir, mask_dir):
            if not path.is_dir():
                raise layout_error(self.name, root, f"missing folder {path}", LAYOUT)
        images = list_files(image_dir, IMAGE_SUFFIXES)
        if not images:
            raise layout_error(
                self.name,
                root,
                f"split {split!r} is empty: no {'/'.join(IMAGE_SUFFIXES)} files in {image_dir}",
                LAYOUT,
            )
        stems = [p.stem for p in images]
        if len(set(stems)) != len(stems):
            dup = sorted({s for s in stems if stems.count(s) > 1})
            raise DatasetError(f"{image_dir} holds several images with the same stem: {dup[:5]}")
        masks = _masks_by_stem(mask_dir)
        samples = []
        for img in images:
            if img.stem not in masks:
                lossy = [
                    p
                    for p in list_files(mask_dir, IMAGE_SUFFIXES)
                    if p.stem == img.stem and p.suffix.lower() not in LABEL_SUFFIXES
                ]
                if lossy:
                    raise DatasetError(
                        f"mask {lossy[0]} of image {img} is stored as {lossy[0].suffix}; masks "
                        f"must be lossless ({'/'.join(LABEL_SUFFIXES)}): lossy compression "
                        "changes the class ids at the borders of every region"
                    )
                missing = mask_dir / f"{img.stem}.png"
                raise layout_error(self.name, root, f"image {img} has no mask {missing}", LAYOUT)
            samples.append((img, masks[img.stem]))
        super().__init__(samples, classes.class_names, classes.palette, classes.lut, transform)


def _masks_by_stem(mask_dir: Path) -> dict[str, Path]:
    """The mask files of ``mask_dir`` by stem; two masks for one stem are refused."""
    masks: dict[str, Path] = {}
    for path in list_files(mask_dir, LABEL_SUFFIXES):
        if path.stem in masks:
            raise DatasetError(
                f"{mask_dir} holds two masks for {path.stem!r}: {masks[path.stem].name} and "
                f"{path.name}; keep one"
            )
        masks[path.stem] = path
    return masks
