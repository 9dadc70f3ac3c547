"""The export command and API: weights resolution, one-line errors, missing runtimes."""

import sys

import pytest
from export_models import FLOAT32_TOLERANCE, images, realistic_deployable

from mobilenet_jax import weights
from mobilenet_jax.export import MissingRuntimeError, export, load_exported, load_weights
from mobilenet_jax.export.__main__ import main
from mobilenet_jax.export.check import fidelity, reference_logits
from mobilenet_jax.interop import pretrained
from mobilenet_jax.interop.preprocessing import Preprocessing, for_run


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    deployable = realistic_deployable(0.25, 64)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v1.msgpack")
    weights.save_model(path, deployable.model, deployable.variables)
    return path, deployable


def test_command_exports_a_model_file(model_file, tmp_path, capsys):
    path, deployable = model_file
    out = str(tmp_path / "model.tflite")
    main(["--weights", path, "--format", "tflite", "--out", out, "--image-size", "64", "--normalization", "imagenet"])
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


def test_a_model_file_records_its_size_and_normalization_without_a_config(model_file, tmp_path):
    # A digits run's model file alone: 32x32, inception; it once exported at 224 with ImageNet's.
    model, variables = weights.load_model(model_file[0])
    path = str(tmp_path / "mobilenet_v1.msgpack")
    weights.save_model(path, model, variables, preprocessing=for_run(32, "inception", 0))
    for reference in (path, str(tmp_path)):
        deployable = load_weights(reference)
        assert (deployable.image_size, deployable.normalization) == (32, "inception")
    out = str(tmp_path / "digits.stablehlo")
    main(["--weights", str(tmp_path), "--format", "stablehlo", "--out", out])
    assert load_exported("stablehlo", out)(images(32)).shape == (2, 10)


def test_a_model_file_that_records_no_preprocessing_is_refused_naming_the_flags(model_file, capsys):
    err = one_line_exit(capsys, ["--weights", model_file[0], "--format", "onnx", "--out", "x.onnx"])
    assert "mobilenet_v1.msgpack records no preprocessing" in err
    assert err.endswith("pass its input size and normalisation, --image-size N --normalization imagenet|inception|half\n")
    only_size = one_line_exit(capsys, ["--weights", model_file[0], "--check", "--image-size", "64"])
    assert "--image-size N --normalization" in only_size
    with pytest.raises(pretrained.NoPreprocessingError, match="pass preprocessing=, or image_size= and normalization="):
        load_weights(model_file[0])

def test_check_prints_the_float_table(model_file, capsys):
    path, _ = model_file
    main(["--check", "--weights", path, "--image-size", "64", "--normalization", "imagenet"])
    table = capsys.readouterr().out
    rows = [line.split() for line in table.splitlines()[2:]]
    assert [row[:2] for row in rows] == [["stablehlo", "float32"], ["savedmodel", "float32"], ["tflite", "float32"],
                                        ["tflite", "float16"], ["tflite", "dynamic_int8"], ["onnx", "float32"]]
    assert all(row[5] == "yes" for row in rows if row[1] == "float32")


def one_line_exit(capsys, argv: list[str]) -> str:
    """The one stderr line of the command run with `argv`, which must exit with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("python -m mobilenet_jax.export: error: "), captured.err
    return captured.err


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory, model_file):
    """Weights references a new user may pass by mistake, by name."""
    root = tmp_path_factory.mktemp("bad")
    (root / "notes.txt").write_text("not weights")
    (root / "empty").mkdir()
    (root / "empty.msgpack").write_bytes(b"")
    whole = open(model_file[0], "rb").read()
    (root / "cut.msgpack").write_bytes(whole[: len(whole) // 2])
    (root / "cut.msgpack.json").write_text(open(model_file[0] + ".json").read())
    return root


@pytest.mark.parametrize(
    "name,message",
    [
        ("notes.txt", "notes.txt' is in no format a converter reads; accepted: a registered name"),
        ("empty", "empty holds no weights: no TensorFlow checkpoint"),
        ("missing.msgpack", "weights file {root}/missing.msgpack does not exist; accepted: "),
        ("empty.msgpack", "empty.msgpack has no fields beside it ({root}/empty.msgpack.json is missing)"),
        ("cut.msgpack", "cut.msgpack is not a readable Flax msgpack variables file (Unpack failed: incomplete input)"),
    ],
)
def test_weights_that_are_no_model_are_named_in_one_line(bad_weights, capsys, name, message):
    argv = ["--weights", str(bad_weights / name), "--format", "onnx", "--out", str(bad_weights / "x.onnx"),
            "--image-size", "64", "--normalization", "half"]
    assert message.format(root=bad_weights) in one_line_exit(capsys, argv)


def test_unknown_registered_name_is_one_line(capsys):
    assert "'some_name' is neither a registered name" in one_line_exit(
        capsys, ["--weights", "some_name", "--format", "onnx", "--out", "x"])


def test_out_folders_are_made_and_the_weights_never_overwritten(model_file, tmp_path, capsys):
    path, _ = model_file
    flags = ["--weights", path, "--image-size", "64", "--normalization", "imagenet", "--format", "stablehlo"]
    main([*flags, "--out", str(tmp_path / "new" / "folder" / "m.stablehlo")])
    assert (tmp_path / "new" / "folder" / "m.stablehlo").stat().st_size > 0
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    assert "cannot make the folder of --out" in one_line_exit(capsys, [*flags, "--out", str(tmp_path / "file" / "m")])
    assert f"--out {tmp_path} is a folder; pass a file name" in one_line_exit(capsys, [*flags, "--out", str(tmp_path)])
    size = len(open(path, "rb").read())
    for target in (path, path + ".json"):
        assert "would overwrite the weights being exported" in one_line_exit(capsys, [*flags, "--out", target])
    assert len(open(path, "rb").read()) == size


def test_flags_out_of_range_are_one_line(model_file, capsys):
    flags = ["--weights", model_file[0], "--format", "stablehlo", "--out", "x", "--normalization", "half"]
    for size in ("8", "4096"):
        assert f"--image-size must be between 32 (MobileNet downsamples 32x) and 2048, got {size}" in one_line_exit(
            capsys, [*flags, "--image-size", size])
    assert "argument --image-size: invalid int value: 'big'" in one_line_exit(capsys, [*flags, "--image-size", "big"])
    assert "kind 'int8' needs calibration images" in one_line_exit(
        capsys, [*flags, "--image-size", "64", "--kind", "int8"])


def test_pretrained_preprocessing_sets_size_and_normalization(model_file, monkeypatch):
    model, variables = weights.load_model(model_file[0])
    recipe = Preprocessing(size=160, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    loaded = pretrained.Pretrained(model, variables, recipe)
    monkeypatch.setattr(pretrained, "resolve_weights", lambda name, file=None: loaded)
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
