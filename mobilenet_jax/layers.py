"""The linen modules MobileNet v1 is built of: convolutions, BatchNorm, the separable block.

Each module that has more than one computational form takes an `impl` ("auto" resolves through
`ops.backends`); every form uses the same variables, so they are interchangeable. With
`quantization="int8"` the convolutions fake-quantize their kernel before any form computes
with it, and `InputQuantizer` fake-quantizes the activations entering them, the pooling's input
and the logits (`ops.quantize`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax.choices import check_choice
from mobilenet_jax.ops import backends
from mobilenet_jax.ops.batch_norm import BATCH_NORM_FNS, count_per_channel, scale_and_shift
from mobilenet_jax.ops.conv import STEM_FNS, channel_matmul, conv_padding
from mobilenet_jax.ops.depthwise import DEPTHWISE_FNS
from mobilenet_jax.ops.quantize import QUANTIZATIONS, fake_quant_input, fake_quant_kernel

Array = jax.Array
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {"relu": nn.relu, "relu6": nn.relu6}
_he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
# The name of a unit's `InputQuantizer`: its range is batch_stats .../<unit>/input_quant/{low,high,tracked}.
INPUT_QUANTIZER = "input_quant"


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The activation function called `name` ("relu" or "relu6")."""
    return ACTIVATIONS[check_choice("activation", name, tuple(ACTIVATIONS))]


def identity(x: Array) -> Array:
    """The activation that leaves its input as it is."""
    return x


def quantized_kernel(kernel: Array, quantization: str | None) -> Array:
    """`kernel` as a layer with `quantization` (None or "int8") computes with it."""
    return kernel if check_choice("quantization", quantization, QUANTIZATIONS) is None else fake_quant_kernel(kernel)


def int8_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, **kwargs) -> Array:
    """`lax.dot_general` with the right operand (a Dense kernel) fake-quantized per output
    channel: `nn.Dense(dot_general=int8_dot_general)` is the int8-aware classifier."""
    return lax.dot_general(lhs, fake_quant_kernel(rhs), dimension_numbers, precision=precision, **kwargs)


class Conv(nn.Module):
    """Bias-free k x k convolution with the kernel layout of `nn.Conv`, in one of three kinds.

    A full convolution (`features` set) has kernel (k, k, C_in, features); at 1x1 and stride 1
    (pointwise) it is computed as one GEMM. A depthwise one (`features=None`) has one filter per
    input channel, kernel (k, k, 1, C), as `nn.Conv` with feature_group_count = C. `impl` picks
    the form of a k x k full ("stem") or depthwise convolution (`ops.backends`); `padding` is a
    convention of `ops.conv.conv_padding`; `quantization` one of `ops.quantize.QUANTIZATIONS`.
    `dilation` (the atrous rate) spaces a depthwise kernel's taps that many pixels apart; a full
    convolution takes only 1. It adds no variables.
    """

    features: int | None = None
    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    padding: str = "torch"
    impl: str = "auto"
    quantization: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = _he_normal

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s, depthwise = self.kernel_size, self.stride, self.features is None
        if self.dilation != 1 and not depthwise:
            raise ValueError(
                f"dilation is for depthwise convolutions only, got dilation={self.dilation} with "
                f"features={self.features}; use dilation=1 or features=None"
            )
        shape = (k, k, 1, x.shape[-1]) if depthwise else (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        kernel = quantized_kernel(kernel, self.quantization)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if not depthwise and k == s == 1:
            return channel_matmul(x, kernel[0, 0])
        pad = conv_padding(x.shape[1:3], k, s, self.padding, self.dilation)
        if depthwise:
            return DEPTHWISE_FNS[backends.resolve("depthwise", self.impl)](x, kernel, s, pad, self.dilation)
        return STEM_FNS[backends.resolve("stem", self.impl)](x, kernel, s, pad)


class BatchNorm(nn.Module):
    """BatchNorm over N, H, W with the variable layout of `nn.BatchNorm`, then `activation`.

    `momentum` follows Flax: running = momentum * running + (1 - momentum) * batch, so PyTorch's
    momentum 0.1 is 0.9 here. With `unbiased_running_var` (the PyTorch convention, default) the
    running variance stores the batch variance times n / (n - 1), n = elements per channel over
    the whole (possibly cross-device) batch; normalisation always uses the biased variance.
    Statistics are computed in float32 whatever the computation dtype. With `axis_name` the
    batch statistics are averaged over that mapped axis (synchronised BatchNorm). `impl` picks
    the train-mode form (`ops.batch_norm`); eval mode is one multiply-add and the activation.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = True
    axis_name: str | None = None
    activation: Callable[[Array], Array] = identity
    impl: str = "auto"
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
            return self.activation(scale_and_shift(x, mul, add))

        axis_name = None if self.is_initializing() else self.axis_name
        if count_per_channel(x, None) < 2 and axis_name is None:
            raise ValueError(
                f"train-mode BatchNorm needs more than one value per channel, got input shape {tuple(x.shape)}; "
                "use a larger batch or image size, or train=False"
            )
        normalize = BATCH_NORM_FNS[backends.resolve("batch_norm", self.impl)]
        out, mean, var = normalize(x, scale, bias, self.activation, self.epsilon, axis_name)
        if not self.is_initializing():
            count = count_per_channel(x, axis_name)
            correction = count / (count - 1) if self.unbiased_running_var else 1.0
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var * correction
        return out


class InputQuantizer(nn.Module):
    """Fake quantization of an activation (a layer's input, the pooling's input or the logits) on
    the 8-bit grid of a tracked range.

    The range (`batch_stats` "low" and "high") is the one `export.quantize` builds the tensor's
    integer grid from (`ops.quantize.input_grid`): a negative `low` (the image, the logits)
    makes it signed, otherwise it is [0, high] (ReLU outputs). In train mode it follows the batch's min
    and max as an exponential moving average at `momentum` (Flax convention, as BatchNorm's:
    pass the model's BatchNorm momentum, so the ranges cover the same stretch of training as the
    running statistics that are folded with them), and the batch is quantized with the updated
    range; with `axis_name` the batch min and max are averaged over that mapped axis (as
    BatchNorm averages its moments, so a synchronised run and a per-device one whose statistics
    are averaged afterwards store the same). The first update takes the batch's range as it is
    ("tracked" goes from 0 to 1): averaging towards it from an arbitrary initial range would
    quantize the first ~1 / (1 - momentum) steps on a wrong grid. In eval mode, and while
    initialising, the stored range is used and left as it is.
    """

    momentum: float = 0.9
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        low = self.variable("batch_stats", "low", jnp.zeros, (), jnp.float32)
        high = self.variable("batch_stats", "high", jnp.zeros, (), jnp.float32)
        tracked = self.variable("batch_stats", "tracked", jnp.zeros, (), jnp.float32)
        if train and not self.is_initializing():
            x32 = lax.stop_gradient(x).astype(jnp.float32)
            batch = jnp.stack([jnp.min(x32), jnp.max(x32)])
            if self.axis_name is not None:
                batch = lax.pmean(batch, self.axis_name)
            keep = jnp.where(tracked.value > 0, self.momentum, 0.0)
            low.value = keep * low.value + (1 - keep) * batch[0]
            high.value = keep * high.value + (1 - keep) * batch[1]
            tracked.value = jnp.ones_like(tracked.value)
        return fake_quant_input(x, low.value, high.value)


class ConvBNAct(nn.Module):
    """A bias-free convolution, BatchNorm and activation: the unit every MobileNet layer uses.

    With `quantize_input` (an `InputQuantizer` factory) the convolution's input is fake-quantized.
    """

    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]
    activation: Callable[[Array], Array]
    quantize_input: Callable[..., nn.Module] | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        if self.quantize_input is not None:
            x = self.quantize_input(name=INPUT_QUANTIZER)(x, train)
        x = self.conv(name="conv")(x)
        return self.norm(name="bn", activation=self.activation)(x, train=train)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv (carrying the stride), then pointwise 1x1 conv, each a `unit`.

    `unit` makes a `ConvBNAct` of a convolution factory: its norm, activation and input
    quantizer are set already.
    """

    features: int
    stride: int
    depthwise: Callable[..., nn.Module]
    pointwise: Callable[..., nn.Module]
    unit: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = self.unit(functools.partial(self.depthwise, stride=self.stride), name="depthwise")(x, train)
        return self.unit(functools.partial(self.pointwise, features=self.features), name="pointwise")(x, train)
