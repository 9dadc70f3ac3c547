"""Weights by reference: named pretrained ImageNet weights, published files, model files and runs.

`resolve_weights(reference)` is the one function every command and the config use to turn a
weights reference into a model, its variables and its preprocessing. A reference is a
registered name (`REGISTRY`: downloaded once into the cache, `download.cache_dir()`, checked
against its sha256 and converted); a TF-Slim checkpoint prefix, its `.index` file, a folder
holding one, a published tarball or a frozen `.pb`; a Keras `.h5`; a timm `.safetensors` or
`.pth`; a model file (`weights.save_model`, with the preprocessing it records beside it); or a
finished training run's workdir. Each may be local or `gs://`. A published file name (or the
published files in a folder) selects its registry entry, and with it the preprocessing the
weights were evaluated with.

Top-1 figures are the publishers' own (TF-Slim `mobilenet_v1.md`, keras.io, timm
`results-imagenet.csv`), not measured by this project. The sha256 of three TF-Slim archives is
pinned from their publishers' build files (tensorflow `workspace2.bzl`, open_model_zoo
`model.yml`); for every other file the first download's digest is recorded and enforced.
"""


from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

from etils import epath

from mobilenet_jax import weights
from mobilenet_jax.data.spec import NORMALIZATIONS
from mobilenet_jax.interop import download, keras, tf_slim, timm
from mobilenet_jax.interop.layout import Converted
from mobilenet_jax.interop.preprocessing import (
    EVAL_CROP_PADDING, TF_SLIM, TIMM, Preprocessing, for_run, with_overrides,
)
from mobilenet_jax.model import MobileNetV1
from mobilenet_jax.paths import to_path

CONVERTERS: dict[str, Callable[[Any], Converted]] = {
    "tf_slim": tf_slim.from_tf_slim, "keras": keras.from_keras, "timm": timm.from_timm,
}
# The model fields each source's conventions need (activation, padding, BatchNorm, width floor).
SOURCE_FIELDS: dict[str, dict[str, Any]] = {"tf_slim": tf_slim.FIELDS, "keras": keras.FIELDS, "timm": timm.FIELDS}
# The evaluation preprocessing of each source's weights where no registry entry names a size.
SOURCE_PREPROCESSING: dict[str, Preprocessing] = {"tf_slim": TF_SLIM, "keras": TF_SLIM, "timm": TIMM}
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")
_FILE_SOURCES = (  # (name endings, converter) of single weights files
    ((*_ARCHIVE_SUFFIXES, ".index", tf_slim.FROZEN_GRAPH_SUFFIX), "tf_slim"),
    ((".h5",), "keras"),
    ((".safetensors", ".pth", ".pt", ".bin"), "timm"),
)
# What a published file adds to the stem it shares with its siblings (TF-Slim's `<stem>.ckpt.index`,
# `<stem>_frozen.pb`, `<stem>.tgz`) or with its cache copy (`<registry name>.<suffix>`).
_PUBLISHED_SUFFIXES = (*_ARCHIVE_SUFFIXES, ".ckpt.index", ".ckpt", "_frozen.pb", ".h5", ".safetensors")
ACCEPTED = (
    "accepted: a registered name (e.g. mobilenet_v1_100_224.tf_slim; all in mobilenet_jax.pretrained.REGISTRY); a TF-Slim checkpoint prefix, its "
    ".index file, a folder holding one, a published .tgz / .tar.gz / .tar or a frozen .pb; a Keras .h5; a timm "
    ".safetensors or .pth; a model file (x.msgpack with x.msgpack.json); or a finished training run's workdir; "
    "each local or gs://"
)


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
        suffix = next((s for s in _ARCHIVE_SUFFIXES if url_name.endswith(s)), Path(url_name).suffix)
        return self.name + suffix

    @property
    def stems(self) -> set[str]:
        """The stems of the published file's name and of its cache copy's (the registry name)."""
        return {_stem(self.url.rsplit("/", 1)[-1]), self.name}


class Pretrained(NamedTuple):
    """A loaded model: `model.apply(variables, preprocessing(image)[None])` gives its logits.

    `resolve_weights` leaves `preprocessing` None for a model file that records none;
    `load_pretrained` always sets it.
    """

    model: MobileNetV1
    variables: dict[str, Any]
    preprocessing: Preprocessing | None

    @property
    def fields(self) -> dict[str, Any]:
        """The model's constructor fields (JSON-ready), e.g. to build a model for fine-tuning."""
        return weights.model_fields(self.model)


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


def _extract(archive: Path) -> Path:
    """The folder holding `archive`'s contents, extracted once into the cache (keyed by content)."""
    stem = next(archive.name[: -len(s)] for s in _ARCHIVE_SUFFIXES if archive.name.endswith(s))
    target = download.cache_dir() / "extracted" / f"{stem}-{download.sha256_of(archive)[:16]}"
    if not target.exists():
        partial = target.with_name(target.name + ".part")
        partial.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
        os.replace(partial, target)
    return target


def _stem(name: str) -> str:
    """`name` without the ending a published weights file adds to its stem."""
    return next((name[: -len(s)] for s in _PUBLISHED_SUFFIXES if name.endswith(s)), name)


def source_of(reference: str | os.PathLike) -> str:
    """What reads the weights at the path `reference` (local or gs://): "model", "tf_slim", "keras" or "timm".

    Anything else raises one line naming what is accepted (FileNotFoundError for a missing file).
    """
    path = to_path(reference)
    if path.is_dir() or to_path(os.fspath(path) + ".index").exists():
        return "tf_slim"
    is_model = path.name.endswith(".msgpack") or to_path(os.fspath(path) + weights.FIELDS_SUFFIX).exists()
    source = "model" if is_model else next((s for endings, s in _FILE_SOURCES if path.name.endswith(endings)), None)
    given = os.fspath(reference)
    if source is None and path.exists():
        raise ValueError(f"{given!r} is in no format a converter reads; {ACCEPTED}")
    if source is None:
        raise ValueError(f"{given!r} is neither a registered name nor an existing path{_did_you_mean(path)}; {ACCEPTED}")
    if not path.exists():
        raise FileNotFoundError(f"weights file {given} does not exist; {ACCEPTED}")
    return source


def _did_you_mean(path: epath.Path) -> str:
    """", did you mean X?" for the checkpoint prefixes (`X.index`) beside `path` that extend its
    name, as `model.ckpt` extends `model`; "" where there is none."""
    try:
        found = sorted(p for p in path.parent.glob(path.name + "*.index"))
    except OSError:  # an unreadable or absent folder suggests nothing
        return ""
    prefixes = [os.fspath(p)[: -len(".index")] for p in found]
    return f", did you mean {' or '.join(prefixes)}?" if prefixes else ""


def convert_file(path: str | os.PathLike, source: str) -> Converted:
    """Convert the local file or folder at `path` with the converter named `source` (archives are extracted)."""
    if source not in CONVERTERS:
        raise ValueError(f"source must be one of {tuple(CONVERTERS)}, got {source!r}")
    path = Path(path)
    if source == "tf_slim" and path.name.endswith(_ARCHIVE_SUFFIXES):
        path = _extract(path)
    return CONVERTERS[source](path)


def _published(path: Path, converted: Converted) -> PretrainedWeights | None:
    """The registry entry published under `path`'s name (or a name in the folder `path`) whose
    model `converted` is: the model's alpha tells apart entries that share a file name."""
    names = [path.name, *(p.name for p in path.iterdir())] if path.is_dir() else [path.name]
    stems = {_stem(name) for name in names}
    return next((w for w in REGISTRY.values() if w.stems & stems and w.fields == converted.fields), None)


def _convert(reference: str, source: str) -> Pretrained:
    """A TF-Slim, Keras or timm file (local or gs://) converted, with its publisher's preprocessing."""
    path = download.local_copy(reference)
    converted = convert_file(path, source)
    entry = _published(path, converted)
    preprocessing = entry.preprocessing if entry else SOURCE_PREPROCESSING[source]
    return Pretrained(converted.model(), converted.variables, preprocessing)


def _load_entry(entry: PretrainedWeights, file: str | os.PathLike | None) -> Pretrained:
    """The registry entry's weights: downloaded once, or `file` (local or gs://): the published
    file (checked against the pinned sha256, if any) or its contents, e.g. a checkpoint prefix."""
    if file is None:
        path = download.fetch(entry.url, entry.filename, entry.sha256)
    else:
        path = download.local_copy(file)
        if path.is_file() and path.name.endswith(Path(entry.filename).suffix):  # the published file itself
            download.check_sha256(path, entry.sha256)
    converted = convert_file(path, entry.source)
    if converted.fields != entry.fields:
        found = (converted.fields["alpha"], converted.fields["num_classes"])
        raise ValueError(
            f"{path} holds alpha {found[0]} weights with {found[1]} classes, but {entry.name} has alpha "
            f"{entry.alpha} and {entry.num_classes} classes: pass the file published for {entry.name}"
        )
    return Pretrained(converted.model(), converted.variables, entry.preprocessing)


def _run_preprocessing(config: dict[str, Any]) -> Preprocessing | None:
    """The evaluation preprocessing of a training run from the config.json it records, for model
    files written before they recorded their own; None if it records no normalisation."""
    if config.get("normalization") not in NORMALIZATIONS:
        return None
    crop_padding = 0 if config.get("dataset") == "digits" else EVAL_CROP_PADDING  # digits evaluate whole images
    return for_run(config.get("image_size", TF_SLIM.size), config["normalization"], crop_padding)


def _recorded_preprocessing(path: epath.Path) -> Preprocessing | None:
    """The preprocessing recorded beside the model file at `path`, else that of the training run
    whose workdir holds it (its config.json), else None."""
    recorded = weights.load_preprocessing(os.fspath(path))
    if recorded is not None:
        return recorded
    run_config = path.parent / weights.CONFIG_FILE
    if not run_config.exists():
        return None
    try:
        return _run_preprocessing(json.loads(run_config.read_text()))
    except ValueError as error:  # not JSON, or an image size or normalisation out of range
        raise ValueError(f"{run_config} gives no preprocessing for {path.name} ({error}); restore the run's "
                         f"{weights.CONFIG_FILE}") from error


def _load_model_file(path: epath.Path) -> Pretrained:
    """A model file written by `weights.save_model` (local or gs://) with its recorded preprocessing."""
    model, variables = weights.load_model(os.fspath(path))
    return Pretrained(model, variables, _recorded_preprocessing(path))


def resolve_weights(reference: str | os.PathLike, file: str | os.PathLike | None = None) -> Pretrained:
    """(model, variables, preprocessing) of any weights reference (see the module docstring).

    `file` stands in for a registered name's download (the published file, or its contents).
    preprocessing is None for a model file that records none (nothing beside it, no run
    config.json beside it). A reference that names nothing raises one line listing what is accepted.
    """
    key = os.fspath(reference)
    if key in REGISTRY:
        return _load_entry(REGISTRY[key], file)
    if file is not None:
        raise ValueError(f"file= stands in for a registered name's download; {key!r} is not one: pass the file alone")
    path = to_path(key)
    if path.is_dir() and (path / weights.MODEL_FILE).exists():
        return _load_model_file(path / weights.MODEL_FILE)
    if path.is_dir() and (path / weights.CONFIG_FILE).exists():
        raise FileNotFoundError(
            f"{key} is a workdir without {weights.MODEL_FILE}: rerun its train.py command with --workdir={key}, "
            "which writes it when the run has finished (and trains on when it has not)"
        )
    source = source_of(key)
    return _load_model_file(path) if source == "model" else _convert(key, source)


def recorded_class_names(reference: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names a training run recorded beside the model file that `reference` names (the
    file, or the run's workdir); None for every other reference."""
    key = os.fspath(reference)
    if key in REGISTRY:
        return None
    path = to_path(key)
    if path.is_dir():
        path = path / weights.MODEL_FILE
    return weights.load_class_names(os.fspath(path)) if path.name.endswith(".msgpack") else None


class NoPreprocessingError(FileNotFoundError):
    """A model file records no preprocessing (no `.preprocessing.json` beside it, no run
    `config.json`) and none was given. Its message names the Python arguments that give one;
    `on_command_line()` says the same with the commands' flags."""

    def __init__(self, reference: str, fix: str = "pass preprocessing=, or image_size= and normalization=") -> None:
        self.reference = reference
        super().__init__(
            f"{reference} records no preprocessing (no {weights.PREPROCESSING_SUFFIX} beside it, no run "
            f"{weights.CONFIG_FILE}): {fix}"
        )

    def on_command_line(self) -> NoPreprocessingError:
        """The same error, its fix in the flags of the commands (classify, export)."""
        flags = f"--image-size N --normalization {'|'.join(NORMALIZATIONS)}"
        return NoPreprocessingError(self.reference, f"pass its input size and normalisation, {flags}")


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    file: str | os.PathLike | None = None,
    preprocessing: Preprocessing | None = None,
    image_size: int | None = None,
    normalization: str | None = None,
) -> Pretrained:
    """(model, variables, preprocessing) for any weights reference (`resolve_weights`).

    A registry name downloads (once) and converts the published file, or converts `file` when
    given. A published file name selects its registry entry; other files get their family's
    preprocessing at 224 (TF-Slim / Keras or timm); a model file, the one it records.
    `preprocessing` replaces it; `image_size` and `normalization` (a key of
    `data.spec.NORMALIZATIONS`) replace its size and mean and std. A model file that records
    none needs `preprocessing`, or both of the others (the data pipeline's evaluation at that
    size): else NoPreprocessingError.
    """
    loaded = resolve_weights(name_or_path, file)
    recipe = with_overrides(preprocessing or loaded.preprocessing, image_size, normalization)
    if recipe is None:
        raise NoPreprocessingError(os.fspath(name_or_path))
    return loaded._replace(preprocessing=recipe)


def save_pretrained(path: str | os.PathLike, pretrained: Pretrained) -> None:
    """Write a loaded model as a model file (`weights.save_model`) plus its preprocessing beside it,
    so that `load_pretrained(path)` gives it back without converting again."""
    weights.save_model(os.fspath(path), pretrained.model, pretrained.variables, preprocessing=pretrained.preprocessing)
