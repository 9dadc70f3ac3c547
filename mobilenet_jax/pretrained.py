"""Pretrained ImageNet weights by name: `mobilenet_jax.pretrained.load_pretrained(name_or_path)`.

The registry, cache and converters live in `mobilenet_jax.interop`; this module is their public
face.
"""

from mobilenet_jax.interop.download import cache_dir
from mobilenet_jax.interop.imagenet import class_names
from mobilenet_jax.interop.preprocessing import Preprocessing
from mobilenet_jax.interop.pretrained import REGISTRY, Pretrained, PretrainedWeights, load_pretrained, save_pretrained

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
