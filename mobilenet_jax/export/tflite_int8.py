"""LiteRT full-integer flatbuffers that carry the int8 model's own parameters (`quantize`).

The converter legalises the folded float model into int8 builtin ops (CONV_2D,
DEPTHWISE_CONV_2D, PAD, SUM or MEAN, FULLY_CONNECTED), int8 in and out. It emits a full-integer graph only from a
representative dataset, so it gets a few images on the image grid's range, and then every
quantization parameter it derived from them is replaced: each activation tensor gets the scale
and zero point of its grid in the int8 model, each kernel the int8 model's integers and
per-channel scales, each bias its int32 values on the accumulator's scale. The runtime's
requantization multipliers follow from these scales, so LiteRT computes the JAX int8 model's
integers; no range comes from the converter. docs/deploy.md compares the routes.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

from mobilenet_jax.export.folding import at_path
from mobilenet_jax.export.quantize import UNITS, zero_point
from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.savedmodel import tf_function
from mobilenet_jax.export.source import Deployable

REPRESENTATIVE_IMAGES = 2
# Kernel layouts: the int8 model's HWIO kernels transposed to what each op stores.
KERNEL_LAYOUTS = {"CONV_2D": ((3, 0, 1, 2), 0), "DEPTHWISE_CONV_2D": ((2, 0, 1, 3), 3)}  # (axes, channel axis)


def int8_flatbuffer(deployable: Deployable, int8: Mapping[str, Any], *, batch_size: int | None = 1) -> bytes:
    """The LiteRT full-integer flatbuffer of `deployable` computing the int8 model `int8`, its
    input and output int8 on the image and logits grids."""
    tf = require("tensorflow")
    forward = tf_function(deployable, batch_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([forward.get_concrete_function()], forward)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: _images_on_the_grid(deployable.image_size, int8["image"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return with_parameters(converter.convert(), int8)


def _images_on_the_grid(size: int, grid: Mapping[str, Any]) -> Iterator[list[np.ndarray]]:
    """A few images spanning the image grid's range: only the graph's shape depends on them."""
    rng = np.random.default_rng(0)
    low, high = float(grid["low"] * grid["scale"]), float(grid["high"] * grid["scale"])
    for _ in range(REPRESENTATIVE_IMAGES):
        yield [rng.uniform(low, high, (1, size, size, 3)).astype(np.float32)]


def with_parameters(flatbuffer: bytes, int8: Mapping[str, Any]) -> bytes:
    """`flatbuffer` (a full-integer conversion of the folded model) with every quantization
    parameter, kernel and bias replaced by the int8 model's. A ValueError names any op the
    walk does not know, so a converter that changes the graph fails loudly."""
    utils = require("tensorflow.lite.tools.flatbuffer_utils")
    model = utils.read_model_from_bytearray(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    layers = iter([at_path(int8, unit) for unit in UNITS])
    pixels = np.float32(1)  # what the pooling op sums over: the classifier's kernel scales divide by it
    editor = _Editor(model, graph)
    for index in graph.inputs:
        editor.set_grid(index, int8["image"])
    for op in graph.operators:
        name = utils.opcode_to_name(model, op.opcodeIndex)
        inputs, outputs = list(op.inputs), list(op.outputs)
        if name in ("PAD", "RESHAPE"):
            editor.copy_quantization(inputs[0], outputs[0])
        elif name in KERNEL_LAYOUTS:
            layer = next(layers)
            axes, channel_axis = KERNEL_LAYOUTS[name]
            editor.set_grid(inputs[0], layer["input"])
            editor.set_kernel(inputs[1], np.transpose(layer["kernel"], axes), layer["kernel_scale"], channel_axis)
            editor.set_bias(op, layer["bias"], layer["input"]["scale"] * layer["kernel_scale"])
            editor.set_grid(outputs[0], layer["output"])
        elif name in ("SUM", "MEAN"):
            pool = int8["pool"]
            editor.set_grid(inputs[0], pool["input"])
            shape = graph.tensors[inputs[0]].shape
            pixels = np.float32(shape[1] * shape[2]) if name == "SUM" else np.float32(1)
            editor.set_grid(outputs[0], pool["output"], scale=pixels * pool["output"]["scale"])
        elif name == "FULLY_CONNECTED" and "classifier" in int8:
            layer = int8["classifier"]
            scale = (layer["kernel_scale"] / pixels).astype(np.float32)
            editor.set_kernel(inputs[1], layer["kernel"].T, scale, 0)
            editor.set_bias(op, layer["bias"], editor.scale(inputs[0]) * scale)
            editor.set_grid(outputs[0], layer["output"])
        else:
            raise ValueError(f"unexpected {name} op in the int8 flatbuffer; the int8 parameters cannot be set")
    if next(layers, None) is not None:
        raise ValueError("the int8 flatbuffer has fewer convolutions than the model")
    return bytes(utils.convert_object_to_bytearray(model))


class _Editor:
    """Writes quantization parameters and constant data into a flatbuffer's object tree."""

    def __init__(self, model: Any, graph: Any) -> None:
        self.model, self.graph = model, graph
        self.schema = require("tensorflow.lite.python.schema_py_generated")

    def scale(self, index: int) -> np.float32:
        return np.float32(self.graph.tensors[index].quantization.scale[0])

    def _set(self, index: int, scales: np.ndarray, zero_points: np.ndarray, axis: int = 0) -> None:
        quantization = self.schema.QuantizationParametersT()
        quantization.scale = np.asarray(scales, np.float32).reshape(-1).tolist()
        quantization.zeroPoint = np.asarray(zero_points, np.int64).reshape(-1).tolist()
        quantization.quantizedDimension = axis
        self.graph.tensors[index].quantization = quantization

    def set_grid(self, index: int, grid: Mapping[str, Any], scale: Any = None) -> None:
        """Tensor `index` on `grid` (or on `scale` with the grid's zero point)."""
        self._set(index, [grid["scale"] if scale is None else scale], [zero_point(grid)])

    def copy_quantization(self, source: int, target: int) -> None:
        self.graph.tensors[target].quantization = self.graph.tensors[source].quantization

    def _set_data(self, index: int, values: np.ndarray) -> None:
        tensor = self.graph.tensors[index]
        if tuple(tensor.shape) != values.shape:
            raise ValueError(f"int8 flatbuffer tensor {tensor.name!r} has shape {tuple(tensor.shape)}, "
                             f"the int8 model {values.shape}")
        if sum(t.buffer == tensor.buffer for t in self.graph.tensors) > 1:  # shared: give it its own
            self.model.buffers.append(self.schema.BufferT())
            tensor.buffer = len(self.model.buffers) - 1
        self.model.buffers[tensor.buffer].data = np.frombuffer(np.ascontiguousarray(values).tobytes(), np.uint8)

    def set_kernel(self, index: int, integers: np.ndarray, scales: np.ndarray, axis: int) -> None:
        self._set_data(index, np.asarray(integers, np.int8))
        self._set(index, scales, np.zeros(len(scales)), axis)

    def set_bias(self, op: Any, integers: np.ndarray, scales: np.ndarray) -> None:
        """The bias (third input) of `op`, added where the converter dropped an all-zero one."""
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            tensor = self.schema.TensorT()
            tensor.shape, tensor.type, tensor.name = [len(integers)], self.schema.TensorType.INT32, b"bias"
            self.model.buffers.append(self.schema.BufferT())
            tensor.buffer = len(self.model.buffers) - 1
            self.graph.tensors.append(tensor)
            op.inputs = [*list(op.inputs)[:2], len(self.graph.tensors) - 1]
        self._set_data(op.inputs[2], np.asarray(integers, np.int32))
        self._set(op.inputs[2], scales, np.zeros(len(scales)))
