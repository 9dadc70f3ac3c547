"""Parts of sources held in memory (the digits, a folder's image paths): a fixed stratified
held-out split, all training items for every process, an even share of the evaluation items."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
from sklearn import model_selection

from mobilenet_jax.data.protocol import Part

# Held-out splits use their own fixed seed so the test set never moves with the training seed.
SPLIT_SEED = 0


def held_out(
    items: np.ndarray, labels: np.ndarray, test_size: int | float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A fixed stratified (train, test) split, shuffled so every process share mixes classes."""
    train_items, test_items, train_labels, test_labels = model_selection.train_test_split(
        items, labels, test_size=test_size, stratify=labels, random_state=SPLIT_SEED
    )
    return (train_items, train_labels), (test_items, test_labels)


def array_part(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    load: Callable[[tf.Tensor], tf.Tensor],
    is_train: bool,
    process_index: int,
    process_count: int,
) -> Part:
    """All in-memory training items (see `Part.whole`), or this process's contiguous even share
    of the evaluation items; either way one "file", so each training epoch shuffles all of it."""
    if is_train:
        items, labels = train
        return Part(_in_memory(items, labels), (len(labels),), len(labels), load, whole=True)
    items, labels = test
    bounds = [_even_share(len(labels), index, process_count) for index in range(process_count)]
    start, stop = bounds[process_index]
    max_count = max(end - begin for begin, end in bounds)
    return Part(_in_memory(items[start:stop], labels[start:stop]), (stop - start,), max_count, load)


def _in_memory(items: np.ndarray, labels: np.ndarray) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """`Part.read` of in-memory items, held as one file."""
    # Built once: a pipeline function that captures this dataset, not the arrays, stays small.
    dataset = tf.data.Dataset.from_tensor_slices({"image": items, "label": labels})
    return lambda files: dataset


def _even_share(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of share `index` of `n` items in `count` shares, cut as tfds.even_splits."""
    size, extra = divmod(n, count)
    start = index * size + min(index, extra)
    return start, start + size + int(index < extra)
