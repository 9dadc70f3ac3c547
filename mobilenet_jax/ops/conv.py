"""Convolution geometry and the matrix-product forms of the full and 1x1 convolutions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax.choices import check_choice

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]

PADDINGS = ("torch", "same")


def conv_padding(size: tuple[int, int], kernel: int, stride: int, padding: str, dilation: int = 1) -> Padding:
    """Explicit (low, high) padding per spatial axis for a `kernel` x `kernel` convolution.

    "torch" pads dilation * (k // 2) on both sides at any stride, like
    `nn.Conv2d(padding=dilation)`. "same" is TensorFlow's SAME rule for the dilated kernel
    ((k - 1) * dilation + 1 wide): the total padding is split with the extra pixel at the end,
    so a stride-2 3x3 conv on an even size pads (0, 1).
    """
    if check_choice("padding", padding, PADDINGS) == "torch":
        return ((dilation * (kernel // 2),) * 2,) * 2
    extent = (kernel - 1) * dilation + 1

    def same(n: int) -> tuple[int, int]:
        total = max((-(-n // stride) - 1) * stride + extent - n, 0)
        return (total // 2, total - total // 2)

    return (same(size[0]), same(size[1]))


def shifted_windows(
    x: Array, kernel_size: int, stride: int, padding: Padding, dilation: int = 1
) -> list[Array]:
    """The k*k strided views of padded `x` that meet kernel tap (i, j), in row-major tap order.

    Window (i, j) holds, at every output pixel, the input value that tap (i, j) multiplies, so a
    convolution is a sum (depthwise) or a concatenation then GEMM (full) over these views. With
    `dilation` d the taps are d pixels apart: window (i, j) starts at (i * d, j * d).
    """
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    n, hp, wp, c = xp.shape
    extent = (kernel_size - 1) * dilation + 1
    out_h = (hp - extent) // stride + 1
    out_w = (wp - extent) // stride + 1
    return [
        lax.slice(
            xp,
            (0, i, j, 0),
            (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
            (1, stride, stride, 1),
        )
        for i in range(0, extent, dilation)
        for j in range(0, extent, dilation)
    ]


def channel_matmul(x: Array, kernel: Array) -> Array:
    """x (N, H, W, C) times kernel (C, O) over the channel axis, as one 2-D matrix product.

    Flattening first lets XLA lay out the product's gradients without the transposed copies it
    makes for the equivalent 4-D einsum on CPU.
    """
    n, h, w, c = x.shape
    return jnp.dot(x.reshape(n * h * w, c), kernel).reshape(n, h, w, kernel.shape[-1])


def full_conv(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
    """A full convolution, kernel (k, k, C_in, C_out), as XLA's convolution."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def full_conv_matmul(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
    """The same convolution as an explicit patch matrix (k*k*C_in wide) times the kernel.

    Worth it for the stem, whose 3 input channels give only 27 values per output pixel: one
    GEMM, whose gradient is another. Patches are ordered (kh, kw, C_in), the kernel's order.
    """
    k, _, _, features = kernel.shape
    patches = jnp.concatenate(shifted_windows(x, k, stride, padding), axis=-1)
    return channel_matmul(patches, kernel.reshape(-1, features))


STEM_FNS = {"conv": full_conv, "matmul": full_conv_matmul}
