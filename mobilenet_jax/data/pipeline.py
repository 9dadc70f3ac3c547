"""Batches from a `Source`: per-process sharding, seeded epochs, exact resume, padded evaluation.

Every source goes through the same tf.data pipeline, so this is written once:

- Each process yields batches of `batch_size // process_count`, its slice of the global batch.
- TFDS training data: each process reads its own even share of the split (the
  `tfds.even_splits` rule: the first `n % process_count` processes hold one extra example), so
  no file is read twice, and global batches depend on the process count.
- In-memory training data (digits, image folders): every process walks the same global stream
  and keeps its slice of each global batch (reading only those images), so global batches are
  the same for any process count: a run on 2 hosts x 2 devices sees what 1 host x 4 devices sees.
- Training repeats forever. Epoch `e` puts the share's files in an order seeded by (seed, e) and
  cuts that order into groups of whole files, each holding about half of `shuffle_buffer`
  records (at least one file); each group is read whole and shuffled in full with a seed from
  (seed, e) and the group. Every epoch is thus a permutation of the share, and no two epochs
  share an order. The next group is read while the current one is used, so about
  `shuffle_buffer` records are held (more only where one file holds more). With `cache`, the
  first read is kept in memory and every epoch shuffles all of it; in-memory items count as one
  file, shuffled whole every epoch.
- Resume is exact and its cost does not grow with the position: the per-file counts place a
  stream position in (epoch, group, offset), so `start_step` reads (without decoding) only the
  group it falls in, as much as a fresh start reads. The augmentation of the example at stream
  position `i` is keyed by (seed, stream, i) (stream: the process index for per-process shares,
  else 0), so any step can be rebuilt without replaying the ones before it.
- A run may resume on another process count. In-memory data then continues its global stream
  exactly. TFDS shares are cut anew: each process starts at the resumed step's position in its
  new share, so the epoch in progress may repeat some examples and miss others; the following
  epochs are again permutations of the split.
- Evaluation is finite, sees every example of the split exactly once across all processes, and
  pads with masked zeros so every process yields the same number of equally shaped batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mobilenet_jax.data.preprocess import as_pixels, preprocess_for_eval, preprocess_for_train
from mobilenet_jax.data.protocol import Part, Source
from mobilenet_jax.data.sources import open_source
from mobilenet_jax.data.spec import DatasetInfo, DataSpec

Batch = dict[str, np.ndarray]


def train_batches(
    source: Source, spec: DataSpec, *, seed: int, process_index: int, process_count: int, start_step: int = 0
) -> Iterator[Batch]:
    """Endless augmented batches {"image": [B, S, S, 3] of spec.input_dtype, "label": i32 [B]} for this process.

    B = spec.batch_size // process_count. The stream is a function of `seed` alone, and
    `start_step=k` yields exactly what a fresh iterator yields after k batches, reading (not
    decoding) at most one shuffle group of records before its first batch, whatever k.
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
        return {"image": as_pixels(image, spec.input_dtype), "label": record["label"]}

    batches = examples.map(train_example, num_parallel_calls=tf.data.AUTOTUNE)
    return _as_numpy(batches.batch(local_batch, drop_remainder=True), spec.prefetch)


def eval_batches(source: Source, spec: DataSpec, *, process_index: int, process_count: int) -> Iterator[Batch]:
    """One pass over the eval split: {"image": spec.input_dtype, "label", "mask": bool [B]} batches, padded.

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
        return {"image": as_pixels(image, spec.input_dtype), "label": record["label"], "mask": tf.constant(True)}

    num_batches = -(-part.max_count // local_batch)
    padding = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros([size, size, 3], spec.input_dtype),
            "label": tf.constant(0, tf.int32),
            "mask": tf.constant(False),
        }
    ).repeat(num_batches * local_batch - part.count)
    examples = part.read_all().map(eval_example, num_parallel_calls=tf.data.AUTOTUNE)
    batches = examples.concatenate(padding).batch(local_batch, drop_remainder=True)
    return _as_numpy(batches, spec.prefetch)


def _train_stream(
    part: Part, spec: DataSpec, seed: int, process_index: int, local_batch: int, start_step: int
) -> tuple[tf.data.Dataset, int]:
    """This process's (stream position, record) pairs from step `start_step`, and the stream id."""
    buffer, cache = spec.shuffle_buffer, spec.cache
    if not part.whole:
        return _epochs(part, seed, start_step * local_batch, buffer, cache), process_index
    examples = _epochs(part, seed, start_step * spec.batch_size, buffer, cache)
    # Filtering before decoding: each process decodes only its own slice.
    mine = examples.filter(lambda index, _: index % spec.batch_size // local_batch == process_index)
    return mine, 0


def _epochs(part: Part, seed: int, start: int, shuffle_buffer: int, cache: bool) -> tf.data.Dataset:
    """Endless (stream position, record) pairs from position `start`, in groups of files shuffled
    whole (see the module docstring); epoch e's file order and shuffles depend on (seed, e) alone."""
    num_files = len(part.file_counts)
    group_size = max(1, shuffle_buffer // 2)
    # The cache holds the share in its stored file order: the shuffle must then cover all of it.
    num_groups = 1 if cache else min(num_files, -(-part.count // group_size))
    # Group g of an epoch: the files at positions [bounds[g], bounds[g + 1]) of its file order.
    bounds = [group * num_files // num_groups for group in range(num_groups + 1)]
    group_bounds, counts = tf.constant(bounds, tf.int64), tf.constant(part.file_counts, tf.int64)
    cached = part.read_all().cache() if cache else None

    def epoch(index: tf.Tensor | int, first_group: int = 0) -> tf.data.Dataset:
        shuffle_seed, order = _epoch_order(seed, index, num_files)

        def group(group_index: tf.Tensor) -> tf.data.Dataset:
            # Stored order within a group (its shuffle covers all of it): one group reads as the cache.
            files = tf.sort(order[group_bounds[group_index] : group_bounds[group_index + 1]])
            records = part.read(files) if cached is None else cached
            size = tf.reduce_sum(tf.gather(counts, files))
            # Group 0 keeps the epoch's seed: one-group epochs (in-memory items, the cache) shuffle
            # as they did before epochs had groups, so their runs resume exactly across versions.
            group_seed = tf.bitwise.bitwise_xor(shuffle_seed, group_index)
            return records.shuffle(size, seed=group_seed, reshuffle_each_iteration=False)

        return tf.data.Dataset.range(first_group, num_groups).flat_map(group)

    # Resuming starts at the group that holds `start`: the groups before it are never read.
    first_epoch, offset = divmod(start, part.count)
    order = _epoch_order(seed, first_epoch, num_files)[1].numpy()
    group_ends = np.cumsum(np.add.reduceat(np.array(part.file_counts)[order], bounds[:-1]))
    first_group = int(np.searchsorted(group_ends, offset, side="right"))
    skip = offset - (int(group_ends[first_group - 1]) if first_group else 0)
    later = tf.data.Dataset.counter(first_epoch + 1).flat_map(epoch)
    records = epoch(first_epoch, first_group).skip(skip).concatenate(later)
    # Records of this group waiting here let the next group be read and shuffled meanwhile.
    return records.prefetch(group_size).enumerate(start=start)


def _epoch_order(seed: int, epoch: tf.Tensor | int, num_files: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(shuffle seed, file order) of epoch `epoch`: int64 scalar and permutation of the file indices."""
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    shuffle_seed = tf.random.stateless_uniform([], seed=epoch_seed, minval=None, dtype=tf.int64)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_files, dtype=tf.int64), seed=tf.random.experimental.stateless_fold_in(epoch_seed, 1)
    )
    return shuffle_seed, order


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
