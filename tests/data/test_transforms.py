import numpy as np
import pytest
import torch

from autodeeplab.data import transforms as T


def _sample(rng, h=20, w=30, labels=(0, 3, 7, 255)):
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    mask = rng.choice(labels, size=(h, w)).astype(np.uint8)
    return image, mask


@pytest.mark.parametrize("seed", range(8))
def test_mask_values_stay_in_label_set(seed):
    rng = np.random.default_rng(seed)
    image, mask = _sample(rng)
    pipeline = T.Compose(
        [T.RandomScale(0.5, 2.0), T.PadIfNeeded(32), T.RandomCrop(32), T.RandomHorizontalFlip()]
    )
    img, msk = pipeline(image, mask, np.random.default_rng(seed))
    assert img.shape == (32, 32, 3) and msk.shape == (32, 32)
    assert set(np.unique(msk).tolist()) <= {0, 3, 7, 255}


def test_padding_uses_ignore_and_fill():
    rng = np.random.default_rng(0)
    image, mask = _sample(rng, 5, 6, labels=(1, 2))
    img, msk = T.PadIfNeeded((8, 9), fill=(10, 20, 30))(image, mask, rng)
    assert (msk[5:] == 255).all() and (msk[:, 6:] == 255).all()
    np.testing.assert_array_equal(msk[:5, :6], mask)
    assert (img[5:] == (10, 20, 30)).all() and (img[:, 6:] == (10, 20, 30)).all()


def test_flip_is_joint():
    rng = np.random.default_rng(0)
    image, mask = _sample(rng)
    img, msk = T.RandomHorizontalFlip(p=1.0)(image, mask, rng)
    np.testing.assert_array_equal(img, image[:, ::-1])
    np.testing.assert_array_equal(msk, mask[:, ::-1])


def test_flip_and_crop_keep_pixels_aligned():
    # encode each pixel's mask value in the image so alignment can be checked after any op
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 5, (24, 24)).astype(np.uint8)
    image = np.repeat(mask[..., None] * 40, 3, axis=2).astype(np.uint8)
    for s in range(10):
        pipe = T.Compose([T.PadIfNeeded(30), T.RandomCrop(30), T.RandomHorizontalFlip()])
        img, msk = pipe(image, mask, np.random.default_rng(s))
        valid = msk != 255
        np.testing.assert_array_equal(img[..., 0][valid], msk[valid] * 40)


def test_reproducible_with_seed():
    rng = np.random.default_rng(0)
    image, mask = _sample(rng)
    pipe = T.train_transform(16)
    a = pipe(image, mask, np.random.default_rng(42))
    b = pipe(image, mask, np.random.default_rng(42))
    c = pipe(image, mask, np.random.default_rng(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    assert a[0].shape == (3, 16, 16) and a[0].dtype == torch.float32 and a[1].dtype == torch.int64


def test_train_pad_is_zero_after_normalise():
    rng = np.random.default_rng(0)
    image, mask = _sample(rng, 4, 4, labels=(1,))
    img, msk = T.train_transform(12, scale=(1.0, 1.0), flip=False)(image, mask, rng)
    padded = msk == 255
    assert padded.sum() == 12 * 12 - 16
    assert img[:, padded].abs().max() < 0.01  # the mean colour normalises to ~0


def test_eval_transform_and_errors():
    rng = np.random.default_rng(0)
    image, mask = _sample(rng)
    img, msk = T.eval_transform()(image, mask, rng)
    assert img.shape == (3, 20, 30) and torch.equal(msk, torch.from_numpy(mask).long())
    img, msk = T.eval_transform((10, 15))(image, mask, rng)
    assert msk.shape == (10, 15) and set(msk.unique().tolist()) <= {0, 3, 7, 255}
    with pytest.raises(ValueError, match="PadIfNeeded"):
        T.RandomCrop(64)(image, mask, rng)
    with pytest.raises(ValueError, match="min_scale"):
        T.RandomScale(2.0, 1.0)
