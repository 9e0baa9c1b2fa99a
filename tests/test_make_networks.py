"""make_networks.py: makes the PIPS backbone and the evaluation CNN ahead of time, keeps a file
that is already there unless --force, and refuses --path with both networks."""

from tests.helpers import make_mnist_root, run_script
from utils.networks import load_network


def test_makes_one_network_into_path_then_keeps_it_unless_forced(tmp_path):
    # A small synthetic MNIST: the network is trained twice (made, then forced).
    mnist = make_mnist_root(tmp_path / "mnist", n_train=128, n_test=64)
    path = tmp_path / "nets" / "pips.pth"
    argv = ["--network", "pips", "--path", str(path), "--data_root", str(mnist),
            "--device", "cpu"]  # fmt: skip
    made = run_script("make_networks.py", *argv)
    assert made.returncode == 0, made.stderr
    assert f"{path}: test accuracy" in made.stdout
    assert sum(p.numel() for p in load_network("pips", path).parameters()) > 0
    made_at = path.stat().st_mtime_ns

    kept = run_script("make_networks.py", *argv)
    assert kept.returncode == 0, kept.stderr
    assert f"{path}: already there; pass --force" in kept.stdout
    assert path.stat().st_mtime_ns == made_at

    forced = run_script("make_networks.py", *argv, "--force")
    assert forced.returncode == 0, forced.stderr
    assert path.stat().st_mtime_ns != made_at


def test_path_with_both_networks_is_one_line_and_writes_nothing(tmp_path, fake_mnist):
    path = tmp_path / "net.pth"
    result = run_script("make_networks.py", "--path", str(path), "--data_root", str(fake_mnist))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--network pips" in result.stderr
    assert not path.exists()
