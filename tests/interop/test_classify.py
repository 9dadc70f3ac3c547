"""The classify command and the preprocessing recipes, with a converted random-weight model
(real pretrained weights cannot be downloaded in the test environment)."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("safetensors")

import timm_state  # noqa: E402
from PIL import Image  # noqa: E402

from mobilenet_jax import classify  # noqa: E402
from mobilenet_jax.interop import imagenet, pretrained  # noqa: E402
from mobilenet_jax.interop.preprocessing import TF_SLIM, TIMM, Preprocessing  # noqa: E402

BLUE = np.array([-1.0, -1.0, 1.0], np.float32)  # pure blue after (x / 255 - 0.5) / 0.5


def framed(size: tuple[int, int], border: int) -> Image.Image:
    """A blue image of (width, height) `size` inside a red frame `border` pixels wide."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[..., 0] = 255
    pixels[border:-border, border:-border] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_class_names_ship_with_the_package():
    names = imagenet.class_names()
    assert len(names) == 1000 and len(set(imagenet.synsets())) == 1000
    assert (names[0], names[281], names[999]) == ("tench, Tinca tinca", "tabby, tabby cat",
                                                  "toilet tissue, toilet paper, bathroom tissue")
    assert imagenet.class_names(1001)[:2] == ["background", "tench, Tinca tinca"]
    with pytest.raises(ValueError, match="1000 or 1001 .* got 10"):
        imagenet.class_names(10)


def test_preprocessing_crops_the_centre_and_maps_pixels_to_minus_one_one():
    # A 5 % frame lies outside the central 87.5 %: nothing of it survives either recipe.
    tf_input = TF_SLIM(framed((400, 300), 15))
    assert tf_input.shape == (224, 224, 3) and np.allclose(tf_input, BLUE, atol=1e-6)
    timm_input = TIMM(framed((300, 400), 15))
    assert timm_input.shape == (224, 224, 3) and np.allclose(timm_input, BLUE, atol=1e-6)
    full = Preprocessing(size=64, crop_fraction=1.0)(framed((64, 64), 8))
    assert np.allclose(full[0, 0], [1, -1, -1]) and np.allclose(full[32, 32], BLUE)
    with pytest.raises(ValueError, match="resize must be one of"):
        Preprocessing(resize="stretch")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    return timm_state.write_safetensors(str(tmp_path_factory.mktemp("w") / "random.safetensors"), 0.25, seed=5)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(200, 150), (120, 260)]):
        path = str(folder / f"image{i}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8)).save(path)
        paths.append(path)
    return paths


def test_top_k_is_the_softmax_of_the_models_logits(weights_file, image_files):
    loaded = pretrained.load_pretrained(weights_file)
    images = [Image.open(p).convert("RGB") for p in image_files]
    result = classify.top_k(loaded, images, k=5)
    batch = np.stack([loaded.preprocessing(image) for image in images])
    probabilities = np.asarray(jax.nn.softmax(jax.jit(loaded.model.apply)(loaded.variables, batch)))
    names = imagenet.class_names()
    for labels, p in zip(result, probabilities):
        best = np.argsort(-p)[:5]
        assert [name for name, _ in labels] == [names[i] for i in best]
        np.testing.assert_allclose([q for _, q in labels], p[best], rtol=1e-5)


def test_command_prints_top5_per_image(weights_file, image_files, capsys):
    assert classify.main([*image_files, "--weights", weights_file]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image_files[0] and lines[6] == image_files[1] and len(lines) == 12
    probabilities = [float(line.split("%")[0]) for line in lines[1:6]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100.01
    assert all(line.split("%  ", 1)[1] in imagenet.class_names() for line in lines[1:6])


def test_module_runs_as_a_command(weights_file, image_files):
    done = subprocess.run([sys.executable, "-m", "mobilenet_jax.classify", image_files[0], "--weights", weights_file,
                           "--top", "3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4


def one_line_exit(capsys, argv: list[str]) -> str:
    """The one stderr line of `classify.main(argv)`, which must exit with status 2 and print nothing else."""
    with pytest.raises(SystemExit) as exit_info:
        classify.main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


def test_unreadable_images_are_named_in_one_line_before_any_weights_load(image_files, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder").mkdir()
    # No weights are read: the reference names nothing, and the images are refused first.
    argv = [image_files[0], str(tmp_path / "missing.jpg"), str(tmp_path / "notes.png"), str(tmp_path / "folder"),
            "--weights", str(tmp_path / "nowhere.msgpack")]
    err = one_line_exit(capsys, argv)
    assert "3 of 4 images cannot be classified" in err and "nothing was classified" in err
    for problem in ("missing.jpg does not exist", "notes.png is not an image", "folder is a folder"):
        assert problem in err


def test_a_bad_weights_reference_or_flag_is_one_line(image_files, tmp_path, capsys):
    assert "'no_such_weights' is neither a registered name" in one_line_exit(
        capsys, [image_files[0], "--weights", "no_such_weights"])
    assert "--top must be >= 1, got 0" in one_line_exit(capsys, [image_files[0], "--top", "0"])
    assert "--image-size must be between 32" in one_line_exit(capsys, [image_files[0], "--image-size", "4096"])
    assert "invalid choice: 'imagenet2'" in one_line_exit(capsys, [image_files[0], "--normalization", "imagenet2"])


@pytest.fixture(scope="module")
def bare_model_file(weights_file, tmp_path_factory) -> str:
    """The random timm weights as a model file that records no preprocessing."""
    from mobilenet_jax import weights

    loaded = pretrained.load_pretrained(weights_file)
    path = str(tmp_path_factory.mktemp("bare") / "model.msgpack")
    weights.save_model(path, loaded.model, loaded.variables)
    return path


def test_a_model_file_without_preprocessing_asks_for_the_flags_and_takes_them(bare_model_file, image_files, capsys):
    err = one_line_exit(capsys, [image_files[0], "--weights", bare_model_file])
    assert "model.msgpack records no preprocessing" in err
    assert "--image-size N --normalization imagenet|inception|half" in err and "preprocessing=" not in err
    assert "--image-size N" in one_line_exit(capsys, [image_files[0], "--weights", bare_model_file, "--image-size", "64"])
    argv = [image_files[0], "--weights", bare_model_file, "--image-size", "64", "--normalization", "half", "--top", "2"]
    assert classify.main(argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_a_run_workdir_is_classified_at_its_recorded_size(bare_model_file, image_files, tmp_path, capsys):
    from mobilenet_jax import weights
    from mobilenet_jax.interop.preprocessing import for_run

    model, variables = weights.load_model(bare_model_file)
    weights.save_model(str(tmp_path / weights.MODEL_FILE), model, variables, preprocessing=for_run(48, "half", 0))
    assert classify.main([image_files[0], "--weights", str(tmp_path), "--top", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
