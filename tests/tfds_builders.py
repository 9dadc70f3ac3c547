"""A real (tiny) TFDS dataset for the tests: a builder that writes it into any data_dir.

Shared by the data tests and the export tests; the `tiny_labelled_dir` fixture (tests/conftest.py)
prepares it once per session. TFDS registers a builder class by name when it is defined, so the
class lives in this one module.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

TINY_TRAIN, TINY_EVAL = 12, 11


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 RGB image (so JPEG keeps it close)."""
    noise = np.random.default_rng(seed).random((height // 8, width // 8, 3), np.float32) * 255
    return tf.cast(tf.image.resize(noise, [height, width]), tf.uint8).numpy()


class TinyLabelled(tfds.core.GeneratorBasedBuilder):
    """JPEG images whose label is their index, so every example is identifiable."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=TINY_TRAIN),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self, features=features, supervised_keys=("image", "label")
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(TINY_TRAIN),
            "validation": self._generate_examples(TINY_EVAL),
        }

    def _generate_examples(self, count: int):
        for index in range(count):
            yield index, {"image": smooth_image(40, 48 + 8 * index, index), "label": index}
