"""Both depthwise forms against XLA's grouped convolution, in value and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax.ops import depthwise
from mobilenet_jax.ops.conv import conv_padding
from references import lax_conv, rand


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["torch", "same"])
@pytest.mark.parametrize("size", [(8, 8), (9, 7), (15, 16)])
def test_depthwise_implementations_agree_in_value_and_gradients(stride, padding, size):
    x, kernel = rand(0, 2, *size, 5), rand(1, 3, 3, 1, 5)
    pad = conv_padding(size, 3, stride, padding)

    def loss(fn, x, kernel):
        out = fn(x, kernel, stride, pad)
        return jnp.sum(out * rand(2, *out.shape)), out

    results = {}
    for impl, fn in depthwise.DEPTHWISE_FNS.items():
        (_, out), grads = jax.value_and_grad(lambda x, k: loss(fn, x, k), argnums=(0, 1), has_aux=True)(x, kernel)
        results[impl] = (out, *grads)
    reference = lax_conv(x, kernel, stride, pad, groups=5)
    np.testing.assert_allclose(results["conv"][0], reference, rtol=1e-5, atol=1e-5)
    for a, b in zip(results["conv"], results["shifted"]):
        # Gradients sum many products in different orders: compare against their own scale.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["torch", "same"])
@pytest.mark.parametrize("batch", [1, 5, 6])
def test_depthwise_kernel_gradient_forms_equal_the_grouped_convolution_gradient(stride, padding, batch):
    x, kernel = rand(0, batch, 9, 8, 4), rand(1, 3, 3, 1, 4)
    pad = conv_padding((9, 8), 3, stride, padding)
    out, vjp = jax.vjp(lambda k: lax_conv(x, k, stride, pad, groups=4), kernel)
    dy = rand(2, *out.shape)
    (expected,) = vjp(dy)
    forms = {
        "batched": depthwise.depthwise_kernel_grad_batched(x, dy, 3, stride, pad),
        "chunked": depthwise.depthwise_kernel_grad_chunked(x, dy, 3, stride, pad, images_per_chunk=2),
        "per backend": depthwise.depthwise_kernel_grad(x, dy, 3, stride, pad),
    }
    for name, grad in forms.items():
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()), err_msg=name)


@pytest.mark.parametrize("dilation", [2, 4])
@pytest.mark.parametrize("padding", ["torch", "same"])
@pytest.mark.parametrize("size", [(8, 8), (9, 7), (15, 16)])
def test_dilated_depthwise_forms_equal_the_dilated_convolution_and_its_autodiff(dilation, padding, size):
    x, kernel = rand(0, 2, *size, 5), rand(1, 3, 3, 1, 5)
    pad = conv_padding(size, 3, 1, padding, dilation)
    if padding == "same":
        assert pad == conv_padding(size, (3 - 1) * dilation + 1, 1, "same")
    else:
        assert pad == ((dilation, dilation),) * 2

    def loss(fn, x, kernel):
        out = fn(x, kernel, 1, pad, dilation)
        return jnp.sum(out * rand(2, *out.shape)), out

    reference = lambda x, k, stride, pad, dilation: lax_conv(x, k, stride, pad, groups=5, dilation=dilation)
    grad = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)
    (_, expected), expected_grads = grad(reference, x, kernel)
    assert expected.shape == x.shape
    for impl, fn in depthwise.DEPTHWISE_FNS.items():
        (_, out), grads = grad(fn, x, kernel)
        for a, b in zip((out, *grads), (expected, *expected_grads)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()), err_msg=impl)


@pytest.mark.parametrize("dilation", [2, 4])
@pytest.mark.parametrize("padding", ["torch", "same"])
def test_dilated_depthwise_kernel_gradient_forms_equal_autodiff(dilation, padding):
    x, kernel = rand(0, 5, 9, 8, 4), rand(1, 3, 3, 1, 4)
    pad = conv_padding((9, 8), 3, 1, padding, dilation)
    out, vjp = jax.vjp(lambda k: lax_conv(x, k, 1, pad, groups=4, dilation=dilation), kernel)
    dy = rand(2, *out.shape)
    (expected,) = vjp(dy)
    forms = {
        "batched": depthwise.depthwise_kernel_grad_batched(x, dy, 3, 1, pad, dilation),
        "chunked": depthwise.depthwise_kernel_grad_chunked(x, dy, 3, 1, pad, dilation, images_per_chunk=2),
        "per backend": depthwise.depthwise_kernel_grad(x, dy, 3, 1, pad, dilation),
    }
    for name, grad in forms.items():
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()), err_msg=name)


@pytest.mark.parametrize("dilation", [2, 4])
@pytest.mark.parametrize("size", [8, 9, 15])
def test_dilated_same_padding_equals_tensorflow_same(dilation, size):
    x, kernel = rand(0, 1, size, size, 4), rand(1, 3, 3, 1, 4)
    pad = conv_padding((size, size), 3, 1, "same", dilation)
    ours = depthwise.depthwise_conv_shifted(x, kernel, 1, pad, dilation)
    expected = lax_conv(x, kernel, 1, "SAME", groups=4, dilation=dilation)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_shifted_depthwise_rounds_once_like_the_convolution(stride):
    x, kernel = rand(0, 4, 16, 16, 64).astype(jnp.bfloat16), rand(1, 3, 3, 1, 64).astype(jnp.bfloat16)
    pad = ((1, 1), (1, 1))
    exact = lax_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), stride, pad, groups=64)
    ours = depthwise.depthwise_conv_shifted(x, kernel, stride, pad)
    assert ours.dtype == jnp.bfloat16
    # Accumulated in float32 and rounded once: within half a bfloat16 ulp (2**-8 relative).
    np.testing.assert_allclose(ours.astype(jnp.float32), exact, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 9, 224])
def test_same_padding_equals_tensorflow_same(stride, size):
    x, kernel = rand(0, 1, size, size, 4), rand(1, 3, 3, 1, 4)
    pad = conv_padding((size, size), 3, stride, "same")
    ours = depthwise.depthwise_conv_shifted(x, kernel, stride, pad)
    np.testing.assert_allclose(ours, lax_conv(x, kernel, stride, "SAME", groups=4), rtol=1e-5, atol=1e-5)
