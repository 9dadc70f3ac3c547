"""The registry of published MobileNet v1 ImageNet weights: `REGISTRY`, by name.

Each entry names its publisher's file, the converter that reads it, the model it holds and the
preprocessing it was evaluated with; its fields are known before any download. Top-1 figures
are the publishers' own (TF-Slim `mobilenet_v1.md`, keras.io, timm `results-imagenet.csv`), not
measured by this project. The sha256 of three TF-Slim archives is pinned from their publishers'
build files (tensorflow `workspace2.bzl`, open_model_zoo `model.yml`); for every other file the
first download's digest is recorded and enforced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mobilenet_jax.interop import keras, tf_slim, timm
from mobilenet_jax.interop.preprocessing import TF_SLIM, TIMM, Preprocessing

# The model fields each source's conventions need (activation, padding, BatchNorm, width floor).
SOURCE_FIELDS: dict[str, dict[str, Any]] = {"tf_slim": tf_slim.FIELDS, "keras": keras.FIELDS, "timm": timm.FIELDS}
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")
# What a published file adds to the stem it shares with its siblings (TF-Slim's `<stem>.ckpt.index`,
# `<stem>_frozen.pb`, `<stem>.tgz`) or with its cache copy (`<registry name>.<suffix>`).
_PUBLISHED_SUFFIXES = (*ARCHIVE_SUFFIXES, ".ckpt.index", ".ckpt", "_frozen.pb", ".h5", ".safetensors")


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published set of weights: its file, converter, expected shape and evaluation recipe.

    `sha256` None means not pinned: the first download's digest is recorded and enforced.
    `top1` is the publisher's ImageNet top-1 (%), None where none was published.
    """

    name: str
    source: str
    url: str
    sha256: str | None
    alpha: float
    num_classes: int
    preprocessing: Preprocessing
    top1: float | None

    @property
    def fields(self) -> dict[str, Any]:
        """The MobileNetV1 fields of the converted weights, known before any download."""
        return {**SOURCE_FIELDS[self.source], "alpha": self.alpha, "num_classes": self.num_classes}

    @property
    def filename(self) -> str:
        """The cache file name: the registry name with the published file's extension."""
        url_name = self.url.rsplit("/", 1)[-1]
        suffix = next((s for s in ARCHIVE_SUFFIXES if url_name.endswith(s)), Path(url_name).suffix)
        return self.name + suffix

    @property
    def stems(self) -> set[str]:
        """The stems of the published file's name and of its cache copy's (the registry name)."""
        return {stem(self.url.rsplit("/", 1)[-1]), self.name}


# The published TF-Slim archives' sha256, by (alpha, size): `mobilenet_v1_1.0_224.tgz` from
# tensorflow/tensorflow `workspace2.bzl` (tflite_mobilenet_float), the others from
# openvinotoolkit/open_model_zoo `model.yml` files.
TF_SLIM_SHA256 = {
    (1.0, 224): "2fadeabb9968ec6833bee903900dda6e61b3947200535874ce2fe42a8493abc0",
    (0.25, 128): "879ddc3e0857f3611b5cf248e36de2288c7a11ea8c2ed8a8bdded635e6010dfe",
    (0.5, 224): "98cf7a39552f73920cb99617cfa9b88d5732a87abf9ec14f7cc7f3ade1db0aaa",
}


def _tf_slim(alpha: float, size: int, top1: float) -> PretrainedWeights:
    alpha_text = {1.0: "1.0", 0.75: "0.75", 0.5: "0.5", 0.25: "0.25"}[alpha]
    return PretrainedWeights(
        f"mobilenet_v1_{round(alpha * 100):03d}_{size}.tf_slim", "tf_slim",
        f"https://download.tensorflow.org/models/mobilenet_v1_2018_08_02/mobilenet_v1_{alpha_text}_{size}.tgz",
        TF_SLIM_SHA256.get((alpha, size)), alpha, 1001, dataclasses.replace(TF_SLIM, size=size), top1,
    )


def _keras(alpha: float, size: int, top1: float | None) -> PretrainedWeights:
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    return PretrainedWeights(
        f"mobilenet_v1_{round(alpha * 100):03d}_{size}.keras", "keras",
        f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_{alpha_text}_{size}_tf.h5",
        None, alpha, 1000, dataclasses.replace(TF_SLIM, size=size), top1,
    )


def _timm(alpha: float, tag: str, revision: str, crop_fraction: float, top1: float) -> PretrainedWeights:
    return PretrainedWeights(
        f"mobilenet_v1_{round(alpha * 100):03d}_224.timm", "timm",
        f"https://huggingface.co/timm/{tag}/resolve/{revision}/model.safetensors",
        None, alpha, 1000, dataclasses.replace(TIMM, crop_fraction=crop_fraction), top1,
    )


# Published top-1 (%) of the TF-Slim checkpoints by (alpha, size), research/slim/nets/mobilenet_v1.md.
TF_SLIM_TOP1 = {
    (1.0, 224): 70.9, (1.0, 192): 70.0, (1.0, 160): 68.0, (1.0, 128): 65.2,
    (0.75, 224): 68.4, (0.75, 192): 67.2, (0.75, 160): 65.3, (0.75, 128): 62.1,
    (0.5, 224): 63.3, (0.5, 192): 61.7, (0.5, 160): 59.1, (0.5, 128): 56.3,
    (0.25, 224): 49.8, (0.25, 192): 47.7, (0.25, 160): 45.5, (0.25, 128): 41.5,
}
# keras.io publishes one figure for MobileNet: 70.4 % at alpha 1.0, 224.
KERAS_TOP1 = {(1.0, 224): 70.4}

REGISTRY: dict[str, PretrainedWeights] = {
    w.name: w
    for w in (
        *(_tf_slim(alpha, size, top1) for (alpha, size), top1 in TF_SLIM_TOP1.items()),
        *(_keras(alpha, size, KERAS_TOP1.get((alpha, size))) for alpha, size in TF_SLIM_TOP1),
        # Hub revisions: the commit that added mobilenetv1_100's model.safetensors ("Add model");
        # mobilenetv1_125 follows its main branch until its full commit id is recorded here.
        _timm(1.0, "mobilenetv1_100.ra4_e3600_r224_in1k", "dda9ab42e23f3061aa191630817df76e8fe9cace", 0.875, 75.388),
        _timm(1.25, "mobilenetv1_125.ra4_e3600_r224_in1k", "main", 0.9, 76.920),
    )
}


def stem(name: str) -> str:
    """`name` without the ending a published weights file adds to its stem."""
    return next((name[: -len(s)] for s in _PUBLISHED_SUFFIXES if name.endswith(s)), name)


def published(names: list[str], fields: dict[str, Any]) -> PretrainedWeights | None:
    """The registry entry published under one of `names` (file names) whose model has `fields`:
    the fields tell apart entries that share a file name."""
    stems = {stem(name) for name in names}
    return next((w for w in REGISTRY.values() if w.stems & stems and w.fields == fields), None)
