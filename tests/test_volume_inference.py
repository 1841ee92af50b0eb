"""Whole-volume sliding-window inference, Dice against MONAI, NIfTI predictions."""

import math

import numpy as np
import pytest
import torch
from torch import nn

nib = pytest.importorskip("nibabel")
monai_metrics = pytest.importorskip("monai.metrics")

from autodeeplab.data import Decathlon, Synthetic3D, write_synthetic_decathlon  # noqa: E402
from autodeeplab.data.volume import write_label_nifti  # noqa: E402
from autodeeplab.metrics import ConfusionMatrix  # noqa: E402
from autodeeplab.volume_inference import (  # noqa: E402
    evaluate_volumes,
    predict_volume_logits,
    predict_volumes,
)


class GlobalContext(nn.Module):
    """A 3x3x3 conv plus the volume's mean: every output depends on the whole input."""

    def __init__(self, in_channels: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (N, K, D, H, W)
        return y + y.mean(dim=(2, 3, 4), keepdim=True)


def pointwise(in_channels: int = 2, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv3d(in_channels, classes, 1).eval()


def test_one_window_equals_the_whole_volume():
    torch.manual_seed(0)
    model = GlobalContext().eval()
    x = torch.randn(2, 2, 8, 12, 10)
    with torch.no_grad():
        whole = model(x)
    for overlap in (0.0, 0.5):
        out = predict_volume_logits(model, x, (8, 12, 10), overlap=overlap)
        assert out.shape == (2, 3, 8, 12, 10) and type(out) is torch.Tensor
        torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("roi", "overlap"), [((8, 8, 8), 0.5), ((6, 9, 7), 0.25), (5, 0.6)])
def test_blending_a_pointwise_model_equals_the_whole_volume(roi, overlap):
    model = pointwise()
    x = torch.randn(2, 21, 17, 30)  # one (C, D, H, W) volume, not a multiple of the window
    with torch.no_grad():
        whole = model(x[None])[0]
    out = predict_volume_logits(
        model, x, roi, overlap=overlap, sw_batch_size=3, output_device="cpu"
    )
    assert out.shape == (3, 21, 17, 30) and out.device.type == "cpu"
    torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-5)


def test_windows_are_blended_with_gaussian_weights():
    """Two windows along W with a model that outputs which window it saw: the blend is the
    Gaussian-weighted mean of the two, a second formula computed here."""

    class WindowIndex(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1] * 0 + x[:, :1, :1, :1, :1]  # constant per window: its first voxel

    roi, sigma_scale = (4, 4, 8), 0.25  # wide enough that MONAI's floor on the weights is unused
    x = torch.zeros(1, 1, 4, 4, 12)
    x[..., :4] = 1.0  # the window at W 0..7 starts with 1, the one at 4..11 with 0
    out = predict_volume_logits(WindowIndex(), x, roi, overlap=0.5, sigma_scale=sigma_scale)
    sigma = sigma_scale * 8
    g = np.exp(-0.5 * ((np.arange(8) - 3.5) / sigma) ** 2)  # centred Gaussian along W
    w_first = np.concatenate([g, np.zeros(4)])
    w_second = np.concatenate([np.zeros(4), g])
    expected = w_first / (w_first + w_second)  # first window says 1, second says 0
    every_row = np.broadcast_to(expected, (4, 4, 12))  # the D and H factors cancel out
    np.testing.assert_allclose(out[0, 0].numpy(), every_row, rtol=1e-4, atol=1e-5)
    assert 0.0 < float(out[0, 0, 0, 0, 6]) < 1.0  # blended, not averaged or overwritten
    const = predict_volume_logits(WindowIndex(), x, roi, overlap=0.5, mode="constant")
    assert float(const[0, 0, 0, 0, 6]) == pytest.approx(0.5)


def test_inference_argument_errors():
    model = pointwise()
    with pytest.raises(ValueError, match=r"expected a volume \(C, D, H, W\)"):
        predict_volume_logits(model, torch.zeros(2, 8, 8), 4)
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\)"):
        predict_volume_logits(model, torch.zeros(2, 8, 8, 8), 4, overlap=1.0)
    with pytest.raises(ValueError, match="valid modes: gaussian, constant"):
        predict_volume_logits(model, torch.zeros(2, 8, 8, 8), 4, mode="cosine")


# -- Dice -------------------------------------------------------------------------------------


def one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    return nn.functional.one_hot(labels, k).permute(0, 4, 1, 2, 3).float()  # (N, K, D, H, W)


@pytest.mark.parametrize("seed", range(3))
def test_dice_equals_monai_dice_metric(seed):
    gen = torch.Generator().manual_seed(seed)
    k = 4
    target = torch.randint(0, k, (3, 6, 7, 8), generator=gen)
    pred = torch.where(
        torch.rand(target.shape, generator=gen) < 0.6,
        target,
        torch.randint(0, k, target.shape, generator=gen),
    )
    with_bg = monai_metrics.DiceMetric(include_background=True, reduction="none")
    without_bg = monai_metrics.DiceMetric(include_background=False, reduction="none")
    reference = with_bg(one_hot(pred, k), one_hot(target, k))  # (N, K), one Dice per volume
    reference_fg = without_bg(one_hot(pred, k), one_hot(target, k))  # (N, K - 1)
    for n in range(3):
        cm = ConfusionMatrix(k)
        cm.update(pred[n : n + 1], target[n : n + 1])  # (1, D, H, W) volumes
        np.testing.assert_allclose(cm.per_class_dice(), reference[n].numpy(), rtol=1e-5)
        np.testing.assert_allclose(cm.per_class_dice()[1:], reference_fg[n].numpy(), rtol=1e-5)
        iou = cm.per_class_iou()
        np.testing.assert_allclose(cm.per_class_dice(), 2 * iou / (1 + iou))
    # a batch (N, D, H, W) pools the voxels: global Dice, not the mean of per-volume Dice
    pooled = ConfusionMatrix(k)
    pooled.update(pred, target)
    inter = [((pred == c) & (target == c)).sum().item() for c in range(k)]
    sizes = [(pred == c).sum().item() + (target == c).sum().item() for c in range(k)]
    np.testing.assert_allclose(
        pooled.per_class_dice(), [2 * i / s for i, s in zip(inter, sizes, strict=True)]
    )


def test_dice_of_a_class_missing_from_the_ground_truth():
    """Predicted but absent: 0 (as MONAI with ignore_empty=False); absent from both: NaN."""
    target = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    pred = target.clone()
    pred[0, 0, 0, 0] = 1
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    dice = cm.per_class_dice()
    reference = monai_metrics.DiceMetric(
        include_background=True, reduction="none", ignore_empty=False
    )(one_hot(pred, 3), one_hot(target, 3))[0]
    assert dice[1] == 0.0 == float(reference[1])
    assert dice[0] == pytest.approx(float(reference[0]))
    assert math.isnan(dice[2])  # MONAI says 1.0 here; undefined classes are left out instead
    assert cm.mean_dice() == pytest.approx(dice[0] / 2)
    assert cm.summary()["mDice"] == cm.mean_dice()


def test_evaluate_volumes_per_case_and_pooled():
    ds = Synthetic3D(split="val", length=3, size=(8, 12, 10), channels=2, seed=0)
    torch.manual_seed(1)
    model = nn.Conv3d(2, 4, 1)
    result = evaluate_volumes(model, ds, (8, 8, 8), overlap=0.5)
    assert result.cases == ("val_000", "val_001", "val_002")
    pooled = ConfusionMatrix(4)
    for i in range(3):
        v = ds.load(i)
        with torch.no_grad():
            pred = model(torch.from_numpy(v.image)[None]).argmax(1)  # (1, D, H, W)
        truth = torch.from_numpy(v.label)[None]
        pooled.update(pred, truth)
        for c in range(4):
            p, t = pred == c, truth == c
            denominator = int(p.sum() + t.sum())
            expected = 2 * int((p & t).sum()) / denominator if denominator else math.nan
            np.testing.assert_allclose(result.case_dice[i, c], expected, equal_nan=True)
    assert torch.equal(result.matrix.matrix, pooled.matrix)
    np.testing.assert_allclose(result.mean_case_dice(), np.nanmean(result.case_dice, axis=0))
    report = result.to_dict(ds.class_names)
    assert set(report["case_dice"]) == set(result.cases) and "mDice" in report


# -- NIfTI predictions ------------------------------------------------------------------------


def test_predictions_are_written_with_the_input_geometry(tmp_path):
    root = write_synthetic_decathlon(
        tmp_path / "task",
        2,
        2,
        size=(8, 10, 12),
        modalities=("FLAIR", "T1w"),
        spacing=(3.0, 0.6, 0.9),
    )
    test = Decathlon(root, "test")
    model = pointwise(2, 4)
    written = predict_volumes(model, test, tmp_path / "out", (4, 8, 8), overlap=0.25)
    assert [p.name for p in written] == ["synth_test_000.nii.gz", "synth_test_001.nii.gz"]
    for path, (image_path, _) in zip(written, test.cases, strict=True):
        source = nib.load(str(image_path))  # (X, Y, Z, 2)
        out = nib.load(str(path))
        assert out.get_data_dtype() == np.uint8 and out.shape == source.shape[:3]
        np.testing.assert_allclose(out.affine, source.affine)
        assert out.header.get_zooms() == pytest.approx(source.header.get_zooms()[:3])
        assert out.header.get_zooms() == pytest.approx((0.9, 0.6, 3.0))
        volume = test.load(written.index(path))
        with torch.no_grad():
            expected = model(torch.from_numpy(volume.image)[None]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(np.asanyarray(out.dataobj), expected.transpose(2, 1, 0))


def test_label_nifti_drops_the_input_intensity_scaling(tmp_path):
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    ct = nib.Nifti1Image(np.zeros((5, 4, 3), np.int16), affine)
    ct.header.set_slope_inter(2.0, -1024.0)  # CT stored with a rescale
    labels = np.random.default_rng(0).integers(0, 3, (3, 4, 5))  # (D, H, W)
    path = write_label_nifti(tmp_path / "p.nii.gz", labels, affine, ct.header)
    back = nib.load(str(path))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels.transpose(2, 1, 0))
    assert back.get_data_dtype() == np.uint8
    with pytest.raises(ValueError, match=r"class ids in 0\.\.255"):
        write_label_nifti(tmp_path / "q.nii.gz", labels + 300, affine)
    with pytest.raises(ValueError, match=r"\(D, H, W\) volume"):
        write_label_nifti(tmp_path / "q.nii.gz", labels[0], affine)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_windows_with_logits_gathered_on_the_cpu():
    model = pointwise()
    x = torch.randn(2, 20, 18, 22)
    expected = predict_volume_logits(model, x, 8)
    out = predict_volume_logits(model.cuda(), x.cuda(), 8, output_device="cpu")
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    on_gpu = predict_volume_logits(model, x.cuda(), 8)
    assert on_gpu.device.type == "cuda"
