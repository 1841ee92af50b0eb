import numpy as np
import pytest
import torch

from autodeeplab.data import (
    FolderDataset,
    SyntheticSegmentation,
    build_dataset,
    search_split,
    split_indices,
)
from autodeeplab.data.synthetic import CLASS_NAMES


def test_pure_function_of_seed_and_index():
    a = SyntheticSegmentation(length=20, size=48, seed=3)
    b = SyntheticSegmentation(length=20, size=48, seed=3)
    for i in (7, 0, 19):  # access order must not matter
        np.testing.assert_array_equal(a.load(i)[0], b.load(i)[0])
        np.testing.assert_array_equal(a.load(i)[1], b.load(i)[1])
    other = SyntheticSegmentation(length=20, size=48, seed=4)
    assert not np.array_equal(a.load(0)[0], other.load(0)[0])
    val = SyntheticSegmentation(split="val", length=20, size=48, seed=3)
    assert not np.array_equal(a.load(0)[0], val.load(0)[0])


def test_shapes_and_classes():
    ds = SyntheticSegmentation(length=60, size=(40, 56))
    counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    for i in range(len(ds)):
        image, mask = ds.load(i)
        assert image.shape == (40, 56, 3) and image.dtype == np.uint8 and mask.shape == (40, 56)
        counts += np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
    assert (counts > 0).all(), counts  # every class appears
    assert ds.num_classes == 7 and ds.palette.shape == (7, 3)


def test_written_folder_reads_back_identical(tmp_path):
    ds = SyntheticSegmentation(split="val", length=5, size=32, seed=1)
    ds.write_folder(tmp_path)
    folder = FolderDataset(tmp_path, "val")
    assert folder.class_names == ds.class_names
    np.testing.assert_array_equal(folder.palette, ds.palette)
    for i in range(5):
        for x, y in zip(folder.load(i), ds.load(i), strict=True):
            np.testing.assert_array_equal(x, y)


def _loader(ds, seed, workers):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers, generator=g)


def _epoch(loader):
    return [b for batch in loader for b in batch]


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_reproducible_in_loader(workers):
    from autodeeplab.data import train_transform

    ds = build_dataset("synthetic", None, "train", train_transform(32), length=8, size=48)
    torch.manual_seed(0)  # drives the per-sample generators when no workers are used
    loader = _loader(ds, 0, workers)
    first = _epoch(loader)
    torch.manual_seed(0)
    second = _epoch(_loader(ds, 0, workers))
    assert first[0].shape == (4, 3, 32, 32) and first[1].shape == (4, 32, 32)
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    third = _epoch(loader)  # the next epoch draws new augmentations
    assert not torch.equal(first[0], third[0])


def test_errors():
    with pytest.raises(ValueError, match="no root"):
        SyntheticSegmentation("/data")
    with pytest.raises(IndexError):
        SyntheticSegmentation(length=3).load(3)


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_split_disjoint_and_seeded(n):
    a, b = split_indices(n, seed=5)
    assert len(set(a.tolist()) & set(b.tolist())) == 0
    assert sorted([*a.tolist(), *b.tolist()]) == list(range(n))
    assert abs(len(a) - len(b)) <= 1
    a2, b2 = split_indices(n, seed=5)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    if n > 10:
        assert not np.array_equal(a, split_indices(n, seed=6)[0])


def test_search_split_subsets():
    ds = SyntheticSegmentation(length=10, size=16)
    ta, tb = search_split(ds, seed=0)
    assert len(ta) + len(tb) == 10 and not set(ta.indices) & set(tb.indices)
    with pytest.raises(ValueError, match="at least 2"):
        split_indices(1)
