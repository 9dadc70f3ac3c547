"""What the input-pipeline benchmark's child processes measure: the training iterator, the
preprocessing stage by stage, and the host-to-device copy of a batch.

Each runs in a process of its own (`input_pipeline.run_child`), importing `mobilenet_jax` from the
code tree under test.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from benchmarks.photos import DATASET

NORMALIZATION = "imagenet"


def measure_pipeline(data_dir: str, image_size: int, batch: int, warmup: int, batches: int) -> dict[str, Any]:
    """Images/s of the training iterator of the importable `mobilenet_jax`, after `warmup` (>= 1) batches."""
    import mobilenet_jax
    from mobilenet_jax.data.pipeline import create_train_iterator
    from mobilenet_jax.data.spec import DataSpec

    spec = DataSpec(dataset=DATASET, data_dir=data_dir, image_size=image_size, batch_size=batch)
    iterator = create_train_iterator(spec, seed=0, process_index=0, process_count=1)
    first = next(iterator)
    for _ in range(warmup - 1):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    cores = len(os.sched_getaffinity(0))
    rate = batches * batch / seconds
    return {
        "package": str(pathlib.Path(mobilenet_jax.__file__).parent),
        "cores": cores,
        "dtype": str(first["image"].dtype),
        "bytes_per_image": sum(value.nbytes for value in first.values()) / batch,
        "image_bytes": first["image"].nbytes / batch,
        "images": batches * batch,
        "seconds": seconds,
        "images_per_s": rate,
        "per_core": rate / cores,
    }


def _one_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` on a private pool of one thread, without intra-op parallelism."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def _seconds_per_image(dataset: tf.data.Dataset, count: int) -> float:
    """Seconds per element of one pass over `dataset`, consumed in TensorFlow, after a short warm-up."""
    consume = lambda d: d.reduce(tf.constant(0, tf.int64), lambda total, x: total + tf.size(x, tf.int64))  # noqa: E731
    consume(dataset.take(16))
    start = time.perf_counter()
    consume(dataset)
    return (time.perf_counter() - start) / count


def measure_stages(data_dir: str, image_size: int, images: int, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per image of each step of the training preprocessing on one thread, in each of
    `repeats` passes, the steps taking turns."""
    from mobilenet_jax.data import preprocess

    builder = tfds.builder(DATASET, data_dir=data_dir)
    records = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    total = builder.info.splits["train"].num_examples
    passes: dict[str, Callable[[], float]] = {
        "read and parse a record": lambda: _seconds_per_image(_one_thread(records.map(lambda ex: ex["image"])), total)
    }
    jpegs = [jpeg for jpeg in records.map(lambda ex: ex["image"]).take(images).as_numpy_iterator()]
    keyed = tf.data.Dataset.from_tensor_slices((jpegs, tf.range(len(jpegs), dtype=tf.int64)))

    def seed(index: tf.Tensor) -> tf.Tensor:
        return tf.stack([tf.constant(0, tf.int64), index])

    def crop(jpeg: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        """The training crop window (same sampler settings as `preprocess`), decoded alone."""
        shape = tf.image.extract_jpeg_shape(jpeg)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]), seed=seed(index),
            min_object_covered=0.0, aspect_ratio_range=preprocess.CROP_ASPECT_RANGE, area_range=(0.08, 1.0),
            max_attempts=preprocess.CROP_MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True,
        )
        return tf.image.decode_and_crop_jpeg(jpeg, tf.concat([begin[:2], size[:2]], 0), channels=3)

    def train(jpeg: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        return preprocess.preprocess_for_train(jpeg, seed(index), image_size)

    def train_float32(jpeg: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        return preprocess.normalize_images(train(jpeg, index), NORMALIZATION)

    steps: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
        "decode the whole JPEG": lambda jpeg, index: tf.io.decode_jpeg(jpeg, channels=3),
        "decode the training crop window only": crop,
        "preprocess_for_train: crop, resize, round to uint8, flip": train,
        "... then normalise to float32 (as e402558 yielded)": train_float32,
    }
    for name, step in steps.items():
        passes[name] = lambda step=step: _seconds_per_image(_one_thread(keyed.map(step)), len(jpegs))
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, one_pass in passes.items():
            seconds[name].append(one_pass())
    return {name: [1e3 * value for value in values] for name, values in seconds.items()}


def measure_transfer(batch: int, image_size: int, repeats: int) -> list[dict[str, Any]]:
    """Host-to-device copies of one batch of images, uint8 and float32, onto a mesh of all devices."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    from mobilenet_jax.data.spec import normalize

    pixels = np.random.default_rng(0).integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    batches = {"uint8": pixels, "float32": normalize(pixels.astype(np.float32), NORMALIZATION)}
    seconds: dict[str, list[float]] = {name: [] for name in batches}
    for round_index in range(repeats + 1):  # round 0 warms up
        for name, array in batches.items():
            start = time.perf_counter()
            jax.make_array_from_process_local_data(sharding, array).block_until_ready()
            if round_index:
                seconds[name].append(time.perf_counter() - start)
    results = []
    for name, array in batches.items():
        median = statistics.median(seconds[name])
        results.append({
            "dtype": name, "devices": jax.device_count(), "megabytes": array.nbytes / 1e6, "median_ms": 1e3 * median,
            "min_ms": 1e3 * min(seconds[name]), "mb_per_s": array.nbytes / 1e6 / median,
            "images_per_s": batch / median,
        })
    return results
