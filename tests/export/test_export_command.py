"""The export command and API: weights resolution, one-line errors, missing runtimes."""

import sys
import types

import pytest
from export_models import FLOAT32_TOLERANCE, images, realistic_deployable

from mobilenet_jax import weights
from mobilenet_jax.export import MissingRuntimeError, export, load_exported, load_weights, source
from mobilenet_jax.export.__main__ import main
from mobilenet_jax.export.check import fidelity, reference_logits


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    deployable = realistic_deployable(0.25, 64)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v1.msgpack")
    weights.save_model(path, deployable.model, deployable.variables)
    return path, deployable


def test_command_exports_a_model_file(model_file, tmp_path, capsys):
    path, deployable = model_file
    out = str(tmp_path / "model.tflite")
    main(["--weights", path, "--format", "tflite", "--out", out, "--image-size", "64"])
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    x = images(64)
    result = fidelity("tflite", "float32", reference_logits(deployable, x), load_exported("tflite", out)(x), None)
    assert result.max_relative_diff <= FLOAT32_TOLERANCE


def test_workdir_supplies_size_and_normalization(model_file, tmp_path):
    path, _ = model_file
    (tmp_path / "config.json").write_text('{"image_size": 48, "normalization": "inception", "model.alpha": 0.25}')
    model, variables = weights.load_model(path)
    weights.save_model(str(tmp_path / "mobilenet_v1.msgpack"), model, variables)
    deployable = load_weights(str(tmp_path))
    assert (deployable.image_size, deployable.normalization) == (48, "inception")
    assert load_weights(str(tmp_path), image_size=64).image_size == 64


def test_check_prints_the_float_table(model_file, capsys):
    path, _ = model_file
    main(["--check", "--weights", path, "--image-size", "64"])
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines()[2:]]
    assert [row[:2] for row in rows] == [["stablehlo", "float32"], ["savedmodel", "float32"], ["tflite", "float32"],
                                        ["tflite", "float16"], ["tflite", "dynamic_int8"], ["onnx", "float32"]]
    assert all(row[5] == "yes" for row in rows if row[1] == "float32")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--weights", "missing.msgpack", "--format", "onnx", "--out", "x"], "weights file missing.msgpack does not exist"),
        (["--weights", "some_name", "--format", "onnx", "--out", "x"], "'some_name' is neither a registered name"),
    ],
)
def test_errors_are_one_line(argv, message, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert message in str(exit_info.value) and "\n" not in str(exit_info.value)


def test_pretrained_preprocessing_sets_size_and_normalization(model_file, monkeypatch):
    preprocessing = types.SimpleNamespace(size=160, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    model, variables = weights.load_model(model_file[0])
    monkeypatch.setattr(source, "resolve_weights", lambda name: (model, variables, preprocessing))
    deployable = load_weights("mobilenet_v1_025_160.keras")
    assert (deployable.image_size, deployable.normalization) == (160, "inception")


def test_unknown_format_is_named(model_file):
    with pytest.raises(ValueError, match="unknown export format 'coreml'; choose one of"):
        export(model_file[1], "coreml", "x")


@pytest.mark.parametrize(
    "format_name,module,package",
    [("tflite", "tensorflow", "tensorflow-cpu"), ("onnx", "tf2onnx", "tf2onnx"), ("savedmodel", "tensorflow", "tensorflow-cpu")],
)
def test_missing_runtime_names_the_package(model_file, tmp_path, monkeypatch, format_name, module, package):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingRuntimeError) as error:
        export(model_file[1], format_name, str(tmp_path / "out"))
    assert f"pip install {package}" in str(error.value) and "\n" not in str(error.value)


def test_missing_interpreter_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(MissingRuntimeError, match="pip install ai-edge-litert"):
        load_exported("tflite", "model.tflite")
