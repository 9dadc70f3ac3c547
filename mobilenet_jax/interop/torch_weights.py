"""Weights between the PyTorch reference (`TorchMobileNetV1.state_dict()`) and Flax variables.

Layouts (FACTS.md): conv (O, I, kh, kw) <-> (kh, kw, I, O), depthwise (C, 1, kh, kw) <->
(kh, kw, 1, C), both by `transpose(2, 3, 1, 0)`; linear weight (out, in) <-> Dense kernel
(in, out); BatchNorm weight / bias <-> params scale / bias and running_mean / running_var <->
batch_stats mean / var. Flax variables are `{"params": ..., "batch_stats": ...}`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from mobilenet_jax.interop.torch_reference import TorchMobileNetV1
from mobilenet_jax.model import BLOCKS, MobileNetV1

FlaxPath = tuple[str, ...]  # (collection, module, ..., variable name)

# Flax variable name -> (PyTorch parameter name, layout transform Flax -> PyTorch).
_TO_TORCH = {
    ("params", "kernel", 4): ("weight", lambda a: a.transpose(3, 2, 0, 1)),
    ("params", "kernel", 2): ("weight", lambda a: a.T),
    ("params", "bias", 1): ("bias", lambda a: a),
    ("params", "scale", 1): ("weight", lambda a: a),
    ("batch_stats", "mean", 1): ("running_mean", lambda a: a),
    ("batch_stats", "var", 1): ("running_var", lambda a: a),
}
_TO_FLAX_LAYOUT = {4: lambda a: a.transpose(2, 3, 1, 0), 2: lambda a: a.T, 1: lambda a: a}
_IGNORED_TORCH_SUFFIX = ".num_batches_tracked"


def _torch_module_path(flax_modules: tuple[str, ...]) -> str:
    """"block3/depthwise/conv" -> "blocks.2.depthwise.conv"; other module names map as they are."""
    head, *rest = flax_modules
    if head.startswith("block"):
        head = f"blocks.{int(head[len('block'):]) - 1}"
    return ".".join([head, *rest])


def _torch_key(path: FlaxPath, ndim: int) -> str:
    """The state_dict key that holds the Flax variable at `path` (rank `ndim`)."""
    collection, *modules, name = path
    torch_name, _ = _TO_TORCH[(collection, name, ndim)]
    return f"{_torch_module_path(tuple(modules))}.{torch_name}"


def infer_model(state_dict: Mapping[str, Any]) -> MobileNetV1:
    """The MobileNetV1 whose variables fit `state_dict`: alpha from the last block's width.

    Exact for the paper's widths; for other alphas pass the model to `torch_to_flax` yourself.
    """
    last = f"blocks.{len(BLOCKS) - 1}.pointwise.conv.weight"
    if last not in state_dict:
        raise KeyError(f"state_dict has no {last!r}: is it a TorchMobileNetV1 state_dict?")
    alpha = state_dict[last].shape[0] / BLOCKS[-1][0]
    num_classes = state_dict["classifier.weight"].shape[0] if "classifier.weight" in state_dict else 0
    return MobileNetV1(num_classes=num_classes, alpha=alpha)


def variable_shapes(model: MobileNetV1) -> dict[FlaxPath, tuple[int, ...]]:
    """Flattened shapes of `model`'s variables, computed without allocating them."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(abstract).items()}


def torch_to_flax(state_dict: Mapping[str, Any], model: MobileNetV1 | None = None) -> dict[str, Any]:
    """Flax variables {"params", "batch_stats"} (float32 numpy) from a TorchMobileNetV1 state_dict.

    Raises KeyError for a missing or unexpected key and ValueError for a shape mismatch, naming
    the key and both shapes.
    """
    shapes = variable_shapes(model or infer_model(state_dict))
    flat = {}
    for path, shape in shapes.items():
        key = _torch_key(path, len(shape))
        if key not in state_dict:
            raise KeyError(f"state_dict is missing {key!r} (Flax {'/'.join(path)}, shape {shape})")
        # A copy: numpy would otherwise alias tensors that PyTorch later updates in place.
        value = np.array(state_dict[key].detach().cpu(), np.float32, copy=True)
        if value.ndim == len(shape):
            value = _TO_FLAX_LAYOUT[value.ndim](value)
        if value.shape != shape:
            raise ValueError(
                f"{key!r} has shape {tuple(state_dict[key].shape)}, which is {value.shape} in Flax layout, "
                f"but {'/'.join(path)} needs {shape}"
            )
        flat[path] = value
    used = {_torch_key(path, len(shape)) for path, shape in shapes.items()}
    extra = sorted(k for k in state_dict if k not in used and not k.endswith(_IGNORED_TORCH_SUFFIX))
    if extra:
        raise KeyError(f"state_dict has keys the model does not use: {extra}")
    return traverse_util.unflatten_dict(flat)


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A TorchMobileNetV1 state_dict from Flax variables {"params", "batch_stats"}.

    `num_batches_tracked`, which Flax does not keep, is set to 0 (it only matters for PyTorch's
    cumulative-average mode, momentum=None).
    """
    flat = traverse_util.flatten_dict({k: variables[k] for k in ("params", "batch_stats")})
    state = {}
    for path, value in flat.items():
        # A copy: JAX arrays view as read-only numpy, which torch tensors must not alias.
        value = np.array(value, np.float32, copy=True)
        _, transform = _TO_TORCH[(path[0], path[-1], value.ndim)]
        state[_torch_key(path, value.ndim)] = torch.from_numpy(np.ascontiguousarray(transform(value)))
        if path[0] == "batch_stats" and path[-1] == "mean":
            state[f"{_torch_module_path(path[1:-1])}{_IGNORED_TORCH_SUFFIX}"] = torch.tensor(0)
    return state


def torch_reference_from_flax(model: MobileNetV1, variables: Mapping[str, Any]) -> TorchMobileNetV1:
    """The TorchMobileNetV1 that computes what `model` computes with `variables` (eval mode).

    Its BatchNorms keep PyTorch's default momentum (0.1), not `model.bn_momentum`.
    """
    reference = TorchMobileNetV1(
        num_classes=model.num_classes,
        alpha=model.alpha,
        min_depth=model.min_depth,
        activation=model.activation,
        dropout_rate=model.dropout_rate,
        padding=model.padding,
        bn_epsilon=model.bn_epsilon,
        output_stride=model.output_stride,
    )
    reference.load_state_dict(flax_to_torch(variables))
    return reference.eval()
