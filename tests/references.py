"""Reference computations the tests compare every kernel and layer against."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def rand(seed: int, *shape: int) -> jax.Array:
    """Standard-normal float32 values of `shape`, fixed by `seed`."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def lax_conv(x, kernel, stride, padding, groups=1, dilation=1):
    """XLA's own convolution, the reference for every other formulation."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups, precision=lax.Precision.HIGHEST,
    )


def reference_batch_norm_act(x, scale, bias, activation, epsilon=1e-5):
    """Train-mode BatchNorm written plainly (two-pass variance), differentiated by autodiff."""
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return activation((x - mean) * lax.rsqrt(var + epsilon) * scale + bias), mean, var


def batch_norm_act_loss(fn, weights):
    """A loss that reaches every output of a BatchNorm: the activations and both statistics."""
    w_out, w_mean, w_var = weights

    def loss(x, scale, bias):
        out, mean, var = fn(x, scale, bias)
        return jnp.sum(out * w_out) + jnp.sum(mean * w_mean) + jnp.sum(var * w_var)

    return loss
