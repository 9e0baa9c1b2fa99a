"""utils/quality.py's grades of sharpness and speckle: each moves the right way under blur, pixel
noise, a change of contrast and the removal of a class, on real test digits and on a hand-made
square; the variance of the Laplacian is shown to be fooled by noise, the failure fixed."""

import pytest
import torch

from utils.dataset import load_mnist
from utils.quality import background_speckle, edge_slope, gaussian_blur, sharpness


def noisy(images: torch.Tensor, sd: float, seed: int = 0) -> torch.Tensor:
    """Images plus Gaussian pixel noise of `sd`, clamped to [0, 1]."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sd * noise).clamp(0, 1)


# Hand-made: a hard-edged square on black, no data needed


def square(level: float = 1.0) -> torch.Tensor:
    """32 copies of a 10x10 square of `level` on black (noise differs from copy to copy)."""
    image = torch.zeros(32, 1, 28, 28)
    image[:, :, 9:19, 9:19] = level
    return image


def test_a_blurred_square_has_softer_edges_and_the_same_background():
    sharp, blurred = square(), gaussian_blur(square(), 1.0)
    assert edge_slope(blurred) < 0.8 * edge_slope(sharp)
    assert background_speckle(sharp) == 0.0 and background_speckle(blurred) < 1e-3


def test_a_dimmer_square_is_as_sharp_and_noise_does_not_sharpen_a_blurred_one():
    assert edge_slope(square(0.5)) == pytest.approx(edge_slope(square()), rel=1e-6)
    blurred = gaussian_blur(square(), 1.0)
    for sd in (0.01, 0.05, 0.1):
        assert edge_slope(noisy(blurred, sd)) <= edge_slope(blurred)
        assert background_speckle(noisy(blurred, sd)) > background_speckle(blurred)


def test_blank_images_have_no_edges_and_no_speckle():
    blank = torch.zeros(3, 1, 28, 28)
    assert edge_slope(blank) == 0.0 and background_speckle(blank) == 0.0


# Real test digits: the table


@pytest.fixture(scope="module")
def digits(real_mnist):
    """The first 1,000 real test images and their labels."""
    split = load_mnist(real_mnist, "test", download=False)
    return split.images[:1000], split.labels[:1000]


def grades(images: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Each grade of `images` as evaluate.py reports it against `real`."""
    return {
        "edge": edge_slope(images) / edge_slope(real),
        "speckle": background_speckle(images),
        "laplacian": sharpness(images) / sharpness(real),
    }


@pytest.fixture(scope="module")
def table(digits):
    real, labels = digits
    blurred = gaussian_blur(real, 1.0)
    rows = {
        "real": real,
        "blur 0.5": gaussian_blur(real, 0.5),
        "blur 1": blurred,
        "blur 2": gaussian_blur(real, 2.0),
        "blur 1 + noise 0.05": noisy(blurred, 0.05),
        "contrast x0.5": real * 0.5,
        "no 1s": real[labels != 1],
    }
    measured = {name: grades(images, real) for name, images in rows.items()}
    for name, row in measured.items():  # shown with -s
        print(f"{name:<20} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))
    return measured


def test_blur_lowers_edge_sharpness_step_by_step(table):
    edges = [table[name]["edge"] for name in ("real", "blur 0.5", "blur 1", "blur 2")]
    assert edges[0] == 1.0
    assert all(a > b for a, b in zip(edges, edges[1:], strict=False))
    assert edges[-1] < 0.6


def test_noise_raises_the_laplacian_and_the_speckle_but_not_edge_sharpness(table):
    clean, noise = table["blur 1"], table["blur 1 + noise 0.05"]
    assert noise["edge"] <= clean["edge"]
    assert noise["speckle"] > clean["speckle"] + 0.01
    assert noise["laplacian"] > 2 * clean["laplacian"]  # the failure edge_sharpness fixes


def test_half_the_contrast_keeps_edge_sharpness_but_quarters_the_laplacian(table):
    assert table["contrast x0.5"]["edge"] == pytest.approx(1.0, abs=0.03)
    assert table["contrast x0.5"]["laplacian"] == pytest.approx(0.25, rel=0.05)


def test_dropping_a_class_leaves_edge_sharpness_near_one(table):
    assert table["no 1s"]["edge"] == pytest.approx(1.0, abs=0.05)
    assert table["real"]["speckle"] < 0.005
