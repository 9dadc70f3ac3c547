"""The evaluation preprocessing that pretrained weights were published with, as data and a function.

TF-Slim (and the Keras weights, converted from its checkpoints) crop the central 87.5 % of an
image, resize it bilinearly to the input size and map pixels to [-1, 1]. timm resizes the
shorter side to size / crop fraction (bicubic), crops the centre, and normalises by mean and
std per channel (0.5 and 0.5 for its MobileNet v1: also [-1, 1]). Resizing uses Pillow's
filters, which antialias when downsampling (TensorFlow's bilinear resize does not), so pixels
may differ slightly from the publishers' pipelines.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from mobilenet_jax.data.spec import NORMALIZATIONS

RESIZE_MODES = ("crop_then_resize", "resize_then_crop")
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images are fed to a model: crop, resize, then (pixel / 255 - mean) / std.

    `resize`: "crop_then_resize" (TF-Slim: the central `crop_fraction` of each side, resized to
    `size` x `size`) or "resize_then_crop" (timm: shorter side to floor(size / crop_fraction),
    then the central `size` x `size`).
    """

    size: int = 224
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: str = "crop_then_resize"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")

    def __call__(self, image: Any) -> np.ndarray:
        """A (size, size, 3) float32 model input from a PIL image or an (H, W, 3) uint8 array."""
        from PIL import Image  # only image preprocessing needs Pillow

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, np.uint8))
        image = image.convert("RGB")
        resample = Image.Resampling.BILINEAR if self.interpolation == "bilinear" else Image.Resampling.BICUBIC
        w, h = image.size
        if self.resize == "crop_then_resize":
            cw, ch = w * self.crop_fraction, h * self.crop_fraction
            box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
            image = image.resize((self.size, self.size), resample, box=box)
        else:
            short = math.floor(self.size / self.crop_fraction)
            scale = short / min(w, h)
            w, h = (short, int(h * scale)) if w <= h else (int(w * scale), short)
            image = image.resize((w, h), resample)
            left, top = round((w - self.size) / 2), round((h - self.size) / 2)
            image = image.crop((left, top, left + self.size, top + self.size))
        pixels = np.asarray(image, np.float32) / 255.0
        return (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


TF_SLIM = Preprocessing(interpolation="bilinear", resize="crop_then_resize")
TIMM = Preprocessing(interpolation="bicubic", resize="resize_then_crop")


def _unit_scale(values: tuple[float, ...]) -> tuple[float, ...]:
    """Per-channel values of the data pipeline's 0..255 scale on Preprocessing's 0..1 scale."""
    return tuple(v / 255 for v in values)


def with_normalization(name: str, size: int) -> Preprocessing:
    """TF-Slim's central crop and bilinear resize to `size`, normalised as the data pipeline's
    `name` (a key of NORMALIZATIONS)."""
    mean, std = (_unit_scale(values) for values in NORMALIZATIONS[name])
    return dataclasses.replace(TF_SLIM, size=size, mean=mean, std=std)


def normalization_of(preprocessing: Preprocessing) -> str:
    """The data pipeline's name for the mean and std of `preprocessing` (on the 0..1 scale)."""
    for name, (mean, std) in NORMALIZATIONS.items():
        if np.allclose(_unit_scale(mean), preprocessing.mean) and np.allclose(_unit_scale(std), preprocessing.std):
            return name
    raise ValueError(
        f"the weights' normalisation (mean {preprocessing.mean}, std {preprocessing.std}) is none of "
        f"{sorted(NORMALIZATIONS)}; set it explicitly (--config.normalization for train.py, --normalization for the export command)"
    )
