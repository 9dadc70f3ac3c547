"""Both train-mode BatchNorm forms against a plainly written, autodiff-differentiated reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn

from mobilenet_jax import layers
from mobilenet_jax.ops import batch_norm
from references import batch_norm_act_loss, rand, reference_batch_norm_act


FORMS = list(batch_norm.BATCH_NORM_FNS)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("activation", ["identity", "relu", "relu6"])
def test_batchnorm_gradient_matches_the_plain_reference(form, activation):
    act = layers.identity if activation == "identity" else layers.activation_fn(activation)
    x = rand(0, 4, 5, 3, 6) * 3 + 1
    scale, bias = 1 + 0.5 * rand(1, 6), 2 * rand(2, 6)
    weights = (rand(3, *x.shape), rand(4, 6), rand(5, 6))
    ours = batch_norm_act_loss(lambda *a: batch_norm.BATCH_NORM_FNS[form](*a, act, 1e-5, None), weights)
    reference = batch_norm_act_loss(lambda *a: reference_batch_norm_act(*a, act), weights)
    for got, want in zip(jax.grad(ours, (0, 1, 2))(x, scale, bias), jax.grad(reference, (0, 1, 2))(x, scale, bias)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("form", FORMS)
def test_batchnorm_hessian_vector_products_match_autodiff(form):
    # Forward-over-reverse works through the hand-written VJP too (plain forward mode does not).
    x, scale, bias, v = rand(0, 4, 3, 3, 5), 1 + rand(1, 5) * 0.2, rand(2, 5), rand(3, 4, 3, 3, 5)
    hvp = lambda fn: jax.jvp(jax.grad(lambda x: jnp.sum(fn(x) ** 3)), (x,), (v,))[1]
    ours = hvp(lambda x: batch_norm.BATCH_NORM_FNS[form](x, scale, bias, nn.relu, 1e-5, None)[0])
    want = hvp(lambda x: reference_batch_norm_act(x, scale, bias, nn.relu)[0])
    np.testing.assert_allclose(ours, want, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("form", FORMS)
def test_synchronised_batchnorm_gradient_equals_one_big_batch(form):
    x, scale, bias = rand(0, 8, 3, 3, 4) * 2 + 1, 1 + rand(1, 4) * 0.3, rand(2, 4)
    weights = (rand(3, *x.shape), rand(4, 4), rand(5, 4))
    shard = lambda a: a.reshape(4, 2, *a.shape[1:])
    normalize = lambda axis: lambda *a: batch_norm.BATCH_NORM_FNS[form](*a, nn.relu, 1e-5, axis)

    def shard_loss(x, scale, bias, w_out):
        # Every shard sees the same statistics, so each carries a quarter of their weight.
        return batch_norm_act_loss(normalize("batch"), (w_out, weights[1] / 4, weights[2] / 4))(x, scale, bias)

    grads = jax.vmap(jax.grad(shard_loss, (0, 1, 2)), in_axes=(0, None, None, 0), axis_name="batch")(
        shard(x), scale, bias, shard(weights[0]))
    single = jax.grad(batch_norm_act_loss(normalize(None), weights), (0, 1, 2))(x, scale, bias)
    np.testing.assert_allclose(grads[0].reshape(x.shape), single[0], rtol=1e-4, atol=1e-5)
    for got, want in zip(grads[1:], single[1:]):
        np.testing.assert_allclose(jnp.sum(got, 0), want, rtol=1e-4, atol=1e-5)


def test_the_forms_agree_in_value():
    x, scale, bias = rand(0, 4, 5, 3, 6) * 3 + 1, 1 + 0.5 * rand(1, 6), rand(2, 6)
    outputs = [fn(x, scale, bias, nn.relu6, 1e-3, None) for fn in batch_norm.BATCH_NORM_FNS.values()]
    for got, want in zip(*outputs):
        np.testing.assert_array_equal(got, want)


def test_only_the_fused_form_refuses_plain_forward_mode():
    x, scale, bias = rand(0, 2, 3, 3, 4), jnp.ones(4), jnp.zeros(4)
    tangent = (jnp.ones_like(x),)
    jax.jvp(lambda x: batch_norm.batch_norm_act_autodiff(x, scale, bias, nn.relu, 1e-5, None)[0], (x,), tangent)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: batch_norm.batch_norm_act_train(x, scale, bias, nn.relu, 1e-5, None)[0], (x,), tangent)
