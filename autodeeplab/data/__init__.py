"""Data sets, joint transforms and the search split.

``build_dataset(name, root, split, transform)`` builds any registered data set::

    from autodeeplab.data import build_dataset, train_transform
    ds = build_dataset("synthetic", None, "train", train_transform(64), length=256, size=96)
    image, mask = ds[0]  # (3, 64, 64) float32, (64, 64) int64 with 255 = ignore

Volume data sets (``decathlon``, ``synthetic3d``; see docs/volumes.md) are registered here too;
they need the ``3d`` extra (MONAI, nibabel) only when a volume is read::

    ds = build_dataset("decathlon", "/data/Task09_Spleen", "train", volume_train_transform(96))
    image, label = ds[0]  # (1, 96, 96, 96) float32, (96, 96, 96) int64
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autodeeplab.data import ade20k, cityscapes, synthetic, synthetic3d, voc
from autodeeplab.data.ade20k import ADE20K
from autodeeplab.data.base import (
    IGNORE_INDEX,
    DatasetError,
    DatasetLayoutError,
    JointTransform,
    SegmentationDataset,
)
from autodeeplab.data.cityscapes import Cityscapes, label_to_train_ids, train_to_label_ids
from autodeeplab.data.decathlon import Decathlon, decathlon_class_names, decathlon_modalities
from autodeeplab.data.folder import FolderDataset, metadata_file, read_metadata, write_metadata
from autodeeplab.data.repeat import RepeatDataset, repeat_dataset
from autodeeplab.data.split import search_split, split_indices
from autodeeplab.data.synthetic import SyntheticSegmentation, write_synthetic_folder
from autodeeplab.data.synthetic3d import Synthetic3D, write_synthetic_decathlon
from autodeeplab.data.transforms import eval_transform, train_transform
from autodeeplab.data.voc import VOCSegmentation
from autodeeplab.data.volume import Volume, VolumeDataset
from autodeeplab.data.volume_transforms import volume_eval_transform, volume_train_transform

AnyDataset = SegmentationDataset | VolumeDataset
"""An image (2D) or a volume (3D) data set."""

DATASETS: dict[str, type[SegmentationDataset] | type[VolumeDataset]] = {
    "cityscapes": Cityscapes,
    "voc": VOCSegmentation,
    "ade20k": ADE20K,
    "folder": FolderDataset,
    "synthetic": SyntheticSegmentation,
    "decathlon": Decathlon,
    "synthetic3d": Synthetic3D,
}
"""Registry of data set names accepted by :func:`build_dataset`."""

GENERATED: frozenset[str] = frozenset({"synthetic", "synthetic3d"})
"""Data sets generated on the fly, which take no root folder."""


def dataset_spatial_dims(name: str) -> int:
    """2 for an image data set, 3 for a volume data set (a :class:`VolumeDataset` class in
    :data:`DATASETS`): what the engines build their networks for."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return 3 if issubclass(DATASETS[name], VolumeDataset) else 2


VOLUME_DATASETS: tuple[str, ...] = tuple(n for n in DATASETS if dataset_spatial_dims(n) == 3)
"""Names of the volume data sets."""


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str = "train",
    transform: JointTransform | None = None,
    **kwargs: Any,
) -> AnyDataset:
    """Build the data set registered as ``name`` (``root`` is ``None`` for the generated ones,
    ``synthetic`` and ``synthetic3d``).

    Extra keyword arguments go to the data set class (e.g. ``length``, ``size``, ``seed`` for
    ``synthetic``, ``metadata`` for ``folder``, ``val_fraction`` for ``decathlon``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    cls = DATASETS[name]
    if name not in GENERATED and root is None:
        raise ValueError(f"data set {name!r} needs a root folder")
    return cls(root, split, transform, **kwargs)  # type: ignore[call-arg]


_FIXED_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cityscapes": cityscapes.CLASS_NAMES,
    "voc": voc.CLASS_NAMES,
    "ade20k": ade20k.CLASS_NAMES,
    "synthetic": synthetic.CLASS_NAMES,
    "synthetic3d": synthetic3d.CLASS_NAMES,
}


def dataset_class_names(
    name: str, root: str | Path | None = None, options: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """Class names of data set ``name`` without reading its images (a ``folder`` data set
    reads its class metadata file under ``root``, or ``options["metadata"]``; a ``decathlon``
    task its ``dataset.json``)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if name in _FIXED_CLASS_NAMES:
        return _FIXED_CLASS_NAMES[name]
    if root is None:
        raise ValueError(f"data set {name!r} needs a root folder to know its classes")
    if name == "decathlon":
        return decathlon_class_names(root)
    return read_metadata(metadata_file(root, (options or {}).get("metadata"))).class_names


def dataset_in_channels(
    name: str, root: str | Path | None = None, options: Mapping[str, Any] | None = None
) -> int:
    """Input channels of data set ``name`` without reading its images: 3 (RGB) for images,
    the modalities of a volume data set (a ``decathlon`` task's ``dataset.json``)."""
    if dataset_spatial_dims(name) == 2:
        return 3
    if name == "decathlon":
        if root is None:
            raise ValueError("data set 'decathlon' needs a root folder to know its modalities")
        return len(decathlon_modalities(root))
    return build_dataset(name, root, "train", None, **(options or {})).in_channels


__all__ = [
    "ADE20K",
    "DATASETS",
    "GENERATED",
    "IGNORE_INDEX",
    "VOLUME_DATASETS",
    "AnyDataset",
    "Cityscapes",
    "DatasetError",
    "DatasetLayoutError",
    "Decathlon",
    "FolderDataset",
    "JointTransform",
    "RepeatDataset",
    "SegmentationDataset",
    "Synthetic3D",
    "SyntheticSegmentation",
    "VOCSegmentation",
    "Volume",
    "VolumeDataset",
    "build_dataset",
    "dataset_class_names",
    "dataset_in_channels",
    "dataset_spatial_dims",
    "eval_transform",
    "label_to_train_ids",
    "repeat_dataset",
    "search_split",
    "split_indices",
    "train_to_label_ids",
    "train_transform",
    "volume_eval_transform",
    "volume_train_transform",
    "write_metadata",
    "write_synthetic_decathlon",
    "write_synthetic_folder",
]
