"""edgezoo.data: idx files, Fashion-MNIST (full and embedded), composites, folders, transforms."""

import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgezoo.data import (
    COMPOSITE_NUM_CLASSES,
    DEBIAN_FASHION_MNIST_DIR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationTransform,
    CompositeFashionSegmentation,
    ItemArrays,
    SegmentationFolder,
    SegmentationTransform,
    embedded_dir,
    fashion_mnist_dir,
    is_fashion_mnist_dir,
    load_embedded_fashion_mnist,
    load_fashion_mnist,
    read_idx,
    write_idx,
)
from edgezoo.errors import DataError
from edgezoo.tasks import build_task_data

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_embedded_subset.py"
HAS_FULL_SET = is_fashion_mnist_dir(DEBIAN_FASHION_MNIST_DIR)
needs_full_set = pytest.mark.skipif(
    not HAS_FULL_SET, reason="Fashion-MNIST is not installed (apt install dataset-fashion-mnist)"
)


@pytest.mark.parametrize("name", ["a-idx3-ubyte.gz", "a-idx3-ubyte"])
def test_idx_round_trip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and np.array_equal(back, array)


def test_idx_truncated_file_names_the_problem(tmp_path):
    path = tmp_path / "bad-idx3-ubyte.gz"
    write_idx(path, np.zeros((4, 28, 28), np.uint8))
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "text")


def test_missing_directory_names_files_and_package(tmp_path):
    with pytest.raises(DataError) as err:
        fashion_mnist_dir(tmp_path / "nowhere")
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    assert "dataset-fashion-mnist" in str(err.value)


def test_incomplete_directory_names_missing_files(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError) as err:
        load_fashion_mnist(tmp_path, "train")
    message = str(err.value)
    assert "train-labels-idx1-ubyte.gz" in message and "t10k-images-idx3-ubyte.gz" in message
    assert "lacks" in message


def test_label_count_mismatch_is_reported(tmp_path):
    for split, n_labels in (("train", 3), ("t10k", 2)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.zeros(n_labels, np.uint8))
    with pytest.raises(DataError, match="one label per image"):
        load_fashion_mnist(tmp_path, "train")
    assert len(load_fashion_mnist(tmp_path, "test")) == 2


def test_embedded_subset_is_balanced_and_licensed():
    train, test = load_embedded_fashion_mnist("train"), load_embedded_fashion_mnist("test")
    assert train.images.shape == (6000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert np.bincount(train.labels).tolist() == [600] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    assert "Zalando" in (embedded_dir() / "LICENSE").read_text()
    assert "fashion-mnist" in (embedded_dir() / "README.md").read_text()
    assert sum(p.stat().st_size for p in embedded_dir().iterdir()) < 3_200_000


@needs_full_set
def test_embedded_subset_is_rebuilt_byte_identical_from_the_full_set(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_embedded_subset", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(sys, "argv", ["make_embedded_subset.py", "--out", str(tmp_path)])
    tool.main()
    for packaged in embedded_dir().iterdir():
        assert (tmp_path / packaged.name).read_bytes() == packaged.read_bytes(), packaged.name


def test_classification_transform_maps_grey_to_normalised_rgb():
    transform = ClassificationTransform(32, IMAGENET_MEAN, IMAGENET_STD)
    image = np.zeros((28, 28), np.uint8)
    image[10:20, 5:15] = 255
    x = transform(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    black = (0.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[:, 0, 0], black)
    # The three channels carry the same grey value before normalisation.
    raw = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(raw[0], raw[1], atol=1e-6) and torch.allclose(raw[0], raw[2], atol=1e-6)
    assert raw.max() > 0.99


def test_augmentation_follows_the_torch_seed():
    transform = ClassificationTransform(32, augment=True)
    image = np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)
    torch.manual_seed(3)
    first = torch.stack([transform(image) for _ in range(16)])
    torch.manual_seed(3)
    second = torch.stack([transform(image) for _ in range(16)])
    assert torch.equal(first, second)
    flipped = [torch.equal(x, first[0].flip(-1)) for x in first[1:]]
    assert any(flipped) and not all(flipped)


def _items(n: int = 6) -> ItemArrays:
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 4:24, 4:24] = 200
    images[:, 2, 2] = 10  # faint pixel: below the threshold, never labelled
    return ItemArrays(images, np.arange(n) % 10, "test items")


def test_composite_scenes_are_deterministic_and_labelled():
    a = CompositeFashionSegmentation(_items(), length=20, seed=5)
    b = CompositeFashionSegmentation(_items(), length=20, seed=5)
    for i in range(20):
        image_a, mask_a = a.scene(i)
        image_b, mask_b = b.scene(i)
        assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)
        assert mask_a.shape == (64, 64) and image_a.shape == (64, 64)
        assert set(np.unique(mask_a)) <= set(range(COMPOSITE_NUM_CLASSES))
        assert (mask_a > 0).sum() >= 400  # at least one 20x20 item
        assert np.array_equal(mask_a > 0, image_a == 200)
    other = CompositeFashionSegmentation(_items(), length=20, seed=6)
    assert any(not np.array_equal(a.scene(i)[1], other.scene(i)[1]) for i in range(20))


def test_composite_from_embedded_items_through_task_data():
    data = build_task_data("composite", "segmentation", 64)
    assert data.num_classes == 11 and "COMPOSITE" in data.description
    image, mask = data.train[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64
    with pytest.raises(DataError, match="segmentation"):
        build_task_data("composite", "classification", 32)


def test_embedded_classification_task_data():
    data = build_task_data("embedded", "classification", 32)
    assert (len(data.train), len(data.val), data.num_classes) == (6000, 1000, 10)
    x, y = data.val[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)


def _write_segmentation_folder(root: Path, masks: dict[str, np.ndarray]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for stem, mask in masks.items():
        Image.fromarray(np.full((*mask.shape, 3), 100, np.uint8)).save(
            root / "images" / f"{stem}.png"
        )
        Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / f"{stem}.png")


def test_segmentation_folder_reads_pairs_and_ignore_index(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[:8] = 2
    mask[0, 0] = 255
    _write_segmentation_folder(tmp_path, {"a": mask, "b": mask})
    data = SegmentationFolder(tmp_path, num_classes=3, transform=SegmentationTransform(32))
    assert len(data) == 2
    image, target = data[0]
    assert image.shape == (3, 32, 32) and target.shape == (32, 32)
    assert set(target.unique().tolist()) == {0, 2, 255}


def test_segmentation_mask_with_bad_ids_names_file_and_ids(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[0, :3] = [3, 7, 255]
    _write_segmentation_folder(tmp_path, {"scene": mask})
    data = SegmentationFolder(tmp_path, num_classes=3)
    with pytest.raises(DataError) as err:
        data[0]
    message = str(err.value)
    assert "scene.png" in message and "[3, 7]" in message and "num_classes is 3" in message


def test_segmentation_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="lacks images/"):
        SegmentationFolder(tmp_path, num_classes=2)
    _write_segmentation_folder(tmp_path, {"a": np.zeros((4, 4), np.uint8)})
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(DataError, match="lonely"):
        SegmentationFolder(tmp_path, num_classes=2)


def test_rgb_mask_is_rejected(tmp_path):
    _write_segmentation_folder(tmp_path, {"a": np.zeros((4, 4), np.uint8)})
    Image.new("RGB", (4, 4)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DataError, match="single-channel"):
        SegmentationFolder(tmp_path, num_classes=2)[0]


def test_user_folders_through_task_data(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / "cls" / split / cls).mkdir(parents=True)
            Image.new("RGB", (20, 20), (10, 20, 30)).save(tmp_path / "cls" / split / cls / "x.png")
    data = build_task_data(tmp_path / "cls", "classification", 32)
    assert data.classes == ("cat", "dog") and data.train[0][0].shape == (3, 32, 32)

    for split in ("train", "val"):
        _write_segmentation_folder(tmp_path / "seg" / split, {"a": np.ones((8, 8), np.uint8)})
    with pytest.raises(DataError, match="--num-classes"):
        build_task_data(tmp_path / "seg", "segmentation", 32)
    data = build_task_data(tmp_path / "seg", "segmentation", 32, num_classes=2)
    assert data.ignore_index == 255 and data.val[0][1].shape == (32, 32)


def test_bad_data_arguments(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_task_data(tmp_path / "missing", "classification", 32)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="lacks val/"):
        build_task_data(tmp_path, "classification", 32)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="not a classification image folder"):
        build_task_data(tmp_path, "classification", 32)
