"""Single-image preprocessing: normalisation, the eval crop, seeded random crops and flips."""

from __future__ import annotations


import numpy as np
import pytest
import tensorflow as tf

from data_helpers import (
    SIZE,
    smooth_image,
)
from mobilenet_jax.data import preprocess


def test_normalize_images_known_pixels():
    pixels = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    imagenet = preprocess.normalize_images(pixels, "imagenet")
    np.testing.assert_allclose(
        imagenet[0, 0], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6
    )
    np.testing.assert_allclose(
        imagenet[0, 1], [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225], rtol=1e-6
    )
    for convention in ("inception", "half"):
        np.testing.assert_allclose(
            preprocess.normalize_images(pixels, convention)[0], [[-1] * 3, [1] * 3]
        )
    assert preprocess.normalize_images(np.full(3, 127.5), "inception").tolist() == [0, 0, 0]
    assert preprocess.normalize_images(pixels, "half").dtype == np.float32
    with pytest.raises(ValueError, match="normalization must be one of.*'caffe'"):
        preprocess.normalize_images(pixels, "caffe")


@pytest.mark.parametrize(
    "height, width, size, offset, side",
    [
        (256, 320, 224, (16, 48), 224),  # 224/256 of the shorter side: the crop needs no resize
        (255, 321, 64, (43, 76), 170),  # int(64/96 * 255) = 170; odd margins round up
    ],
)
def test_preprocess_for_eval_is_the_center_crop(height, width, size, offset, side):
    image = smooth_image(height, width)
    # Without chroma subsampling decode_and_crop_jpeg equals decode-then-slice bit for bit; with
    # it, libjpeg's fancy upsampling differs on the crop's left and right edge columns.
    encoded = tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False)
    decoded = tf.io.decode_jpeg(encoded, channels=3)
    crop = decoded[offset[0] : offset[0] + side, offset[1] : offset[1] + side]
    got = preprocess.preprocess_for_eval(encoded, size).numpy()
    assert got.shape == (size, size, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, resized(crop, size))
    # PNG goes through the full-decode branch and is lossless: compare with the raw pixels.
    from_png = preprocess.preprocess_for_eval(tf.io.encode_png(image), size)
    raw = image[offset[0] : offset[0] + side, offset[1] : offset[1] + side]
    np.testing.assert_array_equal(from_png.numpy(), resized(raw, size))
    pixels = preprocess.as_pixels(got, "uint8").numpy()
    assert pixels.dtype == np.uint8 and np.abs(pixels - got).max() <= 0.5  # rounded to nearest


def resized(image, size: int) -> np.ndarray:
    """The antialiased bilinear resize (torchvision's and PIL's) as float32."""
    return tf.image.resize(image, [size, size], method="bilinear", antialias=True).numpy()


def test_random_crop_window_stays_inside_and_in_range():
    shape = tf.constant([300, 400, 3])
    windows = np.array(
        [
            preprocess._random_crop_window(shape, tf.constant([seed, 7]), 0.08, 224, 32).numpy()
            for seed in range(200)
        ]
    )
    y, x, height, width = windows.T
    assert (y >= 0).all() and (x >= 0).all()
    assert (y + height <= 300).all() and (x + width <= 400).all()
    area = height * width / (300 * 400)
    assert area.min() >= 0.08 - 1e-3 and area.max() <= 1
    aspect = width / height
    assert aspect.min() >= 0.75 - 0.02 and aspect.max() <= 4 / 3 + 0.02
    assert len({tuple(window) for window in windows}) > 150  # the seed really moves the crop


def test_preprocess_for_train_shape_determinism_and_flip():
    encoded = tf.io.encode_jpeg(smooth_image(300, 400))
    first = preprocess.preprocess_for_train(encoded, tf.constant([1, 2]), 96)
    assert first.shape == (96, 96, 3) and first.dtype == tf.float32
    np.testing.assert_array_equal(
        first, preprocess.preprocess_for_train(encoded, tf.constant([1, 2]), 96)
    )
    assert not np.array_equal(first, preprocess.preprocess_for_train(encoded, tf.constant([1, 3]), 96))
    # Dark left half, bright right half: a flip shows as a brighter left column.
    halves = np.zeros((64, 64, 3), np.uint8)
    halves[:, 32:] = 255

    def flipped(seed: int, flip: bool) -> bool:
        out = preprocess.preprocess_for_train(
            tf.constant(halves), tf.constant([seed, 0]), SIZE, crop_min_area=0.9, flip=flip
        ).numpy()
        return bool(out[:, 0].mean() > out[:, -1].mean())

    flips = [flipped(seed, True) for seed in range(20)]
    assert 0 < sum(flips) < 20
    assert not any(flipped(seed, False) for seed in range(20))
