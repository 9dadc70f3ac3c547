"""Post-training int8 quantization in JAX: the project's own per-channel scheme on folded layers.

Weights: symmetric int8 per output channel (scale = max |w| / 127). Activations entering each
convolution and the classifier: 8-bit per tensor, with ranges calibrated on a representative
dataset by min/max; a non-negative input (every ReLU output) uses 256 levels on [0, max] (int8
with zero point -128), a signed one (the image) 255 levels on [-max, max]. Each layer multiplies
the integer activations by the integer weights with exact int32 accumulation
(`preferred_element_type=int32`) and rescales to float by `input_scale * kernel_scale` before the
bias and activation, the arithmetic of an int8 runtime with float requantization.

A library was not used: `qwix` quantizes the `dot_general` / `conv` calls of a traced Flax
model, while this model's CPU form computes the depthwise layers as shifted multiply-adds, which
it would leave in float; the folded inference function here has exactly one conv per layer.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mobilenet_jax.export.folding import Layer, fold_batchnorm, float_conv, float_dense, folded_forward
from mobilenet_jax.ops.conv import conv_padding
from mobilenet_jax.model import MobileNetV1

Array = jax.Array
WEIGHT_LEVELS = 127


def calibrate(
    model: MobileNetV1, variables: Mapping[str, Any], calibration: Iterable[np.ndarray]
) -> dict[str, Any]:
    """Int8 layers of the folded model: each layer's weights and input range quantized."""
    params = fold_batchnorm(model, variables)
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
                       conv=conv, dense=dense)
        seen += len(images)
    if not seen:
        raise ValueError("calibration yielded no images; pass a dataset or folder with images")
    return jax.tree.map(
        lambda layer: _quantize_layer(layer, ranges[id(layer)]),
        params,
        is_leaf=lambda node: isinstance(node, dict) and "kernel" in node,
    )


def _quantize_layer(layer: Layer, input_range: tuple[float, float]) -> dict[str, Any]:
    """Per-output-channel int8 kernel and its scales, the input's 8-bit grid, the float bias."""
    kernel = np.asarray(layer["kernel"], np.float32)
    channel_max = np.max(np.abs(kernel.reshape(-1, kernel.shape[-1])), axis=0)
    kernel_scale = np.where(channel_max > 0, channel_max / WEIGHT_LEVELS, 1.0).astype(np.float32)
    low, high = input_range
    signed = low < 0
    largest = max(-low, high) if signed else high
    levels = WEIGHT_LEVELS if signed else 255
    return {
        "kernel": np.round(kernel / kernel_scale).astype(np.int8),
        "kernel_scale": kernel_scale,
        "bias": np.asarray(layer["bias"], np.float32),
        "input_scale": np.float32(largest / levels if largest > 0 else 1.0),
        "input_low": np.int32(-levels if signed else 0),
        "input_high": np.int32(levels),
    }


def _integer_input(layer: Layer, x: Array) -> Array:
    """`x` on the layer's 8-bit grid, as int32 (room for the zero-point-shifted range)."""
    q = jnp.round(x / layer["input_scale"])
    return jnp.clip(q, layer["input_low"], layer["input_high"]).astype(jnp.int32)


def _rescale(layer: Layer, acc: Array) -> Array:
    """Int32 accumulators back to float, plus the bias."""
    return acc.astype(jnp.float32) * (layer["input_scale"] * layer["kernel_scale"]) + layer["bias"]


def int8_conv(layer: Layer, x: Array, stride: int, groups: int, padding: str) -> Array:
    """One quantized convolution: integer input times int8 kernel, exact int32 sums, rescaled."""
    kernel = layer["kernel"]
    acc = lax.conv_general_dilated(
        _integer_input(layer, x),
        jnp.asarray(kernel, jnp.int32),
        window_strides=(stride, stride),
        padding=conv_padding(x.shape[1:3], kernel.shape[0], stride, padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        preferred_element_type=jnp.int32,
    )
    return _rescale(layer, acc)


def int8_dense(layer: Layer, features: Array) -> Array:
    """The quantized classifier."""
    acc = jnp.matmul(_integer_input(layer, features), jnp.asarray(layer["kernel"], jnp.int32),
                     preferred_element_type=jnp.int32)
    return _rescale(layer, acc)


def int8_inference_fn(
    model: MobileNetV1, variables: Mapping[str, Any], calibration: Iterable[np.ndarray]
) -> Callable[[Array], Array]:
    """`images -> logits` of the int8 model calibrated on `calibration` (batches of images)."""
    params = calibrate(model, variables, calibration)
    return lambda images: folded_forward(
        params, images, activation=model.activation, padding=model.padding, conv=int8_conv, dense=int8_dense
    )
