r"""Grade a trained VAE on the MNIST test split: reconstruction, Frechet distances, sharpness, and
how recognisable its reconstructions and latent grid are.

    python evaluate.py --model_config checkpoints/simple/model_config.json \
        --ckpt_path checkpoints/simple/final_model.pth
    python evaluate.py --model_config checkpoints/composite/model_config.json \
        --ckpt_path checkpoints/composite/final_model.pth --out results/composite_eval.json

Features and class probabilities come from the evaluation CNN (model/mnist_cnn.py, `eval`), which
is not the PIPS backbone: a model trained against one network would be graded by another. It is
read from --eval_net, and trained there first (one line says so) when the file is missing.
Prints a table and writes every number to a JSON file (--out).
"""

import argparse
import json
from pathlib import Path

import torch

from model.mnist_cnn import NETWORKS, StagedCNN
from utils.cli import OneLineParser, pick_device, run_cli
from utils.dataset import load_mnist
from utils.errors import UserError
from utils.networks import load_network, make_network
from utils.outputs import check_output_path, write_output
from utils.quality import frechet_distance, sharpness
from utils.trained_vae import decode, encode_means, latent_grid, load_vae, test_split

BATCH = 1000
CONFIDENT = 0.9
# Prior samples and grid cells are each decoded in one pass and kept in memory: 100,000 samples
# (ten test splits; FID is usually taken on 10,000 to 50,000) are ~0.3 GB of images, 100x100
# cells as many as any grid is read at.
MAX_NUM_SAMPLES = 100_000
MAX_GRID_SIZE = 100
MEANINGS = {
    "recon_mse": "summed squared error per test image, decoding mu (lower is better)",
    "fid_samples": "Frechet distance, eval-net features: prior samples vs test images",
    "fid_recon": "Frechet distance, eval-net features: reconstructions vs test images",
    "sharpness_ratio": "Laplacian variance of samples / of test images (1 = as sharp)",
    "recon_accuracy": "eval-net accuracy on reconstructions against the true labels",
    "grid_confident_share": f"latent-grid cells the eval net labels with p >= {CONFIDENT}",
    "grid_classes": "distinct digits among those confident cells",
    "test_accuracy": "eval-net accuracy on the real test images (the ceiling)",
}


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_config", required=True, help="the JSON model config the run used")
    p.add_argument("--ckpt_path", required=True, help="final_model.pth, best_model.pth, ...")
    p.add_argument("--data_root", default="data/", help="folder holding MNIST/raw/ (default data/)")
    p.add_argument("--out", help="JSON file to write (default results/<run>_<checkpoint>.json)")
    p.add_argument("--eval_net", default=NETWORKS["eval"].default_path, help="evaluation CNN file")
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
    return p.parse_args()


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
    """Whether `path` holds results this script wrote (a JSON object with all its numbers)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON
        return False
    return isinstance(data, dict) and {*MEANINGS, "ckpt_path"} <= data.keys()


def check_out(out: Path, eval_path: Path) -> None:
    """Refuse, before grading, an --out that would replace anything but earlier results."""
    check_output_path(out, "--out")
    if out.resolve() == eval_path.resolve():
        raise UserError(f"--out {out}: is the --eval_net file; choose another --out")
    if out.exists() and not is_results_file(out):
        raise UserError(
            f"--out {out}: exists and is not a results file evaluate.py wrote; "
            "choose another --out (nothing was graded)"
        )


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
    ckpt = Path(args.ckpt_path)
    out = Path(args.out or f"results/{ckpt.parent.name}_{ckpt.stem}.json")
    eval_path = Path(args.eval_net)
    check_out(out, eval_path)
    device = pick_device(args.device)
    vae = load_vae(args.model_config, args.ckpt_path, device)
    test_set = test_split(args, device, vae)
    if not eval_path.is_file():
        make_network("eval", eval_path, load_mnist(args.data_root, "train", device), test_set)
    net = load_network("eval", eval_path, device)

    real = test_set.images.cpu()
    labels = test_set.labels.cpu()
    recon = decode(vae, encode_means(vae, real))
    z = torch.randn(
        args.num_samples, vae.latent_dim, generator=torch.Generator().manual_seed(args.seed)
    )
    samples = decode(vae, z)
    real_features, real_probs = classify(net, real)
    recon_features, recon_probs = classify(net, recon)
    sample_features, _ = classify(net, samples)
    sharpness_samples, sharpness_test = sharpness(samples), sharpness(real)
    results = {
        "recon_mse": (recon - real).pow(2).flatten(1).sum(1).mean().item(),
        "fid_samples": frechet_distance(sample_features, real_features),
        "fid_recon": frechet_distance(recon_features, real_features),
        "sharpness_ratio": sharpness_samples / sharpness_test,
        "recon_accuracy": (recon_probs.argmax(1) == labels).float().mean().item(),
        "grid_confident_share": None,
        "grid_classes": None,
        "test_accuracy": (real_probs.argmax(1) == labels).float().mean().item(),
    }
    if vae.latent_dim >= 2:
        _, grid_probs = classify(net, decode(vae, latent_grid(vae.latent_dim, args.grid_size)))
        top, digit = grid_probs.max(1)
        confident = top >= CONFIDENT
        results["grid_confident_share"] = confident.float().mean().item()
        results["grid_classes"] = len(digit[confident].unique())
    results.update(
        sharpness_samples=sharpness_samples,
        sharpness_test=sharpness_test,
        num_samples=args.num_samples,
        seed=args.seed,
        grid_size=args.grid_size,
        test_images=len(real),
        model_config=args.model_config,
        ckpt_path=args.ckpt_path,
        eval_net=str(eval_path),
    )

    for key, meaning in MEANINGS.items():
        value = results[key]
        shown = "n/a (latent_dim < 2)" if value is None else f"{value:.4g}"
        print(f"{key:<22} {shown:>12}  {meaning}")
    write_output(out, (json.dumps(results, indent=2) + "\n").encode(), "--out")
    print(f"-> {out}")


if __name__ == "__main__":
    run_cli(main)
