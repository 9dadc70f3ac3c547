"""Small image-folder datasets for measuring fine-tuning, made from pictures that packages ship.

Each set is written as `root/<set>/{train,val}/<class>/<n>.{png,jpg}`, deterministically from a
seed, so every recipe and every framework sees the same files:

- `shapes`: circles, squares and triangles drawn at random sizes, colours and places on noisy
  backgrounds; 96-200 px, PNG and JPEG, RGB, L and RGBA (3 classes).
- `digits`: scikit-learn's 8x8 digits upscaled to 96 px (10 classes).
- `photos`: random crops of nine photographs that scikit-image and scikit-learn ship; the class
  is the photograph (9 classes).
- `textures`: crops of scikit-image's brick, grass, gravel and moon-surface images (4 classes).
- `faces`: scikit-image's LFW subset, 25 x 25 faces against non-faces, upscaled to 96 px
  (2 classes).

    python -m benchmarks.transfer_sets /tmp/transfer   # writes all five
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

Example = tuple[Image.Image, str]  # an image and its class name


def _shapes(rng: np.random.Generator, count: int) -> Iterator[Example]:
    """Drawn shapes: class by shape, everything else random."""
    classes = ("circle", "square", "triangle")
    for index in range(count):
        label = classes[index % len(classes)]
        size = int(rng.integers(96, 201))
        background = rng.integers(0, 256, (size, size, 3)).astype(np.uint8) // 4 + int(rng.integers(0, 192))
        image = Image.fromarray(background)
        draw = ImageDraw.Draw(image)
        extent = rng.uniform(0.3, 0.7) * size
        x0, y0 = rng.uniform(0, size - extent, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if label == "circle":
            draw.ellipse((x0, y0, x0 + extent, y0 + extent), fill=fill)
        elif label == "square":
            draw.rectangle((x0, y0, x0 + extent, y0 + extent), fill=fill)
        else:
            draw.polygon([(x0, y0 + extent), (x0 + extent, y0 + extent), (x0 + extent / 2, y0)], fill=fill)
        mode = ("RGB", "L", "RGBA")[index % 3]
        yield image.convert(mode), label


def _digits(rng: np.random.Generator, count: int) -> Iterator[Example]:
    """scikit-learn digits, 8x8 grey levels 0-16, as 96 x 96 images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in rng.permutation(len(digits.target))[:count]:
        pixels = np.round(digits.images[index] * (255 / 16)).astype(np.uint8)
        yield Image.fromarray(pixels).resize((96, 96), Image.Resampling.BILINEAR), str(digits.target[index])


def _crops(pictures: dict[str, np.ndarray], rng: np.random.Generator, count: int,
           fraction: tuple[float, float]) -> Iterator[Example]:
    """Square crops of each picture (a `fraction` of its shorter side), resized to 96-160 px."""
    names = sorted(pictures)
    for index in range(count):
        name = names[index % len(names)]
        picture = Image.fromarray(pictures[name]).convert("RGB")
        side = int(min(picture.size) * rng.uniform(*fraction))
        left = int(rng.integers(0, picture.size[0] - side + 1))
        top = int(rng.integers(0, picture.size[1] - side + 1))
        out = int(rng.integers(96, 161))
        yield picture.crop((left, top, left + side, top + side)).resize((out, out), Image.Resampling.BILINEAR), name


def _photos(rng: np.random.Generator, count: int) -> Iterator[Example]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    pictures = {name: getattr(data, name)() for name in
                ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")}
    pictures.update(zip(("china", "flower"), load_sample_images().images))
    return _crops(pictures, rng, count, (0.2, 0.5))


def _textures(rng: np.random.Generator, count: int) -> Iterator[Example]:
    from skimage import data

    return _crops({name: getattr(data, name)() for name in ("brick", "grass", "gravel", "moon")}, rng, count, (0.1, 0.3))


def _faces(rng: np.random.Generator, count: int) -> Iterator[Example]:
    """scikit-image's LFW subset: 100 faces, then 100 non-faces, 25 x 25 grey in [0, 1]."""
    from skimage import data

    images = data.lfw_subset()
    for index in rng.permutation(len(images))[:count]:
        pixels = np.round(images[index] * 255).astype(np.uint8)
        yield Image.fromarray(pixels).resize((96, 96), Image.Resampling.BILINEAR), "face" if index < 100 else "other"


# Set name -> (examples generator, train count, validation count).
SETS: dict[str, tuple[Callable[[np.random.Generator, int], Iterator[Example]], int, int]] = {
    "shapes": (_shapes, 180, 60),
    "digits": (_digits, 300, 300),
    "photos": (_photos, 270, 180),
    "textures": (_textures, 160, 160),
    "faces": (_faces, 120, 80),
}


def write_set(root: pathlib.Path, name: str, seed: int = 0) -> pathlib.Path:
    """Write set `name` under `root / name` (train and val folders); returns that folder."""
    examples, train_count, val_count = SETS[name]
    rng = np.random.default_rng(seed)
    folder = root / name
    for index, (image, label) in enumerate(examples(rng, train_count + val_count)):
        split = "train" if index < train_count else "val"
        target = folder / split / label
        target.mkdir(parents=True, exist_ok=True)
        if index % 2 and image.mode != "RGBA":
            image.save(target / f"{index}.jpg", quality=90)
        else:
            image.save(target / f"{index}.png")
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the fine-tuning image-folder sets.")
    parser.add_argument("root", type=pathlib.Path, help="the folder that receives one sub-folder per set")
    root = parser.parse_args().root
    for set_name in SETS:
        print(write_set(root, set_name))
