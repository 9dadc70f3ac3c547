"""ONNX export for ONNX Runtime: tf2onnx from the float32 LiteRT flatbuffer, int8 by ONNX Runtime.

tf2onnx converts the flatbuffer of `tflite.export_tflite`, whose builtin ops (CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED) map one to one onto ONNX Conv (with `group` for depthwise)
and Gemm. The model has a fixed batch size (default 1); `OnnxModel` runs any number of images
through it in padded chunks. Kind "int8" quantizes the float model with ONNX Runtime's static QDQ
quantization: int8 weights per output channel and int8 activations calibrated on a
representative dataset, except the stem convolution, which stays float. docs/deploy.md says why
this route, the fixed batch and the float stem.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

import numpy as np
from etils import epath

from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.export.tflite import export_tflite
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
    with tempfile.TemporaryDirectory() as tmp:
        flatbuffer = os.path.join(tmp, "model.tflite")
        export_tflite(deployable, flatbuffer, batch_size=batch_size)
        proto, _ = tf2onnx.convert.from_tflite(flatbuffer, opset=OPSET)
    data = proto.SerializeToString()
    if kind == "int8":
        data = _quantize_static(data, calibration, batch_size)
    return written(data, path)


def _quantize_static(model: bytes, calibration: Iterable[np.ndarray], batch_size: int) -> bytes:
    """ONNX Runtime's static int8 quantization (QDQ, per-channel weights) of a float model."""
    quantization = require("onnxruntime.quantization")
    graph = require("onnx").load_from_string(model).graph
    name = graph.input[0].name
    stem = next(node.name for node in graph.node if node.op_type == "Conv")  # nodes are in topological order
    images = np.concatenate([np.asarray(b, np.float32) for b in calibration])
    whole = len(images) - len(images) % batch_size
    if not whole:
        raise ValueError(f"calibration has {len(images)} images, fewer than the batch size {batch_size}")
    batches = iter([{name: chunk} for chunk in np.split(images[:whole], whole // batch_size)])

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
            nodes_to_exclude=[stem],
        )
        return epath.Path(target).read_bytes()


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
