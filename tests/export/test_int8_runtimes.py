"""One int8 model in every runtime: the StableHLO, LiteRT and ONNX int8 exports compute the JAX
int8 model's integers, from a quantization-aware model's trained ranges or from one calibration.

Measured on these models: every logit of every runtime equal to the JAX int8 model's (0 steps
apart), and every layer of LiteRT's graph equal to the JAX int8 model's integers. The asserted
bounds are the project's promise: 99.9 % of logits within one step of the logits' grid, 99.5 %
the same top-1.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from export_models import images, quantization_aware, realistic_deployable

from mobilenet_jax.export import Deployable, check, export, load_exported
from mobilenet_jax.export import quantize as int8
from mobilenet_jax.export.tflite_int8 import int8_flatbuffer

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tf2onnx")

FORMATS = ("stablehlo", "tflite", "onnx")
MIN_WITHIN_STEP = 0.999
MIN_AGREEMENT = 0.995
COUNT = 32
EGYPTIAN_CAT = 286  # of 1001, background first


@pytest.fixture(scope="module", params=[(32, None), (64, 16)], ids=["32", "64-output_stride_16"])
def trained(request):
    """A quantization-aware model with trained ranges: at 32 the last feature map is one pixel,
    at 64 and output stride 16 four (the pooling sums) and the depthwise layers dilate."""
    size, output_stride = request.param
    return quantization_aware(realistic_deployable(0.25, size, negative_scales=0.25, output_stride=output_stride))


def jax_int8(deployable, x, calibration=None):
    """The JAX int8 model of `deployable`, its logits on `x` and the logits' step."""
    model, variables = int8.with_calibrated_ranges(deployable.model, deployable.variables, calibration)
    spec = int8.int8_model(model, variables)
    logits = np.asarray(jax.jit(functools.partial(int8.int8_forward, model, spec))(x))
    return spec, logits, float(int8.output_grid(spec)["scale"])


@pytest.mark.parametrize("format_name", FORMATS)
def test_every_runtime_computes_the_trained_int8_model(trained, format_name, tmp_path):
    x = images(trained.image_size, COUNT, 99)
    _, expected, step = jax_int8(trained, x)
    path = str(tmp_path / f"model.{format_name}")
    export(trained, format_name, path, kind="int8")  # no calibration: the trained ranges
    comparison = check.int8_comparison(expected, step, load_exported(format_name, path)(x))
    assert comparison["within_int8_step"] >= MIN_WITHIN_STEP and comparison["int8_agreement"] >= MIN_AGREEMENT


def test_post_training_quantization_calibrates_once_for_every_format(tmp_path):
    deployable = realistic_deployable(0.25, 32)
    x, calibration = images(32, COUNT, 99), [images(32, 8, 5), images(32, 8, 6)]
    _, expected, step = jax_int8(deployable, x, calibration)
    results = check.check_exports(deployable, x, calibration=calibration,
                                  exports=[(name, "int8") for name in FORMATS])
    assert [(r.format, r.within_int8_step >= MIN_WITHIN_STEP, r.int8_agreement >= MIN_AGREEMENT)
            for r in results] == [(name, True, True) for name in FORMATS]
    # One format alone calibrates to the same model; other images calibrate another.
    path = str(tmp_path / "ptq.stablehlo")
    export(deployable, "stablehlo", path, kind="int8", calibration=calibration)
    np.testing.assert_array_equal(load_exported("stablehlo", path)(x), expected)
    assert not np.array_equal(jax_int8(deployable, x, [images(32, 8, 7)])[1], expected)


def test_the_litert_flatbuffer_carries_the_int8_model_and_each_layer_agrees(trained):
    from ai_edge_litert.interpreter import Interpreter

    spec = int8.int8_model(trained.model, trained.variables)
    interpreter = Interpreter(model_content=int8_flatbuffer(trained, spec), experimental_preserve_all_tensors=True)
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert source["quantization"] == (spec["image"]["scale"], 0)
    assert target["quantization"] == (spec["classifier"]["output"]["scale"], 0)
    convolutions = [op for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    layers = [int8.at_path(spec, unit) for unit in int8.UNITS]
    assert len(convolutions) == len(layers) == 27
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    for op, layer in zip(convolutions, layers):
        kernel, bias, output = (details[index]["quantization_parameters"] for index in (*op["inputs"][1:], op["outputs"][0]))
        np.testing.assert_array_equal(kernel["scales"], layer["kernel_scale"])
        np.testing.assert_array_equal(bias["scales"], layer["input"]["scale"] * layer["kernel_scale"])
        assert output["scales"].tolist() == [layer["output"]["scale"]]

    # Every layer's int8 tensor in LiteRT holds the JAX int8 model's integers.
    x = images(trained.image_size, 4, 3)
    outputs = []
    conv = lambda layer, q, *args: outputs.append(int8.int8_conv(layer, q, *args)) or outputs[-1]
    int8.folded_forward(spec, int8.quantize(x, spec["image"]), activation=None, padding=trained.model.padding,
                        output_stride=trained.model.output_stride, conv=conv,
                        pool=functools.partial(int8.int8_pool, spec["pool"]), dense=int8.int8_dense)
    equal = []
    for index in range(len(x)):
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], np.asarray(int8.quantize(x[index:index + 1], spec["image"]), np.int8))
        interpreter.invoke()
        runtime = [interpreter.get_tensor(op["outputs"][0]).astype(np.int32) - int8.zero_point(layer["output"])
                   for op, layer in zip(convolutions, layers)]
        equal.append([np.mean(got == np.asarray(ours[index:index + 1])) for got, ours in zip(runtime, outputs)])
    per_layer = np.mean(equal, axis=0)
    assert per_layer.min() >= MIN_WITHIN_STEP, per_layer


def test_a_bias_beyond_its_int32_grid_coarsens_that_channel_only():
    # Channel 0: a near-zero kernel beside a bias of 1, whose accumulator step (input step times
    # kernel step) would put the bias past int32; channel 1 an ordinary one.
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(1, 1, 16, 2)).astype(np.float32) * np.float32([1e-9, 1.0])
    layer = {"kernel": kernel, "bias": np.float32([1.0, 0.5])}
    input_grid, output_grid = int8.grid_of(0.0, 4.0), int8.grid_of(0.0, 8.0)
    quantized = int8.quantize_layer(layer, input_grid, output_grid)
    assert np.abs(quantized["bias"]).max() <= int8.BIAS_LIMIT
    assert quantized["kernel_scale"][1] == np.abs(kernel[..., 1]).max() / 127  # untouched
    x = rng.uniform(0, 4, (2, 3, 3, 16)).astype(np.float32)
    got = np.asarray(int8.int8_conv(quantized, int8.quantize(x, input_grid), 1, 1, "torch")) * output_grid["scale"]
    want = np.maximum(np.einsum("nhwc,co->nhwo", x, kernel[0, 0]) + layer["bias"], 0)
    assert np.abs(got - want)[..., 0].max() <= output_grid["scale"]  # the bias alone, on the output grid


@pytest.mark.parametrize("padding,activation", [("torch", "relu"), ("same", "relu6")])
def test_onnx_runtime_runs_every_convolution_as_an_integer_kernel(padding, activation, tmp_path):
    # The layout transposes tf2onnx adds around the image and the pooling would leave the stem and
    # the last convolution in float (DequantizeLinear -> Transpose -> Conv does not fuse).
    import onnx
    import onnxruntime

    deployable = quantization_aware(realistic_deployable(0.25, 32, padding=padding, activation=activation))
    path, optimized = str(tmp_path / "model.onnx"), str(tmp_path / "optimized.onnx")
    export(deployable, "onnx", path, kind="int8")
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = optimized
    onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(optimized).graph.node]
    assert ops.count("QLinearConv") == 27 and "Conv" not in ops and ops.count("QGemm") == 1


def test_the_real_imagenet_weights_give_the_same_integers_in_every_runtime(real_slim, tmp_path):
    # TF-Slim's 1.0-224: relu6, "same" padding, a 7x7 pooling, 1001 classes. Calibrated on four
    # shipped photographs (post-training), checked on two. Measured on all 20 photographs of
    # tests/interop/test_real_weights.py: every logit equal in all three runtimes.
    from skimage import data

    from mobilenet_jax.interop.preprocessing import TF_SLIM

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    batch = np.stack([TF_SLIM(photo) for photo in photos]).astype(np.float32)
    deployable = Deployable(real_slim.model(), real_slim.variables, image_size=224, normalization="inception")
    model, variables = int8.with_calibrated_ranges(deployable.model, deployable.variables, [batch])
    quantized = dataclasses.replace(deployable, model=model, variables=variables)
    expected, step = jax_int8(quantized, batch[:2])[1:]
    assert expected[0].argmax() == EGYPTIAN_CAT
    for format_name in ("tflite", "onnx"):
        path = str(tmp_path / f"real.{format_name}")
        export(quantized, format_name, path, kind="int8")
        comparison = check.int8_comparison(expected, step, load_exported(format_name, path)(batch[:2]))
        assert comparison["within_int8_step"] >= MIN_WITHIN_STEP and comparison["int8_agreement"] == 1.0, format_name


def test_an_all_zero_bias_the_converter_drops_is_written_back(tmp_path):
    # A fresh classifier's bias is zero, and the converter leaves it out of FULLY_CONNECTED; the
    # int8 model's bias (the rounded zero, on its own scale) goes back in.
    trained = quantization_aware(realistic_deployable(0.25, 32))
    params = dict(trained.variables["params"])
    params["classifier"] = {**params["classifier"], "bias": np.zeros_like(params["classifier"]["bias"])}
    deployable = dataclasses.replace(trained, variables={**trained.variables, "params": params})
    x = images(32, COUNT, 99)
    _, expected, step = jax_int8(deployable, x)
    for format_name in ("tflite", "onnx"):
        path = str(tmp_path / f"model.{format_name}")
        export(deployable, format_name, path, kind="int8")
        comparison = check.int8_comparison(expected, step, load_exported(format_name, path)(x))
        assert comparison["within_int8_step"] >= MIN_WITHIN_STEP and comparison["int8_agreement"] >= MIN_AGREEMENT
