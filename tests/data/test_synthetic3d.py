"""The procedural volume data set and the Decathlon task it writes."""

import json

import numpy as np
import pytest

from autodeeplab.data import Synthetic3D, build_dataset, dataset_class_names
from autodeeplab.data.synthetic3d import BALL, DISC, ROD, synthetic_affine


def runs_along_d(mask: np.ndarray) -> list[int]:
    """Lengths of the runs of True along axis 0 of a ``(D, H, W)`` mask, every column."""
    lengths = []
    d = mask.shape[0]
    for column in mask.reshape(d, -1).T:
        run = 0
        for v in [*column.tolist(), False]:
            if v:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
    return lengths


def test_samples_are_pure_functions_of_seed_split_index():
    a = Synthetic3D(split="train", length=3, size=16, seed=4)
    b = Synthetic3D(split="train", length=5, size=16, seed=4)
    for i in range(3):
        np.testing.assert_array_equal(a.load(i).image, b.load(i).image)
        np.testing.assert_array_equal(a.load(i).label, b.load(i).label)
    val = Synthetic3D(split="val", length=1, size=16, seed=4)
    assert not np.array_equal(val.load(0).label, a.load(0).label)
    v = a.load(2)
    assert v.image.shape == (1, 16, 16, 16) and v.image.dtype == np.float32
    assert v.label.dtype == np.int64 and v.name == "train_002"
    two = Synthetic3D(split="train", length=1, size=(8, 12, 16), channels=2, seed=4)
    assert two.load(0).image.shape == (2, 8, 12, 16) and two.in_channels == 2


def test_classes_differ_only_along_the_slice_axis():
    ds = build_dataset("synthetic3d", None, "train", length=12, size=(24, 32, 32), seed=1)
    assert dataset_class_names("synthetic3d") == ("background", "ball", "rod", "disc")
    longest = {BALL: 0, ROD: 0, DISC: 0}
    for i in range(len(ds)):
        label = ds.load(i).label
        for kind in longest:
            runs = runs_along_d(label == kind)
            longest[kind] = max(longest[kind], *runs, 0)
    assert 1 <= longest[DISC] <= 3  # a disc is one to three slices thick
    assert longest[BALL] > 3 and longest[ROD] > longest[BALL]  # the others are not
    # in-plane, every kind covers filled circles of the same range of radii
    for kind in longest:
        areas = [int((ds.load(i).label == kind).sum(axis=(1, 2)).max()) for i in range(len(ds))]
        assert max(areas) > np.pi * 4**2  # radius above 4 voxels seen for every kind


def test_argument_errors():
    with pytest.raises(ValueError, match="takes no root folder"):
        Synthetic3D("/data")
    with pytest.raises(ValueError, match="at least 8 along each of"):
        Synthetic3D(size=(4, 16, 16))
    with pytest.raises(ValueError, match="valid splits: train, val, test"):
        Synthetic3D(split="training")
    with pytest.raises(IndexError, match="out of range for 2 volumes"):
        Synthetic3D(length=2, size=8).load(2)


nib = pytest.importorskip("nibabel")


def test_written_task_reads_back_as_decathlon(tmp_path):
    from autodeeplab.data import Decathlon, write_synthetic_decathlon

    spacing = (2.0, 0.75, 0.5)
    root = write_synthetic_decathlon(
        tmp_path / "task", 4, 2, size=(10, 12, 14), spacing=spacing, seed=2
    )
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"} and meta["labels"]["2"] == "rod"
    assert meta["numTraining"] == 4 and len(meta["test"]) == 2

    source = Synthetic3D(split="train", length=4, size=(10, 12, 14), seed=2)
    stored = nib.load(str(root / "imagesTr" / "synth_001.nii.gz"))
    assert stored.shape == (14, 12, 10) and stored.get_data_dtype() == np.int16
    assert stored.header.get_zooms() == pytest.approx((0.5, 0.75, 2.0))
    assert np.linalg.det(stored.affine[:3, :3]) < 0  # X is flipped
    np.testing.assert_allclose(stored.affine, synthetic_affine(spacing, (10, 12, 14)))

    ds = Decathlon(root, "train", val_fraction=0.0)
    for i in range(4):
        v = ds.load(i)
        index = int(v.name.split("_")[1])
        np.testing.assert_array_equal(v.label, source.load(index).label)
        assert v.spacing == pytest.approx(spacing)
        # stored as round(-400 + 800 x) Hounsfield units, then windowed: a monotone map
        lo, hi = ds.ct_window
        hu = np.round(-400 + 800 * source.load(index).image)
        np.testing.assert_allclose(v.image, (np.clip(hu, lo, hi) - lo) / (hi - lo), atol=1e-6)
    assert len(Decathlon(root, "test")) == 2


def test_written_multimodal_task(tmp_path):
    from autodeeplab.data import Decathlon, write_synthetic_decathlon

    root = write_synthetic_decathlon(tmp_path, 2, 0, size=8, modalities=("FLAIR", "T1w"))
    assert nib.load(str(root / "imagesTr" / "synth_000.nii.gz")).shape == (8, 8, 8, 2)
    ds = Decathlon(root, "train", val_fraction=0.0)
    image = ds.load(0).image
    assert image.shape == (2, 8, 8, 8) and ds.ct_window is None
    np.testing.assert_allclose(image.reshape(2, -1).mean(axis=1), 0.0, atol=1e-5)  # z-scored
    np.testing.assert_allclose(image.reshape(2, -1).std(axis=1), 1.0, atol=1e-4)
