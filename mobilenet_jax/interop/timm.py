"""timm MobileNet v1 weights (`mobilenetv1_100`, `mobilenetv1_125`) -> Flax.

timm builds MobileNet v1 from 'dsa' blocks (depthwise-separable, activation after the pointwise
conv, no skip) in five stages of 1, 2, 2, 6, 2 blocks: keys `conv_stem`, `bn1`,
`blocks.{stage}.{index}.{conv_dw, bn1, conv_pw, bn2}`, `classifier` (Linear). It uses ReLU6,
symmetric padding 1, BatchNorm epsilon 1e-5 and widths `make_divisible(c * multiplier, 8)`,
which equal this model's int(c * alpha) for multipliers 0.25, 0.5, 0.75, 1.0 and 1.25.
`mobilenetv1_100h` adds a 1x1 head convolution (`conv_head`, `bn2`) before pooling, which
MobileNetV1 does not have: it is refused by name. A state dict with keys of any other layout
(another timm model, e.g. `mobilenetv2_050`) is refused as not a timm MobileNet v1.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mobilenet_jax.interop.layout import ConvBN, Converted, assemble, expect_rank
from mobilenet_jax.paths import to_path

FIELDS = dict(activation="relu6", padding="torch", bn_epsilon=1e-5, bn_momentum=0.9, min_depth=8)
STAGE_BLOCKS = (1, 2, 2, 6, 2)
HEAD = ("classifier.weight", "classifier.bias")
_BN = ("weight", "bias", "running_mean", "running_var")
_IGNORED_SUFFIX = ".num_batches_tracked"
HEAD_CONV = ("conv_head.weight", *(f"bn2.{v}" for v in _BN))  # mobilenetv1_100h's, before pooling
_SHOWN_KEYS = 3  # of the unexpected keys an error names
_MAX_HEADER = 100_000_000  # bytes: the safetensors format's limit on its header


def block_prefixes() -> list[str]:
    """`blocks.{stage}.{index}` of MobileNet v1's 13 blocks, in order."""
    return [f"blocks.{s}.{b}" for s, n in enumerate(STAGE_BLOCKS) for b in range(n)]


def layer_names() -> list[ConvBN]:
    """Source names of the 27 convolution + BatchNorm layers, in forward order."""
    pairs = [("conv_stem", "bn1")]
    for block in block_prefixes():
        pairs += [(f"{block}.conv_dw", f"{block}.bn1"), (f"{block}.conv_pw", f"{block}.bn2")]
    return [ConvBN(f"{conv}.weight", *(f"{bn}.{v}" for v in _BN)) for conv, bn in pairs]


def read_file(path: str | os.PathLike, shapes_only: bool = False) -> dict[str, Any]:
    """A state dict from a .safetensors file (read without torch) or a torch .pth / .pt / .bin, or
    with `shapes_only` its tensors' shapes (from the safetensors header, read alone, local or
    gs://; or a memory-mapped torch file; a legacy torch file is read whole).

    Raises ValueError naming the file when it is not of its format, ImportError naming torch
    when a torch file needs it.
    """
    if Path(path).suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return _safetensors_shapes(path) if shapes_only else load_file(str(path))
        except (SafetensorError, ValueError, TypeError, KeyError, AttributeError) as error:
            raise ValueError(
                f"{path} is not a readable .safetensors file ({_why(error)}); pass timm's model.safetensors"
            ) from error
    try:
        import torch  # only torch pickles need torch
    except ImportError as error:
        raise ImportError(f"reading {path} needs PyTorch: pip install torch, or pass the .safetensors file") from error
    try:
        mmap = shapes_only and zipfile.is_zipfile(path)  # a legacy (pre-zip) torch file cannot be mapped
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        return {name: tuple(value.shape) for name, value in state.items()} if shapes_only else state
    except OSError:
        raise
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ... for other bytes
        raise ValueError(
            f"{path} is not a readable PyTorch state dict ({_why(error)}); pass timm's weights file"
        ) from error


def _safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The tensors' shapes in the header of the .safetensors file at `path` (local or gs://): its
    first 8 bytes give the length N (little-endian) of the JSON that follows, naming each tensor's
    dtype, shape and offsets; nothing beyond it is read."""
    with to_path(path).open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > _MAX_HEADER:
            raise ValueError(f"a header of {size} bytes, over the format's {_MAX_HEADER}")
        header = json.loads(f.read(size))
    return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def _why(error: Exception) -> str:
    """`error`'s type and the first line of its message."""
    first = next(iter(str(error).splitlines()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor (any float dtype) or array-like as a float32 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, np.float32)


def from_torch_layout(name: str, value: Any, role: str) -> np.ndarray:
    """A torch tensor in Flax layout: (O, I, kh, kw) and depthwise (C, 1, kh, kw) by
    transpose(2, 3, 1, 0); Linear (K, C) by transpose; vectors as they are."""
    value = _numpy(value)
    if role in ("stem", "depthwise", "pointwise"):
        return expect_rank(name, value, 4, "O, I, kh, kw").transpose(2, 3, 1, 0)
    if role == "head_kernel":
        return expect_rank(name, value, 2, "out, in").T
    return expect_rank(name, value, 1, "C")


def from_timm(source: str | os.PathLike | Mapping[str, Any]) -> Converted:
    """Flax variables and model fields from a timm MobileNet v1 state dict or weights file.

    `source` is a state dict (torch tensors or arrays) or a .safetensors / .pth path. Alpha and
    the class count (0 after `reset_classifier(0)`) are inferred. Raises ValueError for
    `mobilenetv1_100h`'s head convolution or keys of another model, KeyError for a missing key.
    """
    state = read_file(source) if isinstance(source, (str, os.PathLike)) else source
    where = "the state dict" if isinstance(source, Mapping) else str(source)
    layers = layer_names()
    head = HEAD if HEAD[0] in state else None
    expected = {name for layer in layers for name in layer.names()} | set(head or ())
    extra = sorted(k for k in state if k not in expected and not k.endswith(_IGNORED_SUFFIX))
    if extra and set(extra) <= set(HEAD_CONV):
        raise ValueError(
            f"{where} has a 1x1 head convolution ('conv_head', 'bn2') before pooling, as timm's "
            f"mobilenetv1_100h does; MobileNetV1 has none. Use mobilenetv1_100 or mobilenetv1_125 weights"
        )
    if extra:
        shown = ", ".join(repr(k) for k in extra[:_SHOWN_KEYS]) + (", ..." if len(extra) > _SHOWN_KEYS else "")
        raise ValueError(
            f"{where} is not a timm MobileNet v1 state dict: {len(extra)} of its keys are no layer of one "
            f"({shown}); pass timm mobilenetv1_100 or mobilenetv1_125 weights"
        )

    def read(name: str, role: str) -> np.ndarray:
        if name not in state:
            raise KeyError(f"{where} is missing {name!r}: is it a timm mobilenetv1_100 / _125 state dict?")
        return from_torch_layout(name, state[name], role)

    return assemble(read, layers, head, FIELDS, f"timm ({where})")
