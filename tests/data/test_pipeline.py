"""The pipeline on imagenet2012 (random JPEGs) and tiny TFDS datasets: batches, padding, seeds, resume, sharding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_helpers import (
    MOCK_EXAMPLES,
    SHARDED_FILES,
    SHARDED_TRAIN,
    SIZE,
    TINY_EVAL,
    TINY_TRAIN,
    assert_same_batches,
    eval_pass,
    make_spec,
    rank_correlation,
    real_labels,
    take,
    train_iterator,
)
from tfds_builders import FakeImagenet
from mobilenet_jax.data.pipeline import create_train_iterator, get_dataset_info
from mobilenet_jax.data.spec import DataSpec


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> DataSpec:
    """A config for imagenet2012 prepared with MOCK_EXAMPLES random JPEGs of random sizes per split."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    FakeImagenet(examples=MOCK_EXAMPLES, data_dir=data_dir).download_and_prepare()
    return make_spec(dataset="imagenet2012", data_dir=data_dir, batch_size=4, eval_batch_size=4)


def stored_labels(spec: DataSpec, split: str) -> list[int]:
    """The labels of a split of the dataset of `spec`, in TFDS's reading order."""
    return [int(example["label"]) for example in tfds.load(spec.dataset, split=split, data_dir=spec.data_dir)]


def test_imagenet_serves_jpeg_bytes(imagenet):
    builder = tfds.builder("imagenet2012", data_dir=imagenet.data_dir)
    dataset = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    example = next(iter(dataset))
    assert example["image"].dtype == tf.string and bool(tf.io.is_jpeg(example["image"]))


def test_imagenet_info(imagenet):
    info = get_dataset_info(imagenet)
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (1000, 10, 10)
    assert len(info.class_names) == 1000 and info.class_names[0] == "n01440764"


def test_imagenet_train_batches(imagenet):
    batch = next(create_train_iterator(imagenet, seed=0, process_index=0, process_count=1))
    assert batch.keys() == {"image", "label"}
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert set(batch["label"]) <= set(stored_labels(imagenet, "train"))
    assert batch["image"].std() > 10  # real pixels, not padding


def test_imagenet_eval_pads_and_masks(imagenet):
    batches = eval_pass(imagenet)
    assert len(batches) == 3  # ceil(10 / 4)
    assert [batch["mask"].tolist() for batch in batches][-1] == [True, True, False, False]
    assert sum(int(batch["mask"].sum()) for batch in batches) == MOCK_EXAMPLES
    assert real_labels(batches).tolist() == stored_labels(imagenet, "validation")
    last = batches[-1]
    assert last["image"].shape == (4, SIZE, SIZE, 3) and last["mask"].dtype == bool
    assert not last["image"][2:].any() and not last["label"][2:].any()
    assert last["image"][:2].std(axis=(1, 2, 3)).min() > 10  # real images before the padding


def test_imagenet_train_is_seeded(imagenet):
    def first_batches(seed: int) -> list[dict[str, np.ndarray]]:
        iterator = create_train_iterator(imagenet, seed=seed, process_index=0, process_count=1)
        return take(iterator, 2)

    assert_same_batches(first_batches(0), first_batches(0))
    other = first_batches(1)
    assert not np.array_equal(first_batches(0)[0]["label"], other[0]["label"])


def test_imagenet_augmentation_is_seeded(imagenet):
    imagenet = dataclasses.replace(imagenet, batch_size=MOCK_EXAMPLES)  # one batch is one epoch: the same images, reordered

    def epoch_by_label(seed: int) -> np.ndarray:
        iterator = create_train_iterator(imagenet, seed=seed, process_index=0, process_count=1)
        batch = next(iterator)
        return batch["image"][np.argsort(batch["label"])]

    assert len(set(stored_labels(imagenet, "train"))) == MOCK_EXAMPLES
    first, second = epoch_by_label(0), epoch_by_label(1)
    assert all(not np.array_equal(one, other) for one, other in zip(first, second))


def test_imagenet_epochs_are_permutations(imagenet):
    iterator = create_train_iterator(imagenet, seed=0, process_index=0, process_count=1)
    labels = np.concatenate([batch["label"] for batch in take(iterator, 5)])
    first, second = labels[:MOCK_EXAMPLES], labels[MOCK_EXAMPLES:]
    assert sorted(first) == sorted(second) == sorted(stored_labels(imagenet, "train"))
    assert first.tolist() != second.tolist()  # each epoch has its own order


def test_start_step_resumes_exactly(imagenet):
    fresh = create_train_iterator(imagenet, seed=5, process_index=0, process_count=1)
    expected = take(fresh, 6)[3:]  # steps 3..5 cover examples 12..23: epochs 1 and 2
    resumed = create_train_iterator(
        imagenet, seed=5, process_index=0, process_count=1, start_step=3
    )
    assert_same_batches(take(resumed, 3), expected)


def test_cache_keeps_the_stream_when_the_buffer_holds_the_share(imagenet):
    def batches(cache: bool) -> list[dict[str, np.ndarray]]:
        spec = dataclasses.replace(imagenet, cache=cache)
        iterator = create_train_iterator(spec, seed=2, process_index=0, process_count=1)
        return take(iterator, 4)  # two epochs: the second reads from the cache

    assert_same_batches(batches(True), batches(False))


def test_cache_keeps_the_stream_of_many_files_when_a_group_holds_the_share(sharded):
    def batches(cache: bool) -> list[dict[str, np.ndarray]]:
        spec = dataclasses.replace(sharded, cache=cache, shuffle_buffer=2 * SHARDED_TRAIN)
        return take(train_iterator(spec, seed=2), 2 * SHARDED_TRAIN // spec.batch_size)  # two epochs

    assert_same_batches(batches(True), batches(False))


def test_tfds_eval_sees_each_example_once_across_processes(tiny):
    shares = [eval_pass(tiny, index, 2) for index in range(2)]
    assert [len(share) for share in shares] == [3, 3]  # ceil(6 / 2) batches each
    assert [len(real_labels(share)) for share in shares] == [6, 5]
    union = np.concatenate([real_labels(share) for share in shares])
    assert sorted(union) == list(range(TINY_EVAL))
    assert all(batch["image"].shape == (2, SIZE, SIZE, 3) for share in shares for batch in share)


def test_tfds_train_processes_read_disjoint_shares(tiny):
    epochs = []
    for index in range(2):
        iterator = create_train_iterator(tiny, seed=0, process_index=index, process_count=2)
        epochs.append(np.concatenate([batch["label"] for batch in take(iterator, 3)]))
    assert sorted(np.concatenate(epochs)) == list(range(TINY_TRAIN))


def train_labels(spec: DataSpec, steps: int, start_step: int = 0) -> np.ndarray:
    """Labels of `steps` training batches from `start_step`."""
    return np.concatenate([batch["label"] for batch in take(train_iterator(spec, start_step=start_step), steps)])


@pytest.mark.parametrize("cache", [False, True])
def test_tfds_epochs_read_files_in_their_own_order(sharded, cache):
    spec = dataclasses.replace(sharded, cache=cache)  # cached: every epoch shuffles the whole share
    assert tfds.builder("tiny_sharded", data_dir=spec.data_dir).info.splits["train"].num_shards == SHARDED_FILES
    epoch = SHARDED_TRAIN // spec.batch_size
    labels = train_labels(spec, 3 * epoch)
    epochs = labels.reshape(3, SHARDED_TRAIN)
    assert all(sorted(order) == list(range(SHARDED_TRAIN)) for order in epochs)
    # A fixed file order keeps each file in its place, and each example near its place.
    correlations = [rank_correlation(epochs[0], epochs[1]), rank_correlation(epochs[1], epochs[2])]
    assert max(abs(value) for value in correlations) < 0.3, correlations
    # Every epoch is a function of (seed, epoch): resuming inside epoch 1 rebuilds the stream exactly.
    resumed = train_labels(spec, epoch, start_step=epoch + 3)
    np.testing.assert_array_equal(resumed, labels[(epoch + 3) * spec.batch_size :][: epoch * spec.batch_size])
