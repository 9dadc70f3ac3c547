"""Keras `applications.MobileNet` weights (.h5, .weights.h5, or a Keras model) -> Flax.

Layers (keras `keras/src/applications/mobilenet.py`): `conv1` + `conv1_bn`, `conv_dw_{i}` +
`conv_dw_{i}_bn`, `conv_pw_{i}` + `conv_pw_{i}_bn` for i = 1..13, and the classifier
`conv_preds`, a 1x1 convolution with bias over 1000 classes. Keras uses ReLU6, BatchNorm epsilon
1e-3 (momentum 0.99) and widths int(c * alpha) with no floor. Its stride-2 depthwise layers pad
(0, 1) then convolve VALID, which is TF SAME padding (this model's `padding="same"`) only where
the layer's input size is even: `keras_size_matches(size)` says whether a size qualifies (every
multiple of 32 does, so every published size).

Files are read with h5py alone, in either layout: the Keras 2 layout of the published weights
(and of Keras 3 `model.save("x.h5")`), groups per layer name with `weight_names`; or Keras 3's
`model.save_weights("x.weights.h5")`, groups `layers/<class>_<k>/vars/<i>` numbered by layer
class in model order.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

import numpy as np

from mobilenet_jax.interop.layout import ConvBN, Converted, assemble, from_tf_layout
from mobilenet_jax.model import BLOCKS
from mobilenet_jax.paths import to_path

FIELDS = dict(activation="relu6", padding="same", bn_epsilon=1e-3, bn_momentum=0.99, min_depth=1)
HEAD = ("conv_preds/kernel", "conv_preds/bias")
BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
_BLOCK_IDS = range(1, len(BLOCKS) + 1)


def conv_layers() -> list[tuple[str, str]]:
    """(convolution, BatchNorm) Keras layer names of the 27 layers, in forward order."""
    layers = [("conv1", "conv1_bn")]
    for i in _BLOCK_IDS:
        layers += [(f"conv_dw_{i}", f"conv_dw_{i}_bn"), (f"conv_pw_{i}", f"conv_pw_{i}_bn")]
    return layers


def keras_size_matches(size: int) -> bool:
    """Whether Keras's MobileNet computes TF SAME padding at input `size` (height or width).

    The stride-2 depthwise layers (blocks 2, 4, 6, 12) see sizes ceil(size / 2^k), k = 1..4;
    Keras's (0, 1) padding equals SAME only when each of these is even.
    """
    return all(-(-size // 2**k) % 2 == 0 for k in range(1, 5))


def _short_name(weight_name: str) -> str:
    """"conv_dw_1/depthwise_kernel:0" (Keras 2) or "kernel" (Keras 3) -> "kernel"."""
    name = weight_name.split("/")[-1].split(":")[0]
    return "kernel" if name == "depthwise_kernel" else name


def _structural_groups() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Keras 3 `.weights.h5` group -> (Keras layer name, names of its numbered vars)."""
    convs = ["conv1", *(f"conv_pw_{i}" for i in _BLOCK_IDS), "conv_preds"]
    norms = [bn for _, bn in conv_layers()]
    groups = {}
    for cls, names in (("conv2d", convs), ("depthwise_conv2d", [f"conv_dw_{i}" for i in _BLOCK_IDS]),
                       ("batch_normalization", norms)):
        for k, layer in enumerate(names):
            variables = BN_WEIGHTS if cls == "batch_normalization" else ("kernel", "bias")
            groups[cls if k == 0 else f"{cls}_{k}"] = (layer, variables)
    return groups


def read_h5(path: str | os.PathLike, shapes_only: bool = False) -> dict[str, Any]:
    """Weights of a Keras MobileNet .h5 / .weights.h5 file (local or gs://) as {"layer/weight": array},
    or with `shapes_only` their shapes (from the file's datasets: no values are read).

    Raises ValueError naming a file that is not HDF5 or holds no Keras weights.
    """
    take = (lambda dataset: dataset.shape) if shapes_only else (lambda dataset: dataset[()])
    table = {}
    with _open_h5(path) as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            for layer in root.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else str(layer)
                for weight in root[layer].attrs.get("weight_names", []):
                    weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                    table[f"{layer}/{_short_name(weight)}"] = take(root[layer][weight])
        elif "layers" in root:
            for group, (layer, names) in _structural_groups().items():
                stored = root["layers"].get(f"{group}/vars")
                for i, name in enumerate(names):
                    if stored is not None and str(i) in stored:
                        table[f"{layer}/{name}"] = take(stored[str(i)])
        else:
            raise ValueError(
                f"{path} is neither a Keras 2 weights file (no 'layer_names') nor a Keras 3 "
                f".weights.h5 file (no 'layers' group)"
            )
    return table


@contextlib.contextmanager
def _open_h5(path: str | os.PathLike) -> Iterator[Any]:
    """The HDF5 file at `path` (local or gs://, read in place through a file object) as an
    h5py.File; FileNotFoundError or ValueError naming it, ImportError naming h5py where it is missing."""
    try:
        import h5py  # only file reading needs h5py
    except ImportError as error:
        raise ImportError(f"reading {path} needs h5py: pip install h5py") from error
    if not to_path(path).exists():
        raise FileNotFoundError(f"Keras weights file {path} does not exist")
    with to_path(path).open("rb") as raw:
        try:
            file = h5py.File(raw, "r")
        except OSError as error:  # h5py's message ("file signature not found") names no file
            raise ValueError(
                f"{path} is not an HDF5 file h5py can read ({error}); pass a Keras .h5 weights file"
            ) from error
        with file:
            yield file


def read_model(model: Any) -> dict[str, np.ndarray]:
    """Weights of a built Keras MobileNet as {"layer/weight": array}; refuses sizes Keras pads
    differently from TF SAME (`keras_size_matches`)."""
    shape = model.input_shape
    for size in shape[1:3] if shape[-1] == 3 else shape[2:4]:  # channels last or first
        if size is not None and not keras_size_matches(size):
            raise ValueError(
                f"Keras MobileNet input size {size} gives an odd input to a stride-2 depthwise layer, where "
                f"Keras pads (0, 1) but TF SAME pads (1, 1); rebuild the Keras model at a multiple of 32"
            )
    return {
        f"{layer.name}/{_short_name(w.name)}": np.asarray(value)
        for layer in model.layers
        for w, value in zip(layer.weights, layer.get_weights())
    }


def from_keras(source: str | os.PathLike | Mapping[str, Any] | Any) -> Converted:
    """Flax variables and model fields from Keras MobileNet weights: a file path, a mapping
    {"layer/weight": array} (as `read_h5` gives) or a Keras model.

    Alpha and the class count (0 for `include_top=False` weights) are inferred. The result
    reproduces Keras's logits (`classifier_activation=None`) at every input size for which
    `keras_size_matches` holds. Raises KeyError naming a missing layer weight.
    """
    if isinstance(source, (str, os.PathLike)):
        table, where = read_h5(source), str(source)
    elif isinstance(source, Mapping):
        table, where = source, "the mapping"
    else:
        table, where = read_model(source), f"Keras model {getattr(source, 'name', '')!r}"

    def read(name: str, role: str) -> np.ndarray:
        if name not in table:
            raise KeyError(f"{where} has no weight {name!r}: is it a keras.applications.MobileNet?")
        return from_tf_layout(name, table[name], role)

    layers = [ConvBN(f"{conv}/kernel", *(f"{bn}/{w}" for w in BN_WEIGHTS)) for conv, bn in conv_layers()]
    head = HEAD if HEAD[0] in table else None
    return assemble(read, layers, head, FIELDS, f"Keras ({where})")
