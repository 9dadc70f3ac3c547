"""Batches from a `Source`: per-process sharding, seeded epochs, exact resume, padded evaluation.

Every source goes through the same tf.data pipeline, so this is written once:

- Each process yields batches of `batch_size // process_count`, its slice of the global batch.
- TFDS training data: each process reads its own even share of the split (the
  `tfds.even_splits` rule: the first `n % process_count` processes hold one extra example), so
  no file is read twice, and global batches depend on the process count.
- In-memory training data (digits, image folders): every process walks the same global stream
  and keeps its slice of each global batch (reading only those images), so global batches are
  the same for any process count: a run on 2 hosts x 2 devices sees what 1 host x 4 devices sees.
- Training repeats forever. Epoch `e` reads the files in an order seeded by (seed, e) and
  shuffles the records with a second seed from (seed, e), so no two epochs share an order even
  when the shuffle buffer is far smaller than an epoch. With `cache`, the first read is kept in
  memory and every epoch shuffles all of it. The augmentation of the example at stream position
  `i` is keyed by (seed, stream, i) (stream: the process index for per-process shares, else 0),
  so any step can be rebuilt without replaying the ones before it.
- Evaluation is finite, sees every example of the split exactly once across all processes, and
  pads with masked zeros so every process yields the same number of equally shaped batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax.data.preprocess import preprocess_for_eval, preprocess_for_train
from mobilenet_jax.data.sources import Part, Source, open_source
from mobilenet_jax.data.spec import DatasetInfo, DataSpec

Batch = dict[str, np.ndarray]


def train_batches(
    source: Source, spec: DataSpec, *, seed: int, process_index: int, process_count: int, start_step: int = 0
) -> Iterator[Batch]:
    """Endless augmented batches {"image": uint8 [B, S, S, 3], "label": i32 [B]} for this process.

    B = spec.batch_size // process_count. The stream is a function of `seed` alone, and
    `start_step=k` yields exactly what a fresh iterator yields after k batches. Resuming costs
    reading (not decoding) at most one epoch of this process's records, to refill the shuffle.
    """
    local_batch = _local_batch_size(spec.batch_size, process_count, "batch_size")
    _check_process_index(process_index, process_count)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    part = source.part(True, process_index, process_count)
    if part.count == 0:
        raise ValueError(
            f"process {process_index} of {process_count} got no training examples: the train "
            f"split has too few for {process_count} processes; use a larger split"
        )
    examples, stream = _train_stream(part, spec, seed, process_index, local_batch, start_step)
    example_seed = tf.constant([seed, stream], tf.int64)
    augment = source.augment

    def train_example(index: tf.Tensor, record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = preprocess_for_train(
            part.load(record["image"]),
            tf.random.experimental.stateless_fold_in(example_seed, index),
            spec.image_size,
            crop_min_area=augment.crop_min_area,
            flip=augment.flip,
            crop_padding=augment.eval_crop_padding,
        )
        return {"image": image, "label": record["label"]}

    batches = examples.map(train_example, num_parallel_calls=tf.data.AUTOTUNE)
    return _as_numpy(batches.batch(local_batch, drop_remainder=True), spec.prefetch)


def eval_batches(source: Source, spec: DataSpec, *, process_index: int, process_count: int) -> Iterator[Batch]:
    """One pass over the eval split: {"image": uint8, "label", "mask": bool [B]} batches, padded.

    B = spec.eval_batch_size // process_count. Every process yields the same number of
    batches; padding examples are zero images with label 0 and mask False, so the True masks of
    all processes together count each example of the split exactly once.
    """
    local_batch = _local_batch_size(spec.eval_batch_size, process_count, "eval_batch_size")
    _check_process_index(process_index, process_count)
    part = source.part(False, process_index, process_count)
    size = spec.image_size

    def eval_example(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = preprocess_for_eval(part.load(record["image"]), size, crop_padding=source.augment.eval_crop_padding)
        return {"image": image, "label": record["label"], "mask": tf.constant(True)}

    num_batches = -(-part.max_count // local_batch)
    padding = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros([size, size, 3], tf.uint8),
            "label": tf.constant(0, tf.int32),
            "mask": tf.constant(False),
        }
    ).repeat(num_batches * local_batch - part.count)
    examples = part.read(None).map(eval_example, num_parallel_calls=tf.data.AUTOTUNE)
    batches = examples.concatenate(padding).batch(local_batch, drop_remainder=True)
    return _as_numpy(batches, spec.prefetch)


def _train_stream(
    part: Part, spec: DataSpec, seed: int, process_index: int, local_batch: int, start_step: int
) -> tuple[tf.data.Dataset, int]:
    """This process's (stream position, record) pairs from step `start_step`, and the stream id."""
    cache = spec.cache
    if not part.whole:
        return _epochs(part, seed, start_step * local_batch, cache), process_index
    examples = _epochs(part, seed, start_step * spec.batch_size, cache)
    # Filtering before decoding: each process decodes only its own slice.
    mine = examples.filter(lambda index, _: index % spec.batch_size // local_batch == process_index)
    return mine, 0


def _epochs(part: Part, seed: int, start: int, cache: bool) -> tf.data.Dataset:
    """Endless (global index, record) pairs, from `start`; epoch e's file order and shuffle are
    seeded by (seed, e) alone."""
    first_epoch, offset = divmod(start, part.count)
    # The cache holds the share in its stored file order: the shuffle must then cover all of it.
    cached = part.read(None).cache() if cache else None
    buffer = part.count if cache else part.shuffle_buffer

    def epoch(index: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), index])
        shuffle_seed = tf.random.stateless_uniform([], seed=epoch_seed, minval=None, dtype=tf.int64)
        file_seed = tf.random.stateless_uniform(
            [], seed=tf.random.experimental.stateless_fold_in(epoch_seed, 1), minval=None, dtype=tf.int64
        )
        records = part.read(file_seed) if cached is None else cached
        return records.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

    examples = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
    # Skipping before decoding keeps a resume cheap: skipped records are read, never decoded.
    return examples.enumerate(start=first_epoch * part.count).skip(offset)


def _as_numpy(batches: tf.data.Dataset, prefetch: int) -> Iterator[Batch]:
    """Deterministic, prefetched numpy iterator over `batches`."""
    options = tf.data.Options()
    options.deterministic = True
    # Parallel map already fills the cores; intra-op threads would only contend with it.
    options.threading.max_intra_op_parallelism = 1
    return iter(tfds.as_numpy(batches.with_options(options).prefetch(prefetch or tf.data.AUTOTUNE)))


def _local_batch_size(global_batch: int, process_count: int, field: str) -> int:
    """Per-process batch size, or a ValueError when the global batch does not divide evenly."""
    if global_batch < process_count or global_batch % process_count:
        raise ValueError(
            f"{field}={global_batch} must be a positive multiple of process_count={process_count}; "
            f"use e.g. {field}={max(1, round(global_batch / process_count)) * process_count}"
        )
    return global_batch // process_count


def _check_process_index(process_index: int, process_count: int) -> None:
    """Rejects a process index outside [0, process_count)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")


def create_train_iterator(spec: DataSpec, **kwargs: Any) -> Iterator[Batch]:
    """`train_batches` of the dataset of `spec`, opened for this iterator alone."""
    return train_batches(open_source(spec), spec, **kwargs)


def create_eval_iterator(spec: DataSpec, **kwargs: Any) -> Iterator[Batch]:
    """`eval_batches` of the dataset of `spec`, opened for this iterator alone."""
    return eval_batches(open_source(spec), spec, **kwargs)


def get_dataset_info(spec: DataSpec) -> DatasetInfo:
    """Class count, split sizes and class names of the dataset of `spec` (opened as by `open_source`)."""
    return open_source(spec).info
