"""The quantization-aware model: its variables, how it tracks activation ranges, and the kernel
forms with quantization on (the export's equivalence is in tests/export/test_quantize_aware.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mobilenet_jax import MobileNetV1, layers
from mobilenet_jax.model import is_activation_range
from mobilenet_jax.ops.quantize import fake_quant_input, fake_quant_kernel
from references import rand


def shapes(model: MobileNetV1) -> dict:
    """The model's variables as shapes, flattened by "/"-joined path (nothing is compiled)."""
    tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return {collection: traverse_util.flatten_dict(tree[collection], sep="/") for collection in tree}


def test_quantization_adds_only_activation_ranges():
    float_model, quantized = shapes(MobileNetV1(num_classes=10, alpha=0.25)), shapes(
        MobileNetV1(num_classes=10, alpha=0.25, quantization="int8")
    )
    assert quantized["params"] == float_model["params"]
    added = set(quantized["batch_stats"]) - set(float_model["batch_stats"])
    assert set(float_model["batch_stats"]) <= set(quantized["batch_stats"])
    # One range per tensor an integer runtime holds in 8 bits: the input of the stem, of the 13
    # depthwise and 13 pointwise convolutions, of the pooling and of the classifier, and the logits.
    assert len(added) == 30 * 3 and all(is_activation_range(path) for path in added)
    assert {"stem/input_quant/low", "block13/pointwise/input_quant/tracked", "pool_input_quant/low",
            "classifier_input_quant/high", "logits_quant/tracked"} <= added
    assert not any(is_activation_range(path) for path in float_model["batch_stats"])


def test_unknown_quantization_is_refused_by_the_model():
    with pytest.raises(ValueError, match=r"quantization must be one of \(None, 'int8'\), got 'bogus'"):
        MobileNetV1(quantization="bogus")


def test_ranges_start_at_the_first_batch_then_follow_a_moving_average():
    quantizer = layers.InputQuantizer(momentum=0.9)
    first, second = rand(0, 4, 5, 5, 3) * 2, rand(1, 4, 5, 5, 3) * 3
    variables = quantizer.init(jax.random.key(0), first, train=True)  # initialising tracks nothing
    assert {k: float(v) for k, v in variables["batch_stats"].items()} == {"low": 0.0, "high": 0.0, "tracked": 0.0}
    out, updates = quantizer.apply(variables, first, train=True, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    assert (float(stats["low"]), float(stats["high"]), float(stats["tracked"])) == (
        float(first.min()), float(first.max()), 1.0)  # the first batch's range, not 0.1 of it
    np.testing.assert_array_equal(out, fake_quant_input(first, first.min(), first.max()))
    out, updates = quantizer.apply({"batch_stats": stats}, second, train=True, mutable=["batch_stats"])
    low = 0.9 * first.min() + 0.1 * second.min()
    high = 0.9 * first.max() + 0.1 * second.max()
    tracked = updates["batch_stats"]
    np.testing.assert_allclose([tracked["low"], tracked["high"]], [low, high], rtol=1e-6)
    np.testing.assert_array_equal(out, fake_quant_input(second, tracked["low"], tracked["high"]))
    # Eval mode quantizes on the stored range and leaves it as it is.
    out, unchanged = quantizer.apply({"batch_stats": stats}, second, train=False, mutable=["batch_stats"])
    np.testing.assert_array_equal(out, fake_quant_input(second, stats["low"], stats["high"]))
    assert unchanged["batch_stats"] == stats


def test_synchronised_ranges_average_the_shards_ranges():
    x = rand(0, 4, 2, 3, 3, 2) * jnp.arange(1, 5)[:, None, None, None, None]
    quantizer = layers.InputQuantizer(axis_name="batch")
    variables = quantizer.init(jax.random.key(0), x[0], train=False)
    apply = lambda v, x: quantizer.apply(v, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]
    stats = jax.vmap(apply, in_axes=(None, 0), axis_name="batch")(variables, x)
    np.testing.assert_allclose(stats["low"], np.full(4, np.mean(x.min(axis=(1, 2, 3, 4)))), rtol=1e-6)
    np.testing.assert_allclose(stats["high"], np.full(4, np.mean(x.max(axis=(1, 2, 3, 4)))), rtol=1e-6)


FORMS = {
    "depthwise": (lambda impl: layers.Conv(stride=2, impl=impl, quantization="int8"), ("conv", "shifted"), 6),
    "stem": (lambda impl: layers.Conv(features=8, stride=2, impl=impl, quantization="int8"), ("conv", "matmul"), 3),
}


@pytest.mark.parametrize("layer", FORMS)
def test_kernel_forms_agree_with_quantization_on(layer):
    make, (canonical_form, cpu_form), channels = FORMS[layer]
    x = rand(0, 2, 10, 10, channels)
    variables = make(canonical_form).init(jax.random.key(0), x)
    kernel = variables["params"]["kernel"]
    plain = make(canonical_form).clone(quantization=None)
    cotangent = rand(1, *jax.eval_shape(plain.apply, variables, x).shape)

    def value_and_grads(form):
        out, vjp = jax.vjp(lambda v, x: make(form).apply(v, x), variables, x)
        # The layer computes with the quantized kernel, and its kernel gradient (straight
        # through) is the float layer's at the quantized kernel.
        plain_out, plain_vjp = jax.vjp(lambda k: plain.apply({"params": {"kernel": k}}, x), fake_quant_kernel(kernel))
        return (out, *vjp(cotangent)), (plain_out, plain_vjp(cotangent)[0])

    canonical, (plain_out, plain_kernel_grad) = jax.jit(lambda: value_and_grads(canonical_form))()
    other, _ = jax.jit(lambda: value_and_grads(cpu_form))()
    np.testing.assert_allclose(canonical[0], plain_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(canonical[1]["params"]["kernel"], plain_kernel_grad, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(other), jax.tree.leaves(canonical)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
