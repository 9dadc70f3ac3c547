"""Small specs, example images and batch helpers shared by the data tests."""

from __future__ import annotations

import numpy as np

from mobilenet_jax.data.pipeline import create_eval_iterator, create_train_iterator
from mobilenet_jax.data.spec import DataSpec
from tfds_builders import TINY_EVAL, TINY_TRAIN, smooth_image  # noqa: F401 (the data tests import them from here)

SIZE = 32
MOCK_EXAMPLES = 10  # mock_data yields this many examples for every split
SHARDED_TRAIN, SHARDED_FILES = 320, 64  # TinySharded: 5 examples a file


def make_spec(**overrides) -> DataSpec:
    """A small spec on the offline digits; keyword arguments replace fields."""
    fields = dict(
        dataset="digits",
        folder_eval_fraction=0.25,
        image_size=SIZE,
        batch_size=8,
        eval_batch_size=8,
        shuffle_buffer=64,
        prefetch=2,
    )
    return DataSpec(**{**fields, **overrides})


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    """The next `count` batches of an iterator."""
    return [next(iterator) for _ in range(count)]


def train_iterator(spec: DataSpec, seed: int = 0, start_step: int = 0):
    """The single-process training iterator of `spec`."""
    return create_train_iterator(spec, seed=seed, process_index=0, process_count=1, start_step=start_step)


def eval_pass(config, process_index: int = 0, process_count: int = 1):
    """All batches of one eval pass."""
    return list(
        create_eval_iterator(config, process_index=process_index, process_count=process_count)
    )


def real_labels(batches) -> np.ndarray:
    """Labels of the unmasked examples of eval batches, in order."""
    return np.concatenate([batch["label"][batch["mask"]] for batch in batches])


def assert_same_batches(first, second) -> None:
    """Two lists of batches are identical, key by key."""
    assert len(first) == len(second)
    for one, other in zip(first, second):
        assert one.keys() == other.keys()
        for key in one:
            np.testing.assert_array_equal(one[key], other[key])


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman correlation of the positions of the same items in two orders of them."""
    positions = [np.argsort(order) for order in (first, second)]  # item -> position: ranks already
    return float(np.corrcoef(*positions)[0, 1])
