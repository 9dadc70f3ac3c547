"""Images for calibration and checks, from the training pipeline: digits, a folder or TFDS.

A dataset is named like `--calibration`: "digits", a folder `root/<class>/*.jpg|png` (split
into train and eval by the pipeline's fixed held-out rule), or a prepared TFDS name, optionally
with its eval split as "name:split", found in `data_dir` (default: TFDS's own, `TFDS_DATA_DIR`
or ~/tensorflow_datasets). Images are preprocessed for the deployable's size and normalisation,
so exported models see exactly what the trained model saw.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import numpy as np

from mobilenet_jax.data.spec import DataSpec
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.paths import to_path

CALIBRATION_IMAGES = 256
BATCH_SIZE = 32
SEED = 0


def _spec(dataset: str, deployable: Deployable, data_dir: str | None = None) -> DataSpec:
    """The data pipeline's spec for `dataset` at the deployable's size."""
    fields: dict[str, Any] = dict(
        dataset=dataset,
        data_dir=data_dir,
        image_size=deployable.image_size,
        batch_size=BATCH_SIZE,
        eval_batch_size=BATCH_SIZE,
        shuffle_buffer=2048,
    )
    if to_path(dataset).is_dir():
        fields.update(dataset="folder", folder_train_dir=dataset)
    elif ":" in dataset:
        fields["dataset"], fields["eval_split"] = dataset.split(":", 1)
    return DataSpec(**fields)


def calibration_images(
    dataset: str, deployable: Deployable, count: int = CALIBRATION_IMAGES, data_dir: str | None = None
) -> list[np.ndarray]:
    """`count` training images (as batches), augmented and normalised as in training: a
    representative dataset."""
    from mobilenet_jax import data  # TensorFlow, imported on use

    spec = _spec(dataset, deployable, data_dir)
    batches = data.create_train_iterator(spec, seed=SEED, process_index=0, process_count=1)
    chosen = itertools.islice(batches, -(-count // BATCH_SIZE))
    return [data.normalize_images(batch["image"], deployable.normalization) for batch in chosen]


def eval_examples(
    dataset: str, deployable: Deployable, data_dir: str | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(normalised images, labels) of every example of the eval split once, without padding."""
    from mobilenet_jax import data  # TensorFlow, imported on use

    batches = data.create_eval_iterator(_spec(dataset, deployable, data_dir), process_index=0, process_count=1)
    for batch in batches:
        mask = batch["mask"]
        if mask.any():
            yield data.normalize_images(batch["image"][mask], deployable.normalization), batch["label"][mask]
