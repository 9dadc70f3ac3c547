"""The linen modules: parameter layouts, BatchNorm statistics and conventions, dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn

from mobilenet_jax import layers
from references import rand, reference_batch_norm_act


@pytest.mark.parametrize("padding", ["torch", "same"])
def test_depthwise_module_shares_its_parameters_across_implementations(padding):
    x = rand(0, 2, 10, 10, 6)
    make = lambda impl: layers.Conv(stride=2, padding=padding, impl=impl)
    variables = make("conv").init(jax.random.key(0), x)
    assert variables["params"]["kernel"].shape == (3, 3, 1, 6)
    np.testing.assert_allclose(make("conv").apply(variables, x), make("shifted").apply(variables, x), rtol=1e-5, atol=1e-5)


BATCH_NORM_FORMS = ["autodiff", "fused"]


@pytest.mark.parametrize("impl", BATCH_NORM_FORMS)
def test_batchnorm_train_mode_against_hand_computed_statistics(impl):
    x = rand(0, 4, 3, 3, 2) * 3 + 1
    bn = layers.BatchNorm(momentum=0.9, epsilon=1e-5, impl=impl)
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
    biased = layers.BatchNorm(unbiased_running_var=False, impl=impl).apply(variables, x, train=True, mutable=["batch_stats"])[1]
    np.testing.assert_allclose(biased["batch_stats"]["var"], 0.9 * np.array([2.0, 3.0]) + 0.1 * var, rtol=1e-6)


def test_batchnorm_eval_mode_uses_running_statistics():
    x = rand(0, 2, 3, 3, 2)
    variables = {"params": {"scale": jnp.array([2.0, 0.5]), "bias": jnp.array([0.1, -0.3])},
                 "batch_stats": {"mean": jnp.array([0.5, -0.5]), "var": jnp.array([2.0, 3.0])}}
    out = layers.BatchNorm().apply(variables, x, train=False)
    expected = (np.asarray(x) - [0.5, -0.5]) / np.sqrt(np.array([2.0, 3.0]) + 1e-5) * [2.0, 0.5] + [0.1, -0.3]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", BATCH_NORM_FORMS)
def test_synchronised_batchnorm_equals_one_big_batch(impl):
    x = rand(0, 8, 3, 3, 2) * 2 + 1
    bn = layers.BatchNorm(axis_name="batch", impl=impl)
    variables = bn.init(jax.random.key(0), x, train=False)
    apply = lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"])
    sharded = jax.vmap(apply, in_axes=(None, 0), axis_name="batch")(variables, x.reshape(4, 2, 3, 3, 2))
    single = layers.BatchNorm(impl=impl).apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(sharded[0].reshape(x.shape), single[0], rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(sharded[1]["batch_stats"][name][0], single[1]["batch_stats"][name], rtol=1e-5)


@pytest.mark.parametrize("impl", BATCH_NORM_FORMS)
def test_batchnorm_keeps_bfloat16_activations_and_gradients(impl):
    x = (rand(0, 2, 4, 4, 3) * 2).astype(jnp.bfloat16)
    bn = layers.BatchNorm(activation=nn.relu, impl=impl)
    variables = bn.init(jax.random.key(0), x, train=False)
    out, _ = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    grad = jax.grad(lambda v: jnp.sum(bn.apply(variables, v, train=True, mutable=["batch_stats"])[0]))(x)
    assert out.dtype == grad.dtype == jnp.bfloat16
    reference = reference_batch_norm_act(x.astype(jnp.float32), 1.0, 0.0, nn.relu)[0]
    np.testing.assert_allclose(out.astype(jnp.float32), reference, rtol=2**-7, atol=2**-7)


def test_train_mode_batchnorm_refuses_one_value_per_channel():
    x = rand(0, 1, 1, 1, 3)
    variables = layers.BatchNorm().init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match=r"more than one value per channel, got input shape \(1, 1, 1, 3\)"):
        layers.BatchNorm().apply(variables, x, train=True, mutable=["batch_stats"])


def test_an_unknown_quantization_is_refused_by_the_layers_with_the_choices():
    with pytest.raises(ValueError, match=r"^quantization must be one of \(None, 'int8'\), got 'int4'"):
        layers.Conv(features=4, quantization="int4").init(jax.random.key(0), rand(0, 1, 8, 8, 3))
