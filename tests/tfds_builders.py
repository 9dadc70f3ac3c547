"""Real (tiny) TFDS datasets for the tests: builders that write them into any data_dir.

Shared by the data tests and the export tests; the `tiny_labelled_dir` fixture (tests/conftest.py)
prepares TinyLabelled once per session. TFDS registers a builder class by name when it is defined, so the
classes live in this one module.
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


# Looked up before registration is skipped: the lookup registers TFDS's own datasets.
_IMAGENET2012 = tfds.builder_cls("imagenet2012")

with tfds.core.registered.skip_registration():  # it takes imagenet2012's name, which stays TFDS's

    class FakeImagenet(_IMAGENET2012):
        """imagenet2012 with its real metadata (1,000 class names) and files on disk, holding
        `examples` random JPEGs of random sizes per split, with distinct labels."""

        name = "imagenet2012"
        MANUAL_DOWNLOAD_INSTRUCTIONS = None

        def __init__(self, *, examples: int, **kwargs):
            self.examples = examples
            super().__init__(**kwargs)

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(seed) for seed, split in enumerate(("train", "validation"))}

        def _generate_examples(self, seed: int):
            rng = np.random.default_rng(seed)
            for index, label in enumerate(rng.choice(1000, self.examples, replace=False)):
                height, width = rng.integers(40, 120, 2) // 8 * 8
                image = smooth_image(int(height), int(width), seed * self.examples + index)
                yield index, {"image": image, "label": int(label), "file_name": f"{label}_{index}.JPEG"}
