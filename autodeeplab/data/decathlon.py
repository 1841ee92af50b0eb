"""Medical Segmentation Decathlon tasks (``dataset.json`` + NIfTI volumes).

The Decathlon publishes labels for its ``training`` list only, so ``train`` and ``val`` are a
seeded split of it (``val_fraction``); ``test`` is the unlabelled ``test`` list, for prediction.
Intensities are normalised per modality (see :meth:`Decathlon.normalize`):

- ``CT``: clipped to a window and scaled to ``[0, 1]``. The window is ``ct_window`` when given,
  otherwise the 0.5 and 99.5 percentiles of the foreground (label > 0) intensities of the
  ``train`` volumes, the same for every split (so ``val`` and ``test`` use the window of
  ``train``). It is estimated when the data set is built (one pass over the ``train``
  volumes) and kept in :attr:`Decathlon.ct_window`.
- any other modality (MR: ``FLAIR``, ``T1w``, ``T2``, ``ADC`` ...): z-score over the nonzero
  voxels of each volume and channel; zero voxels stay 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from autodeeplab.data.base import (
    IGNORE_INDEX,
    DatasetError,
    check_split,
    default_palette,
    layout_error,
)
from autodeeplab.data.split import split_indices
from autodeeplab.data.volume import (
    Volume,
    VolumeDataset,
    VolumeTransform,
    case_name,
    ct_window_from,
    foreground_sample,
    is_ct,
    normalize_ct,
    normalize_nonzero,
    read_nifti,
    require,
    spacing_of,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
DATASET_JSON = "dataset.json"

LAYOUT = """\
<root>/
  dataset.json
    {"name": "Task09_Spleen",
     "modality": {"0": "CT"},                       (or {"0": "FLAIR", "1": "T1w", ...})
     "labels": {"0": "background", "1": "spleen"},  (keys 0..K-1)
     "training": [{"image": "./imagesTr/<case>.nii.gz", "label": "./labelsTr/<case>.nii.gz"}, ...],
     "test": ["./imagesTs/<case>.nii.gz", ...]}     (optional)
  imagesTr/<case>.nii.gz   (X, Y, Z) for one modality, (X, Y, Z, C) for C modalities
  labelsTr/<case>.nii.gz   (X, Y, Z) integer class ids, the keys of "labels"
  imagesTs/<case>.nii.gz   images without labels"""


def _numbered(value: Any, key: str, path: Path, what: str) -> tuple[str, ...]:
    """Values of a ``{"0": ..., "1": ...}`` mapping of strings in key order; keys 0..n-1."""
    if not isinstance(value, dict) or not value:
        raise DatasetError(
            f'{path}: {key!r} must be a non-empty mapping {{"0": {what}, ...}}, got {value!r}'
        )
    try:
        indexed = {int(k): v for k, v in value.items()}
    except (TypeError, ValueError) as err:
        raise DatasetError(
            f'{path}: the keys of {key!r} must be integers "0", "1", ..., got {list(value)}'
        ) from err
    if sorted(indexed) != list(range(len(indexed))):
        raise DatasetError(
            f"{path}: the keys of {key!r} must be 0..{len(indexed) - 1} without gaps, got "
            f"{sorted(indexed)}"
        )
    if not all(isinstance(v, str) and v for v in indexed.values()):
        raise DatasetError(f"{path}: the values of {key!r} must be non-empty strings ({what})")
    return tuple(indexed[i] for i in range(len(indexed)))


def read_dataset_json(root: Path) -> dict[str, Any]:
    """Parse and check ``<root>/dataset.json``; every problem names the file and the key."""
    path = root / DATASET_JSON
    if not root.is_dir():
        raise layout_error("decathlon", root, "the folder does not exist", LAYOUT)
    if not path.is_file():
        raise layout_error("decathlon", root, f"missing {path}", LAYOUT)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"cannot parse {path}: {err}") from err
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in ("modality", "labels", "training") if k not in meta]
    if missing:
        raise layout_error(
            "decathlon", root, f"{path} has no key(s) {', '.join(map(repr, missing))}", LAYOUT
        )
    return meta


def _entry_path(root: Path, value: Any, where: str, json_path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{json_path}: {where} must be a relative file path, got {value!r}")
    return (root / value).resolve() if not Path(value).is_absolute() else Path(value)


class Decathlon(VolumeDataset):
    """A Decathlon task folder; items are ``(image (C, D, H, W) float32, label (D, H, W) int64)``
    (the image alone for ``test``)."""

    name = "decathlon"
    splits = SPLITS

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: VolumeTransform | None = None,
        *,
        val_fraction: float = 0.2,
        seed: int = 0,
        ct_window: tuple[float, float] | None = None,
    ) -> None:
        check_split(self.name, split, self.splits)
        require("nibabel")  # fail at construction, not at the first sample
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if ct_window is not None:
            if len(ct_window) != 2:
                raise ValueError(f"ct_window must be (lo, hi), got {ct_window}")
            ct_window = (float(ct_window[0]), float(ct_window[1]))
            if not ct_window[1] > ct_window[0]:
                raise ValueError(f"ct_window must be (lo, hi) with lo < hi, got {ct_window}")
        self.root = Path(root)
        meta = read_dataset_json(self.root)
        json_path = self.root / DATASET_JSON
        self.task = str(meta.get("name", self.root.name))
        self.modalities = _numbered(meta["modality"], "modality", json_path, "modality name")
        class_names = _numbered(meta["labels"], "labels", json_path, "class name")
        if len(class_names) >= IGNORE_INDEX:
            raise DatasetError(
                f"{json_path}: at most {IGNORE_INDEX - 1} labels, got {len(class_names)}"
            )
        self.training = self._training_entries(meta["training"], json_path)
        self.split, self.val_fraction, self.seed = split, val_fraction, seed
        self.train_indices, self.val_indices = self._split(len(self.training))
        if split == "test":
            cases = self._test_entries(meta.get("test"), json_path)
        else:
            chosen = self.train_indices if split == "train" else self.val_indices
            if not chosen:
                raise ValueError(
                    f"decathlon split 'val' is empty with val_fraction={val_fraction}; use a "
                    "val_fraction in (0, 1)"
                )
            cases = [self.training[i] for i in chosen]
        self.cases: tuple[tuple[Path, Path | None], ...] = tuple(cases)
        super().__init__(
            class_names, default_palette(len(class_names)), transform, labelled=split != "test"
        )
        # Estimated once here rather than on first use: DataLoader workers get copies of the
        # data set, and each would otherwise read every training volume again.
        if ct_window is None and any(is_ct(m) for m in self.modalities):
            ct_window = self._estimate_ct_window()
        self.ct_window: tuple[float, float] | None = ct_window
        """The CT window in use; ``None`` without a CT modality."""

    # -- listing ----------------------------------------------------------------------------

    def _training_entries(self, value: Any, json_path: Path) -> list[tuple[Path, Path]]:
        if not isinstance(value, list) or not value:
            raise layout_error(
                "decathlon", self.root, f"{json_path}: 'training' must be a non-empty list", LAYOUT
            )
        entries = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or not {"image", "label"} <= set(item):
                raise DatasetError(
                    f'{json_path}: training[{i}] must be {{"image": "./imagesTr/<case>.nii.gz", '
                    f'"label": "./labelsTr/<case>.nii.gz"}}, got {item!r}'
                )
            image = _entry_path(self.root, item["image"], f"training[{i}].image", json_path)
            label = _entry_path(self.root, item["label"], f"training[{i}].label", json_path)
            for p, key in ((image, "image"), (label, "label")):
                if not p.is_file():
                    raise layout_error(
                        "decathlon",
                        self.root,
                        f"training[{i}].{key} of {json_path} is {item[key]!r}, but {p} does not exist",
                        LAYOUT,
                    )
            entries.append((image, label))
        return entries

    def _test_entries(self, value: Any, json_path: Path) -> list[tuple[Path, None]]:
        if not value:
            raise layout_error(
                "decathlon", self.root, f"{json_path} lists no 'test' images", LAYOUT
            )
        if not isinstance(value, list):
            raise DatasetError(f"{json_path}: 'test' must be a list of image paths")
        entries: list[tuple[Path, None]] = []
        for i, item in enumerate(value):
            raw = item.get("image") if isinstance(item, dict) else item  # both forms are in use
            image = _entry_path(self.root, raw, f"test[{i}]", json_path)
            if not image.is_file():
                raise layout_error(
                    "decathlon",
                    self.root,
                    f"test[{i}] of {json_path} is {raw!r}, but {image} does not exist",
                    LAYOUT,
                )
            entries.append((image, None))
        return entries

    def _split(self, n: int) -> tuple[list[int], list[int]]:
        """``(train, val)`` indices into ``training``: a pure function of ``(n, seed, val_fraction)``."""
        if self.val_fraction == 0.0 or (n == 1 and self.split == "test"):
            return list(range(n)), []  # one case: train on it (and take the CT window from it)
        if n < 2:
            raise DatasetError(
                f"{self.root / DATASET_JSON} lists {n} training case; a validation split needs "
                "at least 2 (or use val_fraction=0 to train on it)"
            )
        train, val = split_indices(n, self.seed, 1.0 - self.val_fraction)
        return train.tolist(), val.tolist()

    # -- loading ----------------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        return len(self.modalities)

    def __len__(self) -> int:
        return len(self.cases)

    def read_image(self, path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
        """Raw ``(C, D, H, W)`` intensities, affine and header; the modalities are counted."""
        image, affine, header = read_nifti(path)
        if image.ndim == 3:
            image = image[None]
        c = len(self.modalities)
        if image.shape[0] != c:
            expected = "(X, Y, Z)" if c == 1 else f"(X, Y, Z, {c})"
            found = image.shape[0] if image.ndim == 4 else 1
            raise DatasetError(
                f"image {path} has {found} {'modality' if found == 1 else 'modalities'} (file shape "
                f"{tuple(header.get_data_shape())}) but dataset.json lists {c} "
                f"({', '.join(self.modalities)}); expected shape {expected}"
            )
        return image, affine, header

    def read_label(self, path: Path, spatial: tuple[int, ...]) -> np.ndarray:
        """``(D, H, W)`` int64 class ids, checked against the image size and ``labels``."""
        label, _, header = read_nifti(path, integer=True)
        if label.shape != spatial:
            raise DatasetError(
                f"label {path} has shape {tuple(header.get_data_shape())} (X, Y, Z) but its "
                f"image has {tuple(reversed(spatial))}; they must have the same size"
            )
        k = self.num_classes
        if label.size and (label.min() < 0 or label.max() >= k):
            bad = np.unique(label[(label < 0) | (label >= k)]).tolist()
            shown = ", ".join(map(str, bad[:12])) + (", ..." if len(bad) > 12 else "")
            raise DatasetError(
                f"label {path} holds values [{shown}] that are not in 'labels' of dataset.json; "
                f"valid values are 0..{k - 1} ({', '.join(self.class_names)})"
            )
        return label

    def _estimate_ct_window(self) -> tuple[float, float]:
        rng = np.random.default_rng(self.seed)
        channels = [c for c, m in enumerate(self.modalities) if is_ct(m)]
        samples = []
        for i in self.train_indices:
            image_path, label_path = self.training[i]
            image, _, _ = self.read_image(image_path)
            label = self.read_label(label_path, image.shape[1:])
            samples += [foreground_sample(image[c], label, rng) for c in channels]
        return ct_window_from(samples)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Per-modality normalisation of a raw ``(C, D, H, W)`` image (module docstring)."""
        out = np.empty(image.shape, dtype=np.float32)
        for c, modality in enumerate(self.modalities):
            if is_ct(modality):
                assert self.ct_window is not None  # set in __init__ when a modality is CT
                out[c] = normalize_ct(image[c], self.ct_window)
            else:
                out[c] = normalize_nonzero(image[c])
        return out

    def load(self, index: int) -> Volume:
        index = self._check_index(index)
        image_path, label_path = self.cases[index]
        raw, affine, header = self.read_image(image_path)
        label = None if label_path is None else self.read_label(label_path, raw.shape[1:])
        return Volume(
            image=self.normalize(raw),
            label=label,
            spacing=spacing_of(header),
            affine=affine,
            name=case_name(image_path),
            header=header,
        )

    def __repr__(self) -> str:
        return (
            f"Decathlon(task={self.task!r}, split={self.split!r}, volumes={len(self)}, "
            f"modalities={list(self.modalities)}, num_classes={self.num_classes})"
        )


def decathlon_class_names(root: str | Path) -> tuple[str, ...]:
    """Class names of a Decathlon task from its ``dataset.json``, reading no volume."""
    root = Path(root)
    return _numbered(read_dataset_json(root)["labels"], "labels", root / DATASET_JSON, "class name")


def decathlon_modalities(root: str | Path) -> tuple[str, ...]:
    """Modality names of the task at ``root`` (from ``dataset.json``, without opening a volume)."""
    root = Path(root)
    meta = read_dataset_json(root)
    return _numbered(meta["modality"], "modality", root / DATASET_JSON, "modality name")
