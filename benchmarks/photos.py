"""A TFDS set of ImageNet-like JPEGs cut from the colour photographs scikit-image and scikit-learn ship.

Each photograph is a class; each example is a random crop of it resized to ImageNet's sizes
(mostly 500x375 and 375x500), with optional sensor-like grain so the files carry ImageNet's
bytes per pixel, encoded by PIL at quality 90 (4:2:0). `benchmarks.input_pipeline` and
`benchmarks.resume` build it once under their `--data-dir`.
"""

from __future__ import annotations

import io
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

DATASET = "imagenet_like_photos"
JPEG_QUALITY = 90
# The colour photographs of scikit-image and scikit-learn; each is one class.
CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
           "motorcycle", "china", "flower")


def photographs() -> dict[str, np.ndarray]:
    """The colour photographs shipped with scikit-image and scikit-learn, by name (uint8 HWC)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    pictures = {name: getattr(data, name)() for name in CLASSES[:7]}
    pictures["motorcycle"] = data.stereo_motorcycle()[0]  # the left view
    pictures.update(zip(("china", "flower"), load_sample_images().images))
    return pictures


def imagenet_like_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) drawn like ImageNet's training JPEGs: mostly 500x375 or 375x500, some 500x333,
    the rest smaller with aspect 0.6-1."""
    draw = rng.random()
    if draw < 0.45:
        return 375, 500
    if draw < 0.62:
        return 500, 375
    if draw < 0.72:
        return 333, 500
    longer = int(rng.integers(120, 501))
    shorter = round(longer * rng.uniform(0.6, 1.0))
    return (shorter, longer) if rng.random() < 0.7 else (longer, shorter)


def photo_view(photo: np.ndarray, size: tuple[int, int], grain: float, rng: np.random.Generator) -> np.ndarray:
    """A random crop of `photo` with the aspect of `size` (25-100 % of the largest such crop),
    resized to `size`, maybe mirrored, with Gaussian grain of std `grain` levels."""
    from PIL import Image

    height, width = size
    rows, cols = photo.shape[:2]
    crop_h, crop_w = (rows, rows * width / height) if rows * width / height <= cols else (cols * height / width, cols)
    scale = np.sqrt(rng.uniform(0.25, 1.0))
    crop_h, crop_w = max(1, int(crop_h * scale)), max(1, int(crop_w * scale))
    top, left = int(rng.integers(0, rows - crop_h + 1)), int(rng.integers(0, cols - crop_w + 1))
    view = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
    pixels = np.asarray(view.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    if grain:
        pixels = pixels + rng.normal(0.0, grain, pixels.shape).astype(np.float32)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG bytes of an RGB image, 4:2:0 chroma, as PIL (libjpeg) writes it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class ImagenetLikePhotos(tfds.core.GeneratorBasedBuilder):
    """JPEGs of ImageNet's sizes cut from shipped photographs; the label is the photograph."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for a checksums file beside a builder's module through a package this
    # environment lacks (importlib_resources); this builder downloads nothing.
    code_path = None

    def __init__(self, *, examples: int = 4096, grain: float = 0.0, seed: int = 0, **kwargs: Any):
        self._examples, self._grain, self._seed = examples, grain, seed
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=CLASSES),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        validation = max(64, self._examples // 16)  # enough for up to 64 shards
        return {
            "train": self._generate_examples(0, self._examples),
            "validation": self._generate_examples(self._examples, validation),
        }

    def _generate_examples(self, start: int, count: int) -> Iterator[tuple[int, dict[str, Any]]]:
        pictures = photographs()
        for index in range(start, start + count):
            rng = np.random.default_rng([self._seed, index])
            label = index % len(CLASSES)
            pixels = photo_view(pictures[CLASSES[label]], imagenet_like_size(rng), self._grain, rng)
            yield index, {"image": encode_jpeg(pixels), "label": label}


def dataset_dir(root: str | pathlib.Path, examples: int, grain: float) -> pathlib.Path:
    """The TFDS data_dir of one (examples, grain) variant under `root`."""
    return pathlib.Path(root) / f"n{examples}_grain{grain:g}"


def build_dataset(data_dir: pathlib.Path, examples: int, grain: float, shards: int) -> None:
    """Writes the set into `data_dir` unless it is there already."""
    builder = ImagenetLikePhotos(data_dir=str(data_dir), examples=examples, grain=grain)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=shards))


def dataset_stats(data_dir: pathlib.Path) -> dict[str, Any]:
    """Count, shards, mean and median JPEG bytes and mean dimensions of the train split."""
    builder = tfds.builder(DATASET, data_dir=str(data_dir))
    records = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    shapes = records.map(lambda ex: (tf.strings.length(ex["image"]), tf.image.extract_jpeg_shape(ex["image"])))
    sizes, dims = zip(*((int(n), tuple(int(v) for v in s[:2])) for n, s in shapes.as_numpy_iterator()))
    sizes, dims = np.array(sizes), np.array(dims)
    typical = np.mean([tuple(d) in ((375, 500), (500, 375)) for d in dims])
    return {
        "examples": len(sizes),
        "shards": len(builder.info.splits["train"].filenames),
        "classes": builder.info.features["label"].num_classes,
        "mean_kb": sizes.mean() / 1e3,
        "median_kb": float(np.median(sizes)) / 1e3,
        "mean_height": dims[:, 0].mean(),
        "mean_width": dims[:, 1].mean(),
        "share_500x375": typical,
        "bits_per_pixel": 8 * sizes.sum() / (dims[:, 0] * dims[:, 1]).sum(),
    }


def describe(stats: dict[str, Any]) -> str:
    """One line about the dataset's JPEGs."""
    return (f"{stats['examples']} train JPEGs in {stats['shards']} shards, {stats['classes']} classes, "
            f"mean {stats['mean_kb']:.1f} KB (median {stats['median_kb']:.1f}), mean {stats['mean_width']:.0f}x"
            f"{stats['mean_height']:.0f} (WxH), {100 * stats['share_500x375']:.0f} % 500x375 or 375x500, "
            f"{stats['bits_per_pixel']:.2f} bits/pixel")
