r"""Grade a trained VAE on the test split of its dataset (MNIST or Fashion-MNIST): reconstruction
(the distortion) beside the rate, Frechet distances, precision and recall, the class histogram,
sharpness, and how recognisable its reconstructions and latent grid are; or grade a file of images
with the sample measures alone (Frechet distance, precision and recall, class histogram KL, edge
sharpness, background speckle, Laplacian ratio).

    python evaluate.py --model_config checkpoints/simple/model_config.json \
        --ckpt_path checkpoints/simple/final_model.pth
    python evaluate.py --model_config checkpoints/composite/model_config.json \
        --ckpt_path checkpoints/composite/final_model.pth --out results/composite_eval.json
    python evaluate.py --images samples.pt --out results/samples_eval.json

--images takes a tensor (N, 1, H, W) in [0, 1], or a dict holding one under "images", saved with
torch.save; it is graded as the prior samples are, against the test split.

Features and class probabilities come from the evaluation CNN (model/mnist_cnn.py, `eval`), which
is not the PIPS backbone: another architecture and seed, trained on the other half of the training
split, so a model trained against one network is graded by another that never saw its images.
The repo ships one per dataset (checkpoints/<dataset>_eval_net.pth: the default --eval_net wherever
the script runs from), so grading trains nothing and every committed grade reproduces; a --eval_net
file that is missing is trained there first (one line says so). A checkpoint is graded on the
dataset it learnt (--dataset may name it, not contradict it). The output records the dataset and
the network file's SHA-256 and test accuracy. Prints a table and writes every number to a JSON
file (--out).
"""

import argparse
import json
from pathlib import Path

import torch

from model.mnist_cnn import NETWORKS, StagedCNN
from model.vae import VAE
from utils.cli import OneLineParser, pick_device, run_cli
from utils.dataset import DATA_ROOT_HELP, DATASETS, MNISTSplit, load_mnist
from utils.errors import UserError
from utils.loss import kl_per_sample
from utils.networks import load_network, make_network, network_record
from utils.outputs import check_output_path, write_output
from utils.quality import (
    NEIGHBOURS,
    background_speckle,
    class_histogram_kl,
    edge_slope,
    frechet_distance,
    precision_recall,
    sharpness,
)
from utils.trained_vae import (
    decode,
    encode_posterior,
    latent_grid,
    load_vae,
    test_split,
)

REPO = Path(__file__).resolve().parent


def shipped_eval_net(dataset: str) -> Path:
    """The evaluation CNN the repo ships for `dataset`, found from any working folder."""
    return REPO / NETWORKS["eval"].default_path(dataset)


BATCH = 1000
CONFIDENT = 0.9
# Prior samples and grid cells are each decoded in one pass and kept in memory: 100,000 samples
# (ten test splits; FID is usually taken on 10,000 to 50,000) are ~0.3 GB of images, 100x100
# cells as many as any grid is read at.
MAX_NUM_SAMPLES = 100_000
MAX_GRID_SIZE = 100
MEANINGS = {
    "recon_mse": "summed squared error per test image, decoding mu (lower is better)",
    "rate_kl": "mean KL(q(z|x) || N(0, I)) over the test images, nats: the rate beside recon_mse",
    "fid_samples": "Frechet distance, eval-net features: samples (or --images) vs test images",
    "precision": f"samples inside the test images' k={NEIGHBOURS} eval-net manifold (realism)",
    "recall": f"test images inside the samples' k={NEIGHBOURS} eval-net manifold (coverage)",
    "class_kl": "KL(test || samples) of eval-net class histograms, nats, +1 per class (0 = same)",
    "fid_recon": "Frechet distance, eval-net features: reconstructions vs test images",
    "edge_sharpness": "edge slope / contrast, samples over test images (1 = as sharp)",
    "background_speckle": "mean intensity far from strokes, samples (test images ~0)",
    "sharpness_ratio": "Laplacian variance ratio, samples / test: rises with noise and contrast",
    "recon_accuracy": "eval-net accuracy on reconstructions against the true labels",
    "grid_confident_share": f"latent-grid cells the eval net labels with p >= {CONFIDENT}",
    "grid_classes": "distinct classes among those confident cells",
    "test_accuracy": "eval-net accuracy on the real test images (the ceiling)",
}
# What --images grades: the measures of the samples alone, no VAE needed.
IMAGE_KEYS = (
    "fid_samples",
    "precision",
    "recall",
    "class_kl",
    "edge_sharpness",
    "background_speckle",
    "sharpness_ratio",
    "test_accuracy",
)


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_config", help="the JSON model config the run used")
    p.add_argument("--ckpt_path", help="final_model.pth, best_model.pth, ...")
    p.add_argument("--images", help="a .pt file of images (N, 1, H, W) in [0, 1] to grade instead")
    p.add_argument("--data_root", default="data/", help=DATA_ROOT_HELP)
    p.add_argument(
        "--dataset",
        choices=tuple(DATASETS),
        help="the test images' dataset (default the one the checkpoint learnt; --images: mnist)",
    )
    p.add_argument(
        "--out",
        help="JSON file to write (default results/<run>_<checkpoint>.json or <images>_eval.json)",
    )
    p.add_argument(
        "--eval_net",
        help="evaluation CNN file (default the repo's checkpoints/<dataset>_eval_net.pth)",
    )
    p.add_argument(
        "--num_samples",
        type=int,
        default=10_000,
        help=f"prior samples (default 10000, at most {MAX_NUM_SAMPLES})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prior samples (default 0)")
    p.add_argument(
        "--grid_size",
        type=int,
        default=8,
        help=f"latent grid cells per side (default 8, at most {MAX_GRID_SIZE})",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = p.parse_args()
    checkpoint = [args.model_config, args.ckpt_path]
    if not (all(checkpoint) if args.images is None else not any(checkpoint)):
        p.error(
            "pass --model_config and --ckpt_path (grade a checkpoint), or --images FILE alone "
            "(grade images)"
        )
    return args


@torch.inference_mode()
def classify(net: StagedCNN, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) in [0, 1] -> penultimate features (N, D) and class probabilities
    (N, 10), on the CPU, in batches of BATCH."""
    device = next(net.parameters()).device
    features, probs = [], []
    for chunk in images.split(BATCH):
        *_, penultimate, logits = net.stage_outputs(chunk.to(device))
        features.append(penultimate.flatten(1).cpu())
        probs.append(logits.flatten(1).softmax(1).cpu())
    return torch.cat(features), torch.cat(probs)


def is_results_file(path: Path) -> bool:
    """Whether `path` holds results this script wrote (a JSON object with the sample measures
    and what was graded), in either mode, by this version or an earlier one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return False
    return (
        isinstance(data, dict)
        and {"fid_samples", "sharpness_ratio"} <= data.keys()
        and ("ckpt_path" in data or "images" in data)
    )


def load_images(path: Path) -> torch.Tensor:
    """The images of an --images file: a tensor (N, 1, H, W) of finite values in [0, 1], N >= 2,
    or a dict holding one under "images"; anything else is one line naming the file."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--images {path}: no such file") from None
    except Exception as e:  # noqa: BLE001  (not a torch file, or one that needs pickled code)
        raise UserError(
            f"--images {path}: not a tensor file torch.load reads with weights_only=True "
            f"({type(e).__name__}); save the images with torch.save(images, path)"
        ) from None
    images = data.get("images") if isinstance(data, dict) else data
    if not isinstance(images, torch.Tensor):
        held = (
            "a dict without a tensor under 'images'"
            if isinstance(data, dict)
            else type(data).__name__
        )
        raise UserError(f"--images {path}: holds {held}, not a tensor of images (N, 1, H, W)")
    if images.dim() != 4 or images.shape[1] != 1 or len(images) < 2:
        raise UserError(
            f"--images {path}: holds a tensor of shape {list(images.shape)}; expected (N, 1, H, W) "
            "with N >= 2 images"
        )
    if len(images) > MAX_NUM_SAMPLES:
        raise UserError(
            f"--images {path}: holds {len(images):,} images; at most {MAX_NUM_SAMPLES:,}"
        )
    if images.is_complex() or not images.is_floating_point():
        raise UserError(
            f"--images {path}: holds {images.dtype} values; expected floating-point values in "
            "[0, 1] (divide 8-bit images by 255)"
        )
    images = images.float()
    if not torch.isfinite(images).all():
        raise UserError(f"--images {path}: holds NaN or infinite values")
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise UserError(
            f"--images {path}: values span [{low:.4g}, {high:.4g}]; expected [0, 1] (clamp them, "
            "or map [-1, 1] images with (x + 1) / 2)"
        )
    return images


def check_out(out: Path, eval_path: Path | None) -> None:
    """Refuse, before grading, an --out that would replace anything but earlier results."""
    check_output_path(out, "--out")
    if eval_path is not None:
        check_not_grader(out, eval_path)
    if out.exists() and not is_results_file(out):
        raise UserError(
            f"--out {out}: exists and is not a results file evaluate.py wrote; "
            "choose another --out (nothing was graded)"
        )


def check_not_grader(out: Path, eval_path: Path) -> None:
    if out.resolve() == eval_path.resolve():
        raise UserError(f"--out {out}: is the --eval_net file; choose another --out")


def sample_measures(
    net: StagedCNN,
    samples: torch.Tensor,
    real: torch.Tensor,
    real_features: torch.Tensor,
    real_labels: torch.Tensor,
) -> dict:
    """The measures of a set of generated images against the test images (features and true
    labels), which need no VAE: Frechet distance, precision and recall, the class histograms and
    their KL divergence, edge sharpness, background speckle, the Laplacian ratio, and the raw
    values the ratios are made of."""
    sample_features, sample_probs = classify(net, samples)
    # Each manifold needs k neighbours per point: a file of k images or fewer has none.
    enough = len(samples) > NEIGHBOURS
    precision, recall = (
        precision_recall(real_features, sample_features, NEIGHBOURS) if enough else (None, None)
    )
    class_kl, histogram_samples, histogram_test = class_histogram_kl(sample_probs, real_labels)
    edges_samples, edges_test = edge_slope(samples), edge_slope(real)
    laplacian_samples, laplacian_test = sharpness(samples), sharpness(real)
    return {
        "fid_samples": frechet_distance(sample_features, real_features),
        "precision": precision,
        "recall": recall,
        "class_kl": class_kl,
        "edge_sharpness": edges_samples / edges_test,
        "background_speckle": background_speckle(samples),
        "sharpness_ratio": laplacian_samples / laplacian_test,
        "edge_slope_samples": edges_samples,
        "edge_slope_test": edges_test,
        "background_speckle_test": background_speckle(real),
        "sharpness_samples": laplacian_samples,
        "sharpness_test": laplacian_test,
        "class_histogram_samples": histogram_samples,
        "class_histogram_test": histogram_test,
    }


def grade_vae(
    vae: VAE,
    net: StagedCNN,
    args: argparse.Namespace,
    real: torch.Tensor,
    labels: torch.Tensor,
    real_features: torch.Tensor,
) -> dict:
    """The VAE's measures: its reconstructions, its prior samples (sample_measures) and its
    latent grid (None where latent_dim < 2)."""
    mu, logvar = encode_posterior(vae, real)
    recon = decode(vae, mu)
    recon_features, recon_probs = classify(net, recon)
    z = torch.randn(
        args.num_samples, vae.latent_dim, generator=torch.Generator().manual_seed(args.seed)
    )
    results = {
        "recon_mse": (recon - real).pow(2).flatten(1).sum(1).mean().item(),
        "rate_kl": kl_per_sample(mu.double(), logvar.double()).mean().item(),
        "fid_recon": frechet_distance(recon_features, real_features),
        "recon_accuracy": (recon_probs.argmax(1) == labels).float().mean().item(),
        "grid_confident_share": None,
        "grid_classes": None,
    }
    if vae.latent_dim >= 2:
        _, grid_probs = classify(net, decode(vae, latent_grid(vae.latent_dim, args.grid_size)))
        top, digit = grid_probs.max(1)
        confident = top >= CONFIDENT
        results["grid_confident_share"] = confident.float().mean().item()
        results["grid_classes"] = len(digit[confident].unique())
    return results | sample_measures(net, decode(vae, z), real, real_features, labels)


def main() -> None:
    args = parse_args()
    if args.num_samples < 2 or args.grid_size < 1:
        raise UserError("--num_samples must be >= 2 and --grid_size >= 1, e.g. 10000 and 8")
    for flag, value, bound in (
        ("--num_samples", args.num_samples, MAX_NUM_SAMPLES),
        ("--grid_size", args.grid_size, MAX_GRID_SIZE),
    ):
        if value > bound:
            raise UserError(f"{flag} {value}: must be at most {bound}; lower it")
    graded = Path(args.images or args.ckpt_path)
    if args.images:
        default_out = f"results/{graded.stem}_eval.json"
    else:
        default_out = f"results/{graded.parent.name}_{graded.stem}.json"
    out = Path(args.out or default_out)
    check_out(out, Path(args.eval_net) if args.eval_net else None)
    device = pick_device(args.device)
    images, vae, test_set = load_graded(args, graded, device)
    dataset = test_set.dataset
    eval_path = Path(args.eval_net) if args.eval_net else shipped_eval_net(dataset)
    check_not_grader(out, eval_path)  # the dataset's shipped grader is known only now
    if not eval_path.is_file():
        train_split = load_mnist(args.data_root, "train", device, dataset=dataset)
        make_network("eval", eval_path, train_split, test_set)
    net = load_network("eval", eval_path, device, dataset)

    real = test_set.images.cpu()
    labels = test_set.labels.cpu()
    real_features, real_probs = classify(net, real)
    measures = {"test_accuracy": (real_probs.argmax(1) == labels).float().mean().item()}
    if vae is None:
        measures |= sample_measures(net, images, real, real_features, labels)
        shown = IMAGE_KEYS
        about = {"num_images": len(images), "test_images": len(real), "images": str(graded)}
    else:
        measures |= grade_vae(vae, net, args, real, labels, real_features)
        shown = tuple(MEANINGS)
        about = {
            "num_samples": args.num_samples,
            "seed": args.seed,
            "grid_size": args.grid_size,
            "test_images": len(real),
            "model_config": args.model_config,
            "ckpt_path": args.ckpt_path,
        }
    # The table's numbers first, in its order, then the raw values behind the ratios.
    results = {key: measures[key] for key in shown} | measures | about
    results |= grader_record(eval_path) | {"dataset": dataset}

    for key in shown:
        value = results[key]
        why = "latent_dim < 2" if key.startswith("grid") else f"<= {NEIGHBOURS} images"
        text = f"n/a ({why})" if value is None else f"{value:.4g}"
        print(f"{key:<22} {text:>12}  {MEANINGS[key]}")
    write_output(out, (json.dumps(results, indent=2) + "\n").encode(), "--out")
    print(f"-> {out}")


def load_graded(
    args: argparse.Namespace, graded: Path, device: torch.device
) -> tuple[torch.Tensor | None, VAE | None, MNISTSplit]:
    """What is graded, (--images or None, the checkpoint's VAE or None), and the test split it
    is graded against: the checkpoint's dataset's, or --dataset's (default MNIST) for images."""
    if not args.images:
        vae = load_vae(args.model_config, args.ckpt_path, device)
        return None, vae, test_split(args, device, vae)
    images = load_images(graded)
    test_set = load_mnist(args.data_root, "test", device, dataset=args.dataset or "mnist")
    if images.shape[1:] != test_set.images.shape[1:]:
        raise UserError(
            f"--images {graded}: images are {list(images.shape[1:])} but the test images "
            f"are {list(test_set.images.shape[1:])}"
        )
    return images, None, test_set


def grader_record(eval_path: Path) -> dict:
    """Which network graded, for the output: its file, SHA-256, recorded test accuracy and
    training half; printed as one line."""
    record = network_record(eval_path)
    accuracy = (
        "not recorded" if record["test_accuracy"] is None else f"{record['test_accuracy']:.2%}"
    )
    print(f"graded by {eval_path}: sha256 {record['sha256']}, test accuracy {accuracy}")
    return {"eval_net": str(eval_path)} | {f"eval_net_{k}": v for k, v in record.items()}


if __name__ == "__main__":
    run_cli(main)
