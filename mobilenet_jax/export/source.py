"""What an export starts from: a model, its variables, its input size and its preprocessing.

`load_weights` accepts a run's workdir (its `mobilenet_v1.msgpack` and `config.json`), a model
file written by `weights.save_model`, or a pretrained name.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping


from mobilenet_jax import weights
from mobilenet_jax.interop.preprocessing import normalization_of
from mobilenet_jax.interop.pretrained import load_pretrained
from mobilenet_jax.model import MIN_INPUT_SIZE, MobileNetV1
from mobilenet_jax.paths import to_path

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
    """The model behind `weights_ref`: a workdir, a `.msgpack` model file or a pretrained name.

    A workdir's `config.json` supplies the image size and normalisation of its training run;
    `image_size` and `normalization` override them (a bare model file has neither: 224 and
    "imagenet", the project's defaults, unless given).
    """
    settings: dict[str, Any] = {}
    if to_path(weights_ref).is_dir():
        path = str(to_path(weights_ref) / weights.MODEL_FILE)
        if not to_path(path).exists():
            raise FileNotFoundError(f"{path} is missing: the run in {weights_ref} has not finished; train it first")
        settings = _run_settings(weights_ref)
        model, variables = weights.load_model(path)
    elif to_path(weights_ref).exists() or weights_ref.endswith(".msgpack"):
        if not to_path(weights_ref).exists():
            raise FileNotFoundError(f"weights file {weights_ref} does not exist; pass a model file, workdir or name")
        model, variables = weights.load_model(weights_ref)
    else:
        model, variables, settings = _pretrained(weights_ref)
    overrides = {"image_size": image_size, "normalization": normalization}
    settings.update({key: value for key, value in overrides.items() if value is not None})
    return Deployable(model, variables, **settings)


def _run_settings(workdir: str) -> dict[str, Any]:
    """Image size and normalisation recorded by a training run (flat keys), where present."""
    from mobilenet_jax.training.checkpoint import CONFIG_FILE  # the training extra, needed for workdirs only

    config_path = to_path(workdir) / CONFIG_FILE
    if not config_path.exists():
        return {}
    config = json.loads(config_path.read_text())
    return {key: config[key] for key in ("image_size", "normalization") if key in config}


def _pretrained(name: str) -> tuple[MobileNetV1, Mapping[str, Any], dict[str, Any]]:
    """Model, variables and settings from the registry's (model, variables, preprocessing)."""
    model, variables, preprocessing = load_pretrained(name)
    return model, variables, {"image_size": preprocessing.size, "normalization": normalization_of(preprocessing)}


def check_kind(
    format_name: str, kind: str, kinds: tuple[str, ...], calibration: Any, trained_ranges: bool = False
) -> None:
    """Raise a one-line ValueError for a kind the format lacks, or int8 without calibration data
    (unless the format uses the `trained_ranges` of a quantization-aware model instead)."""
    if kind not in kinds:
        raise ValueError(f"{format_name} kind must be one of {kinds}, got {kind!r}")
    if kind == "int8" and calibration is None and not trained_ranges:
        raise ValueError(f"{format_name} kind 'int8' needs calibration images: pass --calibration digits or a folder")
