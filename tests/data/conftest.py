"""Real (tiny) TFDS datasets on disk: per-process splits, split errors, per-epoch file orders."""

from __future__ import annotations

import pytest
import tensorflow_datasets as tfds

from data_helpers import SHARDED_FILES, SHARDED_TRAIN, make_spec, smooth_image
from mobilenet_jax.data.spec import DataSpec


@pytest.fixture(scope="module")
def tiny(tiny_labelled_dir) -> DataSpec:
    """A config for TinyLabelled (tests/tfds_builders.py), prepared in a temporary data_dir."""
    return make_spec(dataset="tiny_labelled", data_dir=tiny_labelled_dir, batch_size=4, eval_batch_size=4)


class TinySharded(tfds.core.GeneratorBasedBuilder):
    """Many small files of 8x8 PNGs labelled by their index; a test split but no validation."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS = ("train", "test")

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(num_classes=SHARDED_TRAIN),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        del dl_manager
        sizes = {"train": SHARDED_TRAIN, "test": SHARDED_FILES}
        return {name: self._generate_examples(sizes[name]) for name in self.SPLITS}

    def _generate_examples(self, count: int):
        for index in range(count):
            yield index, {"image": smooth_image(8, 8, index), "label": index}


class TinyTrainOnly(TinySharded):
    """TinySharded with a train split alone."""

    SPLITS = ("train",)


def prepare_sharded(builder_class: type, data_dir: str) -> DataSpec:
    """A config for a TinySharded-like builder prepared in `data_dir` in SHARDED_FILES files, with
    a shuffle buffer far smaller than one epoch."""
    config = tfds.download.DownloadConfig(num_shards=SHARDED_FILES)
    builder_class(data_dir=data_dir).download_and_prepare(download_config=config)
    return make_spec(dataset=builder_class.name, data_dir=data_dir, batch_size=16, eval_batch_size=4, shuffle_buffer=8)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> DataSpec:
    """A config for TinySharded."""
    return prepare_sharded(TinySharded, str(tmp_path_factory.mktemp("sharded")))


@pytest.fixture(scope="module")
def train_only(tmp_path_factory) -> DataSpec:
    """A config for TinyTrainOnly."""
    return prepare_sharded(TinyTrainOnly, str(tmp_path_factory.mktemp("train_only")))
