"""Data sets, joint transforms and the search split.

``build_dataset(name, root, split, transform)`` builds any registered data set::

    from autodeeplab.data import build_dataset, train_transform
    ds = build_dataset("synthetic", None, "train", train_transform(64), length=256, size=96)
    image, mask = ds[0]  # (3, 64, 64) float32, (64, 64) int64 with 255 = ignore
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autodeeplab.data import ade20k, cityscapes, synthetic, voc
from autodeeplab.data.ade20k import ADE20K
from autodeeplab.data.base import (
    IGNORE_INDEX,
    DatasetError,
    DatasetLayoutError,
    JointTransform,
    SegmentationDataset,
)
from autodeeplab.data.cityscapes import Cityscapes, label_to_train_ids, train_to_label_ids
from autodeeplab.data.folder import FolderDataset, metadata_file, read_metadata, write_metadata
from autodeeplab.data.split import search_split, split_indices
from autodeeplab.data.synthetic import SyntheticSegmentation, write_synthetic_folder
from autodeeplab.data.transforms import eval_transform, train_transform
from autodeeplab.data.voc import VOCSegmentation

DATASETS: dict[str, type[SegmentationDataset]] = {
    "cityscapes": Cityscapes,
    "voc": VOCSegmentation,
    "ade20k": ADE20K,
    "folder": FolderDataset,
    "synthetic": SyntheticSegmentation,
}
"""Registry of data set names accepted by :func:`build_dataset`."""


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str = "train",
    transform: JointTransform | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """Build the data set registered as ``name`` (``root`` is ``None`` for ``synthetic``).

    Extra keyword arguments go to the data set class (e.g. ``length``, ``size``, ``seed`` for
    ``synthetic``, ``metadata`` for ``folder``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    cls = DATASETS[name]
    if name != "synthetic" and root is None:
        raise ValueError(f"data set {name!r} needs a root folder")
    return cls(root, split, transform, **kwargs)  # type: ignore[call-arg]


_FIXED_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cityscapes": cityscapes.CLASS_NAMES,
    "voc": voc.CLASS_NAMES,
    "ade20k": ade20k.CLASS_NAMES,
    "synthetic": synthetic.CLASS_NAMES,
}


def dataset_class_names(
    name: str, root: str | Path | None = None, options: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """Class names of data set ``name`` without reading its images (a ``folder`` data set
    reads its class metadata file under ``root``, or ``options["metadata"]``)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if name in _FIXED_CLASS_NAMES:
        return _FIXED_CLASS_NAMES[name]
    if root is None:
        raise ValueError(f"data set {name!r} needs a root folder to know its classes")
    names, _ = read_metadata(metadata_file(root, (options or {}).get("metadata")))
    return names


__all__ = [
    "ADE20K",
    "DATASETS",
    "IGNORE_INDEX",
    "Cityscapes",
    "DatasetError",
    "DatasetLayoutError",
    "FolderDataset",
    "JointTransform",
    "SegmentationDataset",
    "SyntheticSegmentation",
    "VOCSegmentation",
    "build_dataset",
    "dataset_class_names",
    "eval_transform",
    "label_to_train_ids",
    "search_split",
    "split_indices",
    "train_to_label_ids",
    "train_transform",
    "write_metadata",
    "write_synthetic_folder",
]
