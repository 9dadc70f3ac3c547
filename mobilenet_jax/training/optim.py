"""Learning-rate schedules, the weight-decay and trainable masks and the optimizers of the recipes.

`OptimizerSpec` holds the config fields they need, checked when it is built. Parameter EMA
(config.ema_decay) is kept by the train step, not here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import traverse_util

from mobilenet_jax.choices import check_choice

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine", "constant")
# config.learning_rate is quoted per this many images and scaled linearly with the batch size.
REFERENCE_BATCH_SIZE = 256
# TF1's RMSPropOptimizer starts its mean square at 1.0 (PyTorch and optax's default: 0.0).
TF_RMSPROP_INITIAL_SCALE = 1.0


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer, its learning-rate schedule and regularisation; names are the config's."""

    optimizer: str = "rmsprop"
    learning_rate: float = 0.165 * REFERENCE_BATCH_SIZE / 1024  # per REFERENCE_BATCH_SIZE images
    batch_size: int = 1024
    lr_schedule: str = "exponential"
    warmup_epochs: float = 0.0
    lr_decay_rate: float = 0.94
    lr_decay_epochs: float = 3.0
    lr_floor: float = 0.0  # the rate never falls below lr_floor * the peak rate
    num_epochs: float = 300.0
    num_train_steps: int = -1  # > 0 overrides num_epochs
    momentum: float = 0.9
    nesterov: bool = False
    rmsprop_decay: float = 0.9
    rmsprop_epsilon: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    weight_decay_depthwise: bool = False
    grad_clip_norm: float = 0.0
    # Fine-tuning: see `create_optimizer`.
    trainable: str = ""  # a regex over "/"-joined parameter paths; "" trains every parameter
    freeze_backbone_steps: int = 0
    backbone_lr_multiplier: float = 1.0

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        try:
            re.compile(self.trainable)
        except re.error as error:
            raise ValueError(
                f"trainable={self.trainable!r} is not a regular expression ({error}); e.g. 'classifier/.*'"
            ) from error
        if self.freeze_backbone_steps < 0:
            raise ValueError(f"freeze_backbone_steps must be >= 0 (0: never frozen), got {self.freeze_backbone_steps}")
        if not self.backbone_lr_multiplier >= 0:
            raise ValueError(f"backbone_lr_multiplier must be >= 0, got {self.backbone_lr_multiplier}; e.g. 0.1")
        check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        for field in ("learning_rate", "weight_decay", "warmup_epochs", "grad_clip_norm", "lr_floor"):
            if not getattr(self, field) >= 0:
                raise ValueError(
                    f"{field} must be >= 0, got {getattr(self, field)}; set --config.{field}=<value >= 0>"
                )
        if self.num_train_steps == 0 or self.num_train_steps < -1:
            raise ValueError(
                f"num_train_steps must be > 0, or -1 to train num_epochs, got {self.num_train_steps}; "
                "set --config.num_train_steps"
            )
        if self.lr_floor > 1:
            raise ValueError(f"lr_floor must be in [0, 1] (a fraction of the peak rate), got {self.lr_floor}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr_schedule == "exponential":
            if not self.lr_decay_epochs > 0:
                raise ValueError(
                    f"lr_decay_epochs must be > 0 for lr_schedule='exponential', got {self.lr_decay_epochs}; "
                    "set e.g. --config.lr_decay_epochs=3.0 or use another lr_schedule"
                )
            if not 0 < self.lr_decay_rate <= 1:
                raise ValueError(f"lr_decay_rate must be in (0, 1], got {self.lr_decay_rate}; e.g. 0.94")


def scaled_learning_rate(spec: OptimizerSpec) -> float:
    """The peak learning rate: learning_rate (per 256 images) * batch_size / 256."""
    return spec.learning_rate * spec.batch_size / REFERENCE_BATCH_SIZE


def total_train_steps(spec: OptimizerSpec, steps_per_epoch: int) -> int:
    """Length of the run: num_train_steps when > 0, else num_epochs * steps_per_epoch."""
    if spec.num_train_steps > 0:
        return int(spec.num_train_steps)
    steps = math.ceil(spec.num_epochs * steps_per_epoch)
    if steps < 1:
        raise ValueError(
            f"the run has no steps: num_epochs={spec.num_epochs} * steps_per_epoch={steps_per_epoch}; "
            "set num_epochs > 0 or num_train_steps > 0"
        )
    return steps


def create_learning_rate_schedule(spec: OptimizerSpec, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0, then the decay of spec.lr_schedule, as a function of the step.

    As in TF (and the tensorflow/tpu MobileNet recipe) the decay counts steps from the start of
    the run, not from the end of warm-up; warm-up ramps to the decayed rate its last step has, so
    the schedule has no jump. "exponential" is TF's staircase lr * rate ** floor(epoch / epochs),
    "cosine" reaches 0 at the last step, "constant" only warms up; none falls below
    `lr_floor` times the peak rate (the TF reference's floor, 1e-4). A warm-up longer than the
    run is cut to the run's first half, with a warning.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}; lower batch_size")
    total_steps = total_train_steps(spec, steps_per_epoch)
    decay = _decay_schedule(spec, scaled_learning_rate(spec), steps_per_epoch, total_steps)
    warmup_steps = round(spec.warmup_epochs * steps_per_epoch)
    if warmup_steps == 0:
        return decay
    if warmup_steps > total_steps:
        logging.warning(
            "warmup_epochs=%s is %d steps, longer than the run's %d: warming up over its first half instead",
            spec.warmup_epochs, warmup_steps, total_steps,
        )
        warmup_steps = max(1, total_steps // 2)
    peak = decay(warmup_steps)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        return jnp.where(step < warmup_steps, peak * step / warmup_steps, decay(step))

    return schedule


def _decay_schedule(spec: OptimizerSpec, peak: float, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """The schedule of spec.lr_schedule without warm-up, starting at `peak` on step 0."""
    if spec.lr_schedule == "exponential":
        decay = optax.exponential_decay(
            peak,
            transition_steps=max(1, round(spec.lr_decay_epochs * steps_per_epoch)),
            decay_rate=spec.lr_decay_rate,
            staircase=True,
        )
    elif spec.lr_schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps=total_steps)
    else:
        decay = optax.constant_schedule(peak)
    if spec.lr_floor == 0:
        return decay
    return lambda step: jnp.maximum(decay(step), spec.lr_floor * peak)


def weight_decay_mask(params: Any, *, decay_depthwise: bool) -> Any:
    """True for the parameters weight decay applies to: conv and Dense kernels.

    BatchNorm scales and biases and the classifier bias are never decayed; depthwise kernels
    (`.../depthwise/conv/kernel`) only when `decay_depthwise`, as the paper puts little or no
    weight decay on them.
    """
    return traverse_util.path_aware_map(
        lambda path, _: path[-1] == "kernel" and (decay_depthwise or "depthwise" not in path), params
    )


CLASSIFIER = "classifier"  # the model's Dense head; every other parameter is the backbone


def parameter_groups(params: Any, *, trainable: str = "") -> Any:
    """Each parameter's group: "frozen" (its "/"-joined path, e.g. "block3/depthwise/conv/kernel",
    does not fully match the `trainable` regex; "" matches all), else "classifier" or "backbone"."""
    pattern = re.compile(trainable or ".*")

    def group(path: tuple[str, ...], _: Any) -> str:
        if not pattern.fullmatch("/".join(path)):
            return "frozen"
        return "classifier" if path[0] == CLASSIFIER else "backbone"

    return traverse_util.path_aware_map(group, params)


def create_optimizer(
    spec: OptimizerSpec, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of spec.optimizer with its learning-rate schedule, and that schedule.

    rmsprop and sgd take L2 weight decay added to the gradient before anything else, as TF adds
    weight_decay * sum(w ** 2) / 2 to the loss, so clipping and the optimizer see it. adamw takes
    decoupled decay: optax multiplies it by the learning rate (PyTorch's AdamW), so it wants far
    larger values (e.g. 0.05) than the L2 form.

    Fine-tuning splits the parameters (`parameter_groups`): frozen ones get zero updates (no
    weight decay, no optimizer state); the backbone gets no update (and its optimizer state does
    not move) for the first `freeze_backbone_steps` steps, then the schedule's rate at that step
    times `backbone_lr_multiplier`. Split, each group is clipped by its own global norm.
    """
    schedule = create_learning_rate_schedule(spec, steps_per_epoch)
    head = _transform(spec, schedule)
    if not (spec.trainable or spec.freeze_backbone_steps or spec.backbone_lr_multiplier != 1):
        return head, schedule
    delay = spec.freeze_backbone_steps
    backbone = _transform(spec, lambda count: spec.backbone_lr_multiplier * schedule(count + delay))
    if delay:
        backbone = optax.transforms.conditionally_mask(backbone, lambda count: count >= delay)
    groups = functools.partial(parameter_groups, trainable=spec.trainable)
    split = optax.multi_transform({"classifier": head, "backbone": backbone, "frozen": optax.set_to_zero()}, groups)
    return split, schedule


def _transform(spec: OptimizerSpec, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Weight decay, clipping and the optimizer proper, at the learning rates of `schedule`."""
    mask = functools.partial(weight_decay_mask, decay_depthwise=spec.weight_decay_depthwise)
    chain = []
    if spec.optimizer != "adamw" and spec.weight_decay > 0:
        chain.append(optax.add_decayed_weights(spec.weight_decay, mask))
    if spec.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(spec.grad_clip_norm))
    chain.append(_base_optimizer(spec, schedule, mask))
    return optax.chain(*chain)


def _base_optimizer(spec: OptimizerSpec, schedule: optax.Schedule, mask: Any) -> optax.GradientTransformation:
    """The optimizer proper, without L2 decay or clipping."""
    if spec.optimizer == "rmsprop":
        # TF1 RMSPropOptimizer: ms = d * ms + (1 - d) * g^2 from ms = 1, mom = m * mom +
        # lr * g / sqrt(ms + eps), w -= mom. The learning rate sits inside the momentum, as in
        # optax's chain (scale by rms, then by -lr, then trace).
        return optax.rmsprop(
            schedule,
            decay=spec.rmsprop_decay,
            eps=spec.rmsprop_epsilon,
            initial_scale=TF_RMSPROP_INITIAL_SCALE,
            eps_in_sqrt=True,
            momentum=spec.momentum or None,
        )
    if spec.optimizer == "sgd":
        return optax.sgd(schedule, momentum=spec.momentum or None, nesterov=spec.nesterov)
    return optax.adamw(
        schedule,
        b1=spec.adam_b1,
        b2=spec.adam_b2,
        eps=spec.adam_eps,
        weight_decay=spec.weight_decay,
        mask=mask,
    )
