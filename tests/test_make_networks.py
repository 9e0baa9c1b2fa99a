"""make_networks.py: makes the PIPS backbone and the evaluation CNN ahead of time, keeps a file
that is already there unless --force, and refuses --path with both networks."""

import torch

from tests.helpers import make_mnist_root, run_main, run_script
from utils.dataset import MNISTSplit
from utils.networks import load_network, make_network, network_record, training_half


def test_makes_one_network_into_path_then_keeps_it_unless_forced(tmp_path):
    # A small synthetic MNIST: the network is trained twice (made, then forced).
    mnist = make_mnist_root(tmp_path / "mnist", n_train=128, n_test=64)
    path = tmp_path / "nets" / "pips.pth"
    argv = ["--network", "pips", "--path", str(path), "--data_root", str(mnist), "--device", "cpu"]
    made = run_script("make_networks.py", *argv)  # a real process
    assert made.returncode == 0, made.stderr
    assert f"{path}: test accuracy" in made.stdout
    assert sum(p.numel() for p in load_network("pips", path).parameters()) > 0
    made_at = path.stat().st_mtime_ns

    kept = run_main("make_networks.py", *argv)  # in this process: nothing to train
    assert kept.returncode == 0, kept.stderr
    assert f"{path}: already there; pass --force" in kept.stdout
    assert path.stat().st_mtime_ns == made_at

    forced = run_main("make_networks.py", *argv, "--force")
    assert forced.returncode == 0, forced.stderr
    assert path.stat().st_mtime_ns != made_at


def test_path_with_both_networks_is_one_line_and_writes_nothing(tmp_path, fake_mnist):
    path = tmp_path / "net.pth"
    result = run_main("make_networks.py", "--path", str(path), "--data_root", str(fake_mnist))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--network pips" in result.stderr
    assert not path.exists()


def test_the_two_networks_learn_from_disjoint_halves_of_the_training_split(tmp_path):
    """Half 0 (the PIPS backbone's) and half 1 (the evaluation CNN's) share no image, hold every
    image between them, and are what make_network trains each network on."""
    n = 257
    images = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 28, 28)
    split = MNISTSplit(images.contiguous(), torch.arange(n) % 10)
    halves = [training_half(split, half) for half in (0, 1)]
    ids = [set(h.images[:, 0, 0, 0].long().tolist()) for h in halves]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(range(n))
    assert (len(ids[0]), len(ids[1])) == (129, 128)
    for h in halves:  # labels travel with their images
        assert torch.equal(h.labels, h.images[:, 0, 0, 0].long() % 10)
    assert ids[0] != set(range(129))  # a shuffle, not the first half of the files
    assert torch.equal(training_half(split, 0).images, halves[0].images)  # fixed, not random

    for name, half in (("pips", 0), ("eval", 1)):
        make_network(name, tmp_path / f"{name}.pth", split, split, epochs=0)
        record = network_record(tmp_path / f"{name}.pth")
        assert (record["train_half"], record["train_size"]) == (half, len(ids[half]))
