"""MNIST from IDX files: reading, validation of the files, and the epoch order."""

from pathlib import Path

import pytest
import torch

from tests.helpers import MNIST_FILES, fake_digits, real_mnist_root, write_idx
from utils.dataset import epoch_order, eval_batches, load_mnist, read_idx, train_batches
from utils.errors import DataError


def test_idx_round_trip(tmp_path):
    images, labels = fake_digits(7, seed=3)
    write_idx(tmp_path / "img", images)
    write_idx(tmp_path / "lab", labels)
    assert torch.equal(read_idx(tmp_path / "img"), images)
    assert torch.equal(read_idx(tmp_path / "lab"), labels)


def test_load_mnist_scales_to_unit_range(fake_mnist):
    train = load_mnist(fake_mnist, "train", download=False)
    raw = read_idx(fake_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte")
    assert train.images.shape == (512, 1, 28, 28) and train.images.dtype == torch.float32
    assert train.labels.shape == (512,) and train.labels.dtype == torch.int64
    torch.testing.assert_close(train.images[:, 0], raw.float() / 255)
    assert train.images.min() >= 0 and train.images.max() <= 1
    assert len(load_mnist(fake_mnist, "test", download=False)) == 256


def test_bad_magic_number_is_reported(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x0d\x03" + bytes(16))
    with pytest.raises(DataError, match="bad magic number 00000d03"):
        read_idx(path)


def test_truncated_file_is_reported_with_sizes(tmp_path):
    images, _ = fake_digits(4, seed=0)
    path = tmp_path / "img"
    write_idx(path, images)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"3142 bytes but its header \[4, 28, 28\] needs 3152"):
        read_idx(path)


def test_missing_files_name_each_file_and_the_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, "train", download=False)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "--data_root"):
        assert name in message


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    first = epoch_order(1000, seed=42, epoch=1, device="cpu")
    assert torch.equal(first.sort().values, torch.arange(1000))
    assert torch.equal(first, epoch_order(1000, seed=42, epoch=1, device="cpu"))
    assert not torch.equal(first, epoch_order(1000, seed=42, epoch=2, device="cpu"))
    assert not torch.equal(first, epoch_order(1000, seed=43, epoch=1, device="cpu"))


def test_train_batches_drop_the_last_partial_batch():
    images = torch.arange(10).float().view(10, 1, 1, 1)
    order = torch.arange(9, -1, -1)
    batches = list(train_batches(images, 4, order))
    assert [b.flatten().tolist() for b in batches] == [[9, 8, 7, 6], [5, 4, 3, 2]]


def test_eval_batches_keep_every_image_in_order(fake_mnist):
    split = load_mnist(fake_mnist, "test", download=False)
    seen = torch.cat([labels for _, labels in eval_batches(split, 100)])
    assert [len(x) for x, _ in eval_batches(split, 100)] == [100, 100, 56]
    assert torch.equal(seen, split.labels)


def test_real_mnist_matches_its_published_statistics(real_mnist):
    train = load_mnist(real_mnist, "train", download=False)
    test = load_mnist(real_mnist, "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
    assert torch.bincount(train.labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert torch.bincount(test.labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert train.images.mean().item() == pytest.approx(0.1307, abs=1e-4)


def test_real_mnist_is_mnist_root_or_else_the_repos_data_folder_when_it_holds_mnist(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    assert real_mnist_root({}, tmp_path) is None  # an empty data/MNIST/raw/
    for name in MNIST_FILES[:3]:
        (raw / name).write_bytes(b"")
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    assert real_mnist_root({}, tmp_path) is None  # a file missing, or only gzipped
    (raw / MNIST_FILES[3]).write_bytes(b"")
    assert real_mnist_root({}, tmp_path) == tmp_path / "data"
    assert real_mnist_root({"MNIST_ROOT": ""}, tmp_path) == tmp_path / "data"  # empty is unset
    assert real_mnist_root({"MNIST_ROOT": "/mnist"}, tmp_path) == Path("/mnist")
    assert real_mnist_root({"MNIST_ROOT": "/mnist"}, tmp_path / "elsewhere") == Path("/mnist")
