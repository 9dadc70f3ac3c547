"""ONNX export for ONNX Runtime: tf2onnx from the LiteRT flatbuffer of the same model.

tf2onnx converts the flatbuffer of `tflite`, whose builtin ops (CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED) map one to one onto ONNX Conv (with `group` for depthwise) and Gemm. Kind
"int8" converts the LiteRT full-integer flatbuffer of the int8 model (`tflite_int8`) into QDQ
form: every int8 tensor a QuantizeLinear / DequantizeLinear pair with the int8 model's scale
and zero point, kernels per output channel, biases int32. ONNX Runtime fuses the pairs into
integer kernels, so it computes the int8 model's integers; its input and output stay float32.
The model has a fixed batch size (default 1); `OnnxModel` runs any number of images through it
in padded chunks. docs/deploy.md says why this route and the fixed batch.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

import numpy as np
from etils import epath

from mobilenet_jax.export.onnx_int8 import integer_graph
from mobilenet_jax.export.quantize import int8_model, output_grid
from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.export.tflite import export_tflite
from mobilenet_jax.export.tflite_int8 import int8_flatbuffer
from mobilenet_jax.export.writer import Kinds, written

KINDS = Kinds("ONNX", ("float32", "int8"))
OPSET = 17


def export_onnx(
    deployable: Deployable,
    path: str | None = None,
    *,
    kind: str = "float32",
    calibration: Iterable[np.ndarray] | None = None,
    batch_size: int = 1,
) -> bytes:
    """The serialized ONNX model of `deployable` as `kind`, for `batch_size` images per call.

    `calibration` (needed for "int8" only) yields float32 NHWC image batches. The bytes are also
    written to `path` when given.
    """
    KINDS.check(deployable, kind, calibration)
    tf2onnx = require("tf2onnx")
    int8 = None if kind == "float32" else int8_model(deployable.model, deployable.variables, calibration)
    with tempfile.TemporaryDirectory() as tmp:
        flatbuffer = os.path.join(tmp, "model.tflite")
        if int8 is None:
            export_tflite(deployable, flatbuffer, batch_size=batch_size)
        else:
            epath.Path(flatbuffer).write_bytes(int8_flatbuffer(deployable, int8, batch_size=batch_size))
        proto, _ = tf2onnx.convert.from_tflite(flatbuffer, opset=OPSET)
    if int8 is not None:
        integer_graph(proto, int8["image"], output_grid(int8))
    return written(proto.SerializeToString(), path)


class OnnxModel:
    """An ONNX model on ONNX Runtime's CPU provider: float32 NHWC images in, logits out.

    Any number of images is run in chunks of the model's batch size, the last one zero-padded.
    """

    def __init__(self, model: bytes | str, num_threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        content = model if isinstance(model, bytes) else epath.Path(model).read_bytes()
        self.session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        self.batch_size: int = self.session.get_inputs()[0].shape[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        count, batch = len(images), self.batch_size
        if count == batch:
            return self.session.run(None, {self._input: images})[0]
        padding = np.zeros((-count % batch, *images.shape[1:]), np.float32)
        chunks = np.split(np.concatenate([images, padding]), -(-count // batch))
        return np.concatenate([self.session.run(None, {self._input: chunk})[0] for chunk in chunks])[:count]
