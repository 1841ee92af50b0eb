import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autodeeplab import inference
from autodeeplab.data import build_dataset, eval_transform
from autodeeplab.inference import (
    SlidingWindow,
    default_stride,
    evaluate,
    predict_logits,
    sliding_window_logits,
    tile_window,
    window_boxes,
    window_starts,
)
from autodeeplab.metrics import ConfusionMatrix

from tiny import make_tiny_model


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(num_classes=4)


def test_single_scale_is_the_model(model):
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(predict_logits(model, x), model(x))


def test_multi_scale_flip_is_the_mean_of_the_views(model):
    x = torch.randn(1, 3, 48, 40)
    scales = (0.75, 1.0, 1.25)
    views = []
    with torch.no_grad():
        for s in scales:
            size = (round(48 * s), round(40 * s))  # 36x30, 48x40, 60x50
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True):
                inp = torch.flip(xs, [3]) if flipped else xs
                out = model(inp)
                out = torch.flip(out, [3]) if flipped else out
                views.append(
                    F.interpolate(out, size=(48, 40), mode="bilinear", align_corners=False)
                )
    expected = torch.stack(views).mean(0)
    got = predict_logits(model, x, scales=scales, flip=True)
    assert got.shape == (1, 4, 48, 40)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the views really differ, so the test would notice a missing one
    assert (views[0] - views[1]).abs().max() > 1e-3


def test_small_inputs_are_padded_and_cropped(model):
    x = torch.randn(1, 3, 5, 12)  # smaller than the deepest stride (8) + 1
    got = predict_logits(model, x, scales=(0.5, 1.0))
    assert got.shape == (1, 4, 5, 12)
    with torch.no_grad():
        padded = model(F.pad(x, (0, 0, 0, 4)))[..., :5, :]
    torch.testing.assert_close(predict_logits(model, x), padded)


@pytest.mark.parametrize(
    ("length", "crop", "stride"),
    [
        (1, 4, 2),
        (4, 4, 2),
        (5, 4, 2),
        (10, 4, 3),
        (11, 4, 4),
        (12, 4, 4),
        (13, 5, 1),
        (100, 33, 21),
    ],
)
def test_window_starts_brute_force(length, crop, stride):
    padded = max(length, crop)
    starts = window_starts(padded, crop, stride)
    # independent: every multiple of stride that fits, then the window flush with the border
    expected = sorted({*range(0, padded - crop + 1, stride), padded - crop})
    assert starts == expected
    counts = np.zeros(padded, dtype=int)
    for s in starts:
        counts[s : s + crop] += 1
    assert (counts >= 1).all() and starts[-1] + crop == padded


@pytest.mark.parametrize(("h", "w"), [(7, 9), (20, 31), (33, 33)])
def test_window_boxes_cover_every_pixel(h, w):
    window = SlidingWindow(crop=(8, 10), stride=(5, 6))
    hp, wp = max(h, 8), max(w, 10)
    boxes = window_boxes(hp, wp, window)
    coverage = np.zeros((hp, wp), dtype=int)
    for y0, y1, x0, x1 in boxes:
        assert (y1 - y0, x1 - x0) == (8, 10) and y1 <= hp and x1 <= wp
        coverage[y0:y1, x0:x1] += 1
    brute = np.zeros((hp, wp), dtype=int)  # count the windows containing each pixel directly
    ys = window_starts(hp, 8, 5)
    xs = window_starts(wp, 10, 6)
    for i, j in itertools.product(range(hp), range(wp)):
        brute[i, j] = sum(y <= i < y + 8 for y in ys) * sum(x <= j < x + 10 for x in xs)
    assert (coverage == brute).all() and coverage.min() >= 1
    assert len(boxes) == len(set(boxes))


def test_sliding_window_of_one_window_is_whole_image(model):
    x = torch.randn(2, 3, 36, 44)
    window = SlidingWindow(crop=(36, 44), stride=(20, 20))
    got = predict_logits(model, x, sliding_window=window)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), atol=0, rtol=0)


class Local(nn.Module):
    """A purely per-pixel model: windows cannot change its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return self.conv(x)


class WindowMean(nn.Module):
    """Every pixel gets the mean of its window: the output depends on the windows."""

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()


def test_sliding_window_local_model_equals_whole_image():
    x = torch.randn(2, 3, 23, 30)
    window = SlidingWindow(crop=(10, 12), stride=(6, 7))
    local = Local().eval()
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_logits(local, x, window), local(x))


def test_sliding_window_averages_overlaps_like_brute_force():
    x = torch.randn(1, 3, 17, 21)
    crop, stride = (8, 9), (5, 4)
    got = sliding_window_logits(WindowMean(), x, SlidingWindow(crop, stride))
    total, count = torch.zeros_like(x), torch.zeros(17, 21)
    for y in sorted({*range(0, 17 - 8 + 1, 5), 17 - 8}):
        for xx in sorted({*range(0, 21 - 9 + 1, 4), 21 - 9}):
            total[..., y : y + 8, xx : xx + 9] += x[..., y : y + 8, xx : xx + 9].mean(
                (2, 3), keepdim=True
            )
            count[y : y + 8, xx : xx + 9] += 1
    torch.testing.assert_close(got, total / count)


def test_sliding_window_pads_small_images():
    x = torch.randn(1, 3, 5, 7)
    got = sliding_window_logits(WindowMean(), x, SlidingWindow((8, 8), (4, 4)))
    # one window over the zero-padded 8x8 image
    expected = (x.sum((2, 3), keepdim=True) / 64).expand_as(x)
    torch.testing.assert_close(got, expected)


def test_sliding_window_validation():
    with pytest.raises(ValueError, match="must not exceed crop"):
        SlidingWindow((8, 8), (9, 4))
    with pytest.raises(ValueError, match="positive"):
        SlidingWindow((0, 8), (1, 1))


def test_evaluate_matches_manual_confusion_matrix():
    model = make_tiny_model(num_classes=7)  # the synthetic data set has 7 classes
    ds = build_dataset("synthetic", None, "val", eval_transform(), length=3, size=(33, 40))
    cm = evaluate(model, ds, 7, scales=(1.0, 1.5), flip=True, batch_size=2)
    assert isinstance(cm, ConfusionMatrix)
    ref = ConfusionMatrix(7)
    for i in range(3):
        image, mask = ds[i]
        logits = predict_logits(model, image[None], scales=(1.0, 1.5), flip=True)
        ref.update(logits.argmax(1), mask[None])
    assert cm.total == 3 * 33 * 40
    assert torch.equal(cm.matrix, ref.matrix)


# ---------------------------------------------------------------------------- automatic tiling
def test_tile_window_is_the_largest_square_with_the_default_stride():
    assert tile_window(1000) == SlidingWindow((31, 31), (21, 21))  # 31^2 = 961 <= 1000 < 32^2
    assert tile_window(4_000_000) == SlidingWindow((2000, 2000), (1334, 1334))
    assert default_stride((9, 10)) == (6, 7)  # ceil(2/3 of the crop)
    with pytest.raises(ValueError, match="positive"):
        tile_window(0)


def test_views_above_tile_above_run_in_tiles(model, monkeypatch):
    calls = []
    real = inference.sliding_window_logits

    def counting(m, x, window):
        calls.append((tuple(x.shape[-2:]), window))
        return real(m, x, window)

    monkeypatch.setattr(inference, "sliding_window_logits", counting)
    x = torch.randn(1, 3, 40, 56)  # 2240 pixels
    with torch.no_grad():
        whole = model(x)
    # at the threshold: whole; above it: the tiles of tile_window, nothing else
    torch.testing.assert_close(predict_logits(model, x, tile_above=2240), whole, atol=0, rtol=0)
    assert calls == []
    tiled = predict_logits(model, x, tile_above=1000)
    assert calls == [((40, 56), tile_window(1000))]
    torch.testing.assert_close(tiled, real(model, x, tile_window(1000)), atol=0, rtol=0)
    assert not torch.allclose(tiled, whole)  # windows see less context: a real change
    # per view: the 0.5 view (20 x 28 = 560 px) runs whole, the full-size views in tiles
    calls.clear()
    predict_logits(model, x, scales=(0.5, 1.0), flip=True, tile_above=1000)
    assert [shape for shape, _ in calls] == [(40, 56), (40, 56)]
    # an explicit sliding window wins over automatic tiling
    calls.clear()
    window = SlidingWindow((40, 40), (16, 16))
    predict_logits(model, x, sliding_window=window, tile_above=1000)
    assert [w for _, w in calls] == [window]
    with pytest.raises(ValueError, match="tile_above"):
        predict_logits(model, x, tile_above=0)


def test_tiling_a_per_pixel_model_equals_the_whole_image():
    x = torch.randn(2, 3, 45, 61)
    local = Local().eval()
    with torch.no_grad():
        torch.testing.assert_close(predict_logits(local, x, tile_above=300), local(x))
