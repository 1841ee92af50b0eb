"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, label 0 ("other") is ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autodeeplab.data.base import (
    IGNORE_INDEX,
    INVALID,
    JointTransform,
    SegmentationDataset,
    check_split,
    default_palette,
    layout_error,
    list_files,
)

CLASS_NAMES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
"""The 150 classes of ``objectInfo150`` in train-id order (file value - 1)."""

# The VOC bit-interleaving colours, skipping black so that no class looks like "ignore".
PALETTE = default_palette(len(CLASS_NAMES) + 1)[1:]  # (150, 3)

LUT = np.full(256, INVALID, dtype=np.int16)
LUT[0] = IGNORE_INDEX
LUT[1 : len(CLASS_NAMES) + 1] = np.arange(len(CLASS_NAMES))

LAYOUT = """\
<root>/ADEChallengeData2016/             (or <root> is that folder itself)
  images/{training,validation}/ADE_<split>_<n>.jpg
  annotations/{training,validation}/ADE_<split>_<n>.png   (0 = other/ignore, 1..150 classes)
  (split: train -> training, val -> validation)"""

SPLIT_FOLDERS = {
    "train": "training",
    "val": "validation",
    "training": "training",
    "validation": "validation",
}


class ADE20K(SegmentationDataset):
    """ADE20K SceneParsing; mask value 0 becomes 255 (ignore), values 1..150 become 0..149."""

    name = "ade20k"
    splits = tuple(SPLIT_FOLDERS)

    def __init__(
        self, root: str | Path, split: str = "train", transform: JointTransform | None = None
    ) -> None:
        check_split(self.name, split, self.splits)
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        self.root = root
        folder = SPLIT_FOLDERS[split]
        image_dir, mask_dir = root / "images" / folder, root / "annotations" / folder
        for path in (image_dir, mask_dir):
            if not path.is_dir():
                raise layout_error(self.name, root, f"missing folder {path}", LAYOUT)
        images = list_files(image_dir, (".jpg", ".jpeg", ".png"))
        if not images:
            raise layout_error(self.name, root, f"no images in {image_dir}", LAYOUT)
        samples = []
        for img in images:
            mask = mask_dir / f"{img.stem}.png"
            if not mask.is_file():
                raise layout_error(self.name, root, f"image {img} has no mask {mask}", LAYOUT)
            samples.append((img, mask))
        super().__init__(samples, CLASS_NAMES, PALETTE, LUT, transform)
