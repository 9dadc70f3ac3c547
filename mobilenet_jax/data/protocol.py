"""What every dataset source provides: a `Source` (its `DatasetInfo`, its `Augment`, and a function
that hands each process its `Part` of a split), and the `Settings` its errors name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from mobilenet_jax.data.spec import EVAL_CROP_PADDING, DatasetInfo, DataSpec


@dataclasses.dataclass(frozen=True)
class Settings:
    """What errors call the settings that chose a dataset, so that each names what the user set:
    the training config's fields by default, a command's flags with `Settings.from_flags`."""

    dataset: str = "config.dataset"
    folder_train_dir: str = "config.folder_train_dir"
    folder_eval_dir: str = "config.folder_eval_dir"
    train_split: str = "config.train_split"
    eval_split: str = "config.eval_split"
    data_dir: str = "config.data_dir"
    accepted: str = (
        "'digits', 'folder' (images in config.folder_train_dir) or a TFDS image-classification name "
        "such as 'imagenet2012' or 'cifar10'"
    )
    # Whether errors may offer the config's other fields (skip_bad_images, folder_eval_dir) as fixes.
    config_fixes: bool = True

    @classmethod
    def from_flags(cls, dataset_flag: str, data_dir_flag: str) -> Settings:
        """The settings of a command that takes the dataset (a name, a folder or "name:split") in
        one flag and the TFDS folder in another."""
        return cls(
            dataset=dataset_flag,
            folder_train_dir=dataset_flag,
            folder_eval_dir=dataset_flag,
            train_split=dataset_flag,
            eval_split=dataset_flag,
            data_dir=data_dir_flag,
            accepted=(
                "'digits', an image folder root/<class>/*.jpg or a TFDS image-classification name "
                f"(optionally name:split) prepared in {data_dir_flag}"
            ),
            config_fixes=False,
        )


@dataclasses.dataclass(frozen=True)
class Augment:
    """How a source's images are cropped; everything else is shared by all sources."""

    crop_min_area: float
    flip: bool
    eval_crop_padding: int


@dataclasses.dataclass(frozen=True)
class Part:
    """One process's share of a split, before shuffling and preprocessing: its files and a reader."""

    # File indices (an int64 vector) -> the {"image", "label": int32} records those files hold for
    # this share, in an order fixed by the indices. In-memory items are one file.
    read: Callable[[tf.Tensor], tf.data.Dataset]
    file_counts: tuple[int, ...]  # examples each file holds for this share, in stored order
    max_count: int  # examples in the largest share of any process
    load: Callable[[tf.Tensor], tf.Tensor]  # record image -> encoded bytes or an HWC tensor
    # The whole split for every process, which keeps its slice of each global batch.
    whole: bool = False

    @property
    def count(self) -> int:
        """Examples in this process's share."""
        return sum(self.file_counts)

    def read_all(self) -> tf.data.Dataset:
        """The share's records, its files in stored order."""
        return self.read(tf.range(len(self.file_counts), dtype=tf.int64))


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset opened and checked once per run, ready to hand out per-process parts of its splits."""

    info: DatasetInfo
    augment: Augment
    part: Callable[..., Part]  # (train, process_index, process_count) -> Part


def imagenet_augment(spec: DataSpec) -> Augment:
    """ImageNet-style augmentation with the spec's crop area."""
    return Augment(crop_min_area=spec.crop_min_area, flip=True, eval_crop_padding=EVAL_CROP_PADDING)
