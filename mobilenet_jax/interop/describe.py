"""What a weights reference holds, read without its arrays: `describe_weights(reference)`.

A registered name is described by its registry entry (nothing is downloaded); a model file or a
finished run's workdir by the fields and preprocessing recorded beside the model file; a TF-Slim
checkpoint, a Keras `.h5` or a timm `.safetensors` by its tensors' shapes, read where it lies,
local or gs:// (the checkpoint's `.index` alone, copied into the cache; the HDF5 datasets; the
safetensors header). Formats that list no shapes up front are read from a local copy: a torch
file (memory-mapped), a published tarball (extracted) and a frozen graph (read whole, once:
`tf_slim.read_frozen_graph` keeps it for the conversion); the loop's `download.local_copy`
finds that copy current and does not copy it again.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np
from etils import epath

from mobilenet_jax import weights
from mobilenet_jax.interop import download, keras, pretrained, tf_slim, timm
from mobilenet_jax.interop.preprocessing import Preprocessing, normalization_of
from mobilenet_jax.interop.registry import ARCHIVE_SUFFIXES, published
from mobilenet_jax.paths import to_path


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """What a set of weights holds: its model's fields (JSON-ready, num_classes included), the
    preprocessing it records (None: none), and whether it holds the activation ranges of
    quantization-aware training."""

    fields: dict[str, Any]
    preprocessing: Preprocessing | None
    activation_ranges: bool

    @property
    def normalization(self) -> str | None:
        """The input normalisation the weights record (a `data.spec.NORMALIZATIONS` key), None if none."""
        return normalization_of(self.preprocessing) if self.preprocessing else None


def describe_weights(reference: str | os.PathLike) -> WeightsInfo:
    """What the weights `reference` names hold (see the module docstring); raises as
    `pretrained.resolve_weights` does for a reference that names nothing."""
    source, target = pretrained.locate(reference)
    if source == "registry":
        return WeightsInfo(target.fields, target.preprocessing, activation_ranges=False)
    if source == "model":
        model = weights.load_architecture(os.fspath(target))
        recipe = pretrained.recorded_preprocessing(target)
        return WeightsInfo(weights.model_fields(model), recipe, activation_ranges=model.quantization is not None)
    path = to_path(target)
    converted = pretrained.CONVERTERS[source](_tensors(path, source))
    entry = published(pretrained.published_names(path), converted.fields)
    recipe = entry.preprocessing if entry else pretrained.SOURCE_PREPROCESSING[source]
    return WeightsInfo(weights.model_fields(converted.model()), recipe, activation_ranges=False)


def _tensors(path: epath.Path, source: str) -> Mapping[str, Any]:
    """The tensors of the weights at `path` (local or gs://) for the converter `source`: placeholders
    of their shapes where the format lists them, else (a frozen graph) the tensors themselves."""
    if source == "tf_slim" and path.name.endswith(ARCHIVE_SUFFIXES):
        path = to_path(pretrained.unpacked(download.local_copy(path), source))
    if source == "keras":
        shapes = keras.read_h5(path, shapes_only=True)
    elif source == "timm":
        local = path if path.name.endswith(".safetensors") else download.local_copy(path)
        shapes = timm.read_file(local, shapes_only=True)
    elif path.name.endswith(tf_slim.FROZEN_GRAPH_SUFFIX) or (path.is_dir() and not tf_slim.index_files(path)):
        return tf_slim.read_source(download.local_copy(path), use_ema=None)
    else:
        shapes = tf_slim.read_shapes(download.local_file(tf_slim.checkpoint_prefix(path) + ".index"))
    return {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}
