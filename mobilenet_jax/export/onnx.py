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
from typing import Any, Iterable, Mapping

import numpy as np
from etils import epath

from mobilenet_jax.export.quantize import int8_model, output_grid
from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.export.tflite import export_tflite
from mobilenet_jax.export.tflite_int8 import int8_flatbuffer, zero_point
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
        _float_input_and_output(proto.graph, int8["image"], output_grid(int8))
        _transposes_out_of_the_integer_path(proto.graph)
    return written(proto.SerializeToString(), path)


def _float_input_and_output(graph: Any, image: Mapping[str, Any], output: Mapping[str, Any]) -> None:
    """Give a graph with int8 input and output float32 ones: the images quantized onto the
    `image` grid, the output dequantized from the `output` grid."""
    onnx = require("onnx")
    numpy_helper, helper = onnx.numpy_helper, onnx.helper
    source, target = graph.input[0], graph.output[0]
    for value in (source, target):
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in graph.node:
        node.input[:] = [source.name + "_int8" if name == source.name else name for name in node.input]
        node.output[:] = [target.name + "_int8" if name == target.name else name for name in node.output]
    for name, grid in (("image", image), ("output", output)):
        graph.initializer.append(numpy_helper.from_array(np.asarray(grid["scale"], np.float32), f"{name}_scale"))
        graph.initializer.append(numpy_helper.from_array(np.asarray(zero_point(grid), np.int8), f"{name}_zero_point"))
    graph.node.insert(0, helper.make_node(
        "QuantizeLinear", [source.name, "image_scale", "image_zero_point"], [source.name + "_int8"]))
    graph.node.append(helper.make_node(
        "DequantizeLinear", [target.name + "_int8", "output_scale", "output_zero_point"], [target.name]))


def _transposes_out_of_the_integer_path(graph: Any) -> None:
    """Move the layout Transposes tf2onnx puts on int8 tensors (NHWC image in, NHWC pooling) off
    them, so that ONNX Runtime's QDQ fusion sees DequantizeLinear -> Conv -> QuantizeLinear for
    every convolution and runs it as an integer QLinearConv: the image is transposed in float
    before its QuantizeLinear, and the pooling's ReduceSum takes the NCHW axes instead."""
    numpy_helper = require("onnx").numpy_helper
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    image = graph.input[0].name
    (quantize,) = consumers[image]
    (transpose,) = consumers[quantize.output[0]]
    if transpose.op_type == "Transpose":
        transposed = transpose.output[0]
        transpose.input[0], transpose.output[0] = image, image + "_nchw"
        quantize.input[0], quantize.output[0] = image + "_nchw", transposed
        graph.node.remove(transpose)
        graph.node.insert(0, transpose)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    for reduce in [node for node in graph.node if node.op_type == "ReduceSum"]:
        dequantize = producer[reduce.input[0]]
        transpose = producer.get(dequantize.input[0])
        if transpose is None or transpose.op_type != "Transpose" or len(consumers[transpose.output[0]]) != 1:
            continue
        (perm,) = [list(attribute.ints) for attribute in transpose.attribute if attribute.name == "perm"]
        axes = numpy_helper.to_array(initializers[reduce.input[1]])
        name = reduce.input[1] + "_nchw"
        graph.initializer.append(numpy_helper.from_array(np.asarray([perm[a] for a in axes], np.int64), name))
        dequantize.input[0], old_axes, reduce.input[1] = transpose.input[0], reduce.input[1], name
        graph.node.remove(transpose)
        if not any(old_axes in node.input for node in graph.node):
            graph.initializer.remove(initializers[old_axes])


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
