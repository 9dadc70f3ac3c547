"""Models for the export tests: small MobileNets whose BatchNorm statistics are realistic.

A freshly initialised network has unit BatchNorm statistics, so its activations shrink layer
after layer and its logits are ~1e-14: useless for comparing exports. Here every BatchNorm gets
a random scale and bias and the running statistics of one training pass over the images
(momentum 0 copies the batch statistics), so activations stay of order one, as in a trained
network.
"""

from __future__ import annotations

import jax
import numpy as np

from mobilenet_jax import MobileNetV1
from mobilenet_jax.export import Deployable

BATCH = 2


def images(size: int, count: int = BATCH, seed: int = 0) -> np.ndarray:
    """Standard-normal NHWC float32 images."""
    return np.random.default_rng(seed).standard_normal((count, size, size, 3), dtype=np.float32)


def realistic_deployable(alpha: float, size: int, num_classes: int = 10, seed: int = 0, **fields) -> Deployable:
    """A MobileNet at `alpha` and `size` with randomised BatchNorm parameters and statistics."""
    model = MobileNetV1(num_classes=num_classes, alpha=alpha, **fields)
    x = images(size, 8, seed + 1)
    variables = model.init(jax.random.key(seed), x[:1])
    rng = np.random.default_rng(seed)

    def randomise(path, leaf):
        name = path[-1].key
        if name == "scale":
            return leaf * rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name == "bias" and path[-2].key == "bn":
            return leaf + rng.normal(0, 0.2, leaf.shape).astype(np.float32)
        return leaf

    params = jax.tree_util.tree_map_with_path(randomise, variables["params"])
    _, state = model.clone(bn_momentum=0.0).apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
    )
    return Deployable(model, {"params": params, "batch_stats": state["batch_stats"]}, image_size=size)
