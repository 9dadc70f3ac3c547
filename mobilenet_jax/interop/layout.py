"""The end every converter shares: named source tensors in Flax layout -> MobileNetV1 variables.

A converter knows its framework's names and tensor layouts; it lists the source names of the
27 convolution + BatchNorm layers (`ConvBN`, in forward order) and of the classifier, and hands
`assemble` a `read(name, role)` that returns one tensor in Flax layout. `assemble` infers the
width multiplier and class count, checks every shape against the model those fields build, and
names the source tensor behind any mismatch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mobilenet_jax.model import BLOCKS, MobileNetV1

FlaxPath = tuple[str, ...]
# Roles a converter's `read` is asked for; each fixes the Flax layout of the tensor it returns:
# "stem" (3, 3, 3, C), "depthwise" (3, 3, 1, C), "pointwise" (1, 1, C_in, C_out), "gamma",
# "beta", "mean", "var" (C,), "head_kernel" (C, classes), "head_bias" (classes,).
Reader = Callable[[str, str], np.ndarray]

# Flax module paths of the convolution + BatchNorm layers, in forward order.
CONV_MODULES: tuple[FlaxPath, ...] = (
    ("stem",),
    *((f"block{i}", part) for i in range(1, len(BLOCKS) + 1) for part in ("depthwise", "pointwise")),
)
_BN_ROLES = (("params", "scale", "gamma"), ("params", "bias", "beta"), ("batch_stats", "mean", "mean"),
             ("batch_stats", "var", "var"))


@dataclasses.dataclass(frozen=True)
class ConvBN:
    """Source names of one bias-free convolution's kernel and of the BatchNorm that follows it."""

    kernel: str
    gamma: str
    beta: str
    mean: str
    var: str

    def names(self) -> tuple[str, ...]:
        """All five names, kernel first."""
        return dataclasses.astuple(self)


@dataclasses.dataclass(frozen=True)
class Converted:
    """A conversion's result: `MobileNetV1(**fields).apply(variables, x)` reproduces the source.

    `origin` maps every Flax variable ("params/stem/conv/kernel") to the source tensor it came
    from, so a reader can see, e.g., which values were ExponentialMovingAverage shadows.
    """

    fields: dict[str, Any]
    variables: dict[str, Any]
    origin: dict[str, str]

    def model(self) -> MobileNetV1:
        """The MobileNetV1 these variables belong to."""
        return MobileNetV1(**self.fields)


def conv_role(module: FlaxPath) -> str:
    """The kernel role of the convolution at Flax `module`: "stem", "depthwise" or "pointwise"."""
    return module[-1] if len(module) == 2 else "stem"


def expect_rank(name: str, value: np.ndarray, rank: int, layout: str) -> np.ndarray:
    """`value` as float32 if it has `rank` axes; otherwise a ValueError naming `name` and `layout`."""
    value = np.asarray(value, np.float32)
    if value.ndim != rank:
        raise ValueError(f"{name!r} has shape {value.shape}, expected rank {rank} ({layout})")
    return value


def from_tf_layout(name: str, value: Any, role: str) -> np.ndarray:
    """A TensorFlow / Keras tensor in Flax layout: depthwise (kh, kw, C, 1) -> (kh, kw, 1, C), the
    1x1-convolution classifier (1, 1, C, K) -> (C, K); full convolutions and vectors as they are."""
    if role in ("stem", "pointwise", "head_kernel"):
        value = expect_rank(name, value, 4, "kh, kw, C_in, C_out")
        return value[0, 0] if role == "head_kernel" else value
    if role == "depthwise":
        return expect_rank(name, value, 4, "kh, kw, C, 1").transpose(0, 1, 3, 2)
    return expect_rank(name, value, 1, "C")


def variable_shapes(model: MobileNetV1) -> dict[FlaxPath, tuple[int, ...]]:
    """Flattened shapes of `model`'s variables, computed without allocating them."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(abstract).items()}


def assemble(
    read: Reader,
    layers: Sequence[ConvBN],
    head: tuple[str, str] | None,
    fields: Mapping[str, Any],
    source: str,
) -> Converted:
    """Variables from `layers` (27, forward order) and `head` (kernel, bias names, or None).

    `fields` holds the source's conventions (activation, padding, BatchNorm epsilon, ...);
    alpha is the last block's width / 1024 and num_classes the classifier's width (0 without
    one). Raises ValueError naming the source tensor when a shape does not fit the model.
    """
    if len(layers) != len(CONV_MODULES):
        raise ValueError(f"expected {len(CONV_MODULES)} convolution layers, got {len(layers)}")
    tensors: dict[FlaxPath, tuple[str, np.ndarray]] = {}
    for module, names in zip(CONV_MODULES, layers):
        tensors[("params", *module, "conv", "kernel")] = (names.kernel, read(names.kernel, conv_role(module)))
        for collection, variable, role in _BN_ROLES:
            name = getattr(names, role)
            tensors[(collection, *module, "bn", variable)] = (name, read(name, role))
    if head is not None:
        tensors[("params", "classifier", "kernel")] = (head[0], read(head[0], "head_kernel"))
        tensors[("params", "classifier", "bias")] = (head[1], read(head[1], "head_bias"))

    last_width = tensors[("params", *CONV_MODULES[-1], "conv", "kernel")][1].shape[-1]
    num_classes = tensors[("params", "classifier", "bias")][1].shape[0] if head else 0
    fields = {**fields, "alpha": last_width / BLOCKS[-1][0], "num_classes": num_classes}
    model = MobileNetV1(**fields)
    flat, origin = {}, {}
    for path, shape in variable_shapes(model).items():
        name, value = tensors[path]
        if value.shape != shape:
            raise ValueError(
                f"{source} tensor {name!r} is {value.shape} in Flax layout, but {'/'.join(path)} of "
                f"MobileNetV1(alpha={model.alpha}, min_depth={model.min_depth}) needs {shape}: MobileNetV1's "
                f"widths are max(int(c * alpha), min_depth) of the paper's, and a source whose widths are "
                f"not is one this model cannot express"
            )
        flat[path] = value
        origin["/".join(path)] = name
    return Converted(fields=fields, variables=traverse_util.unflatten_dict(flat), origin=origin)
