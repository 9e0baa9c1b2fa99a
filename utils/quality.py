"""Sample-quality measures evaluate.py reports: Frechet distance and Laplacian sharpness.

Frechet distance between Gaussians fitted to two feature sets:
    ||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2)),
with tr((C1 C2)^(1/2)) = tr((S C2 S)^(1/2)), S = C1^(1/2): both square roots are of symmetric
PSD matrices, taken by eigen-decomposition in float64 (no scipy).
"""

import torch
import torch.nn.functional as F

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _psd_eigenvalues(matrix: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix, rounding noise below 0 clamped to 0."""
    return torch.linalg.eigvalsh(matrix).clamp(min=0)


def frechet_from_stats(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2); means (D,), covariances (D, D)."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    values, vectors = torch.linalg.eigh(cov1)
    root1 = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = root1 @ cov2 @ root1
    trace_root = _psd_eigenvalues((cross + cross.T) / 2).sqrt().sum()
    distance = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * trace_root
    return max(0.0, distance.item())


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D), in float64, of features (N, D)."""
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between feature sets (N, D) and (M, D)."""
    return frechet_from_stats(*feature_stats(features_a), *feature_stats(features_b))


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Per-image variance of the 3x3 Laplacian (no padding): (N, 1, H, W) in [0, 1] -> (N,)."""
    edges = F.conv2d(images.float(), LAPLACIAN.to(images.device).view(1, 1, 3, 3))
    return edges.flatten(1).var(dim=1)


def sharpness(images: torch.Tensor) -> float:
    """Mean variance of the Laplacian over a set of images (N, 1, H, W) in [0, 1]; 0 if flat."""
    return laplacian_variance(images).mean().item()
