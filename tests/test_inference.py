"""Chunked eval-mode inference against one forward pass over the whole batch."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mobilenet_jax import MobileNetV1, inference
from mobilenet_jax.ops import backends


@pytest.fixture(scope="module")
def model_and_variables():
    model = MobileNetV1(num_classes=10, alpha=0.25)
    images = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
    variables = model.init(jax.random.key(1), images[:1])
    # Non-trivial running statistics, so eval-mode BatchNorm is not the identity.
    stats = jax.tree.map(lambda s: s + 0.3 * jax.random.uniform(jax.random.key(2), s.shape), variables["batch_stats"])
    return model, {**variables, "batch_stats": stats}, images


@pytest.mark.parametrize("images_per_chunk", [1, 2, 4, 6, 8, None, "auto"])
def test_chunked_predict_equals_one_forward_pass(model_and_variables, images_per_chunk):
    model, variables, images = model_and_variables
    whole = model.apply(variables, images, train=False)
    chunked = jax.jit(lambda v, x: inference.predict(model.apply, v, x, images_per_chunk=images_per_chunk))
    np.testing.assert_allclose(chunked(variables, images), whole, rtol=1e-5, atol=1e-6)


def test_predict_joins_every_output_along_the_batch(model_and_variables):
    model, variables, images = model_and_variables
    logits, endpoints = inference.predict(model.apply, variables, images, images_per_chunk=4, return_endpoints=True)
    want_logits, want_endpoints = model.apply(variables, images, train=False, return_endpoints=True)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-6)
    assert endpoints.keys() == want_endpoints.keys()
    for name in endpoints:
        np.testing.assert_allclose(endpoints[name], want_endpoints[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -2, 2.5, "four"])
def test_predict_rejects_a_bad_chunk_size(model_and_variables, bad):
    model, variables, images = model_and_variables
    with pytest.raises(ValueError, match="images_per_chunk"):
        inference.predict(model.apply, variables, images, images_per_chunk=bad)


def test_chunks_on_cpu_only():
    assert inference.default_images_per_chunk("cpu") == backends.BACKEND_DEFAULTS["cpu"].inference_images_per_chunk == 4
    assert inference.default_images_per_chunk("gpu") is None
    assert inference.default_images_per_chunk("tpu") is None


def test_chunked_predict_of_an_atrous_model_equals_one_forward_pass(model_and_variables):
    _, variables, images = model_and_variables
    model = MobileNetV1(num_classes=10, alpha=0.25, output_stride=16)
    whole, want = model.apply(variables, images, train=False, return_endpoints=True)
    logits, endpoints = inference.predict(model.apply, variables, images, images_per_chunk=4, return_endpoints=True)
    assert endpoints["stride_16"].shape[1:3] == (2, 2)
    np.testing.assert_allclose(logits, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(endpoints["stride_16"], want["stride_16"], rtol=1e-5, atol=1e-6)
