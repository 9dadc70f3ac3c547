"""TF-Slim MobileNet v1 checkpoints (the paper authors' `mobilenet_v1_{alpha}_{size}`) -> Flax.

Names (tensorflow/models `research/slim/nets/mobilenet_v1.py`): `MobilenetV1/Conv2d_0/weights`,
`MobilenetV1/Conv2d_{i}_depthwise/depthwise_weights` (3, 3, C, 1), `Conv2d_{i}_pointwise/weights`,
each followed by `.../BatchNorm/{gamma, beta, moving_mean, moving_variance}`, and the classifier
`MobilenetV1/Logits/Conv2d_1c_1x1/{weights, biases}`, a 1x1 convolution over 1001 classes
(index 0 = background). Slim uses ReLU6, TF SAME padding and BatchNorm epsilon 1e-3, decay
0.9997. TF-Slim pools with a 7x7 VALID window, which equals this model's global mean for inputs
up to 224 (final map at most 7x7) but not beyond. A published tarball holds both a training
checkpoint (raw variables and their ExponentialMovingAverage shadows) and `*_frozen.pb`, the
inference graph its publisher froze from one of the two.
"""

from __future__ import annotations

import functools
import logging
import os
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from etils import epath

from mobilenet_jax.interop.layout import ConvBN, Converted, assemble, from_tf_layout
from mobilenet_jax.model import BLOCKS
from mobilenet_jax.paths import to_path

SCOPE = "MobilenetV1"
EMA_SUFFIX = "/ExponentialMovingAverage"
_logger = logging.getLogger(__name__)
HEAD = (f"{SCOPE}/Logits/Conv2d_1c_1x1/weights", f"{SCOPE}/Logits/Conv2d_1c_1x1/biases")
FROZEN_GRAPH_SUFFIX = ".pb"
FROZEN_GRAPH_PATTERN = "*_frozen.pb"  # the frozen graph's name in a published tarball
VALUE_SETS = {"ExponentialMovingAverage shadows": EMA_SUFFIX, "raw variables": ""}
FIELDS = dict(activation="relu6", padding="same", bn_epsilon=1e-3, bn_momentum=0.9997, min_depth=8)


def layer_names() -> list[ConvBN]:
    """Source names of the 27 convolution + BatchNorm layers, in forward order."""
    layers = [("Conv2d_0", "weights")]
    for i in range(1, len(BLOCKS) + 1):
        layers += [(f"Conv2d_{i}_depthwise", "depthwise_weights"), (f"Conv2d_{i}_pointwise", "weights")]
    return [
        ConvBN(f"{SCOPE}/{layer}/{kernel}", *(f"{SCOPE}/{layer}/BatchNorm/{v}" for v in
                                            ("gamma", "beta", "moving_mean", "moving_variance")))
        for layer, kernel in layers
    ]


def checkpoint_prefix(path: str | os.PathLike) -> str:
    """The checkpoint prefix at `path` (local or gs://): a prefix, its `.index` file, or a folder holding one."""
    given, path = path, to_path(path)
    if path.is_dir():
        indexes = index_files(path)
        if not indexes:
            raise FileNotFoundError(
                f"{given} holds no weights: no TensorFlow checkpoint (*.index) nor frozen graph ({FROZEN_GRAPH_PATTERN}); "
                f"pass a checkpoint prefix, a .pb, a published .tgz, a model file or a finished run's workdir"
            )
        if len(indexes) > 1:
            raise FileNotFoundError(
                f"{given} holds {len(indexes)} checkpoint .index files, expected 1; pass the checkpoint prefix"
            )
        path = indexes[0]
    prefix = os.fspath(path).removesuffix(".index")
    if not to_path(prefix + ".index").exists():
        raise FileNotFoundError(f"no TensorFlow checkpoint at {prefix} ({prefix}.index is missing)")
    return prefix


def index_files(folder: str | os.PathLike) -> list[epath.Path]:
    """The checkpoint `.index` files under `folder` (local or gs://), sorted."""
    return sorted(root / name for root, _, names in to_path(folder).walk() for name in names if name.endswith(".index"))


def model_tensor_names() -> list[str]:
    """Every name a conversion may read: the model's variables and their EMA shadows."""
    names = [name for layer in layer_names() for name in layer.names()] + list(HEAD)
    return names + [name + EMA_SUFFIX for name in names]


def read_frozen_graph(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """The model's tensors in the frozen GraphDef at `path` (a `*_frozen.pb`), by name, read-only.

    Freezing turns each variable into a constant of the same name, so the names are the
    checkpoint's; a frozen graph holds no ExponentialMovingAverage shadows, only the values
    its publisher chose for inference. Constants of other ops (a retrained head) are left unread.
    A frozen graph lists no shapes apart from its values, so the last one read is kept until its
    file changes: describing the weights and converting them read the file once.
    """
    stat = os.stat(path)
    return _frozen_graph(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _frozen_graph(path: str, mtime_ns: int, size: int) -> Mapping[str, np.ndarray]:
    """`read_frozen_graph` of the file at `path` as it is at (`mtime_ns`, `size`)."""
    import tensorflow as tf  # only this reader needs TensorFlow

    graph = tf.compat.v1.GraphDef()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except Exception as error:  # protobuf raises DecodeError, RuntimeWarning-free ValueError, ...
        raise ValueError(f"{path} is not a TensorFlow GraphDef ({error}); pass a *_frozen.pb file") from error
    wanted = set(model_tensor_names())
    tensors = {}
    for node in graph.node:
        if node.op == "Const" and node.name in wanted:
            tensors[node.name] = tf.make_ndarray(node.attr["value"].tensor)
            tensors[node.name].setflags(write=False)
    return types.MappingProxyType(tensors)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The model's tensors (and shadows) in the TensorFlow checkpoint at `path`, by name.

    Optimizer slots and other variables are left unread.
    """
    import tensorflow as tf  # only this reader needs TensorFlow

    reader = tf.train.load_checkpoint(checkpoint_prefix(path))
    return {name: reader.get_tensor(name) for name in model_tensor_names() if reader.has_tensor(name)}


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The shapes of the model's tensors (and shadows) in the TensorFlow checkpoint at `path`, from
    its variable list: no values are read."""
    import tensorflow as tf  # only this reader needs TensorFlow

    wanted = set(model_tensor_names())
    return {name: tuple(shape) for name, shape in tf.train.list_variables(checkpoint_prefix(path)) if name in wanted}


def frozen_graph_in(folder: str | os.PathLike) -> Path | None:
    """The one `*_frozen.pb` under `folder`, or None if it holds none."""
    graphs = sorted(Path(folder).rglob(FROZEN_GRAPH_PATTERN))
    if len(graphs) > 1:
        raise ValueError(
            f"{folder} holds {len(graphs)} frozen graphs ({', '.join(g.name for g in graphs)}), expected at most 1; "
            f"pass the .pb to convert"
        )
    return graphs[0] if graphs else None


def matching_values(graph: Mapping[str, np.ndarray], checkpoint: Mapping[str, np.ndarray]) -> str | None:
    """Which of the checkpoint's value sets (a `VALUE_SETS` key) the graph's tensors all equal, if either."""
    for label, suffix in VALUE_SETS.items():
        if graph and all(name + suffix in checkpoint and np.array_equal(value, checkpoint[name + suffix])
                         for name, value in graph.items()):
            return label
    return None


def log_frozen_graph_values(graph_path: Path, graph: Mapping[str, np.ndarray], prefix: str) -> None:
    """Log which value set of the checkpoint at `prefix` the frozen graph holds; warn if neither."""
    label = matching_values(graph, read_checkpoint(prefix))
    if label:
        _logger.info("%s holds the %s of checkpoint %s", graph_path, label, prefix)
    else:
        _logger.warning(
            "%s holds neither the %s of checkpoint %s: it was frozen from other values",
            graph_path, " nor the ".join(VALUE_SETS), prefix,
        )


def read_source(path: Path, use_ema: bool | None) -> Mapping[str, np.ndarray]:
    """The tensors a conversion reads at `path`: a frozen graph, a folder's frozen graph (unless
    `use_ema` asks for the checkpoint's value sets), or a checkpoint."""
    if path.name.endswith(FROZEN_GRAPH_SUFFIX):
        return read_frozen_graph(path)
    graph_path = frozen_graph_in(path) if path.is_dir() and use_ema is None else None
    if graph_path is None:
        return read_checkpoint(path)
    graph = read_frozen_graph(graph_path)
    if any(path.rglob("*.index")):
        log_frozen_graph_values(graph_path, graph, checkpoint_prefix(path))
    return graph


def from_tf_slim(source: str | os.PathLike | Mapping[str, Any], use_ema: bool | None = None) -> Converted:
    """Flax variables and model fields from TF-Slim MobileNet v1 weights: checkpoint, frozen graph or folder.

    `source` is a checkpoint prefix (or its folder or `.index` file), a frozen GraphDef (`.pb`),
    a folder (an extracted published tarball), or a mapping name -> array (a checkpoint's
    tensors, or a frozen graph's constants). A folder holding a `*_frozen.pb` converts that
    graph, the publisher's inference graph, and when a checkpoint sits beside it logs whether
    the graph holds the checkpoint's ExponentialMovingAverage shadows or its raw variables (a
    warning if neither); `use_ema` True or False reads the folder's checkpoint instead. From a
    checkpoint, `use_ema=None` takes each variable's `/ExponentialMovingAverage` shadow when
    present (the published checkpoints were evaluated through them); True requires the
    shadows, False ignores them. `Converted.origin` names the tensor each variable came from.
    Alpha, the class count (1001 with background at 0) and whether a classifier is present are
    inferred.
    """
    tensors = source if isinstance(source, Mapping) else read_source(Path(source), use_ema)
    where = "the mapping" if isinstance(source, Mapping) else str(source)

    def resolve(name: str) -> str:
        shadow = name + EMA_SUFFIX
        if use_ema is not False and shadow in tensors:
            return shadow
        if use_ema:
            raise KeyError(f"{where} has no {shadow!r}; pass use_ema=False to use the raw variables")
        if name not in tensors:
            raise KeyError(f"{where} is missing {name!r}: is it a TF-Slim MobilenetV1 checkpoint?")
        return name

    def read(name: str, role: str) -> np.ndarray:
        return from_tf_layout(name, tensors[name], role)

    has_head = any(n in tensors for n in (HEAD[0], HEAD[0] + EMA_SUFFIX))
    head = (resolve(HEAD[0]), resolve(HEAD[1])) if has_head else None
    layers = [ConvBN(*map(resolve, layer.names())) for layer in layer_names()]
    converted = assemble(read, layers, head, FIELDS, f"TF-Slim ({where})")
    shadows = sum(name.endswith(EMA_SUFFIX) for name in converted.origin.values())
    _logger.info("%s: %d of %d variables from ExponentialMovingAverage shadows", where, shadows, len(converted.origin))
    return converted
