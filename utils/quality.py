"""Sample-quality measures evaluate.py reports: Frechet distance, precision and recall, the class
histogram's KL divergence, edge sharpness, background speckle and the variance of the Laplacian.
Images are (N, 1, H, W) in [0, 1], strokes bright on a dark background, as in MNIST.

Frechet distance between Gaussians fitted to two feature sets:
    ||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2)),
with tr((C1 C2)^(1/2)) = tr((S C2 S)^(1/2)), S = C1^(1/2): both square roots are of symmetric
PSD matrices, taken by eigen-decomposition in float64 (no scipy).

Precision and recall (Kynkaanniemi et al. 2019, "Improved precision and recall metric for
assessing generative models"): each feature set's manifold is the union of closed balls around
its points, each of radius the distance to that point's k-th nearest neighbour in its own set
(itself excluded). Precision is the share of generated points inside the real manifold (are the
samples realistic?); recall is the share of real points inside the generated manifold (is every
kind of real image produced?). Unlike the Frechet distance, they tell a blurry model (precision
falls) from one that drops modes (recall falls). Distances are Euclidean, taken in float64 (the
ball test compares a distance against a radius, where float32's rounding would decide ties), a
chunk of rows at a time so that 10,000 x 10,000 pairs never sit in memory at once.

Class histogram KL: the histogram of the classes the evaluation CNN assigns the samples (argmax)
against the test split's label histogram, as KL(test || samples) in nats. Each class count gets
one extra count (add-one smoothing) before normalising: a class the samples never show would
otherwise make the divergence infinite; with it, a dropped class gives a finite number that
grows with the sample count, large beside the near-zero of a model that keeps every class.

Edge sharpness: the slope of the strokes' edges in units of the stroke's own brightness, i.e.
one over the width of the edge in pixels. For each image, S = the image smoothed by a Gaussian of
sigma 1 and c = max(S) (the stroke level); stroke pixels are those with S >= c / 2. For each
pixel p, S'(p) is the image smoothed likewise from the pixels of p's checkerboard colour alone.
The edge band is the pixels around mid-grey, weighted w(p) = exp(-8 ((S'(p) - c / 2) / c)^2)
(a smooth weight, so that noise cannot flip pixels in or out of it). At each pixel p,
    slope(p) = (grad I(p) . n(p)) / c,
grad I the central differences of the image itself and n(p) the unit gradient of S' at p,
across the edge. edge_slope is the w-weighted mean of slope over all pixels of a set.
Why this form: blur widens edges and lowers the slope; dividing by c makes it blind to contrast
(images * 0.5 halve the slope and c alike); and pixel noise cannot raise it, because the slope
is a signed projection, not a magnitude (which any noise inflates), and both the band's
weights and n(p) come from S', the pixels of p's own checkerboard colour, while the central
differences read p's four neighbours, all of the other colour: the noise that moves the slope
cannot choose where it is read, and moves it down as often as up.
Clamping noisy pixels to [0, 1] lifts the dark side of an edge and lowers the bright side, which
only lowers the slope. Images whose stroke level is under MIN_STROKE have no edges.

Background speckle: the mean intensity of the pixels more than SPECKLE_MARGIN pixels (in either
axis) from every stroke pixel, in absolute intensity units: real digits are ~0 there; pixel
noise, specks and halos raise it.

The variance of the Laplacian, the older sharpness measure, rises with pixel noise and with the
square of the contrast, so it is reported as what it is, not as sharpness.
"""

import math

import torch
import torch.nn.functional as F

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
STROKE_SIGMA = 1.0  # the smoothing that finds strokes and their edges' direction
MIN_STROKE = 0.05  # a smoothed peak below this is a blank image: no strokes, no edges
SPECKLE_MARGIN = 3
CHUNK = 1000  # images measured at once, to bound memory
NEIGHBOURS = 5  # k of precision and recall, as Kynkaanniemi et al. use
NUM_CLASSES = 10


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


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor):
    """(chunk of a's rows, their Euclidean distances (rows, M) to every point of b), in float64,
    CHUNK rows at a time."""
    b = b.double()
    for rows in a.double().split(CHUNK):
        yield rows, torch.cdist(rows, b)


def manifold_radii(features: torch.Tensor, k: int = NEIGHBOURS) -> torch.Tensor:
    """Per point of features (N, D), the distance to its k-th nearest neighbour among the other
    points (N,), float64. The point itself is the nearest at distance 0 and is skipped; a duplicate
    of it counts as a neighbour at distance 0."""
    if not 1 <= k < len(features):
        raise ValueError(f"k = {k} needs 1 <= k < the number of points ({len(features)})")
    radii = [
        d.topk(k + 1, dim=1, largest=False).values[:, k]
        for _, d in _pairwise_distances(features, features)
    ]
    return torch.cat(radii)


def manifold_share(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """The share of points (N, D) within distance radii[i] (inclusive) of some centres[i]."""
    inside = [(d <= radii).any(1) for _, d in _pairwise_distances(points, centres)]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = NEIGHBOURS
) -> tuple[float, float]:
    """Precision (fake points in the real manifold) and recall (real points in the fake
    manifold) of feature sets (N, D) and (M, D), each manifold of k-th-neighbour balls."""
    real_radii, fake_radii = manifold_radii(real_features, k), manifold_radii(fake_features, k)
    precision = manifold_share(fake_features, real_features, real_radii)
    recall = manifold_share(real_features, fake_features, fake_radii)
    return precision, recall


def class_histogram(labels: torch.Tensor) -> torch.Tensor:
    """Counts (NUM_CLASSES,) of integer labels (N,), or of the argmax of probabilities (N, C)."""
    if labels.dim() == 2:
        labels = labels.argmax(1)
    return torch.bincount(labels.long().flatten(), minlength=NUM_CLASSES).double()


def class_histogram_kl(
    fake_probs_or_labels: torch.Tensor, real_labels: torch.Tensor
) -> tuple[float, list[float], list[float]]:
    """KL(real || fake) in nats between the class histograms of the samples (labels (N,), or
    class probabilities (N, 10) read by their argmax) and of the real labels, each count plus
    one before normalising; and the two histograms as shares (unsmoothed), fake then real."""
    fake, real = class_histogram(fake_probs_or_labels), class_histogram(real_labels)
    p, q = (real + 1) / (real + 1).sum(), (fake + 1) / (fake + 1).sum()
    kl = (p * (p / q).log()).sum().item()
    return kl, (fake / fake.sum()).tolist(), (real / real.sum()).tolist()


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Per-image variance of the 3x3 Laplacian (no padding): (N, 1, H, W) in [0, 1] -> (N,)."""
    edges = F.conv2d(images.float(), LAPLACIAN.to(images.device).view(1, 1, 3, 3))
    return edges.flatten(1).var(dim=1)


def sharpness(images: torch.Tensor) -> float:
    """Mean variance of the Laplacian over a set of images (N, 1, H, W) in [0, 1]; 0 if flat.
    Not a sharpness grade on its own: pixel noise raises it, and it scales with contrast^2."""
    return laplacian_variance(images).mean().item()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images (N, C, H, W) blurred by a separable Gaussian of `sigma` pixels (cut at 3 sigma),
    the border extended by replication."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1.0, device=images.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).expand(images.shape[1], 1, 1, -1)
    pad = (radius, radius, 0, 0)
    rows = F.conv2d(F.pad(images.float(), pad, mode="replicate"), kernel, groups=images.shape[1])
    columns = F.pad(rows.transpose(-1, -2), pad, mode="replicate")
    return F.conv2d(columns, kernel, groups=images.shape[1]).transpose(-1, -2)


def _central_differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dx and d/dy by central differences, border replicated: each (N, 1, H, W)."""
    p = F.pad(images, (1, 1, 1, 1), mode="replicate")
    return (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2, (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2


def _own_colour_smoothing(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel, the image smoothed from the pixels of that pixel's checkerboard colour only
    (so it shares no noise with the pixel's four neighbours), and its unit gradient there."""
    h, w = images.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    white = ((rows + cols) % 2 == 0).float().to(images.device).view(1, 1, h, w)
    own, nx, ny = (torch.zeros_like(images) for _ in range(3))
    for colour in (white, 1 - white):
        smoothed = gaussian_blur(images * colour, STROKE_SIGMA) / gaussian_blur(
            colour, STROKE_SIGMA
        )
        gx, gy = _central_differences(smoothed)
        own, nx, ny = own + smoothed * colour, nx + gx * colour, ny + gy * colour
    norm = (nx**2 + ny**2).sqrt().clamp(min=1e-12)
    return own, nx / norm, ny / norm


def _strokes(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the stroke level c (N, 1, 1, 1), and per pixel, the stroke mask S >= c / 2."""
    smoothed = gaussian_blur(images, STROKE_SIGMA)
    level = smoothed.flatten(1).amax(1).view(-1, 1, 1, 1)
    return level, (smoothed >= level / 2) & (level >= MIN_STROKE)


def edge_slope(images: torch.Tensor) -> float:
    """Weighted mean edge slope over the edge bands of a set of images (N, 1, H, W) in [0, 1],
    in stroke levels per pixel (the module docstring defines it); 0 when no image has a stroke."""
    total, count = 0.0, 0.0
    for chunk in images.float().split(CHUNK):
        level, _ = _strokes(chunk)
        own, nx, ny = _own_colour_smoothing(chunk)
        weight = torch.exp(-8 * ((own - level / 2) / level) ** 2) * (level >= MIN_STROKE)
        gx, gy = _central_differences(chunk)
        slope = (gx * nx + gy * ny) / level
        total += (slope * weight).double().sum().item()
        count += weight.double().sum().item()
    return total / count if count > 1e-9 else 0.0


def background_speckle(images: torch.Tensor) -> float:
    """Mean intensity of the pixels more than SPECKLE_MARGIN pixels from any stroke, over a set
    of images (N, 1, H, W) in [0, 1]; a blank image is all background; 0 when no pixel is."""
    total, count = 0.0, 0
    size = 2 * SPECKLE_MARGIN + 1
    for chunk in images.float().split(CHUNK):
        _, strokes = _strokes(chunk)
        far = F.max_pool2d(strokes.float(), size, stride=1, padding=SPECKLE_MARGIN) == 0
        total += chunk[far].double().sum().item()
        count += int(far.sum())
    return total / count if count else 0.0
