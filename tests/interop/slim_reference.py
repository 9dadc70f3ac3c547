"""A TF-Slim MobileNet v1 made with TensorFlow alone: a checkpoint with the real variable names
(random values, BatchNorm perturbed, ExponentialMovingAverage shadows, an optimizer slot), the
forward pass TF-Slim's graph computes, written with `tf.nn` ops over those names, frozen graphs,
and a published tarball's full layout."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import text_format

from mobilenet_jax.interop import tf_slim
from mobilenet_jax.model import BLOCKS, STEM_CHANNELS, scaled_channels

BN = ("gamma", "beta", "moving_mean", "moving_variance")


def random_tensors(alpha: float, num_classes: int, seed: int) -> dict[str, np.ndarray]:
    """Random MobilenetV1 variables by name: He-scaled kernels, BatchNorm far from identity."""
    rng = np.random.default_rng(seed)
    widths = [scaled_channels(STEM_CHANNELS, alpha)] + [scaled_channels(c, alpha) for c, _ in BLOCKS]
    tensors = {}

    def conv_bn(layer: str, kernel_name: str, shape: tuple[int, ...], fan_in: int) -> None:
        tensors[f"MobilenetV1/{layer}/{kernel_name}"] = rng.normal(0, np.sqrt(2 / fan_in), shape)
        c = shape[-2] if kernel_name == "depthwise_weights" else shape[-1]
        bn = f"MobilenetV1/{layer}/BatchNorm/"
        tensors[bn + "gamma"] = rng.uniform(0.5, 1.5, c)
        tensors[bn + "beta"] = rng.normal(0, 0.2, c)
        tensors[bn + "moving_mean"] = rng.normal(0, 0.2, c)
        tensors[bn + "moving_variance"] = rng.uniform(0.5, 2.0, c)

    conv_bn("Conv2d_0", "weights", (3, 3, 3, widths[0]), 27)
    for i in range(1, len(BLOCKS) + 1):
        conv_bn(f"Conv2d_{i}_depthwise", "depthwise_weights", (3, 3, widths[i - 1], 1), 9)
        conv_bn(f"Conv2d_{i}_pointwise", "weights", (1, 1, widths[i - 1], widths[i]), widths[i - 1])
    if num_classes:
        tensors[tf_slim.HEAD[0]] = rng.normal(0, np.sqrt(1 / widths[-1]), (1, 1, widths[-1], num_classes))
        tensors[tf_slim.HEAD[1]] = rng.normal(0, 0.1, num_classes)
    return {k: v.astype(np.float32) for k, v in tensors.items()}


def with_shadows(tensors: dict[str, np.ndarray], seed: int, averaged: bool = False) -> dict[str, np.ndarray]:
    """`tensors` plus an ExponentialMovingAverage shadow of each (slightly different values),
    a `global_step` and an RMSProp slot, as a training checkpoint holds them. With `averaged`,
    `tensors` are the shadows and the raw variables the slightly different values."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in tensors.items():
        other = (value * (1 + rng.uniform(-0.05, 0.05, value.shape))).astype(np.float32)
        out[name], out[name + tf_slim.EMA_SUFFIX] = (other, value) if averaged else (value, other)
    out["MobilenetV1/Conv2d_0/weights/RMSProp"] = np.ones_like(tensors["MobilenetV1/Conv2d_0/weights"])
    out["global_step"] = np.array(1234, np.int64)
    return out


def save_checkpoint(prefix: str, tensors: dict[str, np.ndarray]) -> str:
    """Write `tensors` as a TensorFlow V2 checkpoint at `prefix`; `tf.train.load_checkpoint` reads it."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )
    return prefix


def frozen_graph_def(tensors: dict[str, np.ndarray]) -> tf.compat.v1.GraphDef:
    """A GraphDef holding `tensors` as constants of the same names, as freezing leaves the variables."""
    graph = tf.compat.v1.GraphDef()
    for name, value in tensors.items():
        node = graph.node.add(name=name, op="Const")
        node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return graph


def unfrozen(frozen: tf.compat.v1.GraphDef, names: set[str]) -> tf.compat.v1.GraphDef:
    """`frozen` with its constants named in `names` turned back into variables: the eval graph."""
    graph = tf.compat.v1.GraphDef()
    graph.CopyFrom(frozen)
    for node in graph.node:
        if node.op == "Const" and node.name in names:
            tensor = node.attr["value"].tensor
            dtype, shape = tensor.dtype, tf.TensorShape(tensor.tensor_shape)
            node.op = "VariableV2"
            node.ClearField("attr")
            node.attr["dtype"].type = dtype
            node.attr["shape"].shape.CopyFrom(shape.as_proto())
    return graph


def save_meta_graph(path: str, eval_graph: tf.compat.v1.GraphDef, tensors: dict[str, np.ndarray]) -> None:
    """Write a MetaGraph of `eval_graph` whose Saver restores each of `tensors` by name (the
    graph's variables, plus new ones for those it lacks: shadows, slots, `global_step`)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(eval_graph, name="")
        in_graph = {node.name for node in eval_graph.node}
        saved = {
            name: graph.get_tensor_by_name(name + ":0") if name in in_graph
            else tf.compat.v1.Variable(tf.zeros(value.shape, value.dtype), name=name)
            for name, value in tensors.items()
        }
        saver = tf.compat.v1.train.Saver(saved)
        tf.compat.v1.train.export_meta_graph(filename=path, graph=graph, saver_def=saver.as_saver_def())


def publish(folder: Path, frozen_graph: Path, checkpoint: dict[str, np.ndarray], input_name: str,
            output_name: str, size: int) -> Path:
    """Lay out `<folder>.tgz` as TF-Slim publishes a model (flat, `./` prefix, named after the
    folder): the `checkpoint` with its MetaGraph, the frozen graph, its TFLite conversion, the
    info file and the eval graph as text. `input_name` / `output_name` are op names in the graph."""
    stem = folder.name
    folder.mkdir(parents=True)
    frozen = tf.compat.v1.GraphDef()
    frozen.ParseFromString(frozen_graph.read_bytes())
    eval_graph = unfrozen(frozen, set(checkpoint))
    prefix = save_checkpoint(str(folder / f"{stem}.ckpt"), checkpoint)
    save_meta_graph(prefix + ".meta", eval_graph, checkpoint)
    shutil.copyfile(frozen_graph, folder / f"{stem}_frozen.pb")
    (folder / f"{stem}_eval.pbtxt").write_text(text_format.MessageToString(eval_graph))
    (folder / f"{stem}_info.txt").write_text(f"Model: {stem}\nInput: {input_name}\nOutput: {output_name}\n")
    converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
        str(frozen_graph), [input_name], [output_name], {input_name: [1, size, size, 3]})
    (folder / f"{stem}.tflite").write_bytes(converter.convert())
    archive = folder.with_name(f"{stem}.tgz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    return archive


def slim_forward(prefix: str, images: np.ndarray, use_ema: bool = True, output_stride: int | None = None) -> np.ndarray:
    """TF-Slim's eval graph over the checkpoint: SAME convs, BatchNorm eps 1e-3, ReLU6, pooled
    1x1 conv with biases, spatially squeezed. With `use_ema` the shadows are read in place of
    the variables, as slim's evaluation restores them. Without a classifier: pooled features.
    With `output_stride` the base is atrous (`slim_features`) and the pool global, TF-Slim's
    `global_pool=True`."""
    reader = tf.train.load_checkpoint(prefix)
    get = _getter(reader, use_ema)
    x = tf.constant(slim_features(prefix, images, use_ema, output_stride))
    if output_stride is None:
        kernel = [min(x.shape[1], 7), min(x.shape[2], 7)]
        x = tf.nn.avg_pool2d(x, kernel, 1, "VALID")
    else:
        x = tf.reduce_mean(x, [1, 2], keepdims=True)
    if not reader.has_tensor(tf_slim.HEAD[0]):
        return tf.squeeze(x, [1, 2]).numpy()
    x = tf.nn.conv2d(x, get(tf_slim.HEAD[0]), 1, "SAME") + get(tf_slim.HEAD[1])
    return tf.squeeze(x, [1, 2]).numpy()


def slim_features(prefix: str, images: np.ndarray, use_ema: bool = True, output_stride: int | None = None) -> np.ndarray:
    """The last pointwise layer's output of TF-Slim's `mobilenet_v1_base(output_stride=...)`,
    written by its rule: walking the layers with `current_stride` and `rate` (1), once
    `current_stride` equals `output_stride` every layer runs at stride 1 and dilation `rate`,
    which then grows by the layer's stride; before that, each layer at its stride, undilated."""
    get = _getter(tf.train.load_checkpoint(prefix), use_ema)

    def bn_relu6(x: tf.Tensor, layer: str) -> tf.Tensor:
        gamma, beta, mean, var = (get(f"MobilenetV1/{layer}/BatchNorm/{v}") for v in BN)
        return tf.nn.relu6(tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-3))

    x = tf.constant(images)
    x = bn_relu6(tf.nn.conv2d(x, get("MobilenetV1/Conv2d_0/weights"), 2, "SAME"), "Conv2d_0")
    current_stride, rate = 2, 1
    for i, (_, stride) in enumerate(BLOCKS, start=1):
        if output_stride is not None and current_stride == output_stride:
            layer_stride, layer_rate, rate = 1, rate, rate * stride
        else:
            layer_stride, layer_rate, current_stride = stride, 1, current_stride * stride
        dw = get(f"MobilenetV1/Conv2d_{i}_depthwise/depthwise_weights")
        strides, dilations = [1, layer_stride, layer_stride, 1], [layer_rate, layer_rate]
        x = bn_relu6(tf.nn.depthwise_conv2d(x, dw, strides, "SAME", dilations=dilations), f"Conv2d_{i}_depthwise")
        pw = get(f"MobilenetV1/Conv2d_{i}_pointwise/weights")
        x = bn_relu6(tf.nn.conv2d(x, pw, 1, "SAME"), f"Conv2d_{i}_pointwise")
    return x.numpy()


def _getter(reader, use_ema: bool):
    """Reads a variable by name from `reader`, its EMA shadow instead where `use_ema` and it has one."""

    def get(name: str) -> tf.Tensor:
        shadow = name + tf_slim.EMA_SUFFIX
        return tf.constant(reader.get_tensor(shadow if use_ema and reader.has_tensor(shadow) else name))

    return get
