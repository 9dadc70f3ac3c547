"""scikit-learn's 8x8 digits as a `Source`: offline, in memory, with a fixed stratified test set."""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
from sklearn import datasets as sklearn_datasets

from mobilenet_jax.data.in_memory import array_part, held_out
from mobilenet_jax.data.protocol import Augment, Source
from mobilenet_jax.data.spec import DatasetInfo

DIGITS_NUM_TEST = 360
# Digits fill their 8x8 frame: crop mildly, never flip, evaluate on the whole image.
DIGITS_CROP_MIN_AREA = 0.6


def digits_source(image_size: int) -> Source:
    """scikit-learn's 1,797 8x8 digits with a fixed stratified test set of 360."""
    train, test = digits_arrays()
    info = DatasetInfo(
        num_classes=10,
        num_train_examples=len(train[1]),
        num_eval_examples=len(test[1]),
        class_names=tuple(str(digit) for digit in range(10)),
        eval_split="test",
    )
    augment = Augment(crop_min_area=DIGITS_CROP_MIN_AREA, flip=False, eval_crop_padding=0)
    load = functools.partial(_upsample_gray, image_size=image_size)
    return Source(info, augment, functools.partial(array_part, train, test, load))


@functools.cache
def digits_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)): uint8 [N, 8, 8, 1] in 0..255, int32."""
    digits = sklearn_datasets.load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return held_out(images, digits.target.astype(np.int32), DIGITS_NUM_TEST)


def _upsample_gray(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """A small grayscale image as float32 RGB, upsampled bilinearly to the model resolution."""
    # Upsampling before the crop keeps crop offsets finer than the 8x8 pixel grid.
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.image.grayscale_to_rgb(resized)
