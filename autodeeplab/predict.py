"""Segment image files with a saved model and write the results as PNGs.

For each input ``<stem>.<ext>`` three files go to the output folder:

- ``<stem>_labels.png``: 8-bit grayscale train ids (or Cityscapes label ids with
  ``cityscapes_ids=True``, the format of the Cityscapes benchmark server);
- ``<stem>_color.png``: the classes in the model's palette colours;
- ``<stem>_overlay.png``: the image blended with the colours (alpha 0.5).

Any image size works: images smaller than the network's minimum are zero-padded (the mean
colour after normalisation) and the prediction cropped back (see :mod:`autodeeplab.inference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from autodeeplab.data.base import read_image
from autodeeplab.data.cityscapes import train_to_label_ids
from autodeeplab.inference import SlidingWindow, predict_logits
from autodeeplab.saved_model import LoadedModel

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class PredictionFiles:
    """The three files written for one input image."""

    image: Path
    labels: Path
    color: Path
    overlay: Path


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files among ``inputs`` (files, or folders whose image files are taken, sorted)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(
                p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"input {item} is neither an image file nor a folder")
    if not found:
        raise ValueError(
            f"no images found in {', '.join(map(str, inputs))} "
            f"(image suffixes: {', '.join(IMAGE_SUFFIXES)})"
        )
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems:
            raise ValueError(
                f"{stems[path.stem]} and {path} have the same name stem {path.stem!r}; their "
                "outputs would overwrite each other, so predict them into different folders"
            )
        stems[path.stem] = path
    return found


def normalise(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], device: str | torch.device
) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> normalised ``(1, 3, H, W)`` float32 on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(device)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    return ((x.float() / 255.0 - m) / s)[None]


def segment(
    model: nn.Module,
    image: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    sliding_window: SlidingWindow | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Train ids ``(H, W)`` uint8 for an ``(H, W, 3)`` uint8 RGB image."""
    x = normalise(image, mean, std, device)  # (1, 3, H, W)
    logits = predict_logits(model, x, scales=scales, flip=flip, sliding_window=sliding_window)
    return logits[0].argmax(dim=0).to(torch.uint8).cpu().numpy()


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``(H, W)`` class ids -> ``(H, W, 3)`` uint8 colours from ``palette`` ``(C, 3)``."""
    return np.asarray(palette, dtype=np.uint8)[labels]


def blend(image: np.ndarray, color: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``(1 - alpha) * image + alpha * color``, rounded to uint8."""
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def predict_images(
    loaded: LoadedModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    cityscapes_ids: bool = False,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    sliding_window: SlidingWindow | None = None,
    device: str | torch.device = "cpu",
) -> list[PredictionFiles]:
    """Segment every image in ``inputs`` (files or folders) and write the three PNGs of each
    into ``out_dir``. Corrupt images raise an error naming the file."""
    cfg = loaded.config
    if cityscapes_ids and cfg.num_classes != 19:
        raise ValueError(
            f"Cityscapes label ids need a 19-class Cityscapes model; this one has "
            f"{cfg.num_classes} classes ({cfg.dataset or 'unknown data set'})"
        )
    images = collect_images(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    palette = cfg.palette_array()
    written = []
    for path in images:
        image = read_image(path)  # (H, W, 3) uint8; raises naming the file if unreadable
        labels = segment(
            loaded.model,
            image,
            cfg.mean,
            cfg.std,
            scales=scales,
            flip=flip,
            sliding_window=sliding_window,
            device=device,
        )  # (H, W) uint8 train ids
        color = colorize(labels, palette)
        ids = train_to_label_ids(labels) if cityscapes_ids else labels
        files = PredictionFiles(
            path,
            out / f"{path.stem}_labels.png",
            out / f"{path.stem}_color.png",
            out / f"{path.stem}_overlay.png",
        )
        Image.fromarray(ids.astype(np.uint8)).save(files.labels)  # 2-D uint8: mode L
        Image.fromarray(color).save(files.color)
        Image.fromarray(blend(image, color)).save(files.overlay)
        written.append(files)
    return written
