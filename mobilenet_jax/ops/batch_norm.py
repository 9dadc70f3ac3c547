"""Train-mode BatchNorm followed by its activation, in two forms with the same results.

"autodiff" is the plain computation, differentiated by JAX: the canonical form. "fused" is the
same forward pass with a hand-written backward pass (`batch_norm_act_train`): two per-channel
sums and one elementwise pass, which keeps XLA from fusing the BatchNorm gradient into the
neighbouring convolution loops. Its derivatives are reverse-mode (and forward-over-reverse);
plain forward mode (`jax.jvp`) through it raises.

Both return (output, batch mean, biased batch variance); statistics are float32 and, with
`axis_name`, synchronised over that mapped axis (equal shards assumed).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Activation = Callable[[Array], Array]


def scale_and_shift(x: Array, mul: Array, add: Array) -> Array:
    """x * mul + add per channel, in x's dtype: BatchNorm folded into one multiply-add."""
    return x * mul.astype(x.dtype) + add.astype(x.dtype)


def count_per_channel(x: Array, axis_name: str | None) -> int | Array:
    """Elements per channel of `x` (all axes but the last), summed over `axis_name` if set."""
    count = x.size // x.shape[-1]
    return count if axis_name is None else count * lax.psum(1, axis_name)


def batch_moments(x: Array, axis_name: str | None) -> tuple[Array, Array]:
    """Per-channel mean and biased variance of float32 `x` over all axes but the last."""
    axes = tuple(range(x.ndim - 1))
    moments = jnp.stack([jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)])
    if axis_name is not None:
        moments = lax.pmean(moments, axis_name)
    mean, mean_sq = moments
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


def _normalize(x, scale, bias, activation, epsilon, axis_name):
    """The forward pass shared by both forms, with what the hand-written backward needs."""
    x32 = x.astype(jnp.float32)
    mean, var = batch_moments(x32, axis_name)
    rstd = lax.rsqrt(var + epsilon)
    mul = scale.astype(jnp.float32) * rstd
    add = bias.astype(jnp.float32) - mean * mul
    return (activation(scale_and_shift(x, mul, add)), mean, var), (x, scale, bias, mean, rstd, mul, add)


def batch_norm_act_autodiff(
    x: Array, scale: Array, bias: Array, activation: Activation, epsilon: float, axis_name: str | None
) -> tuple[Array, Array, Array]:
    """Train-mode BatchNorm of `x` then `activation`, differentiated by JAX."""
    return _normalize(x, scale, bias, activation, epsilon, axis_name)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_act_train(
    x: Array, scale: Array, bias: Array, activation: Activation, epsilon: float, axis_name: str | None
) -> tuple[Array, Array, Array]:
    """Train-mode BatchNorm of `x` then `activation`, with the hand-written backward pass."""
    return _normalize(x, scale, bias, activation, epsilon, axis_name)[0]


def _backward(activation, epsilon, axis_name, residuals, cotangents):
    """dx = act'(z) g * mul + c1 * x + c0 with per-channel c1, c0 from sums over the whole batch.

    z = x * mul + add, mean and var enter through mul and add; every sum that feeds them is
    taken over the synchronised batch (psum over `axis_name`), while the scale and bias
    gradients are this shard's own sums, as autodiff of the forward would give them.
    """
    x, scale, bias, mean, rstd, mul, add = residuals
    g, g_mean, g_var = cotangents
    gz = jax.vjp(activation, scale_and_shift(x, mul, add))[1](g)[0].astype(jnp.float32)
    x32 = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    local = jnp.stack([jnp.sum(gz, axes), jnp.sum(gz * x32, axes)])
    count = count_per_channel(x, axis_name)
    total = jnp.concatenate([local, jnp.stack([g_mean, g_var])])
    if axis_name is not None:
        total = lax.psum(total, axis_name)
    (sum_gz, sum_gz_x, mean_ct, var_ct) = total
    # Gradients of the loss with respect to the batch mean and variance.
    d_mean = -mul * sum_gz + mean_ct
    d_var = -0.5 * mul * rstd * rstd * (sum_gz_x - mean * sum_gz) + var_ct
    c1 = 2.0 * d_var / count
    c0 = d_mean / count - c1 * mean
    dx = gz * mul + x32 * c1 + c0
    d_scale = (local[1] - mean * local[0]) * rstd
    return dx.astype(x.dtype), d_scale.astype(scale.dtype), local[0].astype(bias.dtype)


batch_norm_act_train.defvjp(_normalize, _backward)


BATCH_NORM_FNS = {"autodiff": batch_norm_act_autodiff, "fused": batch_norm_act_train}
