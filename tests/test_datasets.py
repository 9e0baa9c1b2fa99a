"""Fashion-MNIST beside MNIST: the same IDX reader, files plain or gzipped, in torchvision's layout
or in the data root itself (as Debian's dataset-fashion-mnist installs them), and one-line errors
that name the dataset."""

import argparse
import gzip
import json

import pytest
import torch

import evaluate
import utils.views as views
from tests.helpers import (
    MNIST_FILES,
    assert_png,
    fake_digits,
    infer_argv,
    make_mnist_root,
    run_main,
    run_script,
    train_argv,
)
from utils.checkpoint import load_checkpoint, trained_on
from utils.dataset import DATASETS, MNISTSplit, find_files, load_mnist
from utils.errors import CheckpointError, DataError
from utils.networks import file_sha256, load_network, make_network


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
        (
            lambda data: gzip.compress(gzip.decompress(data)[:-5], mtime=0),
            "bytes but its header",
            "original Fashion-MNIST file",
        ),
    ],
)
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
    with pytest.raises(
        DataError,
        match="label 12 at index 3 is not a class 0-9; replace it "
        "with the original Fashion-MNIST file",
    ):
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


# The dataset through the scripts: train.py --dataset, the weights it writes, evaluate and infer


def test_the_other_datasets_original_files_are_refused(tmp_path, real_mnist):
    """The two datasets share file names: a flat folder holding MNIST's files is not taken for
    Fashion-MNIST's (each original file is known by its first bytes)."""
    for name in MNIST_FILES:
        (tmp_path / name).symlink_to(real_mnist / "MNIST" / "raw" / name)
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, "train", download=False, dataset="fashion_mnist")
    assert str(err.value) == (
        f"{tmp_path / 'train-images-idx3-ubyte'}: is MNIST's file, not Fashion-MNIST's; pass "
        "--data_root DIR whose FashionMNIST/raw/ holds Fashion-MNIST's files"
    )
    assert len(load_mnist(tmp_path, "test", download=False)) == 10_000  # as MNIST: taken


def test_a_network_file_of_another_dataset_is_refused(tmp_path):
    split = load_mnist(make_mnist_root(tmp_path, n_train=16, n_test=8), "test", download=False)
    path = tmp_path / "pips.pth"
    make_network("pips", path, split, split, epochs=0)
    assert load_checkpoint(path)["dataset"] == "mnist"
    with pytest.raises(CheckpointError) as err:
        load_network("pips", path, dataset="fashion_mnist")
    assert str(err.value) == (
        f"{path}: holds the PIPS backbone CNN trained on MNIST, not Fashion-MNIST; point at the "
        "Fashion-MNIST one (checkpoints/fashion_mnist_pips_cnn.pth)"
    )


def test_a_checkpoint_names_its_dataset_or_is_mnists(tmp_path):
    """Weights files name it, resumable checkpoints hold it in their train config, and a
    checkpoint from before datasets (or the reference's) is MNIST's."""
    fashion_config = {"data": {"train_bs": 128, "val_bs": 128, "dataset": "fashion_mnist"}}
    assert trained_on({"dataset": "fashion_mnist"}, "final_model.pth") == "fashion_mnist"
    assert trained_on({"train_config": fashion_config}, "checkpoint_epoch_001.pth") == (
        "fashion_mnist"
    )
    assert trained_on({"train_config": {"data": {"train_bs": 128}}}, "old.pth") == "mnist"
    assert trained_on({"model_state_dict": {}}, "reference.pth") == "mnist"
    with pytest.raises(CheckpointError, match=r"^x.pth: names dataset 'cifar10', not one of "):
        trained_on({"dataset": "cifar10"}, "x.pth")


def test_views_name_fashion_mnist_classes():
    split = MNISTSplit(torch.zeros(3, 1, 28, 28), torch.tensor([0, 9, 5]), "fashion_mnist")
    args = argparse.Namespace(image_index=1, grid_size=8)
    assert views.test_images(args, split)[1] == ["#1: Ankle boot", "#2: Sandal"]
    assert (
        split.spec.noun == "class" and MNISTSplit(split.images, split.labels).spec.noun == "digit"
    )


def test_fashion_mnist_trains_grades_and_is_refused_where_it_does_not_belong(tmp_path):
    """A real train.py run with --dataset fashion_mnist on written .gz files in a flat folder:
    the start line, the run's config and its weights file name the dataset; evaluate.py grades
    it on Fashion-MNIST (training a missing evaluation CNN on Fashion-MNIST's half 1) and refuses
    --dataset mnist. The composite scheme trains there too, making its PIPS backbone on
    Fashion-MNIST; resuming the run as MNIST, or the composite scheme with the MNIST PIPS
    backbone, is one line."""
    root = make_mnist_root(tmp_path / "data", n_train=256, n_test=64, flat=True, gz=True)
    run = tmp_path / "run"
    argv = train_argv(
        "simple",
        "configs/model_simple_config.json",
        "configs/train_simple_config.json",
        root,
        run,
        "--epochs",
        "1",
        "--dataset",
        "fashion_mnist",
        "--set",
        "save_every=1",
    )
    result = run_script(*argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("simple scheme on cpu: 256 Fashion-MNIST training images")
    assert json.loads((run / "train_config.json").read_text())["data"]["dataset"] == "fashion_mnist"
    assert load_checkpoint(run / "final_model.pth")["dataset"] == "fashion_mnist"

    graded = run_main(
        "evaluate.py",
        "--model_config",
        run / "model_config.json",
        "--ckpt_path",
        run / "final_model.pth",
        "--data_root",
        root,
        "--eval_net",
        tmp_path / "eval.pth",
        "--num_samples",
        "100",
        "--out",
        tmp_path / "eval.json",
    )
    assert graded.returncode == 0, graded.stderr
    assert (
        "training the evaluation CNN (4 epochs on half 1 of the Fashion-MNIST training "
        "split: 128 of 256 images"
    ) in graded.stdout
    assert json.loads((tmp_path / "eval.json").read_text())["dataset"] == "fashion_mnist"
    assert load_checkpoint(tmp_path / "eval.pth")["dataset"] == "fashion_mnist"

    pips = tmp_path / "pips.pth"  # the composite scheme makes its backbone on Fashion-MNIST
    argv = train_argv(
        "composite",
        "configs/model_composite_fashion_mnist_config.json",
        "configs/train_composite_config.json",
        root,
        tmp_path / "composite",
        "--epochs",
        "1",
        "--dataset",
        "fashion_mnist",
        "--set",
        f'pips_config.weights_path="{pips}"',
    )
    composite = run_main(*argv)
    assert composite.returncode == 0, composite.stderr
    assert (
        "training the PIPS backbone CNN (4 epochs on half 0 of the Fashion-MNIST training split"
    ) in composite.stdout
    assert load_checkpoint(pips)["dataset"] == "fashion_mnist"
    assert load_checkpoint(tmp_path / "composite/final_model.pth")["dataset"] == "fashion_mnist"

    refused = {
        "evaluate as MNIST": (
            "evaluate.py",
            "--model_config",
            run / "model_config.json",
            "--ckpt_path",
            run / "final_model.pth",
            "--data_root",
            root,
            "--dataset",
            "mnist",
            "--out",
            tmp_path / "mnist.json",
        ),
        "resume as MNIST": (
            *train_argv(
                "simple",
                "configs/model_simple_config.json",
                "configs/train_simple_config.json",
                root,
                run,
                "--epochs",
                "2",
                "--set",
                "save_every=1",
            ),
            "--resume",
            "auto",
        ),
        "MNIST PIPS": train_argv(
            "composite",
            "configs/model_composite_mnist_config.json",
            "configs/train_composite_config.json",
            root,
            tmp_path / "c",
            "--dataset",
            "fashion_mnist",
        ),
    }
    says = {
        "evaluate as MNIST": f"error: --dataset mnist: {run / 'final_model.pth'} was trained on "
        "Fashion-MNIST; pass --dataset fashion_mnist, or leave --dataset out",
        "resume as MNIST": "error: configs/train_simple_config.json: field 'data.dataset' is "
        "'mnist' but the run used 'fashion_mnist'; only the epoch count may change on resume",
        "MNIST PIPS": "error: configs/model_composite_mnist_config.json: field "
        "'pips_config.weights' = \"mnist\" is the PIPS backbone trained on MNIST, but the run "
        "trains on Fashion-MNIST (data.dataset); use a model config whose pips_config.weights "
        'is "fashion_mnist", e.g. configs/model_composite_fashion_mnist_config.json',
    }
    for name, command in refused.items():
        result = run_main(*command)
        assert (result.returncode, result.stderr) == (2, says[name] + "\n"), name
    assert not (tmp_path / "mnist.json").exists() and not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory, real_fashion_mnist):
    """A short simple-scheme run on the real Fashion-MNIST (torchvision's layout)."""
    run = tmp_path_factory.mktemp("fashion") / "run"
    argv = train_argv(
        "simple",
        "configs/model_simple_config.json",
        "configs/train_simple_config.json",
        real_fashion_mnist,
        run,
        "--epochs",
        "1",
        "--subset",
        "256",
        "--dataset",
        "fashion_mnist",
    )
    result = run_main(*argv)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(run / "final_model.pth")["dataset"] == "fashion_mnist"
    return run


def test_the_shipped_fashion_mnist_grader_grades_a_real_run(fashion_run, real_fashion_mnist):
    shipped = evaluate.shipped_eval_net("fashion_mnist")
    result = run_main(
        "evaluate.py",
        "--model_config",
        fashion_run / "model_config.json",
        "--ckpt_path",
        fashion_run / "final_model.pth",
        "--data_root",
        real_fashion_mnist,
        "--dataset",
        "fashion_mnist",
        "--num_samples",
        "200",
        "--out",
        fashion_run / "eval.json",
    )
    assert result.returncode == 0, result.stderr
    assert "training the" not in result.stdout
    graded = json.loads((fashion_run / "eval.json").read_text())
    assert graded["dataset"] == "fashion_mnist" and graded["eval_net"] == str(shipped)
    assert graded["eval_net_sha256"] == file_sha256(shipped)
    # The shipped grader on the real test images: the accuracy recorded when it was made.
    assert graded["test_accuracy"] == pytest.approx(graded["eval_net_test_accuracy"], abs=1e-6)
    assert graded["test_accuracy"] > 0.85


@pytest.mark.parametrize("flat", [False, True], ids=["torchvision", "flat"])
def test_every_view_draws_a_real_fashion_mnist_run_from_either_layout(
    fashion_run, real_fashion_mnist, tmp_path, flat
):
    root = real_fashion_mnist
    if flat:  # the four files in the data root itself, as Debian installs them
        root = tmp_path / "flat"
        root.mkdir()
        for path in find_files(real_fashion_mnist, "fashion_mnist")[1].values():
            (root / path.name).symlink_to(path)
    run = fashion_run
    for mode in views.VIEWS:
        png = tmp_path / f"{mode}.png"
        flags = ["--run_dir", str(run)] if mode == "curves" else []
        flags += ["--ckpt_path_b", str(run / "final_model.pth")] * (mode == "compare")
        flags += ["--image_index", "3"] if mode == "traverse" else []
        result = run_main(
            "infer.py", "--mode", mode, "--data_root", root, *infer_argv(run, png, *flags)
        )
        assert result.returncode == 0, (mode, result.stderr)
        assert_png(png)
