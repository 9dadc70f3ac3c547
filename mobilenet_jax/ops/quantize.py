"""The int8 grids of the project's quantization scheme, and their fake quantization for training.

One definition serves both sides: `export.quantize` builds the integer model from these grids,
and quantization-aware training rounds the float model onto the same grids, so that the trained
network computes the int8 model's arithmetic (up to float rounding of the sums).

- Kernels: symmetric per output channel (the last axis), 127 levels a side, scale
  `max |w| / 127` over the channel (1 for an all-zero channel).
- Activations (entering a convolution, the pooling or the classifier, and the logits): per
  tensor, from a range (low, high).
  A range with `low < 0` (the image, the logits) is signed: step m / 127 with m = max(-low,
  high), integers -128..127 (int8's, as integer runtimes clip);
  otherwise (every ReLU output) 256 levels on [0, high]. A zero-width range gets scale 1.

Fake quantization is `x + stop_gradient(q - x)`: inside the range the forward value is q exactly
(|q - x| is at most half a step, so by Sterbenz's lemma q - x and then x + (q - x) are exact in
floating point); a value clipped from far outside may land within rounding of its bound,
and the gradient is the straight-through estimator: identity for the kernels, identity inside
the range and zero outside it for the activations (the gradient of the clip, as TensorFlow's
`fake_quant_with_min_max_vars`). Values are computed in float32 whatever the computation dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

MODES = ("int8",)
QUANTIZATIONS = (None, *MODES)  # what MobileNetV1.quantization may be: None (float) or a mode
WEIGHT_LEVELS = 127  # a side: integers -127..127
UNSIGNED_LEVELS = 255  # integers 0..255


def _numpy_for(*arrays: Any) -> Any:
    """jax.numpy for JAX arrays (and tracers), numpy for host values: the exporter quantizes
    without compiling anything, with the same float32 operations, hence the same results."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def kernel_scale(kernel: Array) -> Array:
    """Per-output-channel scales (the last axis) of symmetric 127-level quantization, float32."""
    xp = _numpy_for(kernel)
    kernel = xp.asarray(kernel, xp.float32)
    channel_max = xp.max(xp.abs(kernel.reshape(-1, kernel.shape[-1])), axis=0)
    return xp.where(channel_max > 0, channel_max / xp.float32(WEIGHT_LEVELS), xp.float32(1.0))


def input_grid(low: Array, high: Array) -> tuple[Array, Array, Array]:
    """(scale, lowest integer, highest integer), float32, of the 8-bit grid of a range (low, high)."""
    xp = _numpy_for(low, high)
    low, high = xp.asarray(low, xp.float32), xp.asarray(high, xp.float32)
    signed = low < 0
    largest = xp.where(signed, xp.maximum(-low, high), high)
    levels = xp.where(signed, xp.float32(WEIGHT_LEVELS), xp.float32(UNSIGNED_LEVELS))
    scale = xp.where(largest > 0, largest / levels, xp.float32(1.0))
    return scale, xp.where(signed, -levels - 1, xp.float32(0.0)), levels


def fake_quant_kernel(kernel: Array) -> Array:
    """`kernel` rounded onto its per-output-channel int8 grid; gradient: identity."""
    w = kernel.astype(jnp.float32)
    scale = lax.stop_gradient(kernel_scale(w))
    q = jnp.round(w / scale) * scale
    return (w + lax.stop_gradient(q - w)).astype(kernel.dtype)


def fake_quant_input(x: Array, low: Array, high: Array) -> Array:
    """`x` rounded onto the 8-bit grid of the range (low, high) and clipped to it; gradient:
    identity inside the grid's range, zero outside (the range itself gets none)."""
    scale, qmin, qmax = (lax.stop_gradient(v) for v in input_grid(low, high))
    x32 = x.astype(jnp.float32)
    q = jnp.clip(jnp.round(x32 / scale), qmin, qmax) * scale
    clipped = jnp.clip(x32, qmin * scale, qmax * scale)
    return (clipped + lax.stop_gradient(q - clipped)).astype(x.dtype)
