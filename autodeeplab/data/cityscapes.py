"""Cityscapes (fine annotations): 34 label ids mapped to the 19 evaluated train ids.

The label table is the one of the official ``cityscapesScripts`` (``helpers/labels.py``):
every label id whose train id is 255 (or -1, the license plate) is ignored in training and
evaluation. ``TRAIN_TO_LABEL_ID`` maps predictions back to label ids, which is what the
benchmark server expects in submitted PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from autodeeplab.data.base import (
    IGNORE_INDEX,
    INVALID,
    JointTransform,
    SegmentationDataset,
    check_split,
    layout_error,
)


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, (0, 0, 142)),
)
"""The official label table (name, label id, train id, colour)."""

_TRAIN_LABELS = sorted(
    (lab for lab in LABELS if 0 <= lab.train_id < IGNORE_INDEX), key=lambda x: x.train_id
)
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)
PALETTE = np.array([lab.color for lab in _TRAIN_LABELS], dtype=np.uint8)  # (19, 3)


def _label_lut() -> np.ndarray:
    lut = np.full(256, INVALID, dtype=np.int16)
    for lab in LABELS:
        if lab.id >= 0:  # the license plate (-1) never appears in labelIds PNGs
            lut[lab.id] = lab.train_id if 0 <= lab.train_id < IGNORE_INDEX else IGNORE_INDEX
    return lut


LABEL_TO_TRAIN_ID: np.ndarray = _label_lut()
"""``(256,)`` int16: label id -> train id (255 = ignored, -1 = not a Cityscapes label id)."""

TRAIN_TO_LABEL_ID: np.ndarray = np.zeros(256, dtype=np.uint8)
TRAIN_TO_LABEL_ID[: len(_TRAIN_LABELS)] = [lab.id for lab in _TRAIN_LABELS]
"""``(256,)`` uint8: train id -> label id; 255 and unused entries map to 0 (``unlabeled``)."""


def label_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map an array of label ids (``-1``, ``0..33``) to train ids; ``-1`` -> 255."""
    ids = np.asarray(label_ids)
    if ids.size and (ids.min() < -1 or ids.max() > 33):
        raise ValueError(f"Cityscapes label ids are -1..33, got values in {ids.min()}..{ids.max()}")
    out = LABEL_TO_TRAIN_ID[np.where(ids < 0, 0, ids)].astype(np.uint8)
    out[ids < 0] = IGNORE_INDEX
    return out


def train_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map train ids (``0..18``, 255) to label ids, for benchmark-server submissions."""
    ids = np.asarray(train_ids)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"train ids must be 0..18 or 255, got values in {ids.min()}..{ids.max()}")
    return TRAIN_TO_LABEL_ID[ids.astype(np.int64)]


LAYOUT = """\
<root>/
  leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  (split: train, val or test)"""

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations; masks are ``*_gtFine_labelIds.png`` translated to train ids."""

    name = "cityscapes"
    splits = ("train", "val", "test")

    def __init__(
        self, root: str | Path, split: str = "train", transform: JointTransform | None = None
    ) -> None:
        check_split(self.name, split, self.splits)
        self.root = root = Path(root)
        image_dir, mask_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise layout_error(self.name, root, f"missing folder {folder}", LAYOUT)
        images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise layout_error(
                self.name, root, f"no *{IMAGE_SUFFIX} files in {image_dir}/<city>/", LAYOUT
            )
        samples = []
        for img in images:
            city = img.parent.name
            mask = mask_dir / city / (img.name[: -len(IMAGE_SUFFIX)] + MASK_SUFFIX)
            if not mask.is_file():
                raise layout_error(self.name, root, f"image {img} has no mask {mask}", LAYOUT)
            samples.append((img, mask))
        super().__init__(samples, CLASS_NAMES, PALETTE, LABEL_TO_TRAIN_ID, transform)
