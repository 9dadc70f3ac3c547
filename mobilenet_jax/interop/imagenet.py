"""ImageNet-1k class names by logit index, shipped with the package (`imagenet_classes.txt`:
WordNet id and names per line, in the standard sorted-synset order)."""

from __future__ import annotations

import functools
from importlib import resources

BACKGROUND = "background"


@functools.cache
def _classes() -> tuple[tuple[str, str], ...]:
    text = resources.files("mobilenet_jax.interop").joinpath("imagenet_classes.txt").read_text("utf-8")
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)


def synsets() -> list[str]:
    """The 1000 WordNet ids ("n01440764", ...) in logit order."""
    return [wnid for wnid, _ in _classes()]


def class_names(num_classes: int = 1000) -> list[str]:
    """Names by logit index: 1000 ImageNet classes, or 1001 with TF-Slim's background at index 0."""
    names = [name for _, name in _classes()]
    if num_classes == len(names):
        return names
    if num_classes == len(names) + 1:
        return [BACKGROUND, *names]
    raise ValueError(f"ImageNet names exist for 1000 or 1001 (background first) classes, got {num_classes}")
