"""What an export starts from: a model, its variables, its input size and its preprocessing.

`load_weights` accepts every weights reference `pretrained.resolve_weights` does: a registered
name, a TF-Slim, Keras or timm file, a model file written by `weights.save_model`, or a run's
workdir (its `mobilenet_v1.msgpack` and `config.json`), each local or gs://.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mobilenet_jax.interop.preprocessing import normalization_of
from mobilenet_jax.interop.pretrained import resolve_weights
from mobilenet_jax.model import MIN_INPUT_SIZE, MobileNetV1

DEFAULT_IMAGE_SIZE = 224
DEFAULT_NORMALIZATION = "imagenet"


@dataclasses.dataclass(frozen=True)
class Deployable:
    """A model ready to export: its input is `image_size` square, normalised by `normalization`."""

    model: MobileNetV1
    variables: Mapping[str, Any]
    image_size: int = DEFAULT_IMAGE_SIZE
    normalization: str = DEFAULT_NORMALIZATION

    def __post_init__(self) -> None:
        if self.image_size < MIN_INPUT_SIZE:
            raise ValueError(f"image_size must be >= {MIN_INPUT_SIZE}, got {self.image_size}")


def load_weights(
    weights_ref: str, *, image_size: int | None = None, normalization: str | None = None
) -> Deployable:
    """The model behind `weights_ref`: any weights reference (`pretrained.resolve_weights`).

    The preprocessing the weights record (a run's `config.json`, a registry entry's, a
    `save_pretrained` sidecar) supplies the image size and normalisation; `image_size` and
    `normalization` override them (a bare model file records neither: 224 and "imagenet", the
    project's defaults, unless given).
    """
    model, variables, preprocessing = resolve_weights(weights_ref)
    if preprocessing is not None:
        image_size = image_size or preprocessing.size
        normalization = normalization or normalization_of(preprocessing)
    return Deployable(model, variables, image_size or DEFAULT_IMAGE_SIZE, normalization or DEFAULT_NORMALIZATION)


def check_kind(
    format_name: str, kind: str, kinds: tuple[str, ...], calibration: Any, trained_ranges: bool = False
) -> None:
    """Raise a one-line ValueError for a kind the format lacks, or int8 without calibration data
    (unless the format uses the `trained_ranges` of a quantization-aware model instead)."""
    if kind not in kinds:
        raise ValueError(f"{format_name} kind must be one of {kinds}, got {kind!r}")
    if kind == "int8" and calibration is None and not trained_ranges:
        raise ValueError(f"{format_name} kind 'int8' needs calibration images: pass --calibration digits or a folder")
