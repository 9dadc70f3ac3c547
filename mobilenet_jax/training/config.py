"""The one gate between a config and a run: everything is resolved and checked here, once.

`resolve(config)` applies the variant, rejects unknown fields, and builds what the rest of the
code takes instead of the ConfigDict: the model's fields, a `DataSpec`, an `OptimizerSpec`,
`StepOptions` and a `LoopSpec`. Each of those checks its own values when it is built, so a bad
config fails here, before anything is compiled or written. TensorFlow-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from mobilenet_jax import model as model_lib
from mobilenet_jax.choices import check_choice
from mobilenet_jax.data.spec import DataSpec
from mobilenet_jax.interop.describe import WeightsInfo
from mobilenet_jax.ops.quantize import MODES as QUANTIZATION_MODES
from mobilenet_jax.training import init as init_lib
from mobilenet_jax.training.mesh import PARALLELISMS
from mobilenet_jax.training.optim import REFERENCE_BATCH_SIZE, OptimizerSpec
from mobilenet_jax.training.step import StepOptions

# MobileNetV1 fields that config.model must not set: Flax's own, the dataset's class count, and
# what half_precision, sync_batch_stats and quantization decide.
_MODEL_FIELDS_SET_ELSEWHERE = frozenset({"parent", "name", "num_classes", "dtype", "bn_axis_name", "quantization"})
# Top-level fields that no spec holds: they are turned into other fields here.
_GATE_FIELDS = ("variant", "half_precision", "model", "init_from", "quantization", "per_device_batch_size")
# Linear scaling of the rate is kept up to this batch without warm-up: the reference's batch.
LARGE_BATCH = 4 * REFERENCE_BATCH_SIZE
# Goyal et al. (2017): 5 epochs of linear warm-up let the linearly scaled rate train at large batches.
LARGE_BATCH_WARMUP_EPOCHS = 5.0


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """How long to train, and when to log, evaluate, checkpoint and export."""

    seed: int = 0
    log_every_steps: int = 100
    eval_every_steps: int = 5000
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    keep_best_checkpoint: bool = True
    eval_only: bool = False
    export_path: str | None = None
    parallelism: str = "jit"
    ema_decay: float = 0.0
    new_classifier_init: str = "zeros"

    def __post_init__(self) -> None:
        check_choice("parallelism", self.parallelism, PARALLELISMS)
        check_choice("new_classifier_init", self.new_classifier_init, init_lib.NEW_CLASSIFIER_INITS)
        for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}; set --config.{field}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 disables EMA), got {self.ema_decay}")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A resolved config and the specs built from it."""

    config: ml_collections.ConfigDict  # resolved and locked: what the workdir records
    model_fields: dict[str, Any]  # MobileNetV1 fields but num_classes (the dataset's)
    data: DataSpec
    optimizer: OptimizerSpec
    step: StepOptions
    loop: LoopSpec
    initial: WeightsInfo | None = None  # what config.init_from's weights hold; the loop reads their arrays

    def create_model(self, num_classes: int) -> model_lib.MobileNetV1:
        """The MobileNetV1 of this experiment for `num_classes` classes."""
        return model_lib.MobileNetV1(num_classes=num_classes, **self.model_fields)


def resolve(config: ml_collections.ConfigDict) -> Experiment:
    """The experiment `config` describes; raises a ValueError naming the first bad field.

    A `variant` such as "mobilenet_v1_075_160" overrides model.alpha and image_size. Every field
    is checked before the init_from weights are looked at, and of those only their description
    is read (`init.describe`): no arrays, no download.
    """
    config = config.copy_and_resolve_references()
    quantization = config.get("quantization")
    if quantization is not None and quantization not in QUANTIZATION_MODES:
        raise ValueError(
            f"quantization must be one of {QUANTIZATION_MODES} or None (float training), got {quantization!r}; "
            "set --config.quantization=int8 or leave it unset"
        )
    if config.get("variant"):
        variant = model_lib.get_variant(config.variant)
        config.model.alpha = variant.alpha
        config.image_size = variant.resolution
    _scale_to_devices(config)
    specs = (DataSpec, OptimizerSpec, StepOptions, LoopSpec)
    known = {name for spec in specs for name in _field_names(spec)} | set(_GATE_FIELDS)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"config has unknown fields {unknown}; remove them (known fields: {sorted(known)})")
    data, optimizer, step, loop = (spec(**{name: config[name] for name in _field_names(spec)}) for spec in specs)
    _model_fields(config)
    if step.freeze_batch_stats and config.model.get("dropout_rate"):
        raise ValueError(
            f"freeze_batch_stats runs the model in inference mode, which disables dropout_rate="
            f"{config.model.dropout_rate}; set --config.model.dropout_rate=0 or freeze_batch_stats=False"
        )
    initial = init_lib.describe(config.init_from) if config.get("init_from") else None
    _adopt_weights(config, initial)
    if step.freeze_batch_stats and quantization and not (initial and initial.activation_ranges):
        raise ValueError(
            "quantization tracks activation ranges in train mode, which freeze_batch_stats turns off, and the "
            "init_from weights have no trained ranges to keep; set --config.freeze_batch_stats=False"
        )
    config.lock()
    step = dataclasses.replace(step, normalization=config.normalization)
    return Experiment(config, _model_fields(config), data, optimizer, step, loop, initial)


def _adopt_weights(config: ml_collections.ConfigDict, initial: WeightsInfo | None) -> None:
    """Fill config.model's architecture fields and config.normalization from the weights, in place.

    None means "the weights' value" (MobileNetV1's default without init_from); an explicit value
    that contradicts the weights is refused by name. normalization None is the weights' when they
    record one, else "imagenet". image_size and every other field stay the config's.
    """
    for field in init_lib.ARCHITECTURE_FIELDS:
        wanted = config.model.get(field)
        if initial is None:
            if wanted is None and field in config.model:
                del config.model[field]
            continue
        found = initial.fields[field]
        if wanted is not None and wanted != found:
            raise ValueError(
                f"config.model.{field}={wanted!r} contradicts the init_from weights ({config.init_from}: "
                f"{field}={found!r}); set --config.model.{field}={found!r} or leave it None"
            )
        config.model[field] = found
    if config.normalization is None:
        config.normalization = (initial and initial.normalization) or "imagenet"


def _scale_to_devices(config: ml_collections.ConfigDict) -> None:
    """Fill the batch sizes left None from per_device_batch_size and the run's devices, and a
    warmup_epochs left None from the batch (LARGE_BATCH_WARMUP_EPOCHS above LARGE_BATCH), in place."""
    per_device = config.get("per_device_batch_size")
    if per_device is not None and per_device < 1:
        raise ValueError(f"per_device_batch_size must be >= 1, got {per_device}; or unset it and set batch_size")
    if config.get("batch_size") is None:
        if per_device is None:
            raise ValueError("batch_size is None and per_device_batch_size is unset; set one of them")
        config.batch_size = per_device * jax.device_count()
    elif per_device is not None:
        logging.warning("batch_size=%d is set: per_device_batch_size=%d is not used", config.batch_size, per_device)
    if config.get("eval_batch_size") is None:
        config.eval_batch_size = config.batch_size
    if "warmup_epochs" in config and config.warmup_epochs is None:
        config.warmup_epochs = LARGE_BATCH_WARMUP_EPOCHS if config.batch_size > LARGE_BATCH else 0.0


def _field_names(spec: type) -> tuple[str, ...]:
    """The config fields a spec dataclass is built from: its own field names."""
    return tuple(field.name for field in dataclasses.fields(spec))


def _model_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.model plus the computation dtype and quantization, checked by building the model once
    (architecture fields left None, before the weights fill them, take the model's defaults)."""
    allowed = {field.name for field in dataclasses.fields(model_lib.MobileNetV1)} - _MODEL_FIELDS_SET_ELSEWHERE
    unknown = sorted(set(config.model) - allowed)
    if unknown:
        raise ValueError(f"config.model has unknown fields {unknown}; MobileNetV1 takes {sorted(allowed)}")
    given = {k: v for k, v in config.model.items() if v is not None or k not in init_lib.ARCHITECTURE_FIELDS}
    fields = dict(given, dtype=jnp.bfloat16 if config.half_precision else None, quantization=config.get("quantization"))
    model_lib.MobileNetV1(**fields)
    return fields
