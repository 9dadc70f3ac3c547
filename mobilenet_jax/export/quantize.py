"""Int8 quantization in JAX: the project's own per-channel scheme on folded layers.

Weights: symmetric int8 per output channel (scale = max |w| / 127). Activations entering each
convolution and the classifier: 8-bit per tensor, from a range: a non-negative input (every
ReLU output) uses 256 levels on [0, max] (int8 with zero point -128), a signed one (the image)
255 levels on [-max, max] (the grids of `ops.quantize`, which quantization-aware training
rounds onto too). The ranges are the ones a quantization-aware model (`MobileNetV1(
quantization="int8")`) tracked in training, or else calibrated on a representative dataset by
min/max (post-training quantization). Each layer multiplies the integer activations by the
integer weights with exact int32 accumulation (`preferred_element_type=int32`) and rescales to
float by `input_scale * kernel_scale` before the bias and activation, the arithmetic of an int8
runtime with float requantization. docs/deploy.md says why this scheme rather than a library.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mobilenet_jax.export.folding import (
    Layer,
    at_path,
    batchnorm_factor,
    canonical_conv,
    fold_batchnorm,
    float_conv,
    float_dense,
    folded_forward,
)
from mobilenet_jax.layers import INPUT_QUANTIZER
from mobilenet_jax.model import BLOCKS, CLASSIFIER_INPUT_QUANTIZER, MobileNetV1
from mobilenet_jax.ops.quantize import input_grid, kernel_scale

Array = jax.Array


def _range_paths(model: MobileNetV1) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Folded layer path -> batch_stats path of the range a quantization-aware model tracked."""
    paths = {("stem",): ("stem", INPUT_QUANTIZER)}
    for index in range(1, len(BLOCKS) + 1):
        for part in ("depthwise", "pointwise"):
            paths[f"block{index}", part] = (f"block{index}", part, INPUT_QUANTIZER)
    if model.num_classes:
        paths[("classifier",)] = (CLASSIFIER_INPUT_QUANTIZER,)
    return paths


def _tracked_ranges(model: MobileNetV1, variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any] | None:
    """The activation ranges a quantization-aware model stores, by folded layer path; None for a
    float model, or one whose ranges were never tracked (never trained)."""
    if model.quantization != "int8":
        return None
    stats = variables.get("batch_stats", {})
    ranges = {}
    for layer, path in _range_paths(model).items():
        try:
            node = at_path(stats, path)
        except KeyError:
            return None
        if not float(np.asarray(node["tracked"])) > 0:
            return None
        ranges[layer] = node
    return ranges


def has_trained_ranges(model: MobileNetV1, variables: Mapping[str, Any]) -> bool:
    """Whether `model` is quantization-aware and its variables hold trained activation ranges,
    so that its int8 model needs no calibration."""
    return _tracked_ranges(model, variables) is not None


def calibrate(
    model: MobileNetV1, variables: Mapping[str, Any], calibration: Iterable[np.ndarray] | None = None
) -> dict[str, Any]:
    """Int8 layers of the folded model: each layer's weights and input range quantized.

    A quantization-aware model with trained ranges uses those ranges, the grids it was trained
    on (`calibration` is not used then), and the very integers it trained with (`_trained_kernel`);
    any other model has its ranges calibrated on `calibration` (batches of images) by min/max.
    """
    params = fold_batchnorm(model, variables)
    tracked = _tracked_ranges(model, variables)
    if tracked is not None:
        return _map_layers(
            lambda path, layer: _quantize_layer(
                layer, (tracked[path]["low"], tracked[path]["high"]), _trained_kernel(model, variables, path)
            ),
            params,
        )
    if calibration is None:
        raise ValueError("int8 quantization needs calibration images (or a quantization-aware model's trained ranges)")
    ranges: dict[int, tuple[float, float]] = {}

    def record(layer: Layer, x: Array) -> None:
        low, high = ranges.get(id(layer), (0.0, 0.0))
        ranges[id(layer)] = (min(low, float(jnp.min(x))), max(high, float(jnp.max(x))))

    def conv(layer: Layer, x: Array, *args: Any) -> Array:
        record(layer, x)
        return float_conv(layer, x, *args)

    def dense(layer: Layer, x: Array) -> Array:
        record(layer, x)
        return float_dense(layer, x)

    seen = 0
    for images in calibration:
        folded_forward(params, jnp.asarray(images), activation=model.activation, padding=model.padding,
                       output_stride=model.output_stride, conv=conv, dense=dense)
        seen += len(images)
    if not seen:
        raise ValueError("calibration yielded no images; pass a dataset or folder with images")
    return _map_layers(lambda path, layer: _quantize_layer(layer, ranges[id(layer)]), params)


def _map_layers(fn: Callable[[tuple[str, ...], Layer], Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` (folded) with every layer replaced by `fn(path, layer)`."""
    return {
        key: fn((key,), node) if "kernel" in node else {part: fn((key, part), layer) for part, layer in node.items()}
        for key, node in params.items()
    }


def _trained_kernel(
    model: MobileNetV1, variables: Mapping[str, Any], path: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The int8 kernel and scales of the unit at `path` taken from the kernel a quantization-aware
    model trained with, before folding: sign(s) times its integers, scales |s| times its scales
    (s the BatchNorm factor). Quantizing the folded kernel gives the same integers but where
    rounding the folded float32 product moves a weight across a half step (measured: 1 weight
    in 800,000); this way they are the trained ones exactly. None for the classifier (not folded).
    """
    if path == ("classifier",):
        return None
    kernel = np.asarray(at_path(variables["params"], path)["conv"]["kernel"], np.float32)
    scale = np.asarray(kernel_scale(kernel), np.float32)
    factor = batchnorm_factor(model, variables, path)
    integers = np.sign(factor) * np.round(kernel / scale)
    return integers.astype(np.int8), (scale * np.abs(factor)).astype(np.float32)


def _quantize_layer(
    layer: Layer, input_range: tuple[Any, Any], trained_kernel: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, Any]:
    """Per-output-channel int8 kernel and its scales (from the folded kernel, or `trained_kernel`),
    the input's 8-bit grid, the float bias."""
    if trained_kernel is None:
        kernel = np.asarray(layer["kernel"], np.float32)
        scale = np.asarray(kernel_scale(kernel), np.float32)
        integers = np.round(kernel / scale).astype(np.int8)
    else:
        integers, scale = trained_kernel
    input_scale, input_low, input_high = (np.asarray(v) for v in input_grid(*input_range))
    return {
        "kernel": integers,
        "kernel_scale": scale,
        "bias": np.asarray(layer["bias"], np.float32),
        "input_scale": np.float32(input_scale),
        "input_low": np.int32(input_low),
        "input_high": np.int32(input_high),
    }


def _integer_input(layer: Layer, x: Array) -> Array:
    """`x` on the layer's 8-bit grid, as int32 (room for the zero-point-shifted range)."""
    q = jnp.round(x / layer["input_scale"])
    return jnp.clip(q, layer["input_low"], layer["input_high"]).astype(jnp.int32)


def _rescale(layer: Layer, acc: Array) -> Array:
    """Int32 accumulators back to float, plus the bias."""
    return acc.astype(jnp.float32) * (layer["input_scale"] * layer["kernel_scale"]) + layer["bias"]


def int8_conv(layer: Layer, x: Array, stride: int, groups: int, padding: str, dilation: int = 1) -> Array:
    """One quantized convolution: integer input times int8 kernel, exact int32 sums, rescaled."""
    kernel = jnp.asarray(layer["kernel"], jnp.int32)
    acc = canonical_conv(_integer_input(layer, x), kernel, stride, groups, padding, dilation,
                         preferred_element_type=jnp.int32)
    return _rescale(layer, acc)


def int8_dense(layer: Layer, features: Array) -> Array:
    """The quantized classifier."""
    acc = jnp.matmul(_integer_input(layer, features), jnp.asarray(layer["kernel"], jnp.int32),
                     preferred_element_type=jnp.int32)
    return _rescale(layer, acc)


def int8_inference_fn(
    model: MobileNetV1, variables: Mapping[str, Any], calibration: Iterable[np.ndarray] | None = None
) -> Callable[[Array], Array]:
    """`images -> logits` of the int8 model: a quantization-aware model's on its trained ranges,
    any other calibrated on `calibration` (batches of images); see `calibrate`."""
    params = calibrate(model, variables, calibration)
    return lambda images: folded_forward(
        params, images, activation=model.activation, padding=model.padding, output_stride=model.output_stride,
        conv=int8_conv, dense=int8_dense,
    )
