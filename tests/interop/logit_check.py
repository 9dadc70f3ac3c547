"""Shared by the converter tests: a converted model's logits, computed once under `jax.jit`."""

from __future__ import annotations

import jax
import numpy as np

from mobilenet_jax.model import MobileNetV1

TOLERANCE = 1e-4  # max |logit difference| allowed against the source framework, float32


def flax_logits(converted, images: np.ndarray) -> np.ndarray:
    """Eval-mode output on NHWC `images` of a `Converted` or a loaded `Pretrained` (jit: one
    compile per shape)."""
    model = converted.model if isinstance(converted.model, MobileNetV1) else converted.model()
    return np.asarray(jax.jit(model.apply)(converted.variables, images))


def max_diff(converted, images: np.ndarray, reference: np.ndarray, label: str) -> float:
    """Max |difference| between the converted model's output and `reference`, printed with `label`."""
    diff = float(np.max(np.abs(flax_logits(converted, images) - reference)))
    print(f"{label}: max |logit diff| {diff:.2e}")
    return diff
