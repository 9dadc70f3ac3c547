"""Checks a training config and applies its variant before a run; imports neither TF nor torch."""

from __future__ import annotations

import dataclasses

import ml_collections

from mobilenet_jax import model, optim

# The conventions of mobilenet_jax.data (kept here so configs check without TensorFlow; a test
# keeps the two lists equal).
NORMALIZATIONS = ("half", "imagenet", "inception")
PARALLELISMS = ("jit", "pmap")
# MobileNetV1 fields that config.model must not set: Flax's own, and the dataset's class count.
_MODULE_FIELDS = frozenset({"parent", "name", "num_classes"})


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A locked copy of `config` with its variant applied and every name and rate checked.

    A `variant` such as "mobilenet_v1_075_160" overrides model.alpha and image_size.
    """
    config = config.copy_and_resolve_references()
    if config.get("variant"):
        variant = model.get_variant(config.variant)
        config.model.alpha = variant.alpha
        config.image_size = variant.resolution
    _check_config(config)
    config.lock()
    return config


def _check_config(config: ml_collections.ConfigDict) -> None:
    """Raise a ValueError naming the first bad field, its allowed values and the fix."""
    optim.check_choice("normalization", config.normalization, NORMALIZATIONS)
    optim.check_choice("parallelism", config.parallelism, PARALLELISMS)
    optim.check_optimizer_config(config)
    if not 0 <= config.ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) (0 disables EMA), got {config.ema_decay}")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be >= 1, got {config.eval_batch_size}")
    _check_model(config.model)


def _check_model(model_config: ml_collections.ConfigDict) -> None:
    """Build the model from config.model so its own checks run and unknown fields are caught."""
    fields = {field.name for field in dataclasses.fields(model.MobileNetV1)} - _MODULE_FIELDS
    unknown = sorted(set(model_config) - fields)
    if unknown:
        raise ValueError(f"config.model has unknown fields {unknown}; MobileNetV1 takes {sorted(fields)}")
    model.MobileNetV1(**model_config)
