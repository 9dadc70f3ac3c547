"""ONNX export for ONNX Runtime: tf2onnx from the float32 LiteRT flatbuffer, int8 by ONNX Runtime.

Route, and why: `tf2onnx` cannot read the `jax2tf` SavedModel (its graph is one
`XlaCallModule` op, which tf2onnx has no handler for), but it converts the LiteRT flatbuffer,
whose builtin ops (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) map one to one onto ONNX Conv
(with `group` for depthwise) and Gemm. `jax2onnx` (direct from JAX) could not be installed
beside this project's pinned `orbax-checkpoint`. The batch dimension is made symbolic after the
conversion. Kind "int8" quantizes that float model with ONNX Runtime's static QDQ quantization:
int8 weights per output channel and int8 activations calibrated on a representative dataset.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

import numpy as np
from etils import epath

from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.source import Deployable, check_kind
from mobilenet_jax.export.tflite import export_tflite

KINDS = ("float32", "int8")
OPSET = 17
BATCH_DIM = "batch"


def export_onnx(
    deployable: Deployable,
    path: str | None = None,
    *,
    kind: str = "float32",
    calibration: Iterable[np.ndarray] | None = None,
) -> bytes:
    """The serialized ONNX model of `deployable` as `kind`; also written to `path` when given.

    `calibration` (needed for "int8" only) yields float32 NHWC image batches.
    """
    check_kind("ONNX", kind, KINDS, calibration)
    tf2onnx = require("tf2onnx")
    with tempfile.TemporaryDirectory() as tmp:
        flatbuffer = os.path.join(tmp, "model.tflite")
        export_tflite(deployable, flatbuffer)
        proto, _ = tf2onnx.convert.from_tflite(flatbuffer, opset=OPSET)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    data = proto.SerializeToString()
    if kind == "int8":
        data = _quantize_static(data, calibration)
    if path is not None:
        epath.Path(path).write_bytes(data)
    return data


def _quantize_static(model: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """ONNX Runtime's static int8 quantization (QDQ, per-channel weights) of a float model."""
    quantization = require("onnxruntime.quantization")
    session = require("onnxruntime").InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batches = iter([{name: np.asarray(b, np.float32)} for b in calibration])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, target = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        epath.Path(source).write_bytes(model)
        quantization.quantize_static(
            source,
            target,
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QInt8,
            weight_type=quantization.QuantType.QInt8,
        )
        return epath.Path(target).read_bytes()


class OnnxModel:
    """An ONNX model on ONNX Runtime's CPU provider: float32 NHWC images in, logits out."""

    def __init__(self, model: bytes | str, num_threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        content = model if isinstance(model, bytes) else epath.Path(model).read_bytes()
        self._content = content
        self.session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def op_types(self) -> set[str]:
        """The ONNX op types in the graph, e.g. {"Conv", "Gemm", ...}."""
        onnx = require("onnx")
        return {node.op_type for node in onnx.load_from_string(self._content).graph.node}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.asarray(images, np.float32)})[0]
