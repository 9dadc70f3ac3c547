"""Learning-rate schedules, the weight-decay mask and the optimizers of the training recipes.

Reads these config fields: optimizer, learning_rate (per 256 images), batch_size, lr_schedule,
warmup_epochs, lr_decay_rate, lr_decay_epochs, num_epochs, num_train_steps, momentum, nesterov,
rmsprop_decay, rmsprop_epsilon, adam_b1, adam_b2, adam_eps, weight_decay,
weight_decay_depthwise, grad_clip_norm. Parameter EMA (config.ema_decay) is kept by the train
step, not here.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine", "constant")
# config.learning_rate is quoted per this many images and scaled linearly with the batch size.
REFERENCE_BATCH_SIZE = 256
# TF1's RMSPropOptimizer starts its mean square at 1.0 (PyTorch and optax's default: 0.0).
TF_RMSPROP_INITIAL_SCALE = 1.0


def check_optimizer_config(config: Any) -> None:
    """Raise a ValueError naming the field, its allowed values and the fix for a bad setting."""
    check_choice("optimizer", config.optimizer, OPTIMIZERS)
    check_choice("lr_schedule", config.lr_schedule, SCHEDULES)
    for field in ("learning_rate", "weight_decay", "warmup_epochs", "grad_clip_norm"):
        if not config[field] >= 0:
            raise ValueError(f"{field} must be >= 0, got {config[field]}; set --config.{field}=<value >= 0>")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.lr_schedule == "exponential":
        if not config.lr_decay_epochs > 0:
            raise ValueError(
                f"lr_decay_epochs must be > 0 for lr_schedule='exponential', got {config.lr_decay_epochs}; "
                "set e.g. --config.lr_decay_epochs=3.0 or use another lr_schedule"
            )
        if not 0 < config.lr_decay_rate <= 1:
            raise ValueError(f"lr_decay_rate must be in (0, 1], got {config.lr_decay_rate}; e.g. 0.94")


def check_choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError unless config field `field` has one of the `allowed` values."""
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; set --config.{field} to one of {list(allowed)}")


def scaled_learning_rate(config: Any) -> float:
    """The peak learning rate: config.learning_rate (per 256 images) * batch_size / 256."""
    return config.learning_rate * config.batch_size / REFERENCE_BATCH_SIZE


def total_train_steps(config: Any, steps_per_epoch: int) -> int:
    """Length of the run: num_train_steps when > 0, else num_epochs * steps_per_epoch."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    steps = math.ceil(config.num_epochs * steps_per_epoch)
    if steps < 1:
        raise ValueError(
            f"the run has no steps: num_epochs={config.num_epochs} * steps_per_epoch={steps_per_epoch}; "
            "set num_epochs > 0 or num_train_steps > 0"
        )
    return steps


def create_learning_rate_schedule(config: Any, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0, then the decay of config.lr_schedule, as a function of the step.

    As in TF (and the tensorflow/tpu MobileNet recipe) the decay counts steps from the start of
    the run, not from the end of warm-up; warm-up ramps to the decayed rate its last step has, so
    the schedule has no jump. "exponential" is TF's staircase lr * rate ** floor(epoch / epochs),
    "cosine" reaches 0 at the last step, "constant" only warms up.
    """
    check_optimizer_config(config)
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}; lower batch_size")
    total_steps = total_train_steps(config, steps_per_epoch)
    decay = _decay_schedule(config, scaled_learning_rate(config), steps_per_epoch, total_steps)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if warmup_steps == 0:
        return decay
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_epochs={config.warmup_epochs} is {warmup_steps} steps, longer than the run's "
            f"{total_steps}; lower warmup_epochs or train longer"
        )
    peak = decay(warmup_steps)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        return jnp.where(step < warmup_steps, peak * step / warmup_steps, decay(step))

    return schedule


def _decay_schedule(config: Any, peak: float, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """The schedule of config.lr_schedule without warm-up, starting at `peak` on step 0."""
    if config.lr_schedule == "exponential":
        return optax.exponential_decay(
            peak,
            transition_steps=max(1, round(config.lr_decay_epochs * steps_per_epoch)),
            decay_rate=config.lr_decay_rate,
            staircase=True,
        )
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(peak, decay_steps=total_steps)
    return optax.constant_schedule(peak)


def weight_decay_mask(params: Any, *, decay_depthwise: bool) -> Any:
    """True for the parameters weight decay applies to: conv and Dense kernels.

    BatchNorm scales and biases and the classifier bias are never decayed; depthwise kernels
    (`.../depthwise/conv/kernel`) only when `decay_depthwise`, as the paper puts little or no
    weight decay on them.
    """

    def decayed(path: tuple[Any, ...], _: Any) -> bool:
        names = [_key_name(key) for key in path]
        if not names or names[-1] != "kernel":
            return False
        return decay_depthwise or "depthwise" not in names

    return jax.tree_util.tree_map_with_path(decayed, params)


def _key_name(key: Any) -> str:
    """The name a pytree path entry stands for (dict key or attribute)."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def create_optimizer(
    config: Any, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of config.optimizer with its learning-rate schedule, and that schedule.

    rmsprop and sgd take L2 weight decay added to the gradient before anything else, as TF adds
    weight_decay * sum(w ** 2) / 2 to the loss, so clipping and the optimizer see it. adamw takes
    decoupled decay: optax multiplies it by the learning rate (PyTorch's AdamW), so it wants far
    larger values (e.g. 0.05) than the L2 form.
    """
    schedule = create_learning_rate_schedule(config, steps_per_epoch)
    mask = functools.partial(weight_decay_mask, decay_depthwise=config.weight_decay_depthwise)
    chain = []
    if config.optimizer != "adamw" and config.weight_decay > 0:
        chain.append(optax.add_decayed_weights(config.weight_decay, mask))
    if config.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    chain.append(_base_optimizer(config, schedule, mask))
    return optax.chain(*chain), schedule


def _base_optimizer(config: Any, schedule: optax.Schedule, mask: Any) -> optax.GradientTransformation:
    """The optimizer proper, without L2 decay or clipping."""
    if config.optimizer == "rmsprop":
        # TF1 RMSPropOptimizer: ms = d * ms + (1 - d) * g^2 from ms = 1, mom = m * mom +
        # lr * g / sqrt(ms + eps), w -= mom. The learning rate sits inside the momentum, as in
        # optax's chain (scale by rms, then by -lr, then trace).
        return optax.rmsprop(
            schedule,
            decay=config.rmsprop_decay,
            eps=config.rmsprop_epsilon,
            initial_scale=TF_RMSPROP_INITIAL_SCALE,
            eps_in_sqrt=True,
            momentum=config.momentum or None,
        )
    if config.optimizer == "sgd":
        return optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    return optax.adamw(
        schedule,
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        mask=mask,
    )
