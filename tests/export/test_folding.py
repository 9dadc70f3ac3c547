"""BatchNorm folding: the folded inference function equals the Flax model, with canonical ops."""

import jax
import numpy as np
import pytest
from export_models import CONFIGS, FLOAT32_TOLERANCE, images, realistic_deployable

from mobilenet_jax.export import fold_batchnorm, inference_fn
from mobilenet_jax.export.check import fidelity, reference_logits
from mobilenet_jax.model import block_geometry

# Folding rounds each kernel once more and reorders the BatchNorm arithmetic: measured up to
# 1.3e-6 relative on these randomised models (2e-6 on a trained one), inside the float32 bound
# every export is held to.
FOLDING_TOLERANCE = FLOAT32_TOLERANCE


@pytest.mark.parametrize(
    "alpha,size,fields",
    [
        *((alpha, size, fields) for alpha, size in CONFIGS
          for fields in ({}, {"activation": "relu6", "padding": "same", "bn_epsilon": 1e-3})),
        # Atrous: the depthwise convolutions past the output stride dilate, on either padding.
        (0.25, 64, {"output_stride": 16}),
        (0.25, 64, {"output_stride": 8, "padding": "same"}),
    ],
)
def test_folded_forward_equals_flax(alpha, size, fields):
    deployable = realistic_deployable(alpha, size, **fields)
    x = images(size)
    folded = np.asarray(jax.jit(inference_fn(deployable.model, deployable.variables))(x))
    result = fidelity("folded", "float32", reference_logits(deployable, x), folded, None)
    assert result.max_relative_diff < FOLDING_TOLERANCE
    assert result.agreement == 1.0


def test_features_without_classifier():
    deployable = realistic_deployable(0.25, 64, num_classes=0)
    x = images(64)
    folded = np.asarray(inference_fn(deployable.model, deployable.variables)(x))
    reference = reference_logits(deployable, x)
    assert folded.shape == reference.shape == (2, deployable.model.num_features)
    np.testing.assert_allclose(folded, reference, rtol=0, atol=FOLDING_TOLERANCE * np.abs(reference).max())


def test_folded_parameters_and_ops():
    deployable = realistic_deployable(0.25, 64)
    params = fold_batchnorm(deployable.model, deployable.variables)
    assert params["block1"]["depthwise"]["kernel"].shape == (3, 3, 1, 8)
    assert params["block1"]["depthwise"]["bias"].shape == (8,)
    jaxpr = jax.make_jaxpr(inference_fn(deployable.model, deployable.variables))(images(64))
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    depthwise = [e for e in convs if e.params["feature_group_count"] > 1]
    # The stem, 13 depthwise and 13 pointwise convolutions; depthwise as grouped convolutions.
    assert (len(convs), len(depthwise)) == (27, 13)
    assert all(e.params["feature_group_count"] == e.invars[0].aval.shape[-1] for e in depthwise)


def test_atrous_depthwise_convolutions_dilate():
    deployable = realistic_deployable(0.25, 64, output_stride=16)
    jaxpr = jax.make_jaxpr(inference_fn(deployable.model, deployable.variables))(images(64))
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    depthwise = [e for e in convs if e.params["feature_group_count"] > 1]
    geometry = [(e.params["window_strides"][0], e.params["rhs_dilation"][0]) for e in depthwise]
    assert geometry == list(block_geometry(16)) and geometry[-2:] == [(1, 1), (1, 2)]

