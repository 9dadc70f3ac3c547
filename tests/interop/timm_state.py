"""Random timm-layout MobileNet v1 state dicts as numpy arrays (no torch): for tests that need a
weights file of the real format but not the torch model behind it."""

from __future__ import annotations

import numpy as np

from mobilenet_jax.interop import timm
from mobilenet_jax.model import BLOCKS, STEM_CHANNELS, scaled_channels


def random_state(alpha: float, num_classes: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """timm state-dict names and NCHW layouts, He-scaled kernels, BatchNorm far from identity."""
    rng = np.random.default_rng(seed)
    widths = [scaled_channels(c, alpha) for c in (STEM_CHANNELS, *(c for c, _ in BLOCKS))]
    kernels = [(widths[0], 3, 3, 3)]
    for c_in, c_out in zip(widths, widths[1:]):
        kernels += [(c_in, 1, 3, 3), (c_out, c_in, 1, 1)]
    state = {}
    for names, shape in zip(timm.layer_names(), kernels):
        fan_in = int(np.prod(shape[1:]))
        state[names.kernel] = rng.normal(0, np.sqrt(2 / fan_in), shape)
        state[names.gamma], state[names.beta] = rng.uniform(0.5, 1.5, shape[0]), rng.normal(0, 0.2, shape[0])
        state[names.mean], state[names.var] = rng.normal(0, 0.2, shape[0]), rng.uniform(0.5, 2.0, shape[0])
    if num_classes:
        state[timm.HEAD[0]] = rng.normal(0, np.sqrt(1 / widths[-1]), (num_classes, widths[-1]))
        state[timm.HEAD[1]] = rng.normal(0, 0.1, num_classes)
    return {k: v.astype(np.float32) for k, v in state.items()}


def write_safetensors(path: str, alpha: float, num_classes: int = 1000, seed: int = 0) -> str:
    """A .safetensors file of `random_state(...)` at `path`."""
    from safetensors.numpy import save_file

    save_file(random_state(alpha, num_classes, seed), path)
    return path
