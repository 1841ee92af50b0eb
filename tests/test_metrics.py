import json
import math

import numpy as np
import pytest
import torch

from autodeeplab.metrics import ConfusionMatrix


def brute_force(preds, targets, n, ignore=255):
    """Per-pixel loops, then per-class loops: an independent reference."""
    tp, gt, pr = [0] * n, [0] * n, [0] * n
    for p_arr, t_arr in zip(preds, targets, strict=True):
        for p, t in zip(p_arr.ravel().tolist(), t_arr.ravel().tolist(), strict=True):
            if t == ignore:
                continue
            gt[t] += 1
            pr[p] += 1
            if p == t:
                tp[t] += 1
    iou = [tp[c] / (gt[c] + pr[c] - tp[c]) if gt[c] + pr[c] > 0 else math.nan for c in range(n)]
    acc = [tp[c] / gt[c] if gt[c] > 0 else math.nan for c in range(n)]
    # Dice from its set definition: 2 |P & G| / (|P| + |G|)
    dice = [2 * tp[c] / (gt[c] + pr[c]) if gt[c] + pr[c] > 0 else math.nan for c in range(n)]
    present_dice = [v for v in dice if not math.isnan(v)]
    present_iou = [v for v in iou if not math.isnan(v)]
    present_acc = [v for v in acc if not math.isnan(v)]
    total = sum(gt)
    return {
        "iou": iou,
        "acc": acc,
        "miou": sum(present_iou) / len(present_iou),
        "dice": dice,
        "mdice": sum(present_dice) / len(present_dice),
        "macc": sum(present_acc) / len(present_acc),
        "pixacc": sum(tp) / total,
        "fwiou": sum(gt[c] / total * iou[c] for c in range(n) if gt[c] > 0),
    }


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    cm = ConfusionMatrix(n)
    preds, targets = [], []
    for _ in range(3):
        t = rng.integers(0, n, size=(2, 9, 7))
        t[rng.random(t.shape) < 0.2] = 255
        if seed % 2:  # leave one class out of both ground truth and prediction
            t[t == n - 1] = 0
        p = rng.integers(0, n - (seed % 2), size=t.shape)
        cm.update(torch.from_numpy(p), torch.from_numpy(t).to(torch.uint8))
        preds.append(p)
        targets.append(t)
    ref = brute_force(preds, targets, n)
    np.testing.assert_allclose(cm.per_class_iou(), ref["iou"], equal_nan=True)
    np.testing.assert_allclose(cm.per_class_accuracy(), ref["acc"], equal_nan=True)
    assert math.isclose(cm.mean_iou(), ref["miou"])
    np.testing.assert_allclose(cm.per_class_dice(), ref["dice"], equal_nan=True)
    assert math.isclose(cm.mean_dice(), ref["mdice"])
    assert math.isclose(cm.mean_accuracy(), ref["macc"])
    assert math.isclose(cm.pixel_accuracy(), ref["pixacc"])
    assert math.isclose(cm.frequency_weighted_iou(), ref["fwiou"])
    if seed % 2:
        assert math.isnan(cm.per_class_iou()[n - 1])


def test_logits_merge_reset_and_json():
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=rng)
    target = torch.randint(0, 3, (2, 5, 5), generator=rng)
    whole = ConfusionMatrix(3)
    whole.update(logits, target)
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(logits[:1].argmax(1), target[:1])
    b.update(logits[1:].argmax(1), target[1:])
    assert torch.equal(a.merge(b).matrix, whole.matrix)
    assert whole.all_reduce() is whole  # no process group: a no-op
    d = whole.to_dict(["x", "y", "z"])
    json.dumps(d, allow_nan=False)
    assert d["pixels"] == 50 and set(d["per_class"]) == {"x", "y", "z"}
    whole.reset()
    assert whole.total == 0 and math.isnan(whole.mean_iou())


def test_absent_class_shown_as_na():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 255]))
    assert cm.to_dict()["per_class"]["2"] == {"iou": None, "accuracy": None, "dice": None}
    table = cm.format_table(["road", "car", "sky"])
    sky = next(line for line in table.splitlines() if line.startswith("sky"))
    assert sky.split()[1:3] == ["n/a", "n/a"]
    assert "mIoU" in table and "100.00" in table


def test_absent_note_names_the_classes_without_ground_truth():
    cm = ConfusionMatrix(4)
    # class 2 only predicted, class 3 nowhere: both without ground truth
    cm.update(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 255]))
    note = cm.absent_note(["road", "car", "sky", "bus"], "the 1 samples of the 'val' split")
    assert note.startswith("2 of 4 classes have no ground-truth pixel in the 1 samples")
    assert "('sky', 'bus')" in note and "mask_values" in note
    assert cm.absent_note() is not None and "'2', '3'" in cm.absent_note()
    cm.update(torch.tensor([2, 3]), torch.tensor([2, 3]))
    assert cm.absent_note() is None


def test_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target values \[3\]"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="same shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="cannot merge"):
        cm.merge(ConfusionMatrix(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 16, 16), generator=rng)
    target[:, :2] = 255
    logits = torch.randn(2, 5, 16, 16, generator=rng)
    cpu, gpu = ConfusionMatrix(5), ConfusionMatrix(5)
    cpu.update(logits, target)
    gpu.update(logits.cuda(), target.cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(gpu.matrix.cpu(), cpu.matrix)
    assert gpu.to_dict() == cpu.to_dict()
    cpu.merge(gpu)  # counts move to the receiving matrix's device
    assert cpu.matrix.device.type == "cpu" and cpu.total == 2 * gpu.total
