"""Whole-volume inference: Gaussian-blended sliding windows, evaluation and NIfTI output.

A 3D network is trained on crops and applied to a whole ``(C, D, H, W)`` volume through
overlapping ``roi`` windows (MONAI's ``sliding_window_inference``): each window's logits are
weighted by a Gaussian centred on the window (``sigma = sigma_scale * roi`` per axis, so
voxels near a window's border, which saw the least context, count least), summed, and divided
by the summed weights. Windows are ``roi * (1 - overlap)`` apart; a volume smaller than ``roi``
is padded with zeros (the normalised background) and the logits cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from autodeeplab.data.volume import VolumeDataset, require, write_label_nifti
from autodeeplab.data.volume_transforms import roi_triple
from autodeeplab.metrics import ConfusionMatrix

if TYPE_CHECKING:
    from autodeeplab.saved_model import SavedModelConfig

DEFAULT_OVERLAP = 0.5
"""Fraction of a window shared with its neighbour along each axis."""

BLEND_MODES: tuple[str, ...] = ("gaussian", "constant")


@torch.no_grad()
def predict_volume_logits(
    model: nn.Module,
    image: torch.Tensor,
    roi: int | Sequence[int],
    *,
    overlap: float = DEFAULT_OVERLAP,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    output_device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class scores ``(N, K, D, H, W)`` for normalised volumes ``(N, C, D, H, W)`` (or one
    ``(C, D, H, W)`` volume, giving ``(K, D, H, W)``). Put the model in eval mode first.

    Windows run on the device of ``image``; the blended logits are gathered on
    ``output_device`` (default: the same), e.g. ``"cpu"`` when a large volume's logits do
    not fit next to the network in GPU memory."""
    if image.ndim not in (4, 5):
        raise ValueError(
            f"expected a volume (C, D, H, W) or a batch (N, C, D, H, W), got {tuple(image.shape)}"
        )
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if mode not in BLEND_MODES:
        raise ValueError(f"unknown blending mode {mode!r}; valid modes: {', '.join(BLEND_MODES)}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    inferers = require("monai.inferers")
    batch = image if image.ndim == 5 else image[None]
    logits = inferers.sliding_window_inference(
        batch,
        roi_triple(roi),
        sw_batch_size,
        model,
        overlap=overlap,
        mode=mode,
        sigma_scale=sigma_scale,
        sw_device=image.device,
        device=output_device if output_device is not None else image.device,
    )
    if hasattr(logits, "as_tensor"):  # MONAI may wrap the result in a MetaTensor
        logits = logits.as_tensor()
    return logits if image.ndim == 5 else logits[0]


@dataclass(frozen=True)
class VolumeEvaluation:
    """Metrics of a set of volumes: the pooled confusion matrix and the Dice of each case."""

    matrix: ConfusionMatrix
    """Counts of all voxels of all volumes."""
    cases: tuple[str, ...]
    case_dice: np.ndarray
    """``(cases, K)`` Dice per volume and class; NaN where a class is in neither the volume's
    ground truth nor its prediction."""

    def mean_case_dice(self) -> np.ndarray:
        """``(K,)`` mean over volumes of the per-volume Dice (NaN cases left out)."""
        out = np.full(self.case_dice.shape[1], math.nan)
        for k in range(out.size):
            column = self.case_dice[:, k]
            column = column[~np.isnan(column)]
            if column.size:
                out[k] = column.mean()
        return out

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready: the pooled metrics, plus ``case_dice`` and ``mean_case_dice`` by name."""

        def named(values: np.ndarray) -> dict[str, float | None]:
            return {
                name: None if math.isnan(v) else float(v)
                for name, v in zip(class_names, values.tolist(), strict=True)
            }

        return {
            **self.matrix.to_dict(class_names),
            "mean_case_dice": named(self.mean_case_dice()),
            "case_dice": {
                case: named(d) for case, d in zip(self.cases, self.case_dice, strict=True)
            },
        }


@torch.no_grad()
def evaluate_volumes(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    dataset: VolumeDataset,
    roi: int | Sequence[int],
    *,
    overlap: float = DEFAULT_OVERLAP,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    device: str | torch.device = "cpu",
    indices: Sequence[int] | None = None,
) -> VolumeEvaluation:
    """Predict every (whole, untransformed) volume of a labelled data set, or the volumes
    ``indices`` of it, and score them.

    A module is put in eval mode (any other callable, e.g. a partial of one, is used as it
    is); volumes are moved to ``device``.
    """
    if not dataset.labelled:
        raise ValueError(f"{dataset!r} has no labels to evaluate against; use a labelled split")
    if isinstance(model, nn.Module):
        model.eval()
    total = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    names, dice = [], []
    for i in range(len(dataset)) if indices is None else indices:
        volume = dataset.load(i)
        assert volume.label is not None
        image = torch.from_numpy(volume.image).to(device)  # (C, D, H, W)
        logits = predict_volume_logits(
            model, image, roi, overlap=overlap, sw_batch_size=sw_batch_size, mode=mode
        )  # (K, D, H, W)
        case = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
        case.update(logits.argmax(dim=0), torch.from_numpy(volume.label).to(device))
        total.merge(case)
        names.append(volume.name)
        dice.append(case.per_class_dice())
    return VolumeEvaluation(
        total, tuple(names), np.array(dice).reshape(len(names), dataset.num_classes)
    )


@torch.no_grad()
def predict_volumes(
    model: nn.Module,
    dataset: VolumeDataset,
    output: str | Path,
    roi: int | Sequence[int],
    *,
    overlap: float = DEFAULT_OVERLAP,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Write ``<output>/<case>.nii.gz`` (uint8 class ids, the input's affine and header) for
    every volume of ``dataset``; returns the paths written."""
    model.eval()
    written = []
    for i in range(len(dataset)):
        volume = dataset.load(i)
        image = torch.from_numpy(volume.image).to(device)
        logits = predict_volume_logits(
            model, image, roi, overlap=overlap, sw_batch_size=sw_batch_size, mode=mode
        )
        path = Path(output) / f"{volume.name}.nii.gz"
        written.append(write_label_nifti(path, logits.argmax(dim=0), volume.affine, volume.header))
    return written


# ---------------------------------------------------------------------------- model folders
def training_roi(config: SavedModelConfig) -> tuple[int, int, int] | None:
    """The region of interest a volume model was trained with (``data.crop_size`` of the train
    config recorded in its folder), the default window of its sliding-window inference."""
    try:
        crop = config.extra["train_config"]["data"]["crop_size"]
        return roi_triple(crop)
    except (KeyError, TypeError, ValueError):
        return None


def resolve_roi(
    config: SavedModelConfig, roi: int | Sequence[int] | None, where: str
) -> tuple[int, int, int]:
    """``roi`` when given, else the model's training crop (:func:`training_roi`)."""
    if roi is not None:
        return roi_triple(roi)
    trained = training_roi(config)
    if trained is None:
        raise ValueError(
            f"{where} records no training crop size; give the sliding window with --roi D H W"
        )
    return trained


def model_volume_dataset(
    config: SavedModelConfig, name: str | None, root: str | Path | None, split: str, where: str
) -> VolumeDataset:
    """Split ``split`` of the volume data set ``name`` (default: the one the model was trained
    on), built with the data set options of the model's training run when it is that data set
    (so that, e.g., a Decathlon task is split into train and val as in training)."""
    from autodeeplab.data import build_dataset, dataset_spatial_dims

    name = name or config.dataset
    if name is None:
        raise ValueError(f"{where} names no data set; pass one (e.g. --dataset decathlon)")
    if dataset_spatial_dims(name) != 3:
        raise ValueError(
            f"{where} holds a volume model, but data set {name!r} holds images; use a volume "
            "data set (decathlon, synthetic3d)"
        )
    options: dict[str, Any] = {}
    if name == config.dataset:
        try:
            options = dict(config.extra["train_config"]["data"]["options"])
        except (KeyError, TypeError):
            options = {}
    dataset = build_dataset(name, root, split, None, **options)
    assert isinstance(dataset, VolumeDataset)
    if dataset.num_classes != config.num_classes or dataset.in_channels != (
        config.network.in_channels
    ):
        raise ValueError(
            f"data set {name!r} has {dataset.num_classes} classes and {dataset.in_channels} "
            f"modalities, but the model of {where} takes {config.network.in_channels} and "
            f"predicts {config.num_classes}; use the data set the model was trained for"
        )
    return dataset


def evaluate_volume_model_folder(
    model_dir: str | Path,
    *,
    data_root: str | Path | None,
    dataset: str | None = None,
    split: str = "val",
    roi: int | Sequence[int] | None = None,
    overlap: float = DEFAULT_OVERLAP,
    max_samples: int | None = None,
    device: str | torch.device = "cpu",
) -> Any:
    """Evaluate a saved volume model on the whole volumes of a data set split (Dice and IoU,
    pooled and per case); returns an :class:`autodeeplab.inference.EvalResult` whose report
    has the pooled metrics, ``mean_case_dice`` and ``case_dice``."""
    from autodeeplab.inference import EvalResult
    from autodeeplab.saved_model import load_model

    loaded = load_model(model_dir, device)
    cfg = loaded.config
    window = resolve_roi(cfg, roi, str(model_dir))
    ds = model_volume_dataset(cfg, dataset, data_root, split, str(model_dir))
    n = len(ds) if max_samples is None else min(max_samples, len(ds))
    result = evaluate_volumes(
        loaded.model, ds, window, overlap=overlap, device=device, indices=range(n)
    )
    report = {
        "model": str(model_dir),
        "dataset": dataset or cfg.dataset,
        "split": split,
        "volumes": n,
        "roi": list(window),
        "overlap": overlap,
        **result.to_dict(cfg.class_names),
    }
    return EvalResult(result.matrix, cfg.class_names, report)
