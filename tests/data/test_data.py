"""Tests for anomclip_hf.data: loaders, mask reading, few-shot sampling, synthetic trees, bad input."""

import hashlib
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from anomclip_hf.data import (
    DEFECT_TYPES,
    DatasetLayoutError,
    detect_visa_layout,
    generate_mvtec_tree,
    generate_visa_tree,
    list_categories,
    load_split,
    read_image,
    read_mask,
    render_normal,
    render_sample,
    sample_shots,
)
from anomclip_hf.data.synthetic_images import MIN_CHANGE
from anomclip_hf.io.image_io import ImageReadError

SIZE = 64
N_TRAIN, N_GOOD, N_DEFECT, N_ANOMALY = 6, 3, 2, 5


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec") / "tree"
    return generate_mvtec_tree(root, n_train=N_TRAIN, n_test_good=N_GOOD, n_test_defect=N_DEFECT, image_size=SIZE)


@pytest.fixture(scope="module")
def visa_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("visa")
    kwargs = dict(n_train=N_TRAIN, n_test_good=N_GOOD, n_test_anomaly=N_ANOMALY, image_size=SIZE)
    return {
        "raw": generate_visa_tree(base / "raw", layout="raw", **kwargs),
        "pytorch": generate_visa_tree(base / "pytorch", layout="pytorch", **kwargs),
    }


@pytest.fixture
def mvtec_copy(mvtec_root, tmp_path):
    """A private copy of the MVTec tree for tests that break it."""
    return shutil.copytree(mvtec_root, tmp_path / "copy")


def file_digests(root):
    digests = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digests[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


# ---------------------------------------------------------------- loaders


def test_mvtec_train_split(mvtec_root):
    assert list_categories("mvtec", mvtec_root) == ["gadget", "widget"]
    train = load_split("mvtec", mvtec_root, "widget", "train")
    assert len(train) == N_TRAIN
    assert train.features["label"].names == ["normal", "anomaly"]
    assert set(train["label"]) == {0}
    assert set(train["defect_type"]) == {"good"}
    assert set(train["category"]) == {"widget"}
    assert list(train["mask_path"]) == [None] * N_TRAIN
    row = train[0]
    assert row["mask"] is None
    assert row["image"].mode == "RGB" and row["image"].size == (SIZE, SIZE)  # lazily decoded from the path
    assert row["path"].endswith(os.path.join("widget", "train", "good", "000.png"))


def test_mvtec_test_split_pairs_masks_in_sorted_order(mvtec_root):
    test = load_split("mvtec", mvtec_root, "gadget", "test")
    assert len(test) == N_GOOD + N_DEFECT * len(DEFECT_TYPES)
    paths = list(test["path"])
    assert paths == sorted(paths)
    assert list(load_split("mvtec", mvtec_root, "gadget", "test")["path"]) == paths  # stable across loads
    counts = {defect: list(test["defect_type"]).count(defect) for defect in set(test["defect_type"])}
    assert counts == {"good": N_GOOD, **{defect: N_DEFECT for defect in DEFECT_TYPES}}
    for row in test:
        if row["defect_type"] == "good":
            assert row["label"] == 0 and row["mask_path"] is None
            assert read_mask(row).shape == (SIZE, SIZE) and read_mask(row).sum() == 0
        else:
            stem = os.path.splitext(os.path.basename(row["path"]))[0]
            expected = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(row["path"]))),
                                    "ground_truth", row["defect_type"], stem + "_mask.png")
            assert row["label"] == 1 and row["mask_path"] == expected
            mask = read_mask(row)
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert read_mask(test[0], size=(32, 16)).shape == (16, 32)


@pytest.mark.parametrize("layout", ["raw", "pytorch"])
def test_visa_both_layouts(visa_roots, layout):
    root = visa_roots[layout]
    assert detect_visa_layout(root) == layout
    assert list_categories("visa", root) == ["gadget", "widget"]
    train = load_split("visa", root, "widget", "train")
    assert len(train) == N_TRAIN and set(train["label"]) == {0}
    test = load_split("visa", root, "widget", "test")
    assert len(test) == N_GOOD + N_ANOMALY
    assert list(test["path"]) == sorted(test["path"])
    assert list(test["defect_type"]).count("bad") == N_ANOMALY
    for row in test:
        assert (row["mask_path"] is None) == (row["label"] == 0)
        if row["label"] == 1:
            stem = os.path.splitext(os.path.basename(row["path"]))[0]
            assert os.path.basename(row["mask_path"]) == stem + ".png"  # visa naming: no _mask suffix
            assert set(np.unique(read_mask(row))) == {0, 1}


def test_visa_region_masks_come_out_binary_and_match_across_layouts(visa_roots):
    raw = load_split("visa", visa_roots["raw"], "gadget", "test")
    converted = load_split("visa", visa_roots["pytorch"], "gadget", "test")
    raw_values = set()
    for row in raw:
        if row["label"] == 1:
            raw_values |= set(np.unique(np.asarray(Image.open(row["mask_path"]))))
    assert raw_values - {0, 1}, "the generated VisA masks should hold region numbers above 1"
    raw_masks = [read_mask(row) for row in raw if row["label"] == 1]
    converted_masks = [read_mask(row) for row in converted if row["label"] == 1]
    for a, b in zip(raw_masks, converted_masks):
        assert set(np.unique(a)) <= {0, 1}
        np.testing.assert_array_equal(a, b)


def test_plain_folder(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for index, name in enumerate(["b.PNG", "a.jpg", "c.Tiff"]):
        Image.fromarray(render_normal("parts", str(index), SIZE)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    ds = load_split("folder", folder, None, "train")
    assert [os.path.basename(path) for path in ds["path"]] == ["a.jpg", "b.PNG", "c.Tiff"]
    assert set(ds["category"]) == {"parts"} and set(ds["label"]) == {0}
    assert list_categories("folder", folder) == ["parts"]
    assert list_categories("folder", tmp_path) == ["parts"]
    assert len(load_split("folder", tmp_path, "parts", "test")) == 3
    assert set(load_split("folder", folder, "custom", "train")["category"]) == {"custom"}


# ---------------------------------------------------------------- mismatched masks


def test_missing_mask_names_the_image(mvtec_copy):
    os.remove(os.path.join(mvtec_copy, "widget", "ground_truth", "blob", "001_mask.png"))
    with pytest.raises(DatasetLayoutError, match=r"no mask for anomalous image .*test.blob.001\.png"):
        load_split("mvtec", mvtec_copy, "widget", "test")
    load_split("mvtec", mvtec_copy, "widget", "train")  # the train split does not need masks


def test_mask_without_image_names_the_mask(mvtec_copy):
    gt = os.path.join(mvtec_copy, "widget", "ground_truth")
    shutil.copy(os.path.join(gt, "blob", "000_mask.png"), os.path.join(gt, "blob", "077_mask.png"))
    with pytest.raises(DatasetLayoutError, match=r"mask .*blob.077_mask\.png has no matching image"):
        load_split("mvtec", mvtec_copy, "widget", "test")


def test_mask_of_a_defect_without_test_folder(mvtec_copy):
    shutil.rmtree(os.path.join(mvtec_copy, "widget", "test", "scratch"))
    with pytest.raises(DatasetLayoutError, match=r"mask .*scratch.000_mask\.png has no matching image"):
        load_split("mvtec", mvtec_copy, "widget", "test")


def test_mask_size_mismatch(mvtec_copy):
    path = os.path.join(mvtec_copy, "widget", "ground_truth", "missing", "000_mask.png")
    Image.new("L", (SIZE + 1, SIZE)).save(path)
    with pytest.raises(DatasetLayoutError, match=r"mask .*000_mask\.png is 65x64 but image .*000\.png is 64x64"):
        load_split("mvtec", mvtec_copy, "widget", "test")


def test_visa_csv_pointing_at_missing_mask(visa_roots, tmp_path):
    root = shutil.copytree(visa_roots["raw"], tmp_path / "raw")
    os.remove(os.path.join(root, "widget", "Data", "Masks", "Anomaly", "002.png"))
    with pytest.raises(DatasetLayoutError, match=r"mask file not found: .*Anomaly.002\.png .*1cls\.csv line"):
        load_split("visa", root, "widget", "test")


# ---------------------------------------------------------------- generator


def test_generator_is_reproducible(tmp_path):
    kwargs = dict(categories=("a",), n_train=3, n_test_good=1, n_test_defect=1, image_size=48)
    first = file_digests(generate_mvtec_tree(tmp_path / "one", seed=5, **kwargs))
    assert first == file_digests(generate_mvtec_tree(tmp_path / "two", seed=5, **kwargs))
    other = file_digests(generate_mvtec_tree(tmp_path / "three", seed=6, **kwargs))
    assert first.keys() == other.keys() and all(first[name] != other[name] for name in first)
    visa = dict(categories=("a",), n_train=2, n_test_good=1, n_test_anomaly=2, image_size=48, seed=5)
    assert file_digests(generate_visa_tree(tmp_path / "v1", **visa)) == file_digests(generate_visa_tree(tmp_path / "v2", **visa))


def test_generator_refuses_to_mix_with_earlier_output(mvtec_root):
    with pytest.raises(FileExistsError, match="widget"):
        generate_mvtec_tree(mvtec_root)


def test_defect_masks_cover_exactly_the_changed_pixels(mvtec_root):
    for defect in DEFECT_TYPES:
        for index in range(N_DEFECT):
            image_id = f"test/{defect}/{index:03d}"
            image = np.asarray(Image.open(os.path.join(mvtec_root, "widget", image_id + ".png")))
            clean = render_normal("widget", image_id, SIZE)
            change = np.abs(image.astype(int) - clean.astype(int)).max(axis=2)
            mask = read_mask(os.path.join(mvtec_root, "widget", "ground_truth", defect, f"{index:03d}_mask.png"))
            assert mask.sum() > 0
            np.testing.assert_array_equal(mask, (change > 0).astype(np.uint8))
            assert change[mask == 1].min() >= MIN_CHANGE  # the defect is visible, not a faint shift


def test_normal_images_alike_but_not_identical(mvtec_root):
    images = [np.asarray(Image.open(os.path.join(mvtec_root, "widget", "train", "good", f"{i:03d}.png"))).astype(int)
              for i in range(2)]
    np.testing.assert_array_equal(images[0], render_normal("widget", "train/good/000", SIZE))
    difference = np.abs(images[0] - images[1])
    assert difference.any() and difference.mean() < 40
    other_category = render_normal("gadget", "train/good/000", SIZE).astype(int)
    assert np.abs(images[0] - other_category).mean() > difference.mean()


def test_several_regions_are_numbered():
    sample = render_sample("widget", "Anomaly/000", SIZE, ["scratch", "blob", "missing"], seed=1)
    assert set(np.unique(sample.mask)) - {0}
    np.testing.assert_array_equal(sample.mask > 0, (sample.image != sample.clean).any(axis=2))
    with pytest.raises(ValueError, match="unknown defect 'dent'"):
        render_sample("widget", "x", SIZE, ["dent"])


# ---------------------------------------------------------------- few-shot sampling


def test_sample_shots_reproducible_and_sorted(mvtec_root):
    train = load_split("mvtec", mvtec_root, "widget", "train")
    shots = sample_shots(train, 3, seed=0)
    assert shots == sample_shots(train, 3, seed=0)
    assert shots == sorted(shots) and len(set(shots)) == 3 and set(shots) <= set(train["path"])
    assert len({tuple(sample_shots(train, 3, seed)) for seed in range(5)}) > 1
    assert sample_shots(list(reversed(train["path"])), 3, seed=0) == shots  # basis is the sorted pool
    assert set(sample_shots(train, 2, seed=0)) <= set(sample_shots(train, 4, seed=0))
    assert sample_shots(train, N_TRAIN, seed=3) == sorted(train["path"])


def test_sample_shots_uses_only_normal_images(mvtec_root):
    test = load_split("mvtec", mvtec_root, "widget", "test")
    shots = sample_shots(test, N_GOOD, seed=1)
    assert all(os.sep + "good" + os.sep in path for path in shots)


@pytest.mark.parametrize("k", [0, N_TRAIN + 1])
def test_sample_shots_rejects_bad_k(mvtec_root, k):
    train = load_split("mvtec", mvtec_root, "widget", "train")
    with pytest.raises(ValueError, match=rf"k={k} shots from {N_TRAIN} normal images in .*widget.train.good"):
        sample_shots(train, k, seed=0)


# ---------------------------------------------------------------- bad input


def test_empty_category_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"category folder .*empty has no normal training images"):
        load_split("mvtec", tmp_path, "empty", "train")
    with pytest.raises(DatasetLayoutError, match=r"category folder .*empty has no test images"):
        load_split("mvtec", tmp_path, "empty", "test")
    with pytest.raises(DatasetLayoutError, match=r"no normal images in folder .*empty"):
        load_split("folder", tmp_path, "empty", "train")


def test_no_normal_images(tmp_path):
    good = tmp_path / "thing" / "train" / "good"
    good.mkdir(parents=True)
    (good / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetLayoutError, match=r"no normal training images \(expected them in .*thing.train.good\)"):
        load_split("mvtec", tmp_path, "thing", "train")


def test_unknown_names(mvtec_root, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'kitti'; known datasets: mvtec, visa, folder"):
        load_split("kitti", mvtec_root, "widget", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        list_categories("kitti", mvtec_root)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_split("mvtec", mvtec_root, "widget", "val")
    with pytest.raises(DatasetLayoutError, match=r"category folder not found: .*nope \(folders under .*: gadget, widget\)"):
        load_split("mvtec", mvtec_root, "nope", "train")
    with pytest.raises(DatasetLayoutError, match="is not a VisA tree"):
        load_split("visa", tmp_path, "widget", "train")


def test_corrupt_image_names_the_file(mvtec_copy):
    path = os.path.join(mvtec_copy, "widget", "train", "good", "004.png")
    with open(path, "wb") as handle:
        handle.write(b"definitely not a png")
    with pytest.raises(ImageReadError, match=r"cannot read image file .*004\.png"):
        load_split("mvtec", mvtec_copy, "widget", "train")
    assert len(load_split("mvtec", mvtec_copy, "widget", "train", check_files=False)) == N_TRAIN


def test_truncated_image_fails_on_read_with_the_file_name(mvtec_copy):
    path = os.path.join(mvtec_copy, "widget", "train", "good", "002.png")
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    train = load_split("mvtec", mvtec_copy, "widget", "train")  # the header is intact, so loading passes
    row = train.select_columns(["path", "mask_path"])[2]  # no decoding: datasets' own error would not name the file
    assert row["path"] == path
    with pytest.raises(ImageReadError, match=r"cannot read image file .*002\.png"):
        read_image(row)
    assert read_image(load_split("mvtec", mvtec_copy, "widget", "train")[0]).size == (SIZE, SIZE)
