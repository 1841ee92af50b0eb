"""The contract of volumetric (3D) data sets, NIfTI input/output and intensity normalisation.

A volume data set yields ``(image, label)`` pairs: before any transform the image is a
``(C, D, H, W)`` float32 array (one channel per modality, already normalised) and the label a
``(D, H, W)`` int64 array of class ids ``0 .. num_classes - 1``. :meth:`VolumeDataset.load`
gives the whole :class:`Volume`, with its voxel spacing and the affine of its file.

Axis order. NIfTI files store voxels as ``(X, Y, Z)`` (and ``(X, Y, Z, C)`` for several
modalities); arrays here are ``(Z, Y, X)``, i.e. ``(D, H, W)`` with the slice axis first, the
order of ``torch.nn.Conv3d``. :func:`read_nifti` and :func:`write_label_nifti` are the one place
where the axes are swapped, so a prediction written back lines up voxel for voxel with its input.
Volumes are neither resampled nor reoriented.

MONAI and nibabel are optional (``pip install 'autodeeplab[3d]'``): they are imported only when
a volume is read or written (:func:`require`), never by the 2D code.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch

from autodeeplab import extras
from autodeeplab.data.base import (
    IGNORE_INDEX,
    DatasetError,
    DatasetLayoutError,
    load_all,
    sample_rng,
)

EXTRA_3D = "3d"
"""The optional-dependency extra that installs MONAI and nibabel."""

VolumeTransform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[Any, Any]]
"""``transform(image (C, D, H, W), label (D, H, W), rng) -> (image, label)``; see
:mod:`autodeeplab.data.volume_transforms`."""

FOREGROUND_SAMPLES_PER_CASE = 10_000
"""Foreground voxels drawn per training volume to estimate a CT window (bounds the cost on
large volumes; the percentiles of 10,000 draws are within a few HU of the exact ones)."""

CT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Percentiles of the training foreground intensities that bound the CT window."""


def require(module: str) -> ModuleType:
    """Import an optional 3D dependency, or say how to install it
    (:class:`~autodeeplab.extras.MissingExtraError`)."""
    return extras.require(module, EXTRA_3D, "volumetric (3D) data")


@dataclass(frozen=True, eq=False)
class Volume:
    """One volume, normalised, in ``(D, H, W)`` axis order."""

    image: np.ndarray
    """``(C, D, H, W)`` float32, one channel per modality."""
    label: np.ndarray | None
    """``(D, H, W)`` int64 class ids, or ``None`` for an unlabelled (test) volume."""
    spacing: tuple[float, float, float]
    """Voxel size along ``(D, H, W)``, in the file's units (usually mm)."""
    affine: np.ndarray
    """``(4, 4)`` voxel ``(X, Y, Z)`` index -> world coordinates, as stored in the file."""
    name: str
    """Case name (the file name without ``.nii.gz``), used to name its prediction."""
    header: Any = None
    """The nibabel header of the image file (``None`` for generated volumes)."""


def case_name(path: Path) -> str:
    """``case_001`` for ``.../case_001.nii.gz`` or ``.../case_001.nii``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def read_nifti(path: Path, *, integer: bool = False) -> tuple[np.ndarray, np.ndarray, Any]:
    """Read a NIfTI file: ``(array, affine (4, 4), header)``, the array in ``(Z, Y, X)``
    order, channels first for a 4D file (``(X, Y, Z, C) -> (C, Z, Y, X)``).

    ``integer=True`` reads labels: the stored values must be whole numbers, returned as int64.
    Otherwise the values (with the header's scaling applied) are returned as float32.
    """
    nib = require("nibabel")
    try:
        img = nib.load(str(path))
        # labels: the stored values (with the header's scaling), not converted to float
        data = np.asanyarray(img.dataobj) if integer else img.get_fdata(dtype=np.float32)
    except FileNotFoundError as err:
        raise DatasetLayoutError(f"NIfTI file {path} does not exist") from err
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        raise DatasetError(
            f"cannot read NIfTI file {path}: corrupt, truncated or not NIfTI ({err})"
        ) from err
    if data.ndim not in (3, 4):
        raise DatasetError(
            f"NIfTI file {path} has shape {data.shape}; volumes must be 3D (X, Y, Z) or, with "
            "several modalities, 4D (X, Y, Z, C)"
        )
    if integer:
        fractional = not np.issubdtype(data.dtype, np.integer) and (
            not np.isfinite(data).all() or (data != np.round(data)).any()
        )
        if fractional:
            raise DatasetError(
                f"label file {path} holds values that are not whole numbers; labels must be "
                "integer class ids"
            )
        data = data.astype(np.int64)
    order = (2, 1, 0) if data.ndim == 3 else (3, 2, 1, 0)  # -> (Z, Y, X) or (C, Z, Y, X)
    return (
        np.ascontiguousarray(data.transpose(order)),
        np.asarray(img.affine, dtype=np.float64),
        img.header,
    )


def spacing_of(header: Any) -> tuple[float, float, float]:
    """Voxel size along ``(D, H, W)`` = ``(Z, Y, X)`` from a nibabel header."""
    zooms = header.get_zooms()
    return float(zooms[2]), float(zooms[1]), float(zooms[0])


def write_label_nifti(
    path: str | Path, labels: np.ndarray | torch.Tensor, affine: np.ndarray, header: Any = None
) -> Path:
    """Write ``(D, H, W)`` class ids as a uint8 NIfTI file in ``(X, Y, Z)`` order with the
    given affine; ``header`` (the input image's) carries over its spacing and orientation codes."""
    nib = require("nibabel")
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a (D, H, W) volume, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"labels must be class ids in 0..255 to be written as uint8, got values "
            f"{labels.min()}..{labels.max()}"
        )
    data = np.ascontiguousarray(labels.astype(np.uint8).transpose(2, 1, 0))  # (X, Y, Z)
    hdr = None if header is None else header.copy()
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), header=hdr)
    if header is None:
        image.header.set_xyzt_units("mm")
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)  # the input's intensity scaling must not apply
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def write_image_nifti(
    path: str | Path, image: np.ndarray, affine: np.ndarray, dtype: Any = np.float32
) -> Path:
    """Write a ``(C, D, H, W)`` image as ``(X, Y, Z)`` (one channel) or ``(X, Y, Z, C)``,
    stored as ``dtype``, spacing in mm."""
    nib = require("nibabel")
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W), got shape {image.shape}")
    data = image.transpose(3, 2, 1, 0)  # (X, Y, Z, C)
    if data.shape[3] == 1:
        data = data[..., 0]
    out = nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), np.asarray(affine, float))
    out.header.set_xyzt_units("mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(path))
    return path


# -- intensity normalisation --------------------------------------------------------------


def is_ct(modality: str) -> bool:
    """Computed tomography (Hounsfield units, comparable across scans) or not (MR and others)."""
    return modality.strip().upper() == "CT"


def normalize_ct(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to ``window = (lo, hi)`` and scale to ``[0, 1]``: ``(clip(x, lo, hi) - lo) / (hi - lo)``."""
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"a CT window needs lo < hi, got {window}")
    return ((np.clip(values, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def normalize_nonzero(values: np.ndarray) -> np.ndarray:
    """z-score over the nonzero voxels (MR: zero is outside the head or body); zero voxels stay 0."""
    out = np.zeros(values.shape, dtype=np.float32)
    inside = values != 0
    if not inside.any():
        return out
    v = values[inside].astype(np.float64)
    std = v.std()
    out[inside] = (v - v.mean()) / (std if std > 0 else 1.0)
    return out


def foreground_sample(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to :data:`FOREGROUND_SAMPLES_PER_CASE` intensities of voxels with ``label > 0``."""
    values = image[label > 0]
    if values.size > FOREGROUND_SAMPLES_PER_CASE:
        values = rng.choice(values, FOREGROUND_SAMPLES_PER_CASE, replace=False)
    return values


def ct_window_from(samples: Sequence[np.ndarray]) -> tuple[float, float]:
    """The :data:`CT_PERCENTILES` of the pooled foreground intensities."""
    pooled = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in samples])
    if pooled.size == 0:
        raise DatasetError(
            "no foreground voxels (label > 0) in the training labels to estimate a CT window "
            "from; pass a fixed window, e.g. ct_window=(-1000, 1000)"
        )
    lo, hi = np.percentile(pooled, CT_PERCENTILES)
    if not hi > lo:
        hi = lo + 1.0  # a constant foreground: any positive width keeps the scale finite
    return float(lo), float(hi)


# -- the data set base --------------------------------------------------------------------


class VolumeDataset(torch.utils.data.Dataset):
    """Base of the volume data sets: ``load(index) -> Volume``, transforms, ``verify()``.

    Items are ``(image, label)``, or the image alone for an unlabelled split (``test``).
    """

    name: ClassVar[str] = "volumes"
    splits: ClassVar[tuple[str, ...]] = ()
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        class_names: Sequence[str],
        palette: np.ndarray,
        transform: VolumeTransform | None = None,
        *,
        labelled: bool = True,
    ) -> None:
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.palette = np.asarray(palette, dtype=np.uint8)  # (K, 3)
        self.transform = transform
        self.labelled = labelled

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """Channels of the images (modalities)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Volume:
        """The untransformed, checked and normalised volume ``index``."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} volumes")
        return index % len(self)

    def get(self, index: int, rng: np.random.Generator) -> Any:
        """Item ``index`` with the transform applied using the explicit generator ``rng``."""
        volume = self.load(index)
        if volume.label is None:
            if self.transform is None:
                return volume.image
            # Transforms work on pairs; an empty label keeps them applicable to test images.
            blank = np.zeros(volume.image.shape[1:], dtype=np.int64)
            return self.transform(volume.image, blank, rng)[0]
        if self.transform is None:
            return volume.image, volume.label
        return self.transform(volume.image, volume.label, rng)

    def __getitem__(self, index: int) -> Any:
        return self.get(index, sample_rng(index))

    def verify(self, max_errors: int = 20) -> int:
        """Load every volume and check it; raise one ``DatasetError`` listing all problems."""
        return load_all(self.name, len(self), self.load, "volumes", max_errors)
