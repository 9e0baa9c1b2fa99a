"""Coverage and fidelity (utils/quality.py, evaluate.py): precision and recall of k-nearest-
neighbour manifolds on point sets whose radii are worked out by hand, the class histogram's KL
divergence on hand-made label sets, and evaluate.py --images telling real digits from a set that
holds only two classes."""

import json
import math

import pytest
import torch

from tests.helpers import run_main
from utils.dataset import MNISTSplit, load_mnist
from utils.quality import (
    CHUNK,
    class_histogram_kl,
    manifold_radii,
    precision_recall,
)


def line(*xs: float) -> torch.Tensor:
    """Points on a line, as features (N, 1)."""
    return torch.tensor(xs, dtype=torch.float64).view(-1, 1)


# Precision and recall


def test_radii_are_the_distance_to_the_kth_other_point():
    points = line(0, 1, 3, 7)
    # Distances from 0: 1, 3, 7; from 1: 1, 2, 6; from 3: 2, 3, 4; from 7: 4, 6, 7.
    assert manifold_radii(points, 1).tolist() == [1, 1, 2, 4]
    assert manifold_radii(points, 2).tolist() == [3, 2, 3, 6]
    # A duplicate is a neighbour at distance 0, not the point itself.
    assert manifold_radii(line(0, 0, 5), 1).tolist() == [0, 0, 5]
    with pytest.raises(ValueError, match="k = 4"):
        manifold_radii(points, 4)


def test_precision_and_recall_on_a_line_by_hand():
    real = line(0, 1, 2, 3, 4, 5)  # k = 1: every radius is 1, the manifold is [-1, 6]
    fake = line(0.5, 10)  # each the other's only neighbour: radius 9.5, manifold [-9, 19.5]
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == 0.5  # 0.5 lies inside, 10 outside
    assert recall == 1.0  # every real point lies within 9.5 of 0.5
    # A point exactly on a ball's edge is inside (closed balls).
    assert precision_recall(real, line(6, 7.5), k=1)[0] == 0.5


def test_identical_sets_score_one_and_far_disjoint_sets_zero():
    points = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    assert precision_recall(points, points.clone()) == (1.0, 1.0)
    assert precision_recall(points, points + 100.0) == (0.0, 0.0)


def test_a_fake_set_covering_half_of_the_real_one_has_recall_near_half():
    real, fake = line(*range(100)), line(*range(50))  # k = 1: radii 1, fake manifold [-1, 50]
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == 1.0
    assert recall == 51 / 100  # the real points 0 .. 50


def test_chunked_distances_agree_with_the_whole_matrix_at_once():
    gen = torch.Generator().manual_seed(1)
    real, fake = (
        torch.randn(CHUNK + 300, 3, generator=gen),
        torch.randn(900, 3, generator=gen) + 0.5,
    )
    k = 5
    d_rr, d_ff = (
        torch.cdist(real.double(), real.double()),
        torch.cdist(fake.double(), fake.double()),
    )
    real_radii = d_rr.sort(1).values[:, k]
    fake_radii = d_ff.sort(1).values[:, k]
    d_fr = torch.cdist(fake.double(), real.double())
    precision = (d_fr <= real_radii).any(1).double().mean().item()
    d_rf = d_fr.T
    recall = (d_rf <= fake_radii).any(1).double().mean().item()
    assert precision_recall(real, fake, k) == (precision, recall)
    assert 0 < recall < 1 and 0 < precision < 1


# The class histogram's KL divergence


def test_equal_histograms_give_zero_and_probabilities_are_read_by_their_argmax():
    labels = torch.arange(10).repeat(30)
    kl, samples, test = class_histogram_kl(labels.flip(0), labels)
    assert kl == pytest.approx(0.0, abs=1e-12)
    assert samples == test == pytest.approx([0.1] * 10)
    probs = torch.nn.functional.one_hot(labels, 10).float() * 0.8 + 0.02
    assert class_histogram_kl(probs, labels)[0] == pytest.approx(0.0, abs=1e-12)


def test_a_dropped_class_gives_the_finite_divergence_worked_out_by_hand():
    test_labels = torch.arange(10).repeat(10)  # 10 of each class
    sample_labels = torch.arange(1, 10).repeat(10)  # 10 of each class but 0
    kl, samples, test = class_histogram_kl(sample_labels, test_labels)
    # Plus one per class: test 11 of 110 each (0.1); samples 1 of 100 for class 0, 11 for others.
    expected = 0.1 * math.log(0.1 / 0.01) + 9 * 0.1 * math.log(0.1 / 0.11)
    assert kl == pytest.approx(expected, rel=1e-12)
    assert samples[0] == 0.0 and samples[1] == pytest.approx(1 / 9)
    assert test == pytest.approx([0.1] * 10)


# evaluate.py --images on real digits


def test_two_classes_alone_have_low_recall_and_a_large_class_kl(tmp_path, real_mnist):
    """2,000 real training digits, and the 1s and 7s among the training digits, each graded by
    evaluate.py (in this process, as its __main__ runs it) against the real test split: the
    first cover it, the second drop eight classes."""
    train = load_mnist(real_mnist, "train", download=False)
    rest = MNISTSplit(train.images[-10_000:], train.labels[-10_000:])
    two = (rest.labels == 1) | (rest.labels == 7)
    files = {"real": rest.images[:2000], "ones_sevens": rest.images[two][:2000]}
    commands = {}
    for name, images in files.items():
        torch.save(images, tmp_path / f"{name}.pt")
        commands[name] = [
            "evaluate.py",
            "--images",
            str(tmp_path / f"{name}.pt"),
            "--data_root",
            str(real_mnist),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / f"{name}.json"),
        ]
    graded = {}
    for name, result in {name: run_main(*argv) for name, argv in commands.items()}.items():
        assert result.returncode == 0, result.stderr
        graded[name] = json.loads((tmp_path / f"{name}.json").read_text())
        for key in ("precision", "recall", "class_kl"):
            assert key in result.stdout
    real, two_classes = graded["real"], graded["ones_sevens"]
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert real["class_kl"] < 0.05  # the shipped net misreads ~2 %: its histogram drifts a little
    # Eight classes dropped: the two classes' few wide balls still reach some other digits.
    assert two_classes["recall"] < 0.6 < real["recall"] - 0.3
    assert two_classes["class_kl"] > 1.0
    histogram = two_classes["class_histogram_samples"]
    assert len(histogram) == 10 and histogram[1] + histogram[7] > 0.8
    assert sum(real["class_histogram_test"]) == pytest.approx(1.0)
