"""PIPS, on both backbones: zero for identical inputs, positive otherwise, frozen, and clear
about missing weights."""

import copy

import pytest
import torch
from torch import nn

from model.pips import PIPS, direct_distance
from utils.config import PIPSConfig
from utils.dataset import load_mnist
from utils.errors import CheckpointError
from utils.networks import build_pips, make_network, vgg16_weights_file


@pytest.fixture(scope="module")
def vgg_pips():
    torch.manual_seed(0)
    return build_pips(PIPSConfig(weights="random", input_size=32))


@pytest.fixture(scope="module")
def mnist_pips(tmp_path_factory, fake_mnist):
    path = tmp_path_factory.mktemp("pips") / "mnist_pips_cnn.pth"
    split = load_mnist(fake_mnist, "test", download=False)
    make_network("pips", path, split, split, epochs=0)  # untrained weights, saved the usual way
    return build_pips(PIPSConfig(backbone="mnist_cnn", weights_path=str(path)))


@pytest.fixture(params=["vgg16", "mnist_cnn"])
def pips(request):
    """The same formula over either backbone: the properties below hold for both."""
    return request.getfixturevalue("vgg_pips" if request.param == "vgg16" else "mnist_pips")


def test_identical_images_are_at_distance_zero(pips):
    x = torch.rand(3, 1, 28, 28)
    assert pips(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_distance_by_hand_on_a_two_channel_identity_slice():
    # Image 1: unit((3, 4)) = (0.6, 0.8) against unit((1, 0)) = (1, 0): (0.16 + 0.64) / 2 = 0.4.
    # Image 2: a zero feature vector stays zero; against unit((0, 2)) = (0, 1): 1 / 2 = 0.5.
    # Image 3: unit((1, 1)) against a zero target: |unit| = 1, so 1 / 2 = 0.5.
    pips = PIPS([nn.Identity()], input_size=1, imagenet=False)
    x_hat = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 1.0]]).view(3, 2, 1, 1).requires_grad_()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]).view(3, 2, 1, 1)
    distance = pips(x_hat, x)
    assert distance.item() == pytest.approx((0.4 + 0.5 + 0.5) / 3, abs=1e-6)
    distance.backward()
    # d/df of |unit(f) - t|^2 / 2 / 3 for f = (3, 4), t = (1, 0): the part of (unit(f) - t)
    # across f, over |f| = 5: (-0.4, 0.8) minus its projection on (0.6, 0.8) (which is 0.4).
    expected = (torch.tensor([-0.4, 0.8]) - 0.4 * torch.tensor([0.6, 0.8])) / 5 / 3
    assert torch.allclose(x_hat.grad[0].flatten(), expected, atol=1e-6)
    assert torch.isfinite(x_hat.grad).all()  # also at the zero feature vector


@pytest.mark.parametrize("noise", [0.2, 1e-3])
def test_expanded_form_matches_the_direct_formula_in_float64(pips, noise):
    torch.manual_seed(1)
    x = torch.rand(4, 1, 28, 28).clamp(0.01, 0.99)
    x_hat = (x + noise * torch.randn_like(x)).requires_grad_(True)
    fast = pips(x_hat, x)
    (fast_grad,) = torch.autograd.grad(fast, x_hat)
    x_hat64 = x_hat.detach().double().requires_grad_(True)
    truth = direct_distance(copy.deepcopy(pips).double(), x_hat64, x.double())
    (truth_grad,) = torch.autograd.grad(truth, x_hat64)
    # The expanded terms cancel for close images: the value's rounding is absolute (up to 1e-8
    # seen, at a distance of 1e-7), while the gradient keeps a relative precision (1.4e-3 seen;
    # the direct form's in float32, 0.8e-3).
    assert fast.item() == pytest.approx(truth.item(), rel=1e-4, abs=1e-7)
    assert (fast_grad.double() - truth_grad).norm() <= 3e-3 * truth_grad.norm()


def test_bfloat16_autocast_keeps_identical_images_at_distance_zero(pips):
    x = torch.rand(3, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pips(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_different_images_are_at_positive_distance_symmetric(pips):
    a, b = torch.rand(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    d = pips(a, b).item()
    assert d > 1e-4
    assert pips(b, a).item() == pytest.approx(d, rel=1e-5)


def test_distance_is_the_batch_mean_of_per_image_distances(pips):
    a, b = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    per_image = torch.stack([pips(a[i : i + 1], b[i : i + 1]) for i in range(4)])
    assert pips(a, b).item() == pytest.approx(per_image.mean().item(), rel=1e-5)


def test_each_layer_term_is_bounded_by_four(vgg_pips):
    # Unit vectors differ by at most 2 in norm, so each of the five terms is <= 4: total <= 20.
    assert vgg_pips(torch.rand(2, 1, 28, 28), torch.zeros(2, 1, 28, 28)).item() <= 20.0


def test_gradients_reach_only_the_first_input(pips):
    x_hat = torch.rand(2, 1, 28, 28, requires_grad=True)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    pips(x_hat, x).backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert x.grad is None
    assert not any(p.requires_grad for p in pips.parameters())


def test_backbone_stays_in_eval_mode(pips):
    pips.train()
    assert not pips.training and not any(m.training for m in pips.modules())


def test_slices_cover_vgg16_features_up_to_the_last_pool(vgg_pips):
    assert [len(s) for s in vgg_pips.slices] == [4, 5, 7, 7, 7]


def test_missing_imagenet_weights_are_downloaded_and_offline_it_is_one_line(tmp_path, monkeypatch):
    """As torchvision does, a missing file is downloaded into torch's hub cache; when that fails
    (here: a stand-in for the network that refuses), one line says where the file goes and how
    to train offline. The network itself is never touched."""
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    tried = []

    def offline(url, dst, *args, **kwargs):
        tried.append((url, dst))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError) as err:
        build_pips(PIPSConfig(weights="imagenet"))
    file = vgg16_weights_file()
    assert tried == [("https://download.pytorch.org/models/" + file.name, str(file))]
    assert str(err.value) == (
        f"PIPS needs the ImageNet VGG16 weights file {file.name} in {tmp_path}/hub/checkpoints/ "
        f"and downloading it from https://download.pytorch.org/models/{file.name} failed "
        "([Errno -3] Temporary failure in name resolution); copy the file there, or train "
        "offline with the MNIST backbone (--model_config configs/model_composite_mnist_config.json)"
    )


def test_an_unreadable_cached_imagenet_file_is_named_not_downloaded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    file = vgg16_weights_file()
    file.parent.mkdir(parents=True)
    file.write_bytes(b"half a download")
    monkeypatch.setattr(torch.hub, "download_url_to_file", pytest.fail)
    with pytest.raises(CheckpointError) as err:
        build_pips(PIPSConfig(weights="imagenet"))
    message = str(err.value)
    assert message.startswith(f"{file}: not a readable VGG16 weights file (")
    assert message.endswith("); delete it, and it is downloaded again") and "\n" not in message


# The MNIST CNN backbone: its four stages, on 28x28 grayscale as it is


def test_mnist_backbone_takes_four_stages_without_resize_or_imagenet_scaling(mnist_pips):
    assert len(mnist_pips.slices) == 4 and mnist_pips.input_size == 28
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(mnist_pips._prepare(x), x)


def test_a_missing_mnist_backbone_file_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(CheckpointError, match="make_networks.py --network pips") as err:
        build_pips(PIPSConfig(backbone="mnist_cnn", weights_path=str(tmp_path / "none.pth")))
    assert "\n" not in str(err.value)
