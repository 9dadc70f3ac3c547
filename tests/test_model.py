"""Shapes, endpoints, variants and argument checks of MobileNetV1."""

from __future__ import annotations

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from mobilenet_jax import BLOCKS, ENDPOINT_BLOCKS, VARIANTS, MobileNetV1, create_model, get_variant, scaled_channels
from mobilenet_jax.layers import Conv
from mobilenet_jax.model import block_geometry


def output_shape(model: MobileNetV1, shape, **kwargs):
    """Shapes of model.init and model.apply outputs, traced without computing."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("size", [128, 160, 192, 224])
def test_logits_shape_for_paper_grid(alpha, size):
    out = output_shape(MobileNetV1(num_classes=1000, alpha=alpha), (2, size, size, 3))
    chex.assert_shape(out, (2, 1000))


@pytest.mark.parametrize("shape", [(1, 97, 97, 3), (1, 200, 200, 3), (1, 32, 32, 3), (3, 64, 120, 3)])
@pytest.mark.parametrize("padding", ["torch", "same"])
def test_odd_small_and_non_square_inputs(shape, padding):
    out = output_shape(MobileNetV1(num_classes=10, padding=padding), shape)
    chex.assert_shape(out, (shape[0], 10))


@pytest.mark.parametrize("alpha,features", [(1.0, 1024), (0.5, 512), (0.25, 256), (0.1, 102)])
def test_num_classes_zero_returns_pooled_features(alpha, features):
    model = MobileNetV1(num_classes=0, alpha=alpha)
    assert model.num_features == features
    chex.assert_shape(output_shape(model, (2, 64, 64, 3)), (2, features))


@pytest.mark.parametrize("padding", ["torch", "same"])
def test_endpoints_have_the_advertised_strides(padding):
    size, alpha = 224, 0.5
    _, endpoints = output_shape(MobileNetV1(alpha=alpha, padding=padding), (2, size, size, 3), return_endpoints=True)
    strides = {"stride_2": 2, "stride_4": 4, "stride_8": 8, "stride_16": 16, "stride_32": 32}
    expected_channels = {"stride_2": 64, "stride_4": 128, "stride_8": 256, "stride_16": 512, "stride_32": 1024}
    assert set(endpoints) == set(strides)
    for name, stride in strides.items():
        channels = scaled_channels(expected_channels[name], alpha)
        chex.assert_shape(endpoints[name], (2, size // stride, size // stride, channels))
    assert ENDPOINT_BLOCKS == {"stride_2": 1, "stride_4": 3, "stride_8": 5, "stride_16": 11, "stride_32": 13}


@pytest.mark.parametrize("padding", ["torch", "same"])
@pytest.mark.parametrize("output_stride,deepest", [(16, "stride_16"), (8, "stride_8")])
@pytest.mark.parametrize("size", [(96, 96), (97, 130)])
def test_atrous_endpoints_stop_at_the_output_stride(padding, output_stride, deepest, size):
    model = MobileNetV1(alpha=0.25, padding=padding, output_stride=output_stride)
    _, endpoints = output_shape(model, (1, *size, 3), return_endpoints=True)
    names = [f"stride_{s}" for s in (2, 4, 8, 16) if s <= output_stride]
    assert set(endpoints) == set(names) and names[-1] == deepest
    ceil = lambda n, s: -(-n // s)
    for name in names:
        stride = int(name.split("_")[1])
        assert endpoints[name].shape[1:3] == (ceil(size[0], stride), ceil(size[1], stride))
    chex.assert_shape(endpoints[deepest], (1, ceil(size[0], output_stride), ceil(size[1], output_stride), 256))


def test_atrous_geometry_is_tf_slims():
    paper = tuple((stride, 1) for _, stride in BLOCKS)
    assert block_geometry() == block_geometry(32) == paper
    assert block_geometry(16) == paper[:11] + ((1, 1), (1, 2))
    assert block_geometry(8) == paper[:5] + ((1, 1),) + ((1, 2),) * 6 + ((1, 4),)


def test_atrous_gradients_of_the_shifted_form_equal_the_canonical_form():
    # Eval mode: train-mode BatchNorm over two small images amplifies float32 rounding to ~3e-3
    # of the gradients' scale between any two forms, at output stride 32 as at 16.
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    labels = jnp.array([1, 7])

    def grads(depthwise_impl):
        model = MobileNetV1(alpha=0.25, num_classes=10, output_stride=16, depthwise_impl=depthwise_impl)
        variables = model.init(jax.random.key(1), x)

        def loss(params, x):
            logits = model.apply({**variables, "params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        params, inputs = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
        return {**traverse_util.flatten_dict(params, sep="/"), "input": inputs}

    canonical, shifted = grads("conv"), grads("shifted")
    for path, expected in canonical.items():
        scale = float(jnp.abs(expected).max())
        np.testing.assert_allclose(shifted[path], expected, rtol=0, atol=1e-5 * scale, err_msg=path)


def test_atrous_model_has_the_variables_of_the_paper_network():
    shapes = lambda model: jax.tree.map(lambda a: a.shape, output_shape_variables(model))
    paper = shapes(MobileNetV1(alpha=0.25))
    for output_stride in (32, 16, 8):
        assert shapes(MobileNetV1(alpha=0.25, output_stride=output_stride)) == paper


def output_shape_variables(model: MobileNetV1):
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


def test_a_dilated_full_convolution_is_refused():
    message = (
        r"dilation is for depthwise convolutions only, got dilation=2 with features=8; use dilation=1 or "
        "features=None"
    )
    with pytest.raises(ValueError, match=message):
        Conv(features=8, dilation=2).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_endpoints_are_the_real_feature_maps():
    model = MobileNetV1(num_classes=0, alpha=0.25)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 64, 64, 3), np.float32))
    variables = model.init(jax.random.key(0), x)
    pooled, endpoints = model.apply(variables, x, return_endpoints=True)
    np.testing.assert_allclose(pooled, endpoints["stride_32"].mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)
    _, intermediates = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    np.testing.assert_array_equal(endpoints["stride_8"], intermediates["intermediates"]["block5"]["__call__"][0])


def test_paper_variants_by_name():
    assert len(VARIANTS) == 16
    variant = get_variant("mobilenet_v1_075_160")
    assert (variant.alpha, variant.resolution) == (0.75, 160)
    model = create_model("mobilenet_v1_025_128", num_classes=5)
    assert (model.alpha, model.num_classes) == (0.25, 5)
    chex.assert_shape(output_shape(model, (1, 128, 128, 3)), (1, 5))
    with pytest.raises(ValueError, match="unknown variant 'mobilenet_v1_200_224'"):
        get_variant("mobilenet_v1_200_224")


def test_min_depth_floors_channels():
    variables = jax.eval_shape(
        MobileNetV1(alpha=0.05, min_depth=8).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    )
    assert variables["params"]["stem"]["conv"]["kernel"].shape == (3, 3, 3, 8)
    assert variables["params"]["block13"]["pointwise"]["conv"]["kernel"].shape == (1, 1, 51, 51)


def test_train_mode_updates_batch_stats_and_dropout_uses_rng():
    model = MobileNetV1(num_classes=10, alpha=0.25, dropout_rate=0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3), np.float32))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    run = jax.jit(lambda key: model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}))
    (logits_a, updates), (logits_b, _) = run(jax.random.key(1)), run(jax.random.key(2))
    assert not np.allclose(logits_a, logits_b)
    old, new = variables["batch_stats"]["stem"]["bn"]["mean"], updates["batch_stats"]["stem"]["bn"]["mean"]
    assert not np.allclose(old, new)
    chex.assert_trees_all_equal_shapes(variables["batch_stats"], updates["batch_stats"])


def test_bfloat16_computation_keeps_float32_params_and_logits():
    model = MobileNetV1(num_classes=10, alpha=0.25, dtype=jnp.bfloat16)
    x = jnp.ones((2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    chex.assert_trees_all_equal_dtypes(variables["params"], jax.tree.map(lambda a: a.astype(jnp.float32), variables["params"]))
    logits = jax.jit(model.apply)(variables, x)
    assert logits.dtype == jnp.float32
    reference = jax.jit(MobileNetV1(num_classes=10, alpha=0.25).apply)(variables, x)
    np.testing.assert_allclose(logits, reference, rtol=0.1, atol=0.1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(alpha=0.0), "alpha must be > 0, got 0.0"),
        (dict(alpha=-1), "alpha must be > 0, got -1"),
        (dict(activation="gelu"), r"activation must be one of \('relu', 'relu6'\), got 'gelu'$"),
        (dict(padding="valid"), r"padding must be one of \('torch', 'same'\), got 'valid'$"),
        (dict(depthwise_impl="fast"), r"depthwise_impl must be one of \('auto', 'conv', 'shifted'\), got 'fast'$"),
        (dict(num_classes=-3), "num_classes must be >= 0"),
        (dict(dropout_rate=1.0), "dropout_rate must be in"),
        (dict(bn_momentum=1.5), "bn_momentum must be in"),
        (dict(init_stddev=-0.1), "init_stddev must be >= 0"),
        (dict(num_classes=2.5), r"num_classes must be an int >= 0, got 2.5"),
        (dict(alpha="0.5"), r"alpha must be a number > 0, got '0.5'"),
        (dict(output_stride=12), r"output_stride must be one of \(None, 32, 16, 8\), got 12$"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MobileNetV1(**kwargs)


@pytest.mark.parametrize(
    "shape,message",
    [
        ((224, 224, 3), "rank 4"),
        ((1, 3, 224, 224), r"3 channels last .*transpose NCHW with \(0, 2, 3, 1\)"),
        ((1, 64, 64, 1), r"grayscale images of shape \(1, 64, 64, 1\); repeat the channel"),
        ((1, 64, 64, 4), r"3 channels last .*convert the images to RGB"),
        ((1, 31, 64, 3), ">= 32"),
    ],
)
def test_invalid_inputs_raise_before_compiling(shape, message):
    model = MobileNetV1(alpha=0.25)
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.key(0), jnp.zeros(shape))


def test_importing_the_package_pulls_in_neither_torch_nor_tensorflow():
    # The config gate and the step functions too: a config is checked before any framework loads.
    code = (
        "import sys, mobilenet_jax, mobilenet_jax.training.config, mobilenet_jax.training.step, "
        "mobilenet_jax.data.spec, mobilenet_jax.weights; "
        "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_init_stddev_draws_every_kernel_from_tf_slims_truncated_normal():
    # TF's truncated_normal_initializer(stddev=0.09): N(0, 0.09) redrawn outside two stddevs, so
    # the drawn values have standard deviation 0.09 * 0.8796.
    variables = MobileNetV1(alpha=1.0, num_classes=1000, init_stddev=0.09).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    kernels = {"/".join(k): v for k, v in traverse_util.flatten_dict(variables["params"]).items() if k[-1] == "kernel"}
    assert len(kernels) == 1 + 2 * 13 + 1 and "classifier/kernel" in kernels
    values = np.concatenate([np.ravel(v) for v in kernels.values()])
    assert np.abs(values).max() <= 2 * 0.09
    assert np.std(values) == pytest.approx(0.09 * 0.8796, rel=0.01)
