"""Models for the export tests: small MobileNets whose BatchNorm statistics are realistic.

A freshly initialised network has unit BatchNorm statistics, so its activations shrink layer
after layer and its logits are ~1e-14: useless for comparing exports. Here kernels are He-normal,
every BatchNorm gets a random scale and bias, and its running statistics are the batch
statistics of its input on random images, computed layer by layer (what a training pass with
momentum 0 would store), so activations stay of order one, as in a trained network. Nothing is
compiled: building a model costs well under a second.

BatchNorm biases are drawn around +1 (BATCHNORM_BIAS_MEAN), not 0. With biases around 0 a
random network is chaotic: every BatchNorm re-centres its input on the data, and a ReLU of a
centred input keeps half a perturbation's energy but only 1 - 1/pi of the signal's variance,
so each layer multiplies any relative perturbation by about sqrt(0.5 / (0.5 - 1/(2 pi))) = 1.21
(measured 1.19: 58-67x over 24 layers). Rounding the weights to float16 (2^-11) then moved the
logits by 1.0-2.1e-2 of the largest, in LiteRT and in a JAX simulation alike, where the trained
digits model, which shrinks perturbations (measured gain 0.35-0.87 by depth), moves by 2.5e-3.
Biases around +1 keep most ReLUs in their linear range and the gain at about 3x in all: float16
moves the logits by 1.0-1.5e-3, in line with the trained model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flax import traverse_util

from mobilenet_jax import MobileNetV1
from mobilenet_jax.export import Deployable, folded_forward
from mobilenet_jax.export.folding import float_conv
from mobilenet_jax.model import is_activation_range

BATCH = 2
# Two widths at two non-224 sizes: every format is tested on both.
CONFIGS = ((0.25, 96), (0.5, 128))
FLOAT32_TOLERANCE = 1e-4
BATCHNORM_BIAS_MEAN = 1.0  # of every BatchNorm bias (the classifier's is drawn around 0)


def images(size: int, count: int = BATCH, seed: int = 0) -> np.ndarray:
    """Standard-normal NHWC float32 images."""
    return np.random.default_rng(seed).standard_normal((count, size, size, 3), dtype=np.float32)


def realistic_deployable(
    alpha: float, size: int, num_classes: int = 10, seed: int = 0, negative_scales: float = 0.0, **fields
) -> Deployable:
    """A MobileNet at `alpha` and `size` with random weights and data-derived BatchNorm statistics;
    a fraction `negative_scales` of the BatchNorm scales (gamma) negative."""
    model = MobileNetV1(num_classes=num_classes, alpha=alpha, **fields)
    x = images(size, 8, seed + 1)
    shapes = jax.eval_shape(model.init, jax.random.key(seed), x[:1])["params"]
    rng = np.random.default_rng(seed)

    def init(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
        if name == "scale":
            scale = rng.uniform(0.5, 1.5, leaf.shape)
            if negative_scales:
                scale = np.where(rng.uniform(size=leaf.shape) < negative_scales, -scale, scale)
            return scale.astype(np.float32)
        mean = BATCHNORM_BIAS_MEAN if path[0].key != "classifier" else 0.0
        return rng.normal(mean, 0.2, leaf.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(init, shapes)
    stats = {}

    def normalising_conv(layer, x, stride, groups, padding, dilation):
        unit = layer["unit"]
        y = float_conv({"kernel": unit["conv"]["kernel"], "bias": 0.0}, x, stride, groups, padding, dilation)
        mean, var = jnp.mean(y, (0, 1, 2)), jnp.var(y, (0, 1, 2))
        stats[layer["path"]] = {"bn": {"mean": np.asarray(mean), "var": np.asarray(var)}}
        return (y - mean) * jax.lax.rsqrt(var + model.bn_epsilon) * unit["bn"]["scale"] + unit["bn"]["bias"]

    units = {"stem": {"unit": params["stem"], "path": ("stem",)}}
    for block in (k for k in params if k.startswith("block")):
        units[block] = {p: {"unit": params[block][p], "path": (block, p)} for p in ("depthwise", "pointwise")}
    folded_forward(units, jnp.asarray(x), activation=model.activation, padding=model.padding,
                   output_stride=model.output_stride, conv=normalising_conv)
    batch_stats = {"stem": stats["stem",]}
    for block in (k for k in params if k.startswith("block")):
        batch_stats[block] = {p: stats[block, p] for p in ("depthwise", "pointwise")}
    return Deployable(model, {"params": params, "batch_stats": batch_stats}, image_size=size)


def quantization_aware(deployable: Deployable, passes: int = 2, seed: int = 10) -> Deployable:
    """`deployable` made quantization-aware (int8), its activation ranges tracked by `passes`
    train-mode passes over 8 random images each (BatchNorm statistics move with them)."""
    model = deployable.model.clone(quantization="int8")
    size = deployable.image_size
    shapes = jax.eval_shape(model.init, jax.random.key(0), images(size, 1))["batch_stats"]
    stats = traverse_util.flatten_dict(deployable.variables["batch_stats"], sep="/")
    ranges = {path: np.zeros(leaf.shape, leaf.dtype)
              for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items() if is_activation_range(path)}
    variables = {"params": deployable.variables["params"],
                 "batch_stats": traverse_util.unflatten_dict({**stats, **ranges}, sep="/")}
    update = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1]["batch_stats"])
    for index in range(passes):
        variables = {**variables, "batch_stats": update(variables, images(size, 8, seed + index))}
    return Deployable(model, variables, image_size=size, normalization=deployable.normalization)
