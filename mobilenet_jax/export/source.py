"""What an export starts from: a model, its variables, its input size and its preprocessing.

`load_weights` accepts every weights reference `pretrained.resolve_weights` does: a registered
name, a TF-Slim, Keras or timm file, a model file written by `weights.save_model`, or a run's
workdir (its `mobilenet_v1.msgpack`), each local or gs://. The input size and normalisation are
the ones the weights record (`pretrained.load_pretrained`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mobilenet_jax.data.spec import check_normalization
from mobilenet_jax.interop.preprocessing import check_size, normalization_of
from mobilenet_jax.interop.pretrained import load_pretrained
from mobilenet_jax.model import MobileNetV1


@dataclasses.dataclass(frozen=True)
class Deployable:
    """A model ready to export: its input is `image_size` square, normalised by `normalization`."""

    model: MobileNetV1
    variables: Mapping[str, Any]
    image_size: int = 224
    normalization: str = "imagenet"

    def __post_init__(self) -> None:
        check_size(self.image_size, "image_size")
        check_normalization(self.normalization)


def load_weights(
    weights_ref: str, *, image_size: int | None = None, normalization: str | None = None
) -> Deployable:
    """The model behind `weights_ref`: any weights reference (`pretrained.resolve_weights`).

    The preprocessing the weights record (beside a model file, a registry entry's, a run's
    `config.json` for model files written before they recorded it) supplies the image size and
    normalisation; `image_size` and `normalization` replace them. A model file that records
    none needs both: else `pretrained.NoPreprocessingError`.
    """
    model, variables, recipe = load_pretrained(weights_ref, image_size=image_size, normalization=normalization)
    return Deployable(model, variables, recipe.size, normalization or normalization_of(recipe))

