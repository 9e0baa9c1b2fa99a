"""What each perceptual (PIPS) backbone is, in one table: the config's defaults and checks
(utils/config.py), the PIPS module (model/pips.py) and the code that loads the networks
(utils/networks.py) all read it.

    vgg16:     five slices of VGG16 `features` (the reference); grayscale repeated to 3 channels,
               resized to input_size (224), ImageNet mean/std normalisation; ImageNet weights
               from torch's hub cache (or random, smoke tests only)
    mnist_cnn: the four stages of the MNIST CNN in model/mnist_cnn.py (`pips`), which the project
               trains itself on the dataset its `weights` name (MNIST or Fashion-MNIST); 28x28
               grayscale as it is
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """One perceptual backbone.

    slices: (start, end) bounds over the backbone's chain of layers (VGG16's `features`, the MNIST
        CNN's `stages`); PIPS compares the output of each slice.
    input_size: the default side the input is resized to; `fixed_input_size` when no other side
        fits, else the smallest side allowed is `min_input_size`. `input_size_reason` says why, in
        the config's error message.
    imagenet: the input is repeated to 3 channels and ImageNet mean/std normalised.
    grayscale_only: the network takes 1-channel images only (the model's images must be 1-channel).
    weights: the allowed values of the config's `weights`, the default first.
    weights_path: the default weights file, with "{weights}" standing for the config's `weights`
        (see default_weights_path), or None when the weights do not come from a file the config
        names (then `weights_source` says where they come from, and the config refuses a
        weights_path).
    """

    title: str
    slices: tuple[tuple[int, int], ...]
    input_size: int
    fixed_input_size: bool
    min_input_size: int
    input_size_reason: str
    imagenet: bool
    grayscale_only: bool
    weights: tuple[str, ...]
    weights_path: str | None
    weights_source: str


BACKBONES = {
    "vgg16": BackboneSpec(
        title="VGG16",
        slices=((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
        input_size=224,
        fixed_input_size=False,
        min_input_size=16,
        input_size_reason="VGG16's four pooling stages",
        imagenet=True,
        grayscale_only=False,
        weights=("imagenet", "random"),
        weights_path=None,
        weights_source="torch's hub cache",
    ),
    "mnist_cnn": BackboneSpec(
        title="MNIST CNN",
        slices=((0, 1), (1, 2), (2, 3), (3, 4)),
        input_size=28,
        fixed_input_size=True,
        min_input_size=28,
        input_size_reason="its linear head is sized for 28x28",
        imagenet=False,
        grayscale_only=True,
        # The dataset the CNN learnt (a key of utils/dataset.DATASETS); it must be the run's.
        weights=("mnist", "fashion_mnist"),
        weights_path="checkpoints/{weights}_pips_cnn.pth",
        weights_source="weights_path, trained by make_networks.py --network pips",
    ),
}

# The reference's perceptual loss, taken when a model file has no pips_config.
DEFAULT_BACKBONE = "vgg16"


def default_weights_path(backbone: str, weights: str) -> str | None:
    """The backbone's default weights file for `weights` (None where no file holds them)."""
    path = BACKBONES[backbone].weights_path
    return None if path is None else path.format(weights=weights)
