"""An atrous model (output stride 16) in every float32 format: the fidelity check of today's
exports, and dilated convolutions in the LiteRT and ONNX graphs rather than a fallback chain."""

import os

import pytest
from export_models import FLOAT32_TOLERANCE, images, realistic_deployable

from mobilenet_jax.export import FORMATS
from mobilenet_jax.export.check import check_exports
from mobilenet_jax.export.tflite import TFLiteModel
from mobilenet_jax.model import block_geometry

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")
pytest.importorskip("ai_edge_litert")
schema = pytest.importorskip("tensorflow.lite.python.schema_py_generated")

OUTPUT_STRIDE = 16
# The depthwise layers' dilations at output stride 16: block 13 alone, at rate 2.
DILATIONS = [dilation for _, dilation in block_geometry(OUTPUT_STRIDE)]


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """The fidelity of each float32 export of a 0.25-64 model at output stride 16, by format,
    and the folder the exports were written to."""
    deployable = realistic_deployable(0.25, 64, output_stride=OUTPUT_STRIDE)
    directory = str(tmp_path_factory.mktemp("atrous"))
    results = check_exports(deployable, images(64, 4), exports=[(f, "float32") for f in FORMATS], directory=directory)
    return {r.format: r for r in results}, directory


@pytest.mark.parametrize("format_name", list(FORMATS))
def test_float32_export_passes_the_fidelity_check(checked, format_name):
    result = checked[0][format_name]
    assert result.passed and result.max_relative_diff <= FLOAT32_TOLERANCE
    assert result.agreement == 1.0


def tflite_ops(path: str) -> list[tuple[str, tuple[int, int] | None]]:
    """Each operator of a flatbuffer in graph order: its builtin name and, for convolutions, its
    (dilation_h_factor, dilation_w_factor)."""
    with open(path, "rb") as f:
        model = schema.ModelT.InitFromPackedBuf(f.read(), 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    ops = []
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        options = op.builtinOptions
        dilation = getattr(options, "dilationHFactor", None), getattr(options, "dilationWFactor", None)
        ops.append((names[max(code.builtinCode, code.deprecatedBuiltinCode)], None if None in dilation else dilation))
    return ops


def test_litert_dilates_depthwise_conv_2d(checked):
    path = os.path.join(checked[1], "model_float32.tflite")
    assert not {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"} & TFLiteModel(path).op_names()
    depthwise = [dilation for name, dilation in tflite_ops(path) if name == "DEPTHWISE_CONV_2D"]
    assert depthwise == [(d, d) for d in DILATIONS]


def test_onnx_convs_carry_dilations(checked):
    graph = onnx.load(os.path.join(checked[1], "model_float32.onnx")).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    dilations = [next((list(a.ints) for a in n.attribute if a.name == "dilations"), [1, 1]) for n in convs]
    assert [d for d, g in zip(dilations, groups) if g > 1] == [[d, d] for d in DILATIONS]
    assert all(d == [1, 1] for d, g in zip(dilations, groups) if g == 1)
