"""LiteRT flatbuffers: builtin ops XNNPACK accelerates, float32 and float16 equal to Flax."""

import numpy as np
import pytest
from export_models import CONFIGS, FLOAT32_TOLERANCE, images, realistic_deployable

from mobilenet_jax.export.check import TOLERANCES, fidelity, reference_logits
from mobilenet_jax.export.tflite import TFLiteModel, export_tflite

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow")

# What the folded model may become: convolutions, depthwise convolutions, the mean as a sum,
# the classifier, explicit padding, and (float16) the weights' dequantization at load time.
ALLOWED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "SUM", "MEAN", "FULLY_CONNECTED", "DEQUANTIZE", "QUANTIZE",
               "DELEGATE"}
# Float16 weights: measured 1.3e-3 (0.25-96) and 9.7e-4 (0.5-128) relative to the largest logit
# on the test images (1.1e-3 and 1.5e-3 on 8 other images); the trained digits model 2.5e-3. Held
# to the tolerance of every float16 export. (Random networks with BatchNorm biases around 0
# amplify the rounding 60x and measured 1.0-2.1e-2: export_models.py says why.)
FLOAT16_TOLERANCE = TOLERANCES["float16"]


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
def deployable(request):
    return realistic_deployable(*request.param)


@pytest.fixture(scope="module")
def inputs(deployable):
    x = images(deployable.image_size)
    return x, reference_logits(deployable, x)


@pytest.mark.parametrize("kind,tolerance", [("float32", FLOAT32_TOLERANCE), ("float16", FLOAT16_TOLERANCE)])
def test_float_kinds_match_flax(deployable, inputs, kind, tolerance):
    x, reference = inputs
    model = TFLiteModel(export_tflite(deployable, kind=kind), num_threads=2)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= model.op_names() <= ALLOWED_OPS
    result = fidelity("tflite", kind, reference, model(x), None)
    assert result.max_relative_diff <= tolerance


@pytest.mark.parametrize("kind", ["dynamic_int8", "int8"])
def test_int8_kinds_are_quantized_builtin_graphs(deployable, inputs, kind):
    x, reference = inputs
    model = TFLiteModel(export_tflite(deployable, kind=kind, calibration=[images(deployable.image_size, 8, 3)]))
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= model.op_names() <= ALLOWED_OPS
    tensor_types = {t["dtype"] for t in model.interpreter.get_tensor_details()}
    assert np.int8 in tensor_types
    assert (model._input["dtype"] == np.int8) == (kind == "int8")
    assert model(x).shape == reference.shape


def test_int8_needs_calibration(deployable):
    with pytest.raises(ValueError, match="needs calibration images: pass --calibration"):
        export_tflite(deployable, kind="int8")
