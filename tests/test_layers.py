"""Each layer implementation against XLA's canonical convolution and hand-computed values."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mobilenet_jax import layers


def rand(seed: int, *shape: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def lax_conv(x, kernel, stride, padding, groups=1):
    """XLA's own convolution, the reference for every other formulation."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, precision=lax.Precision.HIGHEST,
    )


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["torch", "same"])
@pytest.mark.parametrize("size", [(8, 8), (9, 7), (15, 16)])
def test_depthwise_implementations_agree_in_value_and_gradients(stride, padding, size):
    x, kernel = rand(0, 2, *size, 5), rand(1, 3, 3, 1, 5)
    pad = layers.conv_padding(size, 3, stride, padding)

    def loss(fn, x, kernel):
        out = fn(x, kernel, stride, pad)
        return jnp.sum(out * rand(2, *out.shape)), out

    results = {}
    for impl, fn in layers.DEPTHWISE_FNS.items():
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
    pad = layers.conv_padding((9, 8), 3, stride, padding)
    out, vjp = jax.vjp(lambda k: lax_conv(x, k, stride, pad, groups=4), kernel)
    dy = rand(2, *out.shape)
    (expected,) = vjp(dy)
    forms = {
        "batched": layers.depthwise_kernel_grad_batched(x, dy, 3, stride, pad),
        "chunked": layers.depthwise_kernel_grad_chunked(x, dy, 3, stride, pad, images_per_chunk=2),
        "per backend": layers.depthwise_kernel_grad(x, dy, 3, stride, pad),
    }
    for name, grad in forms.items():
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()), err_msg=name)


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_shifted_depthwise_rounds_once_like_the_convolution(stride):
    x, kernel = rand(0, 4, 16, 16, 64).astype(jnp.bfloat16), rand(1, 3, 3, 1, 64).astype(jnp.bfloat16)
    pad = ((1, 1), (1, 1))
    exact = lax_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), stride, pad, groups=64)
    ours = layers.depthwise_conv_shifted(x, kernel, stride, pad)
    assert ours.dtype == jnp.bfloat16
    # Accumulated in float32 and rounded once: within half a bfloat16 ulp (2**-8 relative).
    np.testing.assert_allclose(ours.astype(jnp.float32), exact, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 9, 224])
def test_same_padding_equals_tensorflow_same(stride, size):
    x, kernel = rand(0, 1, size, size, 4), rand(1, 3, 3, 1, 4)
    pad = layers.conv_padding((size, size), 3, stride, "same")
    ours = layers.depthwise_conv_shifted(x, kernel, stride, pad)
    np.testing.assert_allclose(ours, lax_conv(x, kernel, stride, "SAME", groups=4), rtol=1e-5, atol=1e-5)


def test_padding_conventions_differ_where_documented():
    assert layers.conv_padding((224, 224), 3, 2, "same") == ((0, 1), (0, 1))
    assert layers.conv_padding((225, 224), 3, 2, "same") == ((1, 1), (0, 1))
    assert layers.conv_padding((224, 224), 3, 1, "same") == ((1, 1), (1, 1))
    assert layers.conv_padding((224, 224), 3, 2, "torch") == ((1, 1), (1, 1))


@pytest.mark.parametrize("padding", ["torch", "same"])
def test_depthwise_module_shares_its_parameters_across_implementations(padding):
    x = rand(0, 2, 10, 10, 6)
    make = lambda impl: layers.DepthwiseConv(stride=2, padding=padding, impl=impl)
    variables = make("conv").init(jax.random.key(0), x)
    assert variables["params"]["kernel"].shape == (3, 3, 1, 6)
    np.testing.assert_allclose(make("conv").apply(variables, x), make("shifted").apply(variables, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["torch", "same"])
@pytest.mark.parametrize("size", [(32, 32), (33, 40)])
def test_stem_patch_gemm_equals_a_full_convolution(padding, size):
    x = rand(0, 2, *size, 3)
    stem = layers.StemConv(features=8, padding=padding)
    variables = stem.init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]
    assert kernel.shape == (3, 3, 3, 8)
    expected = lax_conv(x, kernel, 2, layers.conv_padding(size, 3, 2, padding))
    np.testing.assert_allclose(stem.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_pointwise_matmul_equals_a_1x1_convolution():
    x = rand(0, 2, 5, 5, 6)
    conv = layers.PointwiseConv(features=7)
    variables = conv.init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]
    assert kernel.shape == (1, 1, 6, 7)
    np.testing.assert_allclose(conv.apply(variables, x), lax_conv(x, kernel, 1, "VALID"), rtol=1e-5, atol=1e-5)


def test_batchnorm_train_mode_against_hand_computed_statistics():
    x = rand(0, 4, 3, 3, 2) * 3 + 1
    bn = layers.BatchNorm(momentum=0.9, epsilon=1e-5)
    variables = bn.init(jax.random.key(0), x, train=False)
    variables = {"params": {"scale": jnp.array([2.0, 0.5]), "bias": jnp.array([0.1, -0.3])},
                 "batch_stats": {"mean": jnp.array([0.5, -0.5]), "var": jnp.array([2.0, 3.0])}}
    out, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    xs = np.asarray(x).reshape(-1, 2).astype(np.float64)
    n, mean, var = xs.shape[0], xs.mean(0), xs.var(0)
    expected = (np.asarray(x) - mean) / np.sqrt(var + 1e-5) * [2.0, 0.5] + [0.1, -0.3]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.9 * np.array([0.5, -0.5]) + 0.1 * mean, rtol=1e-6)
    # PyTorch convention: the running variance accumulates the unbiased batch variance.
    unbiased = var * n / (n - 1)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 * np.array([2.0, 3.0]) + 0.1 * unbiased, rtol=1e-6)
    biased = layers.BatchNorm(unbiased_running_var=False).apply(variables, x, train=True, mutable=["batch_stats"])[1]
    np.testing.assert_allclose(biased["batch_stats"]["var"], 0.9 * np.array([2.0, 3.0]) + 0.1 * var, rtol=1e-6)


def test_batchnorm_eval_mode_uses_running_statistics():
    x = rand(0, 2, 3, 3, 2)
    variables = {"params": {"scale": jnp.array([2.0, 0.5]), "bias": jnp.array([0.1, -0.3])},
                 "batch_stats": {"mean": jnp.array([0.5, -0.5]), "var": jnp.array([2.0, 3.0])}}
    out = layers.BatchNorm().apply(variables, x, train=False)
    expected = (np.asarray(x) - [0.5, -0.5]) / np.sqrt(np.array([2.0, 3.0]) + 1e-5) * [2.0, 0.5] + [0.1, -0.3]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_synchronised_batchnorm_equals_one_big_batch():
    x = rand(0, 8, 3, 3, 2) * 2 + 1
    bn = layers.BatchNorm(axis_name="batch")
    variables = bn.init(jax.random.key(0), x, train=False)
    apply = lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"])
    sharded = jax.vmap(apply, in_axes=(None, 0), axis_name="batch")(variables, x.reshape(4, 2, 3, 3, 2))
    single = layers.BatchNorm().apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(sharded[0].reshape(x.shape), single[0], rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(sharded[1]["batch_stats"][name][0], single[1]["batch_stats"][name], rtol=1e-5)


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


@pytest.mark.parametrize("activation", ["identity", "relu", "relu6"])
def test_batchnorm_hand_written_gradient_matches_autodiff(activation):
    act = layers.identity if activation == "identity" else layers.activation_fn(activation)
    x = rand(0, 4, 5, 3, 6) * 3 + 1
    scale, bias = 1 + 0.5 * rand(1, 6), 2 * rand(2, 6)
    weights = (rand(3, *x.shape), rand(4, 6), rand(5, 6))
    ours = batch_norm_act_loss(lambda *a: layers.batch_norm_act_train(*a, act, 1e-5, None), weights)
    reference = batch_norm_act_loss(lambda *a: reference_batch_norm_act(*a, act), weights)
    for got, want in zip(jax.grad(ours, (0, 1, 2))(x, scale, bias), jax.grad(reference, (0, 1, 2))(x, scale, bias)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(want))))


def test_batchnorm_hessian_vector_products_match_autodiff():
    # Forward-over-reverse works through the hand-written VJP (plain forward mode does not).
    x, scale, bias, v = rand(0, 4, 3, 3, 5), 1 + rand(1, 5) * 0.2, rand(2, 5), rand(3, 4, 3, 3, 5)
    hvp = lambda fn: jax.jvp(jax.grad(lambda x: jnp.sum(fn(x) ** 3)), (x,), (v,))[1]
    ours = hvp(lambda x: layers.batch_norm_act_train(x, scale, bias, nn.relu, 1e-5, None)[0])
    want = hvp(lambda x: reference_batch_norm_act(x, scale, bias, nn.relu)[0])
    np.testing.assert_allclose(ours, want, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(want))))


def test_synchronised_batchnorm_gradient_equals_one_big_batch():
    x, scale, bias = rand(0, 8, 3, 3, 4) * 2 + 1, 1 + rand(1, 4) * 0.3, rand(2, 4)
    weights = (rand(3, *x.shape), rand(4, 4), rand(5, 4))
    shard = lambda a: a.reshape(4, 2, *a.shape[1:])
    batch_norm = lambda axis: lambda *a: layers.batch_norm_act_train(*a, nn.relu, 1e-5, axis)

    def shard_loss(x, scale, bias, w_out):
        # Every shard sees the same statistics, so each carries a quarter of their weight.
        return batch_norm_act_loss(batch_norm("batch"), (w_out, weights[1] / 4, weights[2] / 4))(x, scale, bias)

    grads = jax.vmap(jax.grad(shard_loss, (0, 1, 2)), in_axes=(0, None, None, 0), axis_name="batch")(
        shard(x), scale, bias, shard(weights[0]))
    single = jax.grad(batch_norm_act_loss(batch_norm(None), weights), (0, 1, 2))(x, scale, bias)
    np.testing.assert_allclose(grads[0].reshape(x.shape), single[0], rtol=1e-4, atol=1e-5)
    for got, want in zip(grads[1:], single[1:]):
        np.testing.assert_allclose(jnp.sum(got, 0), want, rtol=1e-4, atol=1e-5)


def test_batchnorm_keeps_bfloat16_activations_and_gradients():
    x = (rand(0, 2, 4, 4, 3) * 2).astype(jnp.bfloat16)
    bn = layers.BatchNorm(activation=nn.relu)
    variables = bn.init(jax.random.key(0), x, train=False)
    out, _ = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    grad = jax.grad(lambda v: jnp.sum(bn.apply(variables, v, train=True, mutable=["batch_stats"])[0]))(x)
    assert out.dtype == grad.dtype == jnp.bfloat16
    reference = reference_batch_norm_act(x.astype(jnp.float32), 1.0, 0.0, nn.relu)[0]
    np.testing.assert_allclose(out.astype(jnp.float32), reference, rtol=2**-7, atol=2**-7)


def test_auto_picks_per_backend():
    assert layers.resolve_depthwise_impl("auto", "cpu") == "shifted"
    assert layers.resolve_depthwise_impl("auto", "tpu") == "conv"
    assert layers.resolve_depthwise_impl("conv", "cpu") == "conv"
