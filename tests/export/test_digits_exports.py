"""Exports of a model trained on digits: float16 logits, int8 agreement and accuracy drop, and
quantization-aware fine-tuning of that model against post-training quantization.

A short digits run (MobileNet 0.25 at 32x32) is trained once for the module; every int8 kind
is calibrated on training-pipeline images, and every export is evaluated on the 360 test images.
"""

import numpy as np
import pytest

from mobilenet_jax.export import check, datasets, load_weights
from mobilenet_jax.export.quantize import has_trained_ranges
from mobilenet_jax.training.metrics import read_metrics
from training.tiny_runs import one_device_env, start_training

pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

EPOCHS = 8
INT8_EXPORTS = (("stablehlo", "int8"), ("tflite", "dynamic_int8"), ("tflite", "int8"), ("onnx", "int8"))
# Bounds from measurement (docs/deploy.md). After 8 epochs (84 % accuracy) every int8 kind
# agreed with Flax on 98.1-99.4 % of the test images and lost at most 0.3 points (some gained
# up to 0.6); after 40 epochs (97 %) 99.4-100 % and at most 0.3 points. The bounds leave
# room for 4 more disagreeing images.
MAX_DROP = 0.015
MIN_AGREEMENT = 0.97
# ONNX int8 is calibrated by ONNX Runtime's own quantizer, whose ranges depend on the trained
# model more than the other kinds' do: on three 8-epoch models (one device; eight, two
# trainings that differ) it agreed with Flax on 80.0 %, 86.7 % and 98.9 % of the test images
# and lost up to 11.7 points (this module's run: 80.0 %, -11.7), while TFLite int8 agreed on
# 99 %. The bounds still fail an export that collapses towards chance (10 %).
ONNX_INT8_MIN_AGREEMENT = 0.75
ONNX_INT8_MAX_DROP = 0.15
FLOAT16_TOLERANCE = 1e-2


# Quantization-aware fine-tuning of the float run: the digits recipe at a tenth of its rate.
QAT_STEPS = 100
QAT_LEARNING_RATE = 0.04


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    """The workdir of the float digits run, trained in a process of its own (one CPU device)."""
    workdir = tmp_path_factory.mktemp("digits")
    flags = (
        "--config=configs/digits.py", f"--config.num_epochs={EPOCHS}",
        "--config.eval_every_steps=10000", "--config.checkpoint_every_steps=10000",
    )
    process = start_training(workdir, one_device_env(tmp_path_factory.mktemp("xla_cache")), flags)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    return str(workdir)


def examples_of(deployable):
    """The test images and labels, and calibration images, for `deployable`."""
    images, labels = map(np.concatenate, zip(*datasets.eval_examples("digits", deployable)))
    return images, labels, datasets.calibration_images("digits", deployable)


@pytest.fixture(scope="module")
def results(float_run):
    deployable = load_weights(float_run)
    images, labels, calibration = examples_of(deployable)
    exports = (("tflite", "float32"), ("tflite", "float16"), *INT8_EXPORTS)
    return {(r.format, r.kind): r for r in check.check_exports(deployable, images, labels, calibration, exports)}


def test_trained_model_is_accurate(results):
    reference = results["tflite", "float32"]
    assert reference.agreement == 1.0 and reference.reference_accuracy > 0.8


def test_float16_weights_within_tolerance(results):
    # Measured 1.8e-3 (8 epochs) and 2.5e-3 (40 epochs); one borderline image may change class.
    assert results["tflite", "float16"].max_relative_diff <= FLOAT16_TOLERANCE
    assert results["tflite", "float16"].accuracy_drop <= MAX_DROP


@pytest.mark.parametrize("export", INT8_EXPORTS, ids="-".join)
def test_int8_accuracy_drop_is_small(results, export):
    result = results[export]
    own_calibration = export == ("onnx", "int8")
    assert result.agreement >= (ONNX_INT8_MIN_AGREEMENT if own_calibration else MIN_AGREEMENT)
    assert result.accuracy_drop <= (ONNX_INT8_MAX_DROP if own_calibration else MAX_DROP)


@pytest.fixture(scope="module")
def quantization_aware(float_run, tmp_path_factory):
    """`python train.py --config.init_from=<the float run> --config.quantization=int8` (one CPU
    device, a short fine-tuning), its final evaluation, its model, and its JAX int8 export checked."""
    workdir = tmp_path_factory.mktemp("digits_qat")
    flags = (
        "--config=configs/digits.py", f"--config.init_from={float_run}", "--config.quantization=int8",
        f"--config.num_train_steps={QAT_STEPS}", f"--config.learning_rate={QAT_LEARNING_RATE}",
        "--config.warmup_epochs=0", "--config.eval_every_steps=10000", "--config.checkpoint_every_steps=10000",
    )
    process = start_training(workdir, one_device_env(tmp_path_factory.mktemp("xla_cache")), flags)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]  # a non-finite loss ends the run with status 2
    final = [r for r in read_metrics(str(workdir)) if "eval_accuracy" in r][-1]
    deployable = load_weights(str(workdir))
    images, labels, _ = examples_of(deployable)
    (int8,) = check.check_exports(deployable, images, labels, None, [("stablehlo", "int8")])  # no calibration
    return final, deployable, int8


def test_quantization_aware_fine_tuning_keeps_the_float_accuracy_in_int8(results, quantization_aware):
    result, deployable, int8 = quantization_aware
    assert result["step"] == QAT_STEPS and np.isfinite(result["eval_loss"])
    assert deployable.model.quantization == "int8" and has_trained_ranges(deployable.model, deployable.variables)
    # The exported int8 model computes what the fine-tuned model does (measured: 100 % agreement).
    assert int8.agreement >= MIN_AGREEMENT and abs(int8.accuracy - result["eval_accuracy"]) <= MAX_DROP
    float_accuracy = results["tflite", "float32"].reference_accuracy
    ptq = results["stablehlo", "int8"]
    print(f"float {float_accuracy:.4f}, post-training int8 {ptq.accuracy:.4f}, "
          f"quantization-aware ({QAT_STEPS} steps) {result['eval_accuracy']:.4f}, its int8 {int8.accuracy:.4f}")
    # Measured: float 84.4 %, post-training int8 84.7 %, after fine-tuning 86.4 % fake-quantized
    # and 86.4 % in int8 (the fine-tuning steps also train). Post-training quantization lost
    # nothing either, so which drop is smaller is noise at this scale (a point is 3.6 images);
    # asserted is what holds: the int8 model after fine-tuning is as accurate as the float start.
    assert int8.accuracy >= float_accuracy - MAX_DROP
