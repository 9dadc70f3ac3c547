"""MobileNetV1 equals the PyTorch reference: eval and train forward, gradients, an SGD step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from mobilenet_jax import MobileNetV1
from mobilenet_jax.interop.torch_weights import torch_reference_from_flax, torch_to_flax
from mobilenet_jax.tools.equivalence import (
    GRADIENT_SEED,
    Case,
    cross_entropy_loss,
    eval_difference,
    gradient_errors,
    random_images,
    relative_errors,
    to_nchw,
    train_difference,
)
from mobilenet_jax.interop.torch_reference import random_reference

KERNEL_SETS = ["canonical", "cpu"]


@pytest.mark.parametrize("forms", KERNEL_SETS)
@pytest.mark.parametrize(
    "alpha,size,activation",
    [(1.0, 224, "relu"), (0.75, 160, "relu6"), (0.5, 97, "relu"), (0.25, 128, "relu6"), (0.35, 64, "relu")],
)
def test_eval_logits_equal_pytorch(forms, alpha, size, activation):
    diff, scale = eval_difference(Case(alpha, size, activation, forms, seed=1))
    assert scale > 0.1, "logits too small to make the comparison meaningful"
    assert diff <= 1e-4


def test_pooled_features_equal_pytorch_without_classifier():
    reference = random_reference(2, num_classes=0, alpha=0.5).eval()
    model = MobileNetV1(num_classes=0, alpha=0.5)
    images = random_images(3, 2, 80, 112)
    with torch.no_grad():
        expected = reference(to_nchw(images)).numpy()
    features = jax.jit(model.apply)(torch_to_flax(reference.state_dict(), model), jnp.asarray(images))
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size", [128, 113])
def test_tf_same_padding_logits_equal_the_reference_built_from_flax_variables(size):
    # TF-Slim's conventions; the variables come from a reference with randomized BatchNorm. At 113
    # the stride-2 layers see 113, 57, 29, 15 (SAME pads (1, 1), as torch does) and 8 (SAME pads
    # (0, 1)): with random weights only a late difference reaches the logits measurably.
    fields = dict(alpha=0.25, activation="relu6", padding="same", bn_epsilon=1e-3)
    model = MobileNetV1(**fields)
    variables = torch_to_flax(random_reference(6, **fields).state_dict(), model)
    images = random_images(7, 2, size)
    with torch.no_grad():
        expected = torch_reference_from_flax(model, variables)(to_nchw(images)).numpy()
    logits = jax.jit(model.apply)(variables, jnp.asarray(images))
    assert np.abs(expected).max() > 0.1, "logits too small to make the comparison meaningful"
    assert np.abs(logits - expected).max() <= 1e-4


@pytest.mark.parametrize("forms", KERNEL_SETS)
def test_train_forward_and_running_statistics_equal_pytorch(forms):
    logits_diff, stats_error = train_difference(Case(0.5, 96, forms=forms, batch=4, seed=3))
    assert logits_diff <= 1e-4
    assert stats_error <= 1e-5


@pytest.mark.parametrize("forms", KERNEL_SETS)
def test_gradients_equal_pytorch(forms):
    # In float32 some ReLU input always lies within rounding (~1e-7 of its layer's largest) of
    # zero; where the two frameworks round it to opposite sides, the gradients of the layers
    # below change by percents (seeds 0 and 1 on an AVX2 CPU: 1.4e-2, either set of forms). At
    # GRADIENT_SEED no flip mattered on the CPUs measured, so the bound is tight.
    errors = gradient_errors(Case(0.5, 96, forms=forms, batch=4, num_classes=10, seed=GRADIENT_SEED))
    assert len(errors) == 13 * 6 + 3 + 2  # every conv kernel, BatchNorm scale and bias, classifier
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def test_sgd_momentum_step_equals_torch_optim():
    reference = random_reference(5, alpha=0.25, num_classes=10).train()
    model = MobileNetV1(alpha=0.25, num_classes=10)
    variables = torch_to_flax(reference.state_dict(), model)
    images, labels = random_images(10, 4, 64), np.arange(4) % 10
    torch_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    torch.nn.functional.cross_entropy(reference(to_nchw(images)), torch.from_numpy(labels)).backward()
    torch_optimizer.step()
    tx = optax.sgd(0.05, momentum=0.9)
    loss_fn = cross_entropy_loss(model, variables["batch_stats"], jnp.asarray(images), labels)
    grads, batch_stats = jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])
    updates, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    expected = torch_to_flax(reference.state_dict(), model)
    errors = relative_errors({"params": params, "batch_stats": batch_stats}, expected)
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    moved = relative_errors(params, variables["params"])
    assert min(moved.values()) > 1e-6, "the step did not move every parameter"


def test_sgd_momentum_buffer_follows_torch_over_several_steps():
    # Chained training steps amplify float32 rounding through train-mode BatchNorm, so the
    # momentum arithmetic is checked on one shared gradient sequence.
    rng = np.random.default_rng(0)
    start = rng.standard_normal(6).astype(np.float32)
    grads = rng.standard_normal((4, 6)).astype(np.float32)
    weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
    torch_optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    tx = optax.sgd(0.1, momentum=0.9)
    params, state = jnp.asarray(start), tx.init(jnp.asarray(start))
    for grad in grads:
        weight.grad = torch.from_numpy(grad)
        torch_optimizer.step()
        updates, state = tx.update(jnp.asarray(grad), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, weight.detach().numpy(), rtol=1e-6, atol=1e-6)
    plain_sgd = start - 0.1 * grads.sum(0)
    assert not np.allclose(params, plain_sgd, atol=1e-3), "momentum had no effect"


@pytest.mark.parametrize("depthwise_impl", ["conv", "shifted"])
@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_atrous_logits_and_deepest_features_equal_the_dilated_pytorch_reference(depthwise_impl, output_stride, size):
    # timm's mobilenetv1_100(output_stride=...) is this network: torch padding, dilated depthwise convs.
    fields = dict(alpha=0.5, num_classes=10, output_stride=output_stride)
    reference = random_reference(8, **fields).eval()
    model = MobileNetV1(depthwise_impl=depthwise_impl, **fields)
    variables = torch_to_flax(reference.state_dict(), model)
    images = random_images(9, 2, *size)
    with torch.no_grad():
        x = to_nchw(images)
        expected, features = reference(x).numpy(), reference.blocks(reference.stem(x)).numpy()
    logits, endpoints = jax.jit(lambda v, x: model.apply(v, x, return_endpoints=True))(variables, jnp.asarray(images))
    deepest = np.asarray(endpoints[f"stride_{output_stride}"])
    assert deepest.shape[1:3] == (size[0] // output_stride, size[1] // output_stride)
    assert np.abs(expected).max() > 0.1, "logits too small to make the comparison meaningful"
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(deepest, features.transpose(0, 2, 3, 1), rtol=0, atol=1e-4)
