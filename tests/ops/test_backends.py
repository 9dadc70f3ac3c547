"""The per-backend table: measured rows where measured, the canonical forms everywhere else."""

from __future__ import annotations

import re

import pytest

from mobilenet_jax import MobileNetV1, inference
from mobilenet_jax.ops import backends


def test_cpu_uses_its_measured_row():
    for field, form in [("depthwise", "shifted"), ("batch_norm", "fused"), ("stem", "matmul")]:
        assert backends.resolve(field, "auto", "cpu") == form


@pytest.mark.parametrize("backend", ["gpu", "tpu", "cuda", "rocm", "metal"])
def test_unmeasured_backends_keep_the_canonical_forms(backend):
    for field, form in [("depthwise", "conv"), ("batch_norm", "autodiff"), ("stem", "conv")]:
        assert backends.resolve(field, "auto", backend) == form
    assert backends.kernel_defaults(backend) == backends.CANONICAL
    assert inference.default_images_per_chunk(backend) is None


def test_an_explicit_form_is_kept_on_every_backend():
    assert backends.resolve("depthwise", "conv", "cpu") == "conv"
    assert backends.resolve("batch_norm", "fused", "gpu") == "fused"


@pytest.mark.parametrize(
    "field,choices",
    [
        ("depthwise_impl", "('auto', 'conv', 'shifted')"),
        ("batch_norm_impl", "('auto', 'autodiff', 'fused')"),
        ("stem_impl", "('auto', 'conv', 'matmul')"),
    ],
)
def test_an_unknown_form_is_named(field, choices):
    with pytest.raises(ValueError, match=re.escape(f"{field} must be one of {choices}, got 'fast'") + "$"):
        MobileNetV1(**{field: "fast"})
    with pytest.raises(ValueError, match=re.escape(f"{field} must be one of {choices}, got 'fast'") + "$"):
        backends.resolve(field.removesuffix("_impl"), "fast")


def test_kernel_sets_fix_every_layer():
    assert backends.model_impls(backends.CANONICAL) == dict(
        depthwise_impl="conv", batch_norm_impl="autodiff", stem_impl="conv"
    )
