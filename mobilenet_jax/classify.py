"""Top-5 labels of images: `python -m mobilenet_jax.classify IMAGE... [--weights NAME_OR_PATH]`.

Each image goes through the weights' own preprocessing (`Pretrained.preprocessing`); the
output lists, per image, the most probable classes with their softmax probabilities. Labels are
the class names a training run recorded beside its model (a fine-tuned workdir names its
folder's classes), else ImageNet's for 1000 or 1001 classes, else "class N".
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax
import numpy as np

from mobilenet_jax.interop.imagenet import class_names
from mobilenet_jax.interop.pretrained import REGISTRY, Pretrained, load_pretrained, recorded_class_names

DEFAULT_WEIGHTS = "mobilenet_v1_100_224.timm"


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


def main(argv: Sequence[str] | None = None) -> int:
    """Print the top-k labels of every image named on the command line; a bad weights reference or
    image ends the command with one line and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m mobilenet_jax.classify", description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--weights", default=DEFAULT_WEIGHTS,
                        help=f"a registered name ({', '.join(sorted(REGISTRY)[:2])}, ...), a TF-Slim, Keras or timm "
                             "file, a model file or a run's workdir, local or gs://")
    parser.add_argument("--top", type=int, default=5, help="how many labels to print per image")
    args = parser.parse_args(argv)

    from PIL import Image

    try:
        pretrained = load_pretrained(args.weights)
        names = labels(pretrained.model.num_classes, recorded_class_names(args.weights))
        images = []
        for path in args.images:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
    except (ValueError, OSError) as error:  # their messages name the fix
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for path, ranked in zip(args.images, top_k(pretrained, images, args.top, names)):
        print(path)
        for name, probability in ranked:
            print(f"  {probability:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
