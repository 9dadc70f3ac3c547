"""The 3x3 depthwise convolution in two forms with one parameter layout, (k, k, 1, C).

"conv" is XLA's grouped convolution (`feature_group_count`), the canonical form. "shifted" sums
k*k shifted (strided) slices of the input times the kernel taps: XLA fuses that into one
elementwise loop over the output (and its transpose into another for the input gradient), and
its kernel gradient is written by hand, summed chunk by chunk where the backend table says so.
As a `jax.custom_vjp` the shifted form has reverse-mode derivatives only; forward mode
(`jax.jvp`, `jax.jacfwd`) needs the "conv" form. Both forms take a `dilation` (atrous rate):
"conv" as XLA's `rhs_dilation`, "shifted" by moving its taps `dilation` pixels apart.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax.ops.backends import kernel_defaults
from mobilenet_jax.ops.conv import Padding, shifted_windows

Array = jax.Array


def depthwise_conv_grouped(x: Array, kernel: Array, stride: int, padding: Padding, dilation: int = 1) -> Array:
    """3x3 depthwise convolution as XLA's grouped convolution (`feature_group_count`)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=padding,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def _sum_of_shifted_windows(x: Array, kernel: Array, stride: int, padding: Padding, dilation: int) -> Array:
    """Depthwise convolution as the sum over taps of shifted (strided) windows times the tap.

    The sum is accumulated in at least float32 (like XLA's convolutions), then cast back.
    """
    acc = jnp.promote_types(x.dtype, jnp.float32)
    taps = kernel.reshape(-1, x.shape[-1]).astype(acc)
    windows = shifted_windows(x.astype(acc), kernel.shape[0], stride, padding, dilation)
    out = windows[0] * taps[0]
    for window, tap in zip(windows[1:], taps[1:]):
        out = out + window * tap
    return out.astype(x.dtype)


def depthwise_kernel_grad_batched(
    x: Array, dy: Array, kernel_size: int, stride: int, padding: Padding, dilation: int = 1
) -> Array:
    """Gradient of a depthwise convolution's (k, k, 1, C) kernel: per tap, the sum of window * dy."""
    windows = shifted_windows(x, kernel_size, stride, padding, dilation)
    sums = [jnp.sum(w * dy, axis=(0, 1, 2), dtype=jnp.float32) for w in windows]
    return jnp.stack(sums).reshape(kernel_size, kernel_size, 1, x.shape[-1])


def depthwise_kernel_grad_chunked(
    x: Array,
    dy: Array,
    kernel_size: int,
    stride: int,
    padding: Padding,
    dilation: int = 1,
    images_per_chunk: int = 2,
) -> Array:
    """The same gradient summed over chunks of `images_per_chunk` images in a `lax.scan`.

    A chunk's k*k windows stay in cache instead of being written out at full batch size.
    """
    batch = x.shape[0]
    chunk = next(c for c in range(min(images_per_chunk, batch), 0, -1) if batch % c == 0)

    def add_chunk(total: Array, chunk_xy: tuple[Array, Array]) -> tuple[Array, None]:
        return total + depthwise_kernel_grad_batched(*chunk_xy, kernel_size, stride, padding, dilation), None

    split = lambda a: a.reshape(batch // chunk, chunk, *a.shape[1:])
    zeros = jnp.zeros((kernel_size, kernel_size, 1, x.shape[-1]), jnp.float32)
    return lax.scan(add_chunk, zeros, (split(x), split(dy)))[0]


def depthwise_kernel_grad(
    x: Array, dy: Array, kernel_size: int, stride: int, padding: Padding, dilation: int = 1
) -> Array:
    """The depthwise kernel gradient, chunked where the backend table says so."""
    chunk = kernel_defaults().depthwise_grad_images_per_chunk
    if chunk is None:
        return depthwise_kernel_grad_batched(x, dy, kernel_size, stride, padding, dilation)
    return depthwise_kernel_grad_chunked(x, dy, kernel_size, stride, padding, dilation, images_per_chunk=chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv_shifted(x: Array, kernel: Array, stride: int, padding: Padding, dilation: int = 1) -> Array:
    """The depthwise convolution as a sum of shifted (strided) slices times the kernel taps."""
    return _sum_of_shifted_windows(x, kernel, stride, padding, dilation)


def _shifted_forward(
    x: Array, kernel: Array, stride: int, padding: Padding, dilation: int
) -> tuple[Array, tuple[Array, Array]]:
    return _sum_of_shifted_windows(x, kernel, stride, padding, dilation), (x, kernel)


def _shifted_backward(
    stride: int, padding: Padding, dilation: int, residuals: tuple[Array, Array], dy: Array
) -> tuple[Array, Array]:
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda v: _sum_of_shifted_windows(v, kernel, stride, padding, dilation), x)
    (dx,) = input_vjp(dy)
    dk = depthwise_kernel_grad(x, dy, kernel.shape[0], stride, padding, dilation)
    return dx, dk.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_shifted_forward, _shifted_backward)


DEPTHWISE_FNS = {"conv": depthwise_conv_grouped, "shifted": depthwise_conv_shifted}
