"""ONNX: Conv (grouped for depthwise) and Gemm graphs on ONNX Runtime, equal to Flax."""

import pytest
from export_models import CONFIGS, FLOAT32_TOLERANCE, images, realistic_deployable

from mobilenet_jax.export.check import fidelity, reference_logits
from mobilenet_jax.export.onnx import OnnxModel, export_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
def exported(request):
    deployable = realistic_deployable(*request.param)
    return deployable, export_onnx(deployable, batch_size=2)


def test_graph_is_conv_and_gemm(exported):
    deployable, data = exported
    graph = onnx.load_from_string(data).graph
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in graph.node if n.op_type == "Conv"]
    assert len(groups) == 27 and sum(g > 1 for g in groups) == 13
    assert {n.op_type for n in graph.node} <= {"Conv", "Relu", "Pad", "Transpose", "Reshape", "ReduceSum", "Gemm",
                                                "MatMul", "Add", "Mul", "Div", "ReduceMean"}


@pytest.mark.parametrize("count", [2, 5])
def test_matches_flax_in_padded_chunks(exported, count):
    deployable, data = exported
    x = images(deployable.image_size, count)
    result = fidelity("onnx", "float32", reference_logits(deployable, x), OnnxModel(data)(x), None)
    assert result.max_relative_diff <= FLOAT32_TOLERANCE


def test_int8_runs_quantized(exported):
    deployable, _ = exported
    data = export_onnx(deployable, kind="int8", calibration=[images(deployable.image_size, 4, 3)])
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = images(deployable.image_size, 3)
    assert OnnxModel(data)(x).shape == reference_logits(deployable, x).shape
