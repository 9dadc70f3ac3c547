"""Eval-mode forward passes over a batch in chunks of a few images.

In eval mode every image is computed on its own (BatchNorm uses its running statistics), so a
batch can be split freely, with the same logits to the last bit. A chunk of a few images keeps
each layer's activations in cache and XLA's temporary buffer small; the backend table
(`ops.backends`) says where that pays.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from mobilenet_jax.ops.backends import kernel_defaults


def default_images_per_chunk(backend: str | None = None) -> int | None:
    """Images per chunk that suit `backend` (its row of the backend table); None: the whole batch."""
    return kernel_defaults(backend).inference_images_per_chunk


def predict(
    apply_fn: Callable[..., Any],
    variables: Any,
    images: jax.Array,
    *,
    images_per_chunk: int | None | str = "auto",
    **kwargs: Any,
) -> Any:
    """`apply_fn(variables, images, train=False, **kwargs)`, computed `images_per_chunk` at a time.

    `apply_fn` is a model's `apply` (or a train state's `apply_fn`). "auto" takes
    `default_images_per_chunk()`; None computes the whole batch at once. Chunks run in a
    `lax.map`, a last partial chunk on its own; outputs of any structure are joined along the
    batch axis. Works under `jit`, `pmap` and `shard_map` (on each device's shard).
    """
    chunk = default_images_per_chunk() if images_per_chunk == "auto" else images_per_chunk
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"images_per_chunk must be a positive int, None or 'auto', got {images_per_chunk!r}")
    forward = lambda x: apply_fn(variables, x, train=False, **kwargs)
    batch = images.shape[0]
    if chunk is None or chunk >= batch:
        return forward(images)

    whole = batch - batch % chunk
    chunks = images[:whole].reshape(whole // chunk, chunk, *images.shape[1:])
    parts = [jax.tree.map(lambda a: a.reshape(whole, *a.shape[2:]), lax.map(forward, chunks))]
    if whole < batch:
        parts.append(forward(images[whole:]))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts) if len(parts) > 1 else parts[0]
