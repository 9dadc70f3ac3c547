"""Preprocessing of single images in TensorFlow: crops fused with JPEG decoding, resize, flip.

Images are resized bilinearly with antialiasing (the torchvision / PIL behaviour), for training
and evaluation alike, to float32 on the 0..255 scale. `as_pixels` rounds them to uint8 for the
trip to the devices (a quarter of float32's bytes), which normalise them (`normalize_images`
here, `spec.normalize` inside a jitted step).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from mobilenet_jax.data.spec import EVAL_CROP_PADDING, normalize

CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_MAX_ATTEMPTS = 10


def normalize_images(images: Any, convention: str) -> Any:
    """Maps 0..255 RGB images (numpy or TF; uint8 or float) to the model's input range, as float32."""
    images = tf.cast(images, tf.float32) if isinstance(images, tf.Tensor) else np.asarray(images, np.float32)
    return normalize(images, convention)


def as_pixels(image: tf.Tensor, dtype: str) -> tf.Tensor:
    """A 0..255 float image as the pipeline sends it: "uint8" rounds to nearest (as PIL stores a
    resized image), "float32" keeps it as it is."""
    if dtype == "float32":
        return image
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def preprocess_for_train(
    image: tf.Tensor,
    rng_seed: tf.Tensor,
    image_size: int,
    *,
    crop_min_area: float = 0.08,
    flip: bool = True,
    crop_padding: int = EVAL_CROP_PADDING,
) -> tf.Tensor:
    """Inception-style random crop (fused with JPEG decoding), resize and flip: float32 [S, S, 3], 0..255.

    `image` is an encoded image string (JPEG decodes only the crop; PNG and others decode fully)
    or a decoded HWC tensor. `rng_seed` is a stateless seed of shape [2]: the output is a pure
    function of it. When no crop in the area range fits, the eval center crop (`crop_padding`,
    see preprocess_for_eval) is used instead.
    """
    keep_tensorflow_off_accelerators()
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(rng_seed, 2))
    window_fn = functools.partial(
        _random_crop_window,
        seed=crop_seed,
        min_area=crop_min_area,
        image_size=image_size,
        crop_padding=crop_padding,
    )
    image = _resize(_crop(image, window_fn), image_size)
    return tf.image.stateless_random_flip_left_right(image, flip_seed) if flip else image


def preprocess_for_eval(
    image: tf.Tensor,
    image_size: int,
    *,
    crop_padding: int = EVAL_CROP_PADDING,
) -> tf.Tensor:
    """Center crop of image_size / (image_size + crop_padding) of the shorter side, resized:
    float32 [S, S, 3], 0..255."""
    keep_tensorflow_off_accelerators()
    window_fn = functools.partial(
        _center_crop_window, image_size=image_size, crop_padding=crop_padding
    )
    return _resize(_crop(image, window_fn), image_size)


def _crop(image: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Crops an encoded or decoded image to the [y, x, height, width] that window_fn picks."""
    if image.dtype != tf.string:
        y, x, height, width = tf.unstack(window_fn(tf.shape(image)))
        return tf.slice(image, [y, x, 0], [height, width, -1])

    def jpeg() -> tf.Tensor:
        window = window_fn(tf.image.extract_jpeg_shape(image))
        return tf.image.decode_and_crop_jpeg(image, window, channels=3)

    def other() -> tf.Tensor:
        decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
        return _crop(decoded, window_fn)

    return tf.cond(tf.io.is_jpeg(image), jpeg, other)


def _center_crop_window(shape: tf.Tensor, image_size: int, crop_padding: int) -> tf.Tensor:
    """The centered square [y, x, side, side], side = shorter * image_size / (size + padding)."""
    height, width = shape[0], shape[1]
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(image_size / (image_size + crop_padding) * shorter, tf.int32)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def _random_crop_window(
    shape: tf.Tensor, seed: tf.Tensor, min_area: float, image_size: int, crop_padding: int
) -> tf.Tensor:
    """A random window of area in (min_area, 1) and aspect in (3/4, 4/3), else the eval crop."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RANGE,
        area_range=(min_area, 1.0),
        max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    # The op answers with the whole image when all attempts miss.
    missed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    sampled = tf.concat([begin[:2], size[:2]], axis=0)
    return tf.cond(
        missed, lambda: _center_crop_window(shape, image_size, crop_padding), lambda: sampled
    )


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear antialiased resize to a float32 [image_size, image_size, 3] image."""
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(resized, [image_size, image_size, 3])


@functools.cache
def keep_tensorflow_off_accelerators() -> None:
    """Keeps TensorFlow off GPUs and TPUs, whose memory belongs to JAX; call before other TF use."""
    for kind in ("GPU", "TPU"):
        if not tf.config.list_physical_devices(kind):
            continue
        try:
            tf.config.set_visible_devices([], kind)
        except RuntimeError:
            logging.warning(
                "TensorFlow was initialised before the data pipeline and may hold %s memory; "
                "build the data iterators before other TensorFlow use (e.g. summary writers)",
                kind,
            )

