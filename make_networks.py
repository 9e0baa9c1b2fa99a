r"""Train the two small CNNs of a dataset (MNIST or Fashion-MNIST): the PIPS backbone and the
evaluation network.

    python make_networks.py --data_root data/
    python make_networks.py --network pips --data_root data/ --path checkpoints/mnist_pips_cnn.pth
    python make_networks.py --network eval --data_root data/ --force
    python make_networks.py --dataset fashion_mnist --data_root data/

train.py (composite scheme, pips_config.backbone "mnist_cnn") and evaluate.py make the one they
need on first use; this script makes them ahead of time, or again with --force. Each is trained
from its own seed on its own half of the dataset's training split (the halves are disjoint, so
the grader never learnt from the PIPS backbone's images) and reports its test accuracy; the files
are named by dataset (checkpoints/<dataset>_pips_cnn.pth, checkpoints/<dataset>_eval_net.pth).
The repo ships each dataset's evaluation CNN; making it again changes every grade, so keep the
shipped file to compare with the committed results.
"""

import argparse
from pathlib import Path

from model.mnist_cnn import NETWORKS
from utils.cli import OneLineParser, pick_device, run_cli
from utils.dataset import DATA_ROOT_HELP, DATASETS, load_mnist
from utils.errors import UserError
from utils.networks import make_network


def parse_args() -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", choices=(*NETWORKS, "both"), default="both")
    p.add_argument("--path", help="file to write (one --network only; default its usual file)")
    p.add_argument("--dataset", choices=tuple(DATASETS), default="mnist", help="default mnist")
    p.add_argument("--data_root", default="data/", help=DATA_ROOT_HELP)
    p.add_argument("--force", action="store_true", help="train again even if the file exists")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    names = list(NETWORKS) if args.network == "both" else [args.network]
    if args.path and len(names) > 1:
        raise UserError("--path names one file; pass --network pips or --network eval with it")
    device = pick_device(args.device)
    train_set = load_mnist(args.data_root, "train", device, dataset=args.dataset)
    test_set = load_mnist(args.data_root, "test", device, dataset=args.dataset)
    for name in names:
        path = Path(args.path or NETWORKS[name].default_path(args.dataset))
        if path.is_file() and not args.force:
            print(f"{path}: already there; pass --force to train it again")
            continue
        accuracy = make_network(name, path, train_set, test_set)
        print(f"{path}: test accuracy {accuracy:.2%}")


if __name__ == "__main__":
    run_cli(main)
