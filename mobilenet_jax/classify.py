"""Top-5 labels of images: `python -m mobilenet_jax.classify IMAGE... [--weights REFERENCE]`.

`--weights` takes every weights reference the export command does (a registered name, a TF-Slim,
Keras or timm file, a model file or a run's workdir, local or gs://). Each image goes through the
weights' own preprocessing (`Pretrained.preprocessing`); `--image-size` and `--normalization`
replace its size and normalisation, and a model file that records none needs both. The output
lists, per image, the most probable classes with their softmax probabilities. Labels are the
class names a training run recorded beside its model (a fine-tuned workdir names its folder's
classes), else ImageNet's for 1000 or 1001 classes, else "class N".

Every image is read before any weights load: one that cannot be read ends the command, naming
it, and no image is classified. A mistake is then cheap to fix and rerun, and output is never
a partial list that a script could take for the whole.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import numpy as np

from mobilenet_jax.commands import COMMAND_ERRORS, CommandParser, exit_for_command
from mobilenet_jax.data.spec import NORMALIZATIONS
from mobilenet_jax.interop.imagenet import class_names
from mobilenet_jax.interop.preprocessing import check_size
from mobilenet_jax.interop.pretrained import REGISTRY, Pretrained, load_pretrained, recorded_class_names

PROG = "python -m mobilenet_jax.classify"
DEFAULT_WEIGHTS = "mobilenet_v1_100_224.timm"
LISTED_BAD_IMAGES = 3  # unreadable images named in the error; the rest are counted


def labels(num_classes: int, recorded: Sequence[str] | None = None) -> list[str]:
    """Output names: `recorded` when given, ImageNet's for 1000 or 1001 classes, else "class N"."""
    if recorded is not None:
        return list(recorded)
    if num_classes in (1000, 1001):
        return class_names(num_classes)
    return [f"class {index}" for index in range(num_classes)]


def top_k(
    pretrained: Pretrained, images: Sequence[object], k: int = 5, names: Sequence[str] | None = None
) -> list[list[tuple[str, float]]]:
    """The `k` most probable (label, probability) pairs of each image (PIL image or uint8 array);
    `names` labels the outputs (default: `labels(num_classes)`)."""
    batch = np.stack([pretrained.preprocessing(image) for image in images])
    logits = jax.jit(pretrained.model.apply)(pretrained.variables, batch)
    probabilities = np.asarray(jax.nn.softmax(logits.astype(np.float32), axis=-1))
    names = names or labels(probabilities.shape[-1])
    return [[(names[i], float(p[i])) for i in np.argsort(-p)[:k]] for p in probabilities]


def _read_image(path: str) -> object:
    """The image at `path` as RGB; ValueError saying why it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"{path} is not an image") from None
    except (OSError, Image.DecompressionBombError) as error:  # truncated, unreadable, too large
        raise ValueError(f"{path} cannot be read ({error})") from None


def read_images(paths: Sequence[str]) -> list[object]:
    """The images at `paths` as RGB PIL images; one ValueError naming those that cannot be read."""
    images, bad = [], []
    for path in paths:
        try:
            images.append(_read_image(path))
        except ValueError as error:
            bad.append(str(error))
    if bad:
        more = f" and {len(bad) - LISTED_BAD_IMAGES} more" if len(bad) > LISTED_BAD_IMAGES else ""
        raise ValueError(
            f"{len(bad)} of {len(paths)} images cannot be classified: {'; '.join(bad[:LISTED_BAD_IMAGES])}{more}; "
            "pass image files Pillow reads (JPEG, PNG, ...); nothing was classified"
        )
    return images


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = CommandParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"a registered name ({', '.join(sorted(REGISTRY)[:2])}, ...), a TF-Slim, Keras or timm "
                             "file, a model file or a run's workdir, local or gs://")
    parser.add_argument("--top", type=int, default=5, help="how many labels to print per image")
    parser.add_argument("--image-size", type=int, help="input size (default: the one the weights record)")
    parser.add_argument("--normalization", choices=list(NORMALIZATIONS),
                        help="input normalisation (default: the one the weights record)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the top-k labels of every image named on the command line; a mistake in the command's
    use (an unreadable image, a weights reference that names nothing, no preprocessing, no
    internet for a download) ends it with one line on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        if args.top < 1:
            raise ValueError(f"--top must be >= 1, got {args.top}")
        if args.image_size is not None:
            check_size(args.image_size, "--image-size")
        images = read_images(args.images)
        pretrained = load_pretrained(args.weights, image_size=args.image_size, normalization=args.normalization)
        names = labels(pretrained.model.num_classes, recorded_class_names(args.weights))
    except COMMAND_ERRORS as error:
        exit_for_command(PROG, error)
    for path, ranked in zip(args.images, top_k(pretrained, images, args.top, names)):
        print(path)
        for name, probability in ranked:
            print(f"  {probability:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
