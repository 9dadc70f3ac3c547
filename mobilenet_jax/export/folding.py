"""BatchNorm folded into the convolutions, and the inference function of the folded parameters.

Every exporter starts here. In eval mode BatchNorm is the per-channel affine map
`x * s + (beta - mean * s)` with `s = gamma / sqrt(var + eps)`, so it folds into the kernel of the
convolution before it (scaled along its output channels) plus a bias. The forward pass is written
with canonical XLA ops only: `lax.conv_general_dilated` (with `feature_group_count` for the
depthwise layers, `rhs_dilation` for the atrous ones), a mean and a dot, so converters map the
layers to TFLite's CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED and ONNX's Conv / Gemm, which
their runtimes accelerate.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mobilenet_jax.layers import ACTIVATIONS, identity
from mobilenet_jax.ops.conv import conv_padding
from mobilenet_jax.model import BLOCKS, MobileNetV1, block_geometry, check_input

Array = jax.Array
Layer = Mapping[str, Any]
# conv(layer, x, stride, groups, padding, dilation) -> y: how one folded convolution is computed.
ConvFn = Callable[[Layer, Array, int, int, str, int], Array]
# pool(feature map) -> features: how the last feature map is pooled.
PoolFn = Callable[[Array], Array]
# dense(layer, features) -> logits: how the classifier is computed.
DenseFn = Callable[[Layer, Array], Array]


def fold_batchnorm(model: MobileNetV1, variables: Mapping[str, Any]) -> dict[str, Any]:
    """Folded float32 parameters: {"stem", "block1".."block13": {"depthwise", "pointwise"}, "classifier"}.

    Each convolution becomes {"kernel": HWIO, "bias": (O,)}; the classifier is copied as it is.
    """
    params, stats = variables["params"], variables["batch_stats"]

    def fold(path: tuple[str, ...]) -> dict[str, np.ndarray]:
        p, s = at_path(params, path), at_path(stats, path)
        scale = batchnorm_factor(model, variables, path)
        kernel = np.asarray(p["conv"]["kernel"], np.float64) * scale
        bias = np.asarray(p["bn"]["bias"], np.float64) - np.asarray(s["bn"]["mean"], np.float64) * scale
        return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}

    folded: dict[str, Any] = {"stem": fold(("stem",))}
    for index in range(1, len(BLOCKS) + 1):
        block = f"block{index}"
        folded[block] = {part: fold((block, part)) for part in ("depthwise", "pointwise")}
    if model.num_classes:
        folded["classifier"] = {k: np.asarray(v, np.float32) for k, v in params["classifier"].items()}
    return folded


def batchnorm_factor(model: MobileNetV1, variables: Mapping[str, Any], path: tuple[str, ...]) -> np.ndarray:
    """The per-output-channel factor gamma / sqrt(var + eps) (float64) that folding multiplies
    the kernel of the unit at `path` (e.g. ("block3", "pointwise")) by."""
    p, s = at_path(variables["params"], path), at_path(variables["batch_stats"], path)
    return np.asarray(p["bn"]["scale"], np.float64) / np.sqrt(np.asarray(s["bn"]["var"], np.float64) + model.bn_epsilon)


def at_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    """The subtree of `tree` at the keys `path`."""
    for key in path:
        tree = tree[key]
    return tree


def canonical_conv(x: Array, kernel: Array, stride: int, groups: int, padding: str, dilation: int = 1,
                   **kwargs: Any) -> Array:
    """`lax.conv_general_dilated` of NHWC `x` and an HWIO `kernel` with the padding convention's
    pixels; `kwargs` go to it (e.g. preferred_element_type)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=conv_padding(x.shape[1:3], kernel.shape[0], stride, padding, dilation),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        **kwargs,
    )


def float_conv(layer: Layer, x: Array, stride: int, groups: int, padding: str, dilation: int = 1) -> Array:
    """One folded convolution in float: `canonical_conv` plus the bias."""
    y = canonical_conv(x, jnp.asarray(layer["kernel"], x.dtype), stride, groups, padding, dilation)
    return y + jnp.asarray(layer["bias"], x.dtype)


def float_dense(layer: Layer, features: Array) -> Array:
    """The classifier in float."""
    return features @ jnp.asarray(layer["kernel"], features.dtype) + jnp.asarray(layer["bias"], features.dtype)


def mean_pool(x: Array) -> Array:
    """Global average pooling of an NHWC feature map."""
    return jnp.mean(x, axis=(1, 2))


def folded_forward(
    params: Mapping[str, Any],
    images: Array,
    *,
    activation: str | None = "relu",
    padding: str = "torch",
    output_stride: int | None = None,
    conv: ConvFn = float_conv,
    pool: PoolFn = mean_pool,
    dense: DenseFn = float_dense,
) -> Array:
    """Logits (or pooled features without a classifier) of NHWC `images` from folded `params`.

    The depthwise convolutions stride and dilate as `block_geometry(output_stride)` says. `conv`,
    `pool` and `dense` compute one layer; the defaults are float, `quantize` passes integer ones,
    which apply the activation themselves (`activation=None`).
    """
    check_input(images)
    act = identity if activation is None else ACTIVATIONS[activation]
    x = act(conv(params["stem"], images, 2, 1, padding, 1))
    for index, (stride, dilation) in enumerate(block_geometry(output_stride), start=1):
        block = params[f"block{index}"]
        x = act(conv(block["depthwise"], x, stride, x.shape[-1], padding, dilation))
        x = act(conv(block["pointwise"], x, 1, 1, padding, 1))
    x = pool(x)
    return dense(params["classifier"], x) if "classifier" in params else x


def inference_fn(model: MobileNetV1, variables: Mapping[str, Any]) -> Callable[[Array], Array]:
    """`images -> logits` of `model` in eval mode, BatchNorm folded, parameters as constants."""
    params = fold_batchnorm(model, variables)
    return lambda images: folded_forward(
        params, images, activation=model.activation, padding=model.padding, output_stride=model.output_stride
    )
