"""Weights by reference: named pretrained ImageNet weights, published files, model files and runs.

`resolve_weights(reference)` is the one function every command and the config use to turn a
weights reference into a model, its variables and its preprocessing. A reference is a
registered name (`registry.REGISTRY`: downloaded once into the cache, `download.cache_dir()`,
checked against its sha256 and converted); a TF-Slim checkpoint prefix, its `.index` file, a
folder holding one, a published tarball or a frozen `.pb`; a Keras `.h5`; a timm `.safetensors`
or `.pth`; a model file (`weights.save_model`, with the preprocessing it records beside it); or
a finished training run's workdir. Each may be local or `gs://`. A published file name (or the
published files in a folder) selects its registry entry, and with it the preprocessing the
weights were evaluated with. `locate(reference)` says which of these a reference is.
"""


from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

from etils import epath

from mobilenet_jax import weights
from mobilenet_jax.choices import check_choice
from mobilenet_jax.data.spec import NORMALIZATIONS
from mobilenet_jax.interop import download, keras, tf_slim, timm
from mobilenet_jax.interop.layout import Converted
from mobilenet_jax.interop.preprocessing import (
    EVAL_CROP_PADDING, TF_SLIM, TIMM, Preprocessing, for_run, with_overrides,
)
from mobilenet_jax.interop.registry import ARCHIVE_SUFFIXES, REGISTRY, PretrainedWeights, published
from mobilenet_jax.model import MobileNetV1
from mobilenet_jax.paths import to_path

CONVERTERS: dict[str, Callable[[Any], Converted]] = {
    "tf_slim": tf_slim.from_tf_slim, "keras": keras.from_keras, "timm": timm.from_timm,
}
# The evaluation preprocessing of each source's weights where no registry entry names a size.
SOURCE_PREPROCESSING: dict[str, Preprocessing] = {"tf_slim": TF_SLIM, "keras": TF_SLIM, "timm": TIMM}
_FILE_SOURCES = (  # (name endings, converter) of single weights files
    ((*ARCHIVE_SUFFIXES, ".index", tf_slim.FROZEN_GRAPH_SUFFIX), "tf_slim"),
    ((".h5",), "keras"),
    ((".safetensors", ".pth", ".pt", ".bin"), "timm"),
)
ACCEPTED = (
    "accepted: a registered name (e.g. mobilenet_v1_100_224.tf_slim; all in mobilenet_jax.pretrained.REGISTRY); a TF-Slim checkpoint prefix, its "
    ".index file, a folder holding one, a published .tgz / .tar.gz / .tar or a frozen .pb; a Keras .h5; a timm "
    ".safetensors or .pth; a model file (x.msgpack with x.msgpack.json); or a finished training run's workdir; "
    "each local or gs://"
)


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


class Located(NamedTuple):
    """What a weights reference names: `source` "registry" (`target` its PretrainedWeights),
    "model" (`target` the model file's path) or a converter's name (`target` the reference)."""

    source: str
    target: Any


def locate(reference: str | os.PathLike, file: str | os.PathLike | None = None) -> Located:
    """What `reference` names (see `Located`), reading no weights; `file` is only for a registered
    name. A reference that names nothing raises one line listing what is accepted."""
    key = os.fspath(reference)
    if key in REGISTRY:
        return Located("registry", REGISTRY[key])
    if file is not None:
        raise ValueError(f"file= stands in for a registered name's download; {key!r} is not one: pass the file alone")
    path = to_path(key)
    if path.is_dir() and (path / weights.MODEL_FILE).exists():
        return Located("model", path / weights.MODEL_FILE)
    if path.is_dir() and (path / weights.CONFIG_FILE).exists():
        raise FileNotFoundError(
            f"{key} is a workdir without {weights.MODEL_FILE}: rerun its train.py command with --workdir={key}, "
            "which writes it when the run has finished (and trains on when it has not)"
        )
    source = source_of(key)
    return Located(source, path if source == "model" else key)


def _extract(archive: Path) -> Path:
    """The folder holding `archive`'s contents, extracted once into the cache (keyed by content)."""
    stem = next(archive.name[: -len(s)] for s in ARCHIVE_SUFFIXES if archive.name.endswith(s))
    target = download.cache_dir() / "extracted" / f"{stem}-{download.sha256_of(archive)[:16]}"
    if not target.exists():
        partial = target.with_name(target.name + ".part")
        partial.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(partial, filter="data")
        os.replace(partial, target)
    return target


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


def unpacked(path: str | os.PathLike, source: str) -> Path:
    """The local weights at `path` as their converter reads them: a TF-Slim archive extracted."""
    path = Path(path)
    return _extract(path) if source == "tf_slim" and path.name.endswith(ARCHIVE_SUFFIXES) else path


def convert_file(path: str | os.PathLike, source: str) -> Converted:
    """Convert the local file or folder at `path` with the converter named `source` (archives are extracted)."""
    return CONVERTERS[check_choice("source", source, tuple(CONVERTERS))](unpacked(path, source))


def published_names(path: Path | epath.Path) -> list[str]:
    """The file names that may select a registry entry for the weights at `path`: its own, and
    those in the folder `path`."""
    return [path.name, *(p.name for p in path.iterdir())] if path.is_dir() else [path.name]


def _convert(reference: str, source: str) -> Pretrained:
    """A TF-Slim, Keras or timm file (local or gs://) converted, with its publisher's preprocessing."""
    path = download.local_copy(reference)
    converted = convert_file(path, source)
    entry = published(published_names(path), converted.fields)
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


def recorded_preprocessing(path: epath.Path) -> Preprocessing | None:
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
    return Pretrained(model, variables, recorded_preprocessing(path))



def resolve_weights(reference: str | os.PathLike, file: str | os.PathLike | None = None) -> Pretrained:
    """(model, variables, preprocessing) of any weights reference (see the module docstring).

    `file` stands in for a registered name's download (the published file, or its contents).
    preprocessing is None for a model file that records none (nothing beside it, no run
    config.json beside it). A reference that names nothing raises one line listing what is accepted.
    """
    source, target = locate(reference, file)
    if source == "registry":
        return _load_entry(target, file)
    return _load_model_file(target) if source == "model" else _convert(target, source)


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
