"""Volumes: NIfTI axis order, the Decathlon layout, normalisation, errors and 3D transforms."""

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
monai_transforms = pytest.importorskip("monai.transforms")

from autodeeplab.data import (  # noqa: E402
    DatasetError,
    DatasetLayoutError,
    Decathlon,
    build_dataset,
    dataset_class_names,
    volume_eval_transform,
    volume_train_transform,
)
from autodeeplab.data.volume import (  # noqa: E402
    normalize_ct,
    normalize_nonzero,
    read_nifti,
)

AFFINE = np.array(
    [[0.7, 0.0, 0.0, -3.0], [0.0, -0.9, 0.0, 5.0], [0.0, 0.0, 3.0, 11.0], [0.0, 0.0, 0.0, 1.0]]
)


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    """Write ``data`` in file order ``(X, Y, Z[, C])`` with nibabel directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def make_task(
    root: Path,
    rng: np.random.Generator,
    n: int = 4,
    modalities: tuple[str, ...] = ("CT",),
    shape: tuple[int, int, int] = (9, 7, 5),  # (X, Y, Z)
    num_labels: int = 3,
    n_test: int = 1,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A task written by hand in the Decathlon layout; returns ``{case: (image, label)}`` in
    file order ``(X, Y, Z[, C])``."""
    cases = {}
    training = []
    for i in range(n):
        name = f"case_{i}"
        image = rng.normal(40, 200, (*shape, len(modalities))).astype(np.float32)
        image = image[..., 0] if len(modalities) == 1 else image
        label = rng.integers(0, num_labels, shape).astype(np.uint8)
        save(root / "imagesTr" / f"{name}.nii.gz", image)
        save(root / "labelsTr" / f"{name}.nii.gz", label)
        training.append(
            {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}
        )
        cases[name] = (image, label)
    test = []
    for i in range(n_test):
        image = rng.normal(40, 200, (*shape, len(modalities))).astype(np.float32)
        save(root / "imagesTs" / f"t_{i}.nii.gz", image[..., 0] if len(modalities) == 1 else image)
        test.append(f"./imagesTs/t_{i}.nii.gz")
    meta = {
        "name": "TaskXX_Hand",
        "modality": {str(c): m for c, m in enumerate(modalities)},
        "labels": {str(k): f"class{k}" for k in range(num_labels)},
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return cases


def to_dhw(array: np.ndarray) -> np.ndarray:
    """``(X, Y, Z) -> (Z, Y, X)`` and ``(X, Y, Z, C) -> (C, Z, Y, X)``, element by element."""
    if array.ndim == 3:
        return np.einsum("xyz->zyx", array)
    return np.einsum("xyzc->czyx", array)


# -- NIfTI reading --------------------------------------------------------------------------


def test_read_nifti_axis_order_and_spacing(tmp_path, rng):
    three = rng.normal(size=(4, 3, 2)).astype(np.float32)
    four = rng.normal(size=(4, 3, 2, 5)).astype(np.float32)
    save(tmp_path / "a.nii.gz", three)
    save(tmp_path / "b.nii.gz", four)
    a, affine, header = read_nifti(tmp_path / "a.nii.gz")
    b, _, _ = read_nifti(tmp_path / "b.nii.gz")
    assert a.shape == (2, 3, 4) and a[1, 2, 3] == three[3, 2, 1]
    assert b.shape == (5, 2, 3, 4) and b[4, 1, 0, 2] == four[2, 0, 1, 4]
    np.testing.assert_array_equal(a, to_dhw(three))
    np.testing.assert_array_equal(b, to_dhw(four))
    np.testing.assert_allclose(affine, AFFINE)
    assert np.linalg.norm(affine[:3, :3], axis=0) == pytest.approx((0.7, 0.9, 3.0))
    assert header.get_zooms() == pytest.approx((0.7, 0.9, 3.0))


def test_read_nifti_labels_are_integers(tmp_path):
    save(tmp_path / "float_ok.nii.gz", np.array([[[0.0, 2.0]]], dtype=np.float32))
    label, _, _ = read_nifti(tmp_path / "float_ok.nii.gz", integer=True)
    assert label.dtype == np.int64 and label.ravel().tolist() == [0, 2]
    save(tmp_path / "half.nii.gz", np.array([[[0.0, 0.5]]], dtype=np.float32))
    with pytest.raises(DatasetError, match=r"half\.nii\.gz holds values that are not whole"):
        read_nifti(tmp_path / "half.nii.gz", integer=True)


# -- the Decathlon data set ------------------------------------------------------------------


def test_decathlon_reads_the_hand_made_task(tmp_path, rng):
    cases = make_task(tmp_path, rng, n=5)
    train = Decathlon(tmp_path, "train", val_fraction=0.4, seed=3)
    val = Decathlon(tmp_path, "val", val_fraction=0.4, seed=3)
    assert len(train) == 3 and len(val) == 2
    names = [train.load(i).name for i in range(3)] + [val.load(i).name for i in range(2)]
    assert sorted(names) == sorted(cases)  # disjoint and complete
    assert train.class_names == ("class0", "class1", "class2") and train.in_channels == 1

    # CT window: the 0.5 / 99.5 percentiles of the foreground of the train cases, by hand
    fg = np.concatenate(
        [cases[train.load(i).name][0][cases[train.load(i).name][1] > 0] for i in range(3)]
    )
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert train.ct_window == pytest.approx((lo, hi))
    assert val.ct_window == pytest.approx((lo, hi))  # val uses the window of train

    v = val.load(1)
    image, label = cases[v.name]
    assert v.image.shape == (1, 5, 7, 9) and v.image.dtype == np.float32
    assert v.label is not None and v.label.dtype == np.int64
    np.testing.assert_array_equal(v.label, to_dhw(label))
    expected = (np.clip(to_dhw(image), lo, hi) - lo) / (hi - lo)
    np.testing.assert_allclose(v.image[0], expected, rtol=1e-5, atol=1e-6)
    assert v.spacing == pytest.approx((3.0, 0.9, 0.7))
    np.testing.assert_allclose(v.affine, AFFINE)

    x, y = val[0]  # no transform: arrays
    assert isinstance(x, np.ndarray) and x.shape == (1, 5, 7, 9)
    val.transform = volume_eval_transform()
    x, y = val[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.shape == (5, 7, 9)
    assert val.verify() == 2


def test_decathlon_split_is_a_pure_function_of_seed_and_fraction(tmp_path, rng):
    make_task(tmp_path, rng, n=10, n_test=0)

    def names(split, **kw):
        ds = Decathlon(tmp_path, split, ct_window=(0, 1), **kw)
        return [c[0].name for c in ds.cases]

    assert names("train", seed=1) == names("train", seed=1)
    assert len(names("val", val_fraction=0.3)) == 3
    assert set(names("train", seed=1)).isdisjoint(names("val", seed=1))
    assert len({tuple(names("val", seed=s)) for s in range(6)}) > 1  # the seed matters
    assert len(names("train", val_fraction=0.0)) == 10
    with pytest.raises(ValueError, match=r"split .val. is empty with val_fraction=0\.0"):
        Decathlon(tmp_path, "val", val_fraction=0.0)


def test_fixed_ct_window_and_mr_normalisation_match_monai(tmp_path, rng):
    make_task(tmp_path / "ct", rng, n=2)
    ds = Decathlon(tmp_path / "ct", "train", val_fraction=0.0, ct_window=(-100.0, 300.0))
    raw, _, _ = read_nifti(ds.cases[0][0])
    reference = monai_transforms.ScaleIntensityRange(-100.0, 300.0, 0.0, 1.0, clip=True)(raw)
    np.testing.assert_allclose(ds.load(0).image[0], np.asarray(reference), rtol=1e-5, atol=1e-6)

    make_task(tmp_path / "mr", rng, n=2, modalities=("FLAIR", "T1w"))
    mr = Decathlon(tmp_path / "mr", "train", val_fraction=0.0)
    raw, _, _ = read_nifti(mr.cases[1][0])  # (2, D, H, W)
    raw[:, :2] = 0.0  # zeros outside the "head" stay zero and do not enter the statistics
    normalised = mr.normalize(raw)
    reference = monai_transforms.NormalizeIntensity(nonzero=True, channel_wise=True)(raw)
    np.testing.assert_allclose(normalised, np.asarray(reference), rtol=1e-4, atol=1e-5)
    assert (normalised[:, :2] == 0).all() and mr.ct_window is None
    assert normalize_nonzero(np.zeros((2, 2))).sum() == 0
    assert normalize_ct(np.array([-5.0, 0.0, 5.0, 20.0]), (0.0, 10.0)).tolist() == [0, 0, 0.5, 1]


def test_test_split_yields_images(tmp_path, rng):
    make_task(tmp_path, rng, n=3, n_test=2, modalities=("T2", "ADC"))
    ds = build_dataset("decathlon", tmp_path, "test", volume_eval_transform())
    assert len(ds) == 2 and not ds.labelled
    image = ds[1]
    assert isinstance(image, torch.Tensor) and image.shape == (2, 5, 7, 9)
    assert ds.load(0).label is None and ds.load(0).name == "t_0"
    assert dataset_class_names("decathlon", tmp_path) == ("class0", "class1", "class2")


# -- bad input --------------------------------------------------------------------------------


def edit_json(root: Path, **changes) -> Path:
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    for key, value in changes.items():
        if value is None:
            del meta[key]
    (root / "dataset.json").write_text(json.dumps(meta))
    return root / "dataset.json"


def test_missing_folder_and_dataset_json_show_the_layout(tmp_path, rng):
    with pytest.raises(DatasetLayoutError, match=r"folder does not exist[\s\S]*Expected layout"):
        Decathlon(tmp_path / "nowhere")
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("decathlon", tmp_path / "empty", "train")
    msg = str(err.value)
    assert "missing" in msg and "dataset.json" in msg and "imagesTr/<case>.nii.gz" in msg
    assert isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"labels": None}, r"has no key\(s\) 'labels'[\s\S]*Expected layout"),
        ({"labels": {"0": "background", "2": "tumour"}}, r"keys of 'labels' must be 0..1"),
        ({"labels": {"zero": "background"}}, r"keys of 'labels' must be integers"),
        ({"modality": []}, r"'modality' must be a non-empty mapping"),
        ({"training": []}, r"'training' must be a non-empty list"),
        ({"training": ["./imagesTr/case_0.nii.gz"]}, r"training\[0\] must be \{\"image\""),
        (
            {"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/case_0.nii.gz"}]},
            r"training\[0\]\.image of .*dataset\.json is './imagesTr/x\.nii\.gz', but .*x\.nii\.gz does not exist",
        ),
    ],
)
def test_invalid_dataset_json_entries(tmp_path, rng, change, pattern):
    make_task(tmp_path, rng, n=2)
    path = edit_json(tmp_path, **change)
    with pytest.raises(DatasetError, match=pattern) as err:
        Decathlon(tmp_path, "train", val_fraction=0.0)
    assert str(path) in str(err.value)


def test_unparsable_dataset_json(tmp_path, rng):
    make_task(tmp_path, rng, n=2)
    (tmp_path / "dataset.json").write_text('{"name": "x", ')
    with pytest.raises(DatasetError, match=r"cannot parse .*dataset\.json"):
        Decathlon(tmp_path)


def test_one_case_cannot_be_split(tmp_path, rng):
    make_task(tmp_path, rng, n=1)
    with pytest.raises(DatasetError, match="lists 1 training case; a validation split needs"):
        Decathlon(tmp_path, "train")
    assert len(Decathlon(tmp_path, "train", val_fraction=0.0)) == 1
    assert len(Decathlon(tmp_path, "test")) == 1  # the test split needs no validation split
    with pytest.raises(ValueError, match=r"ct_window must be \(lo, hi\)"):
        Decathlon(tmp_path, "train", val_fraction=0.0, ct_window=(1.0,))


def test_test_entries_as_objects(tmp_path, rng):
    make_task(tmp_path, rng, n=2, n_test=1)
    edit_json(tmp_path, test=[{"image": "./imagesTs/t_0.nii.gz"}])
    assert Decathlon(tmp_path, "test").load(0).name == "t_0"
    edit_json(tmp_path, test=[{"image": "./imagesTs/t_9.nii.gz"}])
    with pytest.raises(DatasetLayoutError, match=r"test\[0\] of .* is './imagesTs/t_9\.nii\.gz'"):
        Decathlon(tmp_path, "test")


def test_no_test_entries(tmp_path, rng):
    make_task(tmp_path, rng, n=2, n_test=0)
    with pytest.raises(DatasetLayoutError, match="lists no 'test' images"):
        Decathlon(tmp_path, "test")


def loading_error(root: Path, case: str = "case_0") -> str:
    ds = Decathlon(root, "train", val_fraction=0.0, ct_window=(-100, 100))
    index = next(i for i, (img, _) in enumerate(ds.cases) if img.name.startswith(case))
    with pytest.raises(DatasetError) as err:
        ds.load(index)
    with pytest.raises(DatasetError, match=r"1 of 3 volumes are unusable"):
        ds.verify()
    return str(err.value)


def test_shape_mismatch_names_both_sizes(tmp_path, rng):
    make_task(tmp_path, rng, n=3)
    save(tmp_path / "labelsTr" / "case_0.nii.gz", np.zeros((9, 7, 4), np.uint8))
    msg = loading_error(tmp_path)
    assert re.search(r"label .*labelsTr/case_0\.nii\.gz has shape \(9, 7, 4\)", msg)
    assert "(9, 7, 5)" in msg


def test_labels_outside_dataset_json(tmp_path, rng):
    make_task(tmp_path, rng, n=3)
    label = np.zeros((9, 7, 5), np.uint8)
    label[0, 0, :2] = (7, 3)
    save(tmp_path / "labelsTr" / "case_0.nii.gz", label)
    msg = loading_error(tmp_path)
    assert "holds values [3, 7] that are not in 'labels'" in msg
    assert "valid values are 0..2 (class0, class1, class2)" in msg


def test_wrong_number_of_modalities(tmp_path, rng):
    make_task(tmp_path, rng, n=3, modalities=("FLAIR", "T1w"))
    save(tmp_path / "imagesTr" / "case_0.nii.gz", np.ones((9, 7, 5), np.float32))
    msg = loading_error(tmp_path)
    assert "has 1 modality (file shape (9, 7, 5))" in msg and "lists 2 (FLAIR, T1w)" in msg
    assert "expected shape (X, Y, Z, 2)" in msg


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_nifti_is_named(tmp_path, rng, damage):
    make_task(tmp_path, rng, n=3)
    path = tmp_path / "imagesTr" / "case_0.nii.gz"
    if damage == "garbage":
        path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    else:
        path.write_bytes(path.read_bytes()[:200])
    msg = loading_error(tmp_path)
    assert "cannot read NIfTI file" in msg and str(path) in msg


def test_missing_file_after_listing(tmp_path, rng):
    make_task(tmp_path, rng, n=3)
    ds = Decathlon(tmp_path, "train", val_fraction=0.0, ct_window=(0, 1))
    shutil.rmtree(tmp_path / "labelsTr")
    with pytest.raises(DatasetLayoutError, match=r"labelsTr/case_\d\.nii\.gz does not exist"):
        ds.load(0)


# -- 3D training transforms -------------------------------------------------------------------


def blob_volume(shape=(20, 24, 28)) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    label = np.zeros(shape, dtype=np.int64)
    label[15:17, 2:4, 20:23] = 2  # a small foreground far from the centre
    return image, label


def test_train_transform_crops_roi_with_foreground_oversampling():
    image, label = blob_volume()
    always = volume_train_transform((8, 10, 12), foreground_fraction=1.0)
    never = volume_train_transform((8, 10, 12), foreground_fraction=0.0, flip_prob=0.0)
    hits = 0
    for seed in range(20):
        x, y = always(image, label, np.random.default_rng(seed))
        assert x.shape == (2, 8, 10, 12) and y.shape == (8, 10, 12)
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and type(x) is torch.Tensor
        assert (y == 2).any()  # every crop is centred on the foreground
        _, y0 = never(image, label, np.random.default_rng(seed))
        hits += int((y0 == 2).any())
    assert hits < 10  # background-centred crops rarely reach the small blob

    a = always(image, label, np.random.default_rng(7))
    b = always(image, label, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # reproducible from the rng


@pytest.mark.filterwarnings("ignore:Num foregrounds:UserWarning")  # no background: expected
def test_train_transform_pads_small_volumes_with_ignore():
    image = np.ones((1, 4, 12, 5), dtype=np.float32)
    label = np.ones((4, 12, 5), dtype=np.int64)
    x, y = volume_train_transform((6, 8, 8), flip_prob=0.0)(image, label, np.random.default_rng(0))
    assert x.shape == (1, 6, 8, 8)
    kept = torch.zeros((6, 8, 8), dtype=torch.bool)
    kept[:4, :, :5] = True  # D and W are padded at the end, H is cropped
    assert (y[kept] == 1).all() and (y[~kept] == 255).all()
    assert (x[0][kept] == 1).all() and (x[0][~kept] == 0).all()


def test_train_transform_flips_image_and_label_together():
    image, label = blob_volume((6, 7, 8))
    label = np.arange(label.size).reshape(label.shape) % 5  # every voxel distinguishable
    transform = volume_train_transform((6, 7, 8), flip_prob=0.5)  # the crop is the volume
    seen = set()
    for seed in range(24):
        x, y = transform(image, label, np.random.default_rng(seed))
        axes = next(
            axes
            for axes in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]
            if np.array_equal(x.numpy(), np.flip(image, axes) if axes else image)
        )
        flipped = np.flip(label, tuple(a - 1 for a in axes)) if axes else label
        np.testing.assert_array_equal(y.numpy(), flipped)
        seen.add(axes)
    assert len(seen) >= 6  # each axis flips independently


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="1 or 3 positive sizes"):
        volume_train_transform((8, 8))
    with pytest.raises(ValueError, match=r"foreground_fraction must be in \[0, 1\]"):
        volume_train_transform(8, foreground_fraction=1.5)
    with pytest.raises(ValueError, match=r"label \(D, H, W\) of the same size"):
        volume_train_transform(4)(
            np.zeros((1, 5, 5, 5)), np.zeros((5, 5, 4)), np.random.default_rng()
        )
