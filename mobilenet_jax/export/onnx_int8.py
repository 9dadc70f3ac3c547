"""The QDQ graph tf2onnx makes of the LiteRT int8 flatbuffer, made what ONNX Runtime runs in integers.

tf2onnx gives every int8 tensor a QuantizeLinear / DequantizeLinear pair, and ONNX Runtime fuses
DequantizeLinear -> Conv -> QuantizeLinear into an integer QLinearConv. Three things stand in its
way, and `integer_graph` removes them: the graph's int8 input and output (float32 ones are what
every other ONNX export takes), a Pad dequantized between two convolutions (padding with the
zero point is the convolution's own padding), and the layout ops (Transpose, Reshape) on int8
tensors.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.quantize import zero_point


def integer_graph(model: Any, image: Mapping[str, Any], output: Mapping[str, Any]) -> None:
    """Edit `model` in place: float32 input and output on the `image` and `output` grids, every
    convolution fusable into QLinearConv."""
    float_input_and_output(model.graph, image, output)
    pads_into_convolutions(model.graph)
    layout_out_of_the_integer_path(model)


def _wiring(graph: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The node producing each tensor, and the nodes consuming it."""
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def pads_into_convolutions(graph: Any) -> None:
    """Fold each DequantizeLinear -> Pad -> QuantizeLinear (padding with zeros, same grid on both
    sides) into the `pads` of the convolution it feeds, through a layout Transpose if one is
    between."""
    onnx = require("onnx")
    numpy_helper, helper = onnx.numpy_helper, onnx.helper
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        producer, consumers = _wiring(graph)
        dequantize, (quantize,) = producer.get(pad.input[0]), consumers[pad.output[0]]
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or quantize.op_type != "QuantizeLinear":
            continue
        mode = [a.s for a in pad.attribute if a.name == "mode"]
        constant = pad.input[2] if len(pad.input) > 2 else ""
        if mode not in ([], [b"constant"]) or pad.input[1] not in initializers or (
            constant and (constant not in initializers or initializers[constant].any())
        ):
            continue  # not zeros, or not known here
        same_grid = all(np.array_equal(initializers[a], initializers[b])
                        for a, b in zip(dequantize.input[1:], quantize.input[1:]))
        path, node, perm = [], quantize, [0, 1, 2, 3]
        while len(consumers.get(node.output[0], [])) == 1 and node.op_type != "Conv":
            (node,) = consumers[node.output[0]]
            path.append(node)
            if node.op_type == "Transpose":
                (perm,) = [list(a.ints) for a in node.attribute if a.name == "perm"]
        if not same_grid or node.op_type != "Conv" or [n.op_type for n in path] not in (
            ["DequantizeLinear", "Conv"], ["Transpose", "DequantizeLinear", "Conv"]
        ):
            continue
        pads = initializers[pad.input[1]].reshape(2, -1)[:, perm]  # begin and end rows, in the Conv's layout
        if pads[:, :2].any():
            continue  # padding the batch or the channels
        attributes = {a.name: a for a in node.attribute}
        current = list(attributes["pads"].ints) if "pads" in attributes else [0, 0, 0, 0]
        folded = (np.asarray(current).reshape(2, 2) + pads[:, 2:]).reshape(-1)
        if "pads" in attributes:
            node.attribute.remove(attributes["pads"])
        node.attribute.append(helper.make_attribute("pads", [int(v) for v in folded]))
        for consumer in consumers[quantize.output[0]]:
            consumer.input[:] = [dequantize.input[0] if name == quantize.output[0] else name for name in consumer.input]
        graph.node.remove(pad)
        graph.node.remove(quantize)
        if len(consumers[dequantize.output[0]]) == 1:
            graph.node.remove(dequantize)


def float_input_and_output(graph: Any, image: Mapping[str, Any], output: Mapping[str, Any]) -> None:
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


def layout_out_of_the_integer_path(model: Any) -> None:
    """Take the layout ops tf2onnx puts on int8 tensors off them, so that ONNX Runtime's QDQ
    fusion sees DequantizeLinear -> Conv -> QuantizeLinear for every convolution: the image is
    transposed in float before its QuantizeLinear, a Reshape that keeps the shape (between 1x1
    feature maps) is dropped, and the pooling's ReduceSum sums the NCHW axes instead of a
    Transpose (or, on a 1x1 map, a Reshape) to NHWC."""
    onnx = require("onnx")
    graph, numpy_helper = model.graph, onnx.numpy_helper
    producer, consumers = _wiring(graph)
    image = graph.input[0].name
    (quantize,) = consumers[image]
    following = consumers[quantize.output[0]]
    if len(following) == 1 and following[0].op_type == "Transpose":
        (transpose,) = following
        transposed = transpose.output[0]
        transpose.input[0], transpose.output[0] = image, image + "_nchw"
        quantize.input[0], quantize.output[0] = image + "_nchw", transposed
        graph.node.remove(transpose)
        graph.node.insert(0, transpose)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in (*inferred.value_info, *inferred.input, *inferred.output)}
    for reshape in [node for node in graph.node if node.op_type == "Reshape"]:
        if shapes.get(reshape.input[0]) == shapes.get(reshape.output[0]) and reshape.output[0] not in (
                value.name for value in graph.output):
            for consumer in consumers.get(reshape.output[0], []):
                consumer.input[:] = [reshape.input[0] if name == reshape.output[0] else name for name in consumer.input]
            graph.node.remove(reshape)
    producer, consumers = _wiring(graph)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    for reduce in [node for node in graph.node if node.op_type == "ReduceSum"]:
        dequantize = producer[reduce.input[0]]
        layout = producer.get(dequantize.input[0])
        if layout is None or len(consumers[layout.output[0]]) != 1:
            continue
        if layout.op_type == "Transpose":
            (perm,) = [list(attribute.ints) for attribute in layout.attribute if attribute.name == "perm"]
        elif layout.op_type == "Reshape" and shapes.get(layout.input[0], [0, 0, 0, 0])[2:] == [1, 1]:
            perm = [0, 2, 3, 1]  # (N, C, 1, 1) -> (N, 1, 1, C)
        else:
            continue
        axes = numpy_helper.to_array(initializers[reduce.input[1]])
        name = reduce.input[1] + "_nchw"
        graph.initializer.append(numpy_helper.from_array(np.asarray([perm[a] for a in axes], np.int64), name))
        dequantize.input[0], old_axes, reduce.input[1] = layout.input[0], reduce.input[1], name
        graph.node.remove(layout)
        if not any(old_axes in node.input for node in graph.node):
            graph.initializer.remove(initializers[old_axes])
