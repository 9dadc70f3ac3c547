"""Fake quantization: values on the int8 grids of the export, straight-through gradients, and
per-channel kernel quantization commuting with BatchNorm folding (negative factors included)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenet_jax.export import quantize as int8
from mobilenet_jax.ops import quantize
from references import rand

RANGES = {"signed (image)": (-2.5, 1.75), "non-negative (ReLU)": (0.0, 3.0)}


@pytest.mark.parametrize("low,high", RANGES.values(), ids=RANGES.keys())
def test_fake_quant_input_is_on_the_export_grid(low, high):
    x = rand(0, 4, 6, 6, 5) * 2.0  # values beyond the range too, on both sides
    scale, qmin, qmax = quantize.input_grid(low, high)
    out = np.asarray(quantize.fake_quant_input(x, low, high))
    steps = np.round(out / scale)
    np.testing.assert_array_equal(out, steps * scale)  # exactly on the grid: an integer times the scale
    assert steps.min() == qmin and steps.max() == qmax  # clipped to it
    assert (qmin, qmax) == ((-128, 127) if low < 0 else (0, 255))
    # The integers of the export's quantization, times the same scale.
    grid = int8.grid_of(low, high)
    np.testing.assert_array_equal(out, np.asarray(int8.quantize(x, grid), np.float32) * grid["scale"])
    assert grid["scale"] == scale and (grid["low"], grid["high"]) == (qmin, qmax)


@pytest.mark.parametrize("low,high", RANGES.values(), ids=RANGES.keys())
def test_input_gradient_is_identity_inside_the_range_and_zero_outside(low, high):
    x = rand(1, 200) * 3.0
    cotangent = rand(2, 200)
    (grad,) = jax.vjp(lambda v: quantize.fake_quant_input(v, low, high), x)[1](cotangent)
    scale, qmin, qmax = quantize.input_grid(low, high)
    inside = (x >= qmin * scale) & (x <= qmax * scale)
    assert 0 < int(inside.sum()) < x.size
    np.testing.assert_array_equal(grad, jnp.where(inside, cotangent, 0.0))


def test_kernel_is_on_its_per_channel_grid_with_identity_gradient():
    kernel = rand(3, 3, 3, 4, 6) * jnp.array([0.01, 0.1, 1.0, 10.0, 3.0, 0.5])
    out = np.asarray(quantize.fake_quant_kernel(kernel))
    scale = np.asarray(quantize.kernel_scale(kernel))
    np.testing.assert_allclose(scale, np.abs(np.asarray(kernel)).reshape(-1, 6).max(0) / 127, rtol=1e-7)
    steps = np.round(out / scale)
    np.testing.assert_array_equal(out, steps * scale)
    assert np.abs(steps).reshape(-1, 6).max(0).tolist() == [127] * 6  # each channel's extreme is +-127
    assert np.abs(out - np.asarray(kernel)).max() <= scale.max() / 2
    cotangent = rand(4, *kernel.shape)
    np.testing.assert_array_equal(jax.vjp(quantize.fake_quant_kernel, kernel)[1](cotangent)[0], cotangent)


def test_kernel_quantization_commutes_with_per_channel_factors_of_either_sign():
    # Folding BatchNorm multiplies output channel c by s_c = gamma_c / sqrt(var_c + eps), and
    # gamma may be negative: the integers only change sign, the dequantized kernels agree.
    kernel = np.asarray(rand(5, 3, 3, 8, 16))
    factors = np.asarray(rand(6, 16)) * 3.0
    factors[:4] = -np.abs(factors[:4])
    folded = (kernel.astype(np.float64) * factors).astype(np.float32)
    integers = lambda w: np.round(w / quantize.kernel_scale(w))
    np.testing.assert_array_equal(integers(folded), np.sign(factors) * integers(kernel))
    np.testing.assert_allclose(
        np.asarray(quantize.fake_quant_kernel(folded)),
        factors * np.asarray(quantize.fake_quant_kernel(kernel)),
        rtol=1e-6, atol=1e-6 * np.abs(folded).max(),
    )

