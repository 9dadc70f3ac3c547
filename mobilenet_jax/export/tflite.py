"""LiteRT (TFLite) flatbuffers of the folded model, and a runner on the XNNPACK delegate.

The flatbuffer comes from the `jax2tf` function (`savedmodel.tf_function`): the converter
legalizes its StableHLO into builtin ops, the 3x3 depthwise layers into DEPTHWISE_CONV_2D, which
XNNPACK accelerates. Kinds:

- "float32": the model as it is.
- "float16": weights stored as float16, dequantized to float32 when the model loads.
- "dynamic_int8": int8 weights, activations quantized on the fly (no calibration data).
- "int8": full-integer, int8 input and output: the int8 model of `quantize` (a
  quantization-aware model's trained ranges, or ranges calibrated once on a representative
  dataset of normalised float32 images), its parameters written by `tflite_int8`.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from etils import epath

from mobilenet_jax.export.quantize import int8_model
from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.savedmodel import tf_function
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.export.tflite_int8 import int8_flatbuffer
from mobilenet_jax.export.writer import Kinds, written

KINDS = Kinds("TFLite", ("float32", "float16", "dynamic_int8", "int8"))


def export_tflite(
    deployable: Deployable,
    path: str | None = None,
    *,
    kind: str = "float32",
    calibration: Iterable[np.ndarray] | None = None,
    batch_size: int | None = 1,
) -> bytes:
    """The flatbuffer of `deployable` quantized as `kind` (see the module docstring).

    `calibration` (needed for "int8" only) yields float32 NHWC image batches. The input has
    `batch_size` images (the interpreter resizes it at run time); None keeps the batch dimension
    symbolic, at the cost of shape-computing ops (SHAPE, BROADCAST_TO) that XNNPACK does not take.
    The bytes are also written to `path` when given.
    """
    KINDS.check(deployable, kind, calibration)
    if kind == "int8":
        int8 = int8_model(deployable.model, deployable.variables, calibration)
        return written(int8_flatbuffer(deployable, int8, batch_size=batch_size), path)
    tf = require("tensorflow")
    forward = tf_function(deployable, batch_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], forward)
    if kind != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if kind == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return written(converter.convert(), path)


class TFLiteModel:
    """A flatbuffer on `ai_edge_litert`'s interpreter (XNNPACK): float32 images in, logits out.

    Quantized inputs and outputs are converted with the model's own scale and zero point, so
    every kind is called the same way. The batch dimension is resized on demand.
    """

    def __init__(self, model: bytes | str, num_threads: int | None = None) -> None:
        litert = require("ai_edge_litert.interpreter")
        content = model if isinstance(model, bytes) else epath.Path(model).read_bytes()
        self.interpreter = litert.Interpreter(model_content=content, num_threads=num_threads)
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch: int | None = None

    def op_names(self) -> set[str]:
        """The builtin op names in the graph, e.g. {"CONV_2D", "DEPTHWISE_CONV_2D", ...}."""
        return {op["op_name"] for op in self.interpreter._get_ops_details()}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], images.shape)
            self.interpreter.allocate_tensors()
            self._batch = images.shape[0]
        self.interpreter.set_tensor(self._input["index"], _quantize(images, self._input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self._output["index"]), self._output)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float `x` in the tensor's dtype, through its (scale, zero point) when it is an integer type."""
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float32 values of a tensor, through its (scale, zero point) when it is an integer type."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    return (x.astype(np.float32) - zero) * scale
