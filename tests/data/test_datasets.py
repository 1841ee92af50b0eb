import json
import re

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from autodeeplab.data import (
    ADE20K,
    DATASETS,
    Cityscapes,
    DatasetError,
    DatasetLayoutError,
    FolderDataset,
    VOCSegmentation,
    build_dataset,
    label_to_train_ids,
    train_to_label_ids,
    voc,
)
from autodeeplab.data import cityscapes as cs
from autodeeplab.data.base import read_image
from autodeeplab.data.folder import read_metadata, write_metadata

from layouts import (
    make_ade,
    make_cityscapes,
    make_folder,
    make_voc,
    save_gray,
    save_png16_rgb,
    save_rgb,
    voc_colormap_reference,
)

# The official cityscapesScripts table (helpers/labels.py), written out independently:
# (name, id, trainId).
OFFICIAL_CITYSCAPES = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8),
    ("terrain", 22, 9), ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12),
    ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
]  # fmt: skip


def test_cityscapes_table_matches_official():
    assert [(lab.name, lab.id, lab.train_id) for lab in cs.LABELS] == OFFICIAL_CITYSCAPES
    for name, label_id, train_id in OFFICIAL_CITYSCAPES:
        expected = train_id if 0 <= train_id < 255 else 255
        assert label_to_train_ids(np.array([label_id]))[0] == expected, name
        if 0 <= train_id < 255:
            assert train_to_label_ids(np.array([train_id]))[0] == label_id
            assert cs.CLASS_NAMES[train_id] == name
    assert len(cs.CLASS_NAMES) == 19
    assert train_to_label_ids(np.array([255]))[0] == 0


def test_cityscapes_loads_and_maps(tmp_path, rng):
    label_masks = make_cityscapes(tmp_path, rng)
    ds = Cityscapes(tmp_path, "train")
    assert len(ds) == 3 and ds.num_classes == 19 and ds.ignore_index == 255
    lut = {lid: (t if 0 <= t < 255 else 255) for _, lid, t in OFFICIAL_CITYSCAPES if lid >= 0}
    for i in range(len(ds)):
        image, mask = ds[i]
        assert image.shape == (12, 20, 3) and image.dtype == np.uint8
        # samples are sorted by city then name
        ref = label_masks[[0, 2, 1][i]]
        np.testing.assert_array_equal(mask, np.vectorize(lut.get)(ref))
    # round trip for submissions: evaluated pixels map back to their label ids
    keep = mask != 255
    np.testing.assert_array_equal(train_to_label_ids(mask)[keep], ref[keep])


def test_voc_palette_masks(tmp_path, rng):
    masks = make_voc(tmp_path / "VOC2012", rng)
    np.testing.assert_array_equal(voc.voc_colormap(), voc_colormap_reference())
    ds = build_dataset("voc", tmp_path, "train")  # the parent folder of VOC2012 works too
    assert ds.num_classes == 21 and ds.palette.shape == (21, 3)
    image, mask = ds[1]
    assert image.shape == (10, 14, 3)
    np.testing.assert_array_equal(mask, masks["2007_000039"])
    assert (mask[0] == 255).all()
    assert len(VOCSegmentation(tmp_path / "VOC2012", "val")) == 1


def test_voc_devkit_parent(tmp_path, rng):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012", rng)
    assert VOCSegmentation(tmp_path, "val").root == tmp_path / "VOCdevkit" / "VOC2012"


def test_voc_train_aug(tmp_path, rng):
    root = tmp_path / "VOC2012"
    make_voc(root, rng)
    aug = rng.integers(0, 21, (10, 14))
    save_gray(root / "SegmentationClassAug" / "2007_000032.png", aug)
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
    )
    ds = VOCSegmentation(root, "train_aug")
    np.testing.assert_array_equal(ds[0][1], aug)


def test_ade20k_shift(tmp_path, rng):
    masks = make_ade(tmp_path, rng)
    ds = ADE20K(tmp_path, "train")
    assert ds.num_classes == 150 and len(ds.class_names) == len(set(ds.class_names))
    _, mask = ds[0]
    expected = np.where(masks[0] == 0, 255, masks[0] - 1)
    np.testing.assert_array_equal(mask, expected)
    assert ds.class_names[0] == "wall" and ds.class_names[-1] == "flag"


def test_folder_yaml_and_json(tmp_path, rng):
    masks = make_folder(tmp_path, rng)
    ds = FolderDataset(tmp_path, "train")
    assert ds.class_names == ("c0", "c1", "c2", "c3")
    np.testing.assert_array_equal(ds[2][1], masks[2])
    (tmp_path / "classes.yaml").unlink()
    meta = {
        "class_names": ["a", "b", "c", "d"],
        "palette": [[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 0]],
    }
    (tmp_path / "classes.json").write_text(json.dumps(meta))
    ds = build_dataset("folder", tmp_path, "train")
    assert ds.class_names == ("a", "b", "c", "d") and ds.palette[1].tolist() == [4, 5, 6]
    assert ds.verify() == 3


def test_registry_errors():
    with pytest.raises(ValueError, match="valid names: cityscapes, voc"):
        build_dataset("coco", "/nowhere")
    with pytest.raises(ValueError, match="valid splits"):
        build_dataset("cityscapes", "/nowhere", "training")
    assert set(DATASETS) == {
        "cityscapes",
        "voc",
        "ade20k",
        "folder",
        "synthetic",
        "decathlon",
        "synthetic3d",
    }


# -- bad input: every error names the file or folder and the problem ---------------------


@pytest.mark.parametrize("name", ["cityscapes", "voc", "ade20k", "folder"])
def test_missing_root_shows_layout(tmp_path, name):
    root = tmp_path / "nothing_here"
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset(name, root, "train")
    msg = str(err.value)
    assert str(root) in msg and "Expected layout" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_wrong_layout_names_missing_folder(tmp_path, rng):
    make_cityscapes(tmp_path, rng)
    import shutil

    shutil.rmtree(tmp_path / "gtFine")
    with pytest.raises(
        DatasetLayoutError, match=r"missing folder .*gtFine.*train[\s\S]*leftImg8bit/\{split\}"
    ):
        Cityscapes(tmp_path, "train")


def test_missing_mask_named(tmp_path, rng):
    make_folder(tmp_path, rng)
    (tmp_path / "masks" / "train" / "s1.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"s1\.png has no mask .*masks.train.s1\.png"):
        FolderDataset(tmp_path, "train")


def test_size_mismatch_names_both_files(tmp_path, rng):
    make_folder(tmp_path, rng)
    save_gray(tmp_path / "masks" / "train" / "s0.png", np.zeros((5, 5)))
    ds = FolderDataset(tmp_path, "train")
    with pytest.raises(DatasetError) as err:
        ds[0]
    msg = str(err.value)
    assert (
        "images/train/s0.png" in msg
        and "masks/train/s0.png" in msg
        and "10x8" in msg
        and "5x5" in msg
    )


def test_bad_mask_values_named(tmp_path, rng):
    make_folder(tmp_path, rng)
    bad = np.zeros((8, 10))
    bad[0, 0], bad[1, 1] = 7, 200
    save_gray(tmp_path / "masks" / "train" / "s2.png", bad)
    ds = FolderDataset(tmp_path, "train")
    with pytest.raises(
        DatasetError,
        match=r"masks/train/s2\.png holds values \[7, 200\].*valid values are \{0\.\.3, 255\}",
    ):
        ds[2]
    with pytest.raises(DatasetError, match=r"1 of 3 samples are unusable[\s\S]*s2\.png"):
        ds.verify()


def test_cityscapes_bad_label_id(tmp_path, rng):
    make_cityscapes(tmp_path, rng, n=1)
    path = next((tmp_path / "gtFine" / "train").glob("*/*.png"))
    save_gray(path, np.full((12, 20), 34))
    with pytest.raises(DatasetError, match=rf"{path.name} holds values \[34\].*0\.\.33"):
        Cityscapes(tmp_path, "train")[0]


def test_rgb_mask_rejected(tmp_path, rng):
    make_folder(tmp_path, rng)
    save_rgb(tmp_path / "masks" / "train" / "s0.png", np.zeros((8, 10, 3)))
    with pytest.raises(DatasetError, match=r"s0\.png has image mode 'RGB'"):
        FolderDataset(tmp_path, "train")[0]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_image_named(tmp_path, rng, damage):
    make_folder(tmp_path, rng)
    path = tmp_path / "images" / "train" / "s1.png"
    if damage == "truncate":
        Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        save_gray(tmp_path / "masks" / "train" / "s1.png", np.zeros((64, 64)))
    else:
        path.write_bytes(b"not an image at all")
    ds = FolderDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"cannot read image .*images/train/s1\.png"):
        ds[1]


def test_empty_split_names_folder(tmp_path, rng):
    make_folder(tmp_path, rng)
    (tmp_path / "images" / "val").mkdir()
    (tmp_path / "masks" / "val").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"split 'val' is empty: .* in .*images/val"):
        FolderDataset(tmp_path, "val")


def test_empty_voc_list_and_missing_listed_file(tmp_path, rng):
    root = tmp_path / "VOC2012"
    make_voc(root, rng)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    with pytest.raises(DatasetLayoutError, match=r"val\.txt names no images"):
        VOCSegmentation(root, "val")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2099_000001\n")
    with pytest.raises(
        DatasetLayoutError,
        match=r"lists '2099_000001' but .*JPEGImages.2099_000001\.jpg does not exist",
    ):
        VOCSegmentation(root, "val")


def test_bad_metadata_named(tmp_path, rng):
    make_folder(tmp_path, rng)
    (tmp_path / "classes.yaml").write_text("class_names: [a, b]\ncolours: [1]\n")
    with pytest.raises(DatasetError, match=r"classes\.yaml has unknown keys \['colours'\]"):
        FolderDataset(tmp_path, "train")


# ---------------------------------------------------------------------------- 16-bit files
# value -> round(value * 255 / 65535), worked out by hand: 1000 * 255 / 65535 = 3.89,
# 32767 -> 127.498, 32768 -> 127.502; clipping would have made everything above 255 white.
SIXTEEN_BIT = [(0, 0), (257, 1), (1000, 4), (32767, 127), (32768, 128), (65535, 255)]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_gray_images_are_scaled_not_clipped(tmp_path, suffix):
    values = np.array([[v for v, _ in SIXTEEN_BIT]] * 2, dtype=np.uint16)  # (2, 6)
    path = tmp_path / f"gray16{suffix}"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")  # really a 16-bit file
    image = read_image(path)
    assert image.shape == (2, 6, 3) and image.dtype == np.uint8
    expected = [e for _, e in SIXTEEN_BIT]
    for c in range(3):
        assert image[0, :, c].tolist() == expected


def test_16_bit_colour_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[[v, 65535 - v, v // 2] for v, _ in SIXTEEN_BIT]], dtype=np.uint16)
    save_png16_rgb(tmp_path / "rgb48.png", values)
    image = read_image(tmp_path / "rgb48.png").astype(int)  # (1, 6, 3)
    exact = values.astype(float) * 255 / 65535
    assert np.abs(image - exact).max() <= 1  # Pillow keeps the high byte
    assert image[0, :, 0].tolist()[-2:] == [128, 255]


def test_16_bit_masks_keep_their_labels(tmp_path, rng):
    make_folder(tmp_path, rng)
    mask = rng.integers(0, 4, (8, 10)).astype(np.uint16)
    mask[0, :3] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "train" / "s1.png")  # mode I;16
    ds = FolderDataset(tmp_path, "train")
    np.testing.assert_array_equal(ds.load(1)[1], mask)
    mask[2, 2], mask[3, 3] = 256, 1000  # beyond 8 bits: neither class nor ignore
    Image.fromarray(mask).save(tmp_path / "masks" / "train" / "s1.png")
    with pytest.raises(DatasetError, match=r"s1\.png holds values \[256, 1000\].*\{0\.\.3, 255\}"):
        ds.load(1)


# ---------------------------------------------------------------------------- class files
meta_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-300, 300)
    | st.integers(min_value=2**64)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=16,
)
meta_like = st.dictionaries(
    st.sampled_from(["class_names", "palette", "mask_values", "ignore_values", "colours"])
    | st.integers(0, 3),
    meta_values,
    max_size=3,
) | st.fixed_dictionaries(
    {
        "class_names": st.lists(st.text(max_size=5), max_size=4) | meta_values,
        "palette": st.lists(st.lists(meta_values, max_size=4), max_size=4) | meta_values,
    }
)


def _yaml_text(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["classes.yaml", "classes.json"]),
    st.text(max_size=60) | meta_like.map(_yaml_text) | meta_like.map(json.dumps),
)
def test_class_files_of_any_text_raise_only_dataset_errors(tmp_path_factory, name, text):
    path = tmp_path_factory.mktemp("meta") / name
    path.write_text(text, encoding="utf-8")
    try:
        names, palette, lut = read_metadata(path)
    except DatasetError as err:
        assert str(path) in str(err)
    else:
        assert names and all(isinstance(n, str) for n in names)
        assert palette.shape == (len(names), 3) and palette.dtype == np.uint8
        assert sorted(set(lut[lut >= 0].tolist()) - {255}) == list(range(len(names)))


@pytest.mark.parametrize(
    ("palette", "problem"),
    [
        ([["a", "b", "c"]], "integers"),
        ([[1, 2, None]], "integers"),
        ([[1.5, 2, 3]], "integers"),
        ([[True, 0, 0]], "integers"),
        ([[1, 2], [3, 4, 5]], "1 [r, g, b] triples"),
        ([[0, 0, 256]], "0..255"),
    ],
)
def test_bad_palettes_are_named(tmp_path, palette, problem):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"class_names": ["a"], "palette": palette}))
    with pytest.raises(
        DatasetError, match=rf"classes\.json: .palette. must be .*{re.escape(problem)}"
    ):
        read_metadata(path)


def test_unknown_keys_of_mixed_types_are_named(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text("class_names: [a]\n1: x\ncolours: y\n")
    with pytest.raises(DatasetError, match=r"unknown keys \[1, 'colours'\]"):
        read_metadata(path)


# ---------------------------------------------------------------------------- folder formats
def test_folder_reads_tiff_images_and_masks_and_one_bit_masks(tmp_path, rng):
    """Microscopy-style data: TIFF images (upper-case suffix), TIFF and 1-bit PNG masks."""
    make_folder(tmp_path, rng, classes=2)
    image = rng.integers(0, 256, (8, 10, 3)).astype(np.uint8)
    for name in ("s0.png", "s1.png"):
        (tmp_path / "images" / "train" / name).unlink()
        (tmp_path / "masks" / "train" / name).unlink()
    Image.fromarray(image).save(tmp_path / "images" / "train" / "s0.TIF")
    tiff_mask = rng.integers(0, 2, (8, 10)).astype(np.uint8)
    Image.fromarray(tiff_mask).save(tmp_path / "masks" / "train" / "s0.tif")
    Image.fromarray(image).save(tmp_path / "images" / "train" / "s1.bmp")
    binary = rng.integers(0, 2, (8, 10)).astype(bool)
    Image.fromarray(binary).save(tmp_path / "masks" / "train" / "s1.png")
    with Image.open(tmp_path / "masks" / "train" / "s1.png") as im:
        assert im.mode == "1"  # really a 1-bit file
    ds = FolderDataset(tmp_path, "train")
    assert [p.name for p, _ in ds.samples] == ["s0.TIF", "s1.bmp", "s2.png"]
    np.testing.assert_array_equal(ds.load(0)[0], image)  # TIFF and BMP are lossless
    np.testing.assert_array_equal(ds.load(0)[1], tiff_mask)
    np.testing.assert_array_equal(ds.load(1)[0], image)
    np.testing.assert_array_equal(ds.load(1)[1], binary.astype(np.uint8))


def test_folder_skips_hidden_files(tmp_path, rng):
    make_folder(tmp_path, rng)
    (tmp_path / "images" / "train" / "._s0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (tmp_path / "images" / "train" / ".DS_Store").write_bytes(b"Bud1")
    (tmp_path / "masks" / "train" / "._s0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    ds = FolderDataset(tmp_path, "train")
    assert [p.name for p, _ in ds.samples] == ["s0.png", "s1.png", "s2.png"]
    assert ds.verify() == 3


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".webp"])
def test_folder_refuses_lossy_masks(tmp_path, rng, suffix):
    make_folder(tmp_path, rng)
    mask = tmp_path / "masks" / "train" / "s1.png"
    mask.rename(mask.with_suffix(suffix))
    with pytest.raises(
        DatasetError, match=rf"s1\{suffix} of image .*s1\.png is stored as .*lossless"
    ):
        FolderDataset(tmp_path, "train")


def test_folder_refuses_two_masks_for_one_image(tmp_path, rng):
    make_folder(tmp_path, rng)
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(tmp_path / "masks" / "train" / "s1.tif")
    with pytest.raises(DatasetError, match=r"two masks for 's1': s1\.png and s1\.tif"):
        FolderDataset(tmp_path, "train")


def test_floating_point_images_are_refused_not_clipped(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.linspace(0, 1000, 12, dtype=np.float32).reshape(3, 4)).save(path)
    with pytest.raises(DatasetError, match=r"float\.tif holds 32-bit floating-point values"):
        read_image(path)


def test_folder_and_predict_accept_the_same_images():
    from autodeeplab import predict
    from autodeeplab.data import folder

    assert predict.IMAGE_SUFFIXES is folder.IMAGE_SUFFIXES


# ---------------------------------------------------------------------------- mask values
def test_mask_values_map_binary_masks_stored_as_0_and_255(tmp_path, rng):
    """The usual binary mask (0 = background, 255 = object) read as classes 0 and 1."""
    make_folder(tmp_path, rng, classes=2)
    write_metadata(tmp_path / "classes.yaml", ["background", "polyp"], mask_values=[0, 255])
    raw = rng.choice([0, 255], (8, 10))
    save_gray(tmp_path / "masks" / "train" / "s1.png", raw)
    ds = FolderDataset(tmp_path, "train")
    np.testing.assert_array_equal(ds.load(1)[1], (raw == 255).astype(np.uint8))
    save_gray(tmp_path / "masks" / "train" / "s1.png", np.ones((8, 10)))  # 1 is no value now
    with pytest.raises(DatasetError, match=r"s1\.png holds values \[1\].*\{0, 255\}"):
        ds.load(1)


def test_mask_values_and_ignore_values_build_the_table(tmp_path, rng):
    make_folder(tmp_path, rng, classes=3)
    write_metadata(
        tmp_path / "classes.yaml", ["a", "b", "c"], mask_values=[10, 20, 30], ignore_values=[0, 99]
    )
    raw = rng.choice([0, 10, 20, 30, 99], (8, 10))
    save_gray(tmp_path / "masks" / "train" / "s0.png", raw)
    expected = np.select([raw == 10, raw == 20, raw == 30], [0, 1, 2], default=255)
    np.testing.assert_array_equal(FolderDataset(tmp_path, "train").load(0)[1], expected)
    assert FolderDataset(tmp_path, "train")._valid_values() == "{0, 10, 20, 30, 99}"


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        ({"mask_values": [0]}, "'mask_values' must be a list of 2 distinct integers in 0..255"),
        ({"mask_values": [0, 0]}, "'mask_values' must be a list of 2 distinct"),
        ({"mask_values": [0, 256]}, "'mask_values' must be a list of 2 distinct"),
        ({"mask_values": [0, True]}, "'mask_values' must be a list of 2 distinct"),
        ({"ignore_values": 255}, "'ignore_values' must be a list of distinct integers"),
        ({"mask_values": [0, 255], "ignore_values": [255]}, "values [255] are both"),
        ({"ignore_values": [1]}, "values [1] are both"),
    ],
)
def test_bad_mask_values_are_named(tmp_path, meta, problem):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"class_names": ["a", "b"], **meta}))
    with pytest.raises(DatasetError, match=rf"classes\.json: .*{re.escape(problem)}"):
        read_metadata(path)
