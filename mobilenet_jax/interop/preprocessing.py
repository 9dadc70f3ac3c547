"""The evaluation preprocessing that pretrained weights were published with, as data and a function.

TF-Slim (and the Keras weights, converted from its checkpoints) crop the central 87.5 % of an
image, resize it bilinearly to the input size and map pixels to [-1, 1]. timm resizes the
shorter side to size / crop fraction (bicubic), crops the centre, and normalises by mean and
std per channel (0.5 and 0.5 for its MobileNet v1: also [-1, 1]). A model trained here is
evaluated as the data pipeline does (`for_run`): the central square of a fraction of the
shorter side, resized bilinearly. Resizing uses Pillow's filters, which antialias when
downsampling (TensorFlow's bilinear resize does not), so pixels may differ slightly from the
publishers' pipelines.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np
from mobilenet_jax.choices import check_choice
from mobilenet_jax.data.spec import EVAL_CROP_PADDING, MAX_IMAGE_SIZE, NORMALIZATIONS, check_normalization
from mobilenet_jax.model import MIN_INPUT_SIZE

RESIZE_MODES = ("crop_then_resize", "resize_then_crop", "square_crop_then_resize")
INTERPOLATIONS = ("bilinear", "bicubic")


def check_size(size: int, name: str = "size") -> int:
    """`size` if a model input can be `size` x `size` pixels, else a ValueError naming `name`."""
    if not MIN_INPUT_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"{name} must be between {MIN_INPUT_SIZE} (MobileNet downsamples 32x) and {MAX_IMAGE_SIZE}, got {size}; "
            "pass a size in that range"
        )
    return size


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images are fed to a model: crop, resize, then (pixel / 255 - mean) / std.

    `resize`: "crop_then_resize" (TF-Slim: the central `crop_fraction` of each side, resized to
    `size` x `size`), "resize_then_crop" (timm: shorter side to floor(size / crop_fraction),
    then the central `size` x `size`) or "square_crop_then_resize" (the data pipeline's
    evaluation: the central square of int(crop_fraction * shorter side) whole pixels, resized
    to `size` x `size`).
    """

    size: int = 224
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: str = "crop_then_resize"

    def __post_init__(self) -> None:
        check_choice("resize", self.resize, RESIZE_MODES)
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        check_size(self.size)

    def __call__(self, image: Any) -> np.ndarray:
        """A (size, size, 3) float32 model input from a PIL image or an (H, W, 3) uint8 array."""
        from PIL import Image  # only image preprocessing needs Pillow

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, np.uint8))
        image = image.convert("RGB")
        resample = Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC
        w, h = image.size
        if self.resize != "resize_then_crop":
            image = image.resize((self.size, self.size), resample, box=self._crop_box(w, h))
        else:
            short = math.floor(self.size / self.crop_fraction)
            scale = short / min(w, h)
            w, h = (short, int(h * scale)) if w <= h else (int(w * scale), short)
            image = image.resize((w, h), resample)
            left, top = round((w - self.size) / 2), round((h - self.size) / 2)
            image = image.crop((left, top, left + self.size, top + self.size))
        pixels = np.asarray(image, np.float32) / 255.0
        return (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def _crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The (left, top, right, bottom) region that a crop-first mode resizes to `size` x `size`."""
        if self.resize == "crop_then_resize":
            cw, ch = width * self.crop_fraction, height * self.crop_fraction
            return ((width - cw) / 2, (height - ch) / 2, (width + cw) / 2, (height + ch) / 2)
        side = int(self.crop_fraction * min(width, height))  # as data.preprocess._center_crop_window
        left, top = (width - side + 1) // 2, (height - side + 1) // 2
        return (left, top, left + side, top + side)

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON-ready values (what a model file records beside it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, recipe: Mapping[str, Any]) -> "Preprocessing":
        """The preprocessing `to_json` wrote; ValueError naming the fields it does not know."""
        unknown = sorted(set(recipe) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown preprocessing fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()})


TF_SLIM = Preprocessing(interpolation="bilinear", resize="crop_then_resize")
TIMM = Preprocessing(interpolation="bicubic", resize="resize_then_crop")


def _unit_scale(values: tuple[float, ...]) -> tuple[float, ...]:
    """Per-channel values of the data pipeline's 0..255 scale on Preprocessing's 0..1 scale."""
    return tuple(v / 255 for v in values)


def _mean_std(normalization: str) -> dict[str, tuple[float, ...]]:
    """The `mean` and `std` fields of the data pipeline's `normalization` (a key of NORMALIZATIONS)."""
    mean, std = (_unit_scale(values) for values in NORMALIZATIONS[check_normalization(normalization)])
    return dict(mean=mean, std=std)


def for_run(image_size: int, normalization: str, crop_padding: int) -> Preprocessing:
    """The evaluation preprocessing of a training run, as the data pipeline's `preprocess_for_eval`:
    the central square of image_size / (image_size + crop_padding) of the shorter side, resized
    bilinearly to `image_size`, normalised as `normalization` (a key of NORMALIZATIONS)."""
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    return Preprocessing(
        size=image_size, crop_fraction=image_size / (image_size + crop_padding), interpolation="bilinear",
        resize="square_crop_then_resize", **_mean_std(normalization),
    )


def with_overrides(
    recipe: Preprocessing | None, image_size: int | None = None, normalization: str | None = None
) -> Preprocessing | None:
    """`recipe` with `image_size` and the mean and std of `normalization` in place of its own,
    where given. Without a recipe: the data pipeline's evaluation at `image_size` and
    `normalization` (`for_run` with EVAL_CROP_PADDING) when both are given, else None."""
    if recipe is None:
        if image_size is None or normalization is None:
            return None
        return for_run(image_size, normalization, EVAL_CROP_PADDING)
    if image_size is not None:
        recipe = dataclasses.replace(recipe, size=image_size)
    if normalization is not None:
        recipe = dataclasses.replace(recipe, **_mean_std(normalization))
    return recipe


def normalization_of(preprocessing: Preprocessing) -> str:
    """The data pipeline's name for the mean and std of `preprocessing` (on the 0..1 scale)."""
    for name, (mean, std) in NORMALIZATIONS.items():
        if np.allclose(_unit_scale(mean), preprocessing.mean) and np.allclose(_unit_scale(std), preprocessing.std):
            return name
    raise ValueError(
        f"the weights' normalisation (mean {preprocessing.mean}, std {preprocessing.std}) is none of "
        f"{sorted(NORMALIZATIONS)}; set it explicitly (--config.normalization for train.py, --normalization for the export command)"
    )
