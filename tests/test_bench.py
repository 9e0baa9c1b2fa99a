"""bench.py's compute floor: the FLOP count it divides by the measured rates, against the
default simple model's operations counted by hand."""

from bench import SIMPLE, epoch_flops
from tests.helpers import REPO, make_mnist_root

# The default model's linear layers as (in, out): encoder 784-784-512-256-128 and two heads to
# the 2-D latent; decoder 2-128-256-512-784 and the output layer 784 -> 784.
ENCODER = [(784, 784), (784, 512), (512, 256), (256, 128), (128, 2), (128, 2)]
DECODER = [(2, 128), (128, 256), (256, 512), (512, 784), (784, 784)]


def test_simple_epoch_flops_match_the_model_counted_by_hand(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    root = make_mnist_root(tmp_path / "mnist", n_train=4 * 128, n_test=200)
    macs = sum(a * b for a, b in ENCODER + DECODER)  # multiply-adds per image, forward
    # A training step: the forward pass, then the weight gradient and the input gradient of every
    # layer, except the input gradient of the first (the images need none).
    per_step = 128 * (2 * macs + 2 * 2 * macs - 2 * 784 * 784)
    per_validation_image = 2 * macs
    flops = epoch_flops(SIMPLE, "simple", str(root))
    assert flops == {"gemm": 4 * per_step + 200 * per_validation_image, "conv": 0}
