"""Segment image files with a saved model and write the results as PNGs.

For each input ``<stem>.<ext>`` three files go to the output folder (images found inside an
input folder keep their sub-folder there: ``in/berlin/a.png`` -> ``out/berlin/a_*.png``):

- ``<stem>_labels.png``: 8-bit grayscale train ids (or Cityscapes label ids with
  ``cityscapes_ids=True``, the format of the Cityscapes benchmark server);
- ``<stem>_color.png``: the classes in the model's palette colours;
- ``<stem>_overlay.png``: the image blended with the colours (alpha 0.5).

Any image size works: images smaller than the network's minimum are zero-padded (the mean
colour after normalisation) and the prediction cropped back, and images larger than
``tile_above`` pixels run in tiles (see :mod:`autodeeplab.inference`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from autodeeplab.data.base import IMAGE_SUFFIXES, read_image
from autodeeplab.data.cityscapes import train_to_label_ids
from autodeeplab.inference import DEFAULT_TILE_ABOVE, SlidingWindow, predict_logits
from autodeeplab.saved_model import LoadedModel

OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class PredictionFiles:
    """The three files written for one input image."""

    image: Path
    labels: Path
    color: Path
    overlay: Path


@dataclass(frozen=True)
class InputImage:
    """An image to segment and where its outputs go: ``<out>/<stem>_labels.png`` etc."""

    path: Path
    stem: Path
    """Output name without suffix, relative to the output folder (``berlin/berlin_0001``)."""


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _walk_images(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files under ``folder`` at any depth, sorted; hidden files and folders and the
    folder ``exclude`` (the output, which may lie inside) are skipped; links to folders are
    not followed."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and (exclude is None or (here / d).resolve() != exclude)
        )
        found += sorted(here / f for f in files if _is_image(here / f))
    return found


def collect_images(
    inputs: Sequence[str | Path], exclude: str | Path | None = None
) -> list[InputImage]:
    """The images among ``inputs``: files, and the image files of folders at any depth, whose
    output names keep their path below the folder. ``exclude`` is a folder to leave out (the
    output folder). Two images that would write the same outputs are refused."""
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[InputImage] = []
    for item in map(Path, inputs):
        if item.is_dir() and skip is not None and item.resolve() == skip:
            raise ValueError(f"input folder {item} is the output folder; write elsewhere")
        if item.is_dir():
            found += [
                InputImage(p, p.relative_to(item).with_suffix("")) for p in _walk_images(item, skip)
            ]
        elif item.is_file():
            found.append(InputImage(item, Path(item.stem)))
        else:
            raise FileNotFoundError(f"input {item} is neither an image file nor a folder")
    if not found:
        raise ValueError(
            f"no images found in {', '.join(map(str, inputs))} "
            f"(image suffixes: {', '.join(IMAGE_SUFFIXES)}, searched in sub-folders too)"
        )
    owners: dict[Path, Path] = {}
    for image in found:
        if image.stem in owners:
            raise ValueError(
                f"{owners[image.stem]} and {image.path} would both write {image.stem}_*.png; "
                "rename one of them or predict them separately"
            )
        owners[image.stem] = image.path
    return found


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG; on failure (a full disk) remove the partial file and name it."""
    try:
        Image.fromarray(array).save(path)
    except OSError as err:
        path.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


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
    tile_above: int | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Train ids ``(H, W)`` uint8 for an ``(H, W, 3)`` uint8 RGB image."""
    x = normalise(image, mean, std, device)  # (1, 3, H, W)
    logits = predict_logits(
        model, x, scales=scales, flip=flip, sliding_window=sliding_window, tile_above=tile_above
    )
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
    tile_above: int | None = DEFAULT_TILE_ABOVE,
    device: str | torch.device = "cpu",
) -> list[PredictionFiles]:
    """Segment every image in ``inputs`` (files, or folders searched at any depth) and write
    the three PNGs of each into ``out_dir``, in the sub-folders the images were found in.
    Images above ``tile_above`` pixels run in tiles. Corrupt images raise an error naming the
    file."""
    cfg = loaded.config
    if cityscapes_ids and cfg.num_classes != 19:
        raise ValueError(
            f"Cityscapes label ids need a 19-class Cityscapes model; this one has "
            f"{cfg.num_classes} classes ({cfg.dataset or 'unknown data set'})"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"output folder {out} is an existing file; give a folder (made if missing)"
        )
    images = collect_images(inputs, exclude=out)
    palette = cfg.palette_array()
    written = []
    for item in images:
        image = read_image(item.path)  # (H, W, 3) uint8; raises naming the file if unreadable
        labels = segment(
            loaded.model,
            image,
            cfg.mean,
            cfg.std,
            scales=scales,
            flip=flip,
            sliding_window=sliding_window,
            tile_above=tile_above,
            device=device,
        )  # (H, W) uint8 train ids
        color = colorize(labels, palette)
        ids = train_to_label_ids(labels) if cityscapes_ids else labels
        base = out / item.stem
        files = PredictionFiles(
            item.path,
            base.with_name(f"{base.name}_labels.png"),
            base.with_name(f"{base.name}_color.png"),
            base.with_name(f"{base.name}_overlay.png"),
        )
        base.parent.mkdir(parents=True, exist_ok=True)
        _save_png(ids.astype(np.uint8), files.labels)  # 2-D uint8: mode L
        _save_png(color, files.color)
        _save_png(blend(image, color), files.overlay)
        written.append(files)
    return written
