"""A TFDS image-classification dataset as a `Source`: its splits checked once, each process
reading its own even share of the files, images left encoded."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import shard_utils

from mobilenet_jax.data.protocol import Part, Settings, Source, imagenet_augment
from mobilenet_jax.data.spec import HELD_OUT_PERCENT, DatasetInfo, DataSpec
from mobilenet_jax.paths import to_path

# TFDS files read at once, 16 records from each in turn: TFDS's own reading order.
READ_CYCLE, READ_BLOCK = 16, 16


def tfds_source(spec: DataSpec, settings: Settings) -> Source:
    """A TFDS image-classification dataset, read undecoded so decoding can fuse with the crop."""
    data_dir = None if spec.data_dir is None else str(to_path(spec.data_dir))
    builder = _tfds_builder(spec.dataset, data_dir, settings)
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if not isinstance(builder.info.features[image_key], tfds.features.Image):
        raise ValueError(
            f"{settings.dataset}={spec.dataset!r} has no image feature {image_key!r}; "
            "use an image-classification dataset"
        )
    labels = builder.info.features[label_key]
    train_split, eval_split = _tfds_splits(builder, spec.train_split, spec.eval_split, settings)
    info = DatasetInfo(
        num_classes=labels.num_classes,
        num_train_examples=_tfds_split_size(builder, train_split, settings.train_split),
        num_eval_examples=_tfds_split_size(builder, eval_split, settings.eval_split),
        class_names=tuple(labels.names),
        eval_split=eval_split,
    )

    def part(train: bool, process_index: int, process_count: int) -> Part:
        shares = tfds.even_splits(train_split if train else eval_split, process_count)
        counts = [builder.info.splits[share].num_examples for share in shares]
        files = builder.info.splits[shares[process_index]].file_instructions
        read = _tfds_reader(builder, files, image_key, label_key)
        return Part(read, tuple(file.take for file in files), max(counts), tf.identity)

    return Source(info, imagenet_augment(spec), part)


def _tfds_reader(
    builder: tfds.core.DatasetBuilder, files: list[shard_utils.FileInstruction], image_key: str, label_key: str
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """`Part.read` of a TFDS share's files (its `file_instructions`), images left encoded.

    Reading files directly, rather than through `builder.as_dataset`, lets the pipeline read any
    subset of them in any order; each file yields only its slice of the share (skip, take).
    """
    paths = tf.constant([os.fspath(file.filename) for file in files], tf.string)
    skips = tf.constant([file.skip for file in files], tf.int64)
    takes = tf.constant([file.take for file in files], tf.int64)
    adapter = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[builder.info.file_format]
    features = builder.info.features
    decoders = {image_key: tfds.decode.SkipDecoding()}

    def file_records(index: tf.Tensor) -> tf.data.Dataset:
        return adapter.make_tf_data(paths[index]).skip(skips[index]).take(takes[index])

    def record(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        example = features.deserialize_example(serialized, decoders=decoders)
        return {"image": example[image_key], "label": tf.cast(example[label_key], tf.int32)}

    def read(indices: tf.Tensor) -> tf.data.Dataset:
        serialized = tf.data.Dataset.from_tensor_slices(indices).interleave(
            file_records,
            cycle_length=READ_CYCLE,
            block_length=READ_BLOCK,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return serialized.map(record, num_parallel_calls=tf.data.AUTOTUNE)

    return read


def _tfds_builder(name: str, data_dir: str | None, settings: Settings) -> tfds.core.DatasetBuilder:
    """The builder of a prepared TFDS dataset, or a ValueError saying how to get one."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as error:  # an unknown name, or one TFDS cannot parse ("my-images", "/data")
        raise ValueError(f"{settings.dataset}={name!r} is not a known dataset: use {settings.accepted}") from error
    if not builder.info.splits:
        raise ValueError(
            f"{settings.dataset}={name!r}: TFDS dataset {name!r} is not prepared in {builder.data_dir}: prepare it "
            f"with `tfds build {name} --data_dir=...` (imagenet2012 needs its archives in "
            f"<data_dir>/downloads/manual) and point {settings.data_dir} at that folder"
        )
    return builder


def _tfds_splits(
    builder: tfds.core.DatasetBuilder, train_split: str, eval_split: str | None, settings: Settings
) -> tuple[str, str]:
    """(train, eval) split strings; eval_split=None picks "validation", else "test", else a
    held-out slice of "train" that training then does not see, and says which."""
    if eval_split is not None:
        return train_split, eval_split
    for name in ("validation", "test"):
        if name in builder.info.splits:
            if name != "validation":
                logging.warning("%s has no 'validation' split: evaluating on %r", builder.name, name)
            return train_split, name
    if train_split != "train":
        raise ValueError(
            f"{builder.name} has no 'validation' or 'test' split to evaluate {settings.train_split}={train_split!r} "
            f"on; set {settings.eval_split} to one of {sorted(builder.info.splits)} or a slice of them"
        )
    cut = 100 - HELD_OUT_PERCENT
    logging.warning(
        "%s has no 'validation' or 'test' split: evaluating on train[%d%%:], which training does not see",
        builder.name,
        cut,
    )
    return f"train[:{cut}%]", f"train[{cut}%:]"


def _tfds_split_size(builder: tfds.core.DatasetBuilder, split: str, setting: str) -> int:
    """Number of examples in a TFDS split string, or a ValueError naming the `setting` it came
    from and listing the splits."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"{setting}: split {split!r} is not in {builder.name}: use one of {sorted(builder.info.splits)} "
            "or a slice of them such as 'train[:90%]'"
        ) from error
