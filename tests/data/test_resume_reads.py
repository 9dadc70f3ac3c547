"""Resuming TFDS training data reads nothing before its position: the files it skips may be gone."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_helpers import SHARDED_FILES, assert_same_batches, take
from mobilenet_jax.data.pipeline import create_train_iterator


def labels_by_file(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, list[int]]:
    """{file name: the labels it holds for `split`} (TinySharded labels every example by its index)."""
    labels = {}
    for file in builder.info.splits[split].file_instructions:
        records = tf.data.TFRecordDataset(file.filename).skip(file.skip).take(file.take)
        parsed = [builder.info.features.deserialize_example(record)["label"] for record in records]
        labels[os.path.basename(file.filename)] = [int(label) for label in parsed]
    return labels


def files_read_before(order: np.ndarray, position: int, labels: dict[str, list[int]]) -> set[str]:
    """The files read wholly before the start of the group that holds `position` of an epoch.

    Groups are whole files, each read and shuffled alone, so a group starts at the last position
    up to `position` where the epoch so far holds whole files only.
    """
    file_of = {label: name for name, held in labels.items() for label in held}
    seen, whole = Counter(), set()
    for index, label in enumerate(order[:position]):
        seen[file_of[label]] += 1
        if all(count == len(labels[name]) for name, count in seen.items()):
            whole = set(seen)
    return whole


# Groups of one file (shuffle_buffer 8: 4 records a group, 5 a file) and of three or four files,
# on the one process's whole split and on process 1 of 2, whose share starts inside a file.
@pytest.mark.parametrize("shuffle_buffer, process_index, process_count", [(8, 0, 1), (32, 1, 2)])
@pytest.mark.parametrize("fraction", [0.1, 0.9])
def test_resume_reads_no_file_before_its_position(
    sharded, tmp_path, shuffle_buffer, process_index, process_count, fraction
):
    data_dir = tmp_path / "data"
    shutil.copytree(sharded.data_dir, data_dir)
    spec = dataclasses.replace(sharded, data_dir=str(data_dir), shuffle_buffer=shuffle_buffer)
    builder = tfds.builder(spec.dataset, data_dir=spec.data_dir)
    share = tfds.even_splits("train", process_count)[process_index]
    local_batch = spec.batch_size // process_count
    steps = builder.info.splits[share].num_examples // local_batch  # one epoch

    def batches(start_step: int) -> list[dict[str, np.ndarray]]:
        iterator = create_train_iterator(
            spec, seed=4, process_index=process_index, process_count=process_count, start_step=start_step
        )
        return take(iterator, 2 * steps - start_step)  # to the end of epoch 1

    reference = batches(0)
    start = steps + round(fraction * steps)  # inside epoch 1
    epoch = np.concatenate([batch["label"] for batch in reference[steps:]])
    labels = labels_by_file(builder, share)
    assert sorted(epoch) == sorted(label for held in labels.values() for label in held)
    gone = files_read_before(epoch, (start - steps) * local_batch, labels)
    # All the files before the position but those of its group (at most four here).
    assert len(gone) >= fraction * len(labels) - 4 and len(labels) >= SHARDED_FILES // process_count
    for name in gone:
        (data_dir / builder.info.full_name / name).unlink()
    assert_same_batches(batches(start), reference[start:])
