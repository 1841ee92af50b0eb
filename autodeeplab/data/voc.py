"""PASCAL VOC 2012 segmentation (21 classes), optionally with the SBD-augmented train list."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autodeeplab.data.base import (
    JointTransform,
    SegmentationDataset,
    check_split,
    default_palette,
    identity_lut,
    layout_error,
)

CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC colour map ``(n, 3)`` uint8 stored in ``SegmentationClass`` palette PNGs."""
    return default_palette(n)


PALETTE = voc_colormap(len(CLASS_NAMES))  # (21, 3)

LAYOUT = """\
<root>/                                  (VOCdevkit/VOC2012, or a parent of it)
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png             (palette PNG: 0..20 classes, 255 = ignore border)
  ImageSets/Segmentation/{train,val,trainval}.txt
  SegmentationClassAug/<id>.png          (optional, SBD-augmented masks for split train_aug)
  ImageSets/Segmentation/train_aug.txt   (optional, list for split train_aug)"""


def read_id_list(list_file: Path) -> list[str]:
    """Image ids from a list file: one ``<id>`` per line, or ``/JPEGImages/<id>.jpg <mask>``."""
    ids = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if line:
            ids.append(Path(line.split()[0]).stem)
    return ids


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012; split ``train_aug`` reads the SBD-augmented masks (10,582 images)."""

    name = "voc"
    splits = ("train", "val", "trainval", "train_aug")

    def __init__(
        self, root: str | Path, split: str = "train", transform: JointTransform | None = None
    ) -> None:
        check_split(self.name, split, self.splits)
        root = Path(root)
        for sub in ("VOC2012", "VOCdevkit/VOC2012"):  # accept the parent folders too
            if (root / sub / "JPEGImages").is_dir():
                root = root / sub
                break
        self.root = root
        mask_dir = root / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        for path in (root / "JPEGImages", mask_dir):
            if not path.is_dir():
                raise layout_error(self.name, root, f"missing folder {path}", LAYOUT)
        if not list_file.is_file():
            raise layout_error(self.name, root, f"missing list file {list_file}", LAYOUT)
        ids = read_id_list(list_file)
        if not ids:
            raise layout_error(self.name, root, f"list file {list_file} names no images", LAYOUT)
        samples = []
        for stem in ids:
            img, mask = root / "JPEGImages" / f"{stem}.jpg", mask_dir / f"{stem}.png"
            for path in (img, mask):
                if not path.is_file():
                    raise layout_error(
                        self.name,
                        root,
                        f"{list_file} lists {stem!r} but {path} does not exist",
                        LAYOUT,
                    )
            samples.append((img, mask))
        super().__init__(samples, CLASS_NAMES, PALETTE, identity_lut(len(CLASS_NAMES)), transform)
