"""The pictures infer.py draws: one function per view, each writing one titled, headless PNG.

A view takes the parsed infer.py flags, a device and the PNG path, and returns (how many items it
drew, a one-line summary): cells, images, points or curves, so a test can check what was drawn.
Images are (N, C, H, W) in [0, 1] throughout; each picture is one batched decoder pass per model.
"""

import argparse
import csv
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from model.vae import VAE  # noqa: E402
from utils.dataset import MNISTSplit  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.outputs import check_output_path, write_output  # noqa: E402
from utils.trained_vae import (  # noqa: E402
    GRID_LIMIT,
    decode,
    encode_means,
    latent_grid,
    load_vae,
    test_split,
)

DPI = 100
# Rows of a traversal (one per latent dimension): past this the figure outgrows what matplotlib
# can draw, and no one reads it.
MAX_TRAVERSE_ROWS = 100
FIGURE_FORMATS = (".png", ".pdf", ".svg")  # what --save_path may end in; no suffix means .png
TERM_NAMES = {
    "loss": "total loss",
    "recon": "reconstruction (summed squared error)",
    "kl": "KL with free bits",
    "kl_raw": "KL (plain batch mean)",
    "pips": "perceptual distance (PIPS)",
    "adv": "adversarial term (VAE side)",
    "disc": "critic loss",
}

# Shared helpers: tiling, figures.


def checkpoint_name(ckpt_path: str) -> str:
    """`<run folder>/<file>`: enough to tell checkpoints apart in a title."""
    path = Path(ckpt_path)
    return f"{path.parent.name}/{path.name}"


def need_2d(vae: VAE, model_config: str) -> None:
    if vae.latent_dim < 2:
        raise UserError(f"{model_config}: latent_dim is {vae.latent_dim}; the 2-D grid needs >= 2")


def check_index(index: int, split: MNISTSplit) -> int:
    if not 0 <= index < len(split):
        raise UserError(
            f"--image_index {index}: the test split has {len(split)} images; "
            f"use 0 to {len(split) - 1}"
        )
    return index


def test_images(args: argparse.Namespace, split: MNISTSplit) -> tuple[torch.Tensor, list[str]]:
    """--grid_size test images from --image_index on (default 0), and a caption for each."""
    first = check_index(args.image_index or 0, split)
    chosen = slice(first, first + args.grid_size)
    indices = range(first, min(first + args.grid_size, len(split)))
    return split.images[chosen], [f"#{i}: {split.class_name(i)}" for i in indices]


def tile(images: torch.Tensor, per_row: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] -> one (rows * H, per_row * W, 3) picture, row-major, no gaps,
    cells past the last image black (torchvision's make_grid with padding 0, without importing
    torchvision, whose import pulls in torch._dynamo at every start of infer.py)."""
    n, channels, h, w = images.shape
    per_row = min(per_row, n)
    rows = math.ceil(n / per_row)
    canvas = images.new_zeros(rows * per_row, 3, h, w)
    canvas[:n] = images.expand(-1, 3, -1, -1) if channels == 1 else images
    return canvas.view(rows, per_row, 3, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, -1, 3)


def show(ax, images: torch.Tensor, per_row: int, **imshow_args) -> None:
    ax.imshow(tile(images, per_row).numpy(), vmin=0, vmax=1, interpolation="nearest", **imshow_args)


def cell_ticks(ax, axis: str, size: int, labels: list[str]) -> None:
    """Label each `size`-pixel cell of a tiled picture at its centre along `axis` ("x", "y")."""
    centres = [(i + 0.5) * size for i in range(len(labels))]
    getattr(ax, f"set_{axis}ticks")(centres, labels)
    if axis == "x" and max(map(len, labels), default=0) > 6:  # class names: slanted, apart
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")


def new_figure(width: float, height: float):
    return plt.figure(figsize=(width, height), layout="constrained")


def figure_path(path: Path) -> Path:
    """The file a figure for `path` is written to (`path`, with .png added when it has no
    suffix), checked before anything is drawn: a known format, a place a file can go."""
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise UserError(
            f"--save_path {path}: cannot write '{path.suffix}' figures; end it in "
            f"{', '.join(FIGURE_FORMATS[:-1])} or {FIGURE_FORMATS[-1]}"
        )
    check_output_path(path, "--save_path")
    return path


def save_figure(fig, path: Path) -> None:
    """Render `fig` in the format `path` ends in (see figure_path), then write the file whole:
    a failed write leaves no partial figure and any older file as it was."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format=path.suffix.lower()[1:], dpi=DPI)
    finally:
        plt.close(fig)
    write_output(path, buffer.getvalue(), "--save_path")


def draw_latent_grid(ax, vae: VAE, grid_size: int) -> None:
    """Decode z over [-3, 3]^2 (other dimensions at 0); the axes read in latent units, z[1]
    rising downwards as in the reference's grid."""
    step = 2 * GRID_LIMIT / max(1, grid_size - 1)
    edge = GRID_LIMIT + step / 2
    images = decode(vae, latent_grid(vae.latent_dim, grid_size))
    show(ax, images, grid_size, extent=(-edge, edge, edge, -edge))
    ax.set_xlabel("z[0]  (latent dimension 1), rising to the right")
    ax.set_ylabel("z[1]  (latent dimension 2), rising downwards")


def draw_reconstructions(
    ax, rows: dict[str, VAE], images: torch.Tensor, captions: list[str], noun: str
) -> None:
    """Test images in the top row and below them one row per model (row label -> VAE) of their
    reconstructions (decoded means), each marked with its summed squared error."""
    images = images.float().cpu()
    recons = [decode(vae, encode_means(vae, images)) for vae in rows.values()]
    height, width = images.shape[2:]
    show(ax, torch.cat([images, *recons]), len(images))
    for row, recon in enumerate(recons, start=1):
        errors = (recon - images).pow(2).flatten(1).sum(dim=1).tolist()
        for col, error in enumerate(errors):
            ax.text(col * width + 1, row * height + 1, f"{error:.0f}", color="yellow", va="top")
    cell_ticks(ax, "x", width, captions)
    cell_ticks(ax, "y", height, ["test image", *rows])
    ax.set_xlabel(f"test image #index: {noun}   (yellow: summed squared error of a reconstruction)")


# The views, in the order of infer.py's --mode choices.


def grid(args: argparse.Namespace, device: torch.device, path: Path) -> tuple[int, str]:
    """Latent dimensions 1 and 2 swept together over [-3, 3]^2."""
    vae = load_vae(args.model_config, args.ckpt_path, device)
    need_2d(vae, args.model_config)
    title = args.title or f"Latent traversal: {checkpoint_name(args.ckpt_path)}"
    if vae.latent_dim > 2:
        title += f"\n(dimensions 3-{vae.latent_dim} held at 0)"
    fig = new_figure(7, 7.4)
    ax = fig.subplots()
    draw_latent_grid(ax, vae, args.grid_size)
    ax.set_title(title, fontsize=11)
    save_figure(fig, path)
    return args.grid_size**2, f"grid of {args.grid_size}x{args.grid_size}"


def traverse(args: argparse.Namespace, device: torch.device, path: Path) -> tuple[int, str]:
    """One row per latent dimension, swept over [-3, 3] with the others at 0, or at the mean
    code of test image --image_index."""
    vae = load_vae(args.model_config, args.ckpt_path, device)
    dims, steps = vae.latent_dim, args.grid_size
    if dims > MAX_TRAVERSE_ROWS:
        raise UserError(
            f"{args.model_config}: the model has {dims} latent dimensions and traverse draws one "
            f"row each, at most {MAX_TRAVERSE_ROWS}; draw it with --mode grid or samples"
        )
    base, held = torch.zeros(dims), "the others at 0"
    if args.image_index is not None:
        split = test_split(args, device, vae)
        index = check_index(args.image_index, split)
        base = encode_means(vae, split.images[index : index + 1])[0]
        held = (
            f"the others at the mean code μ of test image #{index} "
            f"({split.spec.noun} {split.class_name(index)})"
        )
    values = torch.linspace(-GRID_LIMIT, GRID_LIMIT, steps)
    z = base.repeat(dims, steps, 1)
    z[torch.arange(dims), :, torch.arange(dims)] = values
    images = decode(vae, z.view(dims * steps, dims))
    height, width = images.shape[2:]

    fig = new_figure(2.2 + 0.75 * steps, 1.5 + 0.75 * dims)
    ax = fig.subplots()
    show(ax, images, steps)
    cell_ticks(ax, "x", width, [f"{v:+.1f}" for v in values.tolist()])
    rows = [f"z[{d}]" for d in range(dims)]
    if args.image_index is not None:
        rows = [f"z[{d}]  (μ {m:+.2f})" for d, m in enumerate(base.tolist())]
    cell_ticks(ax, "y", height, rows)
    ax.set_xlabel("value given to the swept dimension")
    ax.set_ylabel("swept dimension")
    ax.set_title(
        args.title or f"Each latent dimension swept: {checkpoint_name(args.ckpt_path)}\n{held}",
        fontsize=11,
    )
    save_figure(fig, path)
    return dims * steps, f"traversal of {dims} dimensions x {steps} values"


def recon(args: argparse.Namespace, device: torch.device, path: Path) -> tuple[int, str]:
    """--grid_size test images above their reconstructions."""
    vae = load_vae(args.model_config, args.ckpt_path, device)
    split = test_split(args, device, vae)
    images, captions = test_images(args, split)
    fig = new_figure(1.8 + 1.0 * len(images), 3.1)
    ax = fig.subplots()
    draw_reconstructions(ax, {"reconstruction": vae}, images, captions, split.spec.noun)
    ax.set_title(args.title or f"Reconstructions: {checkpoint_name(args.ckpt_path)}", fontsize=11)
    save_figure(fig, path)
    return len(images), f"{len(images)} test images and their reconstructions"


def samples(args: argparse.Namespace, device: torch.device, path: Path) -> tuple[int, str]:
    """grid_size^2 decodes of z ~ N(0, I), drawn with --seed so a picture can be redrawn."""
    vae = load_vae(args.model_config, args.ckpt_path, device)
    count = args.grid_size**2
    z = torch.randn(count, vae.latent_dim, generator=torch.Generator().manual_seed(args.seed))
    fig = new_figure(7, 7.4)
    ax = fig.subplots()
    show(ax, decode(vae, z), args.grid_size)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{count} decodes of z ~ N(0, I) ({vae.latent_dim}-D), seed {args.seed}")
    ax.set_title(
        args.title or f"Samples from the prior: {checkpoint_name(args.ckpt_path)}", fontsize=11
    )
    save_figure(fig, path)
    return count, f"{count} samples (seed {args.seed})"


def scatter(args: argparse.Namespace, device: torch.device, path: Path) -> tuple[int, str]:
    """Every test image's latent mean, coloured by class; 3-D and larger latents through PCA."""
    vae = load_vae(args.model_config, args.ckpt_path, device)
    split = test_split(args, device, vae)
    mu, labels = encode_means(vae, split.images), split.labels.cpu()
    noun, classes = split.spec.noun, split.spec.classes
    if vae.latent_dim == 1:
        jitter = torch.rand(len(mu), generator=torch.Generator().manual_seed(0)) - 0.5
        points, names = torch.stack([mu[:, 0], labels + 0.8 * jitter], 1), ("z[0]", noun)
        how = f"the 1-D latent means, one band per {noun}"
    elif vae.latent_dim == 2:
        points, names, how = mu, ("z[0]", "z[1]"), "the 2-D latent means"
    else:
        centred = mu - mu.mean(dim=0)
        _, singular, directions = torch.linalg.svd(centred, full_matrices=False)
        share = (singular**2 / (singular**2).sum() * 100).tolist()
        points = centred @ directions[:2].T
        names = tuple(f"principal component {i + 1} ({share[i]:.0f} % of variance)" for i in (0, 1))
        how = f"PCA projection of the {vae.latent_dim}-D latent means"
    # A random drawing order, so that no class hides the ones drawn before it.
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))
    fig = new_figure(8.4, 7)
    ax = fig.subplots()
    dots = ax.scatter(
        points[order, 0],
        points[order, 1],
        c=labels[order],
        cmap="tab10",
        vmin=-0.5,
        vmax=9.5,
        s=4,
        linewidths=0,
        antialiased=False,  # crisp dots: a third of the PNG size of smoothed ones
    )
    colours = plt.get_cmap("tab10")
    legend = [
        Line2D([], [], marker="o", linestyle="", color=colours(d), label=classes[d])
        for d in sorted(set(labels.tolist()))
    ]
    ax.legend(handles=legend, title=noun, loc="upper left", bbox_to_anchor=(1.01, 1))
    if vae.latent_dim == 1:
        ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    if vae.latent_dim > 1:
        ax.set_aspect("equal", adjustable="datalim")
    plotted = len(dots.get_offsets())
    ax.set_title(
        args.title
        or f"Latent means of {plotted} test images: {checkpoint_name(args.ckpt_path)}\n{how}",
        fontsize=11,
    )
    save_figure(fig, path)
    return plotted, f"{plotted} test images, {how}"


def read_metrics(run_dir: str) -> dict[str, list[float]]:
    """metrics.csv of a run folder, column by column; 'nan' cells (terms not computed) stay NaN."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise UserError(f"{run_dir}: has no metrics.csv; pass a run folder written by train.py")
    fix = "pass a metrics.csv written by train.py"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); {fix}"
        ) from None
    except csv.Error as e:  # a NUL byte, an unclosed quote at the end of the file
        raise UserError(f"{path}: not a CSV file ({e}); {fix}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror}); {fix}") from None
    if not rows or "epoch" not in rows[0]:
        raise UserError(f"{path}: holds no epoch rows; plot it once the first epoch has ended")
    columns: dict[str, list[float]] = {name: [] for name in rows[0]}
    for line, row in enumerate(rows, start=2):
        if None in row:  # DictReader's key for the cells beyond the header's
            raise UserError(f"{path}: line {line} has more cells than the header; {fix}")
        for name, cell in row.items():
            try:
                columns[name].append(float(cell))
            except (TypeError, ValueError):
                raise UserError(
                    f"{path}: line {line}, column '{name}' holds {cell!r}, not a number; "
                    "pass a metrics.csv written by train.py"
                ) from None
    return columns


def curves(args: argparse.Namespace, device: torch.device, path: Path) -> tuple[int, str]:
    """Every loss term (train and validation), beta and the learning rates, over epochs."""
    columns = read_metrics(args.run_dir)
    epochs = columns["epoch"]
    prefixed = [n.split("_", 1)[1] for n in columns if n.startswith(("train_", "val_"))]
    panels = [
        (TERM_NAMES.get(t, t), [(f"train_{t}", "train"), (f"val_{t}", "validation")])
        for t in dict.fromkeys(prefixed)
    ]
    panels += [
        ("beta (weight of the KL term)", [("beta", "beta")]),
        ("learning rate", [("lr_g", "VAE (lr_g)"), ("lr_d", "critic (lr_d)")]),
    ]
    across, down = 3, math.ceil(len(panels) / 3)
    fig = new_figure(4.4 * across, 0.8 + 3.0 * down)
    axes = fig.subplots(down, across, squeeze=False).flat
    drawn = 0
    for ax, (name, series) in zip(axes, panels, strict=False):
        present = [(column, label) for column, label in series if column in columns]
        for column, label in present:
            ax.plot(epochs, columns[column], marker="o", markersize=3, label=label)
        drawn += len(present)
        if all(math.isnan(v) for column, _ in present for v in columns[column]):
            ax.text(0.5, 0.5, "not computed yet", ha="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_title(name, fontsize=10)
        # The same epoch axis on every panel, also where a term starts late or never.
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    run = Path(args.run_dir).resolve().name
    fig.suptitle(args.title or f"Training curves: {run} ({len(epochs)} epochs)")
    save_figure(fig, path)
    return drawn, f"{drawn} curves over {len(epochs)} epochs"


def compare(args: argparse.Namespace, device: torch.device, path: Path) -> tuple[int, str]:
    """Two checkpoints side by side: the same latent grid, the same test images reconstructed."""
    config_b = args.model_config_b or args.model_config
    runs = {"A": (args.model_config, args.ckpt_path), "B": (config_b, args.ckpt_path_b)}
    vaes = {key: load_vae(config, ckpt, device) for key, (config, ckpt) in runs.items()}
    names = {key: f"{key}: {checkpoint_name(ckpt)}" for key, (_, ckpt) in runs.items()}
    for key, vae in vaes.items():
        need_2d(vae, runs[key][0])
    split = test_split(args, device, *vaes.values())
    images, captions = test_images(args, split)
    # Both grids are square; below them, three rows of len(images) cells span the full width.
    strip = 6 / len(images)
    fig = new_figure(12, 1.5 + 5.6 * (1 + strip))
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, strip])
    for ax, key in zip(top.subplots(1, 2), vaes, strict=True):
        draw_latent_grid(ax, vaes[key], args.grid_size)
        ax.set_title(f"{names[key]}\nlatent grid (dimensions 3+ at 0)", fontsize=10)
    rows = {f"{key}: reconstruction": vae for key, vae in vaes.items()}
    draw_reconstructions(bottom.subplots(), rows, images, captions, split.spec.noun)
    fig.suptitle(args.title or "Two checkpoints on the same latent grid and test images")
    save_figure(fig, path)
    return 2 * args.grid_size**2 + 3 * len(images), " vs ".join(names.values())


VIEWS = {
    "grid": grid,
    "traverse": traverse,
    "recon": recon,
    "samples": samples,
    "scatter": scatter,
    "curves": curves,
    "compare": compare,
}
