"""Named pretrained ImageNet weights: where they are published, how to convert and feed them.

`load_pretrained("mobilenet_v1_100_224.tf_slim")` downloads the published file once into the
cache (`download.cache_dir()`), checks its sha256, converts it and returns the model, its
variables and the preprocessing the weights were evaluated with. A local file works too, for
machines without internet: `load_pretrained(name, file=path)`, or `load_pretrained(path)` for a
file in any supported format (a published file is recognised by its name).

Top-1 figures are the publishers' own (TF-Slim `mobilenet_v1.md`, keras.io, timm
`results-imagenet.csv`), not measured by this project. No sha256 is pinned yet: the files could
not be fetched where this registry was written, so each is recorded on first download instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, NamedTuple

from mobilenet_jax import weights
from mobilenet_jax.interop import download, keras, tf_slim, timm
from mobilenet_jax.interop.layout import Converted
from mobilenet_jax.interop.preprocessing import TF_SLIM, TIMM, Preprocessing
from mobilenet_jax.model import MobileNetV1

PREPROCESSING_SUFFIX = ".preprocessing.json"
CONVERTERS: dict[str, Callable[[Any], Converted]] = {
    "tf_slim": tf_slim.from_tf_slim, "keras": keras.from_keras, "timm": timm.from_timm,
}
# The model fields each source's conventions need (activation, padding, BatchNorm, width floor).
SOURCE_FIELDS: dict[str, dict[str, Any]] = {"tf_slim": tf_slim.FIELDS, "keras": keras.FIELDS, "timm": timm.FIELDS}
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")


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


class Pretrained(NamedTuple):
    """A loaded model: `model.apply(variables, preprocessing(image)[None])` gives its logits."""

    model: MobileNetV1
    variables: dict[str, Any]
    preprocessing: Preprocessing

    @property
    def fields(self) -> dict[str, Any]:
        """The model's constructor fields (JSON-ready), e.g. to build a model for fine-tuning."""
        return weights.model_fields(self.model)


def _tf_slim(alpha: float, size: int, top1: float) -> PretrainedWeights:
    alpha_text = {1.0: "1.0", 0.75: "0.75", 0.5: "0.5", 0.25: "0.25"}[alpha]
    return PretrainedWeights(
        f"mobilenet_v1_{round(alpha * 100):03d}_{size}.tf_slim", "tf_slim",
        f"http://download.tensorflow.org/models/mobilenet_v1_2018_02_22/mobilenet_v1_{alpha_text}_{size}.tgz",
        None, alpha, 1001, dataclasses.replace(TF_SLIM, size=size), top1,
    )


def _keras(alpha: float, size: int, top1: float | None) -> PretrainedWeights:
    alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    return PretrainedWeights(
        f"mobilenet_v1_{round(alpha * 100):03d}_{size}.keras", "keras",
        f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_{alpha_text}_{size}_tf.h5",
        None, alpha, 1000, dataclasses.replace(TF_SLIM, size=size), top1,
    )


def _timm(alpha: float, tag: str, crop_fraction: float, top1: float) -> PretrainedWeights:
    return PretrainedWeights(
        f"mobilenet_v1_{round(alpha * 100):03d}_224.timm", "timm",
        f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors",
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
        _timm(1.0, "mobilenetv1_100.ra4_e3600_r224_in1k", 0.875, 75.388),
        _timm(1.25, "mobilenetv1_125.ra4_e3600_r224_in1k", 0.9, 76.920),
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


def source_of(path: str | os.PathLike) -> str:
    """The converter that reads the file or folder at `path`: "tf_slim", "keras", "timm" or "model"."""
    path = Path(path)
    name = path.name
    if Path(str(path) + weights.FIELDS_SUFFIX).exists():
        return "model"
    if path.is_dir() or name.endswith((*_ARCHIVE_SUFFIXES, ".index")) or Path(str(path) + ".index").exists():
        return "tf_slim"
    if name.endswith(".h5"):
        return "keras"
    if path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        return "timm"
    raise ValueError(
        f"cannot tell the format of {path}: expected a TF-Slim checkpoint (prefix, folder or .tgz), a Keras "
        f".h5, a timm .safetensors / .pth, or a model file saved with save_pretrained"
    )


def convert_file(path: str | os.PathLike, source: str) -> Converted:
    """Convert the file at `path` with the converter named `source` (archives are extracted)."""
    if source not in CONVERTERS:
        raise ValueError(f"source must be one of {tuple(CONVERTERS)}, got {source!r}")
    path = Path(path)
    if source == "tf_slim" and path.name.endswith(_ARCHIVE_SUFFIXES):
        path = _extract(path)
    return CONVERTERS[source](path)


def _published(path: Path) -> PretrainedWeights | None:
    """The registry entry whose published (or cache) file name is `path`'s, if exactly one."""
    matches = [w for w in REGISTRY.values() if path.name in (w.filename, w.url.rsplit("/", 1)[-1])]
    return matches[0] if len(matches) == 1 else None


def _load_entry(entry: PretrainedWeights, file: str | os.PathLike | None) -> Pretrained:
    if file is None:
        path = download.fetch(entry.url, entry.filename, entry.sha256)
    else:
        path = Path(file)
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


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    file: str | os.PathLike | None = None,
    preprocessing: Preprocessing | None = None,
) -> Pretrained:
    """(model, variables, preprocessing) for registered weights or a local file.

    A registry name downloads (once) and converts the published file, or converts `file` when
    given (the published file, checked against the pinned sha256 if any, or its contents, such
    as an extracted TF-Slim checkpoint prefix). A path is converted by its format; a
    published file name selects its registry entry, other files get their family's preprocessing
    at 224 (TF-Slim / Keras or timm). A model file written by `save_pretrained` (or
    `weights.save_model`, with `preprocessing` given) loads directly. `preprocessing` overrides.
    """
    key = str(name_or_path)
    if key in REGISTRY:
        loaded = _load_entry(REGISTRY[key], file)
    elif not Path(key).exists():
        raise ValueError(f"{key!r} is neither a registered name nor an existing path; registered: {sorted(REGISTRY)}")
    elif entry := _published(Path(key)):
        loaded = _load_entry(entry, key)
    elif (source := source_of(key)) == "model":
        model, variables = weights.load_model(key)
        sidecar = Path(key + PREPROCESSING_SUFFIX)
        if preprocessing is None and not sidecar.exists():
            raise FileNotFoundError(f"{sidecar} is missing: pass preprocessing= or save the model with save_pretrained")
        recipe = preprocessing or Preprocessing(**_tuples(json.loads(sidecar.read_text())))
        loaded = Pretrained(model, variables, recipe)
    else:
        converted = convert_file(key, source)
        loaded = Pretrained(converted.model(), converted.variables, TIMM if source == "timm" else TF_SLIM)
    return loaded._replace(preprocessing=preprocessing) if preprocessing else loaded


def _tuples(recipe: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples `Preprocessing` holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}


def save_pretrained(path: str | os.PathLike, pretrained: Pretrained) -> None:
    """Write a loaded model as a model file (`weights.save_model`) plus its preprocessing beside it,
    so that `load_pretrained(path)` gives it back without converting again."""
    weights.save_model(str(path), pretrained.model, pretrained.variables)
    Path(str(path) + PREPROCESSING_SUFFIX).write_text(json.dumps(dataclasses.asdict(pretrained.preprocessing), indent=1))
