"""What the input pipeline is asked for: the dataset, its sizes and conventions, checked once.

TensorFlow-free, so a config can be checked before any framework loads. `DataSpec` fields
carry the names of the config fields they come from, and so do its errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mobilenet_jax.choices import check_choice

# Per-channel (mean, std) on the 0..255 scale. timm's mean = std = 0.5 on [0, 1] ("half") is the
# same map as Inception's x / 127.5 - 1.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "inception": ((127.5,) * 3, (127.5,) * 3),
    "half": ((127.5,) * 3, (127.5,) * 3),
}
MIN_IMAGE_SIZE = 32
# 9x the paper's 224, far beyond any published MobileNet v1 resolution, and still a batch of a few
# images: a float32 training step of MobileNet v1 1.0 at 2048 needs 7.7 GiB of temporaries at
# batch 1 (XLA's memory_analysis on the CPU backend; 0.09 GiB at 224).
MAX_IMAGE_SIZE = 2048
# Eval crop side = image_size / (image_size + 32) of the shorter side: 0.875 at 224.
EVAL_CROP_PADDING = 32
BUILTIN_DATASETS = ("digits", "folder")  # any other name is a TFDS dataset
HELD_OUT_PERCENT = 10  # of a TFDS "train" split, evaluated on when the dataset has no eval split
INPUT_DTYPES = ("uint8", "float32")


def check_normalization(name: str) -> str:
    """`name` if it is a normalisation convention, else a ValueError listing them."""
    return check_choice("normalization", name, tuple(NORMALIZATIONS))


def normalize(images: Any, convention: str) -> Any:
    """(images - mean) / std of a normalisation convention, for float 0..255 images of any array
    kind (numpy, JAX, TensorFlow).

    Computed as (images - mean) * (1 / std), the form XLA compiles a division by a constant
    into, so that the host and a jitted step give the same bits.
    """
    mean, std = NORMALIZATIONS[check_normalization(convention)]
    return (images - np.asarray(mean, np.float32)) * (1 / np.asarray(std, np.float64)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A dataset and how to batch and preprocess it; batch sizes are global (all processes)."""

    dataset: str = "digits"  # "digits", "folder" or a TFDS image-classification name
    image_size: int = 224
    batch_size: int = 1024
    eval_batch_size: int = 1024
    data_dir: str | None = None  # TFDS data folder
    train_split: str = "train"
    # None: the dataset's "validation" split, else "test", else the last HELD_OUT_PERCENT of
    # "train" (which training then does not see).
    eval_split: str | None = None
    folder_train_dir: str | None = None
    folder_eval_dir: str | None = None
    folder_eval_fraction: float = 0.1  # held out of folder_train_dir when no folder_eval_dir
    # Folder images training cannot use (not decoding, a side under 2 pixels, over ~89 M pixels):
    # False refuses the folder naming them, True leaves them out.
    skip_bad_images: bool = False
    crop_min_area: float = 0.08
    shuffle_buffer: int = 16_384
    cache: bool = False  # keep the first read in memory; every epoch then shuffles all of it
    prefetch: int = 0  # batches; 0 lets tf.data tune it
    # How pixels travel to the devices: "uint8" (rounded; a quarter of the bytes) or "float32".
    input_dtype: str = "uint8"

    def __post_init__(self) -> None:
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(
                f"image_size must be >= {MIN_IMAGE_SIZE} (MobileNet downsamples 32x), got {self.image_size}; "
                "raise config.image_size"
            )
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be <= {MAX_IMAGE_SIZE}, got {self.image_size}; lower config.image_size")
        for field in ("batch_size", "eval_batch_size", "shuffle_buffer"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        check_choice("input_dtype", self.input_dtype, INPUT_DTYPES)
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 (0: tuned by tf.data), got {self.prefetch}")
        if not 0 < self.crop_min_area <= 1:
            raise ValueError(f"crop_min_area must be in (0, 1], got {self.crop_min_area}")
        if self.skip_bad_images and self.dataset != "folder":
            raise ValueError(
                f"skip_bad_images=True applies to dataset='folder' only, got dataset={self.dataset!r}; unset it"
            )
        if not 0 < self.folder_eval_fraction < 1:
            raise ValueError(
                f"folder_eval_fraction must be in (0, 1), got {self.folder_eval_fraction}; or set folder_eval_dir"
            )


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Sizes and class names of a dataset's train and eval splits (whole splits, all processes)."""

    num_classes: int
    num_train_examples: int
    num_eval_examples: int
    class_names: tuple[str, ...] | None = None
    eval_split: str | None = None  # the split (or held-out part) evaluation reads
