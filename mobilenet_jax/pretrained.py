"""Pretrained ImageNet weights by name: `mobilenet_jax.pretrained.load_pretrained(name_or_path)`.

The registry (`interop/registry.py`), the resolver (`interop/pretrained.py`), the cache and the
converters live in `mobilenet_jax.interop`; this module re-exports their public names.
"""

from mobilenet_jax.interop.download import cache_dir
from mobilenet_jax.interop.imagenet import class_names
from mobilenet_jax.interop.preprocessing import Preprocessing
from mobilenet_jax.interop.pretrained import Pretrained, load_pretrained, save_pretrained
from mobilenet_jax.interop.registry import REGISTRY, PretrainedWeights

__all__ = [
    "REGISTRY",
    "Preprocessing",
    "Pretrained",
    "PretrainedWeights",
    "cache_dir",
    "class_names",
    "load_pretrained",
    "save_pretrained",
]
