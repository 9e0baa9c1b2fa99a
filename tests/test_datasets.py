"""Fashion-MNIST beside MNIST: the same IDX reader, files plain or gzipped, in torchvision's layout
or in the data root itself (as Debian's dataset-fashion-mnist installs them), and one-line errors
that name the dataset."""

import gzip

import pytest
import torch

from tests.helpers import fake_digits, make_mnist_root
from utils.dataset import DATASETS, find_files, load_mnist
from utils.errors import DataError


@pytest.mark.parametrize("flat", [False, True], ids=["torchvision", "flat"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_fashion_mnist_reads_either_layout_plain_or_gzipped(tmp_path, flat, gz):
    root = make_mnist_root(tmp_path, n_train=64, n_test=32, folder="FashionMNIST", flat=flat, gz=gz)
    train = load_mnist(root, "train", download=False, dataset="fashion_mnist")
    images, labels = fake_digits(64, 0)  # what make_mnist_root wrote for the training split
    assert torch.equal(train.labels, labels.long())
    torch.testing.assert_close(train.images[:, 0], images.float() / 255)
    assert len(load_mnist(root, "test", download=False, dataset="fashion_mnist")) == 32
    folder, found = find_files(root, "fashion_mnist")
    assert folder == (root if flat else root / "FashionMNIST" / "raw")
    assert all(p.name.endswith(".gz") == gz for p in found.values()) and len(found) == 4


def test_missing_files_name_the_dataset_its_folder_and_both_forms(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, "train", download=False, dataset="fashion_mnist")
    assert str(err.value) == (
        f"Fashion-MNIST files missing from {tmp_path / 'FashionMNIST' / 'raw'}/: "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte; copy the four IDX files (plain or .gz) there, or pass "
        "--data_root DIR whose FashionMNIST/raw/ holds them"
    )


@pytest.mark.parametrize(
    ("damage", "says", "fix"),
    [
        (lambda data: data[: len(data) // 2], "not a whole gzip file", "original file"),
        (lambda data: b"not gzip at all", "not a whole gzip file", "original file"),
        (lambda data: gzip.compress(gzip.decompress(data)[:-5], mtime=0), "bytes but its header",
         "original Fashion-MNIST file"),
    ],
)  # fmt: skip
def test_a_damaged_gz_file_is_one_line_naming_it_and_the_dataset(tmp_path, damage, says, fix):
    root = make_mnist_root(tmp_path, n_train=16, n_test=8, folder="FashionMNIST", gz=True)
    path = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError) as err:
        load_mnist(root, "train", download=False, dataset="fashion_mnist")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message
    assert message.endswith(f"replace it with the {fix}")


def test_a_label_past_9_names_a_class_of_fashion_mnist(tmp_path):
    root = make_mnist_root(tmp_path, n_train=16, n_test=8, folder="FashionMNIST")
    path = root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[8 + 3] = 12  # the fourth label
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="label 12 at index 3 is not a class 0-9; replace it "
                                        "with the original Fashion-MNIST file"):  # fmt: skip
        load_mnist(root, "train", download=False, dataset="fashion_mnist")


def test_the_class_names_are_fashion_mnists_ten_in_label_order():
    assert DATASETS["fashion_mnist"].classes[0] == "T-shirt/top"
    assert DATASETS["fashion_mnist"].classes[9] == "Ankle boot"
    assert DATASETS["mnist"].classes == tuple("0123456789")


def test_real_fashion_mnist_has_its_published_counts_and_mean(real_fashion_mnist):
    """../shared/data/README.md: 6,000 training and 1,000 test images per class, training pixel
    mean 0.2860; read from the .gz files as Debian installs them."""
    train = load_mnist(real_fashion_mnist, "train", download=False, dataset="fashion_mnist")
    test = load_mnist(real_fashion_mnist, "test", download=False, dataset="fashion_mnist")
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.images.mean().item() == pytest.approx(0.2860, abs=5e-5)
    assert train.images.shape == (60000, 1, 28, 28)
