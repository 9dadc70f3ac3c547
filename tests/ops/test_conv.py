"""Convolution geometry and the matrix-product forms against XLA's convolution."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mobilenet_jax import layers
from mobilenet_jax.ops import conv
from references import lax_conv, rand


def test_padding_conventions_differ_where_documented():
    assert conv.conv_padding((224, 224), 3, 2, "same") == ((0, 1), (0, 1))
    assert conv.conv_padding((225, 224), 3, 2, "same") == ((1, 1), (0, 1))
    assert conv.conv_padding((224, 224), 3, 1, "same") == ((1, 1), (1, 1))
    assert conv.conv_padding((224, 224), 3, 2, "torch") == ((1, 1), (1, 1))


@pytest.mark.parametrize("impl", list(conv.STEM_FNS))
@pytest.mark.parametrize("padding", ["torch", "same"])
@pytest.mark.parametrize("size", [(32, 32), (33, 40)])
def test_stem_forms_equal_a_full_convolution(impl, padding, size):
    x = rand(0, 2, *size, 3)
    stem = layers.Conv(features=8, stride=2, padding=padding, impl=impl)
    variables = stem.init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]
    assert kernel.shape == (3, 3, 3, 8)
    expected = lax_conv(x, kernel, 2, conv.conv_padding(size, 3, 2, padding))
    np.testing.assert_allclose(stem.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_pointwise_matmul_equals_a_1x1_convolution():
    x = rand(0, 2, 5, 5, 6)
    pointwise = layers.Conv(features=7, kernel_size=1)
    variables = pointwise.init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]
    assert kernel.shape == (1, 1, 6, 7)
    np.testing.assert_allclose(pointwise.apply(variables, x), lax_conv(x, kernel, 1, "VALID"), rtol=1e-5, atol=1e-5)
