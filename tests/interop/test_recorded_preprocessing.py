"""Model files: what they record beside them (preprocessing, fields) and how a bad one is named; a
training run's preprocessing is the data pipeline's evaluation."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
from PIL import Image

from mobilenet_jax import weights
from mobilenet_jax.interop import pretrained
from mobilenet_jax.interop.preprocessing import TIMM, Preprocessing, for_run, normalization_of
from mobilenet_jax.model import MobileNetV1


def smooth_image(width: int, height: int) -> np.ndarray:
    """An (height, width, 3) uint8 image of smooth colour gradients with a bright square off centre."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels[height // 3: height // 2, width // 4: width // 2] = 250
    return pixels.astype(np.uint8)


@pytest.mark.parametrize("size, crop_padding, width, height", [(32, 0, 8, 8), (48, 16, 96, 60), (64, 32, 70, 110)])
def test_a_runs_preprocessing_is_the_pipelines_evaluation(size, crop_padding, width, height):
    from mobilenet_jax.data.preprocess import normalize_images, preprocess_for_eval

    image = smooth_image(width, height)
    expected = normalize_images(preprocess_for_eval(image, size, crop_padding=crop_padding), "inception").numpy()
    recipe = for_run(size, "inception", crop_padding)
    got = recipe(image)
    assert got.shape == (size, size, 3) and normalization_of(recipe) in ("inception", "half")
    # Pillow and TensorFlow resample a little differently; a crop of each side (TF-Slim's) or a
    # crop off by a pixel would differ by far more where the bright square's edges fall.
    assert np.abs(got - expected).max() < 0.02, np.abs(got - expected).max()
    with pytest.raises(ValueError, match="normalization must be one of"):
        for_run(size, "imagenet2", crop_padding)


@functools.cache
def tiny_model() -> tuple[MobileNetV1, dict]:
    """An alpha-0.25 model of 3 classes and variables of its shapes (ones: nothing here runs it)."""
    model = MobileNetV1(alpha=0.25, num_classes=3)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)))
    return model, jax.tree.map(lambda leaf: np.ones(leaf.shape, leaf.dtype), shapes)


def test_a_model_file_records_its_preprocessing_and_drops_a_stale_one(tmp_path):
    model, variables = tiny_model()
    path = str(tmp_path / "m.msgpack")
    recipe = for_run(40, "imagenet", 8)
    weights.save_model(path, model, variables, ("a", "b", "c"), preprocessing=recipe)
    assert weights.load_preprocessing(path) == recipe
    assert pretrained.load_pretrained(path).preprocessing == recipe  # no config.json needed
    weights.save_model(path, model, variables)  # another model at the same path records none
    assert weights.load_preprocessing(path) is None and weights.load_class_names(path) is None
    (tmp_path / "m.msgpack.preprocessing.json").write_text('{"size": 32, "zoom": 2}')
    with pytest.raises(ValueError, match=r"m.msgpack.preprocessing.json is no preprocessing record \(unknown .*zoom"):
        weights.load_preprocessing(path)


def test_save_pretrained_writes_through_save_model(tmp_path):
    model, variables = tiny_model()
    path = str(tmp_path / "saved.msgpack")
    pretrained.save_pretrained(path, pretrained.Pretrained(model, variables, TIMM))
    assert weights.load_preprocessing(path) == TIMM


@pytest.mark.parametrize("dataset, crop_fraction", [("digits", 1.0), ("imagenet2012", 32 / 64)])
def test_a_run_written_before_model_files_recorded_preprocessing_falls_back_to_its_config(
    tmp_path, dataset, crop_fraction
):
    model, variables = tiny_model()
    weights.save_model(str(tmp_path / weights.MODEL_FILE), model, variables)
    config = {"dataset": dataset, "image_size": 32, "normalization": "inception"}
    (tmp_path / weights.CONFIG_FILE).write_text(json.dumps(config))
    recipe = pretrained.load_pretrained(str(tmp_path)).preprocessing
    assert recipe == for_run(32, "inception", 0 if dataset == "digits" else 32)
    assert (recipe.size, recipe.crop_fraction, recipe.resize) == (32, crop_fraction, "square_crop_then_resize")
    framed = np.full((64, 64, 3), 255, np.uint8)
    framed[16:48, 16:48] = 0  # a black centre: a whole-image crop keeps the white frame
    assert (recipe(Image.fromarray(framed)).max() > 0) == (dataset == "digits")


def test_preprocessing_json_round_trips():
    recipe = Preprocessing(size=96, crop_fraction=0.9, interpolation="bicubic", resize="resize_then_crop")
    assert Preprocessing.from_json(json.loads(json.dumps(recipe.to_json()))) == recipe


def test_load_model_names_a_missing_file_a_folder_and_missing_fields(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^model file {tmp_path / 'none.msgpack'} does not exist$"):
        weights.load_model(str(tmp_path / "none.msgpack"))
    with pytest.raises(IsADirectoryError, match=f"^{tmp_path} is a directory, not a model file; pass a model file"):
        weights.load_model(str(tmp_path))
    model, variables = tiny_model()
    weights.save_model(str(tmp_path / weights.MODEL_FILE), model, variables)
    with pytest.raises(IsADirectoryError, match=f"is a directory, not a model file; pass {tmp_path / weights.MODEL_FILE}$"):
        weights.load_model(str(tmp_path))
    (tmp_path / "lone.msgpack").write_bytes((tmp_path / weights.MODEL_FILE).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"lone.msgpack has no fields beside it \(.*lone.msgpack.json is missing\)"):
        weights.load_model(str(tmp_path / "lone.msgpack"))
    (tmp_path / "lone.msgpack.json").write_text('{"alpha": 0.25, "depth": 3}')
    with pytest.raises(ValueError, match=r"lone.msgpack.json holds no model fields \(.*depth"):
        weights.load_model(str(tmp_path / "lone.msgpack"))
