"""Building blocks of MobileNet v1: depthwise and pointwise convolutions, BatchNorm, the block.

Every module here is plain Flax linen and knows nothing of training, data or PyTorch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
Padding = tuple[tuple[int, int], tuple[int, int]]

PADDINGS = ("torch", "same")
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"relu": nn.relu, "relu6": nn.relu6}
DEPTHWISE_IMPLS = ("conv", "shifted", "auto")


def _choose(name: str, value: str, allowed: Sequence[str]) -> str:
    """Return `value` if allowed, else raise an error naming the field and the choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_padding(padding: str) -> str:
    """Validate a padding convention name."""
    return _choose("padding", padding, PADDINGS)


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The activation function called `name` ("relu" or "relu6")."""
    return ACTIVATIONS[_choose("activation", name, tuple(ACTIVATIONS))]


def resolve_depthwise_impl(impl: str, backend: str | None = None) -> str:
    """Map "auto" to the depthwise implementation that is fastest on `backend`.

    CPU: "shifted". Measured on a 2-core Xeon (BENCHMARKS.md), MobileNet 1.0-224, batch 32,
    float32: train step 21.0 vs 2.6 img/s (8.0x), inference 127.6 vs 10.3 img/s (12.4x)
    against the grouped convolution; per layer (32x56x56x128) the input gradient is 34 vs
    458 ms. TPUs have native depthwise support in XLA, so the canonical convolution stays there.
    On GPU XLA's grouped-convolution backward pass is known to be slow (jax#13800) while the
    shifted form fuses into elementwise loops; that choice is reasoned, not yet measured.
    """
    _choose("depthwise_impl", impl, DEPTHWISE_IMPLS)
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    return "conv" if backend == "tpu" else "shifted"


def conv_padding(
    size: tuple[int, int], kernel: int, stride: int, padding: str
) -> Padding:
    """Explicit (low, high) padding per spatial axis for a `kernel` x `kernel` convolution.

    "torch" pads (k // 2) on both sides at any stride, like `nn.Conv2d(padding=1)`. "same" is
    TensorFlow's SAME rule: the total padding is split with the extra pixel at the end, so a
    stride-2 3x3 conv on an even size pads (0, 1).
    """
    if check_padding(padding) == "torch":
        return ((kernel // 2, kernel // 2),) * 2

    def same(n: int) -> tuple[int, int]:
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        return (total // 2, total - total // 2)

    return (same(size[0]), same(size[1]))


def depthwise_conv_grouped(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
    """3x3 depthwise convolution as XLA's grouped convolution (`feature_group_count`)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


def shifted_windows(x: Array, kernel_size: int, stride: int, padding: Padding) -> list[Array]:
    """The k*k strided views of padded `x` that meet kernel tap (i, j), in row-major tap order.

    Window (i, j) holds, at every output pixel, the input value that tap (i, j) multiplies, so a
    convolution is a sum (depthwise) or a concatenation then GEMM (full) over these views.
    """
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    n, hp, wp, c = xp.shape
    out_h = (hp - kernel_size) // stride + 1
    out_w = (wp - kernel_size) // stride + 1
    return [
        lax.slice(
            xp,
            (0, i, j, 0),
            (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
            (1, stride, stride, 1),
        )
        for i in range(kernel_size)
        for j in range(kernel_size)
    ]


def _sum_of_shifted_windows(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
    """Depthwise convolution as the sum over taps of shifted (strided) windows times the tap.

    The sum is accumulated in at least float32 (like XLA's convolutions), then cast back.
    """
    acc = jnp.promote_types(x.dtype, jnp.float32)
    taps = kernel.reshape(-1, x.shape[-1]).astype(acc)
    windows = shifted_windows(x.astype(acc), kernel.shape[0], stride, padding)
    out = windows[0] * taps[0]
    for window, tap in zip(windows[1:], taps[1:]):
        out = out + window * tap
    return out.astype(x.dtype)


def depthwise_kernel_grad_batched(x: Array, dy: Array, kernel_size: int, stride: int, padding: Padding) -> Array:
    """Gradient of a depthwise convolution's (k, k, 1, C) kernel: per tap, the sum of window * dy."""
    windows = shifted_windows(x, kernel_size, stride, padding)
    sums = [jnp.sum(w * dy, axis=(0, 1, 2), dtype=jnp.float32) for w in windows]
    return jnp.stack(sums).reshape(kernel_size, kernel_size, 1, x.shape[-1])


def depthwise_kernel_grad_chunked(
    x: Array, dy: Array, kernel_size: int, stride: int, padding: Padding, images_per_chunk: int = 2
) -> Array:
    """The same gradient summed over chunks of `images_per_chunk` images in a `lax.scan`.

    A chunk's k*k windows stay in cache instead of being written out at full batch size: on CPU
    2-3x faster per layer than `depthwise_kernel_grad_batched` (measured, BENCHMARKS.md).
    """
    batch = x.shape[0]
    chunk = next(c for c in range(min(images_per_chunk, batch), 0, -1) if batch % c == 0)

    def add_chunk(total: Array, chunk_xy: tuple[Array, Array]) -> tuple[Array, None]:
        return total + depthwise_kernel_grad_batched(*chunk_xy, kernel_size, stride, padding), None

    split = lambda a: a.reshape(batch // chunk, chunk, *a.shape[1:])
    zeros = jnp.zeros((kernel_size, kernel_size, 1, x.shape[-1]), jnp.float32)
    return lax.scan(add_chunk, zeros, (split(x), split(dy)))[0]


def depthwise_kernel_grad(x: Array, dy: Array, kernel_size: int, stride: int, padding: Padding) -> Array:
    """The depthwise kernel gradient in the form that is fastest per backend: chunked on CPU."""
    geometry = dict(kernel_size=kernel_size, stride=stride, padding=padding)
    return lax.platform_dependent(
        x,
        dy,
        cpu=functools.partial(depthwise_kernel_grad_chunked, **geometry),
        default=functools.partial(depthwise_kernel_grad_batched, **geometry),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_shifted(x: Array, kernel: Array, stride: int, padding: Padding) -> Array:
    """The same convolution as a sum of shifted (strided) slices times the kernel taps.

    XLA fuses this into one elementwise loop over the output (and its transpose into another
    for the input gradient), which on CPU is far faster than its grouped-convolution kernels.
    The kernel gradient is `depthwise_kernel_grad`. As a `jax.custom_vjp` it has reverse-mode
    derivatives only; forward mode (`jax.jvp`, `jax.jacfwd`) needs `impl="conv"` (and eval
    mode, whose BatchNorm has no custom VJP).
    """
    return _sum_of_shifted_windows(x, kernel, stride, padding)


def _shifted_forward(x: Array, kernel: Array, stride: int, padding: Padding) -> tuple[Array, tuple[Array, Array]]:
    return _sum_of_shifted_windows(x, kernel, stride, padding), (x, kernel)


def _shifted_backward(stride: int, padding: Padding, residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda v: _sum_of_shifted_windows(v, kernel, stride, padding), x)
    (dx,) = input_vjp(dy)
    dk = depthwise_kernel_grad(x, dy, kernel.shape[0], stride, padding)
    return dx, dk.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_shifted_forward, _shifted_backward)


DEPTHWISE_FNS = {"conv": depthwise_conv_grouped, "shifted": depthwise_conv_shifted}


def channel_matmul(x: Array, kernel: Array) -> Array:
    """x (N, H, W, C) times kernel (C, O) over the channel axis, as one 2-D matrix product.

    Flattening first matters on CPU: XLA lays out the 2-D product's gradients without the
    transposed copies it makes for the equivalent 4-D einsum (train step 11 % faster, measured).
    """
    n, h, w, c = x.shape
    return jnp.dot(x.reshape(n * h * w, c), kernel).reshape(n, h, w, kernel.shape[-1])


class DepthwiseConv(nn.Module):
    """Bias-free depthwise convolution, kernel (kh, kw, 1, C) as in `nn.Conv` with groups = C.

    `impl` chooses how XLA computes it; every implementation uses the same parameter, so
    variables are interchangeable between them.
    """

    kernel_size: int = 3
    stride: int = 1
    padding: str = "torch"
    impl: str = "auto"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, channels), self.param_dtype
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        pad = conv_padding(x.shape[1:3], self.kernel_size, self.stride, self.padding)
        return DEPTHWISE_FNS[resolve_depthwise_impl(self.impl)](x, kernel, self.stride, pad)


class PointwiseConv(nn.Module):
    """Bias-free 1x1 convolution, kernel (1, 1, C_in, C_out) as in `nn.Conv`.

    Computed as a matrix product over the channel axis, which XLA lowers to one GEMM on every
    backend (its convolution path is slower for 1x1 kernels on CPU).
    """

    features: int
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return channel_matmul(x, kernel[0, 0])


def identity(x: Array) -> Array:
    """The activation that leaves its input as it is."""
    return x


def _scale_and_shift(x: Array, mul: Array, add: Array) -> Array:
    """x * mul + add per channel, in x's dtype: BatchNorm folded into one multiply-add."""
    return x * mul.astype(x.dtype) + add.astype(x.dtype)


def count_per_channel(x: Array, axis_name: str | None) -> int | Array:
    """Elements per channel of `x` (all axes but the last), summed over `axis_name` if set."""
    count = x.size // x.shape[-1]
    return count if axis_name is None else count * lax.psum(1, axis_name)


def batch_moments(x: Array, axis_name: str | None) -> tuple[Array, Array]:
    """Per-channel mean and biased variance of float32 `x` over all axes but the last.

    With `axis_name` the moments are averaged over that mapped axis (equal shards assumed).
    """
    axes = tuple(range(x.ndim - 1))
    moments = jnp.stack([jnp.mean(x, axes), jnp.mean(jnp.square(x), axes)])
    if axis_name is not None:
        moments = lax.pmean(moments, axis_name)
    mean, mean_sq = moments
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_act_train(
    x: Array, scale: Array, bias: Array, activation: Callable[[Array], Array], epsilon: float, axis_name: str | None
) -> tuple[Array, Array, Array]:
    """Train-mode BatchNorm of `x` then `activation`: (output, batch mean, biased batch variance).

    Statistics are float32 and, with `axis_name`, synchronised over that mapped axis. The
    backward pass is written by hand (`_batch_norm_act_backward`): two per-channel sums and one
    elementwise pass. With autodiff of the same forward instead, XLA compiled the CPU train
    step of MobileNet 1.0-224 to 2.38 s against 1.85 s (BENCHMARKS.md, change 9).
    """
    return _batch_norm_act_forward(x, scale, bias, activation, epsilon, axis_name)[0]


def _batch_norm_act_forward(x, scale, bias, activation, epsilon, axis_name):
    x32 = x.astype(jnp.float32)
    mean, var = batch_moments(x32, axis_name)
    rstd = lax.rsqrt(var + epsilon)
    mul = scale.astype(jnp.float32) * rstd
    add = bias.astype(jnp.float32) - mean * mul
    return (activation(_scale_and_shift(x, mul, add)), mean, var), (x, scale, bias, mean, rstd, mul, add)


def _batch_norm_act_backward(activation, epsilon, axis_name, residuals, cotangents):
    """dx = act'(z) g * mul + c1 * x + c0 with per-channel c1, c0 from sums over the whole batch.

    z = x * mul + add, mean and var enter through mul and add; every sum that feeds them is
    taken over the synchronised batch (psum over `axis_name`), while the scale and bias
    gradients are this shard's own sums, as autodiff of the forward would give them.
    """
    x, scale, bias, mean, rstd, mul, add = residuals
    g, g_mean, g_var = cotangents
    gz = jax.vjp(activation, _scale_and_shift(x, mul, add))[1](g)[0].astype(jnp.float32)
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


batch_norm_act_train.defvjp(_batch_norm_act_forward, _batch_norm_act_backward)


class BatchNorm(nn.Module):
    """BatchNorm over N, H, W with the variable layout of `nn.BatchNorm`, then `activation`.

    `momentum` follows Flax: running = momentum * running + (1 - momentum) * batch, so PyTorch's
    momentum 0.1 is 0.9 here. With `unbiased_running_var` (the PyTorch convention, default) the
    running variance stores the batch variance times n / (n - 1), n = elements per channel over
    the whole (possibly cross-device) batch; normalisation always uses the biased variance.
    Statistics are computed in float32 whatever the computation dtype. With `axis_name` the
    batch statistics are averaged over that mapped axis (synchronised BatchNorm). In training
    the normalisation and the activation are one function with a hand-written gradient
    (`batch_norm_act_train`).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = True
    axis_name: str | None = None
    activation: Callable[[Array], Array] = identity
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        x = x.astype(self.dtype or x.dtype)

        if not train:
            mul = scale.astype(jnp.float32) * lax.rsqrt(ra_var.value + self.epsilon)
            add = bias.astype(jnp.float32) - ra_mean.value * mul
            return self.activation(_scale_and_shift(x, mul, add))

        axis_name = None if self.is_initializing() else self.axis_name
        out, mean, var = batch_norm_act_train(x, scale, bias, self.activation, self.epsilon, axis_name)
        if not self.is_initializing():
            count = count_per_channel(x, axis_name)
            correction = count / (count - 1) if self.unbiased_running_var else 1.0
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var * correction
        return out


class ConvBNAct(nn.Module):
    """A bias-free convolution, BatchNorm and activation: the unit every MobileNet layer uses."""

    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    activation: Callable[[Array], Array]

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = self.conv(name="conv")(x)
        return self.norm(name="bn", activation=self.activation)(x, train=train)


class StemConv(nn.Module):
    """The full 3x3 stride-2 convolution on the input image, kernel (3, 3, C_in, C_out).

    With 3 input channels the window has only 27 values per output pixel, so it is computed as
    an explicit patch matrix (27 wide) times the kernel: one GEMM, whose gradient is another.
    """

    features: int
    stride: int = 2
    kernel_size: int = 3
    padding: str = "torch"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        pad = conv_padding(x.shape[1:3], k, s, self.padding)
        patches = jnp.concatenate(shifted_windows(x, k, s, pad), axis=-1)
        # Patches are ordered (kh, kw, C_in), the order of the kernel's leading axes.
        return channel_matmul(patches, kernel.reshape(-1, self.features))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv (carrying the stride), then pointwise 1x1 conv, each with BN + act."""

    features: int
    stride: int
    depthwise: Callable[..., nn.Module]
    pointwise: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    activation: Callable[[Array], Array]

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        unit = functools.partial(ConvBNAct, norm=self.norm, activation=self.activation)
        x = unit(functools.partial(self.depthwise, stride=self.stride), name="depthwise")(x, train)
        return unit(functools.partial(self.pointwise, features=self.features), name="pointwise")(x, train)
