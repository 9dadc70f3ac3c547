"""The export formats in one table: how each writes a model and how its runtime loads it back.

`export(weights, format, out)` is the whole API the command needs; `load_exported(format, path)`
gives a callable `float32 NHWC images -> logits` on the format's own runtime, which the checks,
tests and benchmarks all use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np

from mobilenet_jax.export import onnx, savedmodel, stablehlo, tflite
from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.source import Deployable, load_weights
from mobilenet_jax.export.writer import Kinds

Runner = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Format:
    """One export format: its kinds, its writer and its loader."""

    kinds: Kinds
    write: Callable[..., Any]  # (deployable, path, *, kind, calibration)
    load: Callable[[str, int | None], Runner]  # (path, threads) -> images -> logits
    suffix: str


def _load_stablehlo(path: str, threads: int | None) -> Runner:
    call = stablehlo.load_stablehlo(path)
    return lambda images: np.asarray(call(np.asarray(images, np.float32)))


def _load_savedmodel(path: str, threads: int | None) -> Runner:
    tf = require("tensorflow")
    serve = tf.saved_model.load(path).signatures[savedmodel.IMAGES_SIGNATURE]
    return lambda images: serve(images=tf.constant(images, tf.float32))["logits"].numpy()


FORMATS: dict[str, Format] = {
    "stablehlo": Format(stablehlo.KINDS, stablehlo.export_stablehlo, _load_stablehlo, ".stablehlo"),
    "savedmodel": Format(savedmodel.KINDS, savedmodel.export_savedmodel, _load_savedmodel, ""),
    "tflite": Format(tflite.KINDS, tflite.export_tflite, lambda p, t: tflite.TFLiteModel(p, t), ".tflite"),
    "onnx": Format(onnx.KINDS, onnx.export_onnx, lambda p, t: onnx.OnnxModel(p, t), ".onnx"),
}


def get_format(name: str) -> Format:
    """The format called `name`, or a one-line ValueError listing the formats."""
    if name not in FORMATS:
        raise ValueError(f"unknown export format {name!r}; choose one of {sorted(FORMATS)}")
    return FORMATS[name]


def export(
    weights: str | Deployable,
    format: str,
    out: str,
    *,
    kind: str = "float32",
    calibration: str | Iterable[np.ndarray] | None = None,
    image_size: int | None = None,
    normalization: str | None = None,
    data_dir: str | None = None,
) -> Deployable:
    """Export `weights` (a name, model file, workdir or Deployable) as `format` / `kind` to `out`.

    `calibration` is a dataset name or folder (see `datasets`; a TFDS name is looked up in
    `data_dir`, default TFDS's own), or batches of float32 images;
    only int8 kinds use it, and the StableHLO int8 model of a quantization-aware model with
    trained ranges does not (it uses those ranges). Returns the Deployable that was exported.
    """
    chosen = get_format(format)
    deployable = weights if isinstance(weights, Deployable) else load_weights(
        weights, image_size=image_size, normalization=normalization
    )
    if isinstance(calibration, str):
        if not chosen.kinds.needs_calibration(deployable, kind):
            calibration = None
        else:  # the data pipeline needs the train extra (TensorFlow, ml_collections): import on use
            from mobilenet_jax.export.datasets import calibration_images

            calibration = calibration_images(calibration, deployable, data_dir=data_dir)
    chosen.write(deployable, out, kind=kind, calibration=calibration)
    return deployable


def load_exported(format: str, path: str, num_threads: int | None = None) -> Runner:
    """`images -> logits` of an exported model on its format's runtime."""
    return get_format(format).load(path, num_threads)
