"""Images for calibration and checks, from the training pipeline: digits, a folder or TFDS.

A dataset is named like `--calibration`: "digits", a folder `root/<class>/*.jpg|png` (split
into train and eval by the pipeline's fixed held-out rule), or a prepared TFDS name, optionally
with its eval split as "name:split", found in `data_dir` (default: TFDS's own, `TFDS_DATA_DIR`
or ~/tensorflow_datasets). Images are preprocessed for the deployable's size and normalisation,
so exported models see exactly what the trained model saw. Errors name the flag the dataset was
given in (`--calibration`, `--data`) and what it accepts.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from mobilenet_jax.data.spec import DataSpec
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.paths import to_path

if TYPE_CHECKING:
    from mobilenet_jax.data.protocol import Settings, Source

CALIBRATION_IMAGES = 256
BATCH_SIZE = 32
SEED = 0
DATA_DIR_FLAG = "--data-dir"


def _open(dataset: str, flag: str, deployable: Deployable, data_dir: str | None) -> tuple[Source, DataSpec]:
    """The dataset named in `flag`, opened for the deployable's size, with every error naming `flag`."""
    from mobilenet_jax.data import protocol, sources  # TensorFlow, imported on use

    settings = protocol.Settings.from_flags(flag, DATA_DIR_FLAG)
    spec = _spec(dataset, settings, deployable, data_dir)
    return sources.open_source(spec, settings), spec


def _spec(dataset: str, settings: Settings, deployable: Deployable, data_dir: str | None) -> DataSpec:
    """The data pipeline's spec for `dataset` at the deployable's size: a folder when it is a path
    (a ValueError when that is a file or missing), else a dataset name."""
    fields: dict[str, Any] = dict(
        dataset=dataset,
        data_dir=data_dir,
        image_size=deployable.image_size,
        batch_size=BATCH_SIZE,
        eval_batch_size=BATCH_SIZE,
        shuffle_buffer=2048,
    )
    path = to_path(dataset)
    if path.is_dir():
        fields.update(dataset="folder", folder_train_dir=dataset)
    elif path.exists() or _looks_like_path(dataset):
        problem = "is a file, not a folder" if path.exists() else "does not exist"
        raise ValueError(f"{settings.dataset}={dataset!r} {problem}; use {settings.accepted}")
    elif ":" in dataset:
        fields["dataset"], fields["eval_split"] = dataset.split(":", 1)
    return DataSpec(**fields)


def _looks_like_path(dataset: str) -> bool:
    """Whether `dataset` can only be a path: TFDS names hold no "://" and start with a letter."""
    return "://" in dataset or dataset.startswith(("/", ".", "~"))


def calibration_images(
    dataset: str,
    deployable: Deployable,
    count: int = CALIBRATION_IMAGES,
    data_dir: str | None = None,
    flag: str = "--calibration",
) -> list[np.ndarray]:
    """`count` training images (as batches), augmented and normalised as in training: a
    representative dataset. Errors name `flag`, the setting `dataset` came from."""
    from mobilenet_jax.data import pipeline, preprocess  # TensorFlow, imported on use

    source, spec = _open(dataset, flag, deployable, data_dir)
    batches = pipeline.train_batches(source, spec, seed=SEED, process_index=0, process_count=1)
    chosen = itertools.islice(batches, -(-count // BATCH_SIZE))
    return [preprocess.normalize_images(batch["image"], deployable.normalization) for batch in chosen]


def eval_examples(
    dataset: str, deployable: Deployable, data_dir: str | None = None, flag: str = "--data"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(normalised images, labels) of every example of the eval split once, without padding.
    Errors name `flag`, the setting `dataset` came from."""
    from mobilenet_jax.data import pipeline, preprocess  # TensorFlow, imported on use

    source, spec = _open(dataset, flag, deployable, data_dir)
    for batch in pipeline.eval_batches(source, spec, process_index=0, process_count=1):
        mask = batch["mask"]
        if mask.any():
            yield preprocess.normalize_images(batch["image"][mask], deployable.normalization), batch["label"][mask]
