"""The int8 model in JAX: the integers every int8 export computes, on one set of ranges.

Every tensor an integer-only runtime holds in 8 bits has a grid (`ops.quantize.input_grid`) of
a range: the image, each convolution's output (the next one's input), the last block's output
entering the pooling, the pooled features entering the classifier, and the logits. A ReLU
output's grid is [0, high] in 256 levels (int8 with zero point -128), the image's and the
logits' [-m, m] in 255 levels (zero point 0). The ranges are the ones a quantization-aware
model (`MobileNetV1(quantization="int8")`) tracked in training, or else calibrated once here
by min/max over a representative dataset (post-training quantization); the StableHLO, LiteRT
and ONNX int8 exports all take them from `int8_model`.

Weights are int8, symmetric per output channel (trained: the very integers quantization-aware
training rounded to); biases int32 on the accumulator's scale `input_scale * kernel_scale`.
Each layer sums its int8 products exactly in int32, adds the bias and requantizes onto the
next grid: `round(float32(sum) * multiplier)`, multiplier `input_scale * kernel_scale /
output_scale` in float32, rounding half to even, clipped to the grid and the activation. That
is the fp32 requantization of XNNPACK's and ONNX Runtime's int8 kernels. The pooling sums the
integers and requantizes by `pool_scale / (pixels * classifier_input_scale)`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mobilenet_jax.export.folding import (
    Layer,
    at_path,
    batchnorm_factor,
    canonical_conv,
    fold_batchnorm,
    float_conv,
    float_dense,
    folded_forward,
    mean_pool,
)
from mobilenet_jax.layers import ACTIVATIONS, INPUT_QUANTIZER
from mobilenet_jax.model import (
    BLOCKS,
    CLASSIFIER_INPUT_QUANTIZER,
    LOGITS_QUANTIZER,
    POOL_INPUT_QUANTIZER,
    MobileNetV1,
)
from mobilenet_jax.ops.quantize import input_grid, kernel_scale

Array = jax.Array
Range = tuple[Any, Any]
IMAGE, POOL, CLASSIFIER, LOGITS = ("stem",), ("pool",), ("classifier",), ("logits",)
BIAS_LIMIT = 2**30  # the largest int32 bias: room for the sums it is added to


# The folded convolutions in the order of the forward pass.
UNITS = (IMAGE, *((f"block{i}", part) for i in range(1, len(BLOCKS) + 1) for part in ("depthwise", "pointwise")))


def _range_points(model: MobileNetV1) -> list[tuple[str, ...]]:
    """Where the int8 model quantizes, in order: each convolution's input (the stem's is the
    image), the pooling's input, and with a classifier its input and the logits."""
    return [*UNITS, POOL, *((CLASSIFIER, LOGITS) if model.num_classes else ())]


def _tracked_path(point: tuple[str, ...]) -> tuple[str, ...]:
    """The batch_stats path of the range a quantization-aware model tracks at `point`."""
    named = {POOL: POOL_INPUT_QUANTIZER, CLASSIFIER: CLASSIFIER_INPUT_QUANTIZER, LOGITS: LOGITS_QUANTIZER}
    return (named[point],) if point in named else (*point, INPUT_QUANTIZER)


def _tracked_ranges(model: MobileNetV1, variables: Mapping[str, Any]) -> dict[tuple[str, ...], Range] | None:
    """The activation ranges a quantization-aware model stores, by point; None for a float model,
    or one whose ranges were never tracked (never trained, or saved without every range)."""
    if model.quantization != "int8":
        return None
    stats = variables.get("batch_stats", {})
    ranges = {}
    for point in _range_points(model):
        try:
            node = at_path(stats, _tracked_path(point))
        except KeyError:
            return None
        if not float(np.asarray(node["tracked"])) > 0:
            return None
        ranges[point] = (node["low"], node["high"])
    return ranges


def has_trained_ranges(model: MobileNetV1, variables: Mapping[str, Any]) -> bool:
    """Whether `model` is quantization-aware and its variables hold every trained activation
    range, so that its int8 model needs no calibration."""
    return _tracked_ranges(model, variables) is not None


def calibrated_ranges(
    model: MobileNetV1, params: Mapping[str, Any], calibration: Iterable[np.ndarray]
) -> dict[tuple[str, ...], Range]:
    """Min/max of the float folded model's tensors at every range point over `calibration`
    (batches of images)."""
    ranges: dict[tuple[str, ...], Range] = {}
    ids = {id(at_path(params, unit)): unit for unit in UNITS}

    def record(point: tuple[str, ...], x: Array) -> None:
        low, high = ranges.get(point, (0.0, 0.0))
        ranges[point] = (min(low, float(jnp.min(x))), max(high, float(jnp.max(x))))

    def conv(layer: Layer, x: Array, *args: Any) -> Array:
        record(ids[id(layer)], x)
        return float_conv(layer, x, *args)

    def pool(x: Array) -> Array:
        record(POOL, x)
        return mean_pool(x)

    def dense(layer: Layer, x: Array) -> Array:
        record(CLASSIFIER, x)
        logits = float_dense(layer, x)
        record(LOGITS, logits)
        return logits

    seen = 0
    for images in calibration:
        folded_forward(params, jnp.asarray(images), activation=model.activation, padding=model.padding,
                       output_stride=model.output_stride, conv=conv, pool=pool, dense=dense)
        seen += len(images)
    if not seen:
        raise ValueError("calibration yielded no images; pass a dataset or folder with images")
    return ranges


def with_calibrated_ranges(
    model: MobileNetV1, variables: Mapping[str, Any], calibration: Iterable[np.ndarray] | None
) -> tuple[MobileNetV1, dict[str, Any]]:
    """`model` and `variables` as a quantization-aware model holding activation ranges: its own
    trained ones when it has them (`calibration` is not used then), else ranges calibrated
    once on `calibration` (post-training quantization), stored where training tracks them."""
    if has_trained_ranges(model, variables):
        return model, dict(variables)
    if calibration is None:
        raise ValueError("int8 quantization needs calibration images (or a quantization-aware model's trained ranges)")
    model = model.clone(quantization="int8")
    ranges = calibrated_ranges(model, fold_batchnorm(model, variables), calibration)
    stats = traverse_util.flatten_dict(dict(variables["batch_stats"]))
    for point, (low, high) in ranges.items():
        values = {"low": low, "high": high, "tracked": 1.0}
        stats.update({(*_tracked_path(point), key): np.float32(value) for key, value in values.items()})
    return model, {**variables, "batch_stats": traverse_util.unflatten_dict(stats)}


def int8_model(
    model: MobileNetV1, variables: Mapping[str, Any], calibration: Iterable[np.ndarray] | None = None
) -> dict[str, Any]:
    """The int8 model: the folded layers quantized, and the grids of every range point.

    {"image": grid, "stem" and "block1".."block13" {"depthwise", "pointwise"}: layer,
    "pool": {"input": grid, "output": grid}, "classifier": layer (with a classifier)}; a grid is
    {"scale", "low", "high"} (the lowest and highest integer), a layer {"kernel" (int8, HWIO),
    "kernel_scale", "bias" (int32), "input", "output" (grids), "multiplier", "high" (the
    largest output integer under the activation)}. The ranges and kernel integers are those of
    `with_calibrated_ranges`: a quantization-aware model's trained ones, or calibrated.
    """
    model, variables = with_calibrated_ranges(model, variables, calibration)
    params = fold_batchnorm(model, variables)
    ranges = _tracked_ranges(model, variables)
    points = _range_points(model)
    grids = {point: grid_of(*ranges[point]) for point in points}
    bound = float(ACTIVATIONS[model.activation](np.float32(np.inf)))  # inf, or relu6's 6
    result: dict[str, Any] = {"image": grids[IMAGE]}
    for unit, following in zip(UNITS, points[1:]):
        layer = quantize_layer(at_path(params, unit), grids[unit], grids[following], bound,
                               _trained_kernel(model, variables, unit))
        if len(unit) == 1:
            result[unit[0]] = layer
        else:
            result.setdefault(unit[0], {})[unit[1]] = layer
    result["pool"] = {"input": grids[POOL], "output": grids[CLASSIFIER] if model.num_classes else grids[POOL]}
    if model.num_classes:
        result["classifier"] = quantize_layer(params["classifier"], grids[CLASSIFIER], grids[LOGITS])
    return result


def grid_of(low: Any, high: Any) -> dict[str, np.ndarray]:
    """The 8-bit grid of the range (low, high): {"scale", "low", "high"}, see `ops.quantize`."""
    scale, lowest, highest = (np.asarray(v) for v in input_grid(low, high))
    return {"scale": np.float32(scale), "low": np.int32(lowest), "high": np.int32(highest)}


def zero_point(grid: Mapping[str, Any]) -> int:
    """The int8 zero point of a grid: -128 for [0, 255] (ReLU outputs), 0 for [-128, 127] (signed)."""
    return -128 if int(grid["low"]) == 0 else 0


def quantize_layer(
    layer: Layer,
    input: Mapping[str, np.ndarray],
    output: Mapping[str, np.ndarray],
    bound: float = np.inf,
    kernel: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """One folded layer between the grids `input` and `output`, its output capped at `bound`
    (the activation's: relu6's 6); the int8 kernel and its scales are `kernel` or quantized here."""
    if kernel is None:
        weights = np.asarray(layer["kernel"], np.float32)
        scale = np.asarray(kernel_scale(weights), np.float32)
        kernel = (np.round(weights / scale).astype(np.int8), scale)
    integers, scale = kernel
    bias = np.asarray(layer["bias"], np.float32)
    # A channel whose bias would overflow its int32 grid (a near-zero kernel beside a bias) gets
    # a coarser kernel scale, as integer converters do: the bias then fits in 2^30.
    needed = (np.abs(bias) / (input["scale"] * np.float32(BIAS_LIMIT))).astype(np.float32)
    if (scale < needed).any():
        coarser = np.maximum(scale, needed)
        integers, scale = np.round(integers * (scale / coarser)).astype(np.int8), coarser
    accumulator_scale = input["scale"] * scale
    high = min(output["high"], np.round(np.float32(bound) / output["scale"]))
    return {
        "kernel": integers,
        "kernel_scale": scale,
        "bias": np.round(bias / accumulator_scale).astype(np.int32),
        "input": dict(input),
        "output": dict(output),
        "multiplier": (accumulator_scale / output["scale"]).astype(np.float32),
        "high": np.int32(high),
    }


def _trained_kernel(
    model: MobileNetV1, variables: Mapping[str, Any], path: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The int8 kernel and scales of the unit at `path` taken from the kernel a quantization-aware
    model trained with, before folding: sign(s) times its integers, scales |s| times its scales
    (s the BatchNorm factor). Quantizing the folded kernel gives the same integers but where
    rounding the folded float32 product moves a weight across a half step (measured: 1 weight
    in 800,000); this way they are the trained ones exactly.
    """
    kernel = np.asarray(at_path(variables["params"], path)["conv"]["kernel"], np.float32)
    scale = np.asarray(kernel_scale(kernel), np.float32)
    factor = batchnorm_factor(model, variables, path)
    folded_scale = (scale * np.abs(factor)).astype(np.float32)
    dead = folded_scale == 0  # a zero BatchNorm factor: the folded channel is zero, scale 1 as for any zero channel
    integers = np.where(dead, 0, np.sign(factor) * np.round(kernel / scale))
    return integers.astype(np.int8), np.where(dead, np.float32(1), folded_scale)


def quantize(x: Array, grid: Mapping[str, Any]) -> Array:
    """Float `x` as the integers (int32) of `grid`."""
    return jnp.clip(jnp.round(x / grid["scale"]), grid["low"], grid["high"]).astype(jnp.int32)


def _requantize(total: Array, multiplier: Any, low: Any, high: Any) -> Array:
    """Int32 sums onto the next grid: round(float32(total) * multiplier), half to even, clipped."""
    return jnp.clip(jnp.round(total.astype(jnp.float32) * multiplier), low, high).astype(jnp.int32)


def int8_conv(layer: Layer, q: Array, stride: int, groups: int, padding: str, dilation: int = 1) -> Array:
    """One integer convolution: exact int32 sums of int8 products plus the bias, requantized."""
    total = canonical_conv(q, jnp.asarray(layer["kernel"], jnp.int32), stride, groups, padding, dilation,
                           preferred_element_type=jnp.int32)
    return _requantize(total + layer["bias"], layer["multiplier"], layer["output"]["low"], layer["high"])


def int8_pool(pool: Mapping[str, Any], q: Array) -> Array:
    """Integer global average pooling: the sum over the pixels, requantized onto the output grid."""
    pixels = np.float32(q.shape[1] * q.shape[2])
    multiplier = pool["input"]["scale"] / (pixels * pool["output"]["scale"])
    return _requantize(jnp.sum(q, axis=(1, 2)), multiplier, pool["output"]["low"], pool["output"]["high"])


def int8_dense(layer: Layer, q: Array) -> Array:
    """The integer classifier."""
    total = jnp.matmul(q, jnp.asarray(layer["kernel"], jnp.int32), preferred_element_type=jnp.int32)
    return _requantize(total + layer["bias"], layer["multiplier"], layer["output"]["low"], layer["high"])


def output_grid(int8: Mapping[str, Any]) -> Mapping[str, Any]:
    """The grid of the int8 model's output: the logits', or the pooled features' without a classifier."""
    return int8["classifier"]["output"] if "classifier" in int8 else int8["pool"]["output"]


def int8_forward(model: MobileNetV1, int8: Mapping[str, Any], images: Array) -> Array:
    """Logits (or pooled features) of the int8 model `int8` on float images, dequantized."""
    q = folded_forward(
        int8, quantize(images, int8["image"]), activation=None, padding=model.padding,
        output_stride=model.output_stride, conv=int8_conv, pool=functools.partial(int8_pool, int8["pool"]),
        dense=int8_dense,
    )
    return q.astype(jnp.float32) * output_grid(int8)["scale"]


def int8_inference_fn(
    model: MobileNetV1, variables: Mapping[str, Any], calibration: Iterable[np.ndarray] | None = None
) -> Callable[[Array], Array]:
    """`images -> logits` of the int8 model: a quantization-aware model's on its trained ranges,
    any other calibrated on `calibration` (batches of images); see `int8_model`."""
    return functools.partial(int8_forward, model, int8_model(model, variables, calibration))
