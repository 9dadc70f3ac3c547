"""Model files: Flax variables as msgpack, with the model's constructor fields beside them as JSON.

`save_model(path, model, variables)` writes `path` (the variables) and `path + ".json"` (the
fields); `load_model(path)` gives back `(MobileNetV1, variables)`, with nothing of the training
code, so any Flax user can run a trained or converted model. Beside them a model file may record
the names of its classes, in output order, as `path + ".classes.json"` (`load_class_names`), and
how its images are preprocessed, as `path + ".preprocessing.json"` (`load_preprocessing`): a
training run records both, `pretrained.save_pretrained` the preprocessing.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from mobilenet_jax.paths import to_path
from flax import serialization

from mobilenet_jax.interop.preprocessing import Preprocessing
from mobilenet_jax.model import MobileNetV1

MODEL_FILE = "mobilenet_v1.msgpack"  # what a finished training run writes into its workdir
CONFIG_FILE = "config.json"  # the resolved config a training run records in its workdir
FIELDS_SUFFIX = ".json"
CLASS_NAMES_SUFFIX = ".classes.json"
PREPROCESSING_SUFFIX = ".preprocessing.json"


def model_fields(model: MobileNetV1) -> dict[str, Any]:
    """The JSON-ready constructor arguments of `model` for inference (no mapped BatchNorm axis)."""
    fields = {name: getattr(model, name) for name in model.__dataclass_fields__ if name not in ("parent", "name")}
    fields.update(bn_axis_name=None, dtype=None if model.dtype is None else jnp.dtype(model.dtype).name)
    fields["param_dtype"] = jnp.dtype(model.param_dtype).name
    return fields


def save_variables(path: str, variables: Mapping[str, Any]) -> None:
    """Write {"params", "batch_stats"} as a Flax msgpack file (local or gs:// path)."""
    path = to_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.msgpack_serialize(jax.device_get(dict(variables))))


def load_variables(path: str) -> dict[str, Any]:
    """Variables written by `save_variables`: `model.apply(load_variables(path), images)`.

    Raises ValueError naming the file when it is not a Flax msgpack file (truncated, or another
    format).
    """
    data = to_path(path).read_bytes()
    try:
        variables = serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several unrelated types for damaged input
        raise ValueError(
            f"{path} is not a readable Flax msgpack variables file ({error}): cut short or of another format; "
            "copy it again whole, or write it again"
        ) from error
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError(f"{path} holds no Flax variables (no 'params' collection); is it a model file?")
    return variables


def save_model(
    path: str,
    model: MobileNetV1,
    variables: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    *,
    preprocessing: Preprocessing | None = None,
) -> None:
    """Write the variables to `path`, the model's fields to `path + ".json"` and, when given, the
    class names (one per output) to `path + ".classes.json"` and the preprocessing to
    `path + ".preprocessing.json"`; a class-name or preprocessing file left there by an earlier
    model is removed, so that none describes another model. The preprocessing is removed first
    and written last: where it is recorded, the files before it are whole."""
    if class_names is not None and len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes")
    _write_beside(path + PREPROCESSING_SUFFIX, None)
    save_variables(path, variables)
    to_path(path + FIELDS_SUFFIX).write_text(json.dumps(model_fields(model), indent=1))
    _write_beside(path + CLASS_NAMES_SUFFIX, None if class_names is None else list(class_names))
    _write_beside(path + PREPROCESSING_SUFFIX, None if preprocessing is None else preprocessing.to_json())


def _write_beside(path: str, content: Any) -> None:
    """Write `content` as JSON to `path`, or remove `path` when `content` is None."""
    if content is not None:
        to_path(path).write_text(json.dumps(content, indent=1))
    elif to_path(path).exists():
        to_path(path).unlink()


def load_class_names(path: str) -> tuple[str, ...] | None:
    """The class names recorded beside the model file at `path`, None where none are."""
    names_path = to_path(path + CLASS_NAMES_SUFFIX)
    return tuple(json.loads(names_path.read_text())) if names_path.exists() else None


def load_preprocessing(path: str) -> Preprocessing | None:
    """The preprocessing recorded beside the model file at `path`, None where none is.

    Raises ValueError naming the file when the record is not one `save_model` writes.
    """
    recipe_path = to_path(path + PREPROCESSING_SUFFIX)
    if not recipe_path.exists():
        return None
    try:
        return Preprocessing.from_json(json.loads(recipe_path.read_text()))
    except (ValueError, TypeError) as error:  # JSON errors are ValueErrors; a non-object is a TypeError
        raise ValueError(
            f"{recipe_path} is no preprocessing record ({error}); write the model again with its preprocessing, "
            "or delete the file and give the image size and normalisation yourself"
        ) from error


def load_model(path: str) -> tuple[MobileNetV1, dict[str, Any]]:
    """The model and variables that `save_model` (or a finished training run) wrote at `path`.

    Raises FileNotFoundError (or IsADirectoryError) naming `path` when it is no file, or when its
    fields are not beside it, and ValueError naming the file that cannot be read.
    """
    return load_architecture(path), load_variables(path)


def load_architecture(path: str) -> MobileNetV1:
    """The model of the model file at `path`, from the fields beside it; its variables are not read.

    Raises as `load_model` does for a path that is no model file or fields that build no model.
    """
    model_path, fields_path = to_path(path), to_path(path + FIELDS_SUFFIX)
    if model_path.is_dir():
        inside = model_path / MODEL_FILE
        hint = f"pass {inside}" if inside.exists() else f"pass a model file ({MODEL_FILE} in a finished run's workdir)"
        raise IsADirectoryError(f"{path} is a directory, not a model file; {hint}")
    if not model_path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if not fields_path.exists():
        raise FileNotFoundError(
            f"{path} has no fields beside it ({fields_path} is missing): a model file is written with them by "
            "weights.save_model; copy the .json with the file, or write the model again"
        )
    try:
        return MobileNetV1(**json.loads(fields_path.read_text()))
    except (ValueError, TypeError) as error:  # not JSON, not an object, or fields MobileNetV1 does not take
        raise ValueError(f"{fields_path} holds no model fields ({error}); write the model again") from error
